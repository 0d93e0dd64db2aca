"""Redis high availability for the shared state (src/app/session_redis.c):
Sentinel discovery and failover, Redis 6 ACL users, refused credentials.

Real processes on loopback: redis-server (a master and its replica),
three redis-sentinel, the gateway (two replicas) and the C mock upstreams.
Every process started here is killed at teardown, also when a test fails.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import (INFERGATE_BIN, SANITIZED, free_port, http_request, hosts_of,
                      proc_env, spawn, wait_for, write_conf)

REDIS = shutil.which("redis-server")
SENTINEL = shutil.which("redis-sentinel")
pytestmark = pytest.mark.skipif(REDIS is None or SENTINEL is None,
                                reason="redis-server and redis-sentinel are needed"
                                       " (scripts/deps.sh installs them)")

MASTER = "igmaster"
TIMEOUT_S = 0.2                       # sessions.redis.timeout of the gateways
SLACK_S = 3.0 if SANITIZED else 1.0   # polling, scheduling, a slow build
SENTINEL_PW = "sentinel-pw-Kq7-not-for-logs"
ACL_PW = "acl-pw-Vb3-not-for-logs"
KEYS = [{"key": "sk-ha-cooling-key-0001", "description": "cools"},
        {"key": "sk-ha-good-key-00000002", "description": "good"}]


# ---------------------------------------------------------------- RESP client
def _read(f):
    line = f.readline()
    if not line:
        raise ConnectionError("closed")
    t, rest = line[:1], line[1:-2]
    if t == b"+":
        return rest.decode()
    if t == b"-":
        return RuntimeError(rest.decode())
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode()
    if t == b"*":
        n = int(rest)
        return None if n < 0 else [_read(f) for _ in range(n)]
    raise ValueError(line)


def resp(port, *cmds, timeout=2):
    """Sends each command (a tuple) on one connection; the last answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        f = s.makefile("rb")
        out = None
        for cmd in cmds:
            buf = b"*%d\r\n" % len(cmd)
            for a in cmd:
                a = str(a).encode()
                buf += b"$%d\r\n%s\r\n" % (len(a), a)
            s.sendall(buf)
            out = _read(f)
        return out


def try_resp(port, *cmds):
    try:
        return resp(port, *cmds, timeout=1)
    except (OSError, ConnectionError):
        return None


# ---------------------------------------------------------------- processes
class Server:
    """redis-server or redis-sentinel with a config file in its own dir;
    restartable on the same port with the file as it rewrote it."""

    def __init__(self, exe, d, lines, auth=None):
        self.exe, self.dir, self.auth = exe, d, auth
        self.port = free_port()
        os.makedirs(d, exist_ok=True)
        self.conf = os.path.join(d, "server.conf")
        with open(self.conf, "w") as f:
            f.write("port %d\nbind 127.0.0.1\ndir %s\nsave \"\"\nappendonly no\n"
                    % (self.port, d) + "".join(l + "\n" for l in lines))
        self.proc = None

    def start(self):
        self.log = open(os.path.join(self.dir, "server.log"), "a")
        self.proc = spawn([self.exe, self.conf], stdout=self.log,
                          stderr=subprocess.STDOUT)
        wait_for(lambda: self.cmd("PING") is not None, timeout=15,
                 what="%s on %d" % (os.path.basename(self.exe), self.port))

    def cmd(self, *args):
        pre = [("AUTH", self.auth)] if self.auth else []
        return try_resp(self.port, *pre, tuple(args))

    def kill(self):
        if self.proc.poll() is None:      # also when paused
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait()
        self.log.close()


@pytest.fixture
def servers(tmp_path):
    started = []

    def make(exe, name, lines, auth=None):
        started.append(Server(exe, str(tmp_path / name), lines, auth))
        started[-1].start()             # killed at teardown even if this fails
        return started[-1]

    yield make
    for s in started:
        if s.proc is not None:
            s.kill()


