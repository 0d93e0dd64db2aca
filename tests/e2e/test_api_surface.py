"""The API surface beyond chat: Responses (with the owner host of a response
id), Anthropic Messages (its error shape, auth header, stream error event),
audio, images, moderations, rerank, routing.passthrough and hosts' `apis`.
Failover before the first byte on every endpoint; bad input answered in the
endpoint's shape with nothing sent upstream."""
import json
import re
import uuid

import pytest

from conftest import assert_openai_error, hosts_of, wait_for
from test_api_usage import tokens
from test_sessions import redis_policies, redis_server  # noqa: F401 (fixture)


def sse(body):
    """[(event name or None, data dict or str)] of an SSE body."""
    out = []
    for ev in body.decode().split("\n\n"):
        if not ev.strip():
            continue
        name, data = None, None
        for line in ev.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
        try:
            data = json.loads(data)
        except (TypeError, ValueError):
            pass
        out.append((name, data))
    return out


def api_calls(m):
    """Calls the mock got on /v1/ paths other than /v1/models."""
    return sum(n for p, n in m.stats()["paths"].items() if p.startswith("/v1/") and p != "/v1/models")


def form(fields, files=()):
    """A multipart/form-data body and its Content-Type."""
    b = "----infergate%s" % uuid.uuid4().hex
    out = b""
    for k, v in fields.items():
        out += ("--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n" % (b, k, v)).encode()
    for k, name, data in files:
        out += ("--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n" % (b, k, name)).encode() + data + b"\r\n"
    out += ("--%s--\r\n" % b).encode()
    return out, "multipart/form-data; boundary=%s" % b


