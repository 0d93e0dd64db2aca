"""Hardening: malformed requests, limits, slow and many clients, upstream
garbage, and the fuzz corpus.

Every case sends real bytes to the real gateway on loopback and checks the
answer: a status and an OpenAI-shaped JSON error, never a hang, a reset
without an answer or a crash. After each batch the gateway must still
serve; the fixtures' teardown fails the test on any sanitizer report in
its log (ASan runs: INFERGATE_SANITIZED=1).

- tests/malformed/http/*.http, tests/malformed/body/*.json: a corpus whose
  file names carry the expected status (see tests/malformed/README.md).
- Generated here: 100,000 nested arrays, header floods, slowloris clients
  (one byte a second against client_timeout), mismatched Content-Length,
  thousands of connections, the connection cap under a low RLIMIT_NOFILE.
- Upstream garbage: mock --garbage, streams cut by close_after_chunks, and
  a raw upstream here for what the mock cannot send (wrong content type,
  huge or too many headers, a bad status line, binary noise, a short body).
- tests/fuzz/corpus/*: replayed through the libFuzzer harnesses built with
  gcc and tests/fuzz/replay.c as main(), so no clang is needed.
"""
import glob
import http.client
import json
import os
import resource
import socket
import subprocess
import threading
import time

import pytest

from conftest import (ROOT, SANITIZED, SRC_IQUOTE, src_files, Gateway, assert_openai_error,
                      hosts_of, proc_env, wait_for, write_conf)
from conftest import build_driver

MALFORMED = os.path.join(ROOT, "tests", "malformed")
FUZZ = os.path.join(ROOT, "tests", "fuzz")
CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}
CHAT_BYTES = json.dumps(CHAT).encode()


