"""Client keys as tenants (policies.yaml `clients`, issue 19), one process:
keys as key / key_file / ${ENV} / key_sha256, models allowed, rpm, tpm,
max_concurrent and token budgets enforced before any upstream work, the
x-ratelimit-* headers, counters kept across reloads, /admin/clients and
/status, the access log's client, and no client key anywhere."""
import hashlib
import json
import signal
import subprocess
import threading

from conftest import INFERGATE_BIN, fresh_window, hosts_of, wait_for, write_conf

KA, KB, KC, KD = "sk-alice-0123456789", "sk-bob-0123456789", "sk-carol-0123456789", "sk-dave-0123456789"


def auth(k):
    return {"Authorization": "Bearer " + k}


def status_doc(g):
    return json.loads(g.request("GET", "/status")[2])


def reload_and_wait(g):
    gen = status_doc(g)["generation"]
    g.signal(signal.SIGHUP)
    wait_for(lambda: status_doc(g)["generation"] > gen, timeout=20, what="reload")


def test_keys_models_and_errors(mocks, gateway, tmp_path):
    ms = mocks(1)
    kf = tmp_path / "bob.key"
    kf.write_text(KB + "\n")
    pol = """
models:
  fast: [mock-model]
admin:
  client_keys: [%s]
clients:
  - {name: alice, key: "${ALICE_KEY}", models: [fast]}
  - {name: bob, key_file: %s, models: [other-model], limits: {rpm: 60}}
  - {name: carol, key_sha256: %s}
""" % (KD, kf, hashlib.sha256(KC.encode()).hexdigest().upper())
    g = gateway(hosts_of(ms), policies=pol, env={"ALICE_KEY": KA})
    st, _, body = g.chat(headers=auth("sk-nobody-000000"))
    assert st == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    assert g.chat(headers=auth(KA))[0] == 200          # via the alias it allows
    assert g.chat(headers=auth(KC))[0] == 200          # key_sha256, any model
    assert g.chat(headers=auth(KD))[0] == 200          # admin.client_keys
    st, h, body = g.chat(headers=auth(KB))              # key_file, model refused
    assert st == 403, body
    # The refusal carries the client's limits too, and used none of them.
    assert h["x-ratelimit-limit-requests"] == "60", h
    assert h["x-ratelimit-remaining-requests"] == "60", h
    assert h["x-ratelimit-reset-requests"].endswith("s"), h
    err = json.loads(body)["error"]
    assert err["code"] == "model_not_allowed" and err["type"] == "permission_error"
    # Anthropic's shape on /v1/messages
    st, _, body = g.request("POST", "/v1/messages",
                            {"model": "mock-model", "max_tokens": 5,
                             "messages": [{"role": "user", "content": "hi"}]},
                            {"x-api-key": KB})
    assert st == 403
    doc = json.loads(body)
    assert doc["type"] == "error" and doc["error"]["type"] == "permission_error"
    st, _, body = g.request("GET", "/admin/clients")
    names = [c["name"] for c in json.loads(body)["clients"]]
    assert names == ["alice", "bob", "carol", "client_keys[0]"]
    bob = [c for c in json.loads(body)["clients"] if c["name"] == "bob"][0]
    assert bob["limited"] == 2 and bob["requests"] == 0
    out = g.stop()
    for k in (KA, KB, KC, KD):
        assert k not in out and k not in body.decode()


