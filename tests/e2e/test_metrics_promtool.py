"""Metrics exposition (src/app/metrics.c) checked by Prometheus' own promtool.

A small driver (tests/metrics_driver/metrics_driver.c), compiled here with
gcc against src/app/metrics.c, fills a sample registry (escaping-hostile host
and model names, every family, an overflowing request-series table) and
prints the exposition; `promtool check metrics` (Debian's prometheus
package) must accept it, and the histograms must be well formed. A live
scrape of the gateway is tested separately.
"""
import os
import re
import shutil
import subprocess

import pytest

from conftest import ROOT, SANITIZED, SRC_IQUOTE, proc_env, src_path
from conftest import build_driver

DRIVER_SRC = [os.path.join(ROOT, "tests", "metrics_driver", "metrics_driver.c"),
              src_path("metrics.c")]
FLAGS = ["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror"]
REL_FLAGS = ["-O2", "-g"]
ASAN_FLAGS = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer",
              "-fno-sanitize-recover=undefined"]
PROMTOOL = shutil.which("promtool")
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$')


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("metrics_driver") / "metrics_driver")
    pkg = subprocess.run(["pkg-config", "--cflags", "--libs", "libevent"],
                         capture_output=True, text=True, check=True).stdout.split()
    cmd = (["gcc"] + FLAGS + (ASAN_FLAGS if SANITIZED else REL_FLAGS)
           + SRC_IQUOTE + DRIVER_SRC + pkg + ["-lm", "-o", out])
    r = build_driver(cmd, out)   # once per make test (conftest)
    assert r.returncode == 0, r.stderr
    return out


def render(driver, *args):
    r = subprocess.run([driver, *args], capture_output=True, env=proc_env(), timeout=30)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r.stdout


def promtool(text):
    assert PROMTOOL, "promtool not found: apt-get install prometheus (scripts/deps.sh)"
    return subprocess.run([PROMTOOL, "check", "metrics"], input=text,
                          capture_output=True, timeout=30)


def families(text):
    """{name: {"type": t, "help": h, "samples": [(name, labels, value)]}}; asserts
    each family has exactly one HELP and TYPE, before its samples, and that
    a family's samples are contiguous."""
    fams, current, done = {}, None, set()
    for line in text.decode().split("\n"):
        if not line:
            continue
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            kind, name, rest = line[2:6], *line[7:].split(" ", 1)
            f = fams.setdefault(name, {"type": None, "help": None, "samples": []})
            key = "help" if kind == "HELP" else "type"
            assert f[key] is None, "two %s lines for %s" % (kind, name)
            assert not f["samples"], "%s after samples of %s" % (kind, name)
            f[key] = rest
            if current and current != name:
                done.add(current)
            assert name not in done, "family %s is split" % name
            current = name
            continue
        m = SAMPLE.match(line)
        assert m, "bad sample line %r" % line
        base = m.group(1)
        for suffix in ("_bucket", "_sum", "_count"):
            if base.endswith(suffix) and base[:-len(suffix)] in fams \
                    and fams[base[:-len(suffix)]]["type"] == "histogram":
                base = base[:-len(suffix)]
        assert base == current, "sample %s outside its family (%s)" % (m.group(1), current)
        fams[base]["samples"].append((m.group(1), m.group(2) or "", m.group(3)))
    return fams


def check_histograms(fams):
    n = 0
    for name, f in fams.items():
        if f["type"] != "histogram":
            continue
        groups = {}
        for sname, labels, value in f["samples"]:
            key = re.sub(r',?le="[^"]*"', "", labels).replace("{}", "")
            groups.setdefault(key, []).append((sname, labels, value))
        for key, samples in groups.items():
            buckets = [(re.search(r'le="([^"]*)"', lab).group(1), int(v))
                       for s, lab, v in samples if s == name + "_bucket"]
            count = [int(v) for s, _, v in samples if s == name + "_count"]
            total = [float(v) for s, _, v in samples if s == name + "_sum"]
            assert len(count) == 1 and len(total) == 1, (name, key)
            assert buckets and buckets[-1][0] == "+Inf", (name, key)
            assert buckets[-1][1] == count[0], (name, key)
            values = [v for _, v in buckets]
            assert values == sorted(values), "%s%s buckets not cumulative" % (name, key)
            bounds = [float(le) for le, _ in buckets[:-1]]
            assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds)
            n += 1
    return n


