"""Health: active probes and their thresholds, spreading, passive outcomes,
model discovery in GET /v1/models and routing, and the Infernet route-only
endpoint GET /api/v1/ip (containers and pending jobs from the nodes' /info)."""
import json
import os
import signal
import time

import pytest

from conftest import wait_for
from test_proxy import hosts_of
from test_resilience import host_status, status_doc


def probes(m, path="/v1/models"):
    return m.stats()["paths"].get(path, 0)


def chats(m):
    return m.stats()["paths"].get("/v1/chat/completions", 0)


def served_by(g, n, **kw):
    out = []
    for _ in range(n):
        st, h, body = g.chat(**kw)
        assert st == 200, body
        out.append(h["x-upstream-host"])
    return out


def test_failing_probes_take_a_host_out_and_bring_it_back(mocks, gateway):
    ms = mocks(2)
    g = gateway(hosts_of(ms), policies=(
        "health_check:\n  interval: 200ms\n  timeout: 150ms\n"
        "  unhealthy_threshold: 2\n  healthy_threshold: 3\n"))
    assert set(served_by(g, 4)) == {"m0", "m1"}

    # only m1's probes fail: its API still answers, yet it gets no traffic
    ms[1].config(probe_status=503)
    wait_for(lambda: host_status(g, "m1")["health"] == "unhealthy", timeout=10,
             what="m1 marked unhealthy by its probes")
    n1 = chats(ms[1])
    assert served_by(g, 8) == ["m0"] * 8
    assert chats(ms[1]) == n1
    st, _, body = g.request("GET", "/health")
    assert st == 200, body                      # m0 is still usable

    # back after healthy_threshold good probes in a row, not fewer
    c0 = probes(ms[1])
    ms[1].config(probe_status=200)
    wait_for(lambda: host_status(g, "m1")["health"] == "healthy", timeout=10,
             what="m1 healthy again")
    assert probes(ms[1]) - c0 >= 3
    assert "m1" in served_by(g, 6)


def test_all_hosts_failing_probes_make_health_503(mocks, gateway):
    ms = mocks(2)
    for m in ms:
        m.config(probe_status=500)
    # panic mode off: with it (the default) these hosts would still serve
    g = gateway(hosts_of(ms), policies=(
        "health_check:\n  interval: 150ms\n  timeout: 100ms\n  unhealthy_threshold: 1\n"
        "  panic_threshold: 0\n"))
    wait_for(lambda: g.request("GET", "/health")[0] == 503, timeout=10,
             what="/health 503 with every host unhealthy")
    st, _, body = g.chat()
    assert st == 503, body
    for m in ms:
        m.config(probe_status=200)
    wait_for(lambda: g.request("GET", "/health")[0] == 200, timeout=10,
             what="/health 200 again")


def test_probes_are_spread_over_the_interval(mocks, gateway):
    ms = mocks(4)
    t_start = time.monotonic()
    g = gateway(hosts_of(ms), policies="health_check:\n  interval: 2s\n  timeout: 1s\n")
    first = {}

    def poll():
        now = time.monotonic()
        for m in ms:
            if m.name not in first and probes(m) >= 1:
                first[m.name] = now
        return len(first) == len(ms)

    wait_for(poll, timeout=15, interval=0.02, what="a first probe at every host")
    t = sorted(first.values())
    # host i's first probe comes i * interval / n after the start: 0, .5, 1, 1.5 s.
    # The first one may precede our first poll (startup), so judge the others.
    assert t[3] - t[1] >= 0.6, [x - t_start for x in t]
    assert min(b - a for a, b in zip(t[1:], t[2:])) >= 0.25, [x - t_start for x in t]
    # then one probe per host per interval, not a burst
    wait_for(lambda: all(probes(m) >= 2 for m in ms), timeout=15, what="second probes")
    assert all(probes(m) <= 3 for m in ms), [probes(m) for m in ms]


