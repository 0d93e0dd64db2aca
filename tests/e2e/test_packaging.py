"""Packaging and operations (packaging/, scripts/package-test.sh).

- the Debian package builds, installs, checks and purges cleanly
  (scripts/package-test.sh; needs root and Debian's build tools, else skipped);
- infergate(8) renders with groff -ww without a warning and documents every
  option of the command line and every signal;
- the systemd unit has Type=notify, ExecReload, the check before start and
  the hardening directives, and `systemd-analyze verify` accepts it;
- the container's entry command (Dockerfile ENTRYPOINT + CMD, run here as it
  would run in the image, as a non-root user when the tests run as root)
  serves /health from packaging/docker/conf with two replicas sharing one
  real redis-server, as compose.yaml runs them; HUP reloads, TERM drains;
- compose.yaml, its conf/ and the Dockerfile agree with each other;
- $NOTIFY_SOCKET gets READY=1, RELOADING=1/READY=1 and STOPPING=1.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
import yaml

from conftest import (INFERGATE_BIN, ROOT, SANITIZED, Mock, free_port, http_request, terminate,
                      proc_env, spawn, wait_for)

PKG = os.path.join(ROOT, "packaging")
UNIT = os.path.join(PKG, "debian", "infergate.service")
MANPAGE = os.path.join(PKG, "infergate.8")
DOCKER = os.path.join(PKG, "docker")
DOCKERFILE = os.path.join(DOCKER, "Dockerfile")
COMPOSE = os.path.join(DOCKER, "compose.yaml")
DOCKER_CONF = os.path.join(DOCKER, "conf")
IMAGE_UID = 10001           # the image's `USER infergate` (Dockerfile)


# --- the Debian package -------------------------------------------------------

def _package_test_skip_reason():
    if SANITIZED:
        return "the package test runs in the release pass only"
    if os.geteuid() != 0:
        return "installing a .deb needs root"
    for tool in ("dpkg-buildpackage", "dh", "dpkg"):
        if shutil.which(tool) is None:
            return "%s is not installed (dpkg-dev, debhelper)" % tool
    with open(os.path.join(ROOT, "Makefile")) as f:
        if not re.search(r"^install:", f.read(), re.M):
            return "the Makefile has no install target"
    st = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "infergate"],
                        capture_output=True, text=True)
    if st.returncode == 0 and "not-installed" not in st.stdout:
        return "infergate is installed on this machine; the test would purge it"
    return None


def test_debian_package_builds_installs_and_purges():
    reason = _package_test_skip_reason()
    if reason:
        pytest.skip(reason)
    r = subprocess.run([os.path.join(ROOT, "scripts", "package-test.sh")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "package-test: all steps passed" in r.stdout, out[-6000:]
    for step in ("lintian: no errors", "dpkg -i", "infergate -t -c /etc/infergate: configuration ok",
                 "dpkg --purge infergate", "nothing left after purge"):
        assert step in r.stdout, out[-6000:]


# --- man page -----------------------------------------------------------------

def _render_man(*extra):
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed (groff-base)")
    r = subprocess.run(["groff", "-ww", "-man", "-Tutf8", *extra, MANPAGE],
                       capture_output=True, text=True,
                       env=dict(os.environ, LC_ALL="C.UTF-8"))
    return r


def test_man_page_renders_without_warnings():
    r = _render_man()
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", "groff -ww warnings:\n" + r.stderr
    text = re.sub(r".\x08", "", r.stdout)           # drop overstrike bold/underline
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "SIGNALS", "EXIT STATUS",
                    "ENVIRONMENT", "FILES", "SEE ALSO"):
        assert re.search(r"^%s$" % section, text, re.M), "no %s section" % section
    if shutil.which("man"):
        r = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", MANPAGE],
                           capture_output=True, text=True,
                           env=dict(os.environ, LC_ALL="C.UTF-8", MANWIDTH="80"))
        assert r.returncode == 0 and r.stderr == "", r.stderr


def test_man_page_documents_every_option_and_signal():
    with open(os.path.join(ROOT, "src", "main.c")) as f:
        main_c = f.read()
    optstring = re.search(r'getopt\(argc, argv, "([^"]+)"\)', main_c).group(1)
    with open(MANPAGE) as f:
        page = f.read()
    for opt in optstring.replace(":", ""):
        assert re.search(r"^\.(B|BI|OP) \\-%s\b" % re.escape(opt), page, re.M), \
            "option -%s is not documented in infergate.8" % opt
    for sig in ("SIGHUP", "SIGTERM", "SIGINT", "SIGUSR1"):
        assert sig in page, sig
    for code in ("0", "1", "2"):
        assert re.search(r"^\.TP\n\.B %s$" % code, page, re.M), "exit status %s" % code
    assert "NOTIFY_SOCKET" in page


# --- systemd unit and logrotate ------------------------------------------------

def _unit_directives(path=UNIT):
    d = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;[":
                continue
            k, _, v = line.partition("=")
            d.setdefault(k, []).append(v)
    return d


def test_systemd_unit_is_notify_with_reload_and_hardening():
    d = _unit_directives()
    one = {k: v[-1] for k, v in d.items()}
    assert one["Type"] == "notify"
    assert one["NotifyAccess"] == "main"
    assert "/bin/kill -HUP $MAINPID" in d["ExecReload"]
    assert any(re.search(r"infergate -t -c /etc/infergate$", v) for v in d["ExecStartPre"])
    assert re.match(r"/usr/sbin/infergate -c /etc/infergate\b", one["ExecStart"])
    assert one.get("User") == "infergate" or one.get("DynamicUser") == "yes"
    assert "CapabilityBoundingSet" in d and d["CapabilityBoundingSet"] == [""], \
        "CapabilityBoundingSet= must be empty"
    want = {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes", "ProtectControlGroups": "yes", "RestrictNamespaces": "yes",
        "RestrictSUIDSGID": "yes", "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native", "KillMode": "mixed",
    }
    for k, v in want.items():
        assert one.get(k) == v, "%s=%s (want %s)" % (k, one.get(k), v)
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert "@system-service" in d["SystemCallFilter"]
    assert one["LogsDirectory"] == "infergate" and one["RuntimeDirectory"] == "infergate"
    # the stop timeout leaves room for the default drain_timeout (30s)
    assert int(one["TimeoutStopSec"].rstrip("s")) > 30
    assert "WantedBy" in d


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    sa = shutil.which("systemd-analyze")
    if sa is None:
        pytest.skip("systemd-analyze is not installed (systemd)")
    # the installed paths do not exist here: point them at the built binary
    # and the man page in the tree, and verify that copy
    with open(UNIT) as f:
        unit = f.read().replace("/usr/sbin/infergate", INFERGATE_BIN)
    (tmp_path / "infergate.service").write_text(unit)
    (tmp_path / "man" / "man8").mkdir(parents=True)
    shutil.copy(MANPAGE, tmp_path / "man" / "man8" / "infergate.8")
    r = subprocess.run([sa, "verify", str(tmp_path / "infergate.service")],
                       capture_output=True, text=True,
                       env=dict(os.environ, MANPATH=str(tmp_path / "man")))
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


def test_logrotate_sends_sigusr1(tmp_path):
    with open(os.path.join(PKG, "debian", "infergate.logrotate")) as f:
        conf = f.read()
    assert "/var/log/infergate/*.log" in conf
    assert re.search(r"--signal=SIGUSR1 infergate\.service", conf)
    assert "kill -USR1" in conf and "copytruncate" not in conf
    assert re.search(r"^\s*create 0640 infergate adm$", conf, re.M)
    if shutil.which("logrotate") and os.geteuid() == 0:
        # the user infergate exists only once the package is installed
        copy = tmp_path / "infergate.logrotate"
        copy.write_text(conf.replace("create 0640 infergate adm", "create 0640 root adm"))
        r = subprocess.run(["logrotate", "-d", "-s", str(tmp_path / "state"), str(copy)],
                           capture_output=True, text=True)
        assert r.returncode == 0 and "error" not in r.stderr.lower(), r.stderr


# --- the container --------------------------------------------------------------

def _dockerfile_final_stage():
    """ENTRYPOINT, CMD, HEALTHCHECK CMD, USER and EXPOSE of the last stage."""
    with open(DOCKERFILE) as f:
        text = f.read().replace("\\\n", " ")
    stages = re.split(r"^FROM\s", text, flags=re.M)
    last = stages[-1]
    out = {}
    for key in ("ENTRYPOINT", "CMD", "USER", "EXPOSE", "HEALTHCHECK"):
        m = re.findall(r"^%s\s+(.*)$" % key, last, re.M)
        assert m, "no %s in the final stage" % key
        out[key] = m[-1].strip()
    out["ENTRYPOINT"] = json.loads(out["ENTRYPOINT"])
    out["CMD"] = json.loads(out["CMD"])
    hc = re.search(r"CMD\s+(\[.*\])", out["HEALTHCHECK"])
    out["HEALTHCHECK"] = json.loads(hc.group(1))
    out["base"] = [s.split()[0] for s in stages[1:]]
    return out


def test_dockerfile_shape():
    df = _dockerfile_final_stage()
    with open(DOCKERFILE) as f:
        text = f.read()
    assert re.search(r"^ARG DEBIAN_IMAGE=debian:12-slim$", text, re.M)
    assert len(re.findall(r"^FROM\s", text, re.M)) >= 2, "multi-stage"
    assert "--from=build" in text
    assert df["USER"].split(":")[0] not in ("root", "0")
    assert df["EXPOSE"] == "8080"
    assert df["ENTRYPOINT"] == ["/usr/sbin/infergate"]
    assert df["CMD"][:2] == ["-c", "/etc/infergate"]
    assert "http://127.0.0.1:8080/health" in df["HEALTHCHECK"]
    assert re.search(r"^COPY packaging/docker/conf/ /etc/infergate/$", text, re.M)
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.M)


def _start_redis(port):
    d = tempfile.mkdtemp(prefix="ig-redis-")
    p = spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no", "--dir", d],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False
    wait_for(up, timeout=10, what="redis-server")
    return p, d


def _container_conf(mocks_by_name, redis_port):
    """packaging/docker/conf as a container would see it, with compose's
    service names (mock-a, redis) pointed at this machine's processes."""
    d = tempfile.mkdtemp(prefix="ig-docker-conf-")
    os.chmod(d, 0o755)
    for name in ("hosts.json", "api-keys.json", "policies.yaml"):
        shutil.copy(os.path.join(DOCKER_CONF, name), d)
    path = os.path.join(d, "hosts.json")
    with open(path) as f:
        hosts = json.load(f)
    for h in hosts["hosts"]:
        h["url"] = mocks_by_name[h["name"]].url
    with open(path, "w") as f:
        json.dump(hosts, f)
    path = os.path.join(d, "policies.yaml")
    with open(path) as f:
        pol = f.read()
    assert "redis://redis:6379/0" in pol
    with open(path, "w") as f:
        f.write(pol.replace("redis://redis:6379/0", "redis://127.0.0.1:%d/0" % redis_port))
    for name in os.listdir(d):
        os.chmod(os.path.join(d, name), 0o644)
    return d


