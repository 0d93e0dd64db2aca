"""HTTPS upstreams through the own HTTP/1.1 client (upstream_h1.c on OpenSSL,
its own read and write events): certificates verified by default, a certificate from another
CA refused with a clear error, server_name used for SNI, the name check and
Host, verify: false, connections kept and TLS sessions resumed, streams.
The TLS mocks (test_tls.TLSMock, fixture tls_mock) count handshakes and record the SNI."""
import json
import os
import socket
import ssl
import threading
import time

from conftest import SANITIZED, wait_for, write_conf
from test_stream_faults import metric, raw_stream_post, read_raw  # helpers, no tests
from test_reload import reload_and_wait  # a helper, no tests
from test_tls import tls_mock  # noqa: F401 -- a fixture
from tls_pki import Pki

ONE_TRY = "retry:\n  max_attempts: 1\n"
SLOW = 10 if SANITIZED else 1


def error_message(body):
    return json.loads(body)["error"]["message"]


def test_certificate_from_another_ca_is_refused_clearly(gateway, tls_mock, tmp_path):
    m = tls_mock()
    other = Pki(tmp_path / "other", name="Other CA")
    g = gateway([{"name": "up", "url": m.url, "tls": {"ca_file": other.ca}}], policies=ONE_TRY)
    st, _, body = g.chat()
    assert st == 502, body
    # OpenSSL's reason, in the words the docs quote (curl's).
    assert "SSL certificate problem: unable to get local issuer certificate" in \
        error_message(body), body
    st, _, body = g.chat(stream=True)
    assert st == 502, body
    assert m.stats()["requests"] == 0
    g.stop()


def test_server_name_is_sent_as_sni_checked_and_used_as_host(gateway, tls_mock):
    m = tls_mock()
    # The URL names 127.0.0.1: checked against the certificate's IP entry, no SNI.
    g = gateway([{"name": "ip", "url": m.url, "tls": {"ca_file": m.pki.ca}}])
    st, _, body = g.chat()
    assert st == 200, body
    s = m.stats()
    # The test's own stats requests send no SNI either (127.0.0.1).
    assert set(s["tls_sni"]) == {""}, s
    assert s["last_headers"]["host"] == "127.0.0.1:%d" % m.port
    g.stop()
    g = gateway([{"name": "named", "url": m.url,
                  "tls": {"ca_file": m.pki.ca, "server_name": "localhost"}}])
    st, _, body = g.chat()
    assert st == 200, body
    s = m.stats()
    assert s["tls_sni"].get("localhost", 0) >= 1, s
    assert s["last_headers"]["host"] == "localhost:%d" % m.port, s["last_headers"]
    g.stop()
    # A name the certificate does not carry: sent, and refused by the check.
    g = gateway([{"name": "wrong", "url": m.url,
                  "tls": {"ca_file": m.pki.ca, "server_name": "wrong.test"}}], policies=ONE_TRY)
    st, _, body = g.chat()
    assert st == 502, body
    assert "SSL certificate problem: hostname mismatch" in error_message(body), body
    assert m.stats()["tls_sni"].get("wrong.test", 0) >= 1
    g.stop()


def test_tls_settings_changed_by_reload_apply_to_the_same_url(gateway, tls_mock):
    """A URL's TLS peer (address, server_name, CA) is matched against the
    request's settings every time, not taken from the URL's last request:
    after a reload that changes server_name for the same URL the new name
    is sent and checked (refused: the certificate does not carry it), and
    after changing it back the requests go through again."""
    m = tls_mock()

    def hosts(name):
        return [{"name": "up", "url": m.url, "tls": {"ca_file": m.pki.ca, "server_name": name}}]

    g = gateway(hosts("localhost"), policies=ONE_TRY)
    for _ in range(3):
        assert g.chat()[0] == 200
    for gen, name, want in ((1, "wrong.test", 502), (2, "localhost", 200)):
        write_conf(g.conf_dir, hosts(name), policies=ONE_TRY)
        reload_and_wait(g, gen)
        for _ in range(3):
            st, _, body = g.chat()
            assert st == want, (name, body)
        if want == 502:
            assert "SSL certificate problem: hostname mismatch" in error_message(body), body
    assert m.stats()["tls_sni"].get("wrong.test", 0) >= 1
    g.stop()


def test_verify_false_accepts_any_certificate(gateway, tls_mock, tmp_path):
    m = tls_mock()
    g = gateway([{"name": "lab", "url": m.url,
                  "tls": {"verify": False, "server_name": "wrong.test"}}])
    for stream in (False, True):
        st, _, body = g.chat(stream=stream)
        assert st == 200, body
    assert m.stats()["tls_sni"].get("wrong.test", 0) >= 1
    out = g.stop()
    assert "host lab: tls.verify is false" in out