def test_probe_longer_than_the_interval_skips_turns(mocks, gateway):
    """health_check.timeout may exceed interval: a probe that takes 1 s with
    a 200 ms interval counts as up (not cut at the interval), and the turns
    that come while it runs are skipped (one probe in flight per host)."""
    ms = mocks(1, "--probe-delay-ms", "1000")
    g = gateway(hosts_of(ms), policies=(
        "health_check:\n  interval: 200ms\n  timeout: 5s\n"
        "  unhealthy_threshold: 1\n  healthy_threshold: 1\n"))
    wait_for(lambda: probes(ms[0]) >= 1, timeout=30, interval=0.005, what="a first probe")
    t1 = time.monotonic()
    wait_for(lambda: probes(ms[0]) >= 3, timeout=60, interval=0.005, what="a third probe")
    # each probe starts at the first turn after the previous one ended
    # (>= 1 s apart); without the skip they would come every 200 ms
    assert time.monotonic() - t1 >= 1.9, probes(ms[0])
    h = host_status(g, "m0")
    assert h["health"] == "healthy", h
    assert "timeout" not in json.dumps(h).lower(), h
    assert g.chat()[0] == 200


@pytest.mark.parametrize("fault", ["dead", "5xx"])
def test_passive_failures_drop_a_host_before_the_next_probe(mocks, gateway, fault):
    ms = mocks(2)
    # One probe round per hour: only request outcomes can take m1 out here;
    # the breaker is off so that it is health, not the breaker, that acts.
    g = gateway(hosts_of(ms), policies=(
        "health_check:\n  interval: 1h\n  timeout: 2s\n  unhealthy_threshold: 2\n"
        "circuit_breaker:\n  enabled: false\n"
        "retry:\n  backoff: {type: fixed, initial: 1ms}\n"))
    assert set(served_by(g, 4)) == {"m0", "m1"}
    if fault == "dead":
        ms[1].proc.send_signal(signal.SIGTERM)
        ms[1].proc.wait(10)
    else:
        ms[1].config(status=502)
    # the requests that meet m1 fail over to m0
    assert served_by(g, 6) == ["m0"] * 6
    wait_for(lambda: host_status(g, "m1")["health"] == "unhealthy", timeout=5,
             what="m1 unhealthy from failed requests")
    # from now on nobody even tries m1
    for _ in range(10):
        st, h, body = g.chat()
        assert st == 200, body
        assert h["x-upstream-host"] == "m0"
        assert h["x-attempts"] == "1"
    if fault == "5xx":
        assert probes(ms[1]) == 0          # m1's first probe is half an hour away


def out_reasons(g, name):
    return {o["reason"]: o for o in host_status(g, name)["out"]}


def until_left_ms(o):
    return o["until_ms"] - time.time() * 1000


def test_passive_ejection_ends_after_its_time_and_repeated_ones_grow(mocks, gateway):
    ms = mocks(2)
    # Probes effectively off and the breaker off: only passive health acts.
    g = gateway(hosts_of(ms), policies=(
        "health_check:\n  interval: 1h\n  timeout: 2s\n  unhealthy_threshold: 3\n"
        "  ejection_base: 2s\n  ejection_max: 10s\n"
        "circuit_breaker:\n  enabled: false\n"
        "retry:\n  backoff: {type: fixed, initial: 1ms}\n"))
    assert set(served_by(g, 4)) == {"m0", "m1"}
    ms[1].config(status=502)

    def ejected():
        served_by(g, 1)                    # every request still succeeds (on m0)
        return out_reasons(g, "m1").get("passive")

    o = wait_for(ejected, timeout=15, what="m1 ejected after 3 failures")
    assert until_left_ms(o) <= 2000 + 200, o
    st = host_status(g, "m1")
    assert st["health"] == "unhealthy" and st["ejections"] == 1, st
    assert ("host m1 ejected for 2000 ms after 3 failed requests in a row"
            " (ejection 1 in a row)") in g.output()
    n1 = chats(ms[1])
    assert served_by(g, 4) == ["m0"] * 4
    assert chats(ms[1]) == n1              # out means no traffic at all

    # back by itself after the ejection time (checked every second), not before
    ms[1].config(status=200)
    wait_for(lambda: host_status(g, "m1")["out"] == [], timeout=10, interval=0.05,
             what="m1 back after its ejection")
    assert time.time() * 1000 >= o["until_ms"] - 50, o
    assert "host m1 is back after its ejection" in g.output()
    wait_for(lambda: "m1" in served_by(g, 2), timeout=10, what="m1 serving again")

    # it fails again at once: ejected again, for twice as long
    ms[1].config(status=502)
    wait_for(ejected, timeout=15, what="m1 ejected a second time")
    assert ("host m1 ejected for 4000 ms after 3 failed requests in a row"
            " (ejection 2 in a row)") in g.output()
    st = host_status(g, "m1")
    assert st["ejections"] == 2 and st["ejections_total"] == 2, st