class Load:
    """Steady client traffic on gateways, streamed and not; counts failures."""

    def __init__(self, gateways):
        self.stop_ev = threading.Event()
        self.go = threading.Event()
        self.go.set()
        self.busy = 0
        self.ok = 0
        self.failed = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(g, stream), daemon=True)
                        for g in gateways for stream in (False, True)]
        for t in self.threads:
            t.start()

    def run(self, g, stream):
        body = {"model": "mock-model", "stream": stream,
                "messages": [{"role": "user", "content": "hi"}]}
        while not self.stop_ev.is_set():
            if not self.go.wait(0.05):
                continue
            with self.lock:
                self.busy += 1
            try:
                st, _, data = http_request(g.port, "POST", "/v1/chat/completions", body)
                good = st == 200 and (not stream or b"[DONE]" in data)
            except OSError as e:
                st, data, good = -1, str(e).encode(), False
            with self.lock:
                self.busy -= 1
                if good:
                    self.ok += 1
                else:
                    self.failed.append((g.port, stream, st, data[:200]))
            time.sleep(0.01)

    def pause(self):
        """No new request until resume(); returns once none is in flight."""
        self.go.clear()
        wait_for(lambda: self.busy == 0, timeout=60, what="load to pause")

    def resume(self):
        self.go.set()

    def count(self):
        with self.lock:
            return self.ok

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(60)


def status(g):
    return json.loads(g.request("GET", "/status")[2])


def redis_status(g):
    return status(g)["sessions"]["redis"]


def metric(g, name):
    for line in g.request("GET", "/metrics")[2].decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def sentinel_conf(master_port):
    return ["sentinel monitor %s 127.0.0.1 %d 2" % (MASTER, master_port),
            "sentinel down-after-milliseconds %s 500" % MASTER,
            "sentinel failover-timeout %s 3000" % MASTER,
            "requirepass %s" % SENTINEL_PW,
            "sentinel sentinel-pass %s" % SENTINEL_PW]


def sentinel_policies(sentinels, extra=""):
    return ("sessions:\n  store: redis\n  redis:\n"
            "    sentinels: [%s]\n    master_name: %s\n    sentinel_password: %s\n"
            "    prefix: \"ha:\"\n    timeout: 200ms\n"
            % (", ".join('"127.0.0.1:%d"' % s.port for s in sentinels), MASTER, SENTINEL_PW)
            + "retry:\n  backoff: {initial: 1ms}\n"
            "circuit_breaker:\n  failure_threshold: 1\n  reset_timeout: 60s\n" + extra)


def chat_id(g):
    st, h, body = g.chat()
    assert st == 200, body
    return json.loads(body)["id"], h["x-upstream-host"]