RESP = {"model": "mock-model", "input": "hello"}
MSG = {"model": "claude-x", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def test_responses_json_stream_and_owner(mocks, gateway):
    ms = mocks(3)
    g = gateway(hosts_of(ms), policies="retry:\n  backoff: {initial: 1ms, max: 2ms}\n")
    st, h, body = g.request("POST", "/v1/responses", RESP)
    assert st == 200, body
    r = json.loads(body)
    owner = h["x-upstream-host"]
    assert r["id"].startswith("resp_%s_" % owner) and r["usage"]["input_tokens"] > 0
    # Every follow-up reaches the owner, whatever round-robin says.
    for _ in range(4):
        st, h, body = g.request("GET", "/v1/responses/" + r["id"])
        assert st == 200 and h["x-upstream-host"] == owner, body
    st, h, body = g.request("GET", "/v1/responses/%s/input_items?limit=5" % r["id"])
    assert st == 200 and h["x-upstream-host"] == owner
    assert json.loads(body)["data"][0]["content"][0]["text"] == "hello"
    for _ in range(3):
        st, h, body = g.request("POST", "/v1/responses", dict(RESP, previous_response_id=r["id"]))
        assert st == 200 and h["x-upstream-host"] == owner, body
        assert "(turn 2)" in json.loads(body)["output"][0]["content"][0]["text"]
    st, h, body = g.request("POST", "/v1/responses/%s/cancel" % r["id"], b"")
    assert st == 200 and h["x-upstream-host"] == owner and json.loads(body)["status"] == "cancelled"
    st, h, body = g.request("DELETE", "/v1/responses/" + r["id"])
    assert st == 200 and h["x-upstream-host"] == owner and json.loads(body)["deleted"] is True
    st, h, body = g.request("GET", "/v1/responses/" + r["id"])
    assert_openai_error(st, body, 404)        # the owner's own answer, not retried elsewhere
    # A stream: named events, its id recorded from response.created.
    st, h, body = g.request("POST", "/v1/responses", dict(RESP, stream=True))
    assert st == 200 and h["content-type"].startswith("text/event-stream")
    evs = sse(body)
    names = [e[0] for e in evs]
    assert names[0] == "response.created" and names[-1] == "response.completed"
    assert names.count("response.output_text.delta") == 5
    sid, sowner = evs[0][1]["response"]["id"], h["x-upstream-host"]
    for _ in range(3):
        st, h, body = g.request("GET", "/v1/responses/" + sid)
        assert st == 200 and h["x-upstream-host"] == sowner
    # Usage of JSON and stream answers.
    wait_for(lambda: sum(tokens(g, m.name, "mock-model").get("output", 0) for m in ms) >= 17,
             timeout=10, what="token counts")
    total_in = sum(tokens(g, m.name, "mock-model").get("input", 0) for m in ms)
    total_out = sum(tokens(g, m.name, "mock-model").get("output", 0) for m in ms)
    assert total_out == 3 + 3 * 3 + 5 and total_in > 0
    # Retrieving a response does not count its usage again.
    assert all(tokens(g, m.name, "none") == {} for m in ms)
    st, _, body = g.request("GET", "/metrics")
    assert re.search(r'infergate_requests_total\{route="responses",code="200",host="%s"' % owner,
                     body.decode())
    g.stop()


def test_conversations_pin_to_their_host(mocks, gateway):
    ms = mocks(3)
    g = gateway(hosts_of(ms))
    st, h, body = g.request("POST", "/v1/conversations", {"metadata": {}})
    assert st == 200, body
    cid, owner = json.loads(body)["id"], h["x-upstream-host"]
    assert cid.startswith("conv_" + owner)
    for n in range(1, 4):
        conv = cid if n % 2 else {"id": cid}      # both spellings
        st, h, body = g.request("POST", "/v1/responses", dict(RESP, conversation=conv))
        assert st == 200 and h["x-upstream-host"] == owner, body
        assert "(turn %d)" % n in json.loads(body)["output"][0]["content"][0]["text"]
    st, h, body = g.request("GET", "/v1/conversations/%s/items?limit=3" % cid)
    assert h["x-upstream-host"] == owner
    st, h, body = g.request("GET", "/v1/conversations/" + cid)
    assert st == 200 and h["x-upstream-host"] == owner and json.loads(body)["metadata"]["turns"] == "3"
    st, h, body = g.request("DELETE", "/v1/conversations/" + cid)
    assert st == 200 and h["x-upstream-host"] == owner and json.loads(body)["deleted"] is True
    g.stop()


def test_response_owner_gone_or_down(mocks, gateway):
    ms = mocks(2)
    g = gateway(hosts_of(ms))
    st, h, body = g.request("POST", "/v1/responses", RESP)
    rid, owner = json.loads(body)["id"], h["x-upstream-host"]
    other = [m for m in ms if m.name != owner][0]
    # Owner removed: 409, for a retrieve and for a continuation.
    with open(g.conf_dir + "/hosts.json", "w") as f:
        json.dump({"hosts": hosts_of([other])}, f)
    st, _, _ = g.request("POST", "/admin/reload")
    assert st == 200
    before = api_calls(other)
    st, _, body = g.request("GET", "/v1/responses/" + rid)
    assert assert_openai_error(st, body, 409)["code"] == "host_gone"
    st, _, body = g.request("POST", "/v1/responses", dict(RESP, previous_response_id=rid))
    assert assert_openai_error(st, body, 409)["code"] == "host_gone"
    assert api_calls(other) == before
    g.stop()


def test_responses_owner_down_is_503(mocks, gateway):
    ms = mocks(2)
    g = gateway(hosts_of(ms), policies="circuit_breaker:\n  failure_threshold: 1\n"
                "  window: {minimum_requests: 1}\n  reset_timeout: 60s\n"
                "retry:\n  backoff: {initial: 1ms, max: 2ms}\n")
    st, h, body = g.request("POST", "/v1/responses", RESP)
    rid, owner = json.loads(body)["id"], h["x-upstream-host"]
    down = [m for m in ms if m.name == owner][0]
    other = [m for m in ms if m.name != owner][0]
    down.config(status=500)
    st, _, body = g.request("POST", "/v1/responses", dict(RESP, previous_response_id=rid))
    # The owner failed (no other host may take a continuation) ...
    assert st >= 500, body
    before = api_calls(other)
    # ... and now its breaker is open: a clear 503 without trying anyone.
    st, _, body = g.request("GET", "/v1/responses/" + rid)
    assert assert_openai_error(st, body, 503)["code"] == "host_unavailable"
    assert api_calls(other) == before
    g.stop()


def test_messages_shapes_auth_and_stream(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms, m0={"auth": "x-api-key"}), keys=[{"key": "sk-ant-upstream-0001"}])
    st, h, body = g.request("POST", "/v1/messages", MSG,
                            {"anthropic-version": "2023-06-01", "anthropic-beta": "tools-2024"})
    assert st == 200, body
    m = json.loads(body)
    assert m["type"] == "message" and m["content"][0]["text"] == "Hello from m0"
    last = ms[0].stats()["last_headers"]
    assert last["x-api-key"] == "sk-ant-upstream-0001" and "authorization" not in last
    assert last["anthropic-version"] == "2023-06-01" and last["anthropic-beta"] == "tools-2024"
    u = m["usage"]
    assert tokens(g, "m0", "claude-x", until=lambda t: t.get("output") == 3) == {
        "input": u["input_tokens"] + u["cache_read_input_tokens"] + u["cache_creation_input_tokens"],
        "output": 3, "cached": 2}
    st, _, body = g.request("POST", "/v1/messages/count_tokens", MSG)
    assert st == 200 and json.loads(body)["input_tokens"] > 0
    # Stream: Anthropic's events; usage from message_start + message_delta.
    st, h, body = g.request("POST", "/v1/messages", dict(MSG, stream=True))
    evs = sse(body)
    assert [e[0] for e in evs][:3] == ["message_start", "content_block_start", "ping"]
    assert evs[-1][0] == "message_stop"
    assert tokens(g, "m0", "claude-x", until=lambda t: t.get("output") == 8)["output"] == 3 + 5
    # Errors in Anthropic's shape.
    for body, ctype, want in ((b"{bad", "application/json", 400),
                              (b"[1]", "application/json", 400),
                              (b"--x--", "multipart/form-data; boundary=x", 415)):
        before = api_calls(ms[0])
        st, _, data = g.request("POST", "/v1/messages", body, {"Content-Type": ctype})
        assert st == want, data
        e = json.loads(data)
        assert e["type"] == "error" and e["error"]["type"] == "invalid_request_error" \
            and e["error"]["message"], e
        assert api_calls(ms[0]) == before
    # The server's own limits answer in Anthropic's shape there too.
    st, _, data = g.request("POST", "/v1/messages", b"x" * (5 * 1024 * 1024),
                            {"Content-Type": "application/json"})
    e = json.loads(data)
    assert st == 413 and e["type"] == "error" and e["error"]["type"] == "request_too_large", data
    st, _, data = g.request("GET", "/v1/messages")
    e = json.loads(data)
    assert st == 405 and e["error"]["type"] == "invalid_request_error", data
    # Mid-stream break: Anthropic's error event ends the stream.
    ms[0].config(close_after_chunks=2)
    st, _, body = g.request("POST", "/v1/messages", dict(MSG, stream=True))
    evs = sse(body)
    assert evs[-1][0] == "error" and evs[-1][1]["type"] == "error", evs[-2:]
    assert evs[-1][1]["error"]["type"] == "api_error"
    ms[0].config(close_after_chunks=0)
    # Upstream failure: Anthropic-shaped 5xx from the gateway.
    ms[0].config(status=503)
    st, _, body = g.request("POST", "/v1/messages", MSG)
    e = json.loads(body)
    assert st == 502 and e["type"] == "error" and e["error"]["type"] == "api_error", body
    g.stop()