def test_breaker_trial_reaches_an_ejected_host_after_reset_timeout(mocks, gateway):
    ms = mocks(2)
    # The ejection alone would last an hour: only the breaker's half-open
    # trial, after reset_timeout, can bring m1 back before that.
    g = gateway(hosts_of(ms), policies=(
        "health_check:\n  interval: 1h\n  timeout: 2s\n  unhealthy_threshold: 3\n"
        "  ejection_base: 1h\n"
        "circuit_breaker:\n  failure_threshold: 3\n  reset_timeout: 1s\n"
        "retry:\n  backoff: {type: fixed, initial: 1ms}\n"))
    assert set(served_by(g, 4)) == {"m0", "m1"}
    ms[1].config(status=502)

    def both_out():
        served_by(g, 1)
        r = out_reasons(g, "m1")
        return r if "passive" in r and "breaker" in r else None

    r = wait_for(both_out, timeout=15, what="m1 ejected and its breaker open")
    assert until_left_ms(r["passive"]) > 200 * 1000, r      # capped by ejection_max 5m
    assert until_left_ms(r["breaker"]) <= 1000 + 200, r
    ms[1].config(status=200)
    n1 = chats(ms[1])
    wait_for(lambda: "m1" in served_by(g, 1), timeout=15, interval=0.05,
             what="the breaker's trial reaching m1")
    assert time.time() * 1000 >= r["breaker"]["until_ms"] - 50, r
    assert chats(ms[1]) == n1 + 1          # one trial, and it succeeded
    st = host_status(g, "m1")
    assert st["out"] == [] and st["breaker"] == "closed", st
    assert "host m1 is back: a request sent during its ejection succeeded" in g.output()
    assert "m1" in served_by(g, 4)


def metric(g, name):
    st, _, body = g.request("GET", "/metrics")
    assert st == 200
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("no metric " + name)


