-- wrk script for `make bench`: POST a fixed JSON body, then print the
-- summary as one JSON line (wrk's own text has no p99.9 and rounds).
--
--   wrk -t1 -c64 -d8s -s post.lua URL -- BODYFILE [PATH [CLIENT_KEY]]
--
-- BODYFILE holds the request body (a chat completion request; with
-- "stream": true for SSE). wrk counts an answer with status >= 400 under
-- errors.status, and a request slower than its --timeout under
-- errors.timeout. Latencies are in microseconds.

local body_file

function init(args)
   body_file = args[1]
   local path = args[2] or "/v1/chat/completions"
   local f = assert(io.open(body_file, "rb"), "cannot open " .. tostring(body_file))
   local body = f:read("*a")
   f:close()
   wrk.method = "POST"
   wrk.path = path
   wrk.body = body
   wrk.headers["Content-Type"] = "application/json"
   if args[3] then
      wrk.headers["Authorization"] = "Bearer " .. args[3]
   end
   wrk.headers["Accept"] = body:find('"stream"%s*:%s*true') and "text/event-stream"
                           or "application/json"
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p99.9":%d}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.mean, latency.max,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9)))
end