EXPECTED = {
    "infergate_requests_total": "counter",
    "infergate_request_duration_seconds": "histogram",
    "infergate_request_ttfb_seconds": "histogram",
    "infergate_overhead_seconds": "histogram",
    "infergate_in_flight_requests": "gauge",
    "infergate_upstream_attempts_total": "counter",
    "infergate_upstream_ttfb_seconds": "histogram",
    "infergate_upstream_duration_seconds": "histogram",
    "infergate_upstream_in_flight_requests": "gauge",
    "infergate_stream_chunks_total": "counter",
    "infergate_tokens_total": "counter",
    "infergate_upstream_stalls_total": "counter",
    "infergate_breaker_state": "gauge",
    "infergate_host_health": "gauge",
    "infergate_retries_total": "counter",
    "infergate_retry_budget_exhausted_total": "counter",
    "infergate_panic_mode": "gauge",
    "infergate_panic_picks_total": "counter",
    "infergate_upstream_keys": "gauge",
    "infergate_config_reloads_total": "counter",
    "infergate_config_last_reload_successful": "gauge",
    "infergate_config_generation": "gauge",
    "infergate_redis_up": "gauge",
    "infergate_alerts_firing": "gauge",
    "infergate_alert_notifications_total": "counter",
    "infergate_tls_cert_expiry_timestamp_seconds": "gauge",
    "infergate_tls_handshake_failures_total": "counter",
    "infergate_start_time_seconds": "gauge",
}


def test_promtool_accepts_sample_registry(driver):
    text = render(driver)
    r = promtool(text)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()
    fams = families(text)
    assert {k: v["type"] for k, v in fams.items()} == EXPECTED
    assert check_histograms(fams) >= 8
    body = text.decode()
    # Escaped label values, UTF-8 kept, invalid UTF-8 folded into "other".
    assert 'host="back\\\\slash \\"quoted\\"\\nnewline"' in body
    assert 'model="model \\"with\\" quotes\\\\and\\nnewline"' in body
    assert 'host="h\u00f4te.example:8080",model="mod\u00e8le"' in body
    assert ('infergate_requests_total{route="chat_completions",code="200",'
            'host="gpu-a",model="other"} 1') in body
    assert ('infergate_requests_total{route="chat_completions",code="503",'
            'host="none",model="llama-3.1-8b-instruct"} 1') in body
    assert 'infergate_breaker_state{host="gpu-a"} 0' in body
    assert 'infergate_breaker_state{host="h\u00f4te.example:8080"} 2' in body
    assert 'infergate_config_reloads_total{result="failed"} 1' in body
    assert "infergate_start_time_seconds 1700000000.123" in body
    assert 'infergate_stream_chunks_total{host="gpu-a"} 42' in body
    # Tokens: kinds a call did not report add nothing; past 16 models, "other".
    tok = 'infergate_tokens_total{host="gpu-a",model="llama-3.1-8b-instruct",kind="%s"} %d'
    assert tok % ("input", 125) in body and tok % ("output", 31) in body
    assert tok % ("cached", 64) in body
    assert 'infergate_tokens_total{host="h\u00f4te.example:8080",model="other",kind="output"} 4' in body


def test_promtool_accepts_overflowing_series_table(driver):
    text = render(driver, "--overflow")
    r = promtool(text)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()
    fams = families(text)
    reqs = fams["infergate_requests_total"]["samples"]
    overflow = [s for s in reqs if 'route="other",code="other"' in s[1]]
    assert len(overflow) == 1 and int(overflow[0][2]) > 0
    models = {re.search(r'model="((?:[^"\\]|\\.)*)"', lab).group(1) for _, lab, _ in reqs}
    assert len(models - {"none", "other"}) <= 200


def test_promtool_rejects_broken_exposition(driver):
    """The check above can fail: a counter without _total and an unescaped
    quote are both refused."""
    text = render(driver)
    r = promtool(text.replace(b"infergate_retries_total", b"infergate_retries"))
    assert r.returncode != 0
    r = promtool(text.replace(b'\\"quoted\\"', b'"quoted"'))
    assert r.returncode != 0