def test_sentinel_failover_under_load(mocks, gateway, servers):
    ms = mocks(3)
    master = servers(REDIS, "master", [])
    replica = servers(REDIS, "replica", ["replicaof 127.0.0.1 %d" % master.port])
    wait_for(lambda: "master_link_status:up" in (replica.cmd("INFO", "replication") or ""),
             timeout=15, what="replication")
    sents = [servers(SENTINEL, "sentinel%d" % i, sentinel_conf(master.port), SENTINEL_PW)
             for i in range(3)]

    def sentinels_ready():
        for s in sents:
            m = s.cmd("SENTINEL", "master", MASTER)
            if not isinstance(m, list):
                return False
            d = dict(zip(m[::2], m[1::2]))
            if d.get("num-other-sentinels") != "2" or d.get("num-slaves") != "1":
                return False
        return True
    wait_for(sentinels_ready, timeout=30, interval=0.2, what="sentinels to know each other")

    pol = sentinel_policies(sents)
    g1 = gateway(hosts_of(ms), KEYS, policies=pol)
    g2 = gateway(hosts_of(ms), KEYS, policies=pol)
    old = "127.0.0.1:%d" % master.port
    new = "127.0.0.1:%d" % replica.port
    for g in (g1, g2):
        wait_for(lambda: redis_status(g)["state"] == "up", timeout=15, what="redis up")
        rs = redis_status(g)
        assert rs["master"] == old and "sentinel 127.0.0.1:" in rs["found_by"], rs
        assert rs["sentinel"]["master_name"] == MASTER
        wait_for(lambda: redis_status(g)["sentinel"]["watching"], timeout=10,
                 what="+switch-master watched")
        assert metric(g, "infergate_redis_failovers_followed_total") == 0

    # a session recorded on g1 before the failover, and replicated
    rid, served = chat_id(g1)
    wait_for(lambda: replica.cmd("GET", "ha:rid:" + rid) == served, timeout=10,
             what="the session on the replica")

    load = Load([g1, g2])
    try:
        wait_for(lambda: load.count() > 20, timeout=30, what="load")
        master.kill()
        t_kill = time.monotonic()

        def promoted():
            for s in sents:
                a = s.cmd("SENTINEL", "get-master-addr-by-name", MASTER)
                if isinstance(a, list) and a[1] == str(replica.port):
                    return True
            return False
        wait_for(promoted, timeout=30, interval=0.02, what="sentinels to promote the replica")
        t_promoted = time.monotonic()
        moves = []
        for g in (g1, g2):
            wait_for(lambda: (lambda r: r["state"] == "up" and r["master"] == new)(
                redis_status(g)), timeout=30, interval=0.02, what="gateway on the new master")
            moved = time.monotonic() - t_promoted
            assert moved <= TIMEOUT_S + SLACK_S, (moved, redis_status(g))
            moves.append(moved)
            rs = redis_status(g)
            assert rs["failovers_followed"] == 1, rs
            assert metric(g, "infergate_redis_failovers_followed_total") == 1
        assert replica.cmd("ROLE")[0] == "master"
        failover_s = t_promoted - t_kill

        # the session recorded before the failover still routes to its host
        st, vh, body = g2.request("POST", "/v1/verify", {"id": rid})
        assert st == 200 and vh["x-upstream-host"] == served, (st, body)
        # new sessions are shared through the new master
        rid2, served2 = chat_id(g2)
        st, vh, _ = g1.request("POST", "/v1/verify", {"id": rid2})
        assert st == 200 and vh["x-upstream-host"] == served2
        assert replica.cmd("GET", "ha:rid:" + rid2) == served2

        # Shared advice continues through the new master. The load pauses so
        # that g2 learns from g1 only, never from its own requests.
        load.pause()
        # a key cooling on g1 is cooling on g2
        for m in ms:
            m.config(fail_keys={KEYS[0]["key"]: 429}, retry_after=60)
        wait_for(lambda: g1.chat()[0] == 200 and {k["description"]: k["state"] for k in
                 status(g1)["keys"]}["cools"] == "cooling", timeout=15, what="cooling on g1")
        wait_for(lambda: {k["description"]: k["state"] for k in status(g2)["keys"]}["cools"]
                 == "cooling", timeout=10, what="shared cooldown after the failover")
        # g1's breaker for m0 opens; g2 sends m0 nothing without trying it itself
        received = status(g2)["sessions"]["shared_received"]
        ms[0].config(drop=True)

        def opened_on_1():
            g1.chat()
            return any(h["name"] == "m0" and h["breaker"] == "open" for h in status(g1)["hosts"])
        wait_for(opened_on_1, timeout=15, what="g1's breaker for m0")
        wait_for(lambda: status(g2)["sessions"]["shared_received"] > received, timeout=10,
                 what="the breaker advice on g2")
        before = ms[0].stats()["requests"]
        for _ in range(9):
            assert g2.chat()[0] == 200
        assert ms[0].stats()["requests"] == before
        ms[0].config(drop=False)
        load.resume()

        # pause the watched sentinel, then kill them all and restart them
        watched = redis_status(g1)["sentinel"]["watched"]
        paused = next(s for s in sents if "127.0.0.1:%d" % s.port == watched)
        paused.proc.send_signal(signal.SIGSTOP)
        n = load.count()
        wait_for(lambda: load.count() > n + 20, timeout=30, what="load while paused")
        for s in sents:
            s.kill()
        for g in (g1, g2):
            wait_for(lambda: not redis_status(g)["sentinel"]["watching"], timeout=10,
                     what="the watch lost")
            assert redis_status(g)["state"] == "up"         # the master is still there
        n = load.count()
        wait_for(lambda: load.count() > n + 20, timeout=30, what="load without sentinels")
        for s in sents:
            s.start()
        for g in (g1, g2):
            wait_for(lambda: redis_status(g)["sentinel"]["watching"], timeout=20,
                     what="watching again")
            assert redis_status(g)["state"] == "up" and redis_status(g)["master"] == new
        n = load.count()
        wait_for(lambda: load.count() > n + 20, timeout=30, what="load after")
    finally:
        load.stop()
    assert load.failed == [], load.failed[:5]
    print("failover: %.2f s from kill to promotion; gateways on the new master %s s after it;"
          " %d requests, none failed" % (failover_s, ["%.3f" % m for m in moves], load.ok))
    for g in (g1, g2):
        out = g.output()
        assert "+switch-master" in out and "failover followed" in out
        assert out.count("no sentinel to watch for +switch-master") == 1, out[-3000:]
        assert "watching +switch-master again" in out
        assert SENTINEL_PW not in out and SENTINEL_PW not in json.dumps(status(g))


