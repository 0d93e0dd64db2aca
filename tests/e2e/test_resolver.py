"""Upstreams given by host name go through the own HTTP/1.1 client, their
names resolved without blocking by each loop's resolver (src/io/resolve.c,
evdns) and cached for the DNS TTL. Every test points server.resolver at a
mock DNS server on loopback (mock_dns.MockDNS): no real nameserver is ever
asked. curl would not use server.resolver, so a name answered only by the
mock shows that the own client and resolver did the work."""
import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest

from conftest import INFERGATE_BIN, SANITIZED, Mock, free_port, proc_env, wait_for, write_conf
from mock_dns import MockDNS
from test_tls import TLSMock
from tls_pki import Pki

WORKERS = int(os.environ.get("INFERGATE_TEST_WORKERS") or 1)
SLOW = 10 if SANITIZED else 1


@pytest.fixture
def dns():
    d = MockDNS()
    yield d
    d.stop()


def policies(dns, extra=""):
    return "server:\n  resolver: [\"%s\"]\n%s" % (dns.address, extra)


def reload_and_wait(g):
    """SIGHUP, then the generation the reload installed (2 for the first)."""
    def status():
        return json.loads(g.request("GET", "/status")[2])
    g.signal(signal.SIGHUP)
    wait_for(lambda: status()["generation"] > 1 or not status()["last_reload"]["ok"],
             timeout=10 * SLOW, what="reload")
    return status()["generation"]


def content(body):
    return json.loads(body)["choices"][0]["message"]["content"]


def error_message(body):
    return json.loads(body)["error"]["message"]


def test_name_host_resolved_by_the_configured_resolver_and_cached(mocks, gateway, dns):
    m = mocks(1)[0]
    dns.set("up.test", "127.0.0.1")
    g = gateway([{"name": "up", "url": "http://up.test:%d" % m.port}], policies=policies(dns))
    for i in range(30):
        st, h, body = g.chat(stream=(i % 3 == 0))
        assert st == 200, body
    assert dns.count("up.test", "A") >= 1
    # Cached for the TTL (60 s): one lookup (A + AAAA) per worker loop, not
    # one per request.
    assert dns.count("up.test", "A") <= WORKERS, dns.queries
    assert m.stats()["last_headers"]["host"] == "up.test:%d" % m.port
    g.stop()


def test_answer_change_moves_traffic_after_ttl(mocks, gateway, dns):
    m0 = mocks(1)[0]
    # The same port on 127.0.0.2: the name's address changes, not its port.
    m1 = Mock("m1", "--listen", "127.0.0.2:%d" % m0.port)
    try:
        dns.ttl = 1
        dns.set("move.test", "127.0.0.1")
        g = gateway([{"name": "mv", "url": "http://move.test:%d" % m0.port}],
                    policies=policies(dns))
        st, _, body = g.chat()
        assert st == 200 and content(body).startswith("Hello from m0"), body
        dns.set("move.test", "127.0.0.2")

        def moved():
            # Every loop (worker) has its own cache: all of them moved when
            # a run of requests lands on m1 only.
            for _ in range(8):
                st, _, body = g.chat()
                assert st == 200, body
                if not content(body).startswith("Hello from m1"):
                    return False
            return True
        wait_for(moved, timeout=15 * SLOW, interval=0.2, what="traffic on the new address")
        g.stop()
    finally:
        m1.stop()


def test_nxdomain_fails_clearly_and_the_next_host_serves(mocks, gateway, dns):
    m = mocks(1)[0]
    g = gateway([{"name": "nx", "url": "http://nowhere.test:%d" % m.port}],
                keys=[{"key": "sk-resolver-secret-0001"}],
                policies=policies(dns, "retry:\n  max_attempts: 1\n"))
    st, _, body = g.chat()
    assert st == 502, body
    msg = error_message(body)
    assert "nowhere.test" in msg and "NXDOMAIN" in msg, msg
    assert "sk-resolver-secret" not in body.decode()
    assert dns.count("nowhere.test", "A") >= 1
    g.stop()
    # With a second host the request is served there.
    dns.set("good.test", "127.0.0.1")
    g = gateway([{"name": "nx", "url": "http://nowhere.test:%d" % m.port, "priority": 0},
                 {"name": "ok", "url": "http://good.test:%d" % m.port, "priority": 1}],
                policies=policies(dns, "routing:\n  strategy: round-robin\n"))
    for _ in range(4):
        st, h, body = g.chat()
        assert st == 200, body
    out = g.stop()
    assert "sk-resolver-secret" not in out


