"""Shared fixtures for the end-to-end tests.

Everything here starts real processes on loopback ports: the gateway binary
($INFERGATE_BIN, default ./infergate), the C mock upstream ($MOCK_BIN,
default build/release/infergate-mock) and, where a test needs it, a real
redis-server. Nothing is mocked at the socket level, and waits poll for a
condition with a deadline instead of sleeping a fixed time.
"""
import http.client
import json
import os
import re
import select
import signal
import socket
import subprocess
import time

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# src/ by layer (the Makefile's LAYERS): drivers built by a test include
# headers the way the gateway does and name sources by file name.
SRC_LAYERS = ("config", "core", "io", "app")
SRC_IQUOTE = [a for layer in SRC_LAYERS for a in ("-iquote", os.path.join(ROOT, "src", layer))]


def src_path(name):
    """src/LAYER/name for a source file of the gateway ("session.c")."""
    for layer in SRC_LAYERS:
        p = os.path.join(ROOT, "src", layer, name)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(f"src/*/{name}")


def src_files():
    """Every source of the gateway but main.c, by layer."""
    import glob
    return sorted(f for layer in SRC_LAYERS
                  for f in glob.glob(os.path.join(ROOT, "src", layer, "*.c")))
INFERGATE_BIN = os.path.abspath(os.path.join(ROOT, os.environ.get("INFERGATE_BIN", "infergate")))
MOCK_BIN = os.path.abspath(os.path.join(ROOT, os.environ.get("MOCK_BIN", "build/release/infergate-mock")))
SANITIZED = os.environ.get("INFERGATE_SANITIZED") == "1"
SAN_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=23",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:exitcode=23",
}


def fresh_window(margin=12):
    """Waits for a new minute when fewer than `margin` s are left in this
    one: the clients' rpm/tpm windows (limits.window, 60 s) are aligned on
    the clock, so counts made across a minute's end start again."""
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.05)


