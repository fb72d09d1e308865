"""Throw-away certificates for the TLS tests, made with the openssl command.

A CA, a server certificate for 127.0.0.1/localhost signed by it, and a client
certificate signed by it (for --ca-certs, mutual TLS).  EC P-256 keys: fast.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path

    def client_context(self, with_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        if with_cert:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _new_key(path: Path) -> None:
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)
    )


def _signed(directory: Path, name: str, ca: Path, ca_key: Path, extensions: str) -> None:
    key, csr, ext = (directory / f"{name}.{s}" for s in ("key", "csr", "ext"))
    out = directory / f"{name}.pem"
    _new_key(key)
    _openssl("req", "-new", "-key", str(key), "-subj", f"/CN={name}", "-out", str(csr))
    ext.write_text(extensions + "\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(out),
    )  # fmt: skip


def make_pki(directory: Path) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed (apt-get install openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    _new_key(ca_key)
    _openssl(
        "req", "-x509", "-new", "-key", str(ca_key), "-subj", "/CN=wsgipool test CA",
        "-days", "2", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", str(ca),
    )  # fmt: skip
    _signed(
        directory,
        "server",
        ca,
        ca_key,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth",
    )
    _signed(directory, "client", ca, ca_key, "extendedKeyUsage=clientAuth")
    return Pki(
        ca=ca,
        cert=directory / "server.pem",
        key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
