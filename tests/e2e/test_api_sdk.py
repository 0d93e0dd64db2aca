"""The official `openai` and `@anthropic-ai/sdk` npm packages, unchanged,
pointed at infergate (tests/e2e/node/sdk.mjs): Responses (create, stream,
retrieve, a second turn), audio transcription and speech, images,
moderations, Messages (create, stream, an error)."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import ROOT, hosts_of

NODE_DIR = os.path.join(ROOT, "tests", "e2e", "node")


@pytest.fixture(scope="module")
def node_sdks():
    """node_modules from package-lock.json (npm ci, once)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed (scripts/deps.sh installs them)")
    if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "openai")):
        r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
    return NODE_DIR


def test_official_sdks(node_sdks, mocks, gateway):
    ms = mocks(2)
    g = gateway(hosts_of(ms, m0={"apis": ["responses", "audio", "images", "moderations"]},
                         m1={"apis": ["messages"], "auth": "x-api-key"}),
                keys=[{"key": "sk-upstream-sdk-0001"}],
                policies="admin:\n  client_keys: [client-sdk-key]\n")
    env = dict(os.environ, INFERGATE_URL="http://127.0.0.1:%d" % g.port,
               INFERGATE_CLIENT_KEY="client-sdk-key")
    r = subprocess.run(["node", "sdk.mjs"], cwd=node_sdks, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr + g.output()[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["create"]["text"] == "Hello from m0 (turn 1)" and out["create"]["usage"]["output_tokens"] == 3
    assert out["stream"][0] == "response.created" and out["stream"][-1] == "response.completed"
    assert out["stream"].count("response.output_text.delta") == 5
    assert out["retrieve"] == {"id": out["create"]["id"], "text": "Hello from m0 (turn 1)"}
    assert out["turn2"]["text"] == "Hello from m0 (turn 2)"
    assert out["transcription"] == "Hello from m0"
    assert out["speech"] == {"bytes": 4106, "head": "ID3"}
    assert out["image"] == "aGVsbG8=" and out["moderation"] is False
    assert out["message"]["text"] == "Hello from m1" and out["message"]["usage"]["output_tokens"] == 3
    assert out["message_stream"]["text"] == "tok0 tok1 tok2 tok3 tok4 "
    assert out["message_stream"]["usage"]["output_tokens"] == 5
    assert out["message_stream"]["stop"] == "end_turn"
    assert out["message_error"] == {"status": 400, "type": "invalid_request_error"}
    # Upstream auth per host: Bearer for m0, x-api-key for m1; client keys never upstream.
    assert ms[0].stats()["keys"] == {"sk-upstream-sdk-0001": 8}
    last = ms[1].stats()["last_headers"]
    assert last["x-api-key"] == "sk-upstream-sdk-0001" and "anthropic-version" in last
    assert "client-sdk-key" not in json.dumps(ms[1].stats()) + json.dumps(ms[0].stats())
    out_log = g.stop()
    assert "sk-upstream-sdk-0001" not in out_log and "client-sdk-key" not in out_log