def test_rpm_headers_and_reload(mocks, gateway, tmp_path):
    ms = mocks(1)
    log = tmp_path / "access.log"
    pol = """
server:
  access_log: {file: %s}
clients:
  - {name: alice, key: %s, limits: {rpm: 3}}
  - {name: bob, key: %s}
  - {name: default, limits: {rpm: 2}}
"""
    g = gateway(hosts_of(ms), policies=pol % (log, KA, KB))
    fresh_window(20)                    # counts across a reload: one window
    for i in range(3):
        st, h, _ = g.chat(headers=auth(KA))
        assert st == 200
        assert h["x-ratelimit-limit-requests"] == "3"
        assert h["x-ratelimit-remaining-requests"] == str(2 - i)
        assert h["x-ratelimit-reset-requests"].endswith("s")
    before = ms[0].stats()
    st, h, body = g.chat(headers=auth(KA))
    assert st == 429
    err = json.loads(body)["error"]
    assert err["code"] == "rate_limit_exceeded"
    assert 1 <= int(h["retry-after"]) <= 60
    assert h["x-ratelimit-remaining-requests"] == "0"
    assert ms[0].stats() == before                      # no upstream work
    # bob takes the default entry's limits
    assert [g.chat(headers=auth(KB))[0] for _ in range(3)] == [200, 200, 429]
    # a raised limit applies at once to the counts kept across the reload
    d = g.conf_dir
    with open(d + "/policies.yaml") as f:
        text = f.read()
    with open(d + "/policies.yaml", "w") as f:
        f.write(text.replace("rpm: 3", "rpm: 4").replace("  - {name: bob, key: %s}\n" % KB, ""))
    reload_and_wait(g)
    st, h, _ = g.chat(headers=auth(KA))
    assert st == 200 and h["x-ratelimit-remaining-requests"] == "0"
    assert g.chat(headers=auth(KA))[0] == 429
    assert g.chat(headers=auth(KB))[0] == 401          # removed: refused at once
    wait_for(lambda: log.exists() and log.read_text().count("client=alice") >= 6,
             timeout=10, what="access log")
    doc = status_doc(g)
    alice = [c for c in doc["clients"] if c["name"] == "alice"][0]
    assert alice["requests"] == 4 and alice["limited"] == 2
    st, _, metrics = g.request("GET", "/metrics")
    m = metrics.decode()
    assert 'infergate_client_requests_total{client="alice",result="admitted"} 4' in m
    assert 'infergate_client_requests_total{client="alice",result="limited"} 2' in m
    assert 'infergate_client_tokens_total{client="alice",kind="input"} ' in m
    assert 'client="bob"' not in m                      # removed: not a label any more
    out = g.stop()
    for k in (KA, KB):
        assert k not in out and k not in log.read_text() and k not in json.dumps(doc)
        assert k not in metrics.decode()


