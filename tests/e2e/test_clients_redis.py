"""Client limits shared by replicas through Redis (issue 19): one script
per admission, so 3 replicas together admit the limit, not 3 x the limit;
max_concurrent across replicas; Redis killed mid-run follows
limits.on_store_failure with no 5xx."""
import json
import threading
import time

from conftest import hosts_of, wait_for
from test_sessions import redis_policies, redis_server  # noqa: F401

KA = "sk-alice-redis-0123456789"
AUTH = {"Authorization": "Bearer " + KA}


def redis_up(g):
    return json.loads(g.request("GET", "/status")[2])["sessions"]["redis"]["state"] == "up"


def hammer(gs, until, nthreads=8):
    """Chat requests from nthreads threads spread over gs until `until`
    (time.time()); returns the statuses."""
    out, lock = [], threading.Lock()

    def run(i):
        g = gs[i % len(gs)]
        while time.time() < until:
            st = g.chat(headers=AUTH)[0]
            with lock:
                out.append(st)
    ts = [threading.Thread(target=run, args=(i,)) for i in range(nthreads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def test_three_replicas_admit_the_limit(mocks, gateway, redis_server):
    port, _, procs = redis_server
    ms = mocks(1)
    # window 1s, rpm 1200: 20 requests per window for the three together
    pol = redis_policies(port) + ("limits:\n  window: 1s\n  on_store_failure: local\n"
                                  "clients:\n  - {name: alice, key: %s, limits: {rpm: 1200}}\n" % KA)
    gs = [gateway(hosts_of(ms), policies=pol) for _ in range(3)]
    wait_for(lambda: all(redis_up(g) for g in gs), timeout=20, what="redis up")
    wait_for(lambda: all(json.loads(g.request("GET", "/status")[2])["sessions"]["replicas"] is not None
                         and len(json.loads(g.request("GET", "/status")[2])["replicas"]) == 3
                         for g in gs), timeout=20, what="3 replicas registered")
    now = time.time()
    start = int(now) + 1.02                       # just after a window starts
    time.sleep(start - now)
    windows = 4
    sts = hammer(gs, start + windows - 0.3)
    ok = sts.count(200)
    assert set(sts) <= {200, 429}, set(sts)
    assert abs(ok - 20 * windows) <= 0.02 * 20 * windows, (ok, len(sts))
    # Redis killed: limits.on_store_failure local, never a 5xx
    procs[0].terminate()
    procs[0].wait(10)
    sts = hammer(gs, time.time() + 1.5)
    assert sts and set(sts) <= {200, 429}, set(sts)
    assert 200 in sts
    for g in gs:
        g.stop()


def test_max_concurrent_across_replicas(mocks, gateway, redis_server):
    port, _, _ = redis_server
    ms = mocks(1, "--delay-ms", "1500")
    pol = redis_policies(port) + ("clients:\n  - {name: alice, key: %s, limits: {max_concurrent: 2}}\n" % KA)
    gs = [gateway(hosts_of(ms), policies=pol) for _ in range(3)]
    wait_for(lambda: all(redis_up(g) for g in gs), timeout=20, what="redis up")
    res, lock = [], threading.Lock()

    def one(g):
        st, h, _ = g.chat(headers=AUTH)
        with lock:
            res.append(st)
    ts = [threading.Thread(target=one, args=(gs[i % 3],)) for i in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(res) == [200, 200, 429, 429, 429, 429], res
    # settled: room again
    wait_for(lambda: gs[0].chat(headers=AUTH)[0] == 200, timeout=20, what="settled in Redis")
    for g in gs:
        g.stop()


def test_store_failure_closed_refuses_without_5xx(mocks, gateway, redis_server):
    port, _, procs = redis_server
    ms = mocks(1)
    pol = redis_policies(port) + ("limits:\n  on_store_failure: closed\n"
                                  "clients:\n  - {name: alice, key: %s, limits: {rpm: 1000}}\n" % KA)
    g = gateway(hosts_of(ms), policies=pol)
    wait_for(lambda: redis_up(g), timeout=20, what="redis up")
    assert g.chat(headers=AUTH)[0] == 200
    procs[0].terminate()
    procs[0].wait(10)
    st, h, body = g.chat(headers=AUTH)
    assert st == 429 and json.loads(body)["error"]["code"] == "rate_limit_exceeded", body
    assert "retry-after" in h
    g.stop()
