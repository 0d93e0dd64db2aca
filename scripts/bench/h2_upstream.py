#!/usr/bin/env python3
"""HTTP/2 to an upstream that offers it: a measurement, not part of `make bench`.

nginx serves fixed chat answers (JSON, and an SSE body of SSE_CHUNKS events)
over TLS with http2 and ALPN h2; infergate proxies to it twice, in the same
run, on the target core:
  h2 (curl)    https://localhost:PORT  -- a host name with server.resolver:
                                          libc: libcurl, which offers h2 by
                                          ALPN and multiplexes transfers
  h1 (own)     https://127.0.0.1:PORT  -- an address: upstream_h1.c, HTTP/1.1
                                          over TLS with a keep-alive pool
wrk at 64 connections on the load core(s); reports req/s, infergate's CPU
per request and the most TCP connections to the upstream seen during a run
(sampled every 0.5 s).

  INFERGATE_BIN=./infergate python3 scripts/bench/h2_upstream.py
Knobs: BENCH_REPS (3), BENCH_DURATION (6), BENCH_SCENARIOS (json,sse),
BENCH_TARGET_CPU, BENCH_LOAD_CPUS as for scripts/bench/run.py.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as B  # noqa: E402  -- the bench's helpers and knobs

REPS = B.env_int("BENCH_REPS", 3)
DURATION = B.env_float("BENCH_DURATION", 6)

NGINX_CONF = """daemon off;
master_process on;
worker_processes 1;
pid %(tmp)s/nginx-h2.pid;
error_log %(tmp)s/nginx-h2-error.log warn;
events { worker_connections 4096; }
http {
    log_format proto $server_protocol;
    access_log %(tmp)s/h2-access.log proto buffer=256k;
    client_body_temp_path %(tmp)s/h2-body;
    proxy_temp_path %(tmp)s/h2-proxy;
    fastcgi_temp_path %(tmp)s/h2-fcgi;
    uwsgi_temp_path %(tmp)s/h2-uwsgi;
    scgi_temp_path %(tmp)s/h2-scgi;
    keepalive_requests 1000000;
    http2_max_concurrent_streams 256;
    server {
        listen %(listen_json)s ssl http2;
        ssl_certificate %(cert)s;
        ssl_certificate_key %(key)s;
        location / {
            default_type application/json;
            return 200 '%(json)s';
        }
    }
    server {
        listen %(listen_sse)s ssl http2;
        ssl_certificate %(cert)s;
        ssl_certificate_key %(key)s;
        location / {
            default_type text/event-stream;
            return 200 '%(sse)s';
        }
    }
}
"""


def answers():
    msg = {"id": "chatcmpl-h2", "object": "chat.completion", "created": 1, "model": B.MODEL,
           "choices": [{"index": 0, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "x" * 700}}],
           "usage": {"prompt_tokens": 60, "completion_tokens": 175, "total_tokens": 235}}
    ev = []
    for i in range(B.SSE_CHUNKS):
        ev.append("data: " + json.dumps({"id": "chatcmpl-h2", "object": "chat.completion.chunk",
                                         "created": 1, "model": B.MODEL,
                                         "choices": [{"index": 0, "delta": {"content": "tok%d " % i},
                                                      "finish_reason": None}]}) + "\n\n")
    ev.append("data: [DONE]\n\n")
    return json.dumps(msg), "".join(ev)


def upstream_conns(port, pid):
    """TCP connections from process pid to the upstream port."""
    out = subprocess.run(["ss", "-Htnp", "state", "established", "( dport = :%d )" % port],
                         capture_output=True, text=True)
    return len([l for l in out.stdout.splitlines() if "pid=%d," % pid in l])


def protocols(tmp):
    """Requests nginx logged, by protocol."""
    n = {}
    try:
        with open(os.path.join(tmp, "h2-access.log")) as f:
            for line in f:
                n[line.strip()] = n.get(line.strip(), 0) + 1
    except OSError:
        pass
    return n


def main():
    tmp = tempfile.mkdtemp(prefix="infergate-h2-")
    pki = B.make_test_ca(tmp)
    js, sse = answers()
    ports = {"json": B.free_port(), "sse": B.free_port()}
    conf = os.path.join(tmp, "nginx-h2.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF % {"tmp": tmp, "listen_json": "127.0.0.1:%d" % ports["json"],
                              "listen_sse": "127.0.0.1:%d" % ports["sse"], "cert": pki["up"],
                              "key": pki["key"], "json": js, "sse": sse.replace("\n", "\\n")})
    # One model per answer kind: nginx cannot look into the body.
    bodies = {}
    for scen in B.SCENARIOS:
        path = os.path.join(tmp, "body-%s.json" % scen)
        with open(path, "w") as f:
            f.write(B.chat_body(scen == "sse").replace(B.MODEL, "h2-" + scen))
        bodies[scen] = path
    procs, rows = {}, []
    try:
        chk = subprocess.run([B.NGINX, "-t", "-q", "-p", tmp, "-c", conf], capture_output=True,
                             text=True)
        if chk.returncode != 0:
            raise RuntimeError("nginx -t failed:\n" + chk.stderr)
        B.PROCS.start("nginx-h2", [B.NGINX, "-p", tmp, "-c", conf], cpus=B.LOAD_CPUS,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name, host in (("h2 (curl)", "localhost"), ("h1 (own)", "127.0.0.1")):
            d = os.path.join(tmp, "conf-" + host)
            B.infergate_conf_dir(tmp, "conf-" + host, [], health=False)
            if host == "localhost":     # names through curl, not the own client
                pol = os.path.join(d, "policies.yaml")
                with open(pol) as f:
                    text = f.read().replace("server:\n", "server:\n  resolver: libc\n", 1)
                with open(pol, "w") as f:
                    f.write(text)
            with open(os.path.join(d, "hosts.json"), "w") as f:
                json.dump({"hosts": [{"name": "up-" + scen, "url": "https://%s:%d" % (host, port),
                                      "models": ["h2-" + scen], "tls": {"ca_file": pki["ca"]}}
                                     for scen, port in ports.items()]}, f)
            procs[name] = B.start_infergate(tmp, "infergate-" + host, d)
        for name, p in procs.items():
            for scen in B.SCENARIOS:
                B.run_wrk(p.addr, bodies[scen], 64, B.WARMUP, p.pid)
        cells = {}
        for rep in range(REPS):
            for scen in B.SCENARIOS:
                for name, p in procs.items():
                    seen = []

                    def sample(stop, port=ports[scen], pid=p.pid):
                        while not stop.wait(0.5):
                            seen.append(upstream_conns(port, pid))
                    r = B.run_wrk(p.addr, bodies[scen], 64, DURATION, p.pid, during=sample)
                    r["upstream_conns"] = max(seen or [0])
                    cells.setdefault((scen, name), []).append(r)
                    B.log("  rep %d %-4s %-10s %9.0f req/s  err %d  CPU %s us/req  upstream "
                          "connections %d" % (rep + 1, scen, name, r["rps"], r["errors"],
                                              r["cpu_us_per_req"], r["upstream_conns"]))
        for (scen, name), runs in cells.items():
            m = B.median_of(runs)
            rows.append((scen, name, m["rps"], m["errors"], m["cpu_us_per_req"],
                         max(x["upstream_conns"] for x in runs)))
    finally:
        B.PROCS.stop_all()
    B.log("")
    B.log("requests nginx served, by protocol (buffered log, approximate): %s" % protocols(tmp))
    B.log("HTTP/2 upstream (nginx, TLS, fixed answers), 64 connections, median of %d x %gs"
          % (REPS, DURATION))
    B.log("%-5s %-10s %10s %7s %11s %12s" % ("", "infergate", "req/s", "errors", "CPU us/req",
                                             "upstream TCP"))
    for row in sorted(rows):
        B.log("%-5s %-10s %10.0f %7d %11s %12d" % row)
    if not os.environ.get("BENCH_KEEP_TMP"):
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