def test_tokens_budget_and_concurrency(mocks, gateway):
    ms = mocks(1, "--delay-ms", "600")
    pol = """
limits:
  default_max_tokens: 10
clients:
  - {name: alice, key: %s, limits: {tokens_per_day: 30}}
  - {name: bob, key: %s, limits: {max_concurrent: 1}}
  - {name: carol, key: %s, limits: {tpm: 100}}
""" % (KA, KB, KC)
    g = gateway(hosts_of(ms), policies=pol)
    # the budget is checked on what was used: one answer spends it
    used = 0
    while used < 30:
        st, _, body = g.chat(headers=auth(KA))
        assert st == 200, body
        u = json.loads(body)["usage"]
        used += u["prompt_tokens"] + u["completion_tokens"]
    spent_too = [0]

    def spent():
        # With worker threads a request's usage is settled just after its
        # answer: one more request may pass before it is, and uses tokens.
        st, _, body = g.chat(headers=auth(KA))
        if st == 200:
            u = json.loads(body)["usage"]
            spent_too[0] += u["prompt_tokens"] + u["completion_tokens"]
            return False
        return st == 429 and json.loads(body)["error"]["code"] == "insufficient_quota"
    wait_for(spent, timeout=10, what="budget spent")
    used += spent_too[0]
    st, _, body = g.request("GET", "/admin/clients")
    alice = [c for c in json.loads(body)["clients"] if c["name"] == "alice"][0]
    assert alice["remaining"]["tokens_today"] == 0
    wait_for(lambda: (lambda a: a["today"]["tokens_in"] + a["today"]["tokens_out"] == used)(
        [c for c in json.loads(g.request("GET", "/admin/clients")[2])["clients"]
         if c["name"] == "alice"][0]), what="alice's tokens settled")
    # max_concurrent: 1 -> of two at once, one is refused
    res = []
    ts = [threading.Thread(target=lambda: res.append(g.chat(headers=auth(KB))[0])) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(res) == [200, 429], res
    # tpm: reservations (prompt estimate + max_tokens) fill the window. The
    # windows are aligned on the clock (limits.window, 60 s): the two
    # requests go in one, not across a minute's end (a failed run had the
    # second one in a new window).
    fresh_window()
    st, h, _ = g.chat(headers=auth(KC), max_tokens=60)
    assert st == 200 and h["x-ratelimit-limit-tokens"] == "100"
    st, h, body = g.chat(headers=auth(KC), max_tokens=90)
    assert st == 429 and json.loads(body)["error"]["code"] == "rate_limit_exceeded"
    g.stop()


def test_budget_spent_mid_stream(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms), policies="clients:\n  - {name: alice, key: %s, limits: {tokens_per_day: 1}}\n" % KA)
    st, h, body = g.chat(headers=auth(KA), stream=True, stream_options={"include_usage": True})
    assert st == 200
    text = body.decode()
    assert text.rstrip().endswith("data: [DONE]") and '"usage"' in text   # finished whole
    def refused():
        st, _, body = g.chat(headers=auth(KA), stream=True)
        return st == 429 and json.loads(body)["error"]["code"] == "insufficient_quota"
    wait_for(refused, timeout=10, what="the next request refused")
    st, _, body = g.request("GET", "/admin/clients")
    alice = json.loads(body)["clients"][0]
    assert alice["today"]["tokens_out"] > 0 and alice["remaining"]["tokens_today"] == 0
    g.stop()


def test_cancelled_request_charged_its_input_part(mocks, gateway):
    import socket
    ms = mocks(1, "--delay-ms", "3000")
    g = gateway(hosts_of(ms), policies="clients:\n  - {name: alice, key: %s, limits: {max_concurrent: 1}}\n" % KA)
    body = json.dumps({"model": "mock-model", "messages": [{"role": "user", "content": "x" * 400}]})
    s = socket.create_connection(("127.0.0.1", g.port))
    s.sendall(("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
               "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
               % (KA, len(body), body)).encode())
    def alice():
        return json.loads(g.request("GET", "/admin/clients")[2])["clients"][0]
    wait_for(lambda: alice()["in_flight"] == 1 and ms[0].stats()["paths"].get("/v1/chat/completions"),
             timeout=20, what="at the upstream")
    wait_for(lambda: g.chat(headers=auth(KA))[0] == 429, timeout=5, what="max_concurrent")
    s.close()                                    # the client goes away
    wait_for(lambda: alice()["in_flight"] == 0, timeout=20, what="settled")
    a = alice()
    assert a["today"]["tokens_in"] == len(body) // 4 + 1 and a["today"]["tokens_out"] == 0, a
    g.stop()


def test_dash_t_checks_clients(tmp_path):
    d = str(tmp_path / "conf")
    write_conf(d, [{"name": "m0", "url": "http://127.0.0.1:1"}], policies="""
clients:
  - {name: a, key: sk-aaaaaaaaaaaa}
  - {name: a, key: sk-bbbbbbbbbbbb}
  - {name: c}
  - {name: d, key_sha256: abc}
  - {name: e, key: sk-eeeeeeeeeeee, limits: {rpm: -1}}
  - {name: default, key: sk-ffffffffffff}
""")
    r = subprocess.run([INFERGATE_BIN, "-t", "-c", d], capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 1
    assert 'duplicate client name "a"' in out
    assert 'missing required key "key"' in out
    assert "64 hex digits" in out
    assert "clients[4].limits.rpm" in out
    assert '"default" entry has no key' in out
    assert "sk-aaaaaaaaaaaa" not in out and "sk-ffffffffffff" not in out