def raw_exchange(port, data, timeout=10, pieces=None, pause=0):
    """Sends raw bytes on a fresh connection and reads one HTTP answer:
    (status, headers, body). A server that answers before reading all of
    the input (431, 413) may reset the rest of the send: that is fine as
    long as the answer arrives. `pause`: seconds between the pieces."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        try:
            for i, p in enumerate(pieces or [data]):
                if i and pause:
                    time.sleep(pause)
                s.sendall(p)
        except (BrokenPipeError, ConnectionResetError):
            pass
        r = http.client.HTTPResponse(s)
        r.begin()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        s.close()


def read_answer(f):
    """One answer with a Content-Length from a buffered reader: (status, body)."""
    status = int(f.readline().split(b" ", 2)[1])
    length = 0
    while True:
        line = f.readline()
        assert line, "connection closed inside the head"
        if line == b"\r\n":
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return status, f.read(length)


def still_serving(g):
    st, _, body = g.request("GET", "/health")
    assert st == 200, body
    st, _, body = g.request("POST", "/v1/chat/completions", CHAT)
    assert st == 200, body


def expected_status(path):
    prefix = os.path.basename(path).split("-", 1)[0]
    return None if prefix == "any" else int(prefix)


def corpus(kind, ext):
    files = sorted(glob.glob(os.path.join(MALFORMED, kind, "*." + ext)))
    assert len(files) >= 20, "corpus %s is missing" % kind
    return files


# --- the corpus of malformed requests --------------------------------------

@pytest.mark.parametrize("split", [False, True], ids=["whole", "first-line-apart"])
def test_malformed_http_corpus(mocks, gateway, split):
    """Whole: the head arrives at once (parsed as one block). First line
    apart: the request line comes 50 ms before the rest, so the head is
    taken line by line; both ways must give the same answers."""
    ms = mocks(1)
    g = gateway(hosts_of(ms))
    wrong = []
    for path in corpus("http", "http"):
        with open(path, "rb") as f:
            data = f.read()
        want = expected_status(path)
        pieces = None
        if split and b"\n" in data[:-1]:
            cut = data.index(b"\n") + 1
            pieces = [data[:cut], data[cut:]]
        try:
            st, h, body = raw_exchange(g.port, data, pieces=pieces, pause=0.05)
            if st != want:
                wrong.append("%s: got %d %r" % (os.path.basename(path), st, body[:200]))
            elif st >= 400:
                assert h["content-type"] == "application/json"
                assert_openai_error(st, body)
        except Exception as e:       # no answer at all is a failure too
            wrong.append("%s: %r" % (os.path.basename(path), e))
        assert g.proc.poll() is None, "gateway died on %s" % path
    assert not wrong, "\n".join(wrong)
    still_serving(g)


def test_malformed_body_corpus(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms))
    wrong = []
    for path in corpus("body", "json"):
        with open(path, "rb") as f:
            data = f.read()
        want = expected_status(path)
        st, h, body = g.request("POST", "/v1/chat/completions", data,
                                {"Content-Type": "application/json"})
        name = os.path.basename(path)
        if want is None:
            # Not checked by the proxy yet: any clear answer, JSON either way.
            if st not in (200, 400):
                wrong.append("%s: got %d" % (name, st))
            json.loads(body)
        elif st != want:
            wrong.append("%s: got %d %r" % (name, st, body[:200]))
        elif st >= 400:
            err = assert_openai_error(st, body)
            assert err["type"] == "invalid_request_error", (name, err)
    assert not wrong, "\n".join(wrong)
    # None of the 400s went upstream: only the controls and the any-* did.
    sent = ms[0].stats()["requests"]
    n_fwd = len([p for p in corpus("body", "json")
                 if os.path.basename(p).startswith(("200-", "any-"))])
    assert sent == n_fwd, (sent, n_fwd)
    still_serving(g)


def test_wrong_types_of_stream_and_messages_are_400(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms))
    paths = [p for p in glob.glob(os.path.join(MALFORMED, "body", "400-*.json"))
             if "stream" in p or "messages" in p]
    assert len(paths) >= 7
    for path in paths:
        with open(path, "rb") as f:
            st, _, body = g.request("POST", "/v1/chat/completions", f.read(),
                                    {"Content-Type": "application/json"})
        assert_openai_error(st, body, 400)


def test_deep_nesting_and_huge_bodies(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms))
    n = 100000
    cases = [
        b'{"model":"mock-model","messages":' + b"[" * n + b"]" * n + b"}",
        b'{"model":"mock-model","x":' + b'{"a":' * n + b"1" + b"}" * n + b"}",
        b"[" * n,                                  # never closed
        b'{"model":"mock-model","x":"' + b"\\" * 3 + b'"}',
        b'{"model":"mock-model","x":' + b"9" * 100000 + b"}",
        b'{"model":"mock-model","x":0.' + b"1" * 100000 + b"e99999999999}",
    ]
    for data in cases:
        st, _, body = g.request("POST", "/v1/chat/completions", data,
                                {"Content-Type": "application/json"})
        err = assert_openai_error(st, body, 400)
        assert err["code"] == "invalid_json", err
    assert ms[0].stats()["requests"] == 0
    # A body over server.max_body_bytes (4 MB): 413, announced or chunked.
    big = b'{"model":"mock-model","x":"' + b"a" * (5 << 20) + b'"}'
    st, _, body = g.request("POST", "/v1/chat/completions", big,
                            {"Content-Type": "application/json"})
    assert_openai_error(st, body, 413)
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    chunks = [b"%x\r\n" % (1 << 20) + b"a" * (1 << 20) + b"\r\n" for _ in range(6)]
    st, _, body = raw_exchange(g.port, None, pieces=[head] + chunks)
    assert_openai_error(st, body, 413)
    still_serving(g)


# --- framing: Content-Length, pipelining, header floods ---------------------

def test_content_length_mismatch(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms), policies="server:\n  client_timeout: 1s\n")
    # Announced more than sent: the request never completes -> 408 in time.
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
            b"Content-Length: %d\r\n\r\n" % (len(CHAT_BYTES) + 10))
    t0 = time.monotonic()
    st, _, body = raw_exchange(g.port, head + CHAT_BYTES)
    assert_openai_error(st, body, 408)
    assert time.monotonic() - t0 < 4
    # Sent more than announced: the rest is the next request, which is not
    # one -> the first gets its 200, the second a 400, on one connection.
    s = socket.create_connection(("127.0.0.1", g.port), timeout=10)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
              b"Content-Length: %d\r\n\r\n" % len(CHAT_BYTES) + CHAT_BYTES + b"garbage\r\n\r\n")
    f = s.makefile("rb")
    answers = [read_answer(f), read_answer(f)]
    f.close()
    s.close()
    assert answers[0][0] == 200, answers
    assert_openai_error(answers[1][0], answers[1][1], 400)
    assert ms[0].stats()["requests"] == 1
    still_serving(g)


def test_framing_fields_repeated_and_in_any_case(mocks, gateway):
    """The fields that frame a request are found in any case and wherever
    they come; a repeat must agree with the first (smuggling)."""
    ms = mocks(1)
    g = gateway(hosts_of(ms))
    body = b'{"model":"mock-model","messages":[{"role":"user","content":"hi"}]}'
    req = b"POST /v1/chat/completions HTTP/1.1\r\n"
    ct = b"Content-Type: application/json\r\n"
    n = b"%d" % len(body)
    # The same length twice, the second after other fields: fine.
    st, _, _ = raw_exchange(g.port, req + b"hOST: gw\r\ncontent-LENGTH: " + n + b"\r\n" + ct
                            + b"X-A: 1\r\nContent-Length: " + n + b"\r\n\r\n" + body)
    assert st == 200
    # Two lengths that disagree, in any case: 400.
    st, _, b = raw_exchange(g.port, req + b"Host: gw\r\n" + ct + b"Content-Length: " + n
                            + b"\r\nCONTENT-length: 3\r\n\r\n" + body)
    err = assert_openai_error(st, b, 400)
    assert "conflicting" in err["message"]
    # Transfer-Encoding twice, the second different: 400 (before 501).
    st, _, b = raw_exchange(g.port, req + b"Host: gw\r\ntransfer-encoding: chunked\r\n"
                            b"Transfer-Encoding: gzip\r\n\r\n0\r\n\r\n")
    assert_openai_error(st, b, 400)
    # Both framings, the second in lower case: 400.
    st, _, b = raw_exchange(g.port, req + b"Host: gw\r\nContent-Length: " + n
                            + b"\r\ntransfer-ENCODING: chunked\r\n\r\n" + body)
    err = assert_openai_error(st, b, 400)
    assert "both" in err["message"]
    # No Host in HTTP/1.1 (a field that merely starts like it does not count).
    st, _, b = raw_exchange(g.port, b"GET /health HTTP/1.1\r\nHosts: gw\r\n\r\n")
    err = assert_openai_error(st, b, 400)
    assert "Host" in err["message"]
    st, _, _ = raw_exchange(g.port, b"GET /health HTTP/1.1\r\nX: 1\r\nHOST: gw\r\n\r\n")
    assert st == 200
    assert ms[0].stats()["requests"] == 1


def test_header_line_refusals_say_why(mocks, gateway):
    """A header line is read name first (tchars up to the colon), then its
    value's text: a line that fails either way gets the answer of the
    checks in their order (its text anywhere, then its form), whole head or
    line by line; a name that is valid UTF-8 but not a token is
    malformed."""
    ms = mocks(1)
    g = gateway(hosts_of(ms))
    text = "not valid UTF-8 or holds control characters"
    form = "malformed header line"
    cases = [
        (b"X-A\x01: 1", text),                    # control byte in the name
        (b"X-A: 1\x01", text),                    # ... in the value
        (b"X A\x01: 1", text),                    # both kinds: the text first
        (b"X-A\xff: 1", text),                    # not UTF-8 in the name
        (b"X-A: \xc3", text),                     # a cut sequence in the value
        (b"X-\xc3\xa9: 1", form),                  # UTF-8, not a token
        (b"X A: 1", form),
        (b": 1", form),
        (b"X-A 1", form),                         # no colon
        (b"X-A", form),
    ]
    for split in (False, True):
        for line, why in cases:
            head = b"GET /health HTTP/1.1\r\n"
            rest = b"Host: gw\r\n" + line + b"\r\n\r\n"
            st, _, b = raw_exchange(g.port, head + rest,
                                    pieces=[head, rest] if split else None, pause=0.05)
            err = assert_openai_error(st, b, 400)
            assert why in err["message"], (line, split, err)
        # Tabs and UTF-8 in a value, white space around it: fine.
        st, _, _ = raw_exchange(g.port, b"GET /health HTTP/1.1\r\nHost: gw\r\n"
                                b"X-A: \t caf\xc3\xa9 \t\r\nX-Long-Name-Of-Many-Bytes: 12345678\r\n\r\n")
        assert st == 200
    still_serving(g)


def test_header_count_limit_and_floods(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms))

    def with_headers(n):
        hs = b"".join(b"X-F%d: %d\r\n" % (i, i) for i in range(n))
        return b"GET /health HTTP/1.1\r\nHost: gw\r\n" + hs + b"\r\n"

    # 100 fields (Host + 99) pass, 101 do not.
    st, _, _ = raw_exchange(g.port, with_headers(99))
    assert st == 200
    st, _, body = raw_exchange(g.port, with_headers(100))
    err = assert_openai_error(st, body, 431)
    assert err["code"] == "too_many_headers"
    # Floods from many clients at once: tiny lines past the count, one
    # endless line, many lines past the byte limit. Each gets its answer.
    floods = [with_headers(100000), b"GET /health HTTP/1.1\r\nX-A: " + b"a" * 1000000,
              b"GET /health HTTP/1.1\r\nHost: gw\r\nX: " + b"b" * 1000 + b"\r\n\r\n",
              b"GET /health HTTP/1.1\r\nHost: gw\r\n" + (b"X-Y: " + b"c" * 200 + b"\r\n") * 5000]
    results, lock = [], threading.Lock()

    def flood(data):
        try:
            st, _, body = raw_exchange(g.port, data, timeout=20)
            out = (st, body)
        except Exception as e:
            out = (None, repr(e))
        with lock:
            results.append(out)

    threads = [threading.Thread(target=flood, args=(floods[i % len(floods)],))
               for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 40
    bad = [r for r in results if r[0] not in (431, 200) or (r[0] == 431 and b"error" not in r[1])]
    assert not bad, bad[:3]
    assert sum(1 for r in results if r[0] == 431) == 30      # the 200s: the short one
    still_serving(g)


# --- slow and many clients ---------------------------------------------------

def slow_send(port, data, interval, results, key):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    slow_send_on(s, data, interval, results, key)


def test_slowloris_one_byte_a_second_is_cut_at_client_timeout(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms), policies="server:\n  client_timeout: 3s\n")
    head = b"GET /health HTTP/1.1\r\nHost: gw\r\nX-Slow: " + b"s" * 100 + b"\r\n\r\n"
    body_req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n"
                % len(CHAT_BYTES))
    results = {}
    threads = []
    # 20 clients trickle a head, 5 send the head at once and trickle the body.
    for i in range(20):
        threads.append(threading.Thread(target=slow_send, args=(g.port, head, 1.0, results, i)))
    for i in range(5):
        def body_trickle(i=i):
            s = socket.create_connection(("127.0.0.1", g.port), timeout=30)
            s.sendall(body_req)
            slow_send_on(s, CHAT_BYTES, 1.0, results, "body%d" % i)
        threads.append(threading.Thread(target=body_trickle))
    for t in threads:
        t.start()
    # Meanwhile the loop serves everyone else at once.
    worst = 0
    t_end = time.monotonic() + 2.5
    while time.monotonic() < t_end:
        t0 = time.monotonic()
        still_serving(g)
        worst = max(worst, time.monotonic() - t0)
        time.sleep(0.1)
    assert worst < 1.0, worst
    for t in threads:
        t.join(30)
    assert len(results) == 25, results.keys()
    for key, (took, sent, got) in results.items():
        # Cut at ~3 s whatever the pace: not per byte, not after the whole head.
        assert 2.5 <= took < 4.5, (key, took, sent)
        assert sent <= 6, (key, sent)
        assert got.startswith(b"HTTP/1.1 408 "), (key, got[:100])
        assert b'"code":"request_timeout"' in got
    still_serving(g)


def slow_send_on(s, data, interval, results, key):
    """Sends data on s one byte every `interval` seconds until the server
    answers or closes; records (seconds until the answer, bytes sent, what
    came back)."""
    s.settimeout(interval)
    t0 = time.monotonic()
    got, sent, answered = b"", 0, None
    for i in range(len(data)):
        try:
            s.sendall(data[i:i + 1])
            sent += 1
        except OSError:
            break
        try:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
            if b"\r\n\r\n" in got:
                break
        except socket.timeout:
            pass
    answered = time.monotonic() - t0
    s.settimeout(10)
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    except OSError:
        pass
    s.close()
    results[key] = (answered, sent, got)


def test_idle_connections_are_closed_and_keepalive_idle_is_not_a_request(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms), policies="server:\n  client_timeout: 1s\n")
    # A connection that never sends anything: closed without an answer.
    s = socket.create_connection(("127.0.0.1", g.port), timeout=10)
    t0 = time.monotonic()
    assert s.recv(100) == b""
    assert 0.7 < time.monotonic() - t0 < 4
    s.close()
    # Keep-alive: after an answer, the idle time before the next request
    # does not count against that request's deadline (idle 0.6 s, then a
    # request trickling in over 0.6 s: 1.2 s in all, each part under 1 s).
    s = socket.create_connection(("127.0.0.1", g.port), timeout=10)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
    r = http.client.HTTPResponse(s)
    r.begin()
    assert r.status == 200
    r.read()
    time.sleep(0.6)
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n"
           % len(CHAT_BYTES) + CHAT_BYTES)
    for i in range(3):
        s.sendall(req[i * len(req) // 3:(i + 1) * len(req) // 3])
        time.sleep(0.2)
    r = http.client.HTTPResponse(s)
    r.begin()
    assert r.status == 200, r.read()
    r.read()
    s.close()


def test_many_connections(mocks, gateway):
    ms = mocks(2)
    g = gateway(hosts_of(ms))
    n = 2000
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", g.port), timeout=10)
        if i % 2:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: gw\r\n")   # half a head
        socks.append(s)
    # Connections wait in the kernel's accept queue until a worker takes them:
    # on a slow build or a busy machine that is not at once.
    def conns_now():
        st, _, body = g.request("GET", "/status")
        assert st == 200, body
        return json.loads(body)["connections"]
    conns = wait_for(lambda: (lambda c: c if c["open"] >= n else None)(conns_now()),
                     timeout=60, what="every connection accepted")
    assert conns["open"] >= n and conns["max"] >= n and conns["refused"] == 0, conns
    # Requests still flow while they are all open.
    results = []

    def chat():
        results.append(g.request("POST", "/v1/chat/completions", CHAT)[0])

    threads = [threading.Thread(target=chat) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [200] * 50
    for s in socks:
        s.close()
    wait_for(lambda: json.loads(g.request("GET", "/status")[2])["connections"]["open"] <= 2,
             timeout=10, what="connections closed")
    still_serving(g)


class LowFdGateway(Gateway):
    """The gateway started with RLIMIT_NOFILE `nofile`."""

    def __init__(self, conf_dir, nofile):
        def limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        super().__init__(conf_dir, preexec_fn=limit)


def test_connection_cap_closes_at_accept_and_logs_once(mocks, tmp_path):
    """With RLIMIT_NOFILE 128 the cap is (128 - 32) / 2 = 48 connections."""
    ms = mocks(1)
    d = str(tmp_path / "conf")
    # One worker: with several, each has its share of the cap and the
    # kernel's SO_REUSEPORT spread decides which one fills first.
    write_conf(d, hosts_of(ms), policies="server:\n  client_timeout: 30s\n  workers: 1\n")
    g = LowFdGateway(d, 128)
    try:
        st, _, body = g.request("GET", "/status")
        cap = json.loads(body)["connections"]["max"]
        assert cap == 48, cap
        time.sleep(0.3)                  # that connection is closed by now
        held, refused = [], 0
        for _ in range(cap + 12):
            held.append(socket.create_connection(("127.0.0.1", g.port), timeout=10))
        time.sleep(0.5)
        for s in held:
            s.setblocking(False)
            try:
                if s.recv(10) == b"":
                    refused += 1          # closed at accept
            except BlockingIOError:
                pass                      # accepted, waiting for a request
            except ConnectionResetError:
                refused += 1
        assert refused == 12, refused
        for s in held:
            s.close()
        wait_for(lambda: g.request("GET", "/health")[0] == 200, timeout=10, what="served again")
        st, _, body = g.request("GET", "/status")
        assert json.loads(body)["connections"]["refused"] == 12
        still_serving(g)
    finally:
        out = g.stop()
    lines = [l for l in out.splitlines() if "connection limit (48) reached" in l]
    assert len(lines) == 1, out[-3000:]
    assert "[warn]" in lines[0]


# --- upstream garbage ----------------------------------------------------------

class RawUpstream:
    """An upstream that answers every request with fixed raw bytes."""

    def __init__(self, answer):
        self.answer = answer
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.hits = 0
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        try:
            c.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = c.recv(65536)
                if not chunk:
                    return
                data += chunk
            self.hits += 1
            c.sendall(self.answer)
        except OSError:
            pass
        finally:
            c.close()

    def stop(self):
        self.stopping = True
        self.sock.close()


GARBAGE = {
    "html-200": b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 17\r\n\r\n<html>oops</html>",
    "sse-type-json-body": b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 2\r\n\r\n{}",
    "huge-header": (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Big: " + b"a" * 200000
                    + b"\r\nContent-Length: 2\r\n\r\n{}"),
    "too-many-headers": (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(5000))
                         + b"Content-Length: 2\r\n\r\n{}"),
    "bad-status-line": b"HTTP/1.1 abc\r\n\r\n",
    "binary-noise": bytes(range(256)) * 10,
    "short-body": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":",
    "json-type-bad-json": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{{{{{",
    "bad-chunked": (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked"
                    b"\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"),
}
# What the gateway answers alone in front of each (502: an upstream fault;
# 200: passed through as the upstream sent it).
# A 200 that is not JSON (an HTML page) is upstream garbage: with one host, 502.
GARBAGE_STATUS = {"html-200": 502, "sse-type-json-body": 200}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_upstream_garbage_gets_a_clear_answer(mocks, gateway, kind):
    up = RawUpstream(GARBAGE[kind])
    try:
        ms = mocks(1)
        g = gateway([{"name": "raw", "url": up.url}],
                    policies="retry:\n  max_attempts: 1\n")
        for stream in (False, True):
            st, h, body = g.request("POST", "/v1/chat/completions", dict(CHAT, stream=stream))
            want = GARBAGE_STATUS.get(kind, 502)
            assert st == want, (kind, st, body[:300])
            if want == 502:
                err = assert_openai_error(st, body)
                assert err["code"] == "upstream_failed", err
                assert h["content-type"] == "application/json"
            else:
                raw_body = GARBAGE[kind].split(b"\r\n\r\n", 1)[1]
                assert body == raw_body
        assert up.hits == 2
        # With a good host next to it, a retry hides the fault.
        g2 = gateway([{"name": "raw", "url": up.url}, {"name": ms[0].name, "url": ms[0].url}],
                     policies="retry:\n  max_attempts: 2\n  backoff: {initial: 1ms}\n")
        for _ in range(4):
            st, h, body = g2.request("POST", "/v1/chat/completions", CHAT)
            if kind in GARBAGE_STATUS:
                assert st == 200
            else:
                assert st == 200 and h["x-upstream-host"] == ms[0].name, (st, body[:200])
        still_serving(g2)
    finally:
        up.stop()


def test_upstream_fields_fill_a_large_answer_head(mocks, gateway):
    """40 upstream fields of ~100 bytes (a 4 KB head, more than the head's
    stack room): every one reaches the client, with the gateway's own."""
    fields = b"".join(b"X-H%d: %d-%s\r\n" % (i, i, b"v" * 100) for i in range(40))
    up = RawUpstream(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + fields
                     + b"Content-Length: 2\r\n\r\n{}")
    try:
        ms = mocks(1)
        g = gateway([{"name": "raw", "url": up.url}], policies="retry:\n  max_attempts: 1\n")
        st, h, body = g.request("POST", "/v1/chat/completions", CHAT)
        assert st == 200 and body == b"{}", (st, body[:200])
        for i in range(40):
            assert h.get("x-h%d" % i) == "%d-%s" % (i, "v" * 100), i
        assert h["x-upstream-host"] == "raw" and h["x-request-id"]
        still_serving(gateway(hosts_of(ms)))
    finally:
        up.stop()