def acl_server(servers):
    return servers(REDIS, "acl", [
        "user default off",
        "user infergate on >%s ~acl:* &acl:* -@all +get +set +mget +sadd +srem"
        " +smembers +publish +subscribe +ping +select" % ACL_PW])


def start_gateway_raw(conf_dir, env=None):
    """The gateway binary, for a start that must fail: (rc, output)."""
    p = subprocess.run([INFERGATE_BIN, "-c", conf_dir, "-l", "127.0.0.1:%d" % free_port()],
                       capture_output=True, text=True, timeout=60,
                       env=dict(proc_env(), **(env or {})))
    return p.returncode, p.stdout + p.stderr


def acl_policies(port, user="infergate", pw=ACL_PW, url=None):
    if url:
        return ("sessions:\n  store: redis\n  redis: {url: \"%s\", prefix: \"acl:\"}\n" % url)
    return ("sessions:\n  store: redis\n  redis:\n    url: redis://127.0.0.1:%d/0\n"
            "    username: %s\n    password: %s\n    prefix: \"acl:\"\n" % (port, user, pw))


def test_acl_user_with_limited_commands(mocks, gateway, servers):
    ms = mocks(2)
    rs = acl_server(servers)
    g1 = gateway(hosts_of(ms), policies=acl_policies(rs.port))
    g2 = gateway(hosts_of(ms), policies=acl_policies(
        rs.port, url="redis://infergate:%s@127.0.0.1:%d/0" % (ACL_PW, rs.port)))
    for g in (g1, g2):
        wait_for(lambda: redis_status(g)["state"] == "up", timeout=15, what="ACL user up")
    for _ in range(5):
        rid, served = chat_id(g1)
        st, vh, _ = g2.request("POST", "/v1/verify", {"id": rid})
        assert st == 200 and vh["x-upstream-host"] == served
    wait_for(lambda: len(status(g1)["sessions"]["replicas"]) == 2, timeout=10,
             what="replica registry through the ACL user")
    for g in (g1, g2):
        assert redis_status(g)["errors"] == 0, redis_status(g)
        assert "infergate:***@" in redis_status(g)["url"]
        assert ACL_PW not in json.dumps(status(g))
        assert ACL_PW not in g.request("GET", "/metrics")[2].decode()
        assert ACL_PW not in g.output()