def wait_for(cond, timeout=10.0, interval=0.01, what="condition"):
    """Polls cond() until it returns a truthy value; fails after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(interval)


def _port_range():
    m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", os.environ.get("INFERGATE_TEST_PORTS", ""))
    if not m or not 1024 <= int(m.group(1)) < int(m.group(2)) <= 65535:
        return None
    return int(m.group(1)), int(m.group(2))


# INFERGATE_TEST_PORTS=LO-HI: free_port() hands out ports of that range
# only. make test runs its e2e sessions side by side, each with its own
# range below the kernel's ephemeral one (ip_local_port_range), so a port
# one session picked is never picked, nor bound by a connect() or a mock's
# port 0, by another before its server binds it (with server.workers > 1
# the gateway binds with SO_REUSEPORT: two could even share a port).
# Within the range, ports go round in order from a random start, so this
# session reuses none before it went round. Unset: the kernel's choice.
_PORTS = _port_range()
_next_port = None


def build_driver(cmd, out):
    """subprocess.run(cmd) for a compiler command that writes `out` (a
    test's driver), built once for a given command and inputs: a second
    session of the same make test (the ASan and the TSan runs build the
    same ASan drivers), or a later run, copies the one in
    build/e2e-drivers/. The key: the command but `out`, the contents of
    every file it names (sources, objects) and of the headers in src/ and
    beside its sources. A command naming a file out of the tree (a source
    the test wrote) runs as it is. Returns the compiler's CompletedProcess
    (text)."""
    import fcntl
    import glob
    import hashlib
    import shutil
    files = sorted({os.path.abspath(a) for a in cmd if a != out and os.path.isfile(a)})
    if any(not f.startswith(ROOT + os.sep) for f in files):
        return subprocess.run(cmd, capture_output=True, text=True)
    dirs = {os.path.dirname(f) for f in files if f.endswith(".c")}
    dirs |= {os.path.join(ROOT, "src", layer) for layer in SRC_LAYERS}
    headers = sorted({h for d in dirs for h in glob.glob(os.path.join(d, "*.h"))})
    key = hashlib.sha256("\0".join("@OUT@" if a == out else a for a in cmd).encode())
    for f in files + headers:
        with open(f, "rb") as fh:
            key.update(b"\0%s\0%s" % (f.encode(), fh.read()))
    cache = os.path.join(ROOT, "build", "e2e-drivers")
    built = os.path.join(cache, "%s-%s" % (key.hexdigest()[:20], os.path.basename(out)))
    try:
        os.makedirs(cache, exist_ok=True)
        lock = open(built + ".lock", "w")
    except OSError:
        return subprocess.run(cmd, capture_output=True, text=True)
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)        # the other session may be building it
        if not os.path.exists(built):
            tmp = "%s.%d.tmp" % (built, os.getpid())
            r = subprocess.run([tmp if a == out else a for a in cmd], capture_output=True, text=True)
            if r.returncode != 0:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                return r
            os.replace(tmp, built)
            for old in os.listdir(cache):       # unused for a day: sources since changed
                try:
                    if time.time() - os.path.getmtime(os.path.join(cache, old)) > 86400:
                        os.unlink(os.path.join(cache, old))
                except OSError:
                    pass
        try:
            os.utime(built)                     # used: kept
            shutil.copy2(built, out)
        except OSError:                         # pruned under us: build it here
            return subprocess.run(cmd, capture_output=True, text=True)
    return subprocess.CompletedProcess(cmd, 0, "", "")


def free_port():
    global _next_port
    if _PORTS is None:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        return port
    lo, hi = _PORTS
    if _next_port is None:
        import random
        _next_port = random.randint(lo, hi)
    for _ in range(hi - lo + 1):
        port = _next_port
        _next_port = lo if _next_port >= hi else _next_port + 1
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))   # no SO_REUSEADDR: in use or TIME_WAIT fails
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free port in INFERGATE_TEST_PORTS=%d-%d" % (lo, hi))


def http_request(port, method, path, body=None, headers=None, timeout=30):
    """One request on a fresh connection: (status, headers dict lowercased, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    hdrs = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    elif isinstance(body, str):
        body = body.encode()
    try:
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def terminate(proc, timeout):
    """SIGTERM, then SIGKILL after `timeout` s. True when SIGTERM was enough."""
    if proc.poll() is not None:
        return True
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False


# Every process a test starts (gateway, mock, redis-server, drivers) goes
# through spawn(), which records it before anyone waits for it to be ready:
# the autouse fixture below stops, at the end of each test, whatever that
# test left running (a start that failed or timed out included), and
# pytest_sessionfinish fails the run if any process the tests started is
# still alive at the end.
SPAWNED = []


def _terminated(signum, frame):
    """SIGTERM (make test stopping its sessions on Ctrl-C, where a session
    in the background ignores SIGINT, or a CI job cancelled) ends the run
    like Ctrl-C: fixtures tear down, nothing started is left running."""
    raise KeyboardInterrupt("SIGTERM")


signal.signal(signal.SIGTERM, _terminated)


def spawn(argv, shared=False, **kw):
    """subprocess.Popen(argv, **kw), recorded for teardown first. shared:
    started by a module- or session-scoped fixture, which stops it; the
    per-test teardown leaves it alone (the end-of-session check does not)."""
    p = subprocess.Popen(argv, **kw)
    p.shared = shared
    SPAWNED.append(p)
    return p


def _kill(p):
    if p.poll() is None:
        try:
            os.kill(p.pid, signal.SIGCONT)      # a test may have paused it
            if os.getpgid(p.pid) == p.pid:      # its own group (a browser): all of it
                os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
        p.kill()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture(autouse=True)
def _stop_what_the_test_started():
    """Runs before the test's own fixtures and ends after them: what they
    stopped is gone, anything else this test started is killed here."""
    first = len(SPAWNED)
    yield
    for p in SPAWNED[first:]:
        if not p.shared:
            _kill(p)


def _leftovers(basetemp):
    """Live processes this session started: children of this pytest, and
    any process whose command line names this session's temp dir (a
    gateway's -c). Other sessions' processes match neither."""
    own = {p.pid: p for p in SPAWNED if p.poll() is None}
    found = {}
    marker = (basetemp.rstrip(os.sep) + os.sep).encode() if basetemp else None
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open("/proc/%s/stat" % pid, "rb") as f:
                stat = f.read()
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if fields[0] == b"Z":
            continue
        if int(fields[1]) == os.getpid() or int(pid) in own or (marker and marker in cmd):
            found[int(pid)] = cmd.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def pytest_sessionfinish(session, exitstatus):
    try:
        basetemp = str(session.config._tmp_path_factory.getbasetemp())
    except (AttributeError, ValueError, OSError):
        basetemp = None
    left = _leftovers(basetemp)
    if not left:
        return
    rep = session.config.pluginmanager.get_plugin("terminalreporter")
    for pid, cmd in sorted(left.items()):
        msg = "process started by the tests still alive at the end: pid %d: %s" % (pid, cmd)
        if rep is not None:
            rep.ensure_newline()
            rep.write_line("LEFTOVER " + msg, red=True)
        else:
            print("LEFTOVER " + msg)
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for p in SPAWNED:
        if p.pid in left:
            _kill(p)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def hosts_of(ms, **extra):
    """hosts.json entries for mocks; extra: {mock name: {field: value}}."""
    out = []
    for m in ms:
        h = {"name": m.name, "url": m.url}
        h.update(extra.get(m.name, {}))
        out.append(h)
    return out


def assert_openai_error(status, body, want_status=None):
    """An OpenAI-shaped error body (and status); returns its "error"."""
    if want_status is not None:
        assert status == want_status, (status, body[:300])
    err = json.loads(body)["error"]
    assert isinstance(err["message"], str) and err["message"], body
    assert isinstance(err["type"], str) and err["type"], body
    return err


def proc_env():
    env = dict(os.environ)
    env.update(SAN_ENV)
    return env


class Mock:
    """One infergate-mock process."""

    def __init__(self, name, *args):
        self.name = name
        self.proc = spawn(
            [MOCK_BIN, "--listen", "127.0.0.1:0", "--name", name, "--quiet", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=proc_env(), text=True)
        r, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline().strip() if r else ""
        if not line.startswith("listening "):
            _kill(self.proc)
            raise RuntimeError("mock %s did not start: %r %s" % (name, line, self.proc.stderr.read()))
        self.port = int(line.rsplit(":", 1)[1])
        self.url = "http://127.0.0.1:%d" % self.port

    def control(self, path, body=None):
        st, _, data = http_request(self.port, "POST" if body is not None or path != "stats" else "GET",
                                   "/_mock/" + path, body=body)
        assert st == 200, data
        return json.loads(data)

    def config(self, **kw):
        return self.control("config", kw)

    def reset(self):
        return self.control("reset", {})

    def stats(self):
        st, _, data = http_request(self.port, "GET", "/_mock/stats")
        assert st == 200, data
        return json.loads(data)

    def stop(self):
        terminate(self.proc, 10)
        err = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return err


def write_conf(d, hosts, keys=None, policies=""):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "hosts.json"), "w") as f:
        json.dump({"hosts": hosts}, f, indent=2)
    if keys is not None:
        with open(os.path.join(d, "api-keys.json"), "w") as f:
            json.dump({"apiKeys": keys}, f, indent=2)
    workers = os.environ.get("INFERGATE_TEST_WORKERS")
    if workers and not re.search(r"^\s+workers:", policies, re.M):
        # The whole suite once more with worker threads (make test does).
        if re.search(r"^server:\s*$", policies, re.M):
            policies = re.sub(r"^server:\s*$", "server:\n  workers: %s" % workers,
                              policies, count=1, flags=re.M)
        else:
            policies = "server:\n  workers: %s\n" % workers + policies
    if "health_check" not in policies:
        # Probes would add GET /v1/models to the mocks' request counts;
        # tests of health checks configure them explicitly.
        policies = "health_check:\n  enabled: false\n" + policies
    with open(os.path.join(d, "policies.yaml"), "w") as f:
        f.write(policies)


class Gateway:
    """The real gateway binary, started on a free loopback port."""

    def __init__(self, conf_dir, extra_args=(), env=None, started=None, **popen):
        """Starts the gateway, appends it to `started` (the fixture's list)
        and only then waits for it to listen."""
        self.conf_dir = conf_dir
        self.log_path = os.path.join(conf_dir, "gateway.log")
        for attempt in range(3):
            self.port = free_port()
            self.log = open(self.log_path, "w")
            self.proc = spawn(
                [INFERGATE_BIN, "-c", conf_dir, "-l", "127.0.0.1:%d" % self.port, *extra_args],
                stdout=self.log, stderr=subprocess.STDOUT, env=dict(proc_env(), **(env or {})),
                **popen)
            if started is not None and attempt == 0:
                started.append(self)
            try:
                wait_for(self._up, timeout=60 if SANITIZED else 15, what="gateway to listen")
                return
            except AssertionError:
                # Someone else took the port between free_port() and the
                # gateway's bind (another test session on this machine): a
                # new port. Any other early exit fails the test.
                if attempt == 2 or self.proc.poll() is None or \
                        not re.search(r"cannot listen on \S+: Address already in use", self.output()):
                    raise
                self.log.close()

    def _up(self):
        if self.proc.poll() is not None:
            raise AssertionError("gateway exited early:\n" + self.output())
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def request(self, method, path, body=None, headers=None, timeout=30):
        return http_request(self.port, method, path, body, headers, timeout)

    def chat(self, model="mock-model", stream=False, headers=None, **extra):
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        body.update(extra)
        return self.request("POST", "/v1/chat/completions", body, headers)

    def output(self):
        self.log.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, expect_rc=0):
        if not terminate(self.proc, 30):
            raise AssertionError("gateway did not stop on SIGTERM")
        out = self.output()
        self.log.close()
        assert "Sanitizer" not in out and "runtime error" not in out, out[-4000:]
        assert self.proc.returncode == expect_rc, (self.proc.returncode, out[-4000:])
        return out


@pytest.fixture
def mocks():
    """Factory: mocks(n) starts n mock upstreams named m0..m{n-1}."""
    started = []

    def make(n, *args):
        for i in range(n):
            started.append(Mock("m%d" % len(started), *args))
        return started[-n:]

    yield make
    for m in started:
        err = m.stop()
        assert "Sanitizer" not in err and "runtime error" not in err, err


@pytest.fixture
def gateway(tmp_path):
    """Factory: gateway(hosts, keys, policies) writes a conf dir and starts the gateway."""
    started = []

    def make(hosts, keys=None, policies="", extra_args=(), env=None):
        d = str(tmp_path / ("conf%d" % len(started)))
        write_conf(d, hosts, keys, policies)
        return Gateway(d, extra_args, env, started=started)

    yield make
    for g in started:
        if g.proc.poll() is None or not g.log.closed:
            g.stop()
