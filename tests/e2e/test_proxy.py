"""Core gateway: balancing, key rotation, streaming, failover, errors."""
import http.client
import json
import signal
import socket
import threading
import time

import pytest

from conftest import SANITIZED, SAN_ENV, assert_openai_error, hosts_of, wait_for  # noqa: F401

CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}


def keys_n(n, active=True):
    return [{"key": "sk-test-key-%02d-abcdefgh" % i, "description": "k%d" % i, "isActive": active}
            for i in range(n)]


def sse_events(body):
    return [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]


def test_chat_round_robin_and_headers(mocks, gateway):
    ms = mocks(3)
    g = gateway(hosts_of(ms, m1={"address": "0xabc"}), keys_n(2))
    seen = []
    for _ in range(9):
        st, h, body = g.chat()
        assert st == 200, body
        data = json.loads(body)
        assert data["object"] == "chat.completion"
        assert data["choices"][0]["message"]["content"] == "Hello from " + h["x-upstream-host"]
        assert h["x-attempts"] == "1"
        assert h["x-request-id"]
        if h["x-upstream-host"] == "m1":
            assert h["x-provider-address"] == "0xabc"
        else:
            assert "x-provider-address" not in h
        seen.append(h["x-upstream-host"])
    # strict rotation: every window of 3 consecutive requests covers all hosts
    for i in range(0, 9, 3):
        assert sorted(seen[i:i + 3]) == ["m0", "m1", "m2"], seen
    for m in ms:
        assert m.stats()["requests"] == 3


