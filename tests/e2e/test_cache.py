"""The exact-match response cache (policies.yaml `cache`), memory store."""
import json
import signal
import time

from conftest import wait_for, write_conf
from test_proxy import hosts_of
from test_sessions import redis_policies, redis_server  # noqa: F401

ON = "cache:\n  enabled: true\n"


def chats(m):
    return m.stats()["paths"].get("/v1/chat/completions", 0)


def ask(g, headers=None, **extra):
    body = {"temperature": 0}
    body.update(extra)
    return g.chat(headers=headers, **body)


def status_cache(g):
    return json.loads(g.request("GET", "/status")[2])["cache"]


def test_second_identical_request_is_a_hit(mocks, gateway, tmp_path):
    ms = mocks(1)
    log = tmp_path / "access.log"
    g = gateway(hosts_of(ms), policies=ON + "server:\n  access_log: {file: %s, format: json}\n" % log)
    st, h1, b1 = ask(g)
    assert st == 200 and h1["x-cache"] == "MISS" and "age" not in h1
    st, h2, b2 = ask(g, user="someone-else", stream_options=None)   # not in the key
    assert st == 200 and h2["x-cache"] == "HIT", h2
    assert int(h2["age"]) >= 0 and b2 == b1
    assert chats(ms[0]) == 1                     # the mock saw one request
    # another body, another model: other keys
    assert ask(g, max_tokens=5)[1]["x-cache"] == "MISS"
    assert ask(g, model="other-model")[1]["x-cache"] == "MISS"
    assert chats(ms[0]) == 3
    # A whole answer reaches its client (one writev) before its worker counts
    # it: with two workers the last count can come after the client has it.
    wait_for(lambda: status_cache(g)["hits"] + status_cache(g)["misses"] >= 4,
             what="the four answers counted")
    sc = status_cache(g)
    assert sc["enabled"] and sc["hits"] == 1 and sc["misses"] == 3 and sc["entries"] == 3
    metrics = g.request("GET", "/metrics")[2].decode()
    assert 'infergate_cache_requests_total{result="hit"} 1' in metrics
    assert 'infergate_cache_requests_total{result="miss"} 3' in metrics
    assert "infergate_cache_bytes %d" % sc["bytes"] in metrics and sc["bytes"] > 0
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 4, what="access log")
    lines = [json.loads(l) for l in log.read_text().splitlines()]
    # with worker threads the lines come in the order the requests ended
    # their logging, not the order they were sent
    assert sorted(l.get("cache") for l in lines[:4]) == ["HIT", "MISS", "MISS", "MISS"]


def test_ttl_expiry(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms), policies=ON + "  ttl: 300ms\n")
    assert ask(g)[1]["x-cache"] == "MISS"
    assert ask(g)[1]["x-cache"] == "HIT"
    time.sleep(0.5)                              # the ttl is the point here
    assert ask(g)[1]["x-cache"] == "MISS"
    assert chats(ms[0]) == 2


def test_no_cache_and_no_store(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms), policies=ON)
    ask(g)
    st, h, b_fresh = ask(g, headers={"Cache-Control": "no-cache"})
    assert st == 200 and h["x-cache"] == "BYPASS"        # not looked up ...
    st, h, b = ask(g)
    assert h["x-cache"] == "HIT" and b == b_fresh        # ... but stored
    assert chats(ms[0]) == 2
    st, h, _ = ask(g, seed=7, headers={"Cache-Control": "no-store"})
    assert h["x-cache"] == "BYPASS"
    assert ask(g, seed=7)[1]["x-cache"] == "MISS"        # no-store kept nothing
    assert chats(ms[0]) == 4


def test_non_deterministic_not_cached_by_default(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms), policies=ON)
    for _ in range(2):
        st, h, _ = g.chat(temperature=0.7)
        assert st == 200 and h["x-cache"] == "BYPASS"
        assert g.chat()[1]["x-cache"] == "BYPASS"        # no temperature, no seed
    assert ask(g, seed=1)[1]["x-cache"] == "MISS"
    assert ask(g, seed=1)[1]["x-cache"] == "HIT"         # a seed makes it deterministic
    assert chats(ms[0]) == 5
    g2 = gateway(hosts_of(ms), policies=ON + "  only_deterministic: false\n")
    assert g2.chat(temperature=0.7)[1]["x-cache"] == "MISS"
    assert g2.chat(temperature=0.7)[1]["x-cache"] == "HIT"