def test_connections_kept_and_sessions_resumed(gateway, tls_mock):
    m = tls_mock()
    g = gateway([{"name": "up", "url": m.url, "tls": {"ca_file": m.pki.ca}}])
    n = 30
    for i in range(n):
        st, _, body = g.chat(stream=i % 3 == 0)
        assert st == 200, body
    s = m.stats()
    assert s["requests"] == n
    assert 1 <= s["tls_handshakes"] <= 4, s          # one or a few per worker
    # The mock closes after each answer: every request needs a new
    # connection, and each of those resumes the cached session.
    m.config(close_connection=True)
    base_hs, base_res = s["tls_handshakes"], s["tls_resumed"]
    for i in range(10):
        st, _, body = g.chat(stream=i % 2 == 1)
        assert st == 200, body
    s = m.stats()
    hs, res = s["tls_handshakes"] - base_hs, s["tls_resumed"] - base_res
    # The first of the ten on each worker thread (INFERGATE_TEST_WORKERS)
    # may still find its kept connection; each thread keeps its own
    # sessions. m.config() and m.stats() are two full handshakes of the
    # test's own.
    workers = int(os.environ.get("INFERGATE_TEST_WORKERS") or 1)
    assert hs >= 10 - workers + 2, s
    assert res >= 9 - workers, s
    assert hs - res <= 2 + workers, s
    g.stop()


def test_long_stream_over_tls_upstream(gateway, tls_mock):
    m = tls_mock()
    m.config(chunks=200, chunk_interval_ms=1, content_bytes=2000)
    g = gateway([{"name": "up", "url": m.url, "tls": {"ca_file": m.pki.ca}}])
    st, hdrs, body = g.chat(stream=True)
    assert st == 200, body
    events = [l for l in body.split(b"\n") if l.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]", body[-300:]
    assert len(events) >= 200, len(events)
    # JSON with a big body, many TLS records.
    st, _, body = g.chat()
    assert st == 200, body
    assert len(json.loads(body)["choices"][0]["message"]["content"]) >= 2000
    assert m.stats()["tls_handshakes"] <= (4 if not SANITIZED else 6)
    g.stop()


def test_tls_upstream_cut_or_stalled_mid_stream_ends_the_stream(gateway, tls_mock):
    """The records read in the same event as the end (tls_recv) carry it
    too: a stream the upstream cuts ends at once with the error event, a
    stalled one on stream_idle_timeout, and the cut event never leaks."""
    m = tls_mock()
    m.config(chunks=5, close_after_chunks=2, partial_bytes=40)
    g = gateway([{"name": "up", "url": m.url, "tls": {"ca_file": m.pki.ca}}],
                policies="retry:\n  max_attempts: 1\n  stream_idle_timeout: 500ms\n")
    t0 = time.monotonic()
    st, _, raw = g.chat(stream=True)
    assert st == 200, raw
    assert time.monotonic() - t0 < 5 * SLOW
    assert b"stream_interrupted" in raw, raw
    assert raw.count(b"data: {\"id\"") == 2 and b"tok2" not in raw, raw
    m.config(chunks=5, close_after_chunks=0, stall_after_chunks=2, partial_bytes=40)
    st, _, raw = g.chat(stream=True)
    assert st == 200, raw
    assert b"stream_timeout" in raw, raw
    assert b"tok2" not in raw, raw
    g.stop()


def test_big_request_on_a_kept_tls_connection(gateway, tls_mock):
    """3.9 MB requests written at once on a kept connection (tls_send)
    arrive whole at the mock (which reads at once: the loopback socket
    usually takes them; the write event's part is the next test's)."""
    m = tls_mock()
    g = gateway([{"name": "up", "url": m.url, "tls": {"ca_file": m.pki.ca}}],
                policies="server:\n  max_body_bytes: 8MB\n")
    st, _, body = g.chat()
    assert st == 200, body
    big = "y" * (3900 << 10)           # the mock keeps bodies up to 4 MB
    for stream in (False, True):
        st, _, body = g.chat(stream=stream, messages=[{"role": "user", "content": big}])
        assert st == 200, body[:300]
        assert len(m.stats()["last_body"]["messages"][0]["content"]) == len(big)
    st, _, body = g.chat()
    assert st == 200, body
    # Kept throughout: one connection per worker thread, plus the test's
    # own three m.stats() connections.
    workers = int(os.environ.get("INFERGATE_TEST_WORKERS") or 1)
    assert m.stats()["tls_handshakes"] <= workers + 3
    g.stop()


