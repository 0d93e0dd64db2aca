"""Resilience policies: retry/backoff, deadlines, breakers, key cooldowns, priorities."""
import json
import socket
import threading
import time

from conftest import wait_for
from test_proxy import assert_openai_error, hosts_of


def status_doc(g):
    st, _, body = g.request("GET", "/status")
    assert st == 200
    return json.loads(body)


def host_status(g, name):
    return next(h for h in status_doc(g)["hosts"] if h["name"] == name)


def test_503_fails_over_with_x_attempts_2(mocks, gateway):
    ms = mocks(2)
    ms[0].config(status=503)
    g = gateway(hosts_of(ms), policies="retry:\n  backoff: {type: fixed, initial: 1ms}\n")
    got = [g.chat() for _ in range(6)]
    assert all(st == 200 for st, _, _ in got)
    assert all(h["x-upstream-host"] == "m1" for _, h, _ in got)
    assert "2" in [h["x-attempts"] for _, h, _ in got]


def test_retry_same_host_with_fixed_backoff(mocks, gateway):
    ms = mocks(1)
    ms[0].config(fail_next=2)
    g = gateway(hosts_of(ms), policies="retry:\n  max_attempts: 3\n"
                "  backoff: {type: fixed, initial: 200ms, jitter: none}\n")
    t0 = time.monotonic()
    st, h, body = g.chat()
    took = time.monotonic() - t0
    assert st == 200, body
    assert h["x-attempts"] == "3"
    assert took >= 0.4, took          # two 200 ms waits
    assert ms[0].stats()["requests"] == 3


def test_retry_after_is_respected_and_capped(mocks, gateway):
    ms = mocks(1)
    ms[0].config(fail_next=1, status=503, retry_after=1)
    g = gateway(hosts_of(ms), policies="retry:\n  backoff: {type: fixed, initial: 10ms, max: 5s, jitter: none}\n")
    t0 = time.monotonic()
    st, h, _ = g.chat()
    assert st == 200 and h["x-attempts"] == "2"
    assert time.monotonic() - t0 >= 0.95
    # capped by backoff.max
    ms[0].config(fail_next=1, status=503, retry_after=30)
    g2 = gateway(hosts_of(ms), policies="retry:\n  backoff: {type: fixed, initial: 10ms, max: 300ms, jitter: none}\n")
    t0 = time.monotonic()
    st, h, _ = g2.chat()
    assert st == 200
    assert time.monotonic() - t0 < 5


def test_deadline_gives_504(mocks, gateway):
    ms = mocks(1)
    ms[0].config(hang=True)
    g = gateway(hosts_of(ms), policies="retry:\n  per_try_timeout: 10s\n  deadline: 400ms\n")
    t0 = time.monotonic()
    st, _, body = g.chat()
    assert_openai_error(st, body, 504)
    assert time.monotonic() - t0 < 3
    # The request's deadline ends it (the attempt is cancelled): not a
    # failure of the host, which was not given its per-try time.
    assert json.loads(body)["error"]["code"] == "deadline_exceeded"
    assert host_status(g, "m0")["failures"] == 0


def test_first_byte_limit_outlasts_the_idle_tick(mocks, gateway):
    # The attempt's timer first fires at the first idle tick (50 ms here),
    # then goes on to the first-byte limit (600 ms): a head later than the
    # tick is waited for, and a missing one ends the attempt at the limit.
    ms = mocks(1)
    g = gateway(hosts_of(ms), policies="retry:\n  max_attempts: 1\n  per_try_timeout: 600ms\n"
                "  stream_idle_timeout: 200ms\n")
    ms[0].config(delay_ms=300)
    st, h, body = g.chat()
    assert st == 200, body
    assert h["x-attempts"] == "1"
    ms[0].config(delay_ms=0, hang=True)
    t0 = time.monotonic()
    st, _, body = g.chat()
    took = time.monotonic() - t0
    assert st == 504, body
    assert 0.55 <= took < 5, took


def test_per_try_timeout_then_next_host(mocks, gateway):
    ms = mocks(2)
    ms[0].config(delay_ms=3000)
    g = gateway(hosts_of(ms), policies="retry:\n  per_try_timeout: 200ms\n  backoff: {initial: 1ms}\n")
    for _ in range(3):
        st, h, _ = g.chat()
        assert st == 200 and h["x-upstream-host"] == "m1"