def test_errors_never_cached(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms), policies=ON)
    ms[0].config(status=400)
    for _ in range(2):
        st, h, _ = ask(g)
        assert st == 400 and h["x-cache"] == "MISS"
    assert chats(ms[0]) == 2
    ms[0].config(status=200)
    assert ask(g)[1]["x-cache"] == "MISS"
    assert status_cache(g)["entries"] == 1
    # a broken stream is never stored
    ms[0].config(close_after_chunks=2)
    st, h, _ = ask(g, seed=5, stream=True)
    assert h["x-cache"] == "MISS"
    ms[0].config(close_after_chunks=0)
    assert ask(g, seed=5)[1]["x-cache"] == "MISS"


def events(body):
    lines = [l[6:] for l in body.decode().split("\n") if l.startswith("data: ")]
    assert lines[-1] == "[DONE]", lines
    return [json.loads(l) for l in lines[:-1]]


def test_stream_stored_then_served_as_json(mocks, gateway):
    ms = mocks(1)
    ms[0].config(chunks=3)
    g = gateway(hosts_of(ms), policies=ON)
    st, h, body = ask(g, stream=True, stream_options={"include_usage": True})
    assert st == 200 and h["x-cache"] == "MISS"
    sid = events(body)[0]["id"]
    st, h, body = ask(g)
    assert st == 200 and h["x-cache"] == "HIT", h
    d = json.loads(body)
    assert d["object"] == "chat.completion" and d["id"] == sid
    assert d["choices"][0]["message"] == {"role": "assistant", "content": "tok0 tok1 tok2 "}
    assert d["usage"]["completion_tokens"] == 3
    # completions too
    st, h, body = g.request("POST", "/v1/completions", {"model": "mock-model", "prompt": "x",
                                                         "temperature": 0, "stream": True})
    assert st == 200 and h["x-cache"] == "MISS"
    st, h, body = g.request("POST", "/v1/completions", {"model": "mock-model", "prompt": "x",
                                                         "temperature": 0})
    assert h["x-cache"] == "HIT" and json.loads(body)["choices"][0]["text"] == "tok0 tok1 tok2 "
    assert chats(ms[0]) == 1 and ms[0].stats()["paths"]["/v1/completions"] == 1


def test_json_answer_served_as_a_stream(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms), policies=ON)
    st, h, body = ask(g)
    assert h["x-cache"] == "MISS"
    want = json.loads(body)
    for usage in (False, True):
        extra = {"stream_options": {"include_usage": True}} if usage else {}
        st, h, body = ask(g, stream=True, **extra)
        assert st == 200 and h["x-cache"] == "HIT" and "age" in h
        assert h["content-type"].startswith("text/event-stream")
        ev = events(body)
        assert all(e["object"] == "chat.completion.chunk" and e["id"] == want["id"] for e in ev)
        text = "".join(c["delta"].get("content") or "" for e in ev for c in e["choices"])
        assert text == want["choices"][0]["message"]["content"]
        assert ev[0]["choices"][0]["delta"]["role"] == "assistant"
        assert [c["finish_reason"] for e in ev for c in e["choices"]][-1] == \
            want["choices"][0]["finish_reason"]
        tail = [e for e in ev if not e["choices"]]
        assert len(tail) == (1 if usage else 0)
        if usage:
            assert tail[0]["usage"] == want["usage"] and ev[-1] is tail[0]
    assert chats(ms[0]) == 1


def test_lru_bound(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms), policies=ON + "  max_bytes: 1KB\n")
    for s in (1, 2, 3):
        assert ask(g, seed=s)[1]["x-cache"] == "MISS"
        assert status_cache(g)["bytes"] <= 1024
    assert ask(g, seed=3)[1]["x-cache"] == "HIT"         # the most recent stays
    assert ask(g, seed=1)[1]["x-cache"] == "MISS"        # the oldest went first
    sc = status_cache(g)
    assert sc["evictions"] >= 1 and sc["bytes"] <= 1024
    # max_entry_bytes: a larger answer is not stored
    ms[0].config(content_bytes=3000)
    g2 = gateway(hosts_of(ms), policies=ON + "  max_entry_bytes: 2KB\n")
    assert ask(g2)[1]["x-cache"] == "MISS"
    assert ask(g2)[1]["x-cache"] == "MISS"
    assert status_cache(g2)["entries"] == 0


