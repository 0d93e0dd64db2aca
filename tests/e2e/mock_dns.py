"""A tiny DNS server for the resolver tests: UDP on a loopback port, in a
thread of the test process, so tests never ask a real nameserver.

MockDNS() answers A (and AAAA) queries from `table` (name -> list of IPv4
addresses, or of IPv6 ones with a ':'), with `ttl`; a name it does not know
gets NXDOMAIN, a known name without addresses of the asked type an empty
NOERROR answer. `drop = True` makes it answer nothing; `servfail = True`
answers SERVFAIL. `queries` counts queries per (lowercased) name and type.
The question is echoed byte for byte (evdns randomizes the case of names
and checks the echo). stop() closes the socket and joins the thread.
"""
import socket
import struct
import threading


class MockDNS:
    def __init__(self, host="127.0.0.1"):
        self.table = {}
        self.ttl = 60
        self.drop = False
        self.servfail = False
        self.queries = {}               # (name, "A"|"AAAA"|qtype) -> count
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.address = "%s:%d" % (host, self.port)
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def set(self, name, *addrs):
        with self.lock:
            self.table[name.lower()] = list(addrs)

    def count(self, name, qtype=None):
        with self.lock:
            return sum(n for (q, t), n in self.queries.items()
                       if q == name.lower() and (qtype is None or t == qtype))

    def stop(self):
        self._stop = True
        self.thread.join(5)
        self.sock.close()

    def _run(self):
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                reply = self._answer(data)
            except (IndexError, struct.error, UnicodeDecodeError):
                continue
            if reply is not None:
                self.sock.sendto(reply, peer)

    def _answer(self, data):
        qid, flags, qd = struct.unpack("!HHH", data[:6])
        if qd != 1:
            return None
        i, labels = 12, []
        while data[i]:
            n = data[i]
            labels.append(data[i + 1:i + 1 + n].decode("ascii"))
            i += 1 + n
        i += 1
        qtype, _ = struct.unpack("!HH", data[i:i + 4])
        question = data[12:i + 4]
        name = ".".join(labels).lower()
        tname = {1: "A", 28: "AAAA"}.get(qtype, str(qtype))
        with self.lock:
            self.queries[(name, tname)] = self.queries.get((name, tname), 0) + 1
            if self.drop:
                return None
            addrs = self.table.get(name)
            servfail, ttl = self.servfail, self.ttl
        rd = flags & 0x0100
        if servfail:
            rcode, answers = 2, []
        elif addrs is None:
            rcode, answers = 3, []
        else:
            rcode = 0
            if qtype == 1:
                answers = [socket.inet_pton(socket.AF_INET, a) for a in addrs if ":" not in a]
            elif qtype == 28:
                answers = [socket.inet_pton(socket.AF_INET6, a) for a in addrs if ":" in a]
            else:
                answers = []
        head = struct.pack("!HHHHHH", qid, 0x8000 | 0x0400 | rd | 0x0080 | rcode, 1,
                           len(answers), 0, 0)
        body = b"".join(struct.pack("!HHHIH", 0xC00C, qtype, 1, ttl, len(a)) + a
                        for a in answers)
        return head + question + body