def test_messages_client_key_as_x_api_key(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms), policies="admin:\n  client_keys: [client-secret-1]\n")
    st, _, body = g.request("POST", "/v1/messages", MSG)
    e = json.loads(body)
    assert st == 401 and e["type"] == "error" and e["error"]["type"] == "authentication_error"
    st, _, body = g.request("POST", "/v1/messages", MSG, {"x-api-key": "client-secret-1"})
    assert st == 200, body
    assert "client-secret-1" not in g.output()
    g.stop()


def test_responses_stream_break_error_event(mocks, gateway):
    ms = mocks(1, "--close-after-chunks", "2")
    g = gateway(hosts_of(ms))
    st, _, body = g.request("POST", "/v1/responses", dict(RESP, stream=True))
    evs = sse(body)
    assert evs[-1][0] == "error", evs[-2:]
    assert evs[-1][1]["type"] == "error" and evs[-1][1]["code"] == "stream_interrupted"
    g.stop()


def test_audio_images_moderations_rerank(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms))
    body, ctype = form({"model": "whisper-1", "language": "en"}, [("file", "a.wav", b"RIFF\x00\x01" * 100)])
    for path in ("/v1/audio/transcriptions", "/v1/audio/translations"):
        st, h, data = g.request("POST", path, body, {"Content-Type": ctype})
        assert st == 200 and json.loads(data)["text"] == "Hello from m0", data
        assert ms[0].stats()["last_body"] is None      # a form, passed as it was
    assert tokens(g, "m0", "whisper-1", until=lambda t: t.get("output") == 8)["output"] == 8
    st, h, data = g.request("POST", "/v1/audio/speech", {"model": "tts-1", "input": "hi", "voice": "alloy"})
    assert st == 200 and h["content-type"] == "audio/mpeg" and data.startswith(b"ID3")
    assert len(data) == 10 + 4096
    # Cut short upstream: the client's body is cut short too (no SSE error in audio).
    ms[0].config(close_after_chunks=1)
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=30)
    conn.request("POST", "/v1/audio/speech", json.dumps({"model": "tts-1", "input": "x"}),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200
    with pytest.raises(http.client.IncompleteRead) as e:
        r.read()
    assert e.value.partial.startswith(b"ID3") and b"event:" not in e.value.partial
    conn.close()
    ms[0].config(close_after_chunks=0)
    st, _, data = g.request("POST", "/v1/images/generations", {"model": "img-1", "prompt": "cat"})
    assert st == 200 and json.loads(data)["data"][0]["b64_json"]
    body, ctype = form({"model": "img-1", "prompt": "x"}, [("image", "a.png", b"\x89PNG" * 10)])
    for path in ("/v1/images/edits", "/v1/images/variations"):
        st, _, data = g.request("POST", path, body, {"Content-Type": ctype})
        assert st == 200 and json.loads(data)["data"], data
    st, _, data = g.request("POST", "/v1/moderations", {"model": "omni-moderation", "input": "x"})
    assert st == 200 and json.loads(data)["results"][0]["flagged"] is False
    st, _, data = g.request("POST", "/v1/rerank", {"model": "rr", "query": "q", "documents": ["a", "b"]})
    assert st == 200 and json.loads(data)["results"][0]["index"] == 1
    for route in ("audio", "images", "moderations", "rerank"):
        wait_for(lambda: re.search(r'infergate_requests_total\{route="%s",code="200",host="m0"' % route,
                                   g.request("GET", "/metrics")[2].decode()), timeout=10, what=route)
    g.stop()


@pytest.mark.parametrize("path,body", [
    ("/v1/responses", RESP),
    ("/v1/messages", MSG),
    ("/v1/messages/count_tokens", {"model": "claude-x", "messages": [{"role": "user", "content": "hi"}]}),
    ("/v1/audio/speech", {"model": "tts-1", "input": "hi", "voice": "alloy"}),
    ("/v1/audio/transcriptions", None),
    ("/v1/audio/translations", None),
    ("/v1/images/generations", {"model": "img-1", "prompt": "cat"}),
    ("/v1/images/edits", None),
    ("/v1/images/variations", None),
    ("/v1/moderations", {"input": "x"}),
    ("/v1/rerank", {"model": "rr", "query": "q", "documents": ["a"]}),
])
def test_failover_before_first_byte(mocks, gateway, path, body):
    ms = mocks(2)
    ms[0].config(status=500)
    g = gateway(hosts_of(ms), policies="retry:\n  backoff: {initial: 1ms, max: 2ms}\n"
                "routing:\n  strategy: round-robin\n")
    headers = None
    if body is None:
        body, ctype = form({"model": "m"}, [("file", "f.bin", b"\x00\x01\x02")])
        headers = {"Content-Type": ctype}
    for _ in range(2):          # whichever host round-robin starts with
        st, h, data = g.request("POST", path, body, headers)
        assert st == 200 and h["x-upstream-host"] == "m1", data[:300]
    assert api_calls(ms[0]) >= 1
    g.stop()


def test_bad_input_nothing_upstream(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms), policies="server:\n  max_body_bytes: 64KB\n")
    cases = [
        ("/v1/audio/transcriptions", b"not a form", "multipart/form-data; boundary=abc", 400),
        ("/v1/audio/transcriptions", b'{"model":"w"}', "application/json", 415),
        ("/v1/images/edits", b"--abc\r\nno headers end", "multipart/form-data; boundary=abc", 400),
        ("/v1/images/edits", b"--abc\r\nContent-Disposition: form-data; name=\"m\"\r\n\r\nx",
         "multipart/form-data; boundary=abc", 400),
        ("/v1/audio/translations", b"--abc--", "multipart/form-data", 400),
        ("/v1/responses", b"{", "application/json", 400),
        ("/v1/responses", b"--x--", "multipart/form-data; boundary=x", 415),
        ("/v1/moderations", b"[]", "application/json", 400),
        ("/v1/audio/speech", b'{"model": 3}', "application/json", 400),
    ]
    for path, body, ctype, want in cases:
        st, _, data = g.request("POST", path, body, {"Content-Type": ctype})
        assert_openai_error(st, data, want)
    big, ctype = form({"model": "w"}, [("file", "big.wav", b"\x00" * (100 * 1024))])
    st, _, data = g.request("POST", "/v1/audio/transcriptions", big, {"Content-Type": ctype})
    assert_openai_error(st, data, 413)
    st, _, data = g.request("GET", "/v1/responses/bad%20id")
    assert_openai_error(st, data, 400)
    assert api_calls(ms[0]) == 0
    st, _, _ = g.request("GET", "/health")
    assert st == 200
    g.stop()


