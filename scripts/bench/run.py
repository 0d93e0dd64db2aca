#!/usr/bin/python3
"""make bench: direct vs nginx vs infergate on the same mock upstreams.

Started by scripts/bench.sh (which checks the tools and builds sse-client);
reports, never asserts. Everything runs on loopback, every load run is
bounded in time (wrk -d, sse-client -d) and everything started here is
stopped on exit, on SIGINT/SIGTERM/SIGHUP and (PR_SET_PDEATHSIG) if this
process dies.

Layout on an N-core machine (N >= 2): the process under test ("target":
the direct mock, nginx with worker_processes 1, or infergate with
server.workers 1) is pinned to the last core; wrk, sse-client and the
upstream mocks share the other cores. So the target always has one core
to itself and the table shows its CPU% and CPU time per request: below
~95% CPU the load side, not the target, was the limit.

Environment (all optional):
  INFERGATE_BIN, MOCK_BIN, NGINX_BIN, HAPROXY_BIN, WRK_BIN, SSE_CLIENT   binaries
  BENCH_QUICK=1        smoke run: 1 repetition of 3 s (< 60 s in all)
  BENCH_REPS           repetitions (3; the median is reported)
  BENCH_DURATION       seconds per load run (8)
  BENCH_CONNS          connection counts (1,64,256; 1 = the added latency at low load)
  BENCH_TARGETS        direct,nginx,haproxy,infergate
  BENCH_SCENARIOS      json,sse
  BENCH_TTFB=0         skip the fixed-rate runs (added latency, time to first chunk)
  BENCH_SCALE=0|1      the idle-stream run (on by default, off with BENCH_QUICK)
  BENCH_SCALE_STREAMS  idle streams to hold (10000; fewer if RLIMIT_NOFILE is short)
  BENCH_STREAMS=0|1    the concurrent-streams check (on by default, 2 s with BENCH_QUICK):
                       BENCH_STREAMS_CONNS (512) streams at once, closed loop, every
                       stream's numbered events checked (lost, reordered)
  BENCH_STREAMS_INTERVAL_MS  between two events of a stream in that run (1)
  BENCH_POOL=0         skip the pool-size run (10 vs 10,000 hosts, reload, -t)
  BENCH_WORKERS=0      skip the server.workers run (1 worker vs 2, JSON, 64 connections)
  BENCH_HTTPS=0        skip the HTTPS-upstream run (infergate vs nginx to TLS mocks)
  BENCH_LIMITS=0       skip the client-limits run (clients off vs on with Redis, JSON,
                       64 and 1 connections; needs redis-server)
  BENCH_HTTPS_ONLY=1   only the HTTPS-upstream run
  BENCH_HTTPS_MOCK     the TLS upstreams of that run: "nginx" (the default:
                       infergate-mock's answers, static, served by nginx over TLS,
                       ~3 x cheaper per request than the mock, so the proxies run
                       near a full core; an SSE answer is one HTTP chunk) or "mock"
                       (infergate-mock --tls-cert: SSE in 21 chunks, as the plain
                       rows, but the load core caps the proxies at ~40% of theirs)
  BENCH_NGINX_UPSTREAM_TLS  nginx's proxy_ssl_protocols there ("TLSv1.2 TLSv1.3":
                       TLS 1.3 as infergate negotiates; nginx 1.22's default is
                       at most TLSv1.2)
  BENCH_NOISY_PCT      a repetition during which other processes used more than
                       this % of a core is left out of the median when possible (15)
  BENCH_PERF=1         one extra JSON run of infergate under perf record -g (needs
                       perf); the top of the profile is printed and saved
  BENCH_KEEP_TMP=1     keep the temp dir (configs, nginx and infergate logs)
  BENCH_TARGET_CPU     core of the target (last core)
  BENCH_LOAD_CPUS      cores of wrk and the mocks (the others), e.g. 0 or 0-2
  BENCH_MOCKS          number of upstream mocks (2)
  BENCH_CONTENT_BYTES  size of the answer's content when the mock has
                       --content-bytes (700, for a ~1 KB chat completion)
  BENCH_OUT            results directory (bench/results)
"""
import ctypes
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HERE = os.path.dirname(os.path.abspath(__file__))
CLK_TCK = os.sysconf("SC_CLK_TCK")
MODEL = "llama-3.1-8b-instruct"
SSE_CHUNKS = 20


def env_int(name, default):
    v = os.environ.get(name, "")
    return int(v) if v.strip() else default


def env_float(name, default):
    v = os.environ.get(name, "")
    return float(v) if v.strip() else default


def env_list(name, default):
    v = os.environ.get(name, "")
    return [x.strip() for x in (v or default).split(",") if x.strip()]


def find_bin(env, default, *alternatives):
    v = os.environ.get(env)
    if v:
        return v
    for c in (default,) + alternatives:
        if os.path.isabs(c) or "/" in c:
            if os.access(os.path.join(ROOT, c), os.X_OK):
                return os.path.join(ROOT, c)
        else:
            p = shutil.which(c)
            if p:
                return p
    return default


def parse_cpus(s):
    out = []
    for part in s.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
REPS = env_int("BENCH_REPS", 1 if QUICK else 3)
DURATION = env_float("BENCH_DURATION", 3 if QUICK else 8)
# Warm-up per target and load shape before the measured runs. 3 s x 2 is
# ~100k requests through infergate: its response-id store (sessions,
# 100,000 entries by default) is full, so the runs see the steady state.
WARMUP = 1 if QUICK else 3
TTFB_DURATION = 1 if QUICK else 4
TTFB_WARMUP = 0.3 if QUICK else 0.5
POOL_DURATION = 2 if QUICK else 5
POOL_RELOAD = not QUICK   # the reload-under-load row
CONNS = [int(c) for c in env_list("BENCH_CONNS", "1,64,256")]
TARGETS = env_list("BENCH_TARGETS", "direct,nginx,haproxy,infergate")
SCENARIOS = env_list("BENCH_SCENARIOS", "json,sse")
DO_TTFB = os.environ.get("BENCH_TTFB", "1") not in ("0", "")
DO_POOL = os.environ.get("BENCH_POOL", "1") not in ("0", "")
DO_WORKERS = os.environ.get("BENCH_WORKERS", "1") not in ("0", "")
DO_PERF = os.environ.get("BENCH_PERF", "") not in ("", "0")
DO_HTTPS = os.environ.get("BENCH_HTTPS", "1") not in ("0", "")
DO_LIMITS = os.environ.get("BENCH_LIMITS", "1") not in ("0", "")
REDIS = find_bin("REDIS_BIN", "redis-server", "/usr/bin/redis-server")
HTTPS_ONLY = os.environ.get("BENCH_HTTPS_ONLY", "") not in ("", "0")
NMOCKS = max(1, env_int("BENCH_MOCKS", 2))
CONTENT_BYTES = env_int("BENCH_CONTENT_BYTES", 700)
# Fixed-rate (open loop) runs: latency added by the proxy when it is not
# saturated. JSON: 5,000 requests/s over 64 connections; SSE: 1,000 streams/s
# over 256 connections with the upstream's chunks 1 ms apart, which gives
# the time to the first chunk and shows whether chunks are buffered.
FIXED = [("sse", 1000, 256)] if QUICK else [("json", 5000, 64), ("sse", 1000, 256)]
TTFB_INTERVAL_MS = 1      # between two SSE chunks in the SSE fixed-rate run
POOL_SIZES = [10, 10000]
POOL_BIG_KEYS = int(os.environ.get("BENCH_POOL_KEYS", "100000"))  # keys of the biggest pool
# Idle streams held at once (the issue: 10,000, a chunk every 10 s, RSS <= 200 MB).
DO_SCALE = os.environ.get("BENCH_SCALE", "0" if QUICK else "1") not in ("0", "")
SCALE_STREAMS = env_int("BENCH_SCALE_STREAMS", 10000)
SCALE_HOLD = 6            # s; the second chunk comes after 10 s, so every stream is idle
# Concurrent streams at full rate (issue 24: 512, zero lost or reordered frames).
DO_STREAMS = os.environ.get("BENCH_STREAMS", "1") not in ("0", "")
STREAMS_CONNS = env_int("BENCH_STREAMS_CONNS", 512)
STREAMS_DURATION = 2 if QUICK else 5
STREAMS_INTERVAL_MS = env_int("BENCH_STREAMS_INTERVAL_MS", 1)
POOL_RELOAD_EVERY = 1.0   # s between two SIGHUPs in the reload run
# configurations timed with `infergate -t` (hosts, keys); 100k keys is the
# issue's reload target, skipped in a quick run
CHECK_SIZES = [(10000, 10000)] if QUICK else [(10000, 10000), (10000, 100000)]
CHECK_TIMEOUT = 60

INFERGATE = find_bin("INFERGATE_BIN", "./infergate")
MOCK = find_bin("MOCK_BIN", "build/release/infergate-mock")
NGINX = find_bin("NGINX_BIN", "nginx", "/usr/sbin/nginx")
NGINX_UPSTREAM_TLS = os.environ.get("BENCH_NGINX_UPSTREAM_TLS", "TLSv1.2 TLSv1.3")
HTTPS_MOCK = os.environ.get("BENCH_HTTPS_MOCK", "nginx")
HAPROXY = find_bin("HAPROXY_BIN", "haproxy", "/usr/sbin/haproxy")
WRK = find_bin("WRK_BIN", "wrk")
SSE_CLIENT = os.environ.get("SSE_CLIENT", "")
OUT_DIR = os.path.join(ROOT, os.environ.get("BENCH_OUT", "bench/results"))

NCPU = os.cpu_count() or 1
TARGET_CPU = env_int("BENCH_TARGET_CPU", NCPU - 1)
LOAD_CPUS = parse_cpus(os.environ.get("BENCH_LOAD_CPUS", "")) or \
    [c for c in range(NCPU) if c != TARGET_CPU] or [TARGET_CPU]
WRK_THREADS = max(1, min(len(LOAD_CPUS), 4))


def log(msg):
    print(msg, flush=True)


def note(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


# --- processes -------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _child_setup():
    # Die with the bench (PR_SET_PDEATHSIG = 1), even on SIGKILL.
    _libc.prctl(1, signal.SIGKILL, 0, 0, 0)


class Procs:
    """Every long-running process the bench starts; stop_all() ends them."""

    def __init__(self):
        self.procs = []

    def start(self, name, argv, cpus=None, stdout=None, stderr=None, text=False):
        if cpus is not None:
            argv = ["taskset", "-c", ",".join(str(c) for c in cpus)] + argv
        p = subprocess.Popen(argv, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                             preexec_fn=_child_setup, text=text, cwd=ROOT)
        p.bench_name = name
        self.procs.append(p)
        return p

    def stop(self, p, timeout=5):
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            except ProcessLookupError:
                pass
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in reversed(list(self.procs)):
            self.stop(p)


PROCS = Procs()
MOCK_PIDS = []            # the upstream mocks (and the direct target's mock)


def _on_signal(sig, frame):
    raise KeyboardInterrupt("signal %d" % sig)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http(method, url, body=None, timeout=5, headers=None):
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace"), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace"), dict(e.headers)