def test_reload_keeps_the_cache_unless_its_settings_change(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms), policies=ON)
    ask(g)
    g.signal(signal.SIGHUP)
    wait_for(lambda: json.loads(g.request("GET", "/status")[2])["generation"] == 2, what="reload")
    assert ask(g)[1]["x-cache"] == "HIT"
    write_conf(g.conf_dir, hosts_of(ms), policies=ON + "  ttl: 10m\n")
    g.signal(signal.SIGHUP)
    wait_for(lambda: json.loads(g.request("GET", "/status")[2])["generation"] == 3, what="reload")
    assert ask(g)[1]["x-cache"] == "MISS"
    write_conf(g.conf_dir, hosts_of(ms), policies="")
    g.signal(signal.SIGHUP)
    wait_for(lambda: json.loads(g.request("GET", "/status")[2])["generation"] == 4, what="reload")
    st, h, _ = ask(g)
    assert st == 200 and "x-cache" not in h
    assert status_cache(g) == {"enabled": False}


def test_config_checked_by_dash_t(tmp_path):
    import subprocess
    from conftest import INFERGATE_BIN
    d = str(tmp_path / "conf")
    write_conf(d, [{"name": "m0", "url": "http://127.0.0.1:1"}],
               policies="cache:\n  enabled: true\n  routes: [chat, bogus]\n  ttl: 0s\n")
    r = subprocess.run([INFERGATE_BIN, "-t", "-c", d], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert 'cache.routes: unknown API "bogus"' in r.stderr + r.stdout
    assert "cache.ttl: must be between 100ms and 720h" in r.stderr + r.stdout


def redis_up(g):
    return json.loads(g.request("GET", "/status")[2])["sessions"]["redis"]["state"] == "up"


def test_two_replicas_share_hits_through_redis(mocks, gateway, redis_server):
    port, _, _ = redis_server
    ms = mocks(1)
    pol = redis_policies(port) + ON + "  store: redis\n"
    g1 = gateway(hosts_of(ms), policies=pol)
    g2 = gateway(hosts_of(ms), policies=pol)
    wait_for(lambda: redis_up(g1) and redis_up(g2), what="redis up")
    st, h, b1 = ask(g1)
    assert st == 200 and h["x-cache"] == "MISS"
    st, h, b2 = ask(g2)
    assert st == 200 and h["x-cache"] == "HIT" and "age" in h and b2 == b1
    st, h, body = ask(g2, stream=True)            # the stored answer as a stream
    assert h["x-cache"] == "HIT" and events(body)[0]["id"] == json.loads(b1)["id"]
    assert chats(ms[0]) == 1
    # with workers a hit is counted just after its answer (a stream's at its end), on its worker
    wait_for(lambda: status_cache(g2)["hits"] == 2, timeout=10, what="two hits counted")
    assert status_cache(g2)["store"] == "redis" and status_cache(g2)["hits"] == 2
    # a stream stored by one replica is a JSON hit on the other
    st, h, _ = ask(g1, seed=3, stream=True)
    assert h["x-cache"] == "MISS"
    assert ask(g2, seed=3)[1]["x-cache"] == "HIT"
    assert chats(ms[0]) == 2


def test_redis_down_is_a_miss_never_a_failure(mocks, gateway, redis_server):
    port, _, procs = redis_server
    ms = mocks(1)
    g = gateway(hosts_of(ms), policies=redis_policies(port) + ON + "  store: redis\n  ttl: 300ms\n")
    wait_for(lambda: redis_up(g), what="redis up")
    assert ask(g)[1]["x-cache"] == "MISS"
    assert ask(g)[1]["x-cache"] == "HIT"
    procs[0].terminate()
    procs[0].wait(10)
    for _ in range(3):
        st, h, _ = ask(g)
        assert st == 200 and h["x-cache"] == "MISS"
    assert chats(ms[0]) == 4


def test_redis_store_needs_redis_sessions(tmp_path):
    import subprocess
    from conftest import INFERGATE_BIN
    d = str(tmp_path / "conf")
    write_conf(d, [{"name": "m0", "url": "http://127.0.0.1:1"}],
               policies="cache:\n  enabled: true\n  store: redis\n")
    r = subprocess.run([INFERGATE_BIN, "-t", "-c", d], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "cache.store: redis needs sessions.store: redis" in r.stderr + r.stdout
