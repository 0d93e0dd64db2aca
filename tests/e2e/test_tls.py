"""TLS on the listener: server.tls, listeners with and without TLS, mutual
TLS, certificate rotation on reload (under load), refused reloads, -t,
handshake limits, /status and /metrics. Certificates come from a test CA
made with the openssl command line (tls_pki.py)."""
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import warnings

import pytest

from conftest import INFERGATE_BIN, SANITIZED, Gateway, Mock, free_port, hosts_of, proc_env, \
    spawn, wait_for, write_conf
from test_api_sdk import node_sdks  # noqa: F401 -- a fixture
from tls_pki import Pki

SLOW = 10 if SANITIZED else 1


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path / "pki")


def tls_policies(cert, key, extra_tls="", extra="", client_timeout="30s"):
    # client_timeout bounds a handshake with the first request: 30 s, so that
    # a loaded machine (three e2e runs on two cores) never cuts a test's own
    # new connection; the slowloris test sets its own.
    return ("server:\n  client_timeout: %s\n  tls:\n    cert: %s\n    key: %s\n%s"
            "admin:\n  token: tk\n%s" % (client_timeout, cert, key, extra_tls, extra))


def install_cert(conf_dir, cert, key):
    """Copies cert and key to conf_dir/tls/{cert,key}.pem, each replaced at once."""
    d = os.path.join(conf_dir, "tls")
    os.makedirs(d, exist_ok=True)
    for src, name in ((cert, "cert.pem"), (key, "key.pem")):
        shutil.copyfile(src, os.path.join(d, name + ".tmp"))
        os.replace(os.path.join(d, name + ".tmp"), os.path.join(d, name))
    return os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")


def client_ctx(ca, cert=None):
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(cert[0], cert[1])
    return ctx


def https(port, ca, method, path, body=None, cert=None, headers=None, timeout=30):
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=client_ctx(ca, cert),
                                       timeout=timeout)
    hdrs = dict(headers or {})
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def peer_serial(port, ca):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        with client_ctx(ca).wrap_socket(s, server_hostname="127.0.0.1") as t:
            return t.getpeercert()["serialNumber"].upper()


def status(port, ca):
    st, _, body = https(port, ca, "GET", "/status")
    assert st == 200, body
    return json.loads(body)