def test_resolver_that_never_answers_fails_bounded_and_gateway_serves_on(mocks, gateway, dns):
    m = mocks(1)[0]
    dns.drop = True
    g = gateway([{"name": "dead", "url": "http://silent.test:%d" % m.port},
                 {"name": "ip", "url": m.url}],
                policies=policies(dns, "  resolver_timeout: 400ms\n"
                                  "routing:\n  strategy: round-robin\n"
                                  "retry:\n  max_attempts: 1\n"))
    t0 = time.monotonic()
    codes = []
    for _ in range(4):
        st, h, body = g.chat()
        codes.append(st)
        if st != 200:
            assert "silent.test" in error_message(body), body
    assert time.monotonic() - t0 < 20 * SLOW
    assert 200 in codes and 502 in codes, codes
    assert dns.count("silent.test", "A") >= 1
    # Still serving.
    st, _, body = g.request("GET", "/health")
    assert st == 200, body
    g.stop()


def named_tls_mock(tmp_path, san):
    pki = Pki(tmp_path / "named-pki", name="Named CA")
    m = TLSMock.__new__(TLSMock)
    m.pki = pki
    cert, key, _ = pki.issue(san=san)
    Mock.__init__(m, "t0", "--tls-cert", cert, "--tls-key", key)
    return m


def test_https_name_host_verified_against_its_name(gateway, dns, tmp_path):
    m = named_tls_mock(tmp_path, "DNS:secure.test,IP:127.0.0.1")
    try:
        dns.set("secure.test", "127.0.0.1")
        dns.set("wrong.test", "127.0.0.1")
        g = gateway([{"name": "sec", "url": "https://secure.test:%d" % m.port,
                      "tls": {"ca_file": m.pki.ca}}], policies=policies(dns))
        for stream in (False, True, False):
            st, _, body = g.chat(stream=stream)
            assert st == 200, body
        s = m.stats()
        assert s["tls_sni"].get("secure.test", 0) >= 1, s
        assert s["last_headers"]["host"] == "secure.test:%d" % m.port
        assert dns.count("secure.test", "A") >= 1
        # Bodies beyond the join limit (16 KB) on new connections (the
        # mock closes after each answer): the request waits for the name
        # and the handshake, head and body arrive whole.
        m.config(close_connection=True)
        for stream in (False, True):
            big = "n" * (40 << 10)
            st, _, body = g.chat(stream=stream, messages=[{"role": "user", "content": big}])
            assert st == 200, body[:300]
            assert len(m.stats()["last_body"]["messages"][0]["content"]) == len(big)
        g.stop()
        # A name the certificate does not carry: refused by the check.
        g = gateway([{"name": "bad", "url": "https://wrong.test:%d" % m.port,
                      "tls": {"ca_file": m.pki.ca}}],
                    policies=policies(dns, "retry:\n  max_attempts: 1\n"))
        st, _, body = g.chat()
        assert st == 502, body
        assert "SSL certificate problem" in error_message(body), body
        assert dns.count("wrong.test", "A") >= 1
        g.stop()
    finally:
        err = m.stop()
        assert "Sanitizer" not in err, err


def test_reload_moves_to_new_nameservers_without_failing_requests(mocks, gateway, dns):
    m = mocks(1)[0]
    other = MockDNS()
    try:
        for d in (dns, other):
            d.set("up.test", "127.0.0.1")
        hosts = [{"name": "up", "url": "http://up.test:%d" % m.port}]
        g = gateway(hosts, policies=policies(dns))
        assert g.chat()[0] == 200
        assert dns.count("up.test") >= 1 and other.count("up.test") == 0
        codes, stop = [], threading.Event()

        def client():
            while not stop.is_set():
                codes.append(g.chat()[0])
        t = threading.Thread(target=client)
        t.start()
        try:
            write_conf(g.conf_dir, hosts, policies=policies(other))
            gen = reload_and_wait(g)

            def asked_new():
                return other.count("up.test") >= 1
            # The caches were emptied: the next lookups go to the new server.
            wait_for(asked_new, timeout=10 * SLOW, what="a query to the new nameserver")
            assert gen == 2
        finally:
            stop.set()
            t.join(60)
        assert codes and set(codes) == {200}, codes
        g.stop()
    finally:
        other.stop()


def test_next_address_after_a_refused_connect(mocks, gateway, dns):
    m = mocks(1)[0]
    # 127.0.0.3 first: nothing listens there on that port (refused), then
    # the mock's address.
    dns.set("two.test", "127.0.0.3", "127.0.0.1")
    g = gateway([{"name": "two", "url": "http://two.test:%d" % m.port}],
                policies=policies(dns, "retry:\n  max_attempts: 1\n"))
    for _ in range(3):
        st, _, body = g.chat()
        assert st == 200, body
    g.stop()


