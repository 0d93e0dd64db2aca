#!/usr/bin/env python3
"""What /admin/events watchers cost (docs/benchmarks.md, issue 23).

Starts the gateway (./infergate) on a throwaway configuration, opens N
watchers (default 500) that read, measures the gateway's CPU time over 10 s
of idle and its RSS growth, then makes 100 reloads (100 events to each
watcher) and checks every watcher got all of them.

    python3 scripts/bench/events_watchers.py [N]
"""
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

BIN = os.environ.get("INFERGATE_BIN", "./infergate")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 500


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def main():
    d = tempfile.mkdtemp(prefix="ig-events-")
    with open(os.path.join(d, "hosts.json"), "w") as f:
        json.dump({"hosts": [{"name": "h", "url": "http://127.0.0.1:9"}]}, f)
    with open(os.path.join(d, "policies.yaml"), "w") as f:
        f.write("health_check:\n  enabled: false\n")
    port = free_port()
    gw = subprocess.Popen([BIN, "-c", d, "-l", "127.0.0.1:%d" % port],
                          stdout=open(os.path.join(d, "gw.log"), "w"), stderr=subprocess.STDOUT)
    socks = []
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)

        def cpu():
            f = open("/proc/%d/stat" % gw.pid).read().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

        def rss_kb():
            with open("/proc/%d/status" % gw.pid) as f:
                return int(next(l for l in f if l.startswith("VmRSS")).split()[1])

        r0 = rss_kb()
        for _ in range(N):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /admin/events HTTP/1.1\r\nHost: x\r\n\r\n")
            socks.append(s)
        time.sleep(1)
        c0 = cpu()
        time.sleep(10)
        c1 = cpu()
        print("%d idle watchers: %.3f s of CPU over 10 s, RSS +%d KB (%.1f KB each)"
              % (N, c1 - c0, rss_kb() - r0, (rss_kb() - r0) / N))
        c0 = cpu()
        for _ in range(100):
            c = http.client.HTTPConnection("127.0.0.1", port)
            c.request("POST", "/admin/reload")
            c.getresponse().read()
            c.close()
        time.sleep(1)
        c1 = cpu()
        complete = 0
        for s in socks:
            s.settimeout(5)
            data = b""
            while data.count(b'"reload_ok"') < 100:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
            complete += data.count(b'"reload_ok"') == 100
        print("100 reloads, %d events delivered: %.3f s of CPU (the reloads included);"
              " %d of %d watchers got all 100" % (100 * N, c1 - c0, complete, N))
    finally:
        for s in socks:
            s.close()
        gw.terminate()
        gw.wait()


if __name__ == "__main__":
    main()
