"""Mutual TLS: a client certificate's subject as the client identity
(clients[].cert_subject). Certificates from a test CA (tls_pki.py)."""
import json

from conftest import INFERGATE_BIN, hosts_of, proc_env, write_conf
from test_tls import https, tls_policies
from tls_pki import Pki

import subprocess


def clients_policies(pki, cert, key):
    return tls_policies(cert, key, extra_tls="    client_ca: %s\n" % pki.ca, extra=(
        "clients:\n"
        "  - name: alice\n"
        "    cert_subject: CN=alice\n"
        "    models: [mock-model]\n"
        "    limits: {rpm: 1000}\n"
        "  - name: bob\n"
        "    key: sk-bob-0123456789\n"
        "    models: [other-model]\n"))


CHAT = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}]}


def test_client_certificate_subject_names_the_client(mocks, gateway, tmp_path):
    pki = Pki(tmp_path / "pki")
    ms = mocks(1)
    cert, key, _ = pki.issue()
    g = gateway(hosts_of(ms), policies=clients_policies(pki, cert, key))
    alice = pki.issue(cn="alice", client=True)[:2]
    carol = pki.issue(cn="carol", client=True)[:2]
    # alice's certificate and no key: alice, her model allowed, her limits shown.
    st, h, body = https(g.port, pki.ca, "POST", "/v1/chat/completions", CHAT, cert=alice)
    assert st == 200, body
    assert h.get("x-ratelimit-limit-requests") == "1000", h
    st, _, body = https(g.port, pki.ca, "POST", "/v1/chat/completions",
                        dict(CHAT, model="other-model"), cert=alice)
    assert st == 403, body
    assert json.loads(body)["error"]["code"] == "model_not_allowed"
    # A key decides when one is sent: bob's key on alice's certificate is bob.
    st, _, body = https(g.port, pki.ca, "POST", "/v1/chat/completions", CHAT, cert=alice,
                        headers={"Authorization": "Bearer sk-bob-0123456789"})
    assert st == 403, body
    st, _, body = https(g.port, pki.ca, "POST", "/v1/chat/completions", CHAT, cert=alice,
                        headers={"Authorization": "Bearer sk-nobody"})
    assert st == 401, body
    # A good certificate whose subject no client names, and no key: 401.
    st, _, body = https(g.port, pki.ca, "POST", "/v1/chat/completions", CHAT, cert=carol)
    assert st == 401, body
    assert json.loads(body)["error"]["code"] == "invalid_api_key"
    # The client shows up under its name.
    st, _, body = https(g.port, pki.ca, "GET", "/admin/clients", cert=alice,
                        headers={"Authorization": "Bearer tk"})
    assert st == 200, body
    doc = json.loads(body)
    rows = doc["clients"] if isinstance(doc, dict) else doc
    a = [r for r in rows if r.get("name") == "alice"]
    assert a and a[0]["requests"] == 1 and a[0]["limited"] == 1, doc
    g.stop()


def test_cert_subject_needs_client_ca(mocks, tmp_path):
    pki = Pki(tmp_path / "pki")
    ms = mocks(1)
    cert, key, _ = pki.issue()
    d = str(tmp_path / "conf")
    write_conf(d, hosts_of(ms), policies=tls_policies(cert, key, extra=(
        "clients:\n  - name: alice\n    cert_subject: CN=alice\n")))
    r = subprocess.run([INFERGATE_BIN, "-t", "-c", d], capture_output=True, text=True,
                       env=proc_env(), timeout=60)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "cert_subject needs server.tls.client_ca" in r.stdout + r.stderr
