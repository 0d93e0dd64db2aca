#!/usr/bin/python3
"""Instructions per proxied request, the stable measure on a noisy machine.

Runs infergate (the bench's configuration: two mocks, 4 rotated keys, retries
and breakers on) under `valgrind --tool=callgrind`, warms it up, zeroes the
counters, then collects over a fixed load (wrk, 8 connections) of JSON and of SSE
(20 events per answer) and prints instructions (Ir) per request for each.
The callgrind files stay in the output directory for callgrind_annotate
(`callgrind_annotate --auto=no --threshold=100 FILE` for every function).

With BENCH_UPSTREAM_TLS=1 the mocks speak TLS (certificates from a test CA
made as `make bench`'s HTTPS row makes it) and infergate reaches them over
https:// with `tls.ca_file`: the HTTPS-upstream path. The handshakes the mocks
counted are printed with each scenario (connections and sessions reused).
BENCH_HTTPS_MOCK picks the TLS mocks as for `make bench`'s HTTPS row: "nginx"
(the default there; static answers taken from infergate-mock, SSE in one HTTP
chunk) or "mock" (infergate-mock --tls-cert, SSE in 21 chunks).

With BENCH_CALLGRIND_NGINX=1 nginx runs under callgrind instead, in the same
setup (the bench's nginx.conf, one process: master_process off), to compare
user-space instructions per request.

"Ir/request w/o handshakes" leaves out SSL_do_handshake (inclusive): the few
new connections of a short run under callgrind are not what a request costs
on kept connections.

With CG_INTERVAL_MS=N the mocks pause N ms between SSE events, so that each
event arrives in a read of its own (the usual shape of a model's stream)
instead of the whole answer in one.

  scripts/bench/callgrind.py [OUTDIR]      (INFERGATE_BIN, MOCK_BIN, BENCH_SECONDS,
                                            BENCH_UPSTREAM_TLS, BENCH_CALLGRIND_NGINX,
                                            CG_INTERVAL_MS)
"""
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as bench  # noqa: E402  (the bench's mocks, configuration and wrk runner)

SECONDS = int(os.environ.get("BENCH_SECONDS", "6"))
UPSTREAM_TLS = os.environ.get("BENCH_UPSTREAM_TLS", "") not in ("", "0")
NGINX = os.environ.get("BENCH_CALLGRIND_NGINX", "") not in ("", "0")
INTERVAL_MS = int(os.environ.get("CG_INTERVAL_MS", "0"))


def wrk(addr, body, seconds, conns=8):
    out = subprocess.run([bench.WRK, "-t1", "-c%d" % conns, "-d%ds" % seconds, "--timeout", "30s",
                          "-s", os.path.join(HERE, "post.lua"), "http://%s" % addr, "--", body],
                         capture_output=True, text=True, timeout=seconds + 60)
    m = re.search(r'^BENCH_JSON .*"requests": ?(\d+)', out.stdout, re.M)
    if not m:
        raise RuntimeError("wrk: %s %s" % (out.stdout[-300:], out.stderr[-300:]))
    return int(m.group(1))


def total_ir(path):
    with open(path) as f:
        for line in f:
            if line.startswith("totals:") or line.startswith("summary:"):
                return int(line.split()[1])
    return 0


def handshake_ir(path):
    """Inclusive Ir of SSL_do_handshake in a callgrind file (0 if none)."""
    out = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100",
                          "--inclusive=yes", path], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if re.search(r":SSL_do_handshake\b", line):
            return int(line.split()[0].replace(",", ""))
    return 0


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="infergate-cg-")
    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="infergate-cg-tmp-")
    try:
        pki, extra = None, ()
        if UPSTREAM_TLS:
            pki = bench.make_test_ca(tmp)
            extra = ("--tls-cert", pki["up"], "--tls-key", pki["key"])
        if INTERVAL_MS:
            extra += ("--chunk-interval-ms", str(INTERVAL_MS))
        if pki and bench.HTTPS_MOCK == "nginx":
            if INTERVAL_MS:
                raise RuntimeError("CG_INTERVAL_MS needs BENCH_HTTPS_MOCK=mock")
            answers = bench.mock_answers()
            ups = [bench.start_nginx_tls_mock(tmp, "up-%d" % i, pki, answers) for i in range(2)]
        else:
            ups = [bench.start_mock("up-%d" % i, None, extra) for i in range(2)]
        conf = bench.infergate_conf_dir(tmp, "conf", [m.addr for m in ups],
                                        https_ca=pki["ca"] if pki else None)
        port = bench.free_port()
        addr = "127.0.0.1:%d" % port
        cg = os.path.join(out, "callgrind.out")
        vg = ["valgrind", "--tool=callgrind", "--compress-strings=no", "--compress-pos=no",
              "--callgrind-out-file=" + cg + ".%p"]
        if NGINX:
            ntmp = os.path.join(tmp, "nginx")
            os.makedirs(ntmp, exist_ok=True)
            nconf = bench.write_nginx_conf(ntmp, addr, [m.addr for m in ups],
                                           pki["ca"] if pki else None)
            with open(nconf) as f:
                text = f.read().replace("master_process on;", "master_process off;")
            with open(nconf, "w") as f:
                f.write(text)
            argv = vg + [bench.NGINX, "-p", ntmp, "-c", nconf]
            ready = "http://%s/" % addr
        else:
            argv = vg + [bench.INFERGATE, "-c", conf, "-l", addr]
            ready = "http://%s/health" % addr
        p = bench.PROCS.start("target", argv, stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(out, "valgrind.log"), "w"))
        if not bench.wait_http(ready, timeout=120, proc=p):
            raise RuntimeError("the target did not start under valgrind")
        bodies = {}
        for scen, stream in (("json", False), ("sse", True)):
            bodies[scen] = os.path.join(tmp, scen + ".json")
            with open(bodies[scen], "w") as f:
                f.write(bench.chat_body(stream))
            wrk(addr, bodies[scen], 2)                       # warm-up, not collected
        for scen in ("json", "sse"):
            r = subprocess.run(["callgrind_control", "-z", str(p.pid)], capture_output=True,
                               text=True)
            if "OK" not in r.stdout:
                raise RuntimeError("callgrind_control: %s %s" % (r.stdout, r.stderr))
            s0 = bench.tls_mock_stats(ups, pki["ca"]) if pki else None
            n = wrk(addr, bodies[scen], SECONDS)
            s1 = bench.tls_mock_stats(ups, pki["ca"]) if pki else None
            subprocess.run(["callgrind_control", "-d", scen, str(p.pid)], capture_output=True)
            time.sleep(0.5)
            files = sorted((f for f in os.listdir(out) if f.startswith("callgrind.out.%d." % p.pid)),
                           key=lambda f: os.path.getmtime(os.path.join(out, f)))
            ir = total_ir(os.path.join(out, files[-1]))
            hs = handshake_ir(os.path.join(out, files[-1])) if pki else 0
            print("%-4s %6d requests  %12d Ir  %8.0f Ir/request  %8.0f w/o handshakes  (%s)" % (
                scen, n, ir, ir / max(1, n), (ir - hs) / max(1, n),
                os.path.join(out, files[-1])), flush=True)
            if pki:     # tls_mock_stats leaves its own queries out
                print("     TLS at the mocks: %d requests, %d handshakes (%d resumed)"
                      % (s1[0] - s0[0], s1[1] - s0[1], s1[2] - s0[2]), flush=True)
    finally:
        bench.PROCS.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