@pytest.mark.parametrize("code", [404, 405])
def test_probe_path_not_served_panic_mode_still_serves(mocks, gateway, code):
    ms = mocks(2)
    for m in ms:
        m.config(probe_status=code)        # no GET /v1/models; chat works
    served = {"models": ["mock-model"]}
    g = gateway(hosts_of(ms, m0=served, m1=served), policies=(
        "health_check:\n  interval: 200ms\n  timeout: 150ms\n  unhealthy_threshold: 2\n"))
    wait_for(lambda: status_doc(g)["panic"]["active"], timeout=15,
             what="panic mode with every host failing its probes")
    for name in ("m0", "m1"):
        st = host_status(g, name)
        assert st["health"] == "unhealthy", st
        assert st["out"] == [{"reason": "probe", "until": None}], st
        assert st["last_error"] == ("probe path /v1/models answers %d: set health_check.path"
                                    % code), st
    p = status_doc(g)["panic"]
    assert p["threshold"] == 0.5
    assert p["tiers"] == [{"priority": 0, "hosts": ["m0", "m1"], "usable": 0, "total": 2}], p
    # every request is served, over both hosts, breakers still in play
    assert set(served_by(g, 8)) == {"m0", "m1"}
    st, _, body = g.request("GET", "/health")
    assert st == 200, body
    assert json.loads(body)["status"] == "panic"
    assert metric(g, "infergate_panic_mode") == 1
    assert metric(g, "infergate_panic_picks_total") >= 8
    # the models the panicking hosts serve are still listed
    st, _, body = g.request("GET", "/v1/models")
    assert st == 200 and [m["id"] for m in json.loads(body)["data"]] == ["mock-model"], body
    out = g.output()
    assert out.count("panic mode on for the priority 0 tier of m0, m1: 0 of 2 hosts usable") == 1, out
    # the probe path's hint: once per host, not at every interval
    wait_for(lambda: all(probes(m) >= 6 for m in ms), timeout=15, what="more probe rounds")
    out = g.output()
    for name in ("m0", "m1"):
        line = "host %s: probe path /v1/models answers %d: set health_check.path" % (name, code)
        assert out.count(line) == 1, out

    # probes answer again: panic mode ends
    for m in ms:
        m.config(probe_status=200)
    wait_for(lambda: not status_doc(g)["panic"]["active"], timeout=15, what="panic mode over")
    assert "panic mode off for the priority 0 tier of m0, m1" in g.output()
    assert metric(g, "infergate_panic_mode") == 0
    assert json.loads(g.request("GET", "/health")[2])["status"] == "healthy"


def test_panic_mode_prefers_a_usable_tier(mocks, gateway):
    ms = mocks(2)
    ms[0].config(probe_status=500)
    g = gateway(hosts_of(ms, m0={"priority": 0}, m1={"priority": 1}), policies=(
        "health_check:\n  interval: 200ms\n  timeout: 150ms\n  unhealthy_threshold: 1\n"))
    wait_for(lambda: status_doc(g)["panic"]["active"], timeout=15, what="m0's tier in panic")
    # the backup tier is usable: it takes the traffic, not the panicking m0
    assert served_by(g, 6) == ["m1"] * 6
    ms[1].config(probe_status=500)
    wait_for(lambda: len(status_doc(g)["panic"]["tiers"]) == 2, timeout=15,
             what="both tiers in panic")
    # nothing usable anywhere: the first tier is served as if healthy
    assert served_by(g, 6) == ["m0"] * 6

    # a reload rebuilds the balancer: panic mode is not announced again...
    on = "panic mode on for the priority 0 tier of m0: 0 of 1 hosts usable"
    assert g.output().count(on) == 1
    g.signal(signal.SIGHUP)
    wait_for(lambda: status_doc(g)["generation"] == 2, timeout=15, what="reload")
    assert status_doc(g)["panic"]["active"]
    assert g.output().count(on) == 1, g.output()
    # ... and turning it off by a reload says so
    path = os.path.join(g.conf_dir, "policies.yaml")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace("health_check:\n", "health_check:\n  panic_threshold: 0\n", 1))
    g.signal(signal.SIGHUP)
    wait_for(lambda: status_doc(g)["generation"] == 3, timeout=15, what="second reload")
    assert "panic mode off for the priority 0 tier of m0 (new configuration)" in g.output()
    assert not status_doc(g)["panic"]["active"]
    assert g.chat()[0] == 503