def test_wrong_password_fails_start_and_reload(mocks, gateway, servers, tmp_path):
    ms = mocks(1)
    rs = acl_server(servers)
    wrong = "wrong-" + ACL_PW
    # start-up: a clear error, the process exits, no secret in the output
    d = str(tmp_path / "bad")
    write_conf(d, hosts_of(ms), policies=acl_policies(rs.port, pw=wrong))
    rc, out = start_gateway_raw(d)
    assert rc == 1, out
    assert "refused the credentials of user infergate" in out and "WRONGPASS" in out, out
    assert "policies.yaml" in out and wrong not in out and ACL_PW not in out
    # same in the url
    write_conf(d, hosts_of(ms), policies=acl_policies(
        rs.port, url="redis://infergate:%s@127.0.0.1:%d/0" % (wrong, rs.port)))
    rc, out = start_gateway_raw(d)
    assert rc != 0 and "refused the credentials" in out and wrong not in out, out
    # no password for a server that wants one
    write_conf(d, hosts_of(ms), policies=acl_policies(
        rs.port, url="redis://127.0.0.1:%d/0" % rs.port))
    rc, out = start_gateway_raw(d)
    assert rc != 0 and "wants a password" in out, out
    # an unreachable Redis is no reason not to start (memory until it is back)
    g0 = gateway(hosts_of(ms), policies=acl_policies(free_port()))
    assert g0.chat()[0] == 200

    # reload: rejected with the reason, the running settings stay
    g = gateway(hosts_of(ms), policies=acl_policies(rs.port))
    wait_for(lambda: redis_status(g)["state"] == "up", timeout=15, what="redis up")
    write_conf(g.conf_dir, hosts_of(ms), policies=acl_policies(rs.port, pw=wrong))
    g.signal(signal.SIGHUP)
    wait_for(lambda: status(g)["last_reload"]["ok"] is False, timeout=15, what="reload rejected")
    st = status(g)
    assert st["generation"] == 1
    assert any("refused the credentials" in e for e in st["last_reload"]["errors"]), st
    assert redis_status(g)["state"] == "up"
    assert wrong not in json.dumps(st) and wrong not in g.output()
    assert "reload rejected" in g.output()


def _heredoc(script, tag):
    lines = script.split("\n")
    start = next(i for i, l in enumerate(lines) if l.endswith("<<" + tag))
    end = lines.index(tag, start + 1)
    return lines[start + 1:end]