def test_passthrough_and_apis_filter(mocks, gateway):
    ms = mocks(2)
    g = gateway(hosts_of(ms, m0={"apis": ["chat", "responses"]}, m1={"apis": ["audio", "messages"]}),
                policies="routing:\n  passthrough: [/v1/files, /v1/batches]\n")
    for _ in range(3):
        st, h, _ = g.request("POST", "/v1/responses", RESP)
        assert st == 200 and h["x-upstream-host"] == "m0"
        st, h, _ = g.request("POST", "/v1/messages", MSG)
        assert st == 200 and h["x-upstream-host"] == "m1"
    st, _, body = g.request("POST", "/v1/moderations", {"input": "x"})
    assert assert_openai_error(st, body, 404)["code"] == "api_not_served"
    def counted():     # with workers: each recorded just after its answer, on its worker
        r = json.loads(g.request("GET", "/status")[2])["routes"]
        return r.get("moderations") and r.get("responses") == 3 and r.get("messages") == 3
    wait_for(counted, timeout=10, what="route counts")
    status = json.loads(g.request("GET", "/status")[2])
    hosts = {h["name"]: h for h in status["hosts"]}
    assert hosts["m0"]["apis"] == ["chat", "responses"] and hosts["m1"]["auth"] == "bearer"
    assert status["routes"]["responses"] == 3 and status["routes"]["messages"] == 3
    assert status["routes"]["moderations"] == 1
    # Pass-through: method, query and body untouched (the mock 404s unknown paths).
    st, h, body = g.request("GET", "/v1/files?purpose=batch&limit=2")
    assert st == 404 and h["x-upstream-host"] in ("m0", "m1"), body
    m = [x for x in ms if x.name == h["x-upstream-host"]][0]
    assert m.stats()["last_path"] == "/v1/files?purpose=batch&limit=2"
    st, h, body = g.request("POST", "/v1/batches/b_1/cancel?x=1", b'{"a": [1, 2]}',
                            {"Content-Type": "application/json"})
    m = [x for x in ms if x.name == h["x-upstream-host"]][0]
    s = m.stats()
    assert s["last_path"] == "/v1/batches/b_1/cancel?x=1" and s["last_body"] == {"a": [1, 2]}
    st, h, body = g.request("DELETE", "/v1/batches/b_1")
    assert st == 404 and h.get("x-upstream-host") in ("m0", "m1"), body
    st, h, body = g.request("GET", "/v1/unknown/thing")
    assert_openai_error(st, body, 404)
    assert "x-upstream-host" not in h       # outside the prefixes: the gateway's 404
    wait_for(lambda: 'route="passthrough"' in g.request("GET", "/metrics")[2].decode(),
             timeout=10, what="passthrough route label")
    g.stop()