def wait_http(url, timeout=15, proc=None):
    t_end = time.time() + timeout
    while time.time() < t_end:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            st, _, _ = http("GET", url, timeout=1)
            if st < 500:
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


# --- /proc sampling ---------------------------------------------------------

def proc_tree(pid):
    """pid and its children (nginx: master and workers)."""
    out = [pid]
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def cpu_ticks(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[11]) + int(rest[12])       # utime + stime
    except (OSError, IndexError):
        return 0


def cpu_ns(pid):
    """CPU time of pid's threads in ns: the scheduler's own count
    (/proc/PID/task/*/schedstat), exact where /proc/PID/stat's utime and
    stime are sampled at the timer tick (a few % apart between two runs of
    5 s). Falls back to the ticks. A thread that ends inside a measurement
    takes its time with it: the targets' serving threads live throughout."""
    try:
        total = 0
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                total += int(f.read().split()[0])
        return total
    except (OSError, ValueError, IndexError):
        return cpu_ticks(pid) * 1000000000 // CLK_TCK


def rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_busy(cpus):
    """Busy and total jiffies of the given cores, from /proc/stat."""
    busy = total = 0
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+) (.*)", line)
            if m and int(m.group(1)) in cpus:
                v = [int(x) for x in m.group(2).split()]
                idle = v[3] + (v[4] if len(v) > 4 else 0)
                busy += sum(v[:8]) - idle
                total += sum(v[:8])
    return busy, total


class Sampler:
    """CPU time of the target's processes over the run, peak RSS sampled
    every 100 ms, how busy the load cores were, and how much CPU went to
    processes that are not part of the bench (a shared machine: noise)."""

    def __init__(self, pid, rss_with=None):
        self.pid = pid
        self.rss_with = rss_with  # pids whose RSS "rss_with_mocks_kb" adds (the mocks)
        self.child_s = 0.0      # CPU of the load client, set by the caller
        self.stop_ev = threading.Event()
        self.peak_rss = 0
        self.peak_total = 0     # the target and the upstream mocks, sampled together
        self.rss = []

    def _loop(self):
        while not self.stop_ev.wait(0.1):
            kb = sum(rss_kb(p) for p in proc_tree(self.pid))
            self.rss.append(kb)
            self.peak_rss = max(self.peak_rss, kb)
            self.peak_total = max(self.peak_total, kb + sum(
                rss_kb(p) for p in (self.mocks if self.rss_with is None else self.rss_with)))

    def __enter__(self):
        self.pids = proc_tree(self.pid)
        self.t0 = time.monotonic()
        self.c0 = sum(cpu_ns(p) for p in self.pids)
        self.mocks = [p for p in MOCK_PIDS if p not in self.pids]
        self.m0 = sum(cpu_ns(p) for p in self.mocks)
        self.l0 = cpu_busy(LOAD_CPUS)
        self.a0 = cpu_busy(range(NCPU))
        self.th = threading.Thread(target=self._loop, daemon=True)
        self.th.start()
        return self

    def __exit__(self, *a):
        self.stop_ev.set()
        self.th.join()
        self.elapsed = time.monotonic() - self.t0
        self.cpu_s = (sum(cpu_ns(p) for p in self.pids) - self.c0) / 1e9
        self.mock_s = (sum(cpu_ns(p) for p in self.mocks) - self.m0) / 1e9
        l1 = cpu_busy(LOAD_CPUS)
        lt = l1[1] - self.l0[1]
        self.load_busy = 100.0 * (l1[0] - self.l0[0]) / lt if lt > 0 else 0.0
        a1 = cpu_busy(range(NCPU))
        self.all_busy_s = (a1[0] - self.a0[0]) / CLK_TCK
        if not self.rss:
            self.peak_rss = sum(rss_kb(p) for p in proc_tree(self.pid))
        return False

    def result(self):
        el = self.elapsed or 1e-9
        other = self.all_busy_s - self.cpu_s - self.mock_s - self.child_s
        return {"cpu_pct": round(100.0 * self.cpu_s / el, 1),
                "cpu_s": round(self.cpu_s, 3),
                "rss_kb": self.peak_rss,
                "rss_with_mocks_kb": self.peak_total or self.peak_rss,
                "load_cpu_busy_pct": round(self.load_busy, 1),
                "upstream_mocks_cpu_pct": round(100.0 * self.mock_s / el, 1),
                "client_cpu_pct": round(100.0 * self.child_s / el, 1),
                # busy time of all cores not charged to target, mocks or client:
                # other processes on a shared machine, plus kernel work charged
                # to no process (softirq); a few % is normal
                "other_cpu_pct": round(100.0 * max(0.0, other) / el, 1)}


def children_cpu_s():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# --- the upstreams and the targets -------------------------------------------

def mock_has_flag(flag):
    try:
        out = subprocess.run([MOCK, "-h"], capture_output=True, text=True, timeout=5)
        return flag in (out.stdout + out.stderr)
    except OSError:
        return False