def test_compose_sentinel_example_works(mocks, gateway, servers, tmp_path):
    """packaging/docker/compose.sentinel.yaml, run with processes instead of
    containers: its ACL users, replica and sentinel settings, and the
    replicas' conf-sentinel/policies.yaml."""
    import yaml
    docker = os.path.join(os.path.dirname(__file__), "..", "..", "packaging", "docker")
    with open(os.path.join(docker, "compose.sentinel.yaml")) as f:
        compose = yaml.safe_load(f)
    svc = compose["services"]
    assert {"redis", "redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"} <= set(svc)
    pw, spw = "compose-redis-pw-1", "compose-sentinel-pw-2"
    sub = lambda l: l.replace("$$REDIS_PASSWORD", pw).replace("$$SENTINEL_PASSWORD", spw)
    acl = str(tmp_path / "users.acl")
    with open(acl, "w") as f:
        f.write("\n".join(sub(l) for l in _heredoc(svc["redis"]["command"][2], "ACL")) + "\n")
    common = ["aclfile %s" % acl, "masteruser replicator", "masterauth %s" % pw]
    master = servers(REDIS, "cmaster", common)
    replica = servers(REDIS, "creplica", common + ["replicaof 127.0.0.1 %d" % master.port])
    wait_for(lambda: "master_link_status:up" in _info(replica.port, pw),
             timeout=15, what="replication as user replicator")
    sconf = []
    for l in _heredoc(svc["sentinel-1"]["command"][2], "CONF"):
        l = sub(l)
        if l.startswith("port "):
            continue
        if l.startswith("sentinel monitor"):
            l = "sentinel monitor infergate 127.0.0.1 %d 1" % master.port
        sconf.append(l)
    sent = servers(SENTINEL, "csentinel", sconf, auth=spw)

    def sentinel_sees_both():
        m = sent.cmd("SENTINEL", "master", "infergate")
        if not isinstance(m, list):
            return False
        d = dict(zip(m[::2], m[1::2]))
        return d.get("flags") == "master" and d.get("num-slaves") == "1"
    wait_for(sentinel_sees_both, timeout=20, interval=0.1, what="the sentinel (user sentinel)")

    with open(os.path.join(docker, "conf-sentinel", "policies.yaml")) as f:
        pol = f.read()
    want = '["sentinel-1:26379", "sentinel-2:26379", "sentinel-3:26379"]'
    assert want in pol
    pol = pol.replace(want, '["127.0.0.1:%d"]' % sent.port)
    ms = mocks(2)
    env = {"REDIS_PASSWORD": pw, "SENTINEL_PASSWORD": spw, "INFERGATE_ADMIN_TOKEN": "t0ken"}
    g = gateway(hosts_of(ms), policies=pol, env=env)
    wait_for(lambda: redis_status(g)["state"] == "up", timeout=15, what="redis up")
    rs = redis_status(g)
    assert rs["master"] == "127.0.0.1:%d" % master.port and rs["errors"] == 0, rs
    st, h, body = g.chat()
    assert st == 200, body
    rid = json.loads(body)["id"]
    wait_for(lambda: _get(replica.port, pw, "infergate:rid:" + rid) == h["x-upstream-host"],
             timeout=10, what="the session on the replica")
    assert pw not in g.output() and spw not in g.output()
    # a sentinel password the sentinels refuse stops the start, clearly
    d = str(tmp_path / "badsentinel")
    write_conf(d, hosts_of(ms), policies=pol)
    rc, out = start_gateway_raw(d, dict(env, SENTINEL_PASSWORD="wrong-" + spw))
    assert rc == 1 and "sessions.redis.sentinel_password: sentinel 127.0.0.1:%d refused it" \
        % sent.port in out, out
    assert spw not in out


def _info(port, pw):
    """INFO replication, as the compose file's sentinel user (it has +info)."""
    r = try_resp(port, ("AUTH", "sentinel", pw), ("INFO", "replication"))
    return r if isinstance(r, str) else ""


def _get(port, pw, key):
    return try_resp(port, ("AUTH", "infergate", pw), ("GET", key))


def test_a_replica_is_never_used(mocks, gateway, servers):
    """A url naming a replica: ROLE says so, the gateway does not use it (no
    write ever reaches a replica) and serves sessions from memory."""
    ms = mocks(2)
    master = servers(REDIS, "rmaster", [])
    replica = servers(REDIS, "rreplica", ["replicaof 127.0.0.1 %d" % master.port])
    g = gateway(hosts_of(ms), policies="sessions:\n  store: redis\n  redis: {url: \"redis://"
                "127.0.0.1:%d/0\", prefix: \"rep:\"}\n" % replica.port)
    wait_for(lambda: "not the master: ROLE says: slave" in redis_status(g)["last_error"],
             timeout=15, what="the replica refused")
    for _ in range(5):
        rid, served = chat_id(g)
        st, vh, _ = g.request("POST", "/v1/verify", {"id": rid})
        assert st == 200 and vh["x-upstream-host"] == served
    assert redis_status(g)["state"] != "up" and redis_status(g)["connects"] == 0
    assert master.cmd("DBSIZE") == 0
    assert "not the master" in g.output()