def test_breaker_opens_then_half_open_probe_closes(mocks, gateway):
    ms = mocks(2)
    ms[0].config(status=500)
    g = gateway(hosts_of(ms), policies=(
        "retry:\n  backoff: {initial: 1ms}\n"
        "circuit_breaker:\n  failure_threshold: 3\n  reset_timeout: 1s\n  half_open_requests: 1\n"
        "  window: {size: 100, minimum_requests: 50}\n"))
    for _ in range(10):
        assert g.chat()[0] == 200
    assert host_status(g, "m0")["breaker"] == "open"
    seen = ms[0].stats()["requests"]
    assert seen == 3
    for _ in range(10):
        st, h, _ = g.chat()
        assert st == 200 and h["x-upstream-host"] == "m1"
    assert ms[0].stats()["requests"] == seen        # no traffic while open
    ms[0].config(status=200)
    wait_for(lambda: host_status(g, "m0")["breaker"] == "half-open", timeout=5, what="half-open")
    hosts = [g.chat()[1]["x-upstream-host"] for _ in range(6)]
    assert "m0" in hosts
    assert host_status(g, "m0")["breaker"] == "closed"


def test_all_breakers_open_is_503_at_once(mocks, gateway):
    ms = mocks(2)
    for m in ms:
        m.config(status=500)
    g = gateway(hosts_of(ms), policies=(
        "retry:\n  backoff: {initial: 1ms}\n"
        "circuit_breaker:\n  failure_threshold: 1\n  reset_timeout: 60s\n"))
    g.chat()
    g.chat()
    assert {h["breaker"] for h in status_doc(g)["hosts"]} == {"open"}
    t0 = time.monotonic()
    st, _, body = g.chat()
    assert_openai_error(st, body, 503)
    assert time.monotonic() - t0 < 0.5
    st, _, _ = g.request("GET", "/health")
    assert st == 503


def test_key_429_cools_down_and_401_disables(mocks, gateway):
    ms = mocks(1)
    ms[0].config(fail_keys={"sk-cooling-key-000001": 429, "sk-rejected-key-00002": 401})
    keys = [{"key": "sk-cooling-key-000001", "description": "cool"},
            {"key": "sk-rejected-key-00002", "description": "bad"},
            {"key": "sk-good-key-000000003", "description": "good"}]
    g = gateway(hosts_of(ms), keys, policies="retry:\n  max_attempts: 3\n  backoff: {initial: 1ms}\n")
    for _ in range(9):
        st, _, body = g.chat()
        assert st == 200, body
    used = ms[0].stats()["keys"]
    assert used["sk-cooling-key-000001"] == 1
    assert used["sk-rejected-key-00002"] == 1
    states = {k["description"]: k["state"] for k in status_doc(g)["keys"]}
    assert states == {"cool": "cooling", "bad": "disabled", "good": "active"}


def test_all_keys_cooling_is_429(mocks, gateway):
    ms = mocks(1)
    ms[0].config(status=429, retry_after=120)
    g = gateway(hosts_of(ms), [{"key": "sk-only-key-0000000001"}],
                policies="retry:\n  backoff: {initial: 1ms}\n")
    st, _, body = g.chat()
    assert st == 429
    st, h, body = g.chat()
    err = assert_openai_error(st, body, 429)
    assert err["code"] == "keys_cooling_down"
    assert ms[0].stats()["requests"] == 1


def test_retry_budget_limits_retries(mocks, gateway):
    ms = mocks(2)
    for m in ms:
        m.config(status=502)
    g = gateway(hosts_of(ms), policies=(
        "retry:\n  backoff: {initial: 1ms}\n  budget: {ratio: 0, min_retries: 2, window: 60s}\n"
        "circuit_breaker:\n  enabled: false\n"))
    attempts = [int(g.chat()[1]["x-attempts"]) for _ in range(5)]
    assert sum(a - 1 for a in attempts) == 2, attempts
    assert "retry budget exhausted" in g.output()


def test_priority_tiers_active_passive(mocks, gateway):
    ms = mocks(2)
    hosts = hosts_of(ms, m0={"priority": 0}, m1={"priority": 1})
    g = gateway(hosts, policies="retry:\n  backoff: {initial: 1ms}\n"
                "circuit_breaker:\n  failure_threshold: 1\n  reset_timeout: 60s\n")
    assert {g.chat()[1]["x-upstream-host"] for _ in range(5)} == {"m0"}
    ms[0].config(status=500)
    assert [g.chat()[1]["x-upstream-host"] for _ in range(5)] == ["m1"] * 5