def test_config_rejects_unknown_api_and_bad_prefix(tmp_path):
    import subprocess
    from conftest import INFERGATE_BIN, write_conf
    d = str(tmp_path / "c")
    write_conf(d, [{"name": "a", "url": "http://127.0.0.1:1", "apis": ["chat", "video"],
                    "auth": "x-api-key"}],
               policies="routing:\n  passthrough: [v1/files]\n")
    r = subprocess.run([INFERGATE_BIN, "-t", "-c", d], capture_output=True, text=True)
    assert r.returncode == 1
    assert 'unknown API "video"' in r.stdout + r.stderr
    assert "must start with '/'" in r.stdout + r.stderr


def test_two_replicas_share_response_owners(mocks, gateway, redis_server):
    """A response created through replica A is retrieved, continued and
    deleted through replica B on its owner; owner removed: a clear 409."""
    port, _, _ = redis_server
    ms = mocks(3)
    pol = redis_policies(port, "ig-resp:") + "retry:\n  backoff: {initial: 1ms}\n"
    a = gateway(hosts_of(ms), policies=pol)
    b = gateway(hosts_of(ms), policies=pol)
    for stream in (False, True):
        st, h, body = a.request("POST", "/v1/responses", dict(RESP, stream=stream))
        assert st == 200
        rid = (sse(body)[0][1]["response"]["id"] if stream else json.loads(body)["id"])
        owner = h["x-upstream-host"]
        for _ in range(3):
            st, hb, body = b.request("GET", "/v1/responses/" + rid)
            assert st == 200 and hb["x-upstream-host"] == owner, body
        st, hb, body = b.request("POST", "/v1/responses", dict(RESP, previous_response_id=rid))
        assert st == 200 and hb["x-upstream-host"] == owner
        assert "(turn 2)" in json.loads(body)["output"][0]["content"][0]["text"]
        st, hb, body = b.request("DELETE", "/v1/responses/" + rid)
        assert st == 200 and hb["x-upstream-host"] == owner and json.loads(body)["deleted"]
    st, h, body = a.request("POST", "/v1/responses", RESP)
    rid, owner = json.loads(body)["id"], h["x-upstream-host"]
    rest = [m for m in ms if m.name != owner]
    with open(b.conf_dir + "/hosts.json", "w") as f:
        json.dump({"hosts": hosts_of(rest)}, f)
    assert b.request("POST", "/admin/reload")[0] == 200
    before = sum(api_calls(m) for m in rest)
    st, _, body = b.request("GET", "/v1/responses/" + rid)
    assert assert_openai_error(st, body, 409)["code"] == "host_gone"
    st, _, body = b.request("POST", "/v1/responses", dict(RESP, previous_response_id=rid))
    assert assert_openai_error(st, body, 409)["code"] == "host_gone"
    assert sum(api_calls(m) for m in rest) == before
    a.stop()
    b.stop()


