"""GET /dashboard in a real browser (headless Chromium over the DevTools
protocol, see cdp.py) against a running gateway with mock upstreams.

The page asks for the admin token and keeps it in the tab; it lists the
hosts, shows a breaker open after faults, a failed reload's FILE:LINE:COL
error, a key's cooldown counting down and charts with data points; it fits a
phone-width screen and has a dark look; it makes no request outside the
gateway. On a loopback listener without a token it opens at once and shows an
alert firing; it lists the listeners with the TLS certificate's expiry; off
loopback without a token the page and its data answer 403. Screenshots go to build/ (docs/dashboard.png is one of them, copied
when INFERGATE_DOCS_SCREENSHOT=1).
"""
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from cdp import CHROMIUM, Browser
from conftest import INFERGATE_BIN, ROOT, free_port, hosts_of, proc_env, wait_for, write_conf

TOKEN = "dash-token-123"
AUTH = {"Authorization": "Bearer " + TOKEN}
OUT = os.path.join(ROOT, "build")

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="chromium is not installed (scripts/deps.sh)")


@pytest.fixture
def browser(tmp_path):
    b = Browser(str(tmp_path))
    yield b
    b.close()


def test_dashboard_in_a_browser(mocks, gateway, browser):
    ms = mocks(3)
    keys = [{"key": "sk-dash-cooling-key-0001", "description": "team A"},
            {"key": "sk-dash-other-key-000002", "description": "team B"}]
    policies = ("admin:\n  token: %s\nretry:\n  max_attempts: 4\n  backoff: {initial: 1ms}\n"
                "circuit_breaker:\n  failure_threshold: 2\n  reset_timeout: 60s\n" % TOKEN)
    g = gateway(hosts_of(ms), keys, policies=policies)
    origin = "http://127.0.0.1:%d" % g.port

    st, h, page = g.request("GET", "/dashboard")
    assert st == 200 and len(page) < 100 * 1024
    assert "default-src 'none'" in h["content-security-policy"]
    for _ in range(12):
        assert g.chat()[0] == 200
    # Steady traffic while the page is open, so the charts move.
    ms[1].config(delay_ms=15)
    ms[2].config(delay_ms=40)
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            try:
                g.chat()
            except OSError:
                pass
            stop.wait(0.03)
    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    try:
        run_page(g, ms, browser, origin)
    finally:
        stop.set()
        t.join(30)