def test_body_beyond_the_join_limit_on_new_tls_connections(gateway, tls_mock):
    """Bodies larger than H1_JOIN_MAX (16 KB: head and body no longer one
    block) on NEW TLS connections (the mock closes after each answer), so
    the request waits for the handshake: head and body both reach the
    mock and the answer comes back (a body left behind would hang until
    the timeout). By name: test_resolver's https test does the same."""
    m = tls_mock()
    m.config(close_connection=True)
    g = gateway([{"name": "up", "url": m.url, "tls": {"ca_file": m.pki.ca}}],
                policies="retry:\n  max_attempts: 1\n  per_try_timeout: %ds\n"
                         "server:\n  max_body_bytes: 1MB\n" % (5 * SLOW))
    for size, stream in ((17 << 10, False), (17 << 10, True), (300 << 10, False)):
        big = "b" * size
        st, _, body = g.chat(stream=stream, messages=[{"role": "user", "content": big}])
        assert st == 200, body[:300]
        assert len(m.stats()["last_body"]["messages"][0]["content"]) == size
    assert m.stats()["tls_handshakes"] >= 3
    g.stop()


def test_paused_tls_stream_completes_and_is_not_idle(gateway, tls_mock):
    """A client that does not read pauses the TLS upstream (EV_READ off on
    the connection, records already read kept in the input): the
    stream still completes, whole, and is not taken for a stall."""
    m = tls_mock()
    m.config(chunks=100000)             # ~15 MB: fills the client side, pauses the upstream
    g = gateway([{"name": "up", "url": m.url, "tls": {"ca_file": m.pki.ca}}],
                policies="retry:\n  stream_idle_timeout: 500ms\n")
    s = raw_stream_post(g.port)
    wait_for(lambda: m.stats()["requests"] == 1, what="stream to start")
    time.sleep(1.2)  # the point of the test: a client that does not read for > idle
    raw = read_raw(s, until=b"0\r\n\r\n")
    assert raw.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"), raw[-100:]
    assert metric(g, "infergate_upstream_stalls_total", host="up", timeout="idle") == 0
    g.stop()


def test_large_answers_across_many_tls_records(gateway, tls_mock):
    """A 1 MB JSON answer (~64 full 16 KB records, several read events of
    many records each) and a stream of 3000 events arrive whole and in
    order over one kept connection."""
    m = tls_mock()
    m.config(content_bytes=1 << 20)
    g = gateway([{"name": "up", "url": m.url, "tls": {"ca_file": m.pki.ca}}])
    for _ in range(2):
        st, _, body = g.chat()
        assert st == 200, body[:300]
        content = json.loads(body)["choices"][0]["message"]["content"]
        head = "Hello from " + m.name
        want = head + "".join(" lorem ipsum"[i % 12] for i in range((1 << 20) - len(head)))
        assert len(content) == len(want) and content == want, len(content)
    m.config(content_bytes=0, chunks=3000)
    st, _, body = g.chat(stream=True)
    assert st == 200, body[-300:]
    toks = [json.loads(l[6:])["choices"][0]["delta"].get("content")
            for l in body.split(b"\n") if l.startswith(b"data: {")]
    assert [t for t in toks if t] == ["tok%d " % i for i in range(3000)], toks[-3:]
    assert body.rstrip().endswith(b"data: [DONE]"), body[-100:]
    workers = int(os.environ.get("INFERGATE_TEST_WORKERS") or 1)
    # One connection per worker thread, plus the test's own (2 config, 1 stats).
    assert m.stats()["tls_handshakes"] <= workers + 3
    g.stop()


class RawServer:
    """A TCP listener on loopback that answers a connection with `reply`
    (then closes it), or, with reply None, accepts and never says a word."""

    def __init__(self, reply):
        self.reply = reply
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.conns = []
        self.stopped = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(c)
            if self.reply is not None:
                try:
                    c.settimeout(5)
                    c.recv(4096)                # the ClientHello
                    c.sendall(self.reply)
                except OSError:
                    pass
                c.close()

    def stop(self):
        self.stopped = True
        self.sock.close()
        for c in self.conns:
            c.close()