def test_discovered_models_are_listed_and_routed(mocks, gateway):
    (m0,) = mocks(1, "--models", "alpha,beta")
    (m1,) = mocks(1, "--models", "gamma")
    # panic mode off: gamma's only host would otherwise still serve it
    g = gateway(hosts_of([m0, m1]), policies=(
        "health_check:\n  interval: 200ms\n  timeout: 150ms\n"
        "  discover_models: true\n  unhealthy_threshold: 1\n  panic_threshold: 0\n"))

    def ids():
        st, _, body = g.request("GET", "/v1/models")
        if st != 200:
            return None
        doc = json.loads(body)
        assert doc["object"] == "list"
        assert all(d["object"] == "model" for d in doc["data"])
        return sorted(d["id"] for d in doc["data"])

    wait_for(lambda: ids() == ["alpha", "beta", "gamma"], timeout=10,
             what="the union of discovered models")
    # routing follows right after (the balancer may be rebuilt off the
    # request path, a moment later than the list)
    wait_for(lambda: served_by(g, 2, model="gamma") == ["m1"] * 2
             and served_by(g, 2, model="alpha") == ["m0"] * 2, timeout=5,
             what="model-aware routing on discovered models")
    n1 = chats(m1)
    assert served_by(g, 4, model="gamma") == ["m1"] * 4
    assert served_by(g, 4, model="alpha") == ["m0"] * 4
    assert served_by(g, 2, model="beta") == ["m0"] * 2
    assert chats(m1) == n1 + 4

    # a host's list follows what it answers, and an unusable host's models go
    m0.config(models=["alpha", "delta"])
    wait_for(lambda: ids() == ["alpha", "delta", "gamma"], timeout=10,
             what="m0's new model list")
    m1.config(probe_status=503)
    wait_for(lambda: ids() == ["alpha", "delta"], timeout=10,
             what="gamma gone with unhealthy m1")


def ip_of(m):
    return "127.0.0.1:%d" % m.port


def route(g, query):
    st, h, body = g.request("GET", "/api/v1/ip" + ("?" + query if query is not None else ""))
    assert h["content-type"].startswith("application/json"), h
    return st, json.loads(body)


def test_api_v1_ip_by_containers_and_fewest_pending(mocks, gateway):
    (m0,) = mocks(1, "--containers", "a,b", "--pending", "5")
    (m1,) = mocks(1, "--containers", "a,b,c", "--pending", "1")
    (m2,) = mocks(1, "--pending", "0")
    (m3,) = mocks(1)                                   # runs nothing
    m2.config(containers=["a", "x y"])
    ms = [m0, m1, m2, m3]
    g = gateway(hosts_of(ms), policies=(
        "health_check:\n  path: /info\n  interval: 300ms\n  timeout: 200ms\n"
        "  unhealthy_threshold: 1\n  healthy_threshold: 1\n"))
    wait_for(lambda: all(probes(m, "/info") >= 1 for m in ms), timeout=10,
             what="an /info probe at every node")
    wait_for(lambda: route(g, "container=a&container=b") == (200, {"ip": ip_of(m1)}),
             timeout=10, what="m1: all containers, fewest pending")
    assert route(g, "container=a") == (200, {"ip": ip_of(m2)})
    assert route(g, "container=c&container=a") == (200, {"ip": ip_of(m1)})
    assert route(g, "container=x%20y") == (200, {"ip": ip_of(m2)})
    assert route(g, "container=x+y&container=a") == (200, {"ip": ip_of(m2)})

    st, doc = route(g, "container=zzz")
    assert st == 503 and isinstance(doc["error"], str) and doc["error"], doc
    st, doc = route(g, "container=a&container=zzz")
    assert st == 503, doc
    st, doc = route(g, None)
    assert st == 400 and isinstance(doc["error"], str) and doc["error"], doc
    st, doc = route(g, "model=x")
    assert st == 400, doc

    # pending counts follow the nodes' /info answers
    m1.config(pending=9)
    wait_for(lambda: route(g, "container=a&container=b") == (200, {"ip": ip_of(m0)}),
             timeout=10, what="m0 once m1 is busier")
    # an unhealthy node is never named; none left = 503
    m0.config(probe_status=503)
    wait_for(lambda: route(g, "container=a&container=b") == (200, {"ip": ip_of(m1)}),
             timeout=10, what="m1 once m0 is unhealthy")
    m1.config(probe_status=503)
    wait_for(lambda: route(g, "container=a&container=b")[0] == 503, timeout=10,
             what="503 with no usable node running a and b")
    assert route(g, "container=a") == (200, {"ip": ip_of(m2)})


