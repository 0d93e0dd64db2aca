"""sessions.keep_content: /v1/verify forwards the kept answer text (seed 001)."""
import json
import time

from conftest import wait_for
from test_proxy import assert_openai_error, hosts_of
from test_sessions import chat_id, redis_policies, redis_server, verify  # noqa: F401

KEEP = "sessions:\n  keep_content: true\n  content_ttl: %s\n"


def test_verify_forwards_the_kept_content_json_and_stream(mocks, gateway):
    ms = mocks(2)
    ms[0].config(chunks=3)
    ms[1].config(chunks=3)
    g = gateway(hosts_of(ms), policies=KEEP % "10m")
    for stream, want in ((False, "Hello from %s"), (True, "tok0 tok1 tok2 ")):
        rid, h = chat_id(g, stream=stream)
        served = next(m for m in ms if m.name == h["x-upstream-host"])
        st, _, body = verify(g, rid)
        assert st == 200, body
        last = served.stats()["last_body"]
        assert last == {"id": rid, "content": want.replace("%s", served.name)
                        if "%s" in want else want}
    # bounded: a long answer is kept cut to content_max_bytes (JSON form)
    g2 = gateway(hosts_of(ms), policies=KEEP % "10m" + "  content_max_bytes: 64\n")
    ms[0].config(content_bytes=1000)
    ms[1].config(content_bytes=1000)
    rid, h = chat_id(g2)
    st, _, body = verify(g2, rid)
    assert st == 200, body
    served = next(m for m in ms if m.name == h["x-upstream-host"])
    kept = served.stats()["last_body"]["content"]
    assert 0 < len(json.dumps(kept)) <= 64 and kept.startswith("Hello from")


def test_verify_after_content_ttl_is_the_seed_404(mocks, gateway):
    ms = mocks(1)
    g = gateway(hosts_of(ms), policies=KEEP % "300ms")
    rid, _ = chat_id(g)
    assert verify(g, rid)[0] == 200
    time.sleep(0.5)                              # the content ttl is the point here
    st, _, body = verify(g, rid)
    err = assert_openai_error(st, body, 404)
    assert err["message"] == "No cached content for this id"
    assert ms[0].stats()["paths"]["/v1/verify"] == 1     # not forwarded without it
    # without keep_content, verify goes on as before (id only)
    g2 = gateway(hosts_of(ms))
    rid, _ = chat_id(g2)
    assert verify(g2, rid)[0] == 200
    assert ms[0].stats()["last_body"] == {"id": rid}


def test_kept_content_shared_through_redis(mocks, gateway, redis_server):
    port, _, _ = redis_server
    ms = mocks(1)
    pol = redis_policies(port) + "  keep_content: true\n  content_ttl: 10m\n"
    g1 = gateway(hosts_of(ms), policies=pol)
    g2 = gateway(hosts_of(ms), policies=pol)
    wait_for(lambda: all(json.loads(g.request("GET", "/status")[2])["sessions"]["redis"]["state"]
                         == "up" for g in (g1, g2)), what="redis up")
    rid, _ = chat_id(g1)
    st, _, body = verify(g2, rid)
    assert st == 200, body
    assert ms[0].stats()["last_body"] == {"id": rid, "content": "Hello from %s" % ms[0].name}