def test_hop_by_hop_and_own_fields_not_passed_on(gateway):
    """An answer's hop-by-hop fields and those infergate sets itself are
    dropped; the others are passed on once each."""
    answer = (b'{"id":"chatcmpl-hop","object":"chat.completion","choices":[]}')
    head = ("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            "Keep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\n"
            "Proxy-Authenticate: Basic\r\nProxy-Connection: keep-alive\r\n"
            "Date: Mon, 01 Jan 2024 00:00:00 GMT\r\nServer: upstream\r\n"
            "X-Request-Id: upstream-id\r\nX-Custom: kept\r\nCache-Control: no-store\r\n"
            "X-Custom-Field-18a: kept too\r\nX-Custom-One: 12\r\n"
            "X-Long: %s\r\nX-After-Long: 1\r\n\r\n"        # past the request's own room
            % (len(answer), "L" * 700)).encode()
    lis = socket.socket()
    lis.bind(("127.0.0.1", 0))
    lis.listen(4)
    lis.settimeout(20)

    def serve():
        try:
            c, _ = lis.accept()
            c.settimeout(20)
            got = b""
            while b"\r\n\r\n" not in got:
                got += c.recv(65536)
            hdr, _, rest = got.partition(b"\r\n\r\n")
            n = int([ln.split(b":")[1] for ln in hdr.split(b"\r\n")
                     if ln.lower().startswith(b"content-length:")][0])
            while len(rest) < n:
                rest += c.recv(65536)
            c.sendall(head + answer)
            c.close()
        except OSError:
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        g = gateway([{"name": "raw", "url": "http://127.0.0.1:%d" % lis.getsockname()[1]}],
                    policies="retry:\n  max_attempts: 1\n")
        conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=30)
        conn.request("POST", "/v1/chat/completions", body=json.dumps(
            {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
            headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        fields = [(k.lower(), v) for k, v in r.getheaders()]
        conn.close()
    finally:
        t.join(timeout=30)
        lis.close()
    assert r.status == 200, fields
    names = [k for k, _ in fields]
    for gone in ("keep-alive", "te", "trailer", "upgrade", "proxy-authenticate",
                 "proxy-connection", "date"):
        assert gone not in names, fields
    for once in ("content-type", "content-length", "server", "x-request-id", "connection",
                 "x-custom", "cache-control", "x-custom-field-18a", "x-custom-one"):
        assert names.count(once) == 1, (once, fields)
    d = dict(fields)
    assert d["server"] == "infergate" and d["x-request-id"] != "upstream-id"
    assert d["x-custom"] == "kept" and d["cache-control"] == "no-store"
    assert d["x-long"] == "L" * 700 and d["x-after-long"] == "1"
    assert d["x-attempts"] == "1" and d["x-upstream-host"] == "raw"


def test_request_id_kept_and_generated(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms))
    st, h, _ = g.chat(headers={"X-Request-Id": "client-req-42"})
    assert st == 200 and h["x-request-id"] == "client-req-42"
    assert ms[0].stats()["last_headers"]["x-request-id"] == "client-req-42"
    # Field names match in any case (the first letter too).
    st, h, _ = g.chat(headers={"x-REQUEST-id": "client-req-43"})
    assert st == 200 and h["x-request-id"] == "client-req-43"
    st, h1, _ = g.chat()
    st, h2, _ = g.chat()
    assert h1["x-request-id"] != h2["x-request-id"]


def test_keys_rotate_per_request_and_inactive_never_used(mocks, gateway):
    ms = mocks(2)
    keys = keys_n(3) + [{"key": "sk-inactive-key-zzzzzzzz", "description": "off", "isActive": False}]
    g = gateway(hosts_of(ms), keys)
    for _ in range(12):
        st, _, body = g.chat()
        assert st == 200, body
    used = {}
    for m in ms:
        for k, n in m.stats()["keys"].items():
            used[k] = used.get(k, 0) + n
    assert "sk-inactive-key-zzzzzzzz" not in used
    assert sorted(used) == sorted(k["key"] for k in keys[:3])
    assert all(n == 4 for n in used.values()), used


def test_key_pools_and_host_restrictions(mocks, gateway):
    ms = mocks(2)
    hosts = hosts_of(ms, m0={"keys": "pool-a"})
    keys = [{"key": "sk-pool-a-key-11111111", "pool": "pool-a"},
            {"key": "sk-default-key-22222222"},
            {"key": "sk-only-m1-key-33333333", "hosts": ["m1"]}]
    g = gateway(hosts, keys)
    for _ in range(8):
        assert g.chat()[0] == 200
    assert set(ms[0].stats()["keys"]) == {"sk-pool-a-key-11111111"}
    assert set(ms[1].stats()["keys"]) == {"sk-default-key-22222222", "sk-only-m1-key-33333333"}


def test_streaming_is_chunked_not_buffered(mocks, gateway):
    ms = mocks(1, "--chunks", "6", "--chunk-interval-ms", "250")
    g = gateway(hosts_of(ms))
    conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=30)
    body = dict(CHAT, stream=True)
    t0 = time.monotonic()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200
    assert r.getheader("Content-Type").startswith("text/event-stream")
    assert r.getheader("X-Upstream-Host") == "m0"
    first = r.readline()
    t_first = time.monotonic() - t0
    rest = r.read()
    t_all = time.monotonic() - t0
    conn.close()
    events = sse_events(first + rest)
    assert events[-1] == "[DONE]"
    assert len(events) == 7
    assert json.loads(events[0])["object"] == "chat.completion.chunk"
    # The mock spends >= 5 * 250 ms between its first and its last chunk:
    # the first one must reach us long before the last was sent.
    assert t_all - t_first >= 1.0, (t_first, t_all)
    assert ms[0].stats()["streams_completed"] == 1


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_slow_client_backpressure_bounds_memory(mocks, gateway):
    # ~65 MB of SSE that the client does not read for a while: the kernel
    # buffers hold ~10 MB at most, the gateway must pause the upstream
    # instead of buffering the rest.
    ms = mocks(1, "--chunks", "500000")
    # Under ASan, freed memory waits in a quarantine (256 MB by default) and
    # counts in RSS: shrink it, or the test measures ASan instead of buffering.
    env = {"ASAN_OPTIONS": SAN_ENV["ASAN_OPTIONS"] + ":quarantine_size_mb=1"} if SANITIZED else None
    g = gateway(hosts_of(ms), env=env)
    base = rss_kb(g.proc.pid)
    s = socket.create_connection(("127.0.0.1", g.port))
    body = json.dumps(dict(CHAT, stream=True)).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    # let the upstream push as much as it can into the gateway
    wait_for(lambda: ms[0].stats()["requests"] == 1, what="stream to start")
    time.sleep(1.5)  # the point of the test is a client that does not read
    grown = rss_kb(g.proc.pid) - base
    assert grown < 16 * 1024, "gateway grew by %d KB while the client did not read" % grown
    total = 0
    s.settimeout(30)
    tail = b""
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        total += len(chunk)
        tail = (tail + chunk)[-64:]
        if b"0\r\n\r\n" in tail:
            break
    s.close()
    assert b"[DONE]" in tail
    assert total > 60 * 1024 * 1024


def dechunk(body):
    """The data of a chunked body, its framing checked strictly."""
    out, i = b"", 0
    while True:
        eol = body.index(b"\r\n", i)
        size = int(body[i:eol], 16)
        i = eol + 2
        if size == 0:
            assert body[i:] == b"\r\n", body[i:i + 64]
            return out
        out += body[i:i + size]
        assert body[i + size:i + size + 2] == b"\r\n", (i, size)
        i += size + 2


@pytest.mark.parametrize("version", ["1.1", "1.0"])
def test_paused_client_gets_every_event_in_order(mocks, gateway, version):
    # A client that stops reading, then reads: the chunks written straight
    # to the socket, those queued behind it once full, and those after the
    # upstream was paused and resumed arrive whole and in order (HTTP/1.1:
    # in valid chunked framing; HTTP/1.0: the bare stream up to the close).
    n = 30000
    ms = mocks(1, "--chunks", str(n))
    g = gateway(hosts_of(ms))
    s = socket.create_connection(("127.0.0.1", g.port))
    body = json.dumps(dict(CHAT, stream=True)).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/%s\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (version.encode(), len(body), body))
    wait_for(lambda: ms[0].stats()["requests"] == 1, what="stream to start")
    time.sleep(1.0)  # the point of the test is a client that does not read
    s.settimeout(30)
    got = b""
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        got += chunk
        if version == "1.1" and got.endswith(b"\r\n0\r\n\r\n"):
            break
    s.close()
    head, _, rest = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    if version == "1.1":
        assert b"\r\ntransfer-encoding: chunked" in head.lower()
        rest = dechunk(rest)
    else:
        assert b"transfer-encoding" not in head.lower()
    events = sse_events(rest)
    assert events[-1] == "[DONE]" and len(events) == n + 1, len(events)
    for i, ev in enumerate(events[:-1]):
        assert json.loads(ev)["choices"][0]["delta"]["content"] == "tok%d " % i


