"""Sessions through the gateway: /v1/verify, sticky routing, Redis shared across replicas."""
import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import free_port, http_request, spawn, wait_for
from test_proxy import assert_openai_error, hosts_of

REDIS = shutil.which("redis-server")


def verify(g, rid):
    return g.request("POST", "/v1/verify", {"id": rid})


def chat_id(g, **kw):
    st, h, body = g.chat(**kw)
    assert st == 200, body
    if kw.get("stream"):
        first = [l for l in body.decode().split("\n") if l.startswith("data: {")][0]
        return json.loads(first[6:])["id"], h
    return json.loads(body)["id"], h


def test_verify_goes_to_the_host_that_served_the_chat(mocks, gateway):
    ms = mocks(3)
    g = gateway(hosts_of(ms))
    for i in range(100):
        rid, h = chat_id(g, stream=(i % 4 == 0))
        st, vh, body = verify(g, rid)
        assert st == 200, body
        assert vh["x-upstream-host"] == h["x-upstream-host"]
        assert json.loads(body)["served_by"] == h["x-upstream-host"]
    assert all(m.stats()["paths"].get("/v1/verify", 0) > 10 for m in ms)


def test_verify_errors(mocks, gateway):
    ms = mocks(2)
    g = gateway(hosts_of(ms), policies="circuit_breaker:\n  failure_threshold: 1\n  reset_timeout: 60s\n"
                "retry:\n  backoff: {initial: 1ms}\n")
    st, _, body = verify(g, "chatcmpl-never-seen")
    assert assert_openai_error(st, body, 404)["code"] == "unknown_id"
    st, _, body = g.request("POST", "/v1/verify", {"nope": 1})
    assert_openai_error(st, body, 400)
    # the serving host's breaker opens: 503, not silently elsewhere
    rid, h = chat_id(g)
    served = next(m for m in ms if m.name == h["x-upstream-host"])
    served.config(status=500)
    for _ in range(4):
        g.chat()
    st, _, body = verify(g, rid)
    assert assert_openai_error(st, body, 503)["code"] == "host_unavailable"


def test_verify_after_host_removed_is_409(mocks, gateway):
    from conftest import write_conf
    ms = mocks(2)
    hosts = hosts_of(ms, m0={"priority": 0}, m1={"priority": 1})
    g = gateway(hosts)
    rid, h = chat_id(g)
    assert h["x-upstream-host"] == "m0"
    write_conf(g.conf_dir, hosts_of(ms[1:]))
    g.signal(signal.SIGHUP)
    wait_for(lambda: json.loads(g.request("GET", "/status")[2])["generation"] == 2, what="reload")
    st, _, body = verify(g, rid)
    assert assert_openai_error(st, body, 409)["code"] == "host_gone"


def test_session_ttl_and_lru(mocks, gateway):
    ms = mocks(2)
    g = gateway(hosts_of(ms), policies="sessions:\n  ttl: 1s\n  max_entries: 3\n")
    ids = [chat_id(g)[0] for _ in range(4)]
    assert verify(g, ids[0])[0] == 404           # evicted: least recently used
    assert verify(g, ids[3])[0] == 200
    time.sleep(1.2)                              # the ttl is the point here
    assert verify(g, ids[3])[0] == 404


def test_sticky_by_user(mocks, gateway):
    ms = mocks(3)
    g = gateway(hosts_of(ms), policies="routing:\n  sticky: {by: user}\n")
    first = {}
    for i in range(12):
        user = "user-%d" % (i % 4)
        st, h, _ = g.chat(user=user)
        assert st == 200
        first.setdefault(user, h["x-upstream-host"])
        assert h["x-upstream-host"] == first[user]
    assert len(set(first.values())) > 1          # users are spread, each one pinned


