"""Answers that stall or break after their head: retry.stream_idle_timeout,
retry.response_timeout, and a stream that breaks mid-event.

Every stream a client gets must end, and end as a stream an SSE parser
reads: whole events, then (on a fault) one `event: error`. Each case runs
through both upstream clients: http:// to an IP address (upstream_h1.c) and
a host name with `server.resolver: libc` (libcurl).
"""
import http.client
import json
import socket
import time

import pytest

from conftest import hosts_of, wait_for
from test_proxy import CHAT

PATHS = ["h1", "curl"]


def pol(path, policies=""):
    """The curl path: host names through libcurl (server.resolver: libc)."""
    return ("server:\n  resolver: libc\n" if path == "curl" else "") + policies


def hosts_for(ms, path):
    hs = hosts_of(ms)
    if path == "curl":
        for h in hs:
            h["url"] = h["url"].replace("127.0.0.1", "localhost")
    return hs


def sse_parse(raw):
    """A strict SSE parser (the WHATWG rules): lines end with CRLF, LF or
    CR; a blank line dispatches the event; an event not ended by a blank
    line when the stream ends is discarded. Returns [(type, data)]."""
    text = raw.decode("utf-8")
    events, data, etype, i, n = [], [], "", 0, len(text)
    while i < n:
        j = i
        while j < n and text[j] not in "\r\n":
            j += 1
        if j == n:
            break                      # an unterminated last line: discarded
        line = text[i:j]
        i = j + 2 if text[j] == "\r" and j + 1 < n and text[j + 1] == "\n" else j + 1
        if line == "":
            if data:
                events.append((etype or "message", "\n".join(data)))
            data, etype = [], ""
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            etype = value
    return events


def stream(g, body=None, timeout=30):
    """POSTs a streamed chat; (status, headers, raw body, seconds). The body
    must end as HTTP says (a clean end of the chunked body)."""
    conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=timeout)
    t0 = time.monotonic()
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body or dict(CHAT, stream=True)),
                     {"Content-Type": "application/json"})
        r = conn.getresponse()
        raw = r.read()                 # IncompleteRead if the end is not clean
        return r.status, {k.lower(): v for k, v in r.getheaders()}, raw, time.monotonic() - t0
    finally:
        conn.close()