def metric(text, name, **labels):
    want = name + ("{" + ",".join('%s="%s"' % kv for kv in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return None


CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}


def chat_ok(port, ca, stream=False, conn=None):
    own = conn is None
    if own:
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=client_ctx(ca), timeout=30)
    try:
        conn.request("POST", "/v1/chat/completions", body=json.dumps(dict(CHAT, stream=stream)),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            return False
        if stream:
            return b"data: [DONE]" in body
        return json.loads(body)["object"] == "chat.completion"
    finally:
        if own:
            conn.close()


class ListGateway(Gateway):
    """The gateway with server.listen from policies.yaml (no -l)."""

    def __init__(self, conf_dir, port):
        self.conf_dir = conf_dir
        self.port = port
        self.log_path = os.path.join(conf_dir, "gateway.log")
        self.log = open(self.log_path, "w")
        self.proc = spawn([INFERGATE_BIN, "-c", conf_dir], stdout=self.log,
                          stderr=subprocess.STDOUT, env=proc_env())
        wait_for(self._up, timeout=15, what="gateway to listen")


def test_tls_and_plain_listeners_chat_stream_status_metrics(mocks, tmp_path, pki):
    ms = mocks(1)
    cert, key, serial = pki.issue(days=5)
    tport, pport = free_port(), free_port()
    d = str(tmp_path / "conf")
    write_conf(d, hosts_of(ms), policies=(
        "server:\n  listen:\n    - 127.0.0.1:%d\n    - {address: \"127.0.0.1:%d\", tls: false}\n"
        "  tls:\n    cert: %s\n    key: %s\n" % (tport, pport, cert, key)))
    g = ListGateway(d, tport)
    try:
        wait_for(lambda: "127.0.0.1:%d" % pport in g.output(), what="both listeners")
        assert chat_ok(tport, pki.ca)
        assert chat_ok(tport, pki.ca, stream=True)
        assert peer_serial(tport, pki.ca) == serial
        # The plain listener speaks plain HTTP.
        assert json.loads(http_get_plain(pport, "/health"))["status"] == "healthy"
        doc = json.loads(http_get_plain(pport, "/status"))
        ls = {x["address"]: x for x in doc["listeners"]}
        assert ls["127.0.0.1:%d" % pport] == {"address": "127.0.0.1:%d" % pport, "tls": False}
        c = ls["127.0.0.1:%d" % tport]["certificate"]
        assert c["subject"] == "CN=localhost" and c["issuer"] == "CN=Test CA"
        assert c["serial"] == serial and c["expires_in_days"] in (4, 5)
        text = http_get_plain(pport, "/metrics").decode()
        exp = metric(text, "infergate_tls_cert_expiry_timestamp_seconds",
                     listener="127.0.0.1:%d" % tport)
        assert exp is not None and abs(exp - (time.time() + 5 * 86400)) < 600
        assert "expires on" in g.output()          # the 14-day warning at start
        # ALPN: http/1.1 is chosen when offered.
        ctx = client_ctx(pki.ca)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        with socket.create_connection(("127.0.0.1", tport)) as s:
            with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
                assert t.selected_alpn_protocol() == "http/1.1"
        # TLS 1.1 is refused (min_version 1.2).
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(pki.ca)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with socket.create_connection(("127.0.0.1", tport)) as s:
                old.wrap_socket(s, server_hostname="127.0.0.1")
        wait_for(lambda: metric(http_get_plain(pport, "/metrics").decode(),
                                "infergate_tls_handshake_failures_total", reason="protocol") >= 1,
                 what="the refused TLS 1.1 handshake counted")
    finally:
        out = g.stop()
    assert_no_key_material(out, key)


def http_get_plain(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        assert r.status == 200
        return r.read()
    finally:
        conn.close()


def assert_no_key_material(text, key_path):
    with open(key_path) as f:
        lines = [ln.strip() for ln in f if ln.strip() and not ln.startswith("-----")]
    assert "PRIVATE KEY" not in text
    for ln in lines:
        assert ln[:24] not in text, "key material in the output"


def test_plain_http_to_tls_port_gets_400_and_close(mocks, gateway, pki):
    ms = mocks(1)
    cert, key, _ = pki.issue()
    g = gateway(hosts_of(ms), policies=tls_policies(cert, key))
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            b = s.recv(4096)
            if not b:
                break
            data += b
    assert data.startswith(b"HTTP/1.1 400 "), data
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "plain_http_to_tls_port"
    # The gateway still serves TLS, and counted the failure.
    st, _, text = https(g.port, pki.ca, "GET", "/metrics")
    assert st == 200
    assert metric(text.decode(), "infergate_tls_handshake_failures_total", reason="plain_http") == 1
    g.stop()


def test_mutual_tls(mocks, gateway, tmp_path, pki):
    ms = mocks(1)
    cert, key, _ = pki.issue()
    good = pki.issue(cn="client-a", client=True)
    other = Pki(tmp_path / "other", name="Other CA").issue(cn="client-b", client=True)
    g = gateway(hosts_of(ms), policies=tls_policies(cert, key, "    client_ca: %s\n" % pki.ca))
    st, _, body = https(g.port, pki.ca, "POST", "/v1/chat/completions", CHAT, cert=good[:2])
    assert st == 200, body
    for c in (None, other[:2]):
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
            https(g.port, pki.ca, "POST", "/v1/chat/completions", CHAT, cert=c)
    st, _, text = https(g.port, pki.ca, "GET", "/metrics", cert=good[:2])
    text = text.decode()
    wait_for(lambda: True)
    assert metric(text, "infergate_tls_handshake_failures_total", reason="no_client_cert") == 1
    assert metric(text, "infergate_tls_handshake_failures_total", reason="bad_client_cert") == 1
    doc = json.loads(https(g.port, pki.ca, "GET", "/status", cert=good[:2])[2])
    assert doc["listeners"][0]["certificate"]["client_certificates"] is True
    assert ms[0].stats()["requests"] == 1          # the refused ones never reached it
    g.stop()


def test_rotation_under_load(mocks, gateway, tmp_path, pki):
    """8 clients (streaming and not, new and kept connections) through 20
    certificate rotations: no request fails, new connections see each new
    serial, connections opened before a rotation go on."""
    ms = mocks(1, "--chunks", "5", "--chunk-interval-ms", "2")
    certs = [pki.issue() for _ in range(21)]
    d = str(tmp_path / "conf")
    cpath, kpath = install_cert(d, certs[0][0], certs[0][1])
    g = gateway(hosts_of(ms), policies=tls_policies(cpath, kpath))
    stop = threading.Event()
    done, failed = [0], []

    def client(i):
        conn = None
        if i % 2 == 0:      # one kept-alive connection across the rotations
            conn = http.client.HTTPSConnection("127.0.0.1", g.port, context=client_ctx(pki.ca),
                                               timeout=30)
        try:
            while not stop.is_set():
                try:
                    ok = chat_ok(g.port, pki.ca, stream=i % 4 < 2, conn=conn)
                except Exception as e:      # noqa: BLE001 -- every failure counts
                    ok = False
                    failed.append(repr(e))
                if ok:
                    done[0] += 1
                else:
                    failed.append("request %d failed" % i)
        finally:
            if conn:
                conn.close()

    # The port accepts before the signal handlers are in place (worker threads).
    wait_for(lambda: "started (pid" in g.output(), timeout=15 * SLOW, what="start-up")
    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    try:
        for n in range(1, 21):
            before = done[0]
            install_cert(d, certs[n][0], certs[n][1])
            g.signal(signal.SIGHUP)
            wait_for(lambda: status(g.port, pki.ca)["generation"] == n + 1, timeout=10 * SLOW,
                     what="reload %d" % n)
            assert peer_serial(g.port, pki.ca) == certs[n][2]
            wait_for(lambda: done[0] > before, timeout=10 * SLOW, what="requests to go on")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failed, failed[:5]
    assert done[0] >= 40
    out = g.stop()
    assert "reload rejected" not in out
    assert_no_key_material(out, kpath)


def test_bad_certificate_on_reload_is_refused_and_old_serves(mocks, gateway, tmp_path, pki):
    ms = mocks(1)
    c0, k0, s0 = pki.issue()
    c1, k1, _ = pki.issue()
    expired = pki.issue(days=0)
    d = str(tmp_path / "conf")
    cpath, kpath = install_cert(d, c0, k0)
    g = gateway(hosts_of(ms), policies=tls_policies(cpath, kpath))
    adm = {"Authorization": "Bearer tk"}
    cases = [
        ((c1, k0), "%s: the key does not match the certificate in %s" % (kpath, cpath)),
        ((expired[0], expired[1]), "%s: the certificate expired on" % cpath),
    ]
    for (c, k), want in cases:
        install_cert(d, c, k)
        st, _, body = https(g.port, pki.ca, "POST", "/admin/reload", headers=adm)
        doc = json.loads(body)
        assert doc["ok"] is False and any(e.startswith(want) for e in doc["errors"]), doc
        assert peer_serial(g.port, pki.ca) == s0
        assert chat_ok(g.port, pki.ca)
    install_cert(d, c0, k0)
    os.remove(kpath)
    st, _, body = https(g.port, pki.ca, "POST", "/admin/reload", headers=adm)
    doc = json.loads(body)
    assert doc["errors"] == ["%s: cannot read: No such file or directory" % kpath], doc
    assert peer_serial(g.port, pki.ca) == s0
    doc = status(g.port, pki.ca)
    assert doc["generation"] == 1 and doc["last_reload"]["ok"] is False
    assert doc["listeners"][0]["certificate"]["serial"] == s0
    out = g.stop()
    assert "reload rejected: %s: cannot read" % kpath in out
    assert_no_key_material(out + json.dumps(doc), k0)


def test_min_version_and_tls_added_by_reload_needs_restart(mocks, gateway, pki):
    ms = mocks(1)
    cert, key, _ = pki.issue()
    g = gateway(hosts_of(ms), policies=tls_policies(cert, key, "    min_version: \"1.3\"\n"))
    ctx = client_ctx(pki.ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with socket.create_connection(("127.0.0.1", g.port)) as s:
            ctx.wrap_socket(s, server_hostname="127.0.0.1")
    with socket.create_connection(("127.0.0.1", g.port)) as s:
        with client_ctx(pki.ca).wrap_socket(s, server_hostname="127.0.0.1") as t:
            assert t.version() == "TLSv1.3"
    g.stop()
    # A plain listener does not turn into a TLS one on reload: that needs a restart.
    g = gateway(hosts_of(ms), policies="admin:\n  token: tk\n")
    write_conf(g.conf_dir, hosts_of(ms), policies=tls_policies(cert, key))
    st, _, body = g.request("POST", "/admin/reload", headers={"Authorization": "Bearer tk"})
    doc = json.loads(body)
    assert doc["ok"] is False and "needs a restart" in doc["errors"][0], doc
    assert g.chat()[0] == 200
    g.stop()


def check_t(conf_dir):
    p = subprocess.run([INFERGATE_BIN, "-t", "-c", conf_dir], capture_output=True, text=True,
                       env=proc_env(), timeout=60)
    return p.returncode, p.stdout + p.stderr


def test_check_catches_mismatch_expiry_missing_and_warns(mocks, tmp_path, pki):
    c0, k0, _ = pki.issue(days=30)
    c1, k1, _ = pki.issue(days=30)
    soon = pki.issue(days=5)
    expired = pki.issue(days=0)
    d = str(tmp_path / "conf")

    def conf(cert, key, extra=""):
        write_conf(d, [{"name": "m", "url": "http://127.0.0.1:9"}],
                   policies=tls_policies(cert, key, extra))
        return check_t(d)

    rc, out = conf(c0, k0)
    assert rc == 0 and out.strip().endswith("configuration ok") and "warning" not in out, out
    rc, out = conf(c1, k0)
    assert rc == 1 and "%s: the key does not match the certificate in %s" % (k0, c1) in out, out
    rc, out = conf(expired[0], expired[1])
    assert rc == 1 and "%s: the certificate expired on" % expired[0] in out, out
    rc, out = conf(c0, "/nonexistent/key.pem")
    assert rc == 1 and "/nonexistent/key.pem: cannot read: No such file or directory" in out, out
    rc, out = conf("/nonexistent/cert.pem", k0)
    assert rc == 1 and "/nonexistent/cert.pem: cannot read: No such file or directory" in out, out
    rc, out = conf(c0, k0, "    client_ca: /nonexistent/ca.pem\n")
    assert rc == 1 and "/nonexistent/ca.pem: cannot read" in out, out
    rc, out = conf(c0, k0, "    ciphers: NOPE-NOTHING\n")
    assert rc == 1 and "server.tls.ciphers: no known cipher" in out, out
    rc, out = conf(c0, k0, "    min_version: 1.1\n")
    assert rc == 1 and "server.tls.min_version" in out, out
    rc, out = conf(soon[0], soon[1])
    assert rc == 0 and "warning: %s: the certificate expires on" % soon[0] in out, out
    # a listener asking for TLS without a certificate
    write_conf(d, [{"name": "m", "url": "http://127.0.0.1:9"}],
               policies="server:\n  listen:\n    - {address: \"127.0.0.1:1\", tls: true}\n")
    rc, out = check_t(d)
    assert rc == 1 and "tls: true needs server.tls.cert" in out, out
    assert_no_key_material(out, k0)


def test_handshake_slowloris_is_bounded(mocks, gateway, pki):
    """Connections that start a handshake and stall are closed after
    client_timeout; meanwhile the gateway serves others."""
    ms = mocks(1)
    cert, key, _ = pki.issue()
    g = gateway(hosts_of(ms), policies=tls_policies(cert, key, client_timeout="1s"))
    socks = []
    try:
        t0 = time.monotonic()
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", g.port), timeout=30)
            s.sendall(b"\x16\x03\x01\x02")        # a ClientHello that never comes
            socks.append(s)
        assert chat_ok(g.port, pki.ca)
        for s in socks:
            assert s.recv(100) == b""             # closed by the gateway
        took = time.monotonic() - t0
        assert 0.9 < took < 1 + 5 * SLOW, took
        st, _, text = https(g.port, pki.ca, "GET", "/metrics")
        assert metric(text.decode(), "infergate_tls_handshake_failures_total",
                      reason="timeout") == 20
    finally:
        for s in socks:
            s.close()
    g.stop()


# ------------------------------------------------------------ upstreams
class TLSMock(Mock):
    """infergate-mock serving HTTPS with a certificate of `pki`."""

    def __init__(self, name, pki, *args):
        self.pki = pki
        cert, key, _ = pki.issue()
        super().__init__(name, "--tls-cert", cert, "--tls-key", key, *args)
        self.url = "https://127.0.0.1:%d" % self.port

    def stats(self):
        st, _, data = https(self.port, self.pki.ca, "GET", "/_mock/stats")
        assert st == 200, data
        return json.loads(data)

    def control(self, path, body=None):
        st, _, data = https(self.port, self.pki.ca, "POST", "/_mock/" + path, body=body or {})
        assert st == 200, data
        return json.loads(data)


@pytest.fixture
def tls_mock(tmp_path):
    started = []

    def make(*args):
        m = TLSMock("u%d" % len(started), Pki(tmp_path / ("upki%d" % len(started)),
                                              name="Upstream CA"), *args)
        started.append(m)
        return m

    yield make
    for m in started:
        err = m.stop()
        assert "Sanitizer" not in err and "runtime error" not in err, err


def test_https_upstream_verified_against_ca_file(gateway, tls_mock):
    m = tls_mock()
    # Without ca_file the system store does not know the mock's CA: refused.
    g = gateway([{"name": "up", "url": m.url}], policies="retry:\n  max_attempts: 1\n")
    st, _, body = g.chat()
    assert st == 502, body
    assert "SSL certificate problem" in json.loads(body)["error"]["message"], body
    assert m.stats()["requests"] == 0
    g.stop()
    # With it: chat and stream, over reused connections.
    g = gateway([{"name": "up", "url": m.url, "tls": {"ca_file": m.pki.ca}}])
    for i in range(20):
        st, _, body = g.chat(stream=i % 2 == 1)
        assert st == 200, body
        assert (b"[DONE]" in body) if i % 2 else json.loads(body)["object"] == "chat.completion"
    s = m.stats()
    assert s["requests"] == 20
    # Connections are kept and reused: a few per worker, far fewer than requests.
    assert 1 <= s["tls_handshakes"] <= 6, s
    g.stop()


def test_https_upstream_server_name_and_verify_false(gateway, tls_mock):
    m = tls_mock()
    # The certificate names localhost and 127.0.0.1, not "wrong.test".
    g = gateway([{"name": "bad", "url": m.url,
                  "tls": {"ca_file": m.pki.ca, "server_name": "wrong.test"}}],
                policies="retry:\n  max_attempts: 1\n")
    st, _, body = g.chat()
    assert st == 502, body
    g.stop()
    g = gateway([{"name": "good", "url": m.url,
                  "tls": {"ca_file": m.pki.ca, "server_name": "localhost"}}])
    st, _, body = g.chat()
    assert st == 200, body
    assert m.stats()["last_headers"]["host"].startswith("localhost:")
    g.stop()
    # verify: false works without the CA, with a warning at start and reload.
    g = gateway([{"name": "lab", "url": m.url, "tls": {"verify": False}}],
                policies="admin:\n  token: tk\n")
    st, _, body = g.chat()
    assert st == 200, body
    st, _, body = g.request("POST", "/admin/reload", headers={"Authorization": "Bearer tk"})
    assert st == 200, body
    out = g.stop()
    assert out.count("host lab: tls.verify is false") == 2, out


# ------------------------------------------------------------ the SDK
def test_openai_node_sdk_over_https(node_sdks, mocks, gateway, pki):
    """The official openai npm package, trusting the test CA through
    NODE_EXTRA_CA_CERTS: a chat completion and a stream over TLS."""
    ms = mocks(1)
    cert, key, _ = pki.issue()
    g = gateway(hosts_of(ms), policies=tls_policies(cert, key))
    env = dict(os.environ, INFERGATE_URL="https://127.0.0.1:%d" % g.port,
               NODE_EXTRA_CA_CERTS=pki.ca)
    r = subprocess.run(["node", "tls_chat.mjs"], cwd=node_sdks, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr + g.output()[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["chat"] == {"object": "chat.completion", "text": "Hello from m0"}, out
    assert out["stream"]["chunks"] >= 5 and out["stream"]["text"], out
    # Without the CA the SDK refuses the certificate: it is TLS for real.
    env.pop("NODE_EXTRA_CA_CERTS")
    r = subprocess.run(["node", "tls_chat.mjs"], cwd=node_sdks, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0
    g.stop()
