"""GET /admin/events (SSE of state changes) and GET /admin/timeseries.

A watcher sees a reload, a failed reload with its FILE:LINE:COL errors, a
breaker opening and a key cooling down, in that order; half-open and closed,
hosts out and back by probes, by passive ejection and by breaker, a key
disabled and back by a reload, a host+model breaker, alerts, replicas joining
and leaving through Redis, and the drain that ends the streams are told too;
64 watchers each get every event; a watcher that never reads is dropped while
a reading one keeps up, and the gateway's memory stays bounded; both endpoints
need the admin token when one is set.
"""
import http.client
import json
import os
import queue
import re
import socket
import signal
import threading
import time

from conftest import SANITIZED, hosts_of, wait_for
from test_sessions import redis_policies, redis_server  # noqa: F401 (fixture)

TOKEN = "dash-admin-token"
AUTH = {"Authorization": "Bearer " + TOKEN}


class Watcher:
    """A reading /admin/events client: events land in a queue as dicts."""

    def __init__(self, port, headers=None):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.conn.request("GET", "/admin/events", headers=headers or {})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.events = queue.Queue()
        self.raw = []
        self.closed = threading.Event()
        if self.status == 200:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            while True:
                line = self.resp.readline()
                if not line:
                    break
                line = line.decode()
                self.raw.append(line)
                if line.startswith("data: "):
                    self.events.put(json.loads(line[6:]))
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            pass
        self.closed.set()

    def until(self, pred, timeout=20, what="event"):
        """Events up to and including the first one pred() accepts."""
        seen = []
        deadline = timeout
        while True:
            try:
                ev = self.events.get(timeout=deadline)
            except queue.Empty:
                raise AssertionError("no %s; saw %s" % (what, [e["type"] for e in seen]))
            seen.append(ev)
            if pred(ev):
                return seen

    def close(self):
        try:
            self.conn.sock and self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.conn.close()


def status(g):
    st, _, body = g.request("GET", "/admin/providers", headers=AUTH)
    assert st == 200, body
    return json.loads(body)


def test_events_in_order_reload_breaker_key(mocks, gateway):
    ms = mocks(2)
    keys = [{"key": "sk-cooling-key-0000001", "description": "cool"},
            {"key": "sk-good-key-00000000002", "description": "good"}]
    policies = ("admin:\n  token: %s\nretry:\n  max_attempts: 4\n  backoff: {initial: 1ms}\n"
                "circuit_breaker:\n  failure_threshold: 1\n  reset_timeout: 60s\n" % TOKEN)
    g = gateway(hosts_of(ms), keys, policies=policies)
    w = Watcher(g.port, AUTH)
    try:
        assert w.status == 200
        assert w.resp.getheader("Content-Type").startswith("text/event-stream")
        wait_for(lambda: status(g)["events"]["watchers"] == 1, what="watcher registered")
        # a reload, then one that fails
        st, _, _ = g.request("POST", "/admin/reload", headers=AUTH)
        assert st == 200
        pol = os.path.join(g.conf_dir, "policies.yaml")
        good = open(pol).read()
        with open(pol, "w") as f:
            f.write(good + "retry_typo: 1\n")
        st, _, _ = g.request("POST", "/admin/reload", headers=AUTH)
        assert st == 422
        with open(pol, "w") as f:
            f.write(good)
        # a breaker opens: m0 answers 500 and the retry goes to m1
        ms[0].config(status=500)
        wait_for(lambda: g.chat()[0] == 200 and ms[0].stats()["requests"] > 0,
                 what="a request to reach m0")
        # a key cools down: m1 throttles one key
        used = ms[1].stats()["keys"].get("sk-cooling-key-0000001", 0)
        ms[1].config(fail_keys={"sk-cooling-key-0000001": 429}, retry_after=30)
        wait_for(lambda: g.chat()[0] == 200 and ms[1].stats()["keys"].get(
            "sk-cooling-key-0000001", 0) > used, what="the throttled key to be used")

        got = w.until(lambda e: e["type"] == "key_cooled", what="key_cooled")
        types = [e["type"] for e in got]
        order = [t for t in types if t in ("reload_ok", "reload_failed", "breaker_open",
                                           "key_cooled")]
        assert order == ["reload_ok", "reload_failed", "breaker_open", "key_cooled"], types
        by = {e["type"]: e for e in got}
        for e in got:
            assert isinstance(e["time"], str) and e["time"].endswith("Z")
            assert isinstance(e["time_ms"], int)
        times = [e["time_ms"] for e in got]
        assert times == sorted(times)
        assert by["reload_ok"]["generation"] == 2
        errs = by["reload_failed"]["errors"]
        assert any(re.search(r"policies\.yaml:\d+:\d+: retry_typo", m) for m in errs), errs
        assert by["breaker_open"]["host"] == "m0"
        assert by["host_out"]["host"] == "m0" and by["host_out"]["why"] == "breaker"
        kc = by["key_cooled"]
        assert kc["description"] == "cool" and kc["status"] == 429 and kc["host"] == "m1"
        assert kc["until_ms"] > kc["time_ms"]
        assert "sk-cooling-key" not in "".join(w.raw)    # fingerprints only
        # the same history is in /status for a page that opens later
        rl = status(g)["reloads"]
        assert [r["ok"] for r in rl[:2]] == [False, True]
        assert any("retry_typo" in m for m in rl[0]["errors"])
    finally:
        w.close()
    g.stop()                    # a watcher that went away leaves nothing behind