def test_mock_garbage_and_truncated_streams(mocks, gateway):
    ms = mocks(2)
    for m in ms:
        m.config(garbage=True)
    g = gateway(hosts_of(ms), policies="retry:\n  max_attempts: 2\n  backoff: {initial: 1ms}\n")
    st, _, body = g.chat()
    err = assert_openai_error(st, body, 502)
    assert "malformed JSON" in err["message"]
    for m in ms:
        m.config(garbage=False, close_after_chunks=2, chunks=5)
    for _ in range(3):
        st, h, body = g.chat(stream=True)
        assert st == 200 and h["content-type"].startswith("text/event-stream")
        text = body.decode()
        assert text.count("data: {\"id\"") == 2, text
        assert "event: error" in text and "[DONE]" not in text
        frame = [l for l in text.split("\n") if l.startswith("data: {\"error\"")]
        assert json.loads(frame[0][6:])["error"]["code"] == "stream_interrupted"
        st, _, body = g.chat()                     # not a stream: unaffected
        assert st == 200, body
    for m in ms:
        m.reset()
    still_serving(g)


# --- fuzz corpus replay ----------------------------------------------------------

HARNESSES = ["fuzz_config", "fuzz_request", "fuzz_jscan"]
PKGS = ["libevent", "libevent_pthreads", "libevent_openssl", "openssl", "libcurl", "jansson", "yaml-0.1", "hiredis"]
CFLAGS = ["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror"]
REL_FLAGS = ["-O2", "-g"]
ASAN_FLAGS = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer",
              "-fno-sanitize-recover=undefined"]