def run_page(g, ms, browser, origin):

    # The page asks for the token (its data needs it), then shows the hosts.
    browser.goto(origin + "/dashboard")
    browser.wait("document.getElementById('auth').className === 'show'", what="token form")
    browser.js("document.getElementById('token').value = %r;"
               "document.getElementById('authform').requestSubmit(); true" % TOKEN)
    browser.wait("document.querySelectorAll('#hosts tr[data-host]').length === 3", what="host rows")
    names = browser.js("[...document.querySelectorAll('#hosts tr[data-host]')]"
                       ".map(r => r.dataset.host)")
    assert names == ["m0", "m1", "m2"]
    assert browser.js("sessionStorage.getItem('infergate.admin_token')") == TOKEN
    assert browser.js("localStorage.length") == 0
    browser.wait("document.getElementById('live').className === 'on'", what="live events")

    # Faults: m0 answers 500, its breaker opens; the page shows it at once.
    ms[0].config(status=500)
    wait_for(lambda: g.chat()[0] == 200 and ms[0].stats()["requests"] >= 2 and
             g.request("GET", "/admin/providers", headers=AUTH)[2].count(b'"breaker":"open"') >= 1,
             what="m0's breaker to open")
    browser.wait("document.querySelector('#hosts tr[data-host=m0] [data-breaker]')"
                 ".dataset.breaker === 'open'", what="m0's breaker shown open")
    browser.wait("!!document.querySelector('#events li[data-type=breaker_open]')",
                 what="the breaker_open event listed")

    # A key cools down: its countdown shows and runs.
    ms[1].config(fail_keys={"sk-dash-cooling-key-0001": 429}, retry_after=90)
    ms[2].config(fail_keys={"sk-dash-cooling-key-0001": 429}, retry_after=90)
    wait_for(lambda: g.chat()[0] == 200 and b'"state":"cooling"' in
             g.request("GET", "/admin/providers", headers=AUTH)[2], what="a key cooling")
    left = int(browser.wait("(document.querySelector('#keys [data-cooldown]:not([data-cooldown=\"\"])')"
                            " || {}).textContent", what="a cooldown shown").split()[0])
    assert 60 <= left <= 90
    browser.wait("parseInt(document.querySelector('#keys [data-cooldown]:not([data-cooldown=\"\"])')"
                 ".dataset.cooldown) < %d" % left, timeout=5, what="the countdown to run")
    keytext = browser.js("document.getElementById('keys').textContent")
    assert "team A" in keytext and "cooling" in keytext and "sk-dash-cooling" not in keytext

    # A failed reload: its FILE:LINE:COL error line is on the page.
    pol = os.path.join(g.conf_dir, "policies.yaml")
    good = open(pol).read()
    with open(pol, "w") as f:
        f.write(good + "retry_typo: 1\n")
    assert g.request("POST", "/admin/reload", headers=AUTH)[0] == 422
    with open(pol, "w") as f:
        f.write(good)
    line = browser.wait("(document.querySelector('#reloads [data-ok=false] .errline') || {})"
                        ".textContent", what="the failed reload's error")
    assert "policies.yaml:" in line and ":1: retry_typo: unknown key" in line, line

    # Charts: data points after traffic, for each of the four.
    for cid in ("c-rps", "c-err", "c-lat", "c-ttfb"):
        browser.wait("parseInt(document.getElementById('%s').dataset.points || 0) >= 1"
                     " && !!document.querySelector('#%s path')" % (cid, cid),
                     what="points in " + cid)
    assert browser.js("document.querySelector('#c-rps path').getAttribute('d')"
                      ".split(' ').filter(s => s.startsWith('L')).length") >= 1

    browser.wait("!document.getElementById('main').hidden")
    docs = os.environ.get("INFERGATE_DOCS_SCREENSHOT") == "1"
    if docs:
        # For the README: a minute of traffic whose latency moves.
        for delays in ((15, 40), (60, 120), (25, 30), (10, 80)):
            ms[1].config(delay_ms=delays[0])
            ms[2].config(delay_ms=delays[1])
            time.sleep(15)
    size = browser.screenshot(os.path.join(OUT, "dashboard.png"))
    assert size > 10000
    if docs:
        shutil.copyfile(os.path.join(OUT, "dashboard.png"), os.path.join(ROOT, "docs", "dashboard.png"))

    # A phone-width screen: nothing wider than the screen (tables scroll
    # inside their box); dark: a dark background.
    browser.viewport(390, 844, mobile=True, dark=True)
    wide = browser.js("[...document.querySelectorAll('body *')].filter(e => "
                      "e.getBoundingClientRect().right > 391 && !e.closest('.scroll'))"
                      ".map(e => e.tagName + '#' + e.id + '.' + e.className).slice(0, 8)")
    assert browser.js("document.documentElement.scrollWidth") <= 391, wide
    bg = browser.js("getComputedStyle(document.body).backgroundColor")
    rgb = [int(x) for x in bg[bg.index("(") + 1:bg.index(")")].split(",")[:3]]
    assert sum(rgb) < 150, bg
    browser.screenshot(os.path.join(OUT, "dashboard-phone-dark.png"))
    browser.viewport(1280, 900, dark=False)
    bg = browser.js("getComputedStyle(document.body).backgroundColor")
    assert sum(int(x) for x in bg[bg.index("(") + 1:bg.index(")")].split(",")[:3]) > 600, bg

    # Nothing but the gateway was asked for anything.
    assert browser.requests, "no request recorded"
    outside = [u for u in browser.requests if not (u.startswith(origin + "/") or u.startswith("data:"))]
    assert outside == [], outside
    assert any(u.startswith(origin + "/admin/events") for u in browser.requests)
    assert any(u.startswith(origin + "/admin/timeseries") for u in browser.requests)


