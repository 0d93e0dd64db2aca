"""server.workers: N threads, one listen port (SO_REUSEPORT), one shared state.

Every request here goes on a new connection, so the kernel spreads them over
the workers; each test checks that both workers served, and that what must be
global (rotation, breakers, max_concurrent, the when_full queue, reloads,
drain) behaves as with one worker. make test also runs this file on the
ThreadSanitizer build, and the whole e2e suite once with two workers.
"""
import http.client
import json
import signal
import threading

from conftest import hosts_of, http_request, wait_for

WORKERS = "server:\n  workers: 2\n"


def status_doc(g):
    st, _, body = g.request("GET", "/status")
    assert st == 200
    return json.loads(body)


def served(g):
    """Requests each worker has taken, by worker id."""
    return {w["id"]: w["requests"] for w in status_doc(g)["workers"]}


def parallel(g, n, threads=6, **chat):
    """n chat requests from `threads` client threads: [(status, headers, body)]."""
    out, lock, todo = [], threading.Lock(), list(range(n))

    def run():
        while True:
            with lock:
                if not todo:
                    return
                todo.pop()
            r = g.chat(**chat)
            with lock:
                out.append(r)

    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def test_two_workers_share_the_port_and_one_rotation(mocks, gateway):
    ms = mocks(3)
    g = gateway(hosts_of(ms), policies=WORKERS)
    # The port accepts (the listeners exist) a moment before the threads start.
    wait_for(lambda: "2 worker threads serving" in g.output(), what="the start-up log line")
    results = parallel(g, 90)
    assert [r[0] for r in results] == [200] * 90
    doc = status_doc(g)
    ws = doc["workers"]
    assert [w["id"] for w in ws] == [0, 1] and all(w["thread"] for w in ws)
    lk = doc["state_lock"]                                   # contention, for the bench
    assert lk["waits"] >= 0 and lk["wait_ms"] >= 0
    assert all(w["requests"] > 0 for w in ws), ws          # both took connections
    assert sum(w["requests"] for w in ws) == 91             # and /status itself
    # One round-robin over the three hosts, whichever worker picked.
    assert [m.stats()["requests"] for m in ms] == [30, 30, 30]
    st, _, body = g.request("GET", "/metrics")
    assert st == 200
    line = next(l for l in body.decode().splitlines()
                if l.startswith("infergate_requests_total{") and 'route="chat_completions"' in l
                and 'code="200"' in l and 'host="m0"' in l)
    assert line.endswith(" 30"), line                        # one set of counters


def test_breaker_opens_once_for_all_workers(mocks, gateway):
    ms = mocks(2)
    ms[0].config(status=500)
    g = gateway(hosts_of(ms), policies=WORKERS + (
        "retry:\n  backoff: {initial: 1ms}\n"
        "circuit_breaker:\n  failure_threshold: 3\n  reset_timeout: 60s\n"
        "  window: {size: 100, minimum_requests: 50}\n"))
    before = served(g)
    for _ in range(30):
        st, h, _ = g.chat()
        assert st == 200 and h["x-upstream-host"] == "m1"
    after = served(g)
    assert all(after[i] - before[i] > 1 for i in after), (before, after)
    # Three failures opened the one breaker; per-worker breakers would
    # have let each worker send its own three.
    assert ms[0].stats()["requests"] == 3
    assert next(h for h in status_doc(g)["hosts"] if h["name"] == "m0")["breaker"] == "open"


def test_max_concurrent_counts_across_workers(mocks, gateway):
    ms = mocks(1)
    ms[0].config(delay_ms=700)
    g = gateway(hosts_of(ms, m0={"max_concurrent": 2}), policies=WORKERS)
    results = parallel(g, 8, threads=8)
    codes = sorted(r[0] for r in results)
    assert codes == [200, 200] + [429] * 6, codes
    for st, _, body in results:
        if st == 429:
            assert json.loads(body)["error"]["code"] == "hosts_full"
    assert ms[0].stats()["requests"] == 2


