"""Alert notifications (src/app/alerts_notify.c) against real receivers on loopback.

A small driver (tests/alerts_driver/alerts_driver.c), compiled here with gcc
against src/core/alerts.c, src/app/alerts_notify.c and their neighbours, makes an `availability` alert fire
and then resolve, and sends both events through the channels it is given:
- webhook (generic JSON) and Slack-shaped payloads to an HTTP receiver
  started here;
- a command (argv, never a shell string) getting the JSON on stdin and
  INFERGATE_ALERT_* variables;
- email through SMTP to a small SMTP sink started here (with AUTH PLAIN).
Failing receivers (HTTP 500, connection refused, a command exiting 1, one
hanging past its timeout, one that does not exist) are retried a fixed
number of times and given up, while the driver's event loop keeps ticking.
"""
import base64
import email
import email.policy
import email.utils
import json
import os
import socketserver
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import ROOT, SANITIZED, SRC_IQUOTE, src_path, free_port, proc_env, wait_for
from conftest import build_driver

SOURCES = [os.path.join(ROOT, "tests/alerts_driver/alerts_driver.c")] + [src_path(f) for f in (
    "alerts.c", "alerts_notify.c", "metrics.c", "upstream.c", "upstream_h1.c", "resolve.c", "log.c", "config.c",
    "doc.c", "session.c", "session_mem.c", "session_redis.c", "redis_conn.c", "replicas.c", "clock.c",
    "jscan.c", "tls.c", "evmem.c")]
FLAGS = ["-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror"]
REL_FLAGS = ["-O2", "-g"]
ASAN_FLAGS = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer",
              "-fno-sanitize-recover=undefined"]
ATTEMPTS = 3                  # ALERTS_NOTIFY_ATTEMPTS
# A blocked loop would stall at least as long as a hanging command's
# timeout (1500 ms) or the slow webhook's answer (1 s); a loaded machine
# running three sanitizer sessions side by side showed gaps of 264 ms.
MAX_LOOP_GAP_MS = 800
SLACK_TOKEN = "XoXoSecretWebhookToken"
SMTP_USER, SMTP_PASSWORD = "alerts", "smtp-pass-Zq9v"


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("alerts_driver") / "alerts_driver")
    pkg = subprocess.run(["pkg-config", "--cflags", "--libs", "libevent", "libevent_openssl", "openssl", "libcurl", "jansson",
                          "yaml-0.1", "hiredis"],
                         capture_output=True, text=True, check=True).stdout.split()
    cmd = (["gcc"] + FLAGS + (ASAN_FLAGS if SANITIZED else REL_FLAGS)
           + SRC_IQUOTE + SOURCES + pkg + ["-lm", "-o", out])
    r = build_driver(cmd, out)   # once per make test (conftest)
    assert r.returncode == 0, r.stderr
    return out


def run_driver(driver, *args):
    """Runs the driver; returns (its JSON report, its log)."""
    r = subprocess.run([driver, *args], capture_output=True, text=True, env=proc_env(),
                       timeout=40)
    assert r.returncode == 0, "driver failed (%d): %s" % (r.returncode, r.stderr)
    return json.loads(r.stdout), r.stderr


class Receiver:
    """HTTP receiver: records every POST. /fail answers 500, /slow answers
    200 after a second, anything else 200."""

    def __init__(self):
        self.posts = []
        recv = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                recv.posts.append({"path": self.path, "body": body,
                                   "headers": {k.lower(): v for k, v in self.headers.items()}})
                code = 200
                if self.path.startswith("/fail"):
                    code = 500
                elif self.path.startswith("/slow"):
                    time.sleep(1)
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def on(self, path):
        return [p for p in self.posts if p["path"] == path]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class SmtpSink:
    """Just enough ESMTP to take mail: EHLO (advertising AUTH PLAIN), AUTH,
    MAIL, RCPT, DATA (dot-unstuffed), RSET, NOOP, QUIT."""

    def __init__(self, user, password):
        self.messages = []
        self.auth = (user, password)
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                sink.session(self.rfile, self.wfile)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = "smtp://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def session(self, rfile, wfile):
        def say(*lines):
            for i, line in enumerate(lines):
                sep = " " if i == len(lines) - 1 else "-"
                wfile.write(("%s%s%s\r\n" % (line[:3], sep, line[4:])).encode())
            wfile.flush()

        say("220 sink ESMTP")
        authed, env = None, {"from": None, "rcpt": []}
        while True:
            raw = rfile.readline()
            if not raw:
                return
            cmd = raw.decode("utf-8", "replace").rstrip("\r\n")
            up = cmd.upper()
            if up.startswith("EHLO"):
                say("250 sink", "250 AUTH PLAIN", "250 8BITMIME")
            elif up.startswith("HELO"):
                say("250 sink")
            elif up.startswith("AUTH PLAIN"):
                parts = cmd.split(" ")
                if len(parts) < 3:
                    say("334 ")
                    parts.append(rfile.readline().decode().strip())
                fields = base64.b64decode(parts[2]).split(b"\0")
                authed = (fields[1].decode(), fields[2].decode())
                say("235 ok" if authed == self.auth else "535 denied")
            elif up.startswith("MAIL FROM:"):
                env = {"from": cmd[len("MAIL FROM:"):].split(" ")[0], "rcpt": []}
                say("250 ok")
            elif up.startswith("RCPT TO:"):
                env["rcpt"].append(cmd[len("RCPT TO:"):].split(" ")[0])
                say("250 ok")
            elif up == "DATA":
                say("354 end with .")
                lines = []
                while True:
                    line = rfile.readline()
                    if not line:
                        return
                    if line in (b".\r\n", b".\n"):
                        break
                    lines.append(line[1:] if line.startswith(b"..") else line)
                self.messages.append({"from": env["from"], "rcpt": env["rcpt"],
                                      "auth": authed, "data": b"".join(lines)})
                env = {"from": None, "rcpt": []}
                say("250 queued")
            elif up in ("RSET", "NOOP"):
                say("250 ok")
            elif up == "QUIT":
                say("221 bye")
                return
            else:
                say("502 unknown command")

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def smtp_sink():
    s = SmtpSink(SMTP_USER, SMTP_PASSWORD)
    yield s
    s.stop()


