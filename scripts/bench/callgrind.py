#!/usr/bin/python3
"""Instructions per proxied request, the stable measure on a noisy machine.

Runs infergate (the bench's configuration: two mocks, 4 rotated keys, retries
and breakers on) under `valgrind --tool=callgrind`, warms it up, zeroes the
counters, then collects over a fixed load (wrk, 8 connections) of JSON and of SSE
(20 events per answer) and prints instructions (Ir) per request for each.
The callgrind files stay in the output directory for callgrind_annotate.

  scripts/bench/callgrind.py [OUTDIR]      (INFERGATE_BIN, MOCK_BIN, BENCH_SECONDS)
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


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="infergate-cg-")
    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="infergate-cg-tmp-")
    try:
        ups = [bench.start_mock("up-%d" % i, None) for i in range(2)]
        conf = bench.infergate_conf_dir(tmp, "conf", [m.addr for m in ups])
        port = bench.free_port()
        addr = "127.0.0.1:%d" % port
        cg = os.path.join(out, "callgrind.out")
        p = bench.PROCS.start("infergate", [
            "valgrind", "--tool=callgrind", "--compress-strings=no", "--compress-pos=no",
            "--callgrind-out-file=" + cg
            + ".%p", bench.INFERGATE, "-c", conf, "-l", addr],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(out, "valgrind.log"), "w"))
        if not bench.wait_http("http://%s/health" % addr, timeout=120, proc=p):
            raise RuntimeError("infergate did not start under valgrind")
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
            n = wrk(addr, bodies[scen], SECONDS)
            subprocess.run(["callgrind_control", "-d", scen, str(p.pid)], capture_output=True)
            time.sleep(0.5)
            files = sorted((f for f in os.listdir(out) if f.startswith("callgrind.out.%d." % p.pid)),
                           key=lambda f: os.path.getmtime(os.path.join(out, f)))
            ir = total_ir(os.path.join(out, files[-1]))
            print("%-4s %6d requests  %12d Ir  %8.0f Ir/request  (%s)" % (
                scen, n, ir, ir / max(1, n), os.path.join(out, files[-1])), flush=True)
    finally:
        bench.PROCS.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
