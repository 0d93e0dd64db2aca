"""Token usage on every proxied answer: /metrics, /status, the access log,
and usage.include_in_stream (the usage-only chunk infergate asked for is
invisible to a client that did not ask for it)."""
import json
import re

from conftest import hosts_of, wait_for


def tokens(g, host, model, until=None):
    """{kind: value} of infergate_tokens_total for host and model. With
    workers, a request's counts land just after its answer: `until(t)`
    waits for them (then returns t whatever it is, for the assert)."""
    if until is not None:
        try:
            wait_for(lambda: until(tokens(g, host, model)), timeout=10, what="token counts")
        except AssertionError:
            pass
    return _tokens(g, host, model)


def _tokens(g, host, model):
    """{kind: value} of infergate_tokens_total for host and model."""
    st, _, body = g.request("GET", "/metrics")
    assert st == 200
    out = {}
    for m in re.finditer(r'^infergate_tokens_total\{host="([^"]*)",model="([^"]*)",kind="([^"]*)"\} (\d+)$',
                         body.decode(), re.M):
        if m.group(1) == host and m.group(2) == model:
            out[m.group(3)] = int(m.group(4))
    return out


def sse_events(body):
    return [e for e in body.decode().split("\n\n") if e.strip()]


def read_lines(path, n):
    def have():
        try:
            with open(path) as f:
                lines = [l for l in f.read().splitlines() if l.strip()]
        except FileNotFoundError:
            return None
        return lines if len(lines) >= n else None
    return wait_for(have, timeout=10, what="%d access log lines" % n)


def test_json_usage_metrics_status_and_log(mocks, gateway, tmp_path):
    ms = mocks(1)
    log = str(tmp_path / "access.json")
    g = gateway(hosts_of(ms), policies="server:\n  access_log: {file: %s, format: json}\n" % log)
    st, _, body = g.chat()
    assert st == 200
    u1 = json.loads(body)["usage"]
    st, _, body = g.request("POST", "/v1/embeddings", {"model": "mock-model", "input": ["a", "b"]})
    assert st == 200
    u2 = json.loads(body)["usage"]
    want = {"input": u1["prompt_tokens"] + u2["prompt_tokens"],
            "output": u1["completion_tokens"], "cached": 0}
    t = tokens(g, "m0", "mock-model", until=lambda t: t == want)
    assert t == want, t
    st, _, body = g.request("GET", "/status")
    h = [h for h in json.loads(body)["hosts"] if h["name"] == "m0"][0]
    assert h["tokens"] == {"input": t["input"], "output": t["output"], "cached": 0}
    lines = [json.loads(l) for l in read_lines(log, 2)]
    chat = [l for l in lines if l["path"] == "/v1/chat/completions"][0]
    assert chat["tokens"] == {"input": u1["prompt_tokens"], "output": u1["completion_tokens"]}
    emb = [l for l in lines if l["path"] == "/v1/embeddings"][0]
    assert emb["tokens"] == {"input": u2["prompt_tokens"]}
    g.stop()


def test_stream_usage_asked_by_client(mocks, gateway, tmp_path):
    ms = mocks(1)
    log = str(tmp_path / "access.log")
    g = gateway(hosts_of(ms), policies="server:\n  access_log: {file: %s, format: text}\n" % log)
    st, _, body = g.chat(stream=True, stream_options={"include_usage": True})
    assert st == 200
    evs = sse_events(body)
    last = json.loads(evs[-2][len("data: "):])
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 5
    want = {"input": last["usage"]["prompt_tokens"], "output": 5, "cached": 0}
    assert tokens(g, "m0", "mock-model", until=lambda t: t == want) == want
    # A stream without usage counts nothing and logs dashes.
    st, _, body = g.chat(stream=True)
    assert st == 200
    lines = read_lines(log, 2)
    assert re.search(r" tokens_in=%d tokens_out=5 tokens_cached=-$" % last["usage"]["prompt_tokens"],
                     lines[0]), lines[0]
    assert lines[1].endswith(" tokens_in=- tokens_out=- tokens_cached=-"), lines[1]
    assert tokens(g, "m0", "mock-model")["output"] == 5
    g.stop()


def test_include_in_stream_is_invisible(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms), policies="usage:\n  include_in_stream: true\n")
    st, _, body = g.chat(stream=True)
    assert st == 200
    evs = sse_events(body)
    # What the client sees: the 5 content chunks and [DONE], nothing else.
    assert len(evs) == 6 and evs[-1] == "data: [DONE]", evs
    assert all('"usage"' not in e for e in evs), evs
    sent = ms[0].stats()["last_body"]
    sent = json.loads(sent) if isinstance(sent, str) else sent
    assert sent["stream_options"] == {"include_usage": True}
    prompt = len(json.dumps(sent, separators=(",", ":"))) // 4 + 1
    t = tokens(g, "m0", "mock-model", until=lambda t: t.get("output") == 5)
    assert t["output"] == 5 and t["input"] > 0, t
    # stream_options present without include_usage: rewritten, still invisible.
    st, _, body = g.chat(stream=True, stream_options={"include_usage": False})
    evs = sse_events(body)
    assert len(evs) == 6 and all('"usage"' not in e for e in evs), evs
    assert tokens(g, "m0", "mock-model", until=lambda t: t.get("output") == 10)["output"] == 10
    # A client that asks gets the chunk, once.
    st, _, body = g.chat(stream=True, stream_options={"include_usage": True})
    evs = sse_events(body)
    assert len(evs) == 7 and sum('"usage"' in e for e in evs) == 1, evs
    assert tokens(g, "m0", "mock-model", until=lambda t: t.get("output") == 15)["output"] == 15
    # Completions too.
    st, _, body = g.request("POST", "/v1/completions",
                            {"model": "mock-model", "prompt": "x", "stream": True})
    evs = sse_events(body)
    assert len(evs) == 6 and all('"usage"' not in e for e in evs), evs
    assert tokens(g, "m0", "mock-model", until=lambda t: t.get("output") == 20)["output"] == 20
    del prompt
    g.stop()


def test_model_names_short_long_and_escaped_reach_the_log(mocks, gateway, tmp_path):
    """"model" and "user" are copied into the request when short and plain,
    allocated when long or escaped: every way gives the decoded name."""
    ms = mocks(1)
    log = str(tmp_path / "access.json")
    g = gateway(hosts_of(ms), policies="server:\n  access_log: {file: %s, format: json}\n" % log)
    names = ["m" * 63, "m" * 64, "m" * 100, "mock-model"]
    for name in names:
        st, _, body = g.chat(model=name, user="u" * len(name))
        assert st == 200, body
    raw = (b'{"model": "mock\\u002dmodel", "user": "\\u0075", '
           b'"messages": [{"role": "user", "content": "hi"}]}')
    st, _, body = g.request("POST", "/v1/chat/completions", raw,
                            headers={"Content-Type": "application/json"})
    assert st == 200, body
    lines = [json.loads(l) for l in read_lines(log, len(names) + 1)]
    # with workers each logs after its answer, so lines may come out of order
    assert sorted(l["model"] for l in lines) == sorted(names + ["mock-model"])
    g.stop()