def test_breaker_half_open_and_closed_are_told(mocks, gateway):
    ms = mocks(2)
    g = gateway(hosts_of(ms), policies=(
        "retry:\n  backoff: {initial: 1ms}\n"
        "circuit_breaker:\n  failure_threshold: 1\n  reset_timeout: 1s\n  half_open_requests: 1\n"))
    w = Watcher(g.port)
    try:
        wait_for(lambda: status(g)["events"]["watchers"] == 1, what="watcher registered")
        ms[0].config(status=500)
        wait_for(lambda: g.chat()[0] == 200 and ms[0].stats()["requests"] > 0,
                 what="a request to reach m0")
        w.until(lambda e: e["type"] == "breaker_open", what="breaker_open")
        ms[0].config(status=200)
        w.until(lambda e: e["type"] == "breaker_half_open" and e["host"] == "m0",
                what="breaker_half_open")
        wait_for(lambda: g.chat()[1].get("x-upstream-host") == "m0", what="m0 back in use")
        w.until(lambda e: e["type"] == "breaker_closed", what="breaker_closed")
        back = w.until(lambda e: e["type"] == "host_back", what="host_back")[-1]
        assert back["host"] == "m0" and back["why"] == "breaker"
    finally:
        w.close()


def big_failing_hosts(n):
    """hosts.json with n bad hosts: a reload with many long errors."""
    return {"hosts": [{"name": "bad-host-%03d-%s" % (i, "x" * 40), "url": "ftp://nowhere"}
                      for i in range(n)]}


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def test_never_reading_watcher_is_dropped_memory_bounded(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms))
    # A watcher that never reads, with a small receive window.
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", g.port))
    stuck.sendall(b"GET /admin/events HTTP/1.1\r\nHost: x\r\n\r\n")
    reader = Watcher(g.port)
    try:
        wait_for(lambda: status(g)["events"]["watchers"] == 2, what="two watchers")
        hosts = os.path.join(g.conf_dir, "hosts.json")
        good = open(hosts).read()
        with open(hosts, "w") as f:
            json.dump(big_failing_hosts(40), f)
        rss0 = rss_kb(g.proc.pid)
        n = 0
        seen = []

        def reader_has(k):
            seen.extend(drain(reader.events))
            return len([e for e in seen if e["type"] == "reload_failed"]) >= k

        # Each failed reload is an event of ~4 KB; the ring holds 256 KB. The
        # reader is let catch up after each one (on a loaded machine this
        # process's reading thread can lag a whole ring behind a tight loop
        # of reloads, and a watcher that far behind is dropped, rightly); the
        # stuck watcher never reads, so it falls behind all the same.
        while status(g)["events"]["dropped"] == 0:
            st, _, _ = g.request("POST", "/admin/reload")
            assert st == 422
            n += 1
            assert n < 400, "the stuck watcher was never dropped"
            wait_for(lambda: reader_has(n), timeout=20, what="the reader to keep up")
        doc = status(g)
        assert doc["events"]["dropped"] == 1 and doc["events"]["watchers"] == 1, (n, doc["events"])
        if not SANITIZED:
            assert rss_kb(g.proc.pid) - rss0 < 16 * 1024, (rss0, rss_kb(g.proc.pid))
        # the reading watcher got every one of them
        wait_for(lambda: reader_has(n), timeout=20, what="the reader to get all %d events" % n)
        assert all(e["errors_total"] >= 40 for e in seen if e["type"] == "reload_failed")
        # the stuck one's connection was closed: reading it ends
        stuck.settimeout(20)
        total = 0
        while True:
            try:
                b = stuck.recv(65536)
            except ConnectionResetError:
                break
            if not b:
                break
            total += len(b)
        assert total < 2 * 1024 * 1024
        assert "events: watcher" in g.output() and "dropped" in g.output()
        with open(hosts, "w") as f:
            f.write(good)
    finally:
        stuck.close()
        reader.close()
    g.stop()


def drain(q):
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