def test_form_model_routes_and_passthrough_fails_over(mocks, gateway):
    ms = mocks(3)
    ms[2].config(probe_status=500)
    g = gateway(hosts_of(ms, m0={"models": ["whisper-1"]}, m1={"models": ["dall-e-2"]},
                         m2={"models": ["llama"]}),
                policies="routing:\n  passthrough: [/info]\n"
                         "retry:\n  backoff: {initial: 1ms, max: 2ms}\n")
    body, ctype = form({"model": "whisper-1"}, [("file", "a.wav", b"RIFF")])
    for _ in range(3):
        st, h, data = g.request("POST", "/v1/audio/transcriptions", body, {"Content-Type": ctype})
        assert st == 200 and h["x-upstream-host"] == "m0", data
    body, ctype = form({"model": "dall-e-2", "prompt": "x"}, [("image", "a.png", b"PNG")])
    for _ in range(3):
        st, h, data = g.request("POST", "/v1/images/variations", body, {"Content-Type": ctype})
        assert st == 200 and h["x-upstream-host"] == "m1", data
    # Pass-through: m2 fails with 500, the answer comes from another host.
    seen = set()
    for _ in range(6):
        st, h, data = g.request("GET", "/info")
        assert st == 200 and json.loads(data)["containers"] == [], data
        seen.add(h["x-upstream-host"])
    assert "m2" not in seen and ms[2].stats()["statuses"].get("500", 0) >= 1
    g.stop()
