#!/usr/bin/python3
"""A/B of two infergate binaries against HAProxy and the bare mock, in one run.

Every target is pinned to the bench's target core, wrk and the two mocks to
the load cores (as `make bench`); rounds are interleaved (each round runs
every target once per cell), so slow drifts of a shared machine hit all
targets alike. Prints, per cell, the median of the rounds: requests/s, p50,
p99, CPU microseconds per request, and the ratios B/A and B/HAProxy.

  scripts/bench/ab.py OLD_BIN NEW_BIN      (AB_ROUNDS=3 AB_SECONDS=5
                                            AB_CELLS=json/64,sse/64,json/1,sse/1)

AB_FLOOR=1 adds "fwd" (scripts/bench/fwd.c, compiled here): a bare epoll
byte forwarder to the first mock, the floor any one-hop proxy's added
latency has on this machine.

AB_BUSY=1 adds, after those rounds, a phase for the c=1 cells with busy
polling (issue 24): HAProxy with `busy-polling` and infergate B with
`server.busy_polling: true`, each started, measured and stopped in turn, so
no spinning target shares the target core while another is measured; the
phase's rounds also measure direct, HAProxy and B as they are (interleaved),
and it prints the added p50/p99 over direct of each.
"""
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as bench  # noqa: E402

FLOOR = os.environ.get("AB_FLOOR", "") not in ("", "0")
BUSY = os.environ.get("AB_BUSY", "") not in ("", "0")
ROUNDS = int(os.environ.get("AB_ROUNDS", "3"))
SECONDS = int(os.environ.get("AB_SECONDS", "5"))
CELLS = [(c.split("/")[0], int(c.split("/")[1]))
         for c in os.environ.get("AB_CELLS", "json/64,sse/64,json/1,sse/1").split(",")]


def start_fwd(tmp, upstream):
    """The byte forwarder (fwd.c) on the target core, in front of one mock."""
    exe = os.path.join(tmp, "fwd")
    subprocess.run(["cc", "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-o", exe,
                    os.path.join(HERE, "fwd.c")], check=True)
    port = bench.free_port()
    host, uport = upstream.rsplit(":", 1)
    errf = open(os.path.join(tmp, "fwd.log"), "w")
    p = bench.PROCS.start("fwd", [exe, str(port), host, uport], cpus=[bench.TARGET_CPU],
                          stdout=errf, stderr=errf)
    p.addr = "127.0.0.1:%d" % port
    if not bench.wait_http("http://%s/" % p.addr, proc=p):
        raise RuntimeError("fwd did not start: see %s" % errf.name)
    return p


def busy_conf(tmp, addrs):
    """infergate B's configuration with server.busy_polling: true."""
    conf = bench.infergate_conf_dir(tmp, "conf-B-busy", addrs)
    path = os.path.join(conf, "policies.yaml")
    with open(path) as f:
        pol = f.read()
    with open(path, "w") as f:
        f.write(pol.replace("\nserver:\n", "\nserver:\n  busy_polling: true\n", 1))
    return conf


def measure(res, rnd, label, t, addr, pid, bodies, cells):
    for scen, conns in cells:
        r = bench.run_wrk(addr, bodies[scen], conns, SECONDS, pid)
        res.setdefault((scen, conns, t), []).append(r)
        print("%s %d %s/%d %-8s %8.0f req/s  p50 %6.2f  p99 %6.2f ms  "
              "%6.1f us/req  other %3.0f%%" % (
                  label, rnd + 1, scen, conns, t, r["rps"], r["p50_ms"], r["p99_ms"],
                  r["cpu_us_per_req"] or 0, r["other_cpu_pct"]), flush=True)


