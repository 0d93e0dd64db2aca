#!/usr/bin/python3
"""selftest.py -- exercises infergate-mock end to end on loopback.

    python3 tests/mock/selftest.py [path/to/infergate-mock]

Starts the mock on an ephemeral port, walks every endpoint, fault and
control call, then stops it with SIGTERM (and a second one with SIGINT)
and checks the exit status is 0 and that stderr carries no sanitizer
report. Standard library only; not collected by pytest (no test_ prefix).
"""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

BIN = sys.argv[1] if len(sys.argv) > 1 else "build/asan/infergate-mock"
PROCS = []


def start(*args):
    p = subprocess.Popen([BIN, "--listen", "127.0.0.1:0", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    PROCS.append(p)
    line = p.stdout.readline()
    assert line.startswith("listening 127.0.0.1:"), line
    return p, int(line.rsplit(":", 1)[1])


def stop(p, sig=signal.SIGTERM):
    p.send_signal(sig)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 0, (p.returncode, err)
    for bad in ("Sanitizer", "runtime error", "leak"):
        assert bad not in err, err


class Mock:
    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def call(self, method, path, body=None, headers=None, conn=None):
        c = conn or self.conn
        data = json.dumps(body) if isinstance(body, (dict, list)) else body
        c.request(method, path, body=data, headers=headers or {})
        r = c.getresponse()
        raw = r.read()
        return r, raw

    def js(self, method, path, body=None, headers=None):
        r, raw = self.call(method, path, body, headers)
        return r.status, json.loads(raw), r

    def config(self, **kw):
        s, j, _ = self.js("POST", "/_mock/config", kw)
        assert s == 200, j
        return j

    def stats(self):
        return self.js("GET", "/_mock/stats")[1]

    def wait_stat(self, key, want, timeout=5):
        end = time.time() + timeout
        while time.time() < end:
            if self.stats()[key] == want:
                return
            time.sleep(0.02)
        raise AssertionError("%s != %r: %r" % (key, want, self.stats()))


def raw_request(port, path, body, timeout):
    """One request on a fresh socket, read until EOF or `timeout` seconds."""
    s = socket.create_connection(("127.0.0.1", port))
    data = json.dumps(body).encode()
    s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data))
    got = b""
    end = time.time() + timeout
    try:
        while time.time() < end:
            s.settimeout(max(end - time.time(), 0.001))
            b = s.recv(65536)
            if not b:
                break
            got += b
    except socket.timeout:
        pass
    s.close()
    return got


def sse_events(m, path, body, conn=None):
    """[(seconds since request, data line)] of one SSE answer."""
    c = conn or http.client.HTTPConnection("127.0.0.1", m.port, timeout=10)
    t0 = time.time()
    c.request("POST", path, body=json.dumps(body))
    r = c.getresponse()
    assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
    out = []
    while True:
        line = r.readline()
        if not line:
            break
        line = line.decode().rstrip("\n")
        if line.startswith("data: "):
            out.append((time.time() - t0, line[6:]))
    return out