def gateway_objects():
    """The gateway's objects but main.o, from the build `make test` made
    (build/asan or build/release); the sources when there is none."""
    objdir = os.path.join(ROOT, "build", "asan" if SANITIZED else "release")
    srcs = src_files()
    objs = [os.path.join(objdir, os.path.relpath(f, os.path.join(ROOT, "src"))[:-2] + ".o")
            for f in srcs]
    if all(os.path.exists(o) and os.path.getmtime(o) >= os.path.getmtime(c)
           for o, c in zip(objs, srcs)):
        return objs
    return srcs


def build_replay(out, harness, with_gateway):
    pkg = subprocess.run(["pkg-config", "--cflags", "--libs"] + PKGS,
                         capture_output=True, text=True, check=True).stdout.split()
    cmd = (["gcc"] + CFLAGS + (ASAN_FLAGS if SANITIZED else REL_FLAGS)
           + SRC_IQUOTE + [harness, os.path.join(FUZZ, "replay.c")]
           + (gateway_objects() if with_gateway else []) + pkg + ["-lm", "-lpthread", "-o", out])
    r = build_driver(cmd, out)   # once per make test (conftest)
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize("name", HARNESSES)
def test_fuzz_corpus_replays_clean(tmp_path, name):
    exe = build_replay(str(tmp_path / name), os.path.join(FUZZ, name + ".c"), True)
    d = os.path.join(FUZZ, "corpus", name)
    n = len([f for f in os.listdir(d) if not f.startswith(".")])
    assert n >= 20, "saved corpus %s is too small" % d
    dirs = [d]
    if name == "fuzz_request":                 # the malformed requests too
        dirs.append(os.path.join(MALFORMED, "http"))
        n += len(os.listdir(dirs[-1]))
    r = subprocess.run([exe] + dirs, capture_output=True, env=proc_env(), timeout=600)
    out = r.stdout.decode() + r.stderr.decode(errors="replace")
    assert r.returncode == 0, out[-4000:]
    assert "replayed %d inputs" % n in out
    assert "Sanitizer" not in out and "runtime error" not in out, out[-4000:]


def test_fuzz_replay_driver_reports_a_crash(tmp_path):
    """The replay can fail: a harness that aborts on one input fails the run."""
    src = tmp_path / "crashy.c"
    src.write_text('#include <stdint.h>\n#include <stdlib.h>\n#include <string.h>\n'
                   'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);\n'
                   'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)\n'
                   '{ if (n >= 5 && memcmp(d, "CRASH", 5) == 0) abort(); return 0; }\n')
    exe = build_replay(str(tmp_path / "crashy"), str(src), False)
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a").write_bytes(b"fine")
    assert subprocess.run([exe, str(d)], capture_output=True).returncode == 0
    (d / "b").write_bytes(b"CRASH!")
    assert subprocess.run([exe, str(d)], capture_output=True).returncode != 0