def busy_phase(tmp, addrs, targets, bodies, new):
    """The c=1 cells with busy-polling targets, each alone on the target
    core: started, warmed up, measured and stopped in turn, every round."""
    cells = [(scen, conns) for scen, conns in CELLS if conns == 1] or [("json", 1), ("sse", 1)]
    bench.INFERGATE = new
    conf = busy_conf(tmp, addrs)
    starters = []
    if bench.HAPROXY:
        starters.append(("hap-busy", lambda: bench.start_haproxy(tmp, addrs, busy=True)))
    starters.append(("B-busy", lambda: bench.start_infergate(tmp, "ig-B-busy", conf)))
    still = [t for t in ("direct", "haproxy", "B") if t in targets]
    res = {}
    print()
    for rnd in range(ROUNDS):
        for t in still:
            measure(res, rnd, "busy-phase round", t, targets[t].addr, targets[t].pid,
                    bodies, cells)
        for t, start in starters:
            p = start()
            try:
                bench.run_wrk(p.addr, bodies["json"], 1, 2, p.pid)       # warm-up
                measure(res, rnd, "busy-phase round", t, p.addr, p.pid, bodies, cells)
            finally:
                bench.PROCS.stop(p)
    print()
    print("busy polling (each busy target alone on the target core), c=1, medians:")
    for scen, conns in cells:
        med = {t: {k: statistics.median(r[k] or 0 for r in res[(scen, conns, t)])
                   for k in ("p50_ms", "p99_ms")}
               for t in still + [t for t, _ in starters]}
        d = med["direct"]
        print("%s/%d direct p50 %.3f p99 %.3f ms; added over direct p50/p99 us: %s" % (
            scen, conns, d["p50_ms"], d["p99_ms"], ", ".join(
                "%s %.0f/%.0f" % (t, 1000 * (m["p50_ms"] - d["p50_ms"]),
                                  1000 * (m["p99_ms"] - d["p99_ms"]))
                for t, m in med.items() if t != "direct")))


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    old, new = sys.argv[1], sys.argv[2]
    tmp = tempfile.mkdtemp(prefix="infergate-ab-")
    try:
        ups = [bench.start_mock("up-%d" % i, bench.LOAD_CPUS) for i in range(2)]
        addrs = [m.addr for m in ups]
        targets = {"direct": bench.start_mock("direct", [bench.TARGET_CPU])}
        if bench.HAPROXY:
            targets["haproxy"] = bench.start_haproxy(tmp, addrs)
        if FLOOR:
            targets["fwd"] = start_fwd(tmp, ups[0].addr)
        for name, b in (("A", old), ("B", new)):
            bench.INFERGATE = b
            conf = bench.infergate_conf_dir(tmp, "conf-" + name, addrs)
            targets[name] = bench.start_infergate(tmp, "ig-" + name, conf)
        bodies = {}
        for scen in ("json", "sse"):
            bodies[scen] = os.path.join(tmp, scen + ".json")
            with open(bodies[scen], "w") as f:
                f.write(bench.chat_body(scen == "sse"))
        for t, p in targets.items():                      # warm-up
            bench.run_wrk(p.addr, bodies["json"], 16, 2, p.pid)
        res = {}
        for rnd in range(ROUNDS):
            for scen, conns in CELLS:
                for t, p in targets.items():
                    r = bench.run_wrk(p.addr, bodies[scen], conns, SECONDS, p.pid)
                    res.setdefault((scen, conns, t), []).append(r)
                    print("round %d %s/%d %-8s %8.0f req/s  p50 %6.2f  p99 %6.2f ms  "
                          "%6.1f us/req  other %3.0f%%" % (
                              rnd + 1, scen, conns, t, r["rps"], r["p50_ms"], r["p99_ms"],
                              r["cpu_us_per_req"] or 0, r["other_cpu_pct"]), flush=True)
        print()
        print("%-8s %-8s %10s %8s %8s %9s" % ("cell", "target", "req/s", "p50 ms", "p99 ms",
                                               "us/req"))
        for scen, conns in CELLS:
            med = {}
            for t in targets:
                rs = res[(scen, conns, t)]
                med[t] = {k: statistics.median(r[k] or 0 for r in rs)
                          for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")}
                print("%-8s %-8s %10.0f %8.2f %8.2f %9.1f" % (
                    "%s/%d" % (scen, conns), t, med[t]["rps"], med[t]["p50_ms"],
                    med[t]["p99_ms"], med[t]["cpu_us_per_req"]))
            a, b = med["A"], med["B"]
            line = "  B/A CPU/req %.2f" % (b["cpu_us_per_req"] / a["cpu_us_per_req"])
            if "haproxy" in med:
                h = med["haproxy"]
                line += ", A/HAProxy %.2f, B/HAProxy %.2f" % (
                    a["cpu_us_per_req"] / h["cpu_us_per_req"],
                    b["cpu_us_per_req"] / h["cpu_us_per_req"])
            if conns == 1:
                d = med["direct"]
                line += "; added over direct p50/p99 us: A %.0f/%.0f, B %.0f/%.0f" % (
                    1000 * (a["p50_ms"] - d["p50_ms"]), 1000 * (a["p99_ms"] - d["p99_ms"]),
                    1000 * (b["p50_ms"] - d["p50_ms"]), 1000 * (b["p99_ms"] - d["p99_ms"]))
                for t, label in (("haproxy", "HAProxy"), ("fwd", "fwd")):
                    if t in med:
                        line += ", %s %.0f/%.0f" % (
                            label, 1000 * (med[t]["p50_ms"] - d["p50_ms"]),
                            1000 * (med[t]["p99_ms"] - d["p99_ms"]))
            print(line)
        if BUSY:
            busy_phase(tmp, addrs, targets, bodies, new)
    finally:
        bench.PROCS.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
