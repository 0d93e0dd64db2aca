"""Session store on a real redis-server (src/app/session.c, src/app/session_redis.c).

The gateway does not use the session store yet, so these tests drive it
through tests/session_driver/session_driver.c: one process, one event loop,
several `struct session` acting as replicas, commands on stdin, one answer
line each on stdout, the log on stderr. The driver is compiled here (with
ASan+UBSan when INFERGATE_SANITIZED=1). redis-server runs on a free loopback
port, and is killed, restarted, paused and resumed by the tests.
"""
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import ROOT, SANITIZED, SRC_IQUOTE, free_port, proc_env, spawn, src_path, wait_for
from conftest import build_driver

REDIS = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed")

TIMEOUT_MS = 200            # sessions.redis.timeout given to every session
TTL_MS = 60000
SLACK_MS = 600 if SANITIZED else 300
UP_MS = 6000                # reconnect backoff tops out at 2 s
SECRET = "pw-Zq81-not-for-logs"
RACE_ROUNDS = 1000


class Redis:
    """A redis-server on a fixed loopback port, restartable on that port."""

    def __init__(self, *args):
        self.port = free_port()
        self.args = args
        self.proc = None
        self.start()

    def start(self):
        self.proc = spawn(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._answers, timeout=10, what="redis-server to listen")

    def _answers(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                data = s.recv(64)
                return data.startswith(b"+PONG") or data.startswith(b"-NOAUTH")
        except OSError:
            return False

    def command(self, *args):
        """One command on a fresh connection; the raw RESP answer."""
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a.encode() if isinstance(a, str) else a
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(out)
            return s.recv(65536)

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()

    def url(self, password=None, db=0):
        auth = ":%s@" % password if password else ""
        return "redis://%s127.0.0.1:%d/%d" % (auth, self.port, db)


class Driver:
    """The session driver process; send() returns its one answer line."""

    def __init__(self, binary, log_path):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = spawn([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, env=proc_env(), text=True, bufsize=1)
        assert self.readline(10) == "ready"

    def readline(self, timeout):
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            raise AssertionError("driver gave no answer within %ss; log:\n%s"
                                 % (timeout, self.output()))
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError("driver exited (%s); log:\n%s" % (self.proc.poll(), self.output()))
        return line.rstrip("\n")

    def send(self, cmd, timeout=15):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.readline(timeout)

    def json(self, cmd):
        return json.loads(self.send(cmd))

    def new(self, name, url, prefix, addr):
        line = self.send("new %s %s %s %d %d %s" % (name, url, prefix, TIMEOUT_MS, TTL_MS, addr))
        assert line.startswith("ok "), line
        return line.split()[1]

    def get(self, name, key, kind="rid", now=0):
        """(host or None, ms, answered synchronously)"""
        line = self.send("get %s %s %s %d" % (name, kind, key, now))
        parts = line.split()
        assert parts[0] == "get" and parts[1] == name, line
        f = dict(p.split("=", 1) for p in parts[2:])
        return (None if f["host"] == "-" else f["host"]), int(f["ms"]), f["sync"] == "1"

    def put(self, name, key, host, kind="rid", now=0):
        assert self.send("put %s %s %s %s %d" % (name, kind, key, host, now)) == "ok"

    def wait(self, name, state, timeout_ms=UP_MS):
        line = self.send("wait %s %s %d" % (name, state, timeout_ms), timeout_ms / 1000 + 10)
        assert line.startswith("ok "), "%s did not get %s: %s\n%s" % (name, state, line,
                                                                      self.output())

    def output(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def close(self):
        if self.proc.poll() is None:
            assert self.send("quit") == "bye"
            self.proc.wait(20)
        self.log.close()
        out = self.output()
        assert "Sanitizer" not in out and "runtime error" not in out, out[-4000:]
        assert self.proc.returncode == 0, (self.proc.returncode, out[-4000:])
        return out


@pytest.fixture(scope="module")
def driver_bin(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("session_driver") / "session_driver")
    pkgs = subprocess.run(["pkg-config", "--cflags", "--libs", "libevent", "jansson", "hiredis"],
                          capture_output=True, text=True, check=True).stdout.split()
    flags = (["-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer",
              "-fno-sanitize-recover=undefined"] if SANITIZED else ["-O2", "-g"])
    src = [src_path(f) for f in ("session.c", "session_mem.c", "session_redis.c", "redis_conn.c",
                                 "replicas.c", "clock.c", "jscan.c", "log.c")] + [
        os.path.join(ROOT, "tests/session_driver/session_driver.c")]
    cmd = (["cc", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror"] + flags
           + SRC_IQUOTE + src + ["-o", out] + pkgs + ["-lm"])
    r = build_driver(cmd, out)   # once per make test (conftest)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture
def redis():
    started = []

    def make(*args):
        started.append(Redis(*args))
        return started[-1]

    yield make
    for r in started:
        r.stop()


@pytest.fixture
def driver(driver_bin, tmp_path):
    d = Driver(driver_bin, str(tmp_path / "driver.log"))
    yield d
    d.close()


def test_two_replicas_share_sessions_advice_and_registry(redis, driver):
    rs = redis()
    a = driver.new("A", rs.url(), "t1:", "127.0.0.1:9001")
    b = driver.new("B", rs.url(), "t1:", "127.0.0.1:9002")
    driver.wait("A", "up")
    driver.wait("B", "up")

    # an id served via A is found via B, through Redis (asynchronous answer)
    driver.put("A", "chatcmpl-1", "host-a")
    host, _, sync = driver.get("B", "chatcmpl-1")
    assert (host, sync) == ("host-a", False)
    driver.put("B", "user-42", "host-b", kind="sticky")
    assert driver.get("A", "user-42", kind="sticky")[0] == "host-b"
    assert driver.get("A", "user-42", kind="rid")[0] is None       # kinds do not mix
    assert driver.get("B", "chatcmpl-unknown")[0] is None
    # read-your-writes across replicas, put on one and at once asked on
    # the other, many times: Redis does not order commands across
    # connections, so this fails without the flush and the second look
    for i in range(RACE_ROUNDS):
        kind = "rid" if i % 2 else "sticky"
        src, dst = ("A", "B") if i % 3 else ("B", "A")
        driver.put(src, "race-%d" % i, "h%d" % i, kind=kind)
        assert driver.get(dst, "race-%d" % i, kind=kind)[0] == "h%d" % i, i
    # stored with the session ttl
    pttl = int(rs.command("PTTL", "t1:rid:chatcmpl-1")[1:].split(b"\r\n")[0])
    assert 0 < pttl <= TTL_MS

    # advice published by one replica reaches the other, not itself
    assert driver.send("pubkey A 0123456789abcdef cooling 30000") == "ok"
    assert driver.send("pubkey A fedcba9876543210 disabled 30000") == "ok"
    assert driver.send("pubbreaker B host-a 30000") == "ok"
    assert driver.send("waitevents B 2 3000").startswith("ok ")
    assert driver.send("waitevents A 1 3000").startswith("ok ")
    ev_b = driver.json("events B")
    assert {(e["type"], e["name"], e["replica"]) for e in ev_b} == {
        ("key_cooling", "0123456789abcdef", a), ("key_disabled", "fedcba9876543210", a)}
    assert all(e["until"] > time.time() * 1000 for e in ev_b)
    assert [(e["type"], e["name"], e["replica"]) for e in driver.json("events A")] == [
        ("breaker_open", "host-a", b)]
    assert 0 < int(rs.command("PTTL", "t1:shared:key_cooling:0123456789abcdef")[1:]
                   .split(b"\r\n")[0]) <= 30000

    # a replica that starts later catches up on the advice still in force
    driver.new("C", rs.url(), "t1:", "127.0.0.1:9003")
    driver.wait("C", "up")
    assert driver.send("waitevents C 3 3000").startswith("ok ")
    assert {e["type"] for e in driver.json("events C")} == {
        "key_cooling", "key_disabled", "breaker_open"}

    # the registry lists every replica with its address and generation
    for name in ("A", "B", "C"):
        assert driver.send("waitreplicas %s 3 5000" % name).startswith("ok "), name
    st = driver.json("status A")
    seen = {r["id"]: r for r in st["replicas"]}
    assert set(seen) == {a, b, driver.json("status C")["replica"]["id"]}
    assert seen[b]["address"] == "127.0.0.1:9002"
    assert seen[b]["generation"] == 1
    assert seen[b]["heartbeat_unix_ms"] >= seen[b]["started_unix_ms"] > 0
    assert st["redis"]["state"] == "up"

    # another prefix is another deployment: nothing shared
    driver.new("D", rs.url(), "other:", "127.0.0.1:9004")
    driver.wait("D", "up")
    assert driver.get("D", "chatcmpl-1")[0] is None
    assert driver.json("events D") == []
    m = driver.json("metrics B")
    assert m["redis_up"] == 1 and m["fallbacks"] == 0 and m["redis_errors"] == 0


def test_redis_killed_then_restarted(redis, driver):
    rs = redis()
    driver.new("A", rs.url(), "t2:", "127.0.0.1:9001")
    driver.new("B", rs.url(), "t2:", "127.0.0.1:9002")
    driver.wait("A", "up")
    driver.wait("B", "up")
    driver.put("A", "r1", "host-1")
    assert driver.get("B", "r1")[0] == "host-1"

    rs.kill()
    driver.wait("A", "down", 3000)
    driver.wait("B", "down", 3000)
    # no Redis: every operation is answered at once from local memory
    driver.put("A", "r2", "host-2")
    host, ms, sync = driver.get("A", "r2")
    assert (host, sync) == ("host-2", True) and ms <= TIMEOUT_MS
    assert driver.get("B", "r1")[0] == "host-1"     # B kept what Redis told it
    assert driver.get("B", "r2")[0] is None         # not shared while Redis is gone
    assert driver.send("pubkey A 0123456789abcdef cooling 30000") == "ok"
    st = driver.json("status A")
    assert st["redis"]["state"] in ("down", "connecting")
    assert st["redis"]["last_error"]
    assert driver.json("metrics A")["fallbacks"] >= 2
    # retries go on quietly: one warning per replica for this outage
    wait_for(lambda: driver.json("metrics A")["redis_errors"] >= 4, timeout=5,
             what="A to retry a few times")
    assert driver.output().count("serving sessions from local memory") == 2

    rs.start()
    driver.wait("A", "up")
    driver.wait("B", "up")
    driver.put("A", "r3", "host-3")
    host, _, sync = driver.get("B", "r3")
    assert (host, sync) == ("host-3", False)
    assert driver.output().count("sharing resumed") == 2
    assert driver.json("metrics A")["redis_reconnects"] == 2
    assert driver.send("waitreplicas B 2 5000").startswith("ok ")


def test_redis_paused_answers_within_timeout(redis, driver):
    rs = redis()
    driver.new("A", rs.url(), "t3:", "127.0.0.1:9001")
    driver.new("B", rs.url(), "t3:", "127.0.0.1:9002")
    driver.wait("A", "up")
    driver.wait("B", "up")
    driver.put("A", "p1", "host-1")

    rs.pause()
    try:
        # Redis accepts nothing and answers nothing: the lookup is answered
        # from memory once sessions.redis.timeout has passed
        host, ms, sync = driver.get("A", "p1")
        assert host == "host-1" and not sync
        assert ms <= TIMEOUT_MS + SLACK_MS, ms
        # ...and A no longer waits for Redis at all
        host, ms, sync = driver.get("A", "p1")
        assert (host, sync) == ("host-1", True) and ms <= 50
        driver.put("A", "p2", "host-2")
        host, ms, _ = driver.get("B", "p2")
        assert host is None and ms <= TIMEOUT_MS + SLACK_MS
        assert driver.json("metrics A")["redis_timeouts"] >= 1
    finally:
        rs.resume()
    driver.wait("A", "up")
    driver.wait("B", "up")
    driver.put("A", "p3", "host-3")
    assert driver.get("B", "p3")[:1] == ("host-3",)


def test_password(redis, driver):
    rs = redis("--requirepass", SECRET)
    driver.new("GOOD", rs.url(SECRET, db=2), "t4:", "127.0.0.1:9001")
    driver.new("BAD", rs.url("wrong-" + SECRET), "t4:", "127.0.0.1:9002")
    driver.wait("GOOD", "up")
    driver.wait("BAD", "down", 3000)
    driver.put("GOOD", "k1", "host-1")
    assert driver.get("GOOD", "k1")[:1] == ("host-1",)
    # wrong password: served from memory, clear reason, secret never shown
    driver.put("BAD", "k2", "host-2")
    host, _, sync = driver.get("BAD", "k2")
    assert (host, sync) == ("host-2", True)
    st = driver.send("status BAD")
    assert "AUTH failed" in json.loads(st)["redis"]["last_error"]
    log = driver.output()
    assert "AUTH failed" in log
    assert "redis://:***@127.0.0.1:%d/2" % rs.port in driver.send("status GOOD")
    for text in (st, log, driver.send("status GOOD"), driver.send("metrics BAD")):
        assert SECRET not in text
    # a bad URL is refused up front, without echoing it
    line = driver.send("new X http://:%s@127.0.0.1:1 t4: 200 1000 a" % SECRET)
    assert line.startswith("err sessions.redis.url") and SECRET not in line