def test_embeddings_and_completions(mocks, gateway):
    ms = mocks(2)
    g = gateway(hosts_of(ms), keys_n(1))
    st, h, body = g.request("POST", "/v1/embeddings", {"model": "mock-model", "input": ["a", "b"]})
    assert st == 200, body
    data = json.loads(body)
    assert data["object"] == "list" and len(data["data"]) == 2
    st, h, body = g.request("POST", "/v1/completions", {"model": "mock-model", "prompt": "x"})
    assert st == 200, body
    assert json.loads(body)["object"] == "text_completion"
    paths = {}
    for m in ms:
        for p, n in m.stats()["paths"].items():
            paths[p] = paths.get(p, 0) + n
    assert paths.get("/v1/embeddings") == 1 and paths.get("/v1/completions") == 1


def test_failover_on_5xx(mocks, gateway):
    ms = mocks(2)
    ms[0].config(status=503)
    g = gateway(hosts_of(ms))
    for _ in range(4):
        st, h, body = g.chat()
        assert st == 200, body
        assert h["x-upstream-host"] == "m1"
        assert h["x-attempts"] in ("1", "2")
    assert ms[0].stats()["requests"] >= 1


def test_failover_on_connection_refused_and_timeout(mocks, gateway):
    ms = mocks(2)
    ms[1].config(hang=True)
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens there now
    hosts = [{"name": "dead", "url": "http://127.0.0.1:%d" % dead_port},
             {"name": "hang", "url": ms[1].url},
             {"name": "ok", "url": ms[0].url}]
    g = gateway(hosts, policies="retry:\n  max_attempts: 3\n  per_try_timeout: 300ms\n")
    for _ in range(3):
        st, h, body = g.chat()
        assert st == 200, body
        assert h["x-upstream-host"] == "ok"
    assert g.proc.poll() is None