class Replica:
    """The image's ENTRYPOINT + CMD, with /etc/infergate and the port
    replaced, as the image's non-root user when we are root."""

    def __init__(self, argv, conf_dir, token):
        self.port = free_port()
        self.argv = [INFERGATE_BIN if a == "/usr/sbin/infergate" else a for a in argv]
        self.argv = [conf_dir if a == "/etc/infergate" else a for a in self.argv]
        self.argv = ["127.0.0.1:%d" % self.port if a == "0.0.0.0:8080" else a for a in self.argv]
        prefix = []
        if os.geteuid() == 0 and shutil.which("setpriv"):
            prefix = ["setpriv", "--reuid=%d" % IMAGE_UID, "--regid=%d" % IMAGE_UID,
                      "--clear-groups"]
        env = proc_env()
        env["INFERGATE_ADMIN_TOKEN"] = token
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = spawn(prefix + self.argv, stdout=self.log,
                          stderr=subprocess.STDOUT, env=env)

    def output(self):
        self.log.seek(0)
        return self.log.read()

    def health(self):
        if self.proc.poll() is not None:
            raise AssertionError("replica exited %s:\n%s" % (self.proc.returncode, self.output()))
        try:
            return http_request(self.port, "GET", "/health", timeout=2)[0]
        except OSError:
            return None

    def status(self):
        st, _, body = http_request(self.port, "GET", "/status")
        assert st == 200, body
        return json.loads(body)

    def stop(self):
        terminate(self.proc, 30)
        out = self.output()
        self.log.close()
        return self.proc.returncode, out


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_container_entry_command_two_replicas_one_redis():
    df = _dockerfile_final_stage()
    argv = df["ENTRYPOINT"] + df["CMD"]
    assert "/etc/infergate" in argv and "0.0.0.0:8080" in argv, argv
    with open(COMPOSE) as f:
        compose = yaml.safe_load(f)
    token = "compose-test-token"

    names = [h["name"] for h in json.load(open(os.path.join(DOCKER_CONF, "hosts.json")))["hosts"]]
    mocks = {}
    redis_proc = redis_dir = conf = None
    replicas = []
    try:
        for n in names:
            mocks[n] = Mock(n, "--models", "llama-3.1-8b-instruct,qwen-2.5-7b,nomic-embed")
        redis_port = free_port()
        redis_proc, redis_dir = _start_redis(redis_port)
        conf = _container_conf(mocks, redis_port)
        # as compose.yaml: every infergate-N service runs the same image and conf
        n_replicas = sum(1 for s in compose["services"] if s.startswith("infergate-"))
        assert n_replicas == 2
        replicas = [Replica(argv, conf, token) for _ in range(n_replicas)]
        for r in replicas:
            wait_for(lambda: r.health() == 200, timeout=20, what="replica /health 200")

        # the HEALTHCHECK command itself, against the replica's port
        if shutil.which("curl"):
            hc = [a.replace("127.0.0.1:8080", "127.0.0.1:%d" % replicas[0].port)
                  for a in df["HEALTHCHECK"]]
            assert subprocess.run(hc, capture_output=True).returncode == 0

        for r in replicas:
            st, hdrs, body = http_request(
                r.port, "POST", "/v1/chat/completions",
                {"model": "fast", "messages": [{"role": "user", "content": "hi"}]})
            assert st == 200, body
            assert hdrs.get("x-upstream-host") in names

        # both replicas use the one Redis: each sees the other in /status
        def both_registered():
            st = replicas[0].status()
            reps = st.get("replicas")
            return isinstance(reps, list) and len(reps) >= 2
        wait_for(both_registered, timeout=15, what="two replicas in /status")

        # docker kill -s HUP: reload; the admin token came from ${INFERGATE_ADMIN_TOKEN}
        gen = replicas[0].status()["generation"]
        replicas[0].proc.send_signal(signal.SIGHUP)
        wait_for(lambda: replicas[0].status()["generation"] == gen + 1, timeout=10,
                 what="generation + 1 after SIGHUP")
        st, _, body = http_request(replicas[1].port, "POST", "/admin/reload", b"",
                                   {"Authorization": "Bearer " + token})
        assert st == 200, body

        # docker stop: SIGTERM drains and exits 0
        for r in replicas:
            rc, out = r.stop()
            assert rc == 0, out[-3000:]
            assert "Sanitizer" not in out and "runtime error" not in out, out[-3000:]
    finally:
        for r in replicas:
            if r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait()
        if redis_proc:
            redis_proc.terminate()
            redis_proc.wait(10)
            shutil.rmtree(redis_dir, ignore_errors=True)
        for m in mocks.values():
            m.stop()
        if conf:
            shutil.rmtree(conf, ignore_errors=True)