def test_webhook_json_and_slack(driver, receiver):
    slack_path = "/services/T000/B000/" + SLACK_TOKEN
    report, log = run_driver(driver, "--webhook", receiver.url + "/hook",
                             "--slack", receiver.url + slack_path)
    assert report["events"] == 2 and report["pending"] == 0
    assert report["sent"]["webhook"] == 2 and report["sent"]["slack"] == 2
    assert report["failed"] == {"webhook": 0, "slack": 0, "command": 0, "email": 0}

    hooks = receiver.on("/hook")
    assert len(hooks) == 2, receiver.posts
    for p in hooks + receiver.on(slack_path):
        assert p["headers"]["content-type"] == "application/json"
    fire, resolve = (json.loads(p["body"]) for p in hooks)
    assert fire["alert"] == "availability" and fire["state"] == "firing"
    assert fire["scope"] == "host" and fire["host"] == "gpu-a"
    assert fire["value"] == 0 and fire["threshold"] == 0.9 and fire["unit"] == "ratio"
    assert fire["samples"] == 10 and fire["window_seconds"] == 10
    assert fire["since"] == "2023-11-14T22:13:20Z"
    assert "[FIRING] availability on host gpu-a" in fire["summary"]
    assert resolve["state"] == "resolved" and resolve["host"] == "gpu-a"
    assert resolve["value"] is None            # the window emptied
    assert resolve["since"] == fire["since"] and resolve["at_unix"] > fire["at_unix"]

    slack = [json.loads(p["body"]) for p in receiver.on(slack_path)]
    assert len(slack) == 2
    assert slack[0]["text"].startswith("[FIRING] availability on host gpu-a")
    assert slack[1]["text"].startswith("[RESOLVED] availability on host gpu-a")
    att = slack[0]["attachments"][0]
    assert att["color"] == "danger" and slack[1]["attachments"][0]["color"] == "good"
    assert {f["title"] for f in att["fields"]} == {"Value", "Threshold", "Scope", "Since"}
    assert all(isinstance(f["value"], str) and isinstance(f["short"], bool)
               for f in att["fields"])
    assert isinstance(att["ts"], int)
    # Slack's webhook URL path is a secret: the log names the host only.
    assert receiver.url in log
    assert SLACK_TOKEN not in log and "/services/" not in log


def test_command_gets_json_on_stdin_and_env(driver, tmp_path):
    script = tmp_path / "notify.sh"
    script.write_text('#!/bin/sh\n'
                      'out="$1"; shift\n'
                      'cat > "$out.$INFERGATE_ALERT_STATE.json"\n'
                      'env | grep "^INFERGATE_ALERT" | sort > "$out.$INFERGATE_ALERT_STATE.env"\n'
                      'for a in "$@"; do printf "%s\\n" "$a"; done > "$out.$INFERGATE_ALERT_STATE.argv"\n')
    script.chmod(0o755)
    prefix = str(tmp_path / "got")
    tricky = ["two words; touch %s/pwned" % tmp_path, "$(touch %s/pwned2)" % tmp_path, "*"]
    report, _ = run_driver(driver, "--command", str(script), prefix, *tricky, "--")
    assert report["sent"]["command"] == 2 and report["failed"]["command"] == 0

    for state in ("firing", "resolved"):
        doc = json.loads(open("%s.%s.json" % (prefix, state)).read())
        assert doc["alert"] == "availability" and doc["state"] == state
        assert doc["host"] == "gpu-a"
        env = dict(line.split("=", 1) for line in open("%s.%s.env" % (prefix, state)).read().splitlines())
        assert env["INFERGATE_ALERT"] == "availability"
        assert env["INFERGATE_ALERT_STATE"] == state
        assert env["INFERGATE_ALERT_SCOPE"] == "host"
        assert env["INFERGATE_ALERT_HOST"] == "gpu-a"
        assert env["INFERGATE_ALERT_THRESHOLD"] == "0.9"
        assert env["INFERGATE_ALERT_SINCE"] == "2023-11-14T22:13:20Z"
        assert env["INFERGATE_ALERT_VALUE"] == ("0" if state == "firing" else "")
        # argv went through verbatim: no shell ever saw it.
        assert open("%s.%s.argv" % (prefix, state)).read().splitlines() == tricky
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


