"""A throwaway PKI for the TLS tests, made with the openssl command line.

Pki(dir) makes a test CA; issue() signs a server or client certificate with
it (or with another CA), each with its own serial. EC P-256 keys keep it
quick (a few ms a certificate).
"""
import os
import subprocess


def _run(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class Pki:
    def __init__(self, d, name="Test CA"):
        self.dir = str(d)
        os.makedirs(self.dir, exist_ok=True)
        self.n = 0
        self.name = name
        self.ca_key, self.ca = self.path("ca.key"), self.path("ca.pem")
        _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", self.ca_key, "-out", self.ca, "-days", "30",
             "-subj", "/CN=" + name, cwd=self.dir)

    def path(self, name):
        return os.path.join(self.dir, name)

    def issue(self, cn="localhost", days=30, client=False, serial=None,
              san="DNS:localhost,IP:127.0.0.1"):
        """Signs a new key's certificate; returns (cert path, key path, serial hex)."""
        self.n += 1
        base = "%s-%d" % ("client" if client else "server", self.n)
        key, csr, cert = self.path(base + ".key"), self.path(base + ".csr"), self.path(base + ".pem")
        ext = self.path(base + ".ext")
        with open(ext, "w") as f:
            if client:
                f.write("extendedKeyUsage=clientAuth\n")
            else:
                f.write("subjectAltName=%s\nextendedKeyUsage=serverAuth\n" % san)
        serial = serial or "%08X" % (0x10000000 + self.n + (abs(hash(self.dir)) % 1000) * 1000)
        _run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key, "-out", csr, "-subj", "/CN=" + cn, cwd=self.dir)
        _run("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key,
             "-set_serial", "0x" + serial, "-out", cert, "-days", str(days),
             "-extfile", ext, cwd=self.dir)
        return cert, key, serial