def test_compose_and_its_conf_agree():
    with open(COMPOSE) as f:
        compose = yaml.safe_load(f)
    svcs = compose["services"]
    gws = {n: s for n, s in svcs.items() if n.startswith("infergate-")}
    assert len(gws) == 2
    images = {s["image"] for s in gws.values()}
    assert len(images) == 1
    for s in gws.values():
        assert "./conf:/etc/infergate:ro" in s["volumes"]
        assert s["build"]["dockerfile"] == "packaging/docker/Dockerfile"
        assert "redis" in s["depends_on"]
        assert s.get("init") is True
        grace = int(str(s["stop_grace_period"]).rstrip("s"))
        assert grace > 30, "stop_grace_period must exceed drain_timeout"
        assert "INFERGATE_ADMIN_TOKEN" in s["environment"]
    assert len({s["ports"][0] for s in gws.values()}) == 2
    assert "redis" in svcs

    with open(os.path.join(DOCKER_CONF, "policies.yaml")) as f:
        pol = yaml.safe_load(f)
    assert pol["sessions"]["store"] == "redis"
    assert pol["sessions"]["redis"]["url"].startswith("redis://redis:")
    with open(os.path.join(DOCKER_CONF, "hosts.json")) as f:
        hosts = json.load(f)["hosts"]
    for h in hosts:
        assert h["name"] in svcs, "host %s is not a compose service" % h["name"]
        mock = svcs[h["name"]]
        assert mock["build"]["target"] == "mock"
        listen = mock["command"][mock["command"].index("--listen") + 1]
        assert h["url"] == "http://%s:%s" % (h["name"], listen.rsplit(":", 1)[1])

    env = dict(os.environ, INFERGATE_ADMIN_TOKEN="x")
    r = subprocess.run([INFERGATE_BIN, "-t", "-c", DOCKER_CONF], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0 and "configuration ok" in r.stdout, r.stdout + r.stderr


# --- sd_notify ------------------------------------------------------------------

def _binary_sends_notify():
    with open(INFERGATE_BIN, "rb") as f:
        data = f.read()
    return b"READY=1" in data and b"STOPPING=1" in data


def test_notify_socket_ready_reload_stopping(mocks, tmp_path):
    if not _binary_sends_notify():
        pytest.skip("this build does not call notify_send() yet (main.c wiring)")
    (m,) = mocks(1)
    d = tmp_path / "conf"
    d.mkdir()
    (d / "hosts.json").write_text(json.dumps({"hosts": [{"name": "m", "url": m.url}]}))
    (d / "policies.yaml").write_text("")
    sock_path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(sock_path)
    s.settimeout(15)
    port = free_port()
    env = proc_env()
    env["NOTIFY_SOCKET"] = sock_path
    log = open(str(tmp_path / "gw.log"), "w+")
    p = spawn([INFERGATE_BIN, "-c", str(d), "-l", "127.0.0.1:%d" % port],
              stdout=log, stderr=subprocess.STDOUT, env=env)

    def recv_until(word):
        seen = []
        while True:
            msg = s.recv(4096).decode()
            seen.append(msg)
            if re.search(r"^%s$" % re.escape(word), msg, re.M):
                return msg, seen

    try:
        msg, _ = recv_until("READY=1")
        # READY=1 comes once the listener is open
        st = http_request(port, "GET", "/health")[0]
        assert st in (200, 503)
        p.send_signal(signal.SIGHUP)
        msg, seen = recv_until("READY=1")
        reloading = [x for x in seen if "RELOADING=1" in x]
        assert reloading, seen
        mono = re.search(r"^MONOTONIC_USEC=(\d+)$", reloading[0], re.M)
        assert mono, reloading[0]
        now_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert 0 <= now_us - int(mono.group(1)) < 60 * 1000000
        p.send_signal(signal.SIGTERM)
        recv_until("STOPPING=1")
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        s.close()
        log.close()