def test_when_full_queue_wakes_requests_on_other_workers(mocks, gateway):
    ms = mocks(1)
    ms[0].config(delay_ms=80)
    g = gateway(hosts_of(ms, m0={"max_concurrent": 1}), policies=WORKERS + (
        "routing:\n  when_full: queue\n  queue_timeout: 30s\n"))
    before = served(g)
    # 16 connections: the chance that the kernel gives them all to one
    # worker is 2^-15.
    results = parallel(g, 16, threads=16)
    assert [r[0] for r in results] == [200] * 16
    after = served(g)
    assert all(after[i] - before[i] > 0 for i in after), (before, after)
    assert ms[0].stats()["requests"] == 16


def test_reloads_under_load_lose_nothing_then_drain(mocks, gateway):
    ms = mocks(2)
    g = gateway(hosts_of(ms), policies=WORKERS + "admin:\n  token: t0k\n")
    stop, errors, done = threading.Event(), [], [0]

    def load():
        while not stop.is_set():
            st, _, body = g.chat()
            if st != 200:
                errors.append((st, body))
            done[0] += 1

    ts = [threading.Thread(target=load) for _ in range(4)]
    for t in ts:
        t.start()
    try:
        gens = []
        for i in range(6):
            if i % 3 == 2:
                g.signal(signal.SIGHUP)
                continue
            st, _, body = g.request("POST", "/admin/reload",
                                    headers={"Authorization": "Bearer t0k"})
            assert st == 200, body
            gens.append(json.loads(body)["generation"])
        assert gens == sorted(gens) and len(set(gens)) == len(gens)
        # Four POSTs reload each; the two SIGHUPs at least once (a SIGHUP that
        # comes while a reload runs shares the one that follows).
        wait_for(lambda: status_doc(g)["generation"] >= 6, what="every reload installed")
        # The load goes on until it has some volume: how much fits in the
        # reloads' time depends on the machine (sanitizers, a busy core).
        wait_for(lambda: done[0] > 20 or errors, timeout=60, what="load during the reloads")
    finally:
        stop.set()
        for t in ts:
            t.join()
    assert errors == [] and done[0] > 20, (errors[:3], done[0])

    # A stream in flight when SIGTERM comes is finished, then the process exits 0.
    # The load's last answers can reach their clients before the gateway has
    # counted them out (a whole reply leaves with one writev): wait for none
    # in flight, then for the stream at a mock, so SIGTERM cannot come while
    # the stream's connection is still unaccepted (the closed listener would
    # reset it).
    wait_for(lambda: status_doc(g)["in_flight"] == 0, what="the load's requests counted out")
    ms[0].config(chunks=6, chunk_interval_ms=100)
    ms[1].config(chunks=6, chunk_interval_ms=100)
    got = {}

    def stream():
        got["r"] = g.chat(stream=True)

    t = threading.Thread(target=stream)
    t.start()
    wait_for(lambda: status_doc(g)["in_flight"] == 1
             and ms[0].stats()["in_flight"] + ms[1].stats()["in_flight"] == 1,
             what="stream in flight at a mock")
    g.signal(signal.SIGTERM)
    t.join()
    st, _, body = got["r"]
    assert st == 200 and body.count(b"data: ") == 7 and b"[DONE]" in body
    wait_for(lambda: g.proc.poll() is not None, what="exit after the drain")
    out = g.stop()
    assert "drained, exiting" in out