def test_email_via_smtp(driver, smtp_sink):
    report, log = run_driver(driver, "--email", smtp_sink.url,
                             "Infergate Alerts <alerts@example.org>",
                             "ops@example.org,On Call <oncall@example.org>",
                             SMTP_USER, SMTP_PASSWORD)
    assert report["sent"]["email"] == 2 and report["failed"]["email"] == 0
    assert len(smtp_sink.messages) == 2
    for m, state in zip(smtp_sink.messages, ("FIRING", "RESOLVED")):
        assert m["auth"] == (SMTP_USER, SMTP_PASSWORD)
        assert m["from"] == "<alerts@example.org>"
        assert m["rcpt"] == ["<ops@example.org>", "<oncall@example.org>"]
        msg = email.message_from_bytes(m["data"], policy=email.policy.default)
        assert msg["Subject"] == "[infergate] %s: availability on gpu-a" % state
        assert msg["From"] == "Infergate Alerts <alerts@example.org>"
        assert "ops@example.org" in msg["To"] and "oncall@example.org" in msg["To"]
        assert email.utils.parsedate_to_datetime(msg["Date"]).year >= 2023
        assert msg["Message-ID"].startswith("<") and msg["Message-ID"].endswith("@infergate>")
        assert msg.get_content_type() == "text/plain"
        body = msg.get_content()
        assert body.startswith("[%s] availability on host gpu-a" % state)
        doc = json.loads(body[body.index("{"):])
        assert doc["state"] == state.lower() and doc["host"] == "gpu-a"
        # RFC 5322: CRLF line ends, no line over 998 octets.
        assert b"\n" not in m["data"].replace(b"\r\n", b"")
        assert max(len(line) for line in m["data"].split(b"\r\n")) <= 998
    assert smtp_sink.messages[0]["data"] != smtp_sink.messages[1]["data"]
    assert SMTP_PASSWORD not in log


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_failing_receivers_are_retried_then_given_up(driver, receiver, tmp_path):
    counter = tmp_path / "count.sh"
    counter.write_text('#!/bin/sh\ncat >/dev/null\necho run >> "$1"\nexit 1\n')
    counter.chmod(0o755)
    hang = tmp_path / "hang.sh"
    hang.write_text('#!/bin/sh\nsleep 30 &\necho $! >> "$1"\necho $$ >> "$1"\nwait\n')
    hang.chmod(0o755)
    runs, pids = tmp_path / "runs", tmp_path / "pids"
    closed = free_port()

    t0 = time.monotonic()
    report, log = run_driver(
        driver, "--fire-only", "--timeout", "1500",
        "--webhook", receiver.url + "/fail",
        "--webhook", "http://127.0.0.1:%d/refused" % closed,
        "--command", str(counter), str(runs), "--",
        "--command", str(hang), str(pids), "--",
        "--command", str(tmp_path / "no-such-command"), "--",
        "--timeout", "5000",
        "--webhook", receiver.url + "/slow")
    elapsed = time.monotonic() - t0

    assert report["events"] == 1 and report["pending"] == 0
    assert report["sent"]["webhook"] == 1                      # /slow, after 1 s
    assert report["failed"]["webhook"] == 2
    assert report["retried"]["webhook"] == 2 * (ATTEMPTS - 1)
    assert report["failed"]["command"] == 3
    assert report["retried"]["command"] == 3 * (ATTEMPTS - 1)
    assert len(receiver.on("/fail")) == ATTEMPTS
    assert len(receiver.on("/slow")) == 1
    assert runs.read_text().splitlines() == ["run"] * ATTEMPTS
    # Each hanging run was killed at its timeout, its own child with it.
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 2 * ATTEMPTS
    wait_for(lambda: not any(alive(p) for p in started), timeout=5, what="killed commands gone")
    # Backoff 1 s then 2 s between the three attempts, each hanging attempt
    # killed after 1.5 s; nothing waits longer.
    assert 3.0 <= elapsed < 20
    # The loop never stalled while receivers were slow or hanging.
    assert report["max_gap_ms"] < MAX_LOOP_GAP_MS, report
    assert log.count("giving up after %d attempts" % ATTEMPTS) == 5
    assert "timed out after 1500 ms" in log
    assert "exit status 1" in log