def test_timeseries_has_points_after_traffic(mocks, gateway):
    ms = mocks(1)
    ms[0].config(delay_ms=30)
    g = gateway(hosts_of(ms))
    for _ in range(5):
        assert g.chat()[0] == 200

    def points():
        st, _, body = g.request("GET", "/admin/timeseries")
        assert st == 200
        doc = json.loads(body)
        return doc if sum(doc["requests"]) >= 5 else None
    doc = wait_for(points, timeout=10, what="the 5 requests in the time series")
    assert doc["step_ms"] == 1000 and doc["points"] == 900
    n = len(doc["t"])
    for k in ("requests", "errors", "p50_ms", "p99_ms", "ttfb_p50_ms", "ttfb_p99_ms"):
        assert len(doc[k]) == n
    i = next(i for i, r in enumerate(doc["requests"]) if r)
    assert 25 <= doc["p50_ms"][i] <= 100 and doc["p99_ms"][i] >= doc["p50_ms"][i]
    assert doc["ttfb_p50_ms"][i] is not None
    assert sum(doc["errors"]) == 0
    # errors count too, and ?since= gives only newer points
    ms[0].config(status=500)
    assert g.chat()[0] >= 500
    doc2 = wait_for(lambda: (lambda d: d if sum(d["errors"]) >= 1 else None)(
        json.loads(g.request("GET", "/admin/timeseries?since=%d" % doc["t"][-1])[2])),
        timeout=10, what="the error in the time series")
    assert all(t > doc["t"][-1] for t in doc2["t"])


def test_admin_token_guards_events_and_timeseries(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms), policies="admin:\n  token: %s\n" % TOKEN)
    for path in ("/admin/events", "/admin/timeseries", "/admin/providers"):
        st, _, body = g.request("GET", path)
        assert st == 401, (path, body)
        st, _, body = g.request("GET", path, headers={"Authorization": "Bearer wrong"})
        assert st == 401, (path, body)
    st, _, body = g.request("GET", "/admin/timeseries", headers=AUTH)
    assert st == 200 and "t" in json.loads(body)
    st, h, body = g.request("HEAD", "/admin/events", headers=AUTH)
    assert st == 200 and body == b"" and h["content-type"].startswith("text/event-stream")
    w = Watcher(g.port, AUTH)
    try:
        assert w.status == 200
    finally:
        w.close()
    # the page itself holds no data: it is served, and asks for the token
    st, h, body = g.request("GET", "/dashboard")
    assert st == 200 and h["content-type"].startswith("text/html")


def test_alert_fired_and_resolved_are_told(mocks, gateway):
    ms = mocks(1)
    ms[0].config(status=500)
    g = gateway(hosts_of(ms), policies=(
        "retry:\n  max_attempts: 1\ncircuit_breaker:\n  enabled: false\n"
        "alerts:\n  window: 2s\n  for: 0s\n  thresholds: {error_rate: 0.3}\n"))
    w = Watcher(g.port)
    try:
        wait_for(lambda: status(g)["events"]["watchers"] == 1, what="watcher registered")
        for _ in range(5):
            g.chat()
        fired = w.until(lambda e: e["type"] == "alert_fired", what="alert_fired")[-1]
        assert fired["alert"] == "error_rate" and fired["state"] == "firing"
        ms[0].config(status=200)
        wait_for(lambda: g.chat()[0] == 200 and any(
            e["type"] == "alert_resolved" for e in list(w.events.queue)),
            timeout=20, what="alert_resolved")
    finally:
        w.close()


def test_drain_is_told_and_ends_the_streams(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms), policies="server:\n  drain_timeout: 30s\n")
    ws = [Watcher(g.port) for _ in range(3)]
    try:
        wait_for(lambda: status(g)["events"]["watchers"] == 3, what="watchers registered")
        t0 = time.monotonic()
        g.signal(signal.SIGTERM)
        for w in ws:
            ev = w.until(lambda e: e["type"] == "drain_started", what="drain_started")[-1]
            assert ev["in_flight"] == 0
            assert w.closed.wait(10), "stream not ended by the drain"
        assert g.proc.wait(20) == 0
        assert time.monotonic() - t0 < 10          # watchers do not hold the drain up
    finally:
        for w in ws:
            w.close()


