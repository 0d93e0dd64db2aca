"""Observability on the real gateway: status pages, /health, a live
/metrics scrape checked by promtool, access logs, alerts fired by real
traffic and delivered to receivers started here, admin and client auth,
and a mixed workload after which no configured secret appears anywhere
the gateway wrote or answered.
"""
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import INFERGATE_BIN, free_port, hosts_of, proc_env, wait_for, write_conf

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}
PROMTOOL = shutil.which("promtool")
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$')


def get_json(g, path, headers=None, want=200):
    st, _, body = g.request("GET", path, headers=headers)
    assert st == want, (path, st, body[:300])
    return json.loads(body)


def assert_openai_error(status, body, want_status):
    assert status == want_status, (status, body[:300])
    err = json.loads(body)["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    return err


# --- status pages and /health ------------------------------------------------

HOST_FIELDS = {"name": str, "url": str, "region": (str, type(None)), "priority": int,
               "weight": int, "health": str, "breaker": str, "in_flight": int,
               "latency_ms": (int, float), "requests": int, "failures": int, "models": list,
               "last_check": (str, type(None)), "consecutive_failures": int}
KEY_FIELDS = {"fingerprint": str, "description": str, "state": str,
              "until": (str, type(None)), "uses": int}


def check_status_shape(doc):
    for f, t in (("generation", int), ("last_reload", dict), ("uptime_seconds", int),
                 ("replicas", list), ("hosts", list), ("keys", list)):
        assert isinstance(doc.get(f), t), (f, doc.get(f))
    for h in doc["hosts"]:
        for f, t in HOST_FIELDS.items():
            assert f in h and isinstance(h[f], t), (f, h)
        assert h["health"] in ("healthy", "degraded", "unhealthy")
        assert h["breaker"] in ("closed", "open", "half-open")
    for k in doc["keys"]:
        for f, t in KEY_FIELDS.items():
            assert f in k and isinstance(k[f], t), (f, k)
        assert k["state"] in ("active", "cooling", "disabled")
    lr = doc["last_reload"]
    assert ISO.match(lr["time"]) and isinstance(lr["ok"], bool) and isinstance(lr["errors"], list)


def test_status_fields_and_aliases(mocks, gateway):
    ms = mocks(2)
    keys = [{"key": "sk-obs-good-key-0001", "description": "good", "isActive": True},
            {"key": "sk-obs-cool-key-0002", "description": "cooling", "isActive": True},
            {"key": "sk-obs-bad-key-00003", "description": "rejected", "isActive": True}]
    for m in ms:
        m.config(fail_keys={keys[1]["key"]: 429, keys[2]["key"]: 401}, retry_after=120)
    hosts = hosts_of(ms, m0={"region": "eu-west", "priority": 1, "weight": 3,
                             "models": ["mock-model"]},
                     m1={"region": "us-east", "priority": 1, "weight": 1})
    g = gateway(hosts, keys, policies=(
        "health_check:\n  enabled: true\n  interval: 300ms\n  timeout: 200ms\n"
        "retry:\n  max_attempts: 3\n  backoff: {initial: 1ms, max: 10ms}\n"
        "admin:\n  token: obs-admin-token\n  client_keys: [obs-client-1]\n"))
    ck = {"Authorization": "Bearer obs-client-1"}
    for _ in range(6):
        st, _, body = g.chat(headers=ck)
        assert st == 200, body
    wait_for(lambda: all(h["last_check"] for h in get_json(g, "/status")["hosts"]),
             timeout=5, what="probes")
    doc = get_json(g, "/status")
    check_status_shape(doc)
    assert doc["generation"] == 1 and doc["replicas"] == []
    assert doc["last_reload"]["ok"] is True and doc["last_reload"]["errors"] == []
    by = {h["name"]: h for h in doc["hosts"]}
    assert by["m0"]["url"] == ms[0].url and by["m0"]["region"] == "eu-west"
    assert by["m0"]["weight"] == 3 and by["m0"]["priority"] == 1
    assert by["m0"]["models"] == ["mock-model"] and by["m1"]["models"] == []
    assert all(ISO.match(h["last_check"]) for h in doc["hosts"])
    assert sum(h["requests"] for h in doc["hosts"]) >= 6
    assert all(h["in_flight"] == 0 and h["breaker"] == "closed" for h in doc["hosts"])
    k = {x["description"]: x for x in doc["keys"]}
    assert k["good"]["state"] == "active" and k["good"]["until"] is None
    assert k["good"]["uses"] >= 6
    assert k["cooling"]["state"] == "cooling" and ISO.match(k["cooling"]["until"])
    assert k["rejected"]["state"] == "disabled" and k["rejected"]["until"] is None
    assert k["good"]["fingerprint"].endswith("0001")
    assert doc["connections"]["open"] >= 1 and doc["connections"]["refused"] == 0

    # The aliases: same page, behind the client key and the admin token.
    st, _, body = g.request("GET", "/v1/providers/status")
    assert_openai_error(st, body, 401)
    alias = get_json(g, "/v1/providers/status", ck)
    check_status_shape(alias)
    assert set(alias) == set(doc)
    for bad in (None, {"Authorization": "Bearer wrong"}, {"Authorization": "obs-admin-token"},
                {"Authorization": "Bearer obs-client-1"}):
        st, _, body = g.request("GET", "/admin/providers", headers=bad)
        err = assert_openai_error(st, body, 401)
        assert err["code"] == "invalid_admin_token"
        assert b"obs-admin-token" not in body and b"obs-client-1" not in body
    admin = get_json(g, "/admin/providers", {"Authorization": "Bearer obs-admin-token"})
    check_status_shape(admin)
    assert set(admin) == set(doc)

    # Reloads: generation and last_reload follow, a bad file is reported.
    st, _, body = g.request("POST", "/admin/reload",
                            headers={"Authorization": "Bearer obs-admin-token"})
    assert st == 200 and json.loads(body)["generation"] == 2
    with open(os.path.join(g.conf_dir, "policies.yaml"), "a") as f:
        f.write("retry:\n  max_attemps: 3\n")
    st, _, body = g.request("POST", "/admin/reload",
                            headers={"Authorization": "Bearer obs-admin-token"})
    assert st == 422
    doc = get_json(g, "/status")
    assert doc["generation"] == 2 and doc["last_reload"]["ok"] is False
    assert any("policies.yaml:" in e for e in doc["last_reload"]["errors"])
    assert doc["uptime_seconds"] >= 0


def test_health_json(mocks, gateway):
    ms = mocks(2)
    # panic mode off: in it /health says "panic" with 200 (test_health.py)
    g = gateway(hosts_of(ms), policies=(
        "health_check:\n  enabled: true\n  interval: 200ms\n  timeout: 100ms\n"
        "  unhealthy_threshold: 1\n  healthy_threshold: 1\n  panic_threshold: 0\n"))
    st, h, body = g.request("GET", "/health")
    assert st == 200 and h["content-type"] == "application/json"
    doc = json.loads(body)
    assert doc["status"] == "healthy" and doc["hosts"] == {"total": 2, "usable": 2}
    assert doc["generation"] == 1 and doc["in_flight"] == 0
    ms[0].config(probe_status=500)
    wait_for(lambda: json.loads(g.request("GET", "/health")[2])["hosts"]["usable"] == 1,
             timeout=5, what="one host down")
    assert g.request("GET", "/health")[0] == 200
    ms[1].config(probe_status=500)
    wait_for(lambda: g.request("GET", "/health")[0] == 503, timeout=5, what="503")
    doc = json.loads(g.request("GET", "/health")[2])
    assert doc["status"] == "unhealthy" and doc["hosts"]["usable"] == 0
    for m in ms:
        m.config(probe_status=200)
    wait_for(lambda: g.request("GET", "/health")[0] == 200, timeout=5, what="back")


def in_netns_script(conf_dir, token):
    """Runs the gateway on 10.77.0.1 (a private network namespace: not a
    loopback address, yet reachable from nowhere) and asks for admin pages."""
    return r"""
set -e
ip link set lo up
ip addr add 10.77.0.1/32 dev lo
%(bin)s -c %(conf)s -l 10.77.0.1:18080 >%(conf)s/ns.log 2>&1 &
GW=$!
%(py)s - <<'EOF'
import http.client, json, socket, time
for _ in range(300):
    try:
        socket.create_connection(("10.77.0.1", 18080), timeout=0.2).close()
        break
    except OSError:
        time.sleep(0.05)
out = {}
for method, path, hdr in (("GET", "/admin/providers", {}), ("POST", "/admin/reload", {}),
                          ("GET", "/admin/providers", {"Authorization": "Bearer %(token)s"}),
                          ("GET", "/status", {})):
    c = http.client.HTTPConnection("10.77.0.1", 18080, timeout=10)
    c.request(method, path, headers=hdr)
    r = c.getresponse()
    out[method + " " + path + (" auth" if hdr else "")] = [r.status, json.loads(r.read())]
    c.close()
print(json.dumps(out))
EOF
kill -TERM $GW
wait $GW
""" % {"bin": INFERGATE_BIN, "conf": conf_dir, "py": sys.executable, "token": token}


def test_admin_without_token_loopback_only(mocks, gateway, tmp_path):
    ms = mocks(1)
    # No token, bound to 127.0.0.1 (the fixture's -l): admin pages are open.
    g = gateway(hosts_of(ms))
    assert get_json(g, "/admin/providers")["generation"] == 1
    st, _, body = g.request("POST", "/admin/reload")
    assert st == 200 and json.loads(body)["generation"] == 2
    # With a token, loopback or not, the token is needed.
    g2 = gateway(hosts_of(ms), policies="admin:\n  token: tok-123\n")
    st, _, body = g2.request("GET", "/admin/providers")
    assert_openai_error(st, body, 401)
    # No token on a non-loopback address: 403, status pages unaffected.
    if shutil.which("ip") is None or shutil.which("unshare") is None or \
            subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a network namespace here (unshare -n, ip)")
    for token in (None, "tok-ns"):
        d = str(tmp_path / ("ns-%s" % token))
        write_conf(d, [{"name": "x", "url": "http://127.0.0.1:9"}],
                   policies="admin:\n  token: %s\n" % token if token else "")
        r = subprocess.run(["unshare", "-n", "sh", "-c", in_netns_script(d, token or "none")],
                           capture_output=True, text=True, timeout=60, env=proc_env())
        log = open(os.path.join(d, "ns.log")).read()
        assert r.returncode == 0, r.stderr + log
        assert "Sanitizer" not in log and "runtime error" not in log, log
        out = json.loads(r.stdout)
        if token is None:
            for k in ("GET /admin/providers", "POST /admin/reload", "GET /admin/providers auth"):
                st, doc = out[k]
                assert st == 403 and doc["error"]["code"] == "admin_disabled", (k, out[k])
        else:
            assert out["GET /admin/providers"][0] == 401
            assert out["POST /admin/reload"][0] == 401
            assert out["GET /admin/providers auth"][0] == 200
        assert out["GET /status"][0] == 200


def test_client_keys_and_upstream_keys(mocks, gateway):
    ms = mocks(1)
    up = [{"key": "sk-upstream-aaaa-1111", "description": "a"},
          {"key": "shared-secret-9999", "description": "also listed as a client key"}]
    g = gateway(hosts_of(ms), up, policies=(
        'admin:\n  client_keys: ["client-key-1", "shared-secret-9999"]\n'))
    for hdr in (None, {"Authorization": "Bearer"}, {"Authorization": "Bearer nope"},
                {"Authorization": "client-key-1"}, {"Authorization": "Bearer sk-upstream-aaaa-1111"},
                {"Authorization": "Bearer shared-secret-9999"}):
        for path, method, body in (("/v1/chat/completions", "POST", CHAT),
                                   ("/v1/models", "GET", None),
                                   ("/v1/providers/status", "GET", None)):
            st, _, resp = g.request(method, path, body, hdr)
            err = assert_openai_error(st, resp, 401)
            assert err["code"] == "invalid_api_key" and err["type"] == "authentication_error"
            for k in up:
                assert k["key"].encode() not in resp
    assert ms[0].stats()["requests"] == 0
    st, _, body = g.chat(headers={"Authorization": "Bearer client-key-1"})
    assert st == 200, body
    last = ms[0].stats()["last_headers"]
    assert last["authorization"] in ("Bearer sk-upstream-aaaa-1111", "Bearer shared-secret-9999")
    # The overlap is reported once (per configuration), by fingerprint only.
    for _ in range(3):
        g.chat(headers={"Authorization": "Bearer shared-secret-9999"})
    out = g.stop()
    assert out.count("is also the upstream API key") == 1, out
    assert out.count("presented the upstream API key") == 1, out
    for k in up:
        assert k["key"] not in out
    assert "client-key-1" not in out


# --- /metrics --------------------------------------------------------------

def families(text):
    fams = {}
    for line in text.split("\n"):
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            fams[name] = {"type": kind, "samples": []}
        elif line and not line.startswith("#"):
            m = SAMPLE.match(line)
            assert m, line
            name = m.group(1)
            base = next((f for f in (name, re.sub(r"_(bucket|sum|count)$", "", name))
                         if f in fams), None)
            assert base, "sample %s without a family" % name
            fams[base]["samples"].append((name, m.group(2) or "", float(m.group(3))))
    return fams


def value(fams, family, **labels):
    total = 0.0
    for name, lab, v in fams[family]["samples"]:
        if name != family:
            continue
        if all('%s="%s"' % (k, val) in lab for k, val in labels.items()):
            total += v
    return total


def test_metrics_live_scrape(mocks, gateway):
    assert PROMTOOL, "promtool not found: apt-get install prometheus (scripts/deps.sh)"
    ms = mocks(2)
    keys = [{"key": "sk-metrics-key-0001", "description": "one"},
            {"key": "sk-metrics-key-0002", "description": "two"}]
    ms[1].config(fail_keys={keys[1]["key"]: 429}, retry_after=60)
    g = gateway(hosts_of(ms), keys, policies=(
        "retry:\n  max_attempts: 3\n  backoff: {initial: 1ms, max: 10ms}\n"
        "admin:\n  token: m-tok\n  client_keys: [mc-1]\n"))
    ck = {"Authorization": "Bearer mc-1"}
    for _ in range(6):
        assert g.chat(headers=ck)[0] == 200
    for _ in range(3):
        st, _, body = g.chat(stream=True, headers=ck)
        assert st == 200 and b"[DONE]" in body
    assert g.request("POST", "/v1/embeddings", {"model": "mock-model", "input": "x"}, ck)[0] == 200
    assert g.chat()[0] == 401
    ms[0].config(status=500)
    ms[1].config(status=500)
    assert g.chat(headers=ck)[0] == 502
    ms[0].config(status=200)
    ms[1].config(status=200)
    assert g.request("POST", "/admin/reload", headers={"Authorization": "Bearer m-tok"})[0] == 200
    with open(os.path.join(g.conf_dir, "hosts.json"), "w") as f:
        f.write("{broken")
    assert g.request("POST", "/admin/reload", headers={"Authorization": "Bearer m-tok"})[0] == 422

    st, h, body = g.request("GET", "/metrics")
    assert st == 200 and h["content-type"].startswith("text/plain")
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()
    # It can fail: a counter without _total is refused.
    bad = subprocess.run([PROMTOOL, "check", "metrics"], capture_output=True, timeout=30,
                         input=body.replace(b"infergate_retries_total", b"infergate_retries"))
    assert bad.returncode != 0
    text = body.decode()
    fams = families(text)
    want = {"infergate_requests_total": "counter", "infergate_upstream_attempts_total": "counter",
            "infergate_retries_total": "counter", "infergate_breaker_state": "gauge",
            "infergate_upstream_keys": "gauge", "infergate_in_flight_requests": "gauge",
            "infergate_upstream_in_flight_requests": "gauge",
            "infergate_request_ttfb_seconds": "histogram",
            "infergate_request_duration_seconds": "histogram",
            "infergate_upstream_ttfb_seconds": "histogram",
            "infergate_upstream_duration_seconds": "histogram",
            "infergate_stream_chunks_total": "counter", "infergate_config_reloads_total": "counter",
            "infergate_config_generation": "gauge", "infergate_overhead_seconds": "histogram",
            "infergate_alerts_firing": "gauge"}
    for name, kind in want.items():
        assert name in fams and fams[name]["type"] == kind, name
    assert value(fams, "infergate_requests_total", route="chat_completions", code="200",
                 model="mock-model") >= 9
    assert value(fams, "infergate_requests_total", route="embeddings", code="200") == 1
    assert value(fams, "infergate_requests_total", route="chat_completions", code="401") == 1
    assert value(fams, "infergate_requests_total", route="chat_completions", code="502") == 1
    assert value(fams, "infergate_upstream_attempts_total", host="m1", outcome="rate_limited") >= 1
    assert value(fams, "infergate_upstream_attempts_total", outcome="server_error") >= 2
    assert value(fams, "infergate_upstream_attempts_total", outcome="success") >= 10
    assert value(fams, "infergate_retries_total") >= 1
    assert 'infergate_breaker_state{host="m0"}' in text and 'infergate_breaker_state{host="m1"}' in text
    assert value(fams, "infergate_upstream_keys", state="active") == 1
    assert value(fams, "infergate_upstream_keys", state="cooling") == 1
    assert value(fams, "infergate_stream_chunks_total") >= 3
    assert value(fams, "infergate_config_reloads_total", result="ok") == 1
    assert value(fams, "infergate_config_reloads_total", result="failed") == 1
    assert value(fams, "infergate_config_generation") == 2
    assert value(fams, "infergate_in_flight_requests") == 0
    counts = [v for n, lab, v in fams["infergate_overhead_seconds"]["samples"]
              if n == "infergate_overhead_seconds_count"]
    assert counts and counts[0] >= 11
    ttfb = [v for n, lab, v in fams["infergate_request_ttfb_seconds"]["samples"]
            if n.endswith("_count") and 'route="chat_completions"' in lab]
    assert ttfb and ttfb[0] >= 9
    for k in keys:
        assert k["key"] not in text


# --- access log --------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["text", "json"])
def test_access_log_lines(mocks, gateway, tmp_path, fmt):
    ms = mocks(1)
    keys = [{"key": "sk-access-key-0001", "description": "one"}]
    access = str(tmp_path / "access.log")
    g = gateway(hosts_of(ms), keys, policies=(
        "server:\n  access_log:\n    file: %s\n    format: %s\n"
        "admin:\n  client_keys: [acc-client]\n" % (access, fmt)))
    ck = {"Authorization": "Bearer acc-client"}
    st, h, _ = g.chat(headers=dict(ck, **{"X-Request-Id": "obs-req-1"}))
    assert st == 200 and h["x-request-id"] == "obs-req-1"
    st, _, _ = g.chat(stream=True, headers=dict(ck, **{"X-Request-Id": "obs-req-2"}))
    assert st == 200
    st, _, _ = g.chat(headers={"X-Request-Id": "obs-req-3"})
    assert st == 401
    st, _, _ = g.request("GET", "/nowhere", headers={"X-Request-Id": "obs-req-4"})
    assert st == 404
    g.request("GET", "/status")
    g.request("GET", "/metrics")
    out = g.stop()
    lines = open(access).read().splitlines()
    assert len(lines) == 4, lines            # status pages and scrapes are not logged
    if fmt == "json":
        recs = [json.loads(l) for l in lines]
        by = {r["request_id"]: r for r in recs}
        r1 = by["obs-req-1"]
        assert r1["route"] == "chat_completions" and r1["path"] == "/v1/chat/completions"
        assert r1["method"] == "POST" and r1["model"] == "mock-model" and r1["host"] == "m0"
        assert r1["status"] == 200 and r1["attempts"] == 1 and r1["stream"] is False
        assert r1["total_ms"] >= r1["ttfb_ms"] >= 0 and r1["bytes"] > 0
        assert r1["key"].endswith("0001") and ISO.match(r1["time"][:19] + "Z")
        assert by["obs-req-2"]["status"] == 200
        assert by["obs-req-3"]["status"] == 401 and by["obs-req-3"]["attempts"] == 0
        assert by["obs-req-4"]["status"] == 404 and by["obs-req-4"]["route"] == "other"
    else:
        line = [l for l in lines if " obs-req-1 " in l][0]
        assert '"POST /v1/chat/completions" 200 ' in line
        for part in ("model=mock-model", "host=m0", "attempts=1", "stream=0", "ttfb_ms=",
                     "total_ms=", "key=sk-"):
            assert part in line, line
        assert re.search(r" ttfb_ms=\d+\.\d total_ms=\d+\.\d ", line)
        assert [l for l in lines if " obs-req-3 " in l and '" 401 ' in l]
        assert [l for l in lines if " obs-req-4 " in l and '" 404 ' in l]
    for blob in lines + [out]:
        assert "sk-access-key-0001" not in blob and "acc-client" not in blob


def test_access_log_marks_streams(mocks, gateway, tmp_path):
    ms = mocks(1)
    access = str(tmp_path / "access.log")
    g = gateway(hosts_of(ms), policies="server:\n  access_log: {file: %s, format: json}\n" % access)
    assert g.chat(stream=True)[0] == 200
    g.stop()
    assert json.loads(open(access).read())["stream"] is True


# Log forging (CWE-117): values a client chose, each with what would forge
# or garble a line if it reached the file raw.
HOSTILE_MODELS = {
    "newline": "x\n2099-01-01T00:00:00Z FAKE LINE host=m key=sk-x attempts=1",
    "cr": "x\r2099-01-01T00:00:00Z FAKE LINE",
    "tab": "x\tFAKE\ttab",
    "esc": "x\x1b[31mRED\x1b[0m\x1b]0;title\x07",
    "quote": 'x" 200 model=fake host=evil "',
    "backslash": "x\\x0aFAKE",
    "del-and-c1": "x\x7f\u0085\u2028y",
    "long": "L" * 20000,
}
TS_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")
TS_JSON = re.compile(r'^\{"time": ?"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"')


def _multipart_model(model_bytes):
    b = b"----forge"
    body = (b"--" + b + b'\r\nContent-Disposition: form-data; name="model"\r\n\r\n' + model_bytes
            + b"\r\n--" + b + b'\r\nContent-Disposition: form-data; name="file"; filename="a.wav"'
            b"\r\nContent-Type: application/octet-stream\r\n\r\nRIFF\r\n--" + b + b"--\r\n")
    return body, "multipart/form-data; boundary=" + b.decode()


def _assert_clean_lines(data, fmt, what):
    """Every line starts with a timestamp, holds no raw control byte and is
    valid UTF-8; JSON lines parse. Returns the lines."""
    assert data.endswith(b"\n"), what
    lines = data[:-1].split(b"\n")
    for raw in lines:
        line = raw.decode("utf-8")                     # raises on invalid UTF-8
        assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", line), (what, line[:300])
        if fmt == "json":
            assert TS_JSON.match(line), (what, line[:300])
            assert isinstance(json.loads(line), dict)
        else:
            assert TS_LINE.match(line), (what, line[:300])
    return [l.decode() for l in lines]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_client_values_cannot_forge_log_lines(mocks, gateway, tmp_path, fmt):
    ms = mocks(1, "--status", "500")
    access, elog = str(tmp_path / "access.log"), str(tmp_path / "error.log")
    # a host serving several models has a breaker per model, whose opening
    # the error log tells with the model's name
    g = gateway(hosts_of(ms, m0={"models": list(HOSTILE_MODELS.values())}), policies=(
        "server:\n  access_log: {file: %s, format: %s}\n  log: {file: %s, format: %s}\n"
        "retry:\n  max_attempts: 1\n"
        "health_check:\n  enabled: false\n  passive: false\n"
        "circuit_breaker:\n  enabled: true\n  failure_threshold: 1\n  reset_timeout: 1ms\n"
        % (access, fmt, elog, fmt)))
    sent = 0
    for name, model in HOSTILE_MODELS.items():
        st, _, _b = g.chat(model=model, headers={"X-Request-Id": b'id "FAKE" \xc3\xa9-' + name.encode()})
        assert st in (502, 503), (name, _b)
        sent += 1
    # a form's model is not JSON: raw control bytes and invalid UTF-8
    for raw in (b"w\xff\xfe\n2099-01-01T00:00:00Z FAKE FORM", b"w\x1b[1m\r\tx\xc3"):
        body, ctype = _multipart_model(raw)
        g.request("POST", "/v1/audio/transcriptions", body, {"Content-Type": ctype})
        sent += 1
    g.request("GET", "/v1/" + "P" * 5000)                  # a very long path: 404
    sent += 1
    g.stop()

    lines = _assert_clean_lines(open(access, "rb").read(), fmt, "access log")
    assert len(lines) == sent, lines                        # one line per request
    assert all(len(l) < 4000 for l in lines), max(len(l) for l in lines)
    elines = _assert_clean_lines(open(elog, "rb").read(), fmt, "error log")
    forged = [l for l in lines + elines if l.startswith("2099")]
    assert not forged
    if fmt == "json":
        recs = [json.loads(l) for l in lines]
        models = [r.get("model") for r in recs]
        for name, model in HOSTILE_MODELS.items():
            if name == "long":
                assert "L" * 256 + "..." in models, [m[:20] for m in models if m]
            else:
                assert model in models, (name, models)     # the value itself, JSON-escaped
        msgs = [json.loads(l)["msg"] for l in elines]
        assert any(HOSTILE_MODELS["newline"] in m for m in msgs), msgs
        assert any("w\\xff\\xfe\n2099" in (r.get("model") or "") for r in recs), models
    else:
        text = "\n".join(lines)
        assert "model=x\\x0a2099-01-01T00:00:00Z\\x20FAKE\\x20LINE\\x20host=m" in text, text
        assert "model=x\\x22\\x20200\\x20model=fake" in text
        assert "model=x\\x5cx0aFAKE " in text
        assert "model=x\\x1b[31mRED" in text
        assert "model=x\\x7f\\xc2\\x85\\xe2\\x80\\xa8y " in text
        assert "model=" + "L" * 256 + "... " in text
        assert "model=w\\xff\\xfe\\x0a2099" in text, text
        assert " host=m key=sk-x" not in text.replace("\\x20host=m\\x20key=sk-x", "")
        etext = "\n".join(elines)
        assert "breaker for model x\\x0a2099-01-01T00:00:00Z FAKE LINE" in etext, etext


# --- alerts from real traffic ---------------------------------------------------

class Receiver:
    """HTTP receiver recording every POST."""

    def __init__(self):
        self.posts = []
        recv = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                recv.posts.append({"path": self.path, "body": body, "at": time.monotonic(),
                                   "ctype": self.headers.get("Content-Type")})
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def on(self, path):
        return [p for p in self.posts if p["path"] == path]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


class Traffic:
    """Chats in a background thread until stopped."""

    def __init__(self, g, headers=None, pause=0.02):
        self.g, self.headers, self.pause = g, headers, pause
        self.statuses = []
        self.stopping = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stopping:
            self.statuses.append(self.g.chat(headers=self.headers)[0])
            time.sleep(self.pause)

    def stop(self):
        self.stopping = True
        self.t.join(30)


def events_by_scope(docs):
    out = {}
    for d in docs:
        out.setdefault((d["alert"], d["scope"], d["host"]), []).append(d["state"])
    return out


def test_alert_fires_once_and_resolves_once_from_real_traffic(mocks, gateway, receiver, tmp_path):
    ms = mocks(1)
    script = tmp_path / "notify.sh"
    log = tmp_path / "command.log"
    script.write_text('#!/bin/sh\n{ cat; echo; } >> "$1"\n'
                      'echo "$INFERGATE_ALERT $INFERGATE_ALERT_STATE $INFERGATE_ALERT_SCOPE" >> "$1.env"\n')
    script.chmod(0o755)
    slack_path = "/services/T0/B0/SlackSecretToken123"
    g = gateway(hosts_of(ms), policies=(
        "retry:\n  max_attempts: 1\n"
        "health_check:\n  enabled: false\n  passive: false\n"
        "circuit_breaker:\n  enabled: false\n"
        "alerts:\n  window: 2s\n  for: 1s\n  thresholds:\n    error_rate: 0.5\n"
        "  notifications:\n"
        "    - {type: webhook, url: \"%s/hook\"}\n"
        "    - {type: webhook, format: slack, url: \"%s%s\"}\n"
        "    - {type: command, command: [\"%s\", \"%s\"]}\n"
        % (receiver.url, receiver.url, slack_path, script, log)))
    traffic = Traffic(g)
    try:
        time.sleep(1.0)                                 # healthy for a while
        assert receiver.posts == []
        ms[0].config(status=500)
        t_bad = time.monotonic()
        wait_for(lambda: len(receiver.on("/hook")) >= 2, timeout=10, what="firing")
        fired = [json.loads(p["body"]) for p in receiver.on("/hook")]
        assert {(d["state"], d["scope"], d["host"]) for d in fired} == {
            ("firing", "global", None), ("firing", "host", "m0")}
        # `for: 1s`: not before the condition held a second.
        assert min(p["at"] for p in receiver.on("/hook")) - t_bad >= 0.9
        st = get_json(g, "/status")
        assert {a["alert"] for a in st["alerts"]} == {"error_rate"}
        time.sleep(2.0)                                 # still failing: no repeat
        assert len(receiver.on("/hook")) == 2
        ms[0].config(status=200)
        wait_for(lambda: len(receiver.on("/hook")) >= 4, timeout=15, what="resolved")
        time.sleep(2.5)                                 # healthy: nothing more
    finally:
        traffic.stop()
    assert 502 in traffic.statuses and traffic.statuses[-1] == 200
    docs = [json.loads(p["body"]) for p in receiver.on("/hook")]
    assert events_by_scope(docs) == {("error_rate", "global", None): ["firing", "resolved"],
                                     ("error_rate", "host", "m0"): ["firing", "resolved"]}
    for d in docs:
        assert d["threshold"] == 0.5 and d["unit"] == "ratio" and d["window_seconds"] == 2
        assert d["source"] == "infergate" and d["summary"].startswith("[%s]" % d["state"].upper())
    assert all(p["ctype"] == "application/json" for p in receiver.posts)
    slack = [json.loads(p["body"]) for p in receiver.on(slack_path)]
    assert len(slack) == 4
    assert sorted(s["attachments"][0]["color"] for s in slack) == ["danger", "danger", "good", "good"]
    assert sum(s["text"].startswith("[FIRING] error_rate") for s in slack) == 2
    wait_for(lambda: log.exists() and len(open(str(log) + ".env").read().splitlines()) == 4,
             timeout=10, what="command runs")
    cmd = [json.loads(l) for l in log.read_text().splitlines() if l.strip()]
    assert events_by_scope(cmd) == events_by_scope(docs)
    env = sorted(open(str(log) + ".env").read().splitlines())
    assert env == ["error_rate firing global", "error_rate firing host",
                   "error_rate resolved global", "error_rate resolved host"]
    st = get_json(g, "/status")
    assert st["alerts"] == []
    st, _, metrics = g.request("GET", "/metrics")
    fams = families(metrics.decode())
    assert value(fams, "infergate_alerts_firing", alert="error_rate") == 0
    assert value(fams, "infergate_alert_notifications_total", channel="webhook", result="sent") == 4
    assert value(fams, "infergate_alert_notifications_total", channel="slack", result="sent") == 4
    assert value(fams, "infergate_alert_notifications_total", channel="command", result="sent") == 4
    out = g.stop()
    assert "SlackSecretToken123" not in out and "/services/" not in out


# --- no secret anywhere -------------------------------------------------------

def configured_secrets(conf_dir):
    """Upstream keys, client keys, admin token and SMTP passwords of one
    configuration directory (strings too short to search for, or taken
    from the environment, are left out)."""
    out = set()
    try:
        with open(os.path.join(conf_dir, "api-keys.json")) as f:
            for k in json.load(f).get("apiKeys", []):
                if isinstance(k, dict) and isinstance(k.get("key"), str):
                    out.add(k["key"])
    except (OSError, ValueError, AttributeError):
        pass
    try:
        import yaml
        with open(os.path.join(conf_dir, "policies.yaml")) as f:
            doc = yaml.safe_load(f) or {}
        admin = doc.get("admin") or {}
        out.add(admin.get("token"))
        out.update(admin.get("client_keys") or [])
        for n in (doc.get("alerts") or {}).get("notifications") or []:
            out.add(n.get("password"))
    except Exception:
        pass
    return {s for s in out if isinstance(s, str) and len(s) >= 8 and "${" not in s}


def logs_holding_any(secrets, logs, tmpdir):
    """The logs that hold at least one of the secrets: one pass of
    `grep -F -l` (Aho-Corasick over all of them) instead of one search per
    secret and log, which took a minute with test_reload's 40,000 keys.
    Secrets grep cannot take as a pattern (a newline in them), or no
    grep: every log."""
    plain = sorted(s for s in secrets if "\n" not in s and "\r" not in s)
    if len(plain) < len(secrets) or not logs or shutil.which("grep") is None:
        return logs
    pats = os.path.join(tmpdir, "whole_run.patterns")
    with open(pats, "wb") as f:
        f.write(b"".join(s.encode() + b"\n" for s in plain))
    found = []
    for i in range(0, len(logs), 200):
        r = subprocess.run(["grep", "-F", "-l", "-a", "-f", pats, "--", *logs[i:i + 200]],
                           capture_output=True, env=dict(os.environ, LC_ALL="C"))
        if r.returncode not in (0, 1):          # grep failed: search them all
            return logs
        found += r.stdout.decode(errors="surrogateescape").splitlines()
    os.unlink(pats)
    found = set(found)
    return [p for p in logs if p in found]


@pytest.fixture(scope="session")
def whole_run(tmp_path_factory):
    """At the end of the session: every file a gateway of this e2e run
    wrote (logs, access logs) is searched for every secret any of its
    configurations held."""
    yield
    base = str(tmp_path_factory.getbasetemp())
    secrets = set()
    for conf in glob.glob(os.path.join(base, "**", "hosts.json"), recursive=True):
        secrets |= configured_secrets(os.path.dirname(conf))
    logs = [p for p in glob.glob(os.path.join(base, "**", "*.log"), recursive=True)
            if os.path.isfile(p)]
    hits = []
    for p in logs_holding_any(secrets, logs, base):
        with open(p, "rb") as f:
            data = f.read()
        hits += ["%s in %s" % (s, p) for s in secrets if s.encode() in data]
    assert not hits, hits[:20]
    assert secrets and logs



def test_no_configured_secret_leaks_anywhere(mocks, gateway, receiver, tmp_path, whole_run):
    """A mixed workload (chats, streams, 401/429 from upstreams, client auth
    failures, reloads, errors, alerts with failing channels), then every
    log line, status page, metric, answer header and body is searched for
    every secret of the configuration: upstream keys (whole and without a
    prefix), client keys, the admin token, the SMTP password, the Slack
    webhook token. (The `whole_run` fixture then searches every log of the
    e2e session for every secret of every configuration it used.)"""
    ms = mocks(2)
    upstream = ["sk-leak-upstream-key-aaaa1111", "sk-leak-upstream-key-bbbb2222",
                "sk-leak-upstream-key-cccc3333", "gaia-leak-key-dddd4444"]
    client = ["leak-client-key-eeee5555", "leak-client-key-ffff6666"]
    token, smtp_pw, slack_tok = "leak-admin-token-gggg7777", "leak-smtp-pass-hhhh8888", "LeakSlackTok9999"
    keys = [{"key": k, "description": "key %d" % i, "isActive": True} for i, k in enumerate(upstream)]
    for m in ms:
        m.config(fail_keys={upstream[1]: 401, upstream[2]: 429}, retry_after=30)
    access, elog = str(tmp_path / "access.log"), str(tmp_path / "error.log")
    closed = free_port()
    policies = (
        "server:\n  access_log: {file: %s, format: json}\n"
        "  log: {file: %s, level: debug, format: json}\n"
        "retry:\n  max_attempts: 3\n  backoff: {initial: 1ms, max: 10ms}\n"
        "circuit_breaker:\n  enabled: false\n"
        "alerts:\n  window: 2s\n  for: 0s\n  thresholds: {error_rate: 0.3}\n"
        "  notifications:\n"
        "    - {type: slack, url: \"%s/services/T/B/%s\"}\n"
        "    - {type: email, smtp_url: \"smtp://127.0.0.1:%d\", from: a@example.org,"
        " to: [b@example.org], username: u, password: \"%s\", timeout: 200ms}\n"
        "admin:\n  token: %s\n  client_keys: [%s, %s]\n"
        % (access, elog, receiver.url, slack_tok, closed, smtp_pw, token, client[0], client[1]))
    g = gateway(hosts_of(ms), keys, policies=policies)
    answers = []

    def call(method, path, body=None, headers=None):
        st, h, b = g.request(method, path, body, headers)
        answers.append("%d %s\n%s" % (st, json.dumps(h), b.decode("utf-8", "replace")))
        return st, b

    ck = {"Authorization": "Bearer " + client[0]}
    adm = {"Authorization": "Bearer " + token}
    for i in range(8):
        assert call("POST", "/v1/chat/completions", CHAT, ck)[0] == 200
        assert call("POST", "/v1/chat/completions", dict(CHAT, stream=True), ck)[0] == 200
    assert call("POST", "/v1/embeddings", {"model": "mock-model", "input": ["a", "b"]}, ck)[0] == 200
    for bad in [None, {"Authorization": "Bearer " + upstream[0]}, {"Authorization": upstream[3]},
                {"Authorization": "Bearer " + token}, {"Authorization": "Bearer x" + client[1]}]:
        assert call("POST", "/v1/chat/completions", CHAT, bad)[0] == 401
        if bad != {"Authorization": "Bearer " + token}:
            assert call("GET", "/admin/providers", None, bad)[0] == 401
    for m in ms:
        m.config(status=500)
    for _ in range(4):
        assert call("POST", "/v1/chat/completions", CHAT, ck)[0] == 502
    time.sleep(1.5)                   # alerts fire, slack delivered, email fails
    for m in ms:
        m.config(status=200)
    g.signal(signal.SIGHUP)
    assert call("POST", "/admin/reload", None, adm)[0] == 200
    with open(os.path.join(g.conf_dir, "api-keys.json"), "w") as f:
        f.write('{"apiKeys": [{"key": "%s", "isActive": "yes"}]}' % upstream[0])
    assert call("POST", "/admin/reload", None, adm)[0] == 422
    call("POST", "/v1/chat/completions", b'{"model": "mock-model", "messages": [', ck)
    call("GET", "/nowhere/" + "x", None, ck)
    for path in ("/status", "/v1/providers/status", "/health", "/metrics", "/v1/models"):
        call("GET", path, None, ck)
    call("GET", "/admin/providers", None, adm)
    wait_for(lambda: receiver.on("/services/T/B/" + slack_tok), timeout=10, what="slack alert")
    time.sleep(1.5)                   # email retries logged
    out = g.stop()
    blobs = {"gateway output": out, "access log": open(access).read(),
             "error log": open(elog).read(), "answers": "\n".join(answers)}
    assert blobs["access log"].count("\n") >= 30
    assert "email" in blobs["error log"]                 # the failing channel was logged
    secrets = upstream + [k[3:] for k in upstream if k.startswith("sk-")] + client + \
        [token, smtp_pw, slack_tok]
    hits = ["%s in %s" % (s, where) for s in secrets for where, blob in blobs.items() if s in blob]
    assert not hits, hits
    # The check can fail: the secrets are where they are supposed to be.
    assert upstream[0] in open(os.path.join(g.conf_dir, "api-keys.json")).read()


def test_seed_shapes_of_health_and_status(mocks, gateway):
    """Seed 001's /health loadBalancer block and seed 000's /status instances."""
    ms = mocks(2)
    g = gateway([{"name": "a", "url": ms[0].url, "address": "0xabc", "models": ["m1"]},
                 {"name": "b", "url": ms[1].url}])
    st, _, body = g.request("GET", "/health")
    lb = json.loads(body)["loadBalancer"]
    assert lb["totalProviders"] == 2 and lb["healthyProviders"] == 2
    assert {p["address"] for p in lb["providers"]} == {"0xabc", "b"}
    assert {p["endpoint"] for p in lb["providers"]} == {ms[0].url, ms[1].url}
    assert all(p["isHealthy"] is True and p["connections"] == 0 for p in lb["providers"])
    doc = json.loads(g.request("GET", "/status")[2])
    assert doc["totalInstances"] == 1 and doc["activeInstances"] == 1
    inst = doc["instances"][0]
    assert set(inst) == {"id", "healthy", "port", "uptime", "restartCount", "lastHealthCheck"}
    assert inst["port"] == g.port and inst["healthy"] is True