def test_ipv6_answer(mocks, gateway, dns):
    try:
        m = Mock("m6", "--listen", "[::1]:0")
    except RuntimeError:
        pytest.skip("no IPv6 loopback here")
    try:
        dns.set("six.test", "::1")              # AAAA only: the A query finds none
        g = gateway([{"name": "six", "url": "http://six.test:%d" % m.port}],
                    policies=policies(dns, "retry:\n  max_attempts: 1\n"))
        st, _, body = g.chat()
        assert st == 200 and content(body).startswith("Hello from m6"), body
        assert dns.count("six.test", "AAAA") >= 1
        g.stop()
    finally:
        m.stop()


def test_negative_answers_are_cached(mocks, gateway, dns):
    m = mocks(1)[0]
    g = gateway([{"name": "nx", "url": "http://gone.test:%d" % m.port}],
                policies=policies(dns, "  resolver_negative_ttl: 1h\n"
                                  "retry:\n  max_attempts: 1\n"))
    for _ in range(10):
        assert g.chat()[0] in (502, 503)        # 503: the breaker took it out
    # One failed lookup per worker loop, remembered: not one per request.
    assert 1 <= dns.count("gone.test", "A") <= WORKERS, dns.queries
    g.stop()


def test_probes_of_a_name_that_never_resolves_do_not_block(mocks, gateway, dns):
    ms = mocks(1)
    dns.drop = True
    g = gateway([{"name": "dead", "url": "http://silent.test:%d" % ms[0].port},
                 {"name": "ip", "url": ms[0].url}],
                policies=policies(dns, "  resolver_timeout: 300ms\n"
                                  "health_check:\n  interval: 200ms\n  timeout: 150ms\n"
                                  "  unhealthy_threshold: 1\n"))

    def dead_down():
        hosts = json.loads(g.request("GET", "/status")[2])["hosts"]
        return [h for h in hosts if h["name"] == "dead"][0]["health"] == "unhealthy"
    wait_for(dead_down, timeout=10 * SLOW, what="the unresolvable host marked unhealthy")
    assert dns.count("silent.test", "A") >= 1
    # The loop that probes it keeps answering, at once.
    for _ in range(5):
        t0 = time.monotonic()
        st, h, body = g.chat()
        assert st == 200 and h["x-upstream-host"] == "ip", body
        assert time.monotonic() - t0 < 2 * SLOW
    st, _, body = g.request("GET", "/health")
    assert st == 200, body
    g.stop()


def test_check_names_bad_nameservers_by_position(tmp_path):
    d = str(tmp_path / "conf")
    write_conf(d, [{"name": "up", "url": "http://up.test:8000"}],
               policies="server:\n  resolver: [\"127.0.0.1:5353\", \"dns.example\", \"10.0.0.1:0\"]\n"
                        "  resolver_timeout: 1ms\n")
    r = subprocess.run([INFERGATE_BIN, "-t", "-c", d], capture_output=True, text=True,
                       timeout=60, env=proc_env())
    assert r.returncode != 0
    out = r.stderr + r.stdout
    pol = os.path.join(d, "policies.yaml")
    lines = out.splitlines()
    assert any(l.startswith(pol + ":") and "server.resolver[1]: not an IP address" in l
               for l in lines), out
    assert any("server.resolver[2]: the port must be 1 to 65535" in l for l in lines), out
    assert any("server.resolver_timeout: must be between 100ms and 1m" in l for l in lines), out
    assert re.search(r"policies\.yaml:\d+:32: server\.resolver\[1\]", out), out
    # A good list (one string, or IPv6 with a port) passes.
    write_conf(d, [{"name": "up", "url": "http://up.test:8000"}],
               policies="server:\n  resolver: \"[::1]:5353\"\n")
    r = subprocess.run([INFERGATE_BIN, "-t", "-c", d], capture_output=True, text=True,
                       timeout=60, env=proc_env())
    assert r.returncode == 0, r.stderr


def test_resolver_libc_sends_names_through_curl(mocks, gateway):
    # localhost: /etc/hosts either way, no nameserver is asked. A refused
    # connect tells the clients apart: the own one names the address it
    # resolved ("localhost (127.0.0.1)"), curl does not.
    m = mocks(1)[0]
    closed = free_port()
    hosts = [{"name": "up", "url": "http://localhost:%d" % m.port},
             {"name": "off", "url": "http://localhost:%d" % closed}]
    pol = "routing:\n  strategy: round-robin\nretry:\n  max_attempts: 1\n"
    for libc in (True, False):
        g = gateway(hosts, policies=("server:\n  resolver: libc\n" if libc else "") + pol)
        msgs = set()
        for _ in range(4):
            st, _, body = g.chat()
            if st == 200:
                continue
            msgs.add(error_message(body))
        assert msgs, "the closed port was never tried"
        own = any("localhost (127.0.0.1)" in x for x in msgs)
        assert own != libc, msgs
        g.stop()