def test_probe_and_passive_out_and_back(mocks, gateway):
    ms = mocks(3)
    g = gateway(hosts_of(ms), policies=(
        "health_check:\n  interval: 200ms\n  timeout: 150ms\n"
        "  unhealthy_threshold: 2\n  healthy_threshold: 2\n  ejection_base: 1s\n"
        "  panic_threshold: 0\n"
        "circuit_breaker:\n  enabled: false\nretry:\n  backoff: {initial: 1ms}\n"))
    w = Watcher(g.port)
    try:
        wait_for(lambda: status(g)["events"]["watchers"] == 1, what="watcher registered")
        ms[1].config(probe_status=503)
        out = w.until(lambda e: e["type"] == "host_out", what="host_out by probes")[-1]
        assert out["host"] == "m1" and out["why"] == "probe" and "503" in out["detail"]
        ms[1].config(probe_status=200)
        back = w.until(lambda e: e["type"] == "host_back", what="host_back by probes")[-1]
        assert back["host"] == "m1" and back["why"] == "probe"
        # passive: m2's answers fail; after 2 in a row it is ejected for 1 s
        ms[2].config(status=502)
        seen = []
        wait_for(lambda: g.chat()[0] == 200 and (seen.extend(drain(w.events)) or any(
            e["type"] == "host_out" for e in seen)), timeout=20, what="host_out (passive)")
        i = next(i for i, e in enumerate(seen) if e["type"] == "host_out")
        assert seen[i]["host"] == "m2" and seen[i]["why"] == "passive"
        ms[2].config(status=200)
        backs = [e for e in seen[i:] if e["type"] == "host_back"]
        back = backs[0] if backs else w.until(lambda e: e["type"] == "host_back",
                                               what="host_back (passive)")[-1]
        assert back["host"] == "m2" and back["why"] == "passive"
    finally:
        w.close()


def test_key_disabled_then_back_by_reload(mocks, gateway):
    ms = mocks(1)
    keys = [{"key": "sk-revoked-key-0000001", "description": "revoked"},
            {"key": "sk-fine-key-0000000002", "description": "fine"}]
    ms[0].config(fail_keys={"sk-revoked-key-0000001": 401})
    g = gateway(hosts_of(ms), keys, policies="retry:\n  backoff: {initial: 1ms}\n")
    w = Watcher(g.port)
    try:
        wait_for(lambda: status(g)["events"]["watchers"] == 1, what="watcher registered")
        for _ in range(3):
            assert g.chat()[0] == 200
        d = w.until(lambda e: e["type"] == "key_disabled", what="key_disabled")[-1]
        assert d["description"] == "revoked" and d["status"] == 401 and d["host"] == "m0"
        assert g.request("POST", "/admin/reload")[0] == 200
        got = w.until(lambda e: e["type"] == "key_back", what="key_back")
        assert got[-1]["description"] == "revoked" and got[-1]["why"] == "reload"
        assert "reload_ok" in [e["type"] for e in got]
    finally:
        w.close()


def test_many_watchers_all_get_each_event(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms))
    ws = []
    try:
        ws = [Watcher(g.port) for _ in range(64)]
        wait_for(lambda: status(g)["events"]["watchers"] == 64, what="64 watchers")
        for _ in range(3):
            assert g.request("POST", "/admin/reload")[0] == 200
        for w in ws:
            got = w.until(lambda e: e["type"] == "reload_ok" and e["generation"] == 4,
                          what="the third reload")
            assert [e["generation"] for e in got if e["type"] == "reload_ok"] == [2, 3, 4]
    finally:
        for w in ws:
            w.close()
    wait_for(lambda: status(g)["events"]["watchers"] == 0, what="watchers gone")


def test_replicas_joined_and_left(mocks, gateway, redis_server):
    port, _, _ = redis_server
    ms = mocks(1)
    g1 = gateway(hosts_of(ms), policies=redis_policies(port))
    w = Watcher(g1.port)
    try:
        me = status(g1)["sessions"]["replica"]["id"]
        g2 = gateway(hosts_of(ms), policies=redis_policies(port))
        other = status(g2)["sessions"]["replica"]["id"]
        j = w.until(lambda e: e["type"] == "replica_joined" and e["replica"] == other,
                    what="replica_joined", timeout=30)[-1]
        assert j["address"] == "127.0.0.1:%d" % g2.port and other != me
        g2.stop()
        w.until(lambda e: e["type"] == "replica_left" and e["replica"] == other,
                what="replica_left", timeout=30)
    finally:
        w.close()


def test_model_breaker_open_is_told_with_its_model(mocks, gateway):
    ms = mocks(2)
    ms[0].config(fail_models={"model-a": 500})
    hosts = hosts_of(ms, m0={"models": ["model-a", "model-b"]}, m1={"models": ["model-a", "model-b"]})
    g = gateway(hosts, policies="retry:\n  backoff: {initial: 1ms}\n"
                "circuit_breaker:\n  failure_threshold: 2\n  reset_timeout: 60s\n")
    w = Watcher(g.port)
    try:
        wait_for(lambda: status(g)["events"]["watchers"] == 1, what="watcher registered")
        for _ in range(6):
            assert g.chat(model="model-a")[0] == 200
        ev = w.until(lambda e: e["type"] == "breaker_open", what="breaker_open")[-1]
        assert ev["host"] == "m0" and ev["model"] == "model-a"
        assert not any(e["type"] == "host_out" for e in drain(w.events))
    finally:
        w.close()
