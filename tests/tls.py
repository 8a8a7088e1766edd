"""A throwaway certificate authority and server certificate, made with the openssl CLI."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path


def make_certs(folder: Path, host: str = "127.0.0.1") -> Certs:
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=gridwatch test CA",
        "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}", "-keyout", "server.key",
        "-out", "server.csr")  # fmt: skip
    (folder / "ext.cnf").write_text(f"subjectAltName=IP:{host},DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem")  # fmt: skip
    for f in folder.iterdir():
        f.chmod(0o644)  # mosquitto reads them after dropping to its own user
    return Certs(folder / "ca.pem", folder / "server.pem", folder / "server.key")