def raw_stream_post(port):
    """A socket with a streamed chat POST sent on it, nothing read yet."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    body = json.dumps(dict(CHAT, stream=True)).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return s


def read_raw(s, until=None):
    """Reads s until EOF, or until the bytes end with `until`; closes it."""
    raw = bytearray()
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        raw += chunk
        if until and raw.endswith(until):
            break
    s.close()
    return bytes(raw)


def check_whole_events_then_error(raw, n_chunks, code):
    """Exactly n_chunks chunk events, each valid JSON, then one error event
    in the OpenAI shape; nothing after it."""
    events = sse_parse(raw)
    assert events, raw
    for etype, data in events[:-1]:
        assert etype == "message", (etype, data, raw)
        assert json.loads(data)["object"] == "chat.completion.chunk", data
    assert len(events) == n_chunks + 1, (events, raw)
    etype, data = events[-1]
    assert etype == "error", raw
    err = json.loads(data)["error"]
    assert err["code"] == code and err["type"] == "upstream_error" and err["message"], err
    assert raw.endswith(b"\n\n"), raw[-80:]
    return err


def metric(g, name, **labels):
    _, _, body = g.request("GET", "/metrics")
    want = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
    for line in body.decode().splitlines():
        if line.startswith(name + "{"):
            got = ",".join(sorted(line[len(name) + 1:line.index("}")].split(",")))
            if got == want:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def host_status(g, name):
    _, _, body = g.request("GET", "/status")
    return next(h for h in json.loads(body)["hosts"] if h["name"] == name)


IDLE = "retry:\n  stream_idle_timeout: 500ms\n"


# --------------------------------------------------------- idle timeout


@pytest.mark.parametrize("path", PATHS)
def test_stall_after_first_chunk_ends_with_error_event(mocks, gateway, path):
    ms = mocks(1, "--chunks", "5", "--stall-after-chunks", "1")
    g = gateway(hosts_for(ms, path), policies=pol(path, IDLE))
    st, h, raw, took = stream(g)
    assert st == 200
    err = check_whole_events_then_error(raw, 1, "stream_timeout")
    assert "stream_idle_timeout" in err["message"]
    assert 0.45 <= took < 15, took
    assert h["x-attempts"] == "1"
    # The upstream transfer is closed, and the stall counts everywhere.
    wait_for(lambda: ms[0].stats()["disconnects"] == 1, what="upstream connection closed")
    assert ms[0].stats()["in_flight"] == 0
    assert metric(g, "infergate_upstream_stalls_total", host="m0", timeout="idle") == 1
    assert metric(g, "infergate_upstream_stalls_total", host="m0", timeout="response") == 0
    assert metric(g, "infergate_upstream_attempts_total", host="m0", outcome="timeout") == 1
    hs = host_status(g, "m0")
    assert hs["failures"] == 1 and hs["consecutive_failures"] == 1, hs
    assert "stream_idle_timeout" in hs["last_error"], hs


@pytest.mark.parametrize("path", PATHS)
def test_stall_right_after_the_stream_head(mocks, gateway, path):
    # The head went to the client already: no retry, an error event.
    ms = mocks(2, "--stall-body")
    g = gateway(hosts_for(ms[:1], path), policies=pol(path, IDLE))
    st, _, raw, took = stream(g)
    assert st == 200
    check_whole_events_then_error(raw, 0, "stream_timeout")
    assert took < 15


@pytest.mark.parametrize("path", PATHS)
def test_stall_mid_json_body_fails_over(mocks, gateway, path):
    # Nothing went to the client yet: a failed attempt, the next host answers.
    ms = mocks(2)
    ms[0].config(stall_body=True)
    hosts = hosts_for(ms, path)
    hosts[0]["priority"], hosts[1]["priority"] = 0, 1     # m0 first
    g = gateway(hosts, policies=pol(path, IDLE + "  backoff: {type: fixed, initial: 1ms}\n"))
    t0 = time.monotonic()
    st, h, body = g.chat(timeout=20)
    assert st == 200, body
    assert json.loads(body)["object"] == "chat.completion"
    assert h["x-upstream-host"] == "m1" and h["x-attempts"] == "2", h
    assert time.monotonic() - t0 < 15
    assert ms[0].stats()["stalls"] == 1
    assert metric(g, "infergate_upstream_stalls_total", host="m0", timeout="idle") >= 1
    assert host_status(g, "m0")["failures"] >= 1


@pytest.mark.parametrize("path", PATHS)
def test_stall_mid_json_body_alone_gives_504(mocks, gateway, path):
    ms = mocks(1, "--stall-body")
    g = gateway(hosts_for(ms, path), policies=pol(path, "retry:\n  stream_idle_timeout: 500ms\n"
                "  max_attempts: 2\n  backoff: {type: fixed, initial: 1ms}\n"))
    t0 = time.monotonic()
    st, h, body = g.chat(timeout=20)
    assert st == 504, body
    assert json.loads(body)["error"]["code"] == "upstream_timeout"
    assert h["x-attempts"] == "2"
    assert time.monotonic() - t0 < 15
    wait_for(lambda: ms[0].stats()["disconnects"] == 2, what="both transfers closed")


@pytest.mark.parametrize("path", PATHS)
def test_slow_but_steady_stream_is_not_cut(mocks, gateway, path):
    # One chunk every idle/2: never idle for idle, whatever the total.
    ms = mocks(1, "--chunks", "6", "--chunk-interval-ms", "250")
    g = gateway(hosts_for(ms, path), policies=pol(path, IDLE))
    st, _, raw, took = stream(g)
    assert st == 200
    events = sse_parse(raw)
    assert [t for t, _ in events] == ["message"] * 7, raw
    assert events[-1][1] == "[DONE]"
    assert took >= 1.2, took
    assert ms[0].stats()["streams_completed"] == 1
    assert metric(g, "infergate_upstream_stalls_total", host="m0", timeout="idle") == 0


def test_idle_timeout_off_waits(mocks, gateway):
    # 0 = off: a stream that stalls is still open after twice a short idle.
    ms = mocks(1, "--chunks", "3", "--stall-after-chunks", "1")
    g = gateway(hosts_of(ms), policies="retry:\n  stream_idle_timeout: 0\n")
    conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=1.5)
    conn.request("POST", "/v1/chat/completions", json.dumps(dict(CHAT, stream=True)),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200
    r.readline()
    with pytest.raises(OSError):      # socket.timeout: nothing more, no end
        r.read()
    conn.close()


@pytest.mark.parametrize("path", PATHS)
def test_response_timeout_caps_a_steady_stream(mocks, gateway, path):
    ms = mocks(1, "--chunks", "50", "--chunk-interval-ms", "100")
    g = gateway(hosts_for(ms, path), policies=pol(path, IDLE + "  response_timeout: 1s\n"))
    st, _, raw, took = stream(g)
    assert st == 200
    events = sse_parse(raw)
    assert 2 <= len(events) - 1 < 50, events
    check_whole_events_then_error(raw, len(events) - 1, "stream_timeout")
    assert "response_timeout" in events[-1][1]
    assert 0.95 <= took < 15, took
    assert metric(g, "infergate_upstream_stalls_total", host="m0", timeout="response") == 1


def test_paused_stream_is_not_idle(mocks, gateway):
    # A client that does not read pauses the upstream: that is not the
    # upstream's stall, and the stream must still complete afterwards.
    ms = mocks(1, "--chunks", "200000")
    g = gateway(hosts_of(ms), policies="retry:\n  stream_idle_timeout: 500ms\n")
    s = raw_stream_post(g.port)
    wait_for(lambda: ms[0].stats()["requests"] == 1, what="stream to start")
    time.sleep(1.2)  # the point of the test: a client that does not read for > idle
    raw = read_raw(s, until=b"0\r\n\r\n")
    assert raw.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"), raw[-100:]
    assert metric(g, "infergate_upstream_stalls_total", host="m0", timeout="idle") == 0


# ------------------------------------------------ breaks inside an event

# Offsets into the next event, "data: {...}\n\n": inside "data:", right
# after "data: ", inside the JSON, and between its two "\n".
EVENT_LEN = len('data: {"id":"chatcmpl-m0-1","object":"chat.completion.chunk","model":"mock-model",'
                '"choices":[{"index":0,"delta":{"content":"tok2 "}}]}\n\n')
OFFSETS = [3, 6, 40, EVENT_LEN - 1]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("offset", OFFSETS)
def test_break_mid_event_ends_on_a_boundary(mocks, gateway, path, offset):
    ms = mocks(1, "--chunks", "5", "--close-after-chunks", "2", "--partial-bytes", str(offset))
    g = gateway(hosts_for(ms, path), policies=pol(path))
    st, _, raw, _ = stream(g)
    assert st == 200
    check_whole_events_then_error(raw, 2, "stream_interrupted")
    assert b"tok2" not in raw          # the cut event never reaches the client


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("offset", OFFSETS)
def test_stall_mid_event_ends_on_a_boundary(mocks, gateway, path, offset):
    ms = mocks(1, "--chunks", "5", "--stall-after-chunks", "2", "--partial-bytes", str(offset))
    g = gateway(hosts_for(ms, path), policies=pol(path, "retry:\n  stream_idle_timeout: 500ms\n"))
    st, _, raw, _ = stream(g)
    assert st == 200
    check_whole_events_then_error(raw, 2, "stream_timeout")
    assert b"tok2" not in raw


def test_mock_partial_bytes_cut_where_asked(mocks):
    # The last offset must fall between the two "\n" of the third event.
    ms = mocks(1, "--chunks", "5", "--close-after-chunks", "2", "--partial-bytes", str(OFFSETS[-1]))
    raw = read_raw(raw_stream_post(ms[0].port))
    assert b'"tok2 "}}]}\n' in raw and b'"tok2 "}}]}\n\n' not in raw, raw[-200:]


@pytest.mark.parametrize("offset", [3, 20])
def test_messages_stall_mid_event_ends_with_anthropic_error(mocks, gateway, offset):
    # /v1/messages: named events, and the error event in Anthropic's shape.
    ms = mocks(1, "--chunks", "5", "--stall-after-chunks", "2", "--partial-bytes", str(offset))
    g = gateway(hosts_of(ms), policies="retry:\n  stream_idle_timeout: 500ms\n")
    conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=30)
    try:
        conn.request("POST", "/v1/messages", json.dumps(
            {"model": "claude-x", "max_tokens": 16, "stream": True,
             "messages": [{"role": "user", "content": "hi"}]}), {"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200
        raw = r.read()
    finally:
        conn.close()
    events = sse_parse(raw)
    for etype, data in events[:-1]:
        assert json.loads(data)["type"] == etype, (etype, data)
    assert [t for t, _ in events].count("content_block_delta") == 2, events
    etype, data = events[-1]
    assert etype == "error", raw
    err = json.loads(data)
    assert err["type"] == "error" and err["error"]["type"] == "api_error", err
    assert "stream_idle_timeout" in err["error"]["message"]
    assert raw.endswith(b"\n\n") and b"tok2" not in raw