def start_mock(name, cpus, extra=(), listen="127.0.0.1:0"):
    argv = [MOCK, "--listen", listen, "--name", name, "--quiet",
            "--models", MODEL, "--chunks", str(SSE_CHUNKS), *extra]
    if CONTENT_BYTES > 0 and mock_has_flag("--content-bytes"):
        argv += ["--content-bytes", str(CONTENT_BYTES)]
    p = PROCS.start(name, argv, cpus=cpus, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    m = re.match(r"listening (\S+):(\d+)$", line)
    if not m:
        raise RuntimeError("mock %s did not start: %r" % (name, line))
    p.addr = "127.0.0.1:%s" % m.group(2)
    p.cpus = cpus
    MOCK_PIDS.append(p.pid)
    return p


def restart_mocks(ups):
    """The upstream mocks again, fresh, on the same addresses (in place in
    `ups`): a mock keeps the heap of the streams it held for the previous
    target, which would blur the next target's "with the mocks" figure."""
    for i, m in enumerate(ups):
        addr = m.addr
        PROCS.stop(m)
        if m.pid in MOCK_PIDS:
            MOCK_PIDS.remove(m.pid)
        for _ in range(50):                      # the port may take a moment
            try:
                ups[i] = start_mock(m.bench_name, m.cpus, listen=addr)
                break
            except RuntimeError:
                time.sleep(0.1)
        else:
            raise RuntimeError("mock %s did not restart on %s" % (m.bench_name, addr))


def mock_config(mocks, **conf):
    for m in mocks:
        st, body, _ = http("POST", "http://%s/_mock/config" % m.addr, json.dumps(conf))
        if st != 200:
            raise RuntimeError("mock config %s: %d %s" % (m.addr, st, body))


def write_nginx_conf(tmp, listen, upstreams, https_ca=None):
    with open(os.path.join(HERE, "nginx.conf.in")) as f:
        conf = f.read()
    if https_ca:
        # TLS to the upstreams, verified, sessions reused on new connections.
        # TLS 1.3 as infergate speaks it (nginx before 1.23.4 offers at most
        # 1.2 to upstreams by default; a 1.3 record costs OpenSSL 3 more).
        conf = conf.replace("proxy_pass http://mocks;", "proxy_pass https://mocks;\n"
                            "            proxy_ssl_protocols %s;\n"
                            "            proxy_ssl_session_reuse on;\n"
                            "            proxy_ssl_verify on;\n"
                            "            proxy_ssl_trusted_certificate %s;\n"
                            "            proxy_ssl_server_name on;\n"
                            "            proxy_ssl_name localhost;"
                            % (NGINX_UPSTREAM_TLS, https_ca))
    servers = "\n".join("        server %s max_fails=0;" % u for u in upstreams)
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
    conf = conf.replace("@TMP@", tmp).replace("@LISTEN@", listen).replace("@SERVERS@", servers)
    conf = conf.replace("@NOFILE@", str(nofile))
    path = os.path.join(tmp, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    return path


def start_nginx(tmp, upstreams, https_ca=None):
    port = free_port()
    listen = "127.0.0.1:%d" % port
    conf = write_nginx_conf(tmp, listen, upstreams, https_ca)
    chk = subprocess.run([NGINX, "-t", "-q", "-p", tmp, "-c", conf], capture_output=True, text=True)
    if chk.returncode != 0:
        raise RuntimeError("nginx -t failed:\n" + chk.stderr)
    errf = open(os.path.join(tmp, "nginx-stderr.log"), "w")
    p = PROCS.start("nginx", [NGINX, "-p", tmp, "-c", conf], cpus=[TARGET_CPU],
                    stdout=errf, stderr=errf)
    p.addr = listen
    if not wait_http("http://%s/" % listen, proc=p):
        raise RuntimeError("nginx did not start: see %s" % os.path.join(tmp, "nginx-error.log"))
    return p


def start_haproxy(tmp, upstreams, busy=False):
    """HAProxy (scripts/bench/haproxy.cfg.in): nbthread 1, http-reuse always;
    busy: with `busy-polling` in its global section (its own file)."""
    port = free_port()
    listen = "127.0.0.1:%d" % port
    with open(os.path.join(HERE, "haproxy.cfg.in")) as f:
        conf = f.read()
    servers = "\n".join("    server m%d %s" % (i, u) for i, u in enumerate(upstreams))
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
    # Each proxied connection takes two descriptors.
    conf = conf.replace("@LISTEN@", listen).replace("@SERVERS@", servers)
    conf = conf.replace("@MAXCONN@", str(max(256, nofile // 2 - 100)))
    if busy:
        conf = conf.replace("\nglobal\n", "\nglobal\n    busy-polling\n", 1)
    path = os.path.join(tmp, "haproxy-busy.cfg" if busy else "haproxy.cfg")
    with open(path, "w") as f:
        f.write(conf)
    chk = subprocess.run([HAPROXY, "-c", "-q", "-f", path], capture_output=True, text=True)
    if chk.returncode != 0:
        raise RuntimeError("haproxy -c failed:\n" + chk.stdout + chk.stderr)
    errf = open(os.path.join(tmp, "haproxy%s-stderr.log" % ("-busy" if busy else "")), "w")
    p = PROCS.start("haproxy", [HAPROXY, "-db", "-f", path], cpus=[TARGET_CPU],
                    stdout=errf, stderr=errf)
    p.addr = listen
    if not wait_http("http://%s/" % listen, proc=p):
        raise RuntimeError("haproxy did not start: see %s" % errf.name)
    return p


def infergate_conf_dir(tmp, name, upstreams, nhosts=None, nkeys=4, health=True, extra="",
                       log_level="warn", workers=1, https_ca=None):
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    if nhosts is None:
        hosts = [{"name": "up-%d" % i, "url": "http://%s" % u, "models": [MODEL]}
                 for i, u in enumerate(upstreams)]
        if https_ca:
            for h in hosts:
                h["url"] = h["url"].replace("http://", "https://")
                h["tls"] = {"ca_file": https_ca}
    else:
        hosts = [{"name": "h%05d.bench" % i, "url": "http://%s" % upstreams[i % len(upstreams)],
                  "models": [MODEL]} for i in range(nhosts)]
    with open(os.path.join(d, "hosts.json"), "w") as f:
        json.dump({"hosts": hosts}, f, indent=0)
    keys = [{"key": "sk-bench-%06d-%s" % (i, "abcdefghijkl"), "description": "bench key %d" % i,
             "isActive": True} for i in range(nkeys)]
    with open(os.path.join(d, "api-keys.json"), "w") as f:
        json.dump({"apiKeys": keys}, f, indent=0)
    with open(os.path.join(d, "policies.yaml"), "w") as f:
        f.write(
            "# generated by scripts/bench/run.py\n"
            "server:\n"
            "  listen: 127.0.0.1:1\n"
            "  workers: %d\n"
            "  drain_timeout: 1s\n"
            "  log: {level: %s}\n"
            "routing:\n"
            "  strategy: round-robin\n"
            "retry:\n"
            "  max_attempts: 3\n"
            "  on: [network_error, timeout, 5xx, 429]\n"
            "  per_try_timeout: 10s\n"
            "  deadline: 30s\n"
            "circuit_breaker:\n"
            "  enabled: true\n"
            "  failure_threshold: 5\n"
            "  reset_timeout: 30s\n"
            "health_check:\n"
            "  enabled: %s\n"
            "  interval: 10s\n"
            "%s" % (workers, log_level, "true" if health else "false", extra))
    return d


def start_infergate(tmp, name, confdir, cpus="target"):
    port = free_port()
    listen = "127.0.0.1:%d" % port
    errf = open(os.path.join(tmp, name + ".log"), "w")
    t0 = time.monotonic()
    p = PROCS.start(name, [INFERGATE, "-c", confdir, "-l", listen],
                    cpus=[TARGET_CPU] if cpus == "target" else cpus,
                    stdout=errf, stderr=errf)
    p.addr = listen
    p.logfile = errf.name
    if not wait_http("http://%s/health" % listen, timeout=60, proc=p):
        with open(errf.name) as f:
            tail = f.read()[-2000:]
        raise RuntimeError("infergate did not start (%s):\n%s" % (confdir, tail))
    p.start_s = time.monotonic() - t0
    return p


def chat_body(stream):
    body = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer briefly and "
                                          "cite the document you used when there is one."},
            {"role": "user", "content": "Summarise the following paragraph in one sentence: "
                                        "The quarterly report shows revenue growth in every "
                                        "region, led by the new subscription tier, while costs "
                                        "stayed flat thanks to the move to shared inference "
                                        "clusters and better batching of requests."},
        ],
        "temperature": 0.7,
        "max_tokens": 256,
        "user": "bench-user-0001",
    }
    if stream:
        body["stream"] = True
    return json.dumps(body)


def sanity(target, addr, tmp):
    """One JSON and one SSE request through the target; returns sizes."""
    st, body, _ = http("POST", "http://%s/v1/chat/completions" % addr, chat_body(False))
    if st != 200 or '"chat.completion"' not in body:
        raise RuntimeError("%s: JSON answer %d %s" % (target, st, body[:300]))
    st2, sse, hdrs = http("POST", "http://%s/v1/chat/completions" % addr, chat_body(True),
                          headers={"Accept": "text/event-stream"})
    if st2 != 200 or "data: [DONE]" not in sse or sse.count("data: ") != SSE_CHUNKS + 1:
        raise RuntimeError("%s: SSE answer %d %s" % (target, st2, sse[:300]))
    return {"json_body_bytes": len(body.encode()), "sse_body_bytes": len(sse.encode())}


# --- load runs ----------------------------------------------------------------

def run_wrk(addr, body_file, conns, duration, pid, perf_out=None, during=None, cpus=None,
            client_key=None):
    threads = min(WRK_THREADS, conns)
    argv = ["taskset", "-c", ",".join(map(str, cpus or LOAD_CPUS)), WRK, "-t%d" % threads,
            "-c%d" % conns, "-d%ds" % max(1, round(duration)), "--timeout", "5s",
            "-s", os.path.join(HERE, "post.lua"), "http://%s" % addr, "--", body_file]
    if client_key:
        argv += ["/v1/chat/completions", client_key]
    perf = None
    with Sampler(pid) as smp:
        if perf_out:
            perf = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-o", perf_out,
                                     "-p", str(pid), "--", "sleep", str(max(1, duration - 1))],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    preexec_fn=_child_setup)
        stop_ev = threading.Event()
        th = None
        if during:
            th = threading.Thread(target=during, args=(stop_ev,), daemon=True)
            th.start()
        ch0 = children_cpu_s()
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
        finally:
            smp.child_s = children_cpu_s() - ch0
            stop_ev.set()
            if th:
                th.join()
    if perf:
        perf.wait(30)
    m = re.search(r"^BENCH_JSON (.*)$", out.stdout, re.M)
    if out.returncode != 0 or not m:
        raise RuntimeError("wrk failed (%d): %s %s" % (out.returncode, out.stdout[-500:],
                                                       out.stderr[-500:]))
    w = json.loads(m.group(1))
    secs = w["duration_us"] / 1e6
    errors = sum(w["errors"].values())
    ok = max(0, w["requests"] - w["errors"]["status"])
    r = {"rps": round(w["requests"] / secs, 1),
         "requests": w["requests"],
         "errors": errors,
         "error_detail": w["errors"],
         "p50_ms": w["latency_us"]["p50"] / 1000.0,
         "p90_ms": w["latency_us"]["p90"] / 1000.0,
         "p99_ms": w["latency_us"]["p99"] / 1000.0,
         "p999_ms": w["latency_us"]["p99.9"] / 1000.0,
         "max_ms": w["latency_us"]["max"] / 1000.0,
         "bytes_per_response": round(w["bytes"] / w["requests"]) if w["requests"] else 0}
    r.update(smp.result())
    r["cpu_us_per_req"] = round(smp.cpu_s * 1e6 / ok, 1) if ok else None
    return r


def run_sse_client(addr, body_file, conns, duration, rate, pid, warm=TTFB_WARMUP):
    argv = ["taskset", "-c", ",".join(map(str, LOAD_CPUS)), SSE_CLIENT, "-a", addr,
            "-b", body_file, "-c", str(conns), "-d", str(duration), "-w", str(warm),
            "-r", str(rate), "-n", "3000000"]
    with Sampler(pid) as smp:
        ch0 = children_cpu_s()
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + warm + 60)
        smp.child_s = children_cpu_s() - ch0
    if out.returncode != 0:
        raise RuntimeError("sse-client failed: %s" % out.stderr[-500:])
    s = json.loads(out.stdout.strip().splitlines()[-1])
    r = {"rps": s["rps"], "requests": s["requests"], "errors": s["errors"] + s["connect_errors"],
         "late_starts": s["late_starts"],
         "ttfb_p50_ms": s["ttfb_us"]["p50"] / 1000.0, "ttfb_p90_ms": s["ttfb_us"]["p90"] / 1000.0,
         "ttfb_p99_ms": s["ttfb_us"]["p99"] / 1000.0,
         "ttfb_p999_ms": s["ttfb_us"]["p99.9"] / 1000.0,
         "stream_p50_ms": s["total_us"]["p50"] / 1000.0,
         "stream_p99_ms": s["total_us"]["p99"] / 1000.0}
    r.update(smp.result())
    # The sampler also covers the client's warm-up; CPU% is still right.
    return r


NOISY_OTHER_PCT = env_float("BENCH_NOISY_PCT", 15)