def test_api_v1_ip_models_configured_containers_ties_and_api_info(mocks, gateway):
    (m0,) = mocks(1, "--containers", "inference-1", "--pending", "0")
    (m1,) = mocks(1, "--containers", "inference-1", "--pending", "3")
    (m2,) = mocks(1, "--containers", "inference-1", "--pending", "0")
    (m3,) = mocks(1, "--pending", "0")
    hosts = hosts_of([m0, m1, m2, m3], m0={"models": ["small"]}, m1={"models": ["big"]},
                     m2={"models": ["small"]}, m3={"containers": ["static-1"]})
    g = gateway(hosts, policies="health_check:\n  path: /api/info\n  interval: 300ms\n"
                                "  timeout: 200ms\n")
    wait_for(lambda: all(probes(m, "/api/info") >= 1 for m in (m0, m1, m2, m3)),
             timeout=10, what="an /api/info probe at every node")
    assert all(probes(m, "/info") == 0 for m in (m0, m1, m2, m3))
    wait_for(lambda: route(g, "container=inference-1&model=big") == (200, {"ip": ip_of(m1)}),
             timeout=10, what="the only node serving big")
    # equal pending: round-robin between m0 and m2
    got = {route(g, "container=inference-1&model=small")[1]["ip"] for _ in range(6)}
    assert got == {ip_of(m0), ip_of(m2)}
    st, doc = route(g, "container=inference-1&model=huge")
    assert st == 503, doc
    # containers from hosts.json count as well as discovered ones
    assert route(g, "container=static-1") == (200, {"ip": ip_of(m3)})


def test_ips_txt_is_a_hosts_source(mocks, tmp_path):
    """Seed 003: a directory with ips.txt (one node per line) and no hosts.json."""
    import subprocess
    from conftest import Gateway, INFERGATE_BIN
    ms = mocks(2)
    d = tmp_path / "ips"
    d.mkdir()
    (d / "ips.txt").write_text("# nodes\n127.0.0.1:%d\n\n%s\n" % (ms[0].port, ms[1].url))
    (d / "policies.yaml").write_text("health_check:\n  enabled: false\n")
    out = subprocess.run([INFERGATE_BIN, "-t", "-c", str(d)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    g = Gateway(str(d))
    try:
        seen = {g.chat()[1]["x-upstream-host"] for _ in range(4)}
        assert seen == {"127.0.0.1:%d" % ms[0].port, "127.0.0.1:%d" % ms[1].port}
    finally:
        g.stop()
    (d / "ips.txt").write_text("127.0.0.1:%d\nftp://bad\n" % ms[0].port)
    out = subprocess.run([INFERGATE_BIN, "-t", "-c", str(d)], capture_output=True, text=True)
    assert out.returncode == 1 and "ips.txt:2:" in out.stdout + out.stderr, out.stdout


def test_bare_ip_port_names_go_through_hosts_template(mocks, gateway):
    """{"hosts": ["10.0.0.5:4000"]} as an Infernet operator writes it, with
    hosts_template "http://{name}": -t accepts it and requests reach the
    nodes; with the default template -t says why it cannot be."""
    import subprocess
    from conftest import INFERGATE_BIN
    ms = mocks(2)
    names = ["127.0.0.1:%d" % m.port for m in ms]
    g = gateway(names, policies="routing:\n  hosts_template: \"http://{name}\"\n")
    out = subprocess.run([INFERGATE_BIN, "-t", "-c", g.conf_dir], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert {g.chat()[1]["x-upstream-host"] for _ in range(4)} == set(names)
    assert sorted(h["url"] for h in status_doc(g)["hosts"]) == sorted(m.url for m in ms)
    with open(os.path.join(g.conf_dir, "policies.yaml"), "w") as f:
        f.write("health_check:\n  enabled: false\n")
    out = subprocess.run([INFERGATE_BIN, "-t", "-c", g.conf_dir], capture_output=True, text=True)
    assert out.returncode == 1
    assert "hosts.json:3:5: hosts[0]: \"%s\" through routing.hosts_template gives" % names[0] \
        in out.stdout, out.stdout