@pytest.fixture
def redis_server(tmp_path):
    if REDIS is None:
        pytest.skip("redis-server is not installed (scripts/deps.sh installs it)")
    port = free_port()
    procs = []

    def start():
        p = spawn([REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", str(tmp_path)],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(p)
        wait_for(lambda: _redis_ping(port), what="redis")
        return p

    start()
    yield port, start, procs
    for p in procs:
        if p.poll() is None:
            p.terminate()
            p.wait(10)


def _redis_ping(port):
    import socket
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=0.2)
        s.sendall(b"PING\r\n")
        ok = s.recv(16).startswith(b"+PONG")
        s.close()
        return ok
    except OSError:
        return False


def redis_policies(port, prefix="ig-test:"):
    return ("sessions:\n  store: redis\n  redis: {url: \"redis://127.0.0.1:%d/0\", prefix: \"%s\","
            " timeout: 200ms}\n" % (port, prefix))


def test_two_replicas_share_sessions_keys_and_registry(mocks, gateway, redis_server):
    port, _, _ = redis_server
    ms = mocks(3)
    keys = [{"key": "sk-shared-cooling-0001", "description": "cools"},
            {"key": "sk-shared-good-key-002", "description": "good"}]
    pol = redis_policies(port) + "retry:\n  backoff: {initial: 1ms}\n"
    g1 = gateway(hosts_of(ms), keys, policies=pol)
    g2 = gateway(hosts_of(ms), keys, policies=pol)
    # an id served via replica 1 is verifiable via replica 2
    for _ in range(5):
        rid, h = chat_id(g1)
        st, vh, _ = verify(g2, rid)
        assert st == 200 and vh["x-upstream-host"] == h["x-upstream-host"]
    # a key cooling on replica 1 is skipped by replica 2
    for m in ms:
        m.config(fail_keys={"sk-shared-cooling-0001": 429}, retry_after=60)
    for _ in range(4):
        assert g1.chat()[0] == 200

    def cooled_on_2():
        doc = json.loads(g2.request("GET", "/status")[2])
        return {k["description"]: k["state"] for k in doc["keys"]}["cools"] == "cooling"
    wait_for(cooled_on_2, timeout=5, what="shared cooldown")
    before = sum(m.stats()["keys"].get("sk-shared-cooling-0001", 0) for m in ms)
    for _ in range(6):
        assert g2.chat()[0] == 200
    assert sum(m.stats()["keys"].get("sk-shared-cooling-0001", 0) for m in ms) == before
    # both replicas are listed
    wait_for(lambda: len(json.loads(g1.request("GET", "/status")[2])["sessions"]["replicas"]) == 2,
             timeout=10, what="replica registry")


def test_redis_down_never_fails_requests(mocks, gateway, redis_server):
    port, start, procs = redis_server
    ms = mocks(2)
    g = gateway(hosts_of(ms), policies=redis_policies(port, "ig-down:"))
    rid, _ = chat_id(g)
    assert verify(g, rid)[0] == 200
    procs[-1].terminate()
    procs[-1].wait(10)
    wait_for(lambda: json.loads(g.request("GET", "/status")[2])["sessions"]["redis"]["state"] != "up",
             timeout=10, what="redis seen down")
    for _ in range(10):
        rid, _ = chat_id(g)
        assert verify(g, rid)[0] == 200          # memory fallback
    start()
    wait_for(lambda: json.loads(g.request("GET", "/status")[2])["sessions"]["redis"]["state"] == "up",
             timeout=15, what="redis back")
    assert "redis" in g.output().lower()


def test_redis_paused_requests_still_succeed(mocks, gateway, redis_server):
    port, _, procs = redis_server
    ms = mocks(2)
    g = gateway(hosts_of(ms), policies=redis_policies(port, "ig-pause:"))
    rid, _ = chat_id(g)
    procs[-1].send_signal(signal.SIGSTOP)
    try:
        for _ in range(5):
            t0 = time.monotonic()
            rid, _ = chat_id(g)
            st, _, _ = verify(g, rid)                # lookup: memory after the timeout
            assert st == 200
            assert time.monotonic() - t0 < 1.5       # redis.timeout is 200 ms
    finally:
        procs[-1].send_signal(signal.SIGCONT)
    wait_for(lambda: json.loads(g.request("GET", "/status")[2])["sessions"]["redis"]["state"] == "up",
             timeout=15, what="redis back")