def median_of(runs):
    """Per-metric median over repetitions (numbers only). Repetitions during
    which other processes used more than NOISY_OTHER_PCT % of a core are left
    out when at least one quiet repetition exists; the cell says how many were
    noisy ("noisy_reps") and whether the median still includes some
    ("noisy": true, shown as * in the table)."""
    if not runs:
        return {}
    all_runs = runs
    quiet = [r for r in runs if r.get("other_cpu_pct", 0) <= NOISY_OTHER_PCT]
    runs = quiet or runs
    out = {}
    for k, v in runs[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            vals = [r[k] for r in runs if isinstance(r.get(k), (int, float))]
            m = statistics.median(vals)
            out[k] = round(m, 3) if isinstance(m, float) else m
    out["errors"] = sum(r.get("errors", 0) for r in all_runs)  # the total, not a median
    out["reps"] = len(runs)
    out["noisy_reps"] = len(all_runs) - len(quiet)
    out["noisy"] = not quiet
    return out


# --- table --------------------------------------------------------------------

def fmt_ms(v):
    if v is None:
        return "-"
    return "%.2f" % v if v < 10 else "%.1f" % v


def fmt_rate(v):
    return "{:,.0f}".format(v) if v is not None else "-"


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def print_main_table(summary):
    log("")
    log("%-5s %5s  %-10s %10s %8s %8s %8s %7s %6s %8s %10s" % (
        "load", "conns", "target", "req/s", "p50 ms", "p99 ms", "p99.9", "errors",
        "CPU%", "RSS MB", "CPU us/req"))
    log("-" * 98)
    for key in summary["order"]:
        rows = summary["cells"][key]
        scen, conns = key.split("/")
        for t in TARGETS:
            m = rows.get(t)
            if not m:
                log("%-5s %5s  %-10s %10s" % (scen, conns, t, "failed"))
                continue
            log("%-5s %5s  %-10s %10s %8s %8s %8s %7d %6.0f %8.1f %10s" % (
                scen, conns, t, ("*" if m.get("noisy") else "") + fmt_rate(m["rps"]),
                fmt_ms(m["p50_ms"]), fmt_ms(m["p99_ms"]),
                fmt_ms(m["p999_ms"]), m["errors"], m["cpu_pct"], m["rss_kb"] / 1024.0,
                "%.1f" % m["cpu_us_per_req"] if m.get("cpu_us_per_req") else "-"))
        rr = summary["ratios"].get(key, {})
        parts = []
        for peer in ("nginx", "haproxy"):
            if rr.get("rps_vs_" + peer) is not None:
                parts.append("infergate/%s %.2fx req/s, %.2fx CPU/req, p99 %+.2f ms" % (
                    peer, rr["rps_vs_" + peer], rr.get("cpu_per_req_vs_" + peer) or 0,
                    rr.get("p99_added_vs_%s_ms" % peer) or 0))
        if rr.get("rps_vs_direct") is not None:
            parts.append("infergate/direct %.2fx req/s, p99 %+.2f ms" % (
                rr["rps_vs_direct"], rr.get("p99_added_vs_direct_ms") or 0))
        for part in parts:
            log("%19s %s" % ("", part))
        added = [(t, rr["added_us_" + t]) for t in TARGETS if "added_us_" + t in rr]
        if added and conns == "1":
            log("%19s added over direct at concurrency 1 (p50/p99 us): %s" % (
                "", ", ".join("%s %+d/%+d" % (t, a["p50"], a["p99"]) for t, a in added)))
        log("")


def print_fixed_table(fixed):
    log("Fixed rate (open loop, nothing saturated): latency to the first body byte (SSE: the "
        "first chunk) and to the end")
    log("%-5s %7s %-10s %9s %9s %9s %10s %10s %7s %6s" % (
        "load", "rate/s", "target", "first p50", "first p99", "first p99.9", "end p50",
        "end p99", "errors", "CPU%"))
    log("-" * 94)
    for scen, f in fixed.items():
        for t in TARGETS:
            m = f["median"].get(t)
            if not m:
                log("%-5s %7d %-10s failed" % (scen, f["rate"], t))
                continue
            log("%-5s %7d %-10s %9s %9s %9s %10s %10s %7d %6.0f" % (
                scen, f["rate"], t, ("*" if m.get("noisy") else "") + fmt_ms(m["ttfb_p50_ms"]),
                fmt_ms(m["ttfb_p99_ms"]),
                fmt_ms(m["ttfb_p999_ms"]), fmt_ms(m["stream_p50_ms"]), fmt_ms(m["stream_p99_ms"]),
                m["errors"], m["cpu_pct"]))
        r = f["ratios"]
        if scen == "json" and "ttfb_p99_added_vs_direct_ms" in r:
            log("%19s infergate adds %+.3f ms at p50, %+.3f ms at p99 over direct "
                "(target: p99 <= +1 ms)" % ("", r["stream_p50_added_vs_direct_ms"],
                                           r["stream_p99_added_vs_direct_ms"]))
        if scen == "sse" and "ttfb_p50_added_vs_direct_ms" in r:
            log("%19s infergate first chunk %+.3f ms at p50 over direct (target <= +0.5 ms)%s" % (
                "", r["ttfb_p50_added_vs_direct_ms"],
                ", %+.3f ms over nginx" % r["ttfb_p50_added_vs_nginx_ms"]
                if "ttfb_p50_added_vs_nginx_ms" in r else ""))
        log("")


def print_scale_table(sc):
    log("Idle SSE streams held at once (%d asked, one chunk then 10 s of silence, held %d s)"
        % (sc["streams"], sc["hold_s"]))
    log("%-10s %8s %7s %13s %13s %12s %14s %14s" % (
        "target", "held", "errors", "RSS before MB", "RSS peak MB", "bytes/stream",
        "+mocks peak MB", "+mocks 10k MB"))
    log("-" * 100)
    for t in TARGETS:
        m = sc["targets"].get(t)
        if not m:
            continue
        log("%-10s %8d %7d %13.1f %13.1f %12s %14.1f %14s" % (
            t, m["held"], m["errors"], m["rss_before_kb"] / 1024.0, m["rss_kb"] / 1024.0,
            "{:,}".format(m["bytes_per_stream"]) if m["bytes_per_stream"] else "-",
            m.get("rss_with_mocks_kb", 0) / 1024.0,
            "%.1f" % m["total_10k_mb"] if m.get("total_10k_mb") else "-"))
    ig = sc["targets"].get("infergate")
    if ig and ig.get("bytes_per_stream"):
        log("%19s infergate: %.0f MB for 10,000 streams at this rate, %.0f MB with the upstream "
            "mocks (target: <= 150 MB in all, no error)" % (
                "", (ig["rss_before_kb"] * 1024 + 10000 * ig["bytes_per_stream"]) / 1048576.0,
                ig.get("total_10k_mb") or 0))
    if sc["streams"] < sc["requested"]:
        log("%19s (RLIMIT_NOFILE %d: %d streams instead of %d)" % (
            "", sc["rlimit_nofile"], sc["streams"], sc["requested"]))
    log("")


def print_pool_table(pool):
    log("Pool size: infergate, JSON, 64 connections, the same %d upstreams behind every name, "
        "4 keys (%d with %d hosts), health checks off" % (NMOCKS, POOL_BIG_KEYS, POOL_SIZES[-1]))
    log("%-14s %10s %8s %8s %8s %8s %7s %6s %8s %8s" % (
        "hosts", "req/s", "p50 ms", "p99 ms", "p99.9", "max ms", "errors", "CPU%", "RSS MB",
        "start s"))
    log("-" * 96)
    for label in pool.get("rows", []):
        m = pool["median"].get(label)
        if not m:
            log("%-14s failed" % label)
            continue
        log("%-14s %10s %8s %8s %8s %8s %7d %6.0f %8.1f %8s" % (
            label, ("*" if m.get("noisy") else "") + fmt_rate(m["rps"]), fmt_ms(m["p50_ms"]),
            fmt_ms(m["p99_ms"]),
            fmt_ms(m["p999_ms"]), fmt_ms(m["max_ms"]), m["errors"], m["cpu_pct"],
            m["rss_kb"] / 1024.0, "%.2f" % pool["start_s"][label] if label in pool["start_s"]
            else ""))
    big = POOL_SIZES[-1]
    if pool.get("ratio") is not None:
        log("%19s req/s with %d hosts / with %d hosts = %.2f (target >= 0.90)" % (
            "", big, POOL_SIZES[0], pool["ratio"]))
    if pool.get("reload_p99_ratio") is not None:
        log("%19s p99 with a SIGHUP reload of %d hosts every %gs / without = %.2f "
            "(target < 2; %d reloads logged)" % ("", big, POOL_RELOAD_EVERY,
                                                 pool["reload_p99_ratio"],
                                                 pool.get("reloads_logged", 0)))
    if pool.get("reload_parse_ms"):
        log("%19s each reload of %d hosts + %d keys: parsed off the loop in %d ms of CPU "
            "(max %d; target < 1000), %d ms wall (max %d) at nice 10 beside the loaded loop; "
            "installed in %d ms (max %d) on the loop" % (
                "", POOL_SIZES[-1], POOL_BIG_KEYS, pool["reload_parse_cpu_ms"]["median"],
                pool["reload_parse_cpu_ms"]["max"], pool["reload_parse_ms"]["median"],
                pool["reload_parse_ms"]["max"], pool["reload_install_ms"]["median"],
                pool["reload_install_ms"]["max"]))
    for c in pool.get("check", []):
        log("%19s infergate -t on %d hosts + %d keys: %s" % (
            "", c["hosts"], c["keys"], "%.2f s wall" % c["seconds"] if c["seconds"] is not None
            else "failed or > %d s" % CHECK_TIMEOUT))
    log("")


# --- main ---------------------------------------------------------------------

def machine_info():
    info = {"cpus": NCPU, "kernel": platform.release(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
            info["cpu_model"] = m.group(1) if m else "?"
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_kb"] = int(f.readline().split()[1])
    except OSError:
        pass
    try:
        info["virtualization"] = subprocess.run(["systemd-detect-virt"], capture_output=True,
                                                text=True).stdout.strip() or "none"
    except OSError:
        pass
    try:
        with open("/etc/os-release") as f:
            m = re.search(r'PRETTY_NAME="(.*)"', f.read())
            info["os"] = m.group(1) if m else "?"
    except OSError:
        pass
    for name, argv in (("nginx", [NGINX, "-v"]), ("haproxy", [HAPROXY, "-v"]),
                       ("wrk", [WRK, "-v"]), ("infergate", [INFERGATE, "-V"])):
        try:
            o = subprocess.run(argv, capture_output=True, text=True, timeout=5)
            info[name] = (o.stdout + o.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            info[name] = "?"
    try:
        info["git"] = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                                     capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    return info


def main():
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(s, _on_signal)
    t_begin = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="infergate-bench-")
    os.chmod(tmp, 0o755)         # nginx workers may run as nobody
    results = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "quick": QUICK, "params": {
                   "reps": REPS, "duration_s": DURATION, "warmup_s": WARMUP, "conns": CONNS,
                   "targets": TARGETS, "scenarios": SCENARIOS, "mocks": NMOCKS,
                   "sse_chunks": SSE_CHUNKS, "target_cpu": TARGET_CPU, "load_cpus": LOAD_CPUS,
                   "wrk_threads": WRK_THREADS, "content_bytes_flag": mock_has_flag("--content-bytes"),
                   "binaries": {"infergate": INFERGATE, "mock": MOCK, "nginx": NGINX, "wrk": WRK}},
               "machine": machine_info()}
    try:
        return run_all(tmp, results, t_begin)
    except KeyboardInterrupt:
        note("interrupted; stopping everything")
        return 130
    finally:
        PROCS.stop_all()
        if os.environ.get("BENCH_KEEP_TMP"):
            note("temp dir kept: " + tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run_all(tmp, results, t_begin):
    log("infergate bench: %s, %d cores; target on core %d, wrk + mocks on %s; %d x %gs per cell%s"
        % (results["machine"].get("cpu_model", "?"), NCPU, TARGET_CPU,
           ",".join(map(str, LOAD_CPUS)), REPS, DURATION, " (BENCH_QUICK)" if QUICK else ""))
    if NCPU < 2:
        note("one core only: the target and the load share it; ratios still mean something")
    if not mock_has_flag("--content-bytes"):
        note("the mock has no --content-bytes: JSON answers are the mock's default size "
             "(~0.3 KB, not ~1 KB)")

    bodies = {}
    for scen, stream in (("json", False), ("sse", True)):
        bodies[scen] = os.path.join(tmp, "body-%s.json" % scen)
        with open(bodies[scen], "w") as f:
            f.write(chat_body(stream))
    if HTTPS_ONLY:
        results["https"] = run_https(tmp, bodies)
        results["elapsed_s"] = round(time.monotonic() - t_begin, 1)
        print_https_table(results["https"])
        path = write_results(results)
        log("results: %s (%.0f s)" % (os.path.relpath(path, ROOT), results["elapsed_s"]))
        return 0

    # Upstreams on the load cores; the direct target's own mock on the target core.
    ups = [start_mock("up-%d" % i, LOAD_CPUS) for i in range(NMOCKS)]
    up_addrs = [m.addr for m in ups]
    targets = {}
    target_err = {}
    for t in TARGETS:
        try:
            if t == "direct":
                targets[t] = start_mock("direct", [TARGET_CPU])
            elif t == "nginx":
                targets[t] = start_nginx(tmp, up_addrs)
            elif t == "haproxy":
                targets[t] = start_haproxy(tmp, up_addrs)
            elif t == "infergate":
                targets[t] = start_infergate(tmp, "infergate",
                                             infergate_conf_dir(tmp, "conf-main", up_addrs))
            else:
                raise RuntimeError("unknown target %r" % t)
            results.setdefault("sizes", {})[t] = sanity(t, targets[t].addr, tmp)
        except (RuntimeError, OSError) as e:
            note("target %s unavailable: %s" % (t, e))
            target_err[t] = str(e)
            if t in targets:
                PROCS.stop(targets.pop(t))
    results["target_errors"] = target_err
    log("request body %d B (JSON) / %d B (SSE); answer bodies: %s" % (
        os.path.getsize(bodies["json"]), os.path.getsize(bodies["sse"]),
        ", ".join("%s %d B JSON, %d B SSE" % (t, s["json_body_bytes"], s["sse_body_bytes"])
                  for t, s in results.get("sizes", {}).items())))

    # Warm-up: connections, caches, curl's connection pool.
    for t, p in targets.items():
        for scen in SCENARIOS[:1] if QUICK else SCENARIOS:
            try:
                run_wrk(p.addr, bodies[scen], max(CONNS), WARMUP, p.pid)
            except RuntimeError as e:
                note("warm-up %s %s: %s" % (t, scen, e))

    # The matrix: repetitions outermost, targets innermost, so drift hits all alike.
    runs = {}
    order = []
    for scen in SCENARIOS:
        for c in CONNS:
            order.append("%s/%d" % (scen, c))
    for rep in range(REPS):
        for key in order:
            scen, c = key.split("/")
            for t, p in targets.items():
                try:
                    r = run_wrk(p.addr, bodies[scen], int(c), DURATION, p.pid)
                except RuntimeError as e:
                    note("%s %s rep %d: %s" % (t, key, rep + 1, e))
                    continue
                r["rep"] = rep + 1
                runs.setdefault(key, {}).setdefault(t, []).append(r)
                log("  rep %d %-8s %-10s %10s req/s  p50 %6s  p99 %6s ms  err %d  cpu %3.0f%%  "
                    "load core %3.0f%%  other %3.0f%%" % (
                        rep + 1, key, t, fmt_rate(r["rps"]), fmt_ms(r["p50_ms"]),
                        fmt_ms(r["p99_ms"]), r["errors"], r["cpu_pct"], r["load_cpu_busy_pct"],
                        r["other_cpu_pct"]))

    # A profile of infergate under JSON load, in a run of its own (perf
    # slows the process down, so it is not one of the measured repetitions).
    if DO_PERF and "infergate" in targets and "json" in SCENARIOS:
        if shutil.which("perf"):
            perf_out = os.path.join(tmp, "perf.data")
            try:
                r = run_wrk(targets["infergate"].addr, bodies["json"], 64, DURATION,
                            targets["infergate"].pid, perf_out)
                results["perf_run"] = r
                results["perf_report"] = perf_report(perf_out)
            except RuntimeError as e:
                note("perf run: %s" % e)
        else:
            note("BENCH_PERF=1 but perf is not installed (Debian: linux-perf)")

    summary = {"order": order, "cells": {}, "ratios": {}}
    for key in order:
        cell = {t: median_of(v) for t, v in runs.get(key, {}).items()}
        summary["cells"][key] = cell
        ig, ng, di = cell.get("infergate"), cell.get("nginx"), cell.get("direct")
        rr = {}
        for peer in ("nginx", "haproxy"):
            pc = cell.get(peer)
            if ig and pc:
                rr["rps_vs_" + peer] = ratio(ig["rps"], pc["rps"])
                rr["cpu_per_req_vs_" + peer] = ratio(ig.get("cpu_us_per_req"),
                                                    pc.get("cpu_us_per_req"))
                rr["p50_added_vs_%s_ms" % peer] = round(ig["p50_ms"] - pc["p50_ms"], 3)
                rr["p99_added_vs_%s_ms" % peer] = round(ig["p99_ms"] - pc["p99_ms"], 3)
        # Latency each proxy adds over the bare mock (the concurrency-1 rows
        # are the "added latency at low load").
        if di:
            for t, m in cell.items():
                if t != "direct" and m:
                    rr["added_us_" + t] = {"p50": round((m["p50_ms"] - di["p50_ms"]) * 1000),
                                           "p99": round((m["p99_ms"] - di["p99_ms"]) * 1000)}
        if ig and di:
            rr["rps_vs_direct"] = ratio(ig["rps"], di["rps"])
            rr["p50_added_vs_direct_ms"] = round(ig["p50_ms"] - di["p50_ms"], 3)
            rr["p99_added_vs_direct_ms"] = round(ig["p99_ms"] - di["p99_ms"], 3)
        if ng and di:
            rr["nginx_rps_vs_direct"] = ratio(ng["rps"], di["rps"])
        summary["ratios"][key] = rr
    results["runs"] = runs
    results["summary"] = summary

    # Fixed rate, open loop: added latency when nothing is saturated.
    if DO_TTFB and SSE_CLIENT:
        results["fixed_rate"] = run_fixed_rate(targets, ups, bodies)
    elif DO_TTFB:
        note("SSE_CLIENT not set: no fixed-rate (time to first chunk) runs")

    if DO_STREAMS and SSE_CLIENT and "sse" in SCENARIOS:
        results["streams"] = run_streams(targets, ups, bodies)

    if DO_SCALE and SSE_CLIENT and "sse" in SCENARIOS:
        results["scale"] = run_scale(targets, ups, bodies)

    # Key rotation and spread, as the upstreams saw them.
    up_stats = []
    for m in ups:
        try:
            st, body, _ = http("GET", "http://%s/_mock/stats" % m.addr)
            s = json.loads(body)
            up_stats.append({"name": s["name"], "requests": s["requests"], "keys": s["keys"],
                             "statuses": s["statuses"]})
        except (OSError, ValueError):
            pass
    results["upstream_stats"] = up_stats

    # Stop the main targets before the pool run (memory, cores).
    for p in targets.values():
        PROCS.stop(p)

    if DO_WORKERS and "infergate" in TARGETS:
        results["workers"] = run_workers(tmp, up_addrs, bodies["json"])

    if DO_HTTPS:
        results["https"] = run_https(tmp, bodies)

    if DO_LIMITS and "infergate" in TARGETS:
        results["limits"] = run_limits(tmp, up_addrs, bodies["json"])

    if DO_POOL and "infergate" in TARGETS:
        results["pool"] = run_pool(tmp, up_addrs, bodies["json"])

    results["elapsed_s"] = round(time.monotonic() - t_begin, 1)
    print_all(results)
    path = write_results(results)
    log("results: %s (%.0f s)" % (os.path.relpath(path, ROOT), results["elapsed_s"]))
    return 0


def run_fixed_rate(targets, ups, bodies):
    out = {}
    mocks = ups + ([targets["direct"]] if "direct" in targets else [])
    for scen, rate, conns in FIXED:
        if scen not in SCENARIOS:
            continue
        if scen == "sse":
            mock_config(mocks, chunk_interval_ms=TTFB_INTERVAL_MS)
        fr = {}
        try:
            for rep in range(REPS):
                for t, p in targets.items():
                    try:
                        r = run_sse_client(p.addr, bodies[scen], conns, TTFB_DURATION, rate, p.pid)
                    except (RuntimeError, ValueError) as e:
                        note("fixed rate %s %s rep %d: %s" % (scen, t, rep + 1, e))
                        continue
                    r["rep"] = rep + 1
                    fr.setdefault(t, []).append(r)
                    log("  rep %d %-4s@%-4d %-10s first byte p50 %6s  p99 %6s ms  complete p50 "
                        "%6s ms  err %d  late %d  other %3.0f%%" % (
                            rep + 1, scen, rate, t, fmt_ms(r["ttfb_p50_ms"]),
                            fmt_ms(r["ttfb_p99_ms"]), fmt_ms(r["stream_p50_ms"]), r["errors"],
                            r["late_starts"], r["other_cpu_pct"]))
        finally:
            if scen == "sse":
                mock_config(mocks, chunk_interval_ms=None)
        med = {t: median_of(v) for t, v in fr.items()}
        rr = {}
        for other in ("direct", "nginx"):
            if "infergate" in med and other in med:
                for k in ("ttfb_p50_ms", "ttfb_p99_ms", "stream_p50_ms", "stream_p99_ms"):
                    rr["%s_added_vs_%s_ms" % (k[:-3], other)] = round(
                        med["infergate"][k] - med[other][k], 3)
        out[scen] = {"rate": rate, "conns": conns, "duration_s": TTFB_DURATION,
                     "chunk_interval_ms": TTFB_INTERVAL_MS if scen == "sse" else None,
                     "runs": fr, "median": med, "ratios": rr}
    return out


def run_streams(targets, ups, bodies):
    """STREAMS_CONNS SSE streams at once, closed loop (a connection starts its
    next stream as soon as one ends), the upstream's SSE_CHUNKS events
    STREAMS_INTERVAL_MS apart. sse-client -s checks every stream: the mock
    numbers its deltas (tok0, tok1, ...), each must come once and in order,
    then [DONE]. Lost or reordered frames are reported, never asserted."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    n = STREAMS_CONNS
    if 2 * n + 64 > soft:
        n = max(16, (soft - 64) // 2)
        note("RLIMIT_NOFILE is %d here: concurrent-streams check with %d streams instead of %d"
             % (soft, n, STREAMS_CONNS))
    mocks = ups + ([targets["direct"]] if "direct" in targets else [])
    out = {"conns": n, "duration_s": STREAMS_DURATION, "events": SSE_CHUNKS,
           "interval_ms": STREAMS_INTERVAL_MS, "targets": {}}
    mock_config(mocks, chunks=SSE_CHUNKS, chunk_interval_ms=STREAMS_INTERVAL_MS)
    try:
        for t, p in targets.items():
            time.sleep(0.5)
            argv = ["taskset", "-c", ",".join(map(str, LOAD_CPUS)), SSE_CLIENT, "-a", p.addr,
                    "-b", bodies["sse"], "-c", str(n), "-d", str(STREAMS_DURATION), "-w", "0.5",
                    "-s", str(SSE_CHUNKS)]
            with Sampler(p.pid) as smp:
                ch0 = children_cpu_s()
                o = subprocess.run(argv, capture_output=True, text=True,
                                   timeout=STREAMS_DURATION + 60)
                smp.child_s = children_cpu_s() - ch0
            if o.returncode != 0:
                note("concurrent streams %s: %s" % (t, o.stderr[-300:]))
                continue
            s = json.loads(o.stdout.strip().splitlines()[-1])
            r = smp.result()
            q = s["seq"]
            r.update({"streams": q["streams"], "bad_streams": q["bad_streams"],
                      "frames": q["frames"], "lost": q["lost"], "reordered": q["reordered"],
                      "errors": s["errors"] + s["connect_errors"], "rps": s["rps"],
                      "ttfb_p50_ms": s["ttfb_us"]["p50"] / 1000.0,
                      "ttfb_p99_ms": s["ttfb_us"]["p99"] / 1000.0,
                      "total_p50_ms": s["total_us"]["p50"] / 1000.0,
                      "total_p99_ms": s["total_us"]["p99"] / 1000.0})
            out["targets"][t] = r
            log("  streams  %-10s %d at once: %d streams, %d frames, lost %d, reordered %d, "
                "errors %d, %.0f streams/s, CPU %.0f%%" % (
                    t, n, q["streams"], q["frames"], q["lost"], q["reordered"], r["errors"],
                    s["rps"], r["cpu_pct"]))
    finally:
        mock_config(mocks, chunks=None, chunk_interval_ms=None)
    time.sleep(0.5)
    return out


def print_streams_table(st):
    log("Concurrent SSE streams: %d at once, closed loop, %d numbered events %d ms apart per "
        "stream, %d s; every stream checked" % (st["conns"], st["events"], st["interval_ms"],
                                               st["duration_s"]))
    log("%-10s %9s %10s %6s %10s %7s %10s %9s %9s %6s" % (
        "target", "streams", "frames", "lost", "reordered", "errors", "streams/s",
        "end p50", "end p99", "CPU%"))
    log("-" * 96)
    for t in TARGETS:
        m = st["targets"].get(t)
        if not m:
            continue
        log("%-10s %9d %10d %6d %10d %7d %10.0f %9.1f %9.1f %6.0f" % (
            t, m["streams"], m["frames"], m["lost"], m["reordered"], m["errors"], m["rps"],
            m["total_p50_ms"], m["total_p99_ms"], m["cpu_pct"]))
    log("")


def run_scale(targets, ups, bodies):
    """SCALE_STREAMS concurrent SSE streams that stay idle (the upstream
    sends one chunk, then waits 10 s), held for SCALE_HOLD s: how many were
    held, errors, the target's RSS before and at its peak, bytes per stream."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    n = SCALE_STREAMS
    # A proxy needs two descriptors per stream (client + upstream) and a few more.
    if 2 * n + 64 > soft:
        n = max(100, (soft - 64) // 2 // 100 * 100)
        note("RLIMIT_NOFILE is %d here (a proxy needs 2 per stream): idle-stream test with "
             "%d streams instead of %d" % (soft, n, SCALE_STREAMS))
    mocks = ups + ([targets["direct"]] if "direct" in targets else [])
    out = {"requested": SCALE_STREAMS, "streams": n, "hold_s": SCALE_HOLD,
           "rlimit_nofile": soft, "targets": {}}
    mock_config(mocks, chunks=3, chunk_interval_ms=10000)
    try:
        for t, p in targets.items():
            time.sleep(1.0)          # let the previous run's connections close
            if t != "direct":
                restart_mocks(ups)
                mock_config(ups, chunks=3, chunk_interval_ms=10000)
                time.sleep(0.5)
            base = sum(rss_kb(q) for q in proc_tree(p.pid))
            up_pids = [m.pid for m in ups]
            base_mocks = sum(rss_kb(q) for q in up_pids)
            argv = ["taskset", "-c", ",".join(map(str, LOAD_CPUS)), SSE_CLIENT, "-a", p.addr,
                    "-b", bodies["sse"], "-c", str(n), "-d", str(SCALE_HOLD), "-w", "0"]
            with Sampler(p.pid, rss_with=up_pids) as smp:
                ch0 = children_cpu_s()
                o = subprocess.run(argv, capture_output=True, text=True,
                                   timeout=SCALE_HOLD + 60)
                smp.child_s = children_cpu_s() - ch0
            if o.returncode != 0:
                note("idle streams %s: %s" % (t, o.stderr[-300:]))
                continue
            s = json.loads(o.stdout.strip().splitlines()[-1])
            r = smp.result()
            held = s["open_streams"]
            r.update({"held": held, "errors": s["errors"] + s["connect_errors"],
                      "rss_before_kb": base,
                      "rss_before_with_mocks_kb": base + base_mocks,
                      # the target and the upstream mocks together, at 10,000 streams
                      "total_10k_mb": round((base + base_mocks) / 1024.0 + 10000 * (
                          r["rss_with_mocks_kb"] - base - base_mocks) / 1024.0 / held, 1)
                      if held else None,
                      "bytes_per_stream": round((r["rss_kb"] - base) * 1024 / held)
                      if held else None})
            out["targets"][t] = r
            log("  idle     %-10s %6d of %d streams held, errors %d, RSS %.1f -> %.1f MB, "
                "%s bytes/stream; with the mocks %.1f -> %.1f MB" % (
                    t, held, n, r["errors"], base / 1024.0, r["rss_kb"] / 1024.0,
                    r["bytes_per_stream"], (base + base_mocks) / 1024.0,
                    r["rss_with_mocks_kb"] / 1024.0))
    finally:
        mocks = ups + ([targets["direct"]] if "direct" in targets else [])
        mock_config(mocks, chunks=None, chunk_interval_ms=None)
    time.sleep(1.0)
    return out


def run_pool(tmp, up_addrs, body_json):
    pool = {"sizes": POOL_SIZES, "duration_s": POOL_DURATION, "conns": 64, "runs": {},
            "median": {}, "start_s": {}, "check": []}
    procs = {}
    for n in POOL_SIZES:
        # info: the log then counts the reloads (nothing is logged per request)
        d = infergate_conf_dir(tmp, "conf-pool-%d" % n, up_addrs, nhosts=n, health=False,
                               log_level="info",
                               nkeys=POOL_BIG_KEYS if n == POOL_SIZES[-1] else 4)
        try:
            procs[n] = start_infergate(tmp, "infergate-pool-%d" % n, d)
            pool["start_s"][str(n)] = round(procs[n].start_s, 3)
            sanity("infergate (%d hosts)" % n, procs[n].addr, tmp)
            if not QUICK:
                run_wrk(procs[n].addr, body_json, 64, WARMUP, procs[n].pid)
        except (RuntimeError, OSError) as e:
            note("pool %d: %s" % (n, e))
            procs.pop(n, None)
    big = POOL_SIZES[-1]
    rows = [(str(n), n) for n in procs] + \
        ([("%d+reload" % big, big)] if big in procs and POOL_RELOAD else [])
    sighups = {"n": 0}

    def reloader(pid):
        def run(stop_ev):
            while not stop_ev.wait(POOL_RELOAD_EVERY):
                try:
                    os.kill(pid, signal.SIGHUP)
                    sighups["n"] += 1
                except ProcessLookupError:
                    return
        return run

    for rep in range(REPS):
        for label, n in rows:
            p = procs[n]
            during = reloader(p.pid) if label.endswith("reload") else None
            try:
                r = run_wrk(p.addr, body_json, 64, POOL_DURATION, p.pid, during=during)
            except RuntimeError as e:
                note("pool %s rep %d: %s" % (label, rep + 1, e))
                continue
            r["rep"] = rep + 1
            pool["runs"].setdefault(label, []).append(r)
            log("  rep %d pool     %-13s %10s req/s  p50 %6s  p99 %6s  max %6s ms  err %d  "
                "cpu %3.0f%%" % (rep + 1, label, fmt_rate(r["rps"]), fmt_ms(r["p50_ms"]),
                                 fmt_ms(r["p99_ms"]), fmt_ms(r["max_ms"]), r["errors"],
                                 r["cpu_pct"]))
    if big in procs:
        with open(procs[big].logfile) as f:
            text = f.read()
        pool["reloads_logged"] = text.count("reloaded: generation")
        timings = re.findall(r"parsed in (\d+) ms, (\d+) ms of CPU, off the loop; "
                             r"installed in (\d+) ms on it", text)
        if timings:
            parse = sorted(int(a) for a, _, _ in timings)
            cpu = sorted(int(b) for _, b, _ in timings)
            install = sorted(int(c) for _, _, c in timings)
            pool["reload_parse_ms"] = {"median": parse[len(parse) // 2], "max": parse[-1]}
            pool["reload_parse_cpu_ms"] = {"median": cpu[len(cpu) // 2], "max": cpu[-1]}
            pool["reload_install_ms"] = {"median": install[len(install) // 2],
                                         "max": install[-1]}
        pool["sighups_sent"] = sighups["n"]
    for p in procs.values():
        PROCS.stop(p)
    pool["rows"] = [label for label, _ in rows]
    pool["median"] = {k: median_of(v) for k, v in pool["runs"].items()}
    lo, hi = pool["median"].get(str(POOL_SIZES[0])), pool["median"].get(str(big))
    rl = pool["median"].get("%d+reload" % big)
    pool["ratio"] = ratio(hi["rps"], lo["rps"]) if lo and hi else None
    pool["reload_p99_ratio"] = ratio(rl["p99_ms"], hi["p99_ms"]) if rl and hi else None
    # Parse + check time of big configurations (what a reload parses, on the loop today).
    for nh, nk in CHECK_SIZES:
        d = infergate_conf_dir(tmp, "conf-check-%d-%d" % (nh, nk), up_addrs, nhosts=nh,
                               nkeys=nk, health=False)
        t0 = time.monotonic()
        try:
            chk = subprocess.run(["taskset", "-c", str(TARGET_CPU), INFERGATE, "-t", "-c", d],
                                 capture_output=True, text=True, timeout=CHECK_TIMEOUT)
            secs = round(time.monotonic() - t0, 3) if chk.returncode == 0 else None
            if chk.returncode != 0:
                note("infergate -t (%d hosts, %d keys) failed: %s"
                     % (nh, nk, (chk.stdout + chk.stderr)[-300:]))
        except subprocess.TimeoutExpired:
            secs = None
            note("infergate -t (%d hosts, %d keys): more than %d s" % (nh, nk, CHECK_TIMEOUT))
        pool["check"].append({"hosts": nh, "keys": nk, "seconds": secs,
                              "timed_out": secs is None})
    return pool


# The server.workers comparison: (label, workers, gateway cores, wrk cores).
# "pinned": as in the main table, the load on its own core(s), so 2 workers
# only get the load core's spare time. "shared": nothing pinned but the
# mocks; the gateway and wrk take what the scheduler gives them.
def workers_cases():
    all_cpus = sorted(set([TARGET_CPU] + LOAD_CPUS))
    return [("pinned", 1, [TARGET_CPU], LOAD_CPUS), ("pinned", 2, all_cpus, LOAD_CPUS),
            ("shared", 1, all_cpus, all_cpus), ("shared", 2, all_cpus, all_cpus)]


def run_limits(tmp, up_addrs, body_json):
    """Client limits (issue 19) off vs on, shared through a real
    redis-server (sessions.store: redis; limits high enough never to
    refuse): req/s at 64 connections and the latency added at 1."""
    if not (os.path.exists(REDIS) or shutil.which(REDIS)):
        note("limits run: redis-server not found (scripts/deps.sh installs it)")
        return None
    key = "sk-bench-client-0123456789"
    port = free_port()
    procs, runs = {}, {}
    redis = PROCS.start("redis", [REDIS, "--port", str(port), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no", "--dir", tmp],
                        cpus=LOAD_CPUS, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t_end = time.monotonic() + 10
    while time.monotonic() < t_end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    shared = ("sessions:\n  store: redis\n  redis: {url: \"redis://127.0.0.1:%d/0\","
              " prefix: \"bench:\", timeout: 200ms}\n" % port)
    on = shared + ("clients:\n  - {name: bench, key: %s, limits: {rpm: 100000000,"
                   " tpm: 2000000000, max_concurrent: 100000, tokens_per_day: 2000000000}}\n" % key)
    cases = (("off", shared, None), ("on", on, key))
    try:
        for label, extra, k in cases:
            d = infergate_conf_dir(tmp, "conf-limits-" + label, up_addrs, extra=extra)
            procs[label] = start_infergate(tmp, "infergate-limits-" + label, d)
            run_wrk(procs[label].addr, body_json, 64, WARMUP, procs[label].pid, client_key=k)
        for rep in range(REPS):
            for conns in (64, 1):
                for label, extra, k in cases:
                    cell = "%s/%d" % (label, conns)
                    try:
                        r = run_wrk(procs[label].addr, body_json, conns, DURATION,
                                    procs[label].pid, client_key=k)
                    except RuntimeError as e:
                        note("limits %s rep %d: %s" % (cell, rep + 1, e))
                        continue
                    runs.setdefault(cell, []).append(r)
                    log("  rep %d limits %-6s %10s req/s  p50 %6s  p99 %6s ms  err %d  cpu %3.0f%%"
                        % (rep + 1, cell, fmt_rate(r["rps"]), fmt_ms(r["p50_ms"]),
                           fmt_ms(r["p99_ms"]), r["errors"], r["cpu_pct"]))
    except RuntimeError as e:
        note("limits run: %s" % e)
    finally:
        for p in procs.values():
            PROCS.stop(p)
        PROCS.stop(redis)
    cells = {k: median_of(v) for k, v in runs.items() if v}
    out = {"cells": cells, "runs": runs}
    a, b = cells.get("off/64"), cells.get("on/64")
    if a and b:
        out["rps_on_vs_off"] = ratio(b["rps"], a["rps"])
    a, b = cells.get("off/1"), cells.get("on/1")
    if a and b:
        out["added_us_at_1"] = {"p50": round((b["p50_ms"] - a["p50_ms"]) * 1000),
                                "p99": round((b["p99_ms"] - a["p99_ms"]) * 1000)}
    return out


def print_limits_table(lim):
    c = lim.get("cells", {})
    log("")
    log("client limits (issue 19), JSON, shared through Redis: off vs on")
    for conns in (64, 1):
        for label in ("off", "on"):
            m = c.get("%s/%d" % (label, conns))
            if m:
                log("  %-3s %3d conns %10s req/s  p50 %6s  p99 %6s ms  err %d" % (
                    label, conns, fmt_rate(m["rps"]), fmt_ms(m["p50_ms"]), fmt_ms(m["p99_ms"]),
                    m["errors"]))
    if "rps_on_vs_off" in lim:
        log("  req/s on/off at 64 connections: %s" % lim["rps_on_vs_off"])
    if "added_us_at_1" in lim:
        log("  latency added by limits at 1 connection: p50 %+d us, p99 %+d us" % (
            lim["added_us_at_1"]["p50"], lim["added_us_at_1"]["p99"]))


def run_workers(tmp, up_addrs, body_json):
    """server.workers 1 vs 2, JSON, 64 connections, repetitions alternating;
    also the state lock's contention from /status."""
    procs, runs, lock = {}, {}, {}
    cases = workers_cases()
    try:
        for label, n, cpus, wcpus in cases:
            key = "%s/%d" % (label, n)
            d = infergate_conf_dir(tmp, "conf-w-%s-%d" % (label, n), up_addrs, workers=n)
            procs[key] = start_infergate(tmp, "infergate-w-%s-%d" % (label, n), d, cpus=cpus)
            run_wrk(procs[key].addr, body_json, 64, WARMUP, procs[key].pid, cpus=wcpus)
        for rep in range(REPS):
            for label, n, cpus, wcpus in cases:
                key = "%s/%d" % (label, n)
                try:
                    r = run_wrk(procs[key].addr, body_json, 64, DURATION, procs[key].pid,
                                cpus=wcpus)
                except RuntimeError as e:
                    note("workers %s rep %d: %s" % (key, rep + 1, e))
                    continue
                runs.setdefault(key, []).append(r)
                log("  rep %d workers %-9s %10s req/s  p99 %6s ms  err %d  cpu %3.0f%%  "
                    "CPU %s us/req" % (rep + 1, key, fmt_rate(r["rps"]), fmt_ms(r["p99_ms"]),
                                       r["errors"], r["cpu_pct"], r["cpu_us_per_req"]))
        for key, p in procs.items():
            try:
                st, body, _ = http("GET", "http://%s/status" % p.addr)
                doc = json.loads(body)
                if "state_lock" in doc:
                    lock[key] = dict(doc["state_lock"], requests=doc["requests_total"])
            except (OSError, ValueError):
                pass
    except RuntimeError as e:
        note("workers run: %s" % e)
    finally:
        for p in procs.values():
            PROCS.stop(p)
    cells = {k: median_of(v) for k, v in runs.items() if v}
    out = {"cells": cells, "runs": runs, "state_lock": lock, "ratios": {},
           "cases": [{"key": "%s/%d" % (l, n), "cpus": c, "wrk_cpus": w} for l, n, c, w in cases]}
    for label in ("pinned", "shared"):
        a, b = cells.get(label + "/1"), cells.get(label + "/2")
        if a and b:
            out["ratios"][label] = {"rps": ratio(b["rps"], a["rps"]),
                                    "cpu_per_req": ratio(b.get("cpu_us_per_req"),
                                                         a.get("cpu_us_per_req"))}
    return out


def print_workers_table(wk):
    log("server.workers: infergate, JSON, 64 connections; 'pinned': gateway on core %d (1 "
        "worker) or all cores (2), wrk and mocks on %s; 'shared': gateway and wrk on all cores, "
        "mocks on %s" % (TARGET_CPU, ",".join(map(str, LOAD_CPUS)), ",".join(map(str, LOAD_CPUS))))
    log("%-12s %10s %8s %8s %7s %6s %10s %14s" % ("workers", "req/s", "p50 ms", "p99 ms",
                                                "errors", "CPU%", "CPU us/req", "lock waits/req"))
    log("-" * 82)
    for c in wk.get("cases", []):
        m = wk["cells"].get(c["key"])
        if not m:
            log("%-12s failed" % c["key"])
            continue
        lk = wk.get("state_lock", {}).get(c["key"])
        waits = ("%.3f (%.1f us)" % (lk["waits"] / max(1, lk["requests"]),
                                     lk["wait_ms"] * 1000.0 / max(1, lk["waits"]))
                 if lk else "-")
        log("%-12s %10s %8s %8s %7d %6.0f %10s %14s" % (
            c["key"], ("*" if m.get("noisy") else "") + fmt_rate(m["rps"]), fmt_ms(m["p50_ms"]),
            fmt_ms(m["p99_ms"]), m["errors"], m["cpu_pct"], m.get("cpu_us_per_req"), waits))
    for label, r in sorted(wk.get("ratios", {}).items()):
        log("%17s %s: req/s 2 workers / 1 = %.2f, CPU per request 2 / 1 = %s" % (
            "", label, r["rps"], r["cpu_per_req"]))
    log("%17s (target >= 1.8 with the load generator elsewhere: on this machine wrk and the "
        "mocks need the cores the second worker would use)" % "")
    log("")


def make_test_ca(tmp):
    """A CA and a localhost/127.0.0.1 certificate for the TLS mocks (openssl CLI)."""
    d = os.path.join(tmp, "tls")
    os.makedirs(d, exist_ok=True)

    def ossl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)
    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bench CA")
    ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", "up.key", "-out", "up.csr", "-subj", "/CN=localhost")
    with open(os.path.join(d, "ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    ossl("x509", "-req", "-in", "up.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "up.pem", "-days", "2", "-extfile", "ext")
    return {k: os.path.join(d, k + ".pem") for k in ("ca", "up")} | {"key": os.path.join(d, "up.key")}


def tls_mock_stats(mocks, ca):
    """(requests, TLS handshakes, resumed) summed over the TLS mocks
    (infergate-mock or nginx, see start_nginx_tls_mock), without the
    stats queries' own (each a new connection, a full handshake)."""
    req = hs = res = 0
    for m in mocks:
        done = getattr(m, "stat_queries", 0)
        m.stat_queries = done + 1
        if getattr(m, "handshake_log", None):
            with open(m.handshake_log) as f:       # before the query: it logs its own
                lines = f.read().split()
            out = subprocess.run(["curl", "-s", "--cacert", ca, "https://%s/_status" % m.addr],
                                 capture_output=True, text=True, timeout=10)
            n = re.search(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s*$", out.stdout, re.M)
            if not n:
                raise RuntimeError("nginx TLS mock status: %r" % out.stdout[:200])
            req += int(n.group(3)) - done - 1
            hs += len(lines) - done
            res += lines.count("r")
            continue
        out = subprocess.run(["curl", "-s", "--cacert", ca, "https://%s/_mock/stats" % m.addr],
                             capture_output=True, text=True, timeout=10)
        s = json.loads(out.stdout)
        req += s["requests"]
        hs += s.get("tls_handshakes", 0) - done - 1
        res += s.get("tls_resumed", 0)
    return req, hs, res


def mock_answers():
    """A JSON and an SSE answer of infergate-mock with the bench's options."""
    m = start_mock("answers", LOAD_CPUS)
    try:
        url = "http://%s/v1/chat/completions" % m.addr
        st, js, _ = http("POST", url, chat_body(False))
        st2, sse, _ = http("POST", url, chat_body(True), headers={"Accept": "text/event-stream"})
    finally:
        PROCS.stop(m)
        MOCK_PIDS.remove(m.pid)
    if st != 200 or st2 != 200:
        raise RuntimeError("mock answers: %d %d" % (st, st2))
    return js, sse


def nginx_quoted(text):
    if any(c in text for c in "'\\$"):
        raise RuntimeError("the mock's answer cannot be an nginx string as is")
    return "'" + text + "'"


def start_nginx_tls_mock(tmp, name, pki, answers):
    """nginx on LOAD_CPUS serving the mock's answers over TLS
    (nginx-tls-mock.conf.in); handshakes counted in its log."""
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    port = free_port()
    with open(os.path.join(HERE, "nginx-tls-mock.conf.in")) as f:
        conf = f.read()
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
    for k, v in (("@TMP@", d), ("@PORT@", str(port)), ("@NOFILE@", str(nofile)),
                 ("@CERT@", pki["up"]), ("@KEY@", pki["key"]),
                 ("@JSON@", nginx_quoted(answers[0])), ("@SSE@", nginx_quoted(answers[1]))):
        conf = conf.replace(k, v)
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    chk = subprocess.run([NGINX, "-t", "-q", "-p", d, "-c", path], capture_output=True, text=True)
    if chk.returncode != 0:
        raise RuntimeError("nginx TLS mock: nginx -t failed:\n" + chk.stderr)
    errf = open(os.path.join(d, "nginx-stderr.log"), "w")
    p = PROCS.start(name, [NGINX, "-p", d, "-c", path], cpus=LOAD_CPUS, stdout=errf, stderr=errf)
    p.addr = "127.0.0.1:%d" % port
    p.cpus = LOAD_CPUS
    p.handshake_log = os.path.join(d, "handshakes.log")
    t_end = time.time() + 15
    while time.time() < t_end and p.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        raise RuntimeError("nginx TLS mock did not start: see %s" % d)
    MOCK_PIDS.append(p.pid)
    return p


def run_https(tmp, bodies):
    """infergate vs nginx (proxy_pass https://, keep-alive, proxy_ssl_session_reuse)
    in front of TLS mocks: JSON and SSE at 64 connections, CPU per request, and
    the handshakes the mocks counted (connections reused: far fewer than requests)."""
    if not mock_has_flag("--tls-cert"):
        note("the mock has no --tls-cert: no HTTPS-upstream run")
        return {}
    try:
        pki = make_test_ca(tmp)
    except (OSError, subprocess.CalledProcessError) as e:
        note("HTTPS run: cannot make a test CA: %s" % e)
        return {}
    mocks, procs, runs, seen = [], {}, {}, {}
    try:
        if HTTPS_MOCK == "nginx":
            answers = mock_answers()
            mocks = [start_nginx_tls_mock(tmp, "tls-%d" % i, pki, answers)
                     for i in range(NMOCKS)]
        else:
            mocks = [start_mock("tls-%d" % i, LOAD_CPUS,
                                ("--tls-cert", pki["up"], "--tls-key", pki["key"]))
                     for i in range(NMOCKS)]
        addrs = [m.addr for m in mocks]
        ntmp = os.path.join(tmp, "nginx-https")
        os.makedirs(ntmp, exist_ok=True)
        procs["nginx"] = start_nginx(ntmp, addrs, pki["ca"])
        procs["infergate"] = start_infergate(
            tmp, "infergate-https", infergate_conf_dir(tmp, "conf-https", addrs, https_ca=pki["ca"]))
        for t, p in procs.items():
            sanity(t, p.addr, tmp)
            for scen in SCENARIOS:
                run_wrk(p.addr, bodies[scen], 64, WARMUP, p.pid)
        for rep in range(REPS):
            for scen in SCENARIOS:
                for t, p in procs.items():
                    r0 = tls_mock_stats(mocks, pki["ca"])
                    try:
                        r = run_wrk(p.addr, bodies[scen], 64, DURATION, p.pid)
                    except RuntimeError as e:
                        note("https %s %s rep %d: %s" % (t, scen, rep + 1, e))
                        continue
                    r1 = tls_mock_stats(mocks, pki["ca"])
                    r["upstream_requests"] = r1[0] - r0[0]
                    r["upstream_handshakes"] = r1[1] - r0[1]
                    r["upstream_resumed"] = r1[2] - r0[2]
                    runs.setdefault(scen, {}).setdefault(t, []).append(r)
                    log("  rep %d https %-4s %-10s %10s req/s  p99 %6s ms  err %d  cpu %3.0f%%  "
                        "CPU %s us/req  upstream handshakes %d for %d requests" % (
                            rep + 1, scen, t, fmt_rate(r["rps"]), fmt_ms(r["p99_ms"]), r["errors"],
                            r["cpu_pct"], r["cpu_us_per_req"], r["upstream_handshakes"],
                            r["upstream_requests"]))
        seen = {"total": dict(zip(("requests", "handshakes", "resumed"),
                                  tls_mock_stats(mocks, pki["ca"])))}
        if DO_PERF and shutil.which("perf") and "json" in SCENARIOS:
            perf_out = os.path.join(tmp, "perf-https.data")
            run_wrk(procs["infergate"].addr, bodies["json"], 64, DURATION,
                    procs["infergate"].pid, perf_out)
            seen["perf_report"] = perf_report(perf_out)
    except (RuntimeError, OSError, ValueError, subprocess.CalledProcessError) as e:
        note("HTTPS run: %s" % e)
    finally:
        for p in list(procs.values()) + mocks:
            PROCS.stop(p)
    cells = {scen: {t: median_of(v) for t, v in c.items()} for scen, c in runs.items()}
    ratios = {}
    for scen, c in cells.items():
        ig, ng = c.get("infergate"), c.get("nginx")
        if ig and ng:
            ratios[scen] = {"rps_vs_nginx": ratio(ig["rps"], ng["rps"]),
                            "cpu_per_req_vs_nginx": ratio(ig.get("cpu_us_per_req"),
                                                          ng.get("cpu_us_per_req"))}
    return {"cells": cells, "runs": runs, "ratios": ratios, "upstream_tls": seen,
            "mock": HTTPS_MOCK}


def print_https_table(hs):
    if not hs or not hs.get("cells"):
        return
    log("HTTPS upstreams: %d TLS mocks (%s; certificates from a test CA, verified by both), "
        "64 connections; nginx: proxy_pass https://, keepalive, proxy_ssl_session_reuse on"
        % (NMOCKS, "nginx, static answers" if HTTPS_MOCK == "nginx" else "infergate-mock"))
    log("%-6s %-10s %10s %8s %8s %7s %6s %10s %16s" % (
        "", "target", "req/s", "p50 ms", "p99 ms", "errors", "CPU%", "CPU us/req",
        "handshakes/req"))
    log("-" * 92)
    for scen, c in hs["cells"].items():
        for t, m in sorted(c.items()):
            hpr = (m.get("upstream_handshakes", 0) / m["upstream_requests"]
                   if m.get("upstream_requests") else None)
            log("%-6s %-10s %10s %8s %8s %7d %6.0f %10s %16s" % (
                scen, t, ("*" if m.get("noisy") else "") + fmt_rate(m["rps"]), fmt_ms(m["p50_ms"]),
                fmt_ms(m["p99_ms"]), m["errors"], m["cpu_pct"], m.get("cpu_us_per_req"),
                "%.4f" % hpr if hpr is not None else "-"))
        r = hs["ratios"].get(scen)
        if r:
            log("%17s %s: infergate / nginx: req/s %s, CPU per request %s" % (
                "", scen, r["rps_vs_nginx"], r["cpu_per_req_vs_nginx"]))
    rep = hs.get("upstream_tls", {}).get("perf_report")
    if rep:
        log("perf (infergate, HTTPS upstreams, JSON 64 connections, self time):")
        for l in rep[:25]:
            log("  " + l)
    log("")


def perf_report(perf_out):
    try:
        o = subprocess.run(["perf", "report", "-i", perf_out, "--stdio", "--no-children",
                            "-F", "overhead,dso,sym", "--percent-limit", "0.7", "-g", "none"],
                           capture_output=True, text=True, timeout=120)
        lines = [l.rstrip() for l in o.stdout.splitlines() if l.strip() and not l.startswith("#")]
        return lines[:60]
    except (OSError, subprocess.TimeoutExpired):
        return []


def print_all(results):
    log("")
    log("== infergate bench: median of %d x %gs per cell; target pinned to core %d, "
        "wrk (-t%d) + %d mocks on core(s) %s" % (
            REPS, DURATION, TARGET_CPU, WRK_THREADS, NMOCKS, ",".join(map(str, LOAD_CPUS))))
    print_main_table(results["summary"])
    if results.get("fixed_rate"):
        print_fixed_table(results["fixed_rate"])
    if results.get("streams"):
        print_streams_table(results["streams"])
    if results.get("scale"):
        print_scale_table(results["scale"])
    if results.get("workers"):
        print_workers_table(results["workers"])
    if results.get("https"):
        print_https_table(results["https"])
    if results.get("limits"):
        print_limits_table(results["limits"])
    if "pool" in results:
        print_pool_table(results["pool"])
    if results.get("upstream_stats"):
        keys = {}
        for s in results["upstream_stats"]:
            for k, v in s["keys"].items():
                keys[k] = keys.get(k, 0) + v
        log("upstreams: %s; keys seen: %s" % (
            ", ".join("%s %d req" % (s["name"], s["requests"]) for s in results["upstream_stats"]),
            ", ".join("%s %d" % (k[:16] + "..." if len(k) > 16
                                 else (k or "(no key: nginx, haproxy)"), v)
                      for k, v in sorted(keys.items()))))
    if results.get("perf_report"):
        log("")
        log("perf (infergate, JSON 64 connections, self time):")
        for l in results["perf_report"][:25]:
            log("  " + l)
    busy, other, other_max = _load_stats(results)
    log("Notes: CPU%% and RSS are the target's own processes (nginx: master + worker); "
        "'CPU us/req' = target CPU time / successful requests. Load core(s) busy %s%% on "
        "average (near 100%% = the load side, not the target, limited req/s). CPU used by "
        "other processes: %s%% of a core on average, %s%% at most." % (busy, other, other_max))
    if other_max != "?" and float(other_max) > NOISY_OTHER_PCT:
        log("WARNING: other processes used more than %g%% of a core during some runs (a shared "
            "machine?); medians leave those repetitions out when a quiet one exists, and * "
            "marks cells with none. Re-run on a quiet machine for figures to quote."
            % NOISY_OTHER_PCT)


def _load_stats(results):
    rs = [r for cell in results.get("runs", {}).values() for rr in cell.values() for r in rr]
    if not rs:
        return "?", "?", "?"
    return ("%.0f" % statistics.mean(r["load_cpu_busy_pct"] for r in rs),
            "%.0f" % statistics.mean(r["other_cpu_pct"] for r in rs),
            "%.0f" % max(r["other_cpu_pct"] for r in rs))


def write_results(results):
    os.makedirs(OUT_DIR, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(OUT_DIR, "bench-%s%s.json" % (stamp, "-quick" if QUICK else ""))
    with open(path, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    latest = os.path.join(OUT_DIR, "latest.json")
    with open(latest, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    return path


if __name__ == "__main__":
    sys.exit(main())