def test_reload_answer_comes_back_on_the_worker_that_asked(mocks, gateway):
    """POST /admin/reload on worker threads: the main thread installs, each
    request is answered on its own connection, a bad file gives 422."""
    ms = mocks(1)
    g = gateway(hosts_of(ms), policies=WORKERS + "admin:\n  token: t0k\n")
    out, lock = [], threading.Lock()

    def reload_once():
        r = http_request(g.port, "POST", "/admin/reload", headers={"Authorization": "Bearer t0k"})
        with lock:
            out.append(r)

    ts = [threading.Thread(target=reload_once) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert [r[0] for r in out] == [200] * 8
    # A new worker count is for the next start: the reload goes through, says so.
    with open(g.conf_dir + "/policies.yaml", "w") as f:
        f.write("server:\n  workers: 3\nadmin:\n  token: t0k\nhealth_check:\n  enabled: false\n")
    st, _, body = g.request("POST", "/admin/reload", headers={"Authorization": "Bearer t0k"})
    assert st == 200, body
    assert "server.workers changes from 2 to 3 at the next restart" in g.output()
    assert len(status_doc(g)["workers"]) == 2
    with open(g.conf_dir + "/hosts.json", "w") as f:
        f.write("{ not json")
    st, _, body = g.request("POST", "/admin/reload", headers={"Authorization": "Bearer t0k"})
    assert st == 422 and json.loads(body)["ok"] is False
    assert g.chat()[0] == 200


def test_second_stop_signal_ends_streams_on_every_worker(mocks, gateway):
    """SIGTERM drains; a second SIGTERM ends what is still in flight on
    whichever worker holds it, and the process exits 0 without waiting
    for the streams (each would take 20 s)."""
    ms = mocks(1)
    ms[0].config(chunks=20, chunk_interval_ms=1000)
    g = gateway(hosts_of(ms), policies="server:\n  workers: 2\n  drain_timeout: 60s\n")
    results, heads, lock = [], [], threading.Lock()

    def stream():
        # Counted once its head has arrived: a request still before its
        # first byte when the second signal comes gets a 503, not a stream
        # cut short (a slow build admits before it streams).
        conn = http.client.HTTPConnection("127.0.0.1", g.port, timeout=60)
        try:
            conn.request("POST", "/v1/chat/completions",
                         json.dumps({"model": "mock-model", "stream": True,
                                     "messages": [{"role": "user", "content": "hi"}]}),
                         {"Content-Type": "application/json"})
            r = conn.getresponse()
            with lock:
                heads.append(r.status)
            body = r.read()
            with lock:
                results.append((r.status, None, body))
        finally:
            conn.close()

    ts = [threading.Thread(target=stream) for _ in range(6)]
    for t in ts:
        t.start()
    wait_for(lambda: len(heads) == 6, timeout=60, what="six streams under way")
    assert status_doc(g)["in_flight"] == 6
    g.signal(signal.SIGTERM)
    wait_for(lambda: "draining 6 request(s)" in g.output(), what="the drain")
    g.signal(signal.SIGTERM)
    wait_for(lambda: g.proc.poll() is not None, timeout=10, what="exit after the second signal")
    for t in ts:
        t.join(timeout=10)
    assert len(results) == 6
    for st, _, body in results:
        assert st == 200 and b"[DONE]" not in body and body.count(b"data: ") < 20
    out = g.stop()
    assert "second stop signal: exiting now" in out


def test_an_answer_is_counted_before_it_arrives(mocks, gateway):
    """A request is counted (in_flight, metrics, the client's limits, cache
    counts: proxy.c px_account()) before the answer's last bytes leave, so
    whatever the client asks next, on any worker, finds it counted: no
    waiting for it. Whole answers, streams and errors, on new connections
    spread over both workers."""
    ms = mocks(1)
    g = gateway(hosts_of(ms), policies=WORKERS)
    for i in range(60):
        kind = i % 3
        if kind == 2:
            st, _, _ = g.request("POST", "/v1/chat/completions", body=b"{not json")
            assert st == 400
        else:
            st, _, _ = g.chat(stream=kind == 1)
            assert st == 200
        doc = status_doc(g)
        assert doc["in_flight"] == 0, (i, doc["in_flight"])
        st, _, text = g.request("GET", "/metrics")
        total = sum(float(l.rsplit(" ", 1)[1]) for l in text.decode().splitlines()
                    if l.startswith("infergate_requests_total{"))
        assert total == i + 1, (i, total)
    assert all(n > 0 for n in served(g).values()), served(g)
    g.stop()