def test_dashboard_on_loopback_without_token_shows_alerts(mocks, gateway, browser):
    ms = mocks(1)
    ms[0].config(status=500)
    # No token and a loopback listener: the page and its data are open.
    g = gateway(hosts_of(ms), policies=(
        "retry:\n  max_attempts: 1\ncircuit_breaker:\n  enabled: false\n"
        "alerts:\n  window: 2s\n  for: 0s\n  thresholds: {error_rate: 0.3}\n"))
    st, h, body = g.request("GET", "/dashboard")
    assert st == 200 and h["content-type"].startswith("text/html") and b"/admin/events" in body
    assert g.request("GET", "/admin/timeseries")[0] == 200
    st, h, body = g.request("HEAD", "/dashboard")          # a head, no body
    assert st == 200 and body == b""
    browser.goto("http://127.0.0.1:%d/dashboard" % g.port)
    browser.wait("document.querySelectorAll('#hosts tr[data-host]').length === 1", what="host row")
    assert browser.js("document.getElementById('auth').className") == ""   # no token asked
    browser.wait("document.getElementById('live').className === 'on'", what="live events")
    for _ in range(5):
        assert g.chat()[0] >= 500
    browser.wait("document.getElementById('alerts').textContent.includes('error_rate')",
                 what="the error_rate alert listed as firing")
    browser.wait("!!document.querySelector('#events li[data-type=alert_fired]')",
                 what="the alert_fired event listed")
    browser.wait("document.getElementById('c-err').dataset.points > 0 && "
                 "document.querySelector('#c-err [data-v]').textContent !== '0 %'",
                 what="errors in the error-rate chart")


NETNS_SCRIPT = r"""
set -e
ip link set lo up
ip addr add 10.77.0.2/32 dev lo
%(bin)s -c %(conf)s -l 10.77.0.2:18081 >%(conf)s/ns.log 2>&1 &
GW=$!
%(py)s - <<'EOF'
import http.client, json, socket, time
for _ in range(300):
    try:
        socket.create_connection(("10.77.0.2", 18081), timeout=0.2).close()
        break
    except OSError:
        time.sleep(0.05)
out = {}
for path in ("/dashboard", "/admin/events", "/admin/timeseries"):
    c = http.client.HTTPConnection("10.77.0.2", 18081, timeout=10)
    c.request("GET", path)
    r = c.getresponse()
    out[path] = [r.status, r.read(200).decode(errors="replace")]
    c.close()
print(json.dumps(out))
EOF
kill -TERM $GW
wait $GW
"""


def test_dashboard_off_a_loopback_without_token_is_403(tmp_path):
    """No admin.token and a non-loopback listener: the page and its data
    answer 403 admin_disabled (a private network namespace: 10.77.0.2 is
    not loopback, yet reachable from nowhere)."""
    if shutil.which("ip") is None or shutil.which("unshare") is None or \
            subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a network namespace here (unshare -n, ip)")
    d = str(tmp_path / "ns")
    write_conf(d, [{"name": "x", "url": "http://127.0.0.1:9"}])
    r = subprocess.run(["unshare", "-n", "sh", "-c", NETNS_SCRIPT % {
        "bin": INFERGATE_BIN, "conf": d, "py": sys.executable}],
        capture_output=True, text=True, timeout=60, env=proc_env())
    log = open(os.path.join(d, "ns.log")).read()
    assert r.returncode == 0, r.stderr + log
    assert "Sanitizer" not in log and "runtime error" not in log, log
    out = json.loads(r.stdout)
    for path, (st, body) in out.items():
        assert st == 403 and "admin_disabled" in body, (path, st, body)


def test_dashboard_lists_listeners_and_certificate_expiry(mocks, tmp_path, browser):
    from test_tls import ListGateway
    from tls_pki import Pki
    ms = mocks(1)
    cert, key, _ = Pki(tmp_path / "pki").issue(days=5)
    tport, pport = free_port(), free_port()
    d = str(tmp_path / "conf")
    write_conf(d, hosts_of(ms), policies=(
        "server:\n  listen:\n    - 127.0.0.1:%d\n    - {address: \"127.0.0.1:%d\", tls: false}\n"
        "  tls:\n    cert: %s\n    key: %s\n" % (tport, pport, cert, key)))
    g = ListGateway(d, tport)
    try:
        wait_for(lambda: "127.0.0.1:%d" % pport in g.output(), what="both listeners")
        browser.goto("http://127.0.0.1:%d/dashboard" % pport)
        browser.wait("document.querySelectorAll('#listeners tbody tr').length === 2",
                     what="two listener rows")
        rows = browser.js("[...document.querySelectorAll('#listeners tbody tr')]"
                          ".map(r => r.textContent)")
        tls = next(r for r in rows if "127.0.0.1:%d" % tport in r)
        assert "TLS" in tls and "CN=localhost" in tls and ("4 days" in tls or "5 days" in tls), rows
        assert browser.js("document.getElementById('listeners-s').hidden") is False
    finally:
        g.stop()