def main():
    p, port = start("--name", "alpha", "--models", "m1,m2", "--containers", "inference-1,b",
                    "--pending", "2", "--fail-key", "sk-revoked=401")
    m = Mock(port)

    # JSON chat: ids, model echo, header, keep-alive on one connection
    s, j, r = m.js("POST", "/v1/chat/completions", {"model": "m1", "messages": []},
                   {"Authorization": "Bearer sk-a", "X-Request-Id": "rid-1"})
    assert s == 200 and r.getheader("X-Mock-Name") == "alpha", j
    assert j["id"] == "chatcmpl-alpha-1" and j["model"] == "m1"
    assert j["choices"][0]["message"]["content"] == "Hello from alpha"
    s, j, _ = m.js("POST", "/v1/chat/completions", {"messages": []})
    assert j["id"] == "chatcmpl-alpha-2" and j["model"] == "mock-model"
    s, j, _ = m.js("POST", "/v1/completions", {"model": "m2", "prompt": "x"})
    assert j["object"] == "text_completion" and j["id"] == "cmpl-alpha-3"
    s, j, _ = m.js("POST", "/v1/embeddings", {"model": "e", "input": ["a", "b", "c"]})
    assert len(j["data"]) == 3 and all(len(d["embedding"]) == 8 for d in j["data"])
    s, j, _ = m.js("POST", "/v1/embeddings", {"model": "e", "input": "a"})
    assert len(j["data"]) == 1
    s, j, _ = m.js("GET", "/v1/models")
    assert [d["id"] for d in j["data"]] == ["m1", "m2"]
    s, j, _ = m.js("GET", "/info")
    assert j == {"containers": [{"id": "inference-1"}, {"id": "b"}],
                 "pending": {"offchain": 2, "onchain": 0}}
    assert m.js("GET", "/api/info")[1] == j

    # verify
    s, j, _ = m.js("POST", "/v1/verify", {"id": "chatcmpl-alpha-1"})
    assert s == 200 and j == {"id": "chatcmpl-alpha-1", "verified": True, "served_by": "alpha"}
    for bad in ("chatcmpl-alpha-99", "chatcmpl-beta-1", "chatcmpl-alpha-01", "x"):
        s, j, _ = m.js("POST", "/v1/verify", {"id": bad})
        assert s == 404 and "error" in j, (bad, j)

    # SSE, chunks spread over time
    m.config(chunks=4, chunk_interval_ms=150)
    ev = sse_events(m, "/v1/chat/completions", {"model": "m1", "stream": True})
    assert [e[1] for e in ev][-1] == "[DONE]" and len(ev) == 5
    chunks = [json.loads(e[1]) for e in ev[:-1]]
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["tok0 ", "tok1 ", "tok2 ", "tok3 "]
    assert chunks[0]["object"] == "chat.completion.chunk" and chunks[0]["model"] == "m1"
    assert ev[3][0] - ev[0][0] > 0.4, ev
    m.config(chunk_interval_ms=0)
    ev = sse_events(m, "/v1/completions", {"stream": True}, conn=m.conn)
    assert json.loads(ev[0][1])["choices"][0]["text"] == "tok0 "
    assert m.js("GET", "/v1/models")[0] == 200      # keep-alive after a stream

    # status + Retry-After; /v1/models and /info are not affected
    m.config(status=429, retry_after=7)
    s, j, r = m.js("POST", "/v1/chat/completions", {"stream": True})
    assert s == 429 and r.getheader("Retry-After") == "7" and j["error"]["code"] == "rate_limit_exceeded"
    assert m.js("GET", "/v1/models")[0] == 200 and m.js("GET", "/info")[0] == 200

    # fail_next: next N fail, then normal again
    m.config(status=503, retry_after=0, fail_next=2)
    codes = [m.call("POST", "/v1/chat/completions", {})[0].status for _ in range(4)]
    assert codes == [503, 503, 200, 200], codes
    c = m.config(fail_next=1)
    assert c["status"] == 200
    codes = [m.call("POST", "/v1/chat/completions", {})[0].status for _ in range(2)]
    assert codes == [500, 200], codes

    # fail_keys, from the command line and from the control API
    assert m.call("POST", "/v1/chat/completions", {}, {"Authorization": "Bearer sk-revoked"})[0].status == 401
    m.config(fail_keys={"sk-hot": 429}, retry_after=2)
    r, _ = m.call("POST", "/v1/chat/completions", {}, {"Authorization": "Bearer sk-hot"})
    assert r.status == 429 and r.getheader("Retry-After") == "2"
    assert m.call("POST", "/v1/chat/completions", {}, {"Authorization": "Bearer sk-ok"})[0].status == 200

    # garbage
    m.config(garbage=True)
    r, raw = m.call("POST", "/v1/chat/completions", {})
    assert r.status == 200 and raw == b"<<garbage>>" and r.getheader("Content-Type") == "application/json"
    m.config(garbage=False)

    # probe faults
    m.config(probe_status=503, probe_delay_ms=100)
    t0 = time.time()
    assert m.call("GET", "/v1/models")[0].status == 503 and time.time() - t0 >= 0.09
    assert m.call("POST", "/v1/chat/completions", {})[0].status == 200
    m.config(probe_status=None, probe_delay_ms=None)

    # delay
    m.config(delay_ms=300)
    t0 = time.time()
    assert m.call("POST", "/v1/chat/completions", {})[0].status == 200
    assert time.time() - t0 >= 0.29
    m.config(delay_ms=0)

    # hang: client gives up, the mock notices
    m.js("POST", "/_mock/reset")
    m.config(hang=True)
    got = raw_request(port, "/v1/chat/completions", {}, 0.3)
    assert got == b"", got
    m.wait_stat("disconnects", 1)
    m.wait_stat("in_flight", 0)

    # delay, client gives up before headers
    m.config(hang=False, delay_ms=5000)
    assert raw_request(port, "/v1/chat/completions", {"stream": True}, 0.2) == b""
    m.wait_stat("disconnects", 2)
    m.wait_stat("in_flight", 0)
    m.config(delay_ms=0)

    # close_after_chunks: K chunks then a cut, no [DONE], no last chunk
    for interval in (0, 50):
        m.config(chunks=5, close_after_chunks=2, chunk_interval_ms=interval)
        got = raw_request(port, "/v1/chat/completions", {"stream": True}, 3)
        assert got.count(b"data: {") == 2 and b"[DONE]" not in got and not got.endswith(b"0\r\n\r\n"), got
    assert m.stats()["drops"] == 2
    assert m.call("POST", "/v1/chat/completions", {})[0].status == 200   # non-stream unaffected

    # partial_bytes: the start of the next event before the cut
    m.config(partial_bytes=9)
    got = raw_request(port, "/v1/chat/completions", {"stream": True}, 3)
    assert got.count(b"data: {") == 3 and got.endswith(b'\n\ndata: {"i\r\n'), got[-60:]
    m.config(partial_bytes=0, close_after_chunks=0, chunk_interval_ms=0)

    # stall_after_chunks / stall_body: unfinished answers, the client goes away
    disc = m.stats()["disconnects"]
    m.config(stall_after_chunks=2)
    got = raw_request(port, "/v1/chat/completions", {"stream": True}, 0.5)
    assert got.count(b"data: {") == 2 and not got.endswith(b"0\r\n\r\n"), got
    m.config(stall_after_chunks=0, stall_body=True)
    got = raw_request(port, "/v1/chat/completions", {"stream": True}, 0.5)
    assert b"200 OK" in got and b"data:" not in got, got
    got = raw_request(port, "/v1/chat/completions", {}, 0.5)
    assert b"200 OK" in got and b'"chat.completion"' in got and not got.endswith(b"}"), got
    m.config(stall_body=False)
    assert m.stats()["stalls"] == 3
    m.wait_stat("disconnects", disc + 3)
    m.wait_stat("in_flight", 0)

    # drop: connection closed without an answer
    m.config(drop=True)
    assert raw_request(port, "/v1/chat/completions", {}, 3) == b""
    m.config(drop=False)

    # client gone mid-stream
    m.config(chunks=100, chunk_interval_ms=50)
    got = raw_request(port, "/v1/chat/completions", {"stream": True}, 0.3)
    assert got.count(b"data: {") >= 2
    m.wait_stat("disconnects", disc + 4)
    m.wait_stat("in_flight", 0)

    # stats shape
    st = m.stats()
    for k in ("name", "requests", "paths", "keys", "models", "streams_completed", "stalls", "in_flight",
              "last_headers", "last_body"):
        assert k in st, k

    # control API validation: all or nothing
    before = m.js("GET", "/_mock/config")[1]
    for bad in ({"status": 99}, {"bogus": 1}, {"chunks": 3, "models": [1]}, {"hang": "yes"}):
        s, j, _ = m.js("POST", "/_mock/config", bad)
        assert s == 400 and "error" in j, (bad, j)
    assert m.js("GET", "/_mock/config")[1] == before
    assert m.js("POST", "/_mock/config", "{")[0] == 400

    # reset: stats and faults back to the command line
    m.config(status=500, models=["z"], containers="q, r", pending=9)
    assert m.js("GET", "/v1/models")[1]["data"][0]["id"] == "z"
    assert m.js("GET", "/info")[1]["containers"] == [{"id": "q"}, {"id": "r"}]
    s, j, _ = m.js("POST", "/_mock/reset")
    assert j["status"] == 200 and j["models"] == ["m1", "m2"] and j["fail_keys"] == {"sk-revoked": 401}
    st = m.stats()
    assert st["requests"] == 0 and st["paths"] == {} and st["last_body"] is None

    # stats content
    m.call("POST", "/v1/chat/completions", {"model": "m1"}, {"Authorization": "Bearer k1", "X-Foo": "bar"})
    m.call("POST", "/v1/chat/completions", {"model": "m2"}, {"Authorization": "Bearer k2"})
    m.call("POST", "/v1/embeddings", {"model": "m2", "input": "x"})
    m.call("GET", "/v1/models", None, {"Authorization": "Bearer probe"})
    m.call("GET", "/info")
    st = m.stats()
    assert st["requests"] == 4, st
    assert st["paths"] == {"/v1/chat/completions": 2, "/v1/embeddings": 1, "/v1/models": 1, "/info": 1}, st
    assert st["keys"] == {"k1": 1, "k2": 1, "": 1}, st
    assert st["models"] == {"m1": 1, "m2": 2}, st
    assert st["last_body"] == {"model": "m2", "input": "x"}, st
    assert st["last_path"] == "/v1/embeddings"

    m.call("POST", "/v1/chat/completions", {"model": "m1"}, {"Authorization": "Bearer k1", "X-Foo": "bar"})
    st = m.stats()
    assert st["last_headers"]["x-foo"] == "bar" and st["last_headers"]["authorization"] == "Bearer k1"

    # shut down with requests parked (stream, hang, delay)
    m.config(chunks=1000, chunk_interval_ms=100)
    s1 = socket.create_connection(("127.0.0.1", port))
    s1.sendall(b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 16\r\n\r\n{"stream": true}')
    m.config(hang=True)
    s2 = socket.create_connection(("127.0.0.1", port))
    s2.sendall(b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}')
    m.config(hang=False, delay_ms=10000)
    s3 = socket.create_connection(("127.0.0.1", port))
    s3.sendall(b'POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}')
    m.wait_stat("in_flight", 3)
    stop(p, signal.SIGTERM)
    for s in (s1, s2, s3):
        s.close()

    # defaults, SIGINT
    p, port = start("--quiet")
    m = Mock(port)
    s, j, r = m.js("POST", "/v1/chat/completions", {})
    assert r.getheader("X-Mock-Name") == "mock-%d" % port and j["id"] == "chatcmpl-mock-%d-1" % port
    assert [d["id"] for d in m.js("GET", "/v1/models")[1]["data"]] == ["mock-model"]
    ev = sse_events(m, "/v1/chat/completions", {"stream": True})
    assert len(ev) == 6
    assert m.stats()["streams_completed"] == 1
    stop(p, signal.SIGINT)
    print("selftest: ok")


if __name__ == "__main__":
    os.environ.setdefault("ASAN_OPTIONS", "detect_leaks=1")
    try:
        main()
    finally:
        for proc in PROCS:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