def test_all_hosts_fail_is_502_and_no_host_is_503(mocks, gateway):
    ms = mocks(2)
    for m in ms:
        m.config(status=500)
    g = gateway(hosts_of(ms))
    st, h, body = g.chat()
    err = assert_openai_error(st, body, 502)
    assert "500" in err["message"]
    assert h["x-attempts"] == "2" or h["x-attempts"] == "3"
    g2 = gateway([])
    st, _, body = g2.chat()
    assert_openai_error(st, body, 503)
    st, _, body = g2.request("GET", "/health")
    assert st == 503


def test_client_errors_are_openai_shaped_and_survivable(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms), policies="server:\n  max_body_bytes: 2KB\n")
    st, _, body = g.request("POST", "/v1/chat/completions", "{not json", {"Content-Type": "application/json"})
    assert_openai_error(st, body, 400)
    st, _, body = g.request("POST", "/v1/chat/completions", "[1,2]")
    assert_openai_error(st, body, 400)
    st, _, body = g.request("POST", "/v1/chat/completions", {"model": 7})
    assert_openai_error(st, body, 400)
    big = {"model": "mock-model", "messages": [{"role": "user", "content": "x" * 5000}]}
    st, _, body = g.request("POST", "/v1/chat/completions", big)
    assert_openai_error(st, body, 413)
    st, _, body = g.request("GET", "/v1/nope")
    assert_openai_error(st, body, 404)
    st, _, body = g.request("GET", "/v1/chat/completions")
    assert_openai_error(st, body, 405)
    # raw garbage on the socket
    s = socket.create_connection(("127.0.0.1", g.port))
    s.sendall(b"THIS IS NOT HTTP\r\n\r\n")
    resp = s.recv(4096)
    s.close()
    assert resp.startswith(b"HTTP/1.1 400")
    # oversized headers
    st, _, body = g.request("GET", "/health", headers={"X-Big": "y" * 20000})
    assert_openai_error(st, body, 431)
    assert ms[0].stats()["requests"] == 0
    st, _, body = g.chat()
    assert st == 200
    assert g.proc.poll() is None


