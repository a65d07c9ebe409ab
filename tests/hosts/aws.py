"""What an EC2 host has besides itself, for the lab: S3 and the instance metadata service.

- ``LabCA``: a certificate authority made with openssl for the lab, and a server certificate
  for the lab gateway's address (subjectAltName IP). Test hosts are given the CA's file.
- ``S3``: moto in server mode on the lab gateway (plain HTTP), with Debian's stunnel4 in front
  terminating TLS with that certificate: pgBackRest speaks S3 only over HTTPS, and moto's own
  ``--ssl`` ends TLS without a close_notify, which pgBackRest refuses
  (see /work/shared/reference/lab-stand-ins.md).
- ``Imds``: an IMDSv2 stand-in for one test host, answering at 169.254.169.254:80 inside the
  host's network namespace (an address on its loopback; the server process runs on
  the machine side, in that namespace, as the real IMDS is outside the instance). It demands
  the token (``PUT /latest/api/token``) as Amazon Linux 2023 does, then hands out role
  credentials that moto accepts. ``deny()`` makes it answer 404 for the role (an instance
  without a role, or expired credentials).

Nothing leaves the machine: moto and stunnel listen on the lab bridge only.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from .lab import wait_for_port

IMDS_ADDRESS = "169.254.169.254"
ROLE = "pgvector-db"


def _free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


class LabCA:
    """A CA (``ca.pem``) and a server certificate (``server.pem``/``server.key``) for ``address``."""

    def __init__(self, workdir: Path, address: str):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = self.dir / "ca.pem"
        self.cert = self.dir / "server.pem"
        self.key = self.dir / "server.key"
        ca_key = self.dir / "ca.key"

        def openssl(*args: str) -> None:
            subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=self.dir)

        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                "-subj", "/CN=pgvector-deploy lab CA", "-keyout", str(ca_key), "-out", str(self.ca),
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
        csr = self.dir / "server.csr"
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={address}",
                "-keyout", str(self.key), "-out", str(csr))  # fmt: skip
        # pgBackRest 2.45 matches the endpoint against DNS names only, so the address is a DNS name too.
        ext = self.dir / "server.ext"
        ext.write_text(f"subjectAltName=IP:{address},DNS:{address}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
        openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(ca_key), "-CAcreateserial",
                "-days", "2", "-extfile", str(ext), "-out", str(self.cert))  # fmt: skip
        self.key.chmod(0o600)


class S3:
    """moto over HTTP on ``address``, stunnel4 in front with TLS: ``endpoint`` (host), ``port``."""

    def __init__(self, workdir: Path, address: str):
        from moto.server import ThreadedMotoServer

        self.address = address
        self.ca = LabCA(workdir / "ca", address)
        self.http_port = _free_port(address)
        self.port = _free_port(address)
        self._moto = ThreadedMotoServer(ip_address=address, port=self.http_port, verbose=False)
        self._moto.start()
        conf = workdir / "stunnel.conf"
        conf.write_text(
            f"foreground = yes\npid =\nsyslog = no\noutput = {workdir / 'stunnel.log'}\n"
            f"[s3]\naccept = {address}:{self.port}\nconnect = {address}:{self.http_port}\n"
            f"cert = {self.ca.cert}\nkey = {self.ca.key}\n"
        )
        self._stunnel = subprocess.Popen(["stunnel4", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(address, self.port, 20)

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    def client(self):
        """boto3's S3 client on the plain HTTP side (the test's own view of the bucket)."""
        import boto3

        return boto3.client(
            "s3", endpoint_url=f"http://{self.address}:{self.http_port}", region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )  # fmt: skip

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def stop(self) -> None:
        self._stunnel.terminate()
        self._stunnel.wait(10)
        self._moto.stop()


class Imds:
    """The IMDSv2 stand-in inside ``host``'s network namespace (see the module's docstring)."""

    def __init__(self, host, workdir: Path):
        self.host = host
        self.state = workdir / f"imds-{host.name}.state"
        self.state.write_text("allow\n")
        self.log = workdir / f"imds-{host.name}.log"
        # On the namespace's loopback (this machine's kernel has no dummy interfaces): packets
        # from the host to it stay in the namespace and reach the server below.
        host.netns_run("ip", "addr", "add", f"{IMDS_ADDRESS}/32", "dev", "lo")
        with open(self.log, "ab") as log:
            self._process = subprocess.Popen(
                ["ip", "netns", "exec", host.netns, sys.executable, "-m", "tests.hosts.aws", str(self.state)],
                cwd=Path(__file__).resolve().parents[2], stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while "ready" not in self.log.read_text():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the IMDS stand-in for {host.name} did not start; see {self.log}")
            time.sleep(0.1)

    def deny(self) -> None:
        """No role credentials from now on (404, as for an instance without a role)."""
        self.state.write_text("deny\n")

    def allow(self) -> None:
        self.state.write_text("allow\n")

    def requests(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line.startswith(("GET ", "PUT "))]

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            self._process.wait(10)


def serve_imds(state_file: str) -> None:
    """The IMDSv2 server (run in a host's network namespace by ``Imds``)."""
    import http.server
    import json
    import secrets
    from datetime import datetime, timedelta, timezone

    tokens: set[str] = set()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _answer(self, status: int, body: str = "", kind: str = "text/plain") -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            print(f"{self.command} {self.path} {status}", flush=True)

        def do_PUT(self):
            if self.path != "/latest/api/token" or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                return self._answer(400)
            token = secrets.token_urlsafe(32)
            tokens.add(token)
            self._answer(200, token)

        def do_GET(self):
            if self.headers.get("X-aws-ec2-metadata-token") not in tokens:
                return self._answer(401)  # IMDSv2 only: no token, no answer (AL2023's default)
            allowed = Path(state_file).read_text().strip() == "allow"
            base = "/latest/meta-data/iam/security-credentials/"
            if self.path in (base, base.rstrip("/")):
                return self._answer(200, ROLE) if allowed else self._answer(404)
            if self.path == base + ROLE and allowed:
                expires = (datetime.now(timezone.utc) + timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ")
                body = {
                    "Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": "ASIALABTESTKEY0000001",
                    "SecretAccessKey": secrets.token_hex(20), "Token": secrets.token_hex(64), "Expiration": expires,
                    "LastUpdated": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                }  # fmt: skip
                return self._answer(200, json.dumps(body), "application/json")
            if self.path == "/latest/meta-data/placement/region":
                return self._answer(200, "us-east-1")
            self._answer(404)

    server = http.server.ThreadingHTTPServer((IMDS_ADDRESS, 80), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    os.environ.pop("AWS_ACCESS_KEY_ID", None)
    serve_imds(sys.argv[1])