def test_garbage_instead_of_a_tls_handshake_fails_clearly(gateway):
    """An https:// upstream that answers the ClientHello with plain HTTP:
    a 502 naming the handshake and OpenSSL's reason, no crash, and the
    gateway keeps serving."""
    srv = RawServer(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" + b"\x00garbage" * 64)
    try:
        g = gateway([{"name": "up", "url": "https://127.0.0.1:%d" % srv.port,
                      "tls": {"verify": False}}], policies=ONE_TRY)
        for stream in (False, True):
            st, _, body = g.chat(stream=stream)
            assert st == 502, body
            msg = error_message(body)
            assert "TLS handshake with 127.0.0.1 port %d failed: " % srv.port in msg, msg
            assert not msg.endswith("failed: "), msg
        assert srv.accepted >= 2
        st, _, _ = g.request("GET", "/health")
        assert st == 200
        g.stop()
    finally:
        srv.stop()


def test_stalled_tls_handshake_is_bounded_by_the_attempt_timeout(gateway):
    """An upstream that accepts and never answers the ClientHello: the
    attempt ends at its connect timeout (retry.per_try_timeout: the
    handshake is part of the connect), not never."""
    srv = RawServer(None)
    try:
        g = gateway([{"name": "up", "url": "https://127.0.0.1:%d" % srv.port,
                      "tls": {"verify": False}}],
                    policies="retry:\n  max_attempts: 1\n  per_try_timeout: 700ms\n")
        t0 = time.monotonic()
        # A stream: no total deadline, so only the connect timeout can end it.
        st, _, body = g.chat(stream=True)
        took = time.monotonic() - t0
        assert st in (502, 504), body
        assert "timed out" in error_message(body), body
        assert 0.6 <= took < 5 * SLOW, took
        assert srv.accepted == 1
        out = g.stop()
        # The connect timeout (the handshake is part of the connect), not the total.
        assert "Connection timed out after 700 milliseconds" in out, out[-2000:]
    finally:
        srv.stop()


class SlowReadingTLSUpstream:
    """An HTTPS upstream (Python's ssl) with a 32 KB receive buffer that
    waits `delay` s before reading a request: a big request fills the
    socket, so SSL_write says WANT_WRITE and the rest goes from the write
    event. Answers a fixed chat completion; records each body's length."""

    ANSWER = json.dumps({"id": "chatcmpl-slow", "object": "chat.completion", "created": 0,
                         "model": "mock-model", "choices": [{"index": 0, "message": {
                             "role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                   "total_tokens": 2}}).encode()

    def __init__(self, pki, delay):
        cert, key, _ = pki.issue()
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.delay = delay
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.bodies = []
        self.accepted = 0
        self.stopped = False
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while not self.stopped:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self.serve, args=(raw,), daemon=True).start()

    def serve(self, raw):
        try:
            raw.settimeout(30)
            s = self.ctx.wrap_socket(raw, server_side=True)
            while True:
                time.sleep(self.delay)          # let the client fill the socket
                buf = b""
                while b"\r\n\r\n" not in buf:
                    d = s.recv(65536)
                    if not d:
                        return
                    buf += d
                head, rest = buf.split(b"\r\n\r\n", 1)
                n = int([l.split(b":", 1)[1] for l in head.split(b"\r\n")
                         if l.lower().startswith(b"content-length:")][0])
                while len(rest) < n:
                    d = s.recv(1 << 20)
                    if not d:
                        return
                    rest += d
                self.bodies.append(len(rest))
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(self.ANSWER), self.ANSWER))
        except (OSError, ValueError, IndexError):
            pass
        finally:
            raw.close()

    def stop(self):
        self.stopped = True
        self.sock.close()


def test_request_larger_than_the_socket_goes_out_from_the_write_event(gateway, tmp_path):
    """A 6 MB request to an upstream that reads late with a small receive
    buffer: SSL_write takes part of it (WANT_WRITE), the write event sends
    the rest, whole, on a new and on a kept connection; then the
    connection is kept for a small request."""
    pki = Pki(tmp_path / "slow", name="Slow CA")
    up = SlowReadingTLSUpstream(pki, delay=0.3)
    try:
        g = gateway([{"name": "up", "url": "https://127.0.0.1:%d" % up.port,
                      "tls": {"ca_file": pki.ca}}],
                    policies=ONE_TRY + "server:\n  max_body_bytes: 8MB\n")
        big = "z" * (6 << 20)
        for _ in range(2):
            st, _, body = g.chat(messages=[{"role": "user", "content": big}])
            assert st == 200, body[:300]
            assert up.bodies[-1] > len(big), up.bodies
        st, _, body = g.chat()
        assert st == 200, body[:300]
        assert len(up.bodies) == 3
        workers = int(os.environ.get("INFERGATE_TEST_WORKERS") or 1)
        assert up.accepted <= workers, up.accepted        # kept
        g.stop()
    finally:
        up.stop()


def test_tls_mock_sends_each_reply_as_one_record_without_stalls(tls_mock):
    """The bench's TLS mock (infergate-mock --tls-cert): a reply written in
    one go (a JSON answer, a stream of 20 events without pauses) leaves as
    one TLS record, as the plain mock's leaves in one write(), and a kept
    connection is not held up by Nagle's algorithm behind the client's
    delayed ACK (~40 ms per reply when head and body left as two records)."""
    m = tls_mock()
    m.config(chunks=20)
    ctx = ssl.create_default_context(cafile=m.pki.ca)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(inc, out, server_hostname="localhost")
    sock = socket.create_connection(("127.0.0.1", m.port), timeout=10 * SLOW)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    raw = b""

    def records():
        """Feeds whole records received so far to TLS; returns how many
        application-data records (type 23) they were."""
        nonlocal raw
        n = 0
        while len(raw) >= 5 and len(raw) >= 5 + int.from_bytes(raw[3:5], "big"):
            size = 5 + int.from_bytes(raw[3:5], "big")
            n += raw[0] == 23
            inc.write(raw[:size])
            raw = raw[size:]
        return n

    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(out.read())
            raw += sock.recv(65536)
            records()
    sock.sendall(out.read())

    def ask(stream):
        nonlocal raw
        body = json.dumps({"model": "mock-model", "stream": stream,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        tls.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        sock.sendall(out.read())
        got, n = b"", 0
        end = b"0\r\n\r\n" if stream else b"}"
        while not got.endswith(end):
            raw += sock.recv(65536)
            n += records()
            try:
                while True:
                    got += tls.read(65536)
            except ssl.SSLWantReadError:
                pass
        assert got.startswith(b"HTTP/1.1 200"), got[:200]
        return n

    ask(False)                  # the session tickets come along with the first
    t0 = time.monotonic()
    counts = [ask(stream) for stream in [False, True] * 10]
    took = time.monotonic() - t0
    sock.close()
    assert counts == [1] * 20, counts
    assert took < 1.0 * SLOW, took     # ~40 ms per answer stalled by Nagle before: 1.2 s



def test_streams_and_whole_answers_share_kept_tls_connections(gateway, tls_mock):
    """A TLS connection keeps its record buffers through a whole answer and
    frees them while a stream waits (upstream_h1.c, tls_lean): the mode
    switches per transfer on kept connections. Streams of records that
    fill a buffer (~15 KB events) waiting between events, whole answers of
    many records, and streams again, all on the same few connections, come
    whole; so do those taken again after they freed theirs while pooled."""
    m = tls_mock()
    g = gateway([{"name": "up", "url": m.url, "tls": {"ca_file": m.pki.ca}}])
    m.config(chunks=3, chunk_interval_ms=100 * SLOW, event_bytes=15000, content_bytes=40000)
    results = []

    def one(i):
        st, _, body = g.chat(stream=i % 2 == 0)
        results.append((i, st, body))

    def rounds(n):
        """n rounds of 8 requests at once, numbered 0 .. 8n-1."""
        for rnd in range(n):
            threads = [threading.Thread(target=one, args=(rnd * 8 + i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60 * SLOW)

    rounds(3)
    assert len(results) == 24, len(results)
    for i, st, body in results:
        assert st == 200, (i, body[:300])
        if i % 2:
            assert len(json.loads(body)["choices"][0]["message"]["content"]) >= 40000
        else:
            events = [l for l in body.split(b"\n") if l.startswith(b"data: ")]
            assert events[-1] == b"data: [DONE]", body[-300:]
            deltas = [json.loads(e[6:])["choices"][0]["delta"]["content"] for e in events[:-1]]
            assert len(deltas) == 3 and all(len(d) >= 15000 for d in deltas), body[-300:]
    # Kept: far fewer handshakes than transfers.
    assert m.stats()["tls_handshakes"] <= 8 * 2 + 4, m.stats()
    # Idle past H1_TLS_WARM_MS (2 s), pooled connections free their
    # buffers (the pool's timer); taken again, they serve whole answers and
    # streams without a new handshake.
    m.config(event_bytes=0, content_bytes=20000, chunk_interval_ms=0)
    hs = m.stats()["tls_handshakes"]
    time.sleep(2.5)                     # the idle time is what is tested
    results.clear()
    rounds(2)
    assert len(results) == 16 and all(st == 200 for _, st, _ in results), \
        [(i, st) for i, st, _ in results if st != 200]
    assert all(len(json.loads(b)["choices"][0]["message"]["content"]) >= 20000
               for i, _, b in results if i % 2)
    assert m.stats()["tls_handshakes"] - hs <= 2 + 2, m.stats()   # m.stats() itself: 1 each
    g.stop()