def test_chunked_request_body_and_keepalive(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms))
    conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=10)
    payload = json.dumps(CHAT).encode()
    conn.request("POST", "/v1/chat/completions", body=iter([payload[:10], payload[10:]]),
                 headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                 encode_chunked=True)
    r = conn.getresponse()
    assert r.status == 200, r.read()
    r.read()
    # same connection, second request
    conn.request("POST", "/v1/chat/completions", body=payload, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200
    r.read()
    conn.close()
    assert ms[0].stats()["last_body"]["model"] == "mock-model"


def test_stream_broken_midway_ends_with_error_event(mocks, gateway):
    ms = mocks(1, "--chunks", "10", "--close-after-chunks", "3")
    g = gateway(hosts_of(ms))
    st, h, body = g.chat(stream=True)
    assert st == 200
    text = body.decode()
    assert text.count("chat.completion.chunk") == 3
    assert "event: error" in text
    assert "[DONE]" not in text
    assert h["x-attempts"] == "1"


def test_upstream_garbage_json_fails_over(mocks, gateway):
    ms = mocks(2)
    ms[0].config(garbage=True)
    g = gateway(hosts_of(ms))
    for _ in range(4):
        st, h, body = g.chat()
        assert st == 200 and h["x-upstream-host"] == "m1"
        assert json.loads(body)["object"] == "chat.completion"
    assert ms[0].stats()["requests"] >= 1
    assert "malformed JSON" in g.output()


def test_models_and_health(mocks, gateway):
    ms = mocks(2)
    hosts = hosts_of(ms, m0={"models": ["llama-3.1-8b"]}, m1={"models": ["qwen-2.5-7b", "llama-3.1-8b"]})
    g = gateway(hosts)
    st, _, body = g.request("GET", "/v1/models")
    assert st == 200
    data = json.loads(body)
    assert data["object"] == "list"
    assert sorted(m["id"] for m in data["data"]) == ["llama-3.1-8b", "qwen-2.5-7b"]
    # model-aware: qwen only goes to m1
    for _ in range(4):
        st, h, _ = g.chat(model="qwen-2.5-7b")
        assert st == 200 and h["x-upstream-host"] == "m1"
    st, _, body = g.chat(model="unknown-model")
    assert_openai_error(st, body, 404)
    st, _, body = g.request("GET", "/health")
    assert st == 200
    assert json.loads(body)["hosts"]["total"] == 2


def test_models_proxied_when_hosts_list_none(mocks, gateway):
    ms = mocks(1, "--models", "alpha,beta")
    g = gateway(hosts_of(ms))
    st, h, body = g.request("GET", "/v1/models")
    assert st == 200
    assert sorted(m["id"] for m in json.loads(body)["data"]) == ["alpha", "beta"]


def test_secrets_never_logged_or_shown(mocks, gateway, tmp_path):
    ms = mocks(1)
    ms[0].config(fail_keys={"sk-secret-rejected-0001": 401})
    keys = [{"key": "sk-secret-rejected-0001", "description": "will be rejected"},
            {"key": "sk-secret-good-key-0002", "description": "good"}]
    access = str(tmp_path / "access.log")
    g = gateway(hosts_of(ms), keys,
                policies="server:\n  access_log: %s\n  log:\n    level: debug\n" % access)
    for _ in range(4):
        st, _, body = g.chat()
        assert st == 200, body
    st, _, status = g.request("GET", "/status")
    assert st == 200
    st, _, metrics = g.request("GET", "/metrics")
    doc = json.loads(status)
    states = {k["description"]: k["state"] for k in doc["keys"]}
    assert states == {"will be rejected": "disabled", "good": "active"}
    out = g.stop()
    with open(access) as f:
        alog = f.read()
    assert alog.count("\n") == 4
    for blob in (out, alog, status.decode(), metrics.decode()):
        for k in keys:
            assert k["key"] not in blob
            assert k["key"][3:] not in blob


def test_sigterm_exits_zero_and_client_auth(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms), policies="admin:\n  client_keys: [\"client-secret-1\"]\n")
    st, _, body = g.chat()
    assert_openai_error(st, body, 401)
    st, _, body = g.chat(headers={"Authorization": "Bearer client-secret-1"})
    assert st == 200
    assert ms[0].stats()["last_headers"].get("authorization", "") != "Bearer client-secret-1"
    g.signal(signal.SIGTERM)
    g.proc.wait(20)
    assert g.proc.returncode == 0


def test_host_names_and_ip_hosts_both_proxy(mocks, gateway):
    # http:// to an IP address and to a name (localhost: /etc/hosts through
    # the loop's resolver) both go through the own HTTP/1.1 client: both
    # must carry JSON and SSE the same way, keys and all.
    ms = mocks(2, "--chunks", "4")
    hosts = [{"name": "by-ip", "url": ms[0].url},
             {"name": "by-name", "url": ms[1].url.replace("127.0.0.1", "localhost")}]
    g = gateway(hosts, keys=[{"key": "sk-both-paths-key-0001"}],
                policies="routing:\n  strategy: round-robin\n")
    seen = set()
    for _ in range(4):
        st, h, data = g.chat()
        assert st == 200, data
        assert json.loads(data)["choices"][0]["message"]["content"]
        seen.add(h["x-upstream-host"])
        st, h, data = g.chat(stream=True)
        assert st == 200, data
        events = sse_events(data)
        assert events[-1] == "[DONE]" and len(events) == 5, events
        seen.add(h["x-upstream-host"])
    assert seen == {"by-ip", "by-name"}
    for m in ms:
        assert m.stats()["keys"] == {"sk-both-paths-key-0001": 4}


def test_mock_content_bytes_pads_answers(mocks, gateway):
    # make bench sizes chat answers with the mock's --content-bytes (~1 KB
    # answers); the gateway passes them through byte for byte.
    ms = mocks(1, "--content-bytes", "700")
    g = gateway(hosts_of(ms))
    st, h, data = g.chat()
    assert st == 200, data
    content = json.loads(data)["choices"][0]["message"]["content"]
    assert len(content) == 700 and content.startswith("Hello from m0")
    assert 900 <= len(data) <= 1200, len(data)