def test_max_concurrent_spills_to_other_host(mocks, gateway):
    ms = mocks(2)
    ms[0].config(delay_ms=800)
    hosts = hosts_of(ms, m0={"max_concurrent": 1, "priority": 0}, m1={"priority": 1})
    g = gateway(hosts)
    results = []

    def one():
        results.append(g.chat()[1]["x-upstream-host"])

    t = threading.Thread(target=one)
    t.start()
    wait_for(lambda: ms[0].stats()["in_flight"] == 1, what="first request at m0")
    st, h, _ = g.chat()
    t.join()
    assert st == 200 and h["x-upstream-host"] == "m1"
    assert results == ["m0"]


def test_fault_matrix_with_one_healthy_host_is_100_percent(mocks, gateway):
    faults = [{"status": 500}, {"status": 503, "retry_after": 0}, {"hang": True}, {"garbage": True},
              {"drop": True}, {"delay_ms": 2000}, {"close_after_chunks": 1}]
    total = ok = 0
    for fault in faults:
        ms = mocks(2, "--chunks", "3")
        ms[0].config(**fault)
        g = gateway(hosts_of(ms), policies="retry:\n  per_try_timeout: 300ms\n  backoff: {initial: 1ms}\n")
        for stream in (False, True):
            for _ in range(4):
                st, h, body = g.chat(stream=stream)
                total += 1
                good = st == 200 and (not stream or b"[DONE]" in body) and \
                    (stream or b"chat.completion" in body)
                # a stream that broke after its first byte cannot be retried
                if not good and stream and fault.get("close_after_chunks") and b"event: error" in body:
                    total -= 1
                    continue
                ok += good
        g.stop()
        print("fault", fault, "ok so far", ok, "of", total)
    rate = ok / total
    print("fault matrix success rate: %.3f over %d requests" % (rate, total))
    assert rate == 1.0, rate


def test_parallel_race_takes_fastest_and_cancels_the_rest(mocks, gateway):
    ms = mocks(3)
    ms[0].config(delay_ms=3000)
    ms[1].config(delay_ms=150)
    # ms[2] answers at once
    names = [m.name for m in ms]
    policies = ("fallback:\n  chains:\n    - match: \"*\"\n      mode: parallel\n      race: 3\n"
                "      steps:\n        - hosts: [%s]\n" % ", ".join(names))
    g = gateway(hosts_of(ms), policies=policies)
    t0 = time.monotonic()
    st, h, body = g.chat()
    took = time.monotonic() - t0
    assert st == 200, body
    assert h["x-upstream-host"] == "m2"
    assert took < 1.0, took
    assert h["x-attempts"] == "3"
    # the losers saw their connections closed
    wait_for(lambda: ms[0].stats()["disconnects"] == 1 and ms[1].stats()["disconnects"] == 1,
             timeout=5, what="losers cancelled")
    # streaming races too
    st, h, body = g.chat(stream=True)
    assert st == 200 and h["x-upstream-host"] == "m2" and b"[DONE]" in body


def test_sequential_fallback_chain_rewrites_model(mocks, gateway):
    ms = mocks(2)
    ms[0].config(status=500)
    hosts = hosts_of(ms, m0={"models": ["big-model"]}, m1={"models": ["small-model"]})
    policies = ("models:\n  smalls: [small-model]\n"
                "retry:\n  max_attempts: 2\n  backoff: {initial: 1ms}\n"
                "fallback:\n  chains:\n    - match: big-model\n      steps:\n"
                "        - {model: big-model, timeout: 2s}\n        - {model: smalls}\n")
    g = gateway(hosts, policies=policies)
    st, h, body = g.chat(model="big-model")
    assert st == 200, body
    assert h["x-upstream-host"] == "m1"
    assert h["x-attempts"] == "3"          # 2 on big-model, then the fallback
    assert ms[1].stats()["last_body"]["model"] == "small-model"
    assert ms[0].stats()["last_body"]["model"] == "big-model"
    # a request for the group name goes to a member, rewritten
    st, h, body = g.chat(model="smalls")
    assert st == 200 and ms[1].stats()["last_body"]["model"] == "small-model"


def test_parallel_race_all_fail_then_later_steps(mocks, gateway):
    ms = mocks(3)
    ms[0].config(status=500)
    ms[1].config(status=500)
    policies = ("retry:\n  backoff: {initial: 1ms}\n"
                "fallback:\n  chains:\n    - match: \"*\"\n      mode: parallel\n      race: 2\n"
                "      steps:\n        - hosts: [m0]\n        - hosts: [m1]\n        - hosts: [m2]\n")
    g = gateway(hosts_of(ms), policies=policies)
    st, h, body = g.chat()
    assert st == 200, body
    assert h["x-upstream-host"] == "m2"


