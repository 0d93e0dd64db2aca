#!/usr/bin/env python3
"""check-layers: the modules of src/ and who depends on whom; fails on a
new cycle between modules or an include against the layers (make
check-layers, run by make test).

src/ has one folder per layer, lowest first:
  config/  the three files, their readers and schema (types everyone uses)
  core/    pure logic: no I/O library header, time and randomness as arguments
  io/      sockets, TLS, threads and the lock, the log, the upstream clients
  app/     the gateway: proxy, routes, admin, health, sessions, metrics
A file includes headers of its own layer or a lower one; config/ may use
the core's plain types. LAYER_EXCEPTIONS lists the includes still against
that order (shrink it, never grow it).

A module is a .c file with its .h (gateway.c + gateway.h) and its private
X_int.h; a header without a .c (hash.h, utf8.h) is a module of its own.
Two graphs are read:
  includes  X -> Y when a file of X includes Y.h
  calls     X -> Y when X.o uses a symbol defined by Y.o (nm; with the
            objects of build/release/ when they are built)
The second sees what the first cannot: a backend calling its front
through functions the front's own header declares.

It also fails when a module of CORE (pure logic) includes an I/O library
header (libevent, curl, hiredis, sockets), directly or through src/ headers.

Usage: check-layers.py [-v] [OBJDIR]   (-v: print both graphs)
Exit 1 when a cycle is found that KNOWN below does not list, or on an I/O
header in the core.
"""
import glob
import os
import re
import subprocess
import sys

# Cycles still there; each entry is the sorted set of modules of one
# strongly connected component. Issue 17 took the last ones away: keep it
# empty (a new cycle fails the check).
KNOWN = []


LAYERS = ["config", "core", "io", "app"]
# Headers every layer may include: the lock contract (lock.h: the state
# lock and lock_assert_held(), which the shared-state functions of core/
# call under INFERGATE_LOCK_CHECKS; it reaches no I/O header).
ANY_LAYER = {"lock.h"}
# (file, header it includes against the order): why it is still there.
# Issue 17 took the last ones away (the alert rules no longer reach log.h
# and metrics.h): keep it empty.
LAYER_EXCEPTIONS = {}
IO_HEADERS = ("event2/", "curl/", "hiredis", "sys/socket.h", "sys/epoll.h",
              "netinet/", "arpa/", "netdb.h", "spawn.h")


def files(src):
    """{file name: (layer, path)} for every .c and .h under src/LAYER/."""
    out = {}
    for layer in LAYERS:
        for path in sorted(glob.glob(os.path.join(src, layer, "*.[ch]"))):
            out[os.path.basename(path)] = (layer, path)
    return out


def core_io(src):
    """[(module, file, header)] for every I/O header a core/ module reaches."""
    bad = []
    fs = files(src)
    core = sorted({module(f) for f, (layer, _) in fs.items() if layer == "core"})
    for m in core:
        seen, todo = set(), [m + ".c", m + ".h"]
        while todo:
            f = todo.pop()
            if f in seen or f not in fs:
                continue
            path = fs[f][1]
            seen.add(f)
            with open(path, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
            todo += re.findall(r'^\s*#\s*include\s+"([^"/]+\.h)"', text, re.M)
            bad += [(m, f, h) for h in re.findall(r'^\s*#\s*include\s+<([^>]+)>', text, re.M)
                    if h.startswith(IO_HEADERS)]
    return bad


def module(path):
    """gateway.c, gateway.h -> gateway; upstream_int.h (a module's private
    header, shared by its own files only) -> upstream."""
    m = os.path.basename(path).rsplit(".", 1)[0]
    return m[:-4] if path.endswith("_int.h") else m


def includes(path):
    with open(path, encoding="utf-8", errors="replace") as fh:
        return re.findall(r'^\s*#\s*include\s+"([^"/]+\.h)"', fh.read(), re.M)


def include_graph(src):
    g = {}
    fs = files(src)
    for f, (_, path) in fs.items():
        m = module(f)
        g.setdefault(m, set())
        for inc in includes(path):
            d = module(inc)
            if d != m and inc in fs:
                g[m].add(d)
    return g


def layer_order(src):
    """[(file, header, why)] for includes against the layer order; the
    known ones come back with why set."""
    out = []
    fs = files(src)
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    for f, (layer, path) in sorted(fs.items()):
        for inc in includes(path):
            if inc not in fs:
                continue
            to = fs[inc][0]
            if inc in ANY_LAYER or rank[to] <= rank[layer] or (layer == "config" and to == "core"):
                continue
            out.append((f"{layer}/{f}", f"{to}/{inc}", LAYER_EXCEPTIONS.get((f, inc))))
    return out


def call_graph(objdir, src):
    fs = files(src)
    objs = {module(o): o for o in glob.glob(os.path.join(objdir, "*", "*.o"))
            if module(o) + ".c" in fs}
    if not objs:
        return {}
    defined, used = {}, {}
    for m, o in objs.items():
        out = subprocess.run(["nm", o], capture_output=True, text=True, check=True).stdout
        used[m] = set()
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == "U":
                used[m].add(parts[1])
            elif len(parts) == 3 and parts[1] in "TDBR":
                defined[parts[2]] = m
    g = {m: set() for m in objs}
    for m, syms in used.items():
        for s in syms:
            d = defined.get(s)
            if d is not None and d != m:
                g[m].add(d)
    return g


def cycles(g):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on, stack, out, n = {}, {}, set(), [], [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def main():
    args = [a for a in sys.argv[1:] if a != "-v"]
    verbose = "-v" in sys.argv[1:]
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    src = os.path.join(root, "src")
    objdir = args[0] if args else os.path.join(root, "build", "release")
    graphs = [("includes", include_graph(src)), ("calls", call_graph(objdir, src))]
    known = [sorted(k) for k in KNOWN]
    bad = 0
    for name, g in graphs:
        if verbose:
            for m in sorted(g):
                print(f"{name}: {m} -> {' '.join(sorted(g[m]))}")
        for c in cycles(g):
            if c in known:
                print(f"check-layers: {name}: known cycle (issue 17): {' '.join(c)}")
            else:
                print(f"check-layers: {name}: cycle between modules: {' '.join(c)}")
                bad = 1
        if name == "calls" and not g:
            print(f"check-layers: no objects in {objdir}: calls not checked")
    for f, inc, why in layer_order(src):
        if why:
            if verbose:
                print(f"check-layers: known include against the layers: {f} -> {inc} ({why})")
        else:
            print(f"check-layers: {f} includes {inc}, a higher layer")
            bad = 1
    for m, f, h in core_io(src):
        print(f"check-layers: core module {m} reaches an I/O header: {f} includes <{h}>")
        bad = 1
    if not bad:
        print("check-layers: no new cycle between modules, no include against the layers, "
              "no I/O header in the core")
    return bad


if __name__ == "__main__":
    sys.exit(main())