def test_no_retry_header_sends_once(mocks, gateway):
    ms = mocks(2)
    for m in ms:
        m.config(status=503)
    g = gateway(hosts_of(ms), policies="retry:\n  no_retry_header: X-No-Retry\n  backoff: {initial: 1ms}\n"
                "circuit_breaker:\n  enabled: false\n")
    st, h, _ = g.chat(headers={"X-No-Retry": "1"})
    assert st == 502 and h["x-attempts"] == "1"
    st, h, _ = g.chat(headers={"X-No-Retry": "false"})
    assert h["x-attempts"] == "3"
    st, h, _ = g.chat()
    assert h["x-attempts"] == "3"
    assert sum(m.stats()["requests"] for m in ms) == 7


def test_when_full_queue_waits_for_a_free_host(mocks, gateway):
    ms = mocks(1)
    ms[0].config(delay_ms=400)
    hosts = hosts_of(ms, m0={"max_concurrent": 1})
    g = gateway(hosts, policies="routing:\n  when_full: queue\n  queue_timeout: 3s\n")
    results = []

    def one():
        results.append(g.chat()[0])

    threads = [threading.Thread(target=one) for _ in range(3)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results == [200, 200, 200]
    assert time.monotonic() - t0 >= 1.1          # served one after another
    # reject (the default) answers 429 at once
    g2 = gateway(hosts)
    t = threading.Thread(target=lambda: g2.chat())
    t.start()
    wait_for(lambda: ms[0].stats()["in_flight"] == 1, what="host busy")
    st, _, body = g2.chat()
    t.join(20)
    assert assert_openai_error(st, body, 429)["code"] == "hosts_full"
    # queue timeout gives 429 too
    ms[0].config(delay_ms=2000)
    g3 = gateway(hosts, policies="routing:\n  when_full: queue\n  queue_timeout: 300ms\n")
    t = threading.Thread(target=lambda: g3.chat())
    t.start()
    wait_for(lambda: ms[0].stats()["in_flight"] >= 1, what="host busy")
    t0 = time.monotonic()
    st, _, body = g3.chat()
    assert st == 429 and time.monotonic() - t0 < 1.5
    t.join(20)


def test_weights_respected_over_1000_requests(mocks, gateway):
    ms = mocks(3)
    hosts = hosts_of(ms, m0={"weight": 5}, m1={"weight": 3}, m2={"weight": 2})
    g = gateway(hosts, policies="routing:\n  strategy: weighted-round-robin\n")
    counts = {}
    for _ in range(1000):
        h = g.chat()[1]["x-upstream-host"]
        counts[h] = counts.get(h, 0) + 1
    assert abs(counts["m0"] - 500) <= 25 and abs(counts["m1"] - 300) <= 25 \
        and abs(counts["m2"] - 200) <= 25, counts


def test_per_model_breaker_keeps_other_models_on_the_host(mocks, gateway):
    ms = mocks(2)
    ms[0].config(fail_models={"model-a": 500})
    hosts = hosts_of(ms, m0={"models": ["model-a", "model-b"]}, m1={"models": ["model-a", "model-b"]})
    g = gateway(hosts, policies="retry:\n  backoff: {initial: 1ms}\n"
                "circuit_breaker:\n  failure_threshold: 2\n  reset_timeout: 60s\n")
    for _ in range(6):
        st, h, _ = g.chat(model="model-a")
        assert st == 200 and h["x-upstream-host"] == "m1"
    a_at_m0 = ms[0].stats()["models"].get("model-a", 0)
    assert a_at_m0 == 2                       # then its model-a breaker opened
    for _ in range(4):
        assert g.chat(model="model-a")[1]["x-upstream-host"] == "m1"
    assert ms[0].stats()["models"].get("model-a", 0) == a_at_m0
    # the host itself stays in rotation for model-b
    assert {g.chat(model="model-b")[1]["x-upstream-host"] for _ in range(4)} == {"m0", "m1"}
    host = next(h for h in json.loads(g.request("GET", "/status")[2])["hosts"] if h["name"] == "m0")
    assert host["breaker"] == "closed"
    assert host["model_breakers"] == {"model-a": "open", "model-b": "closed"}
