"""app_over_tcp from the control machine (pgvector_deploy.tunnel, smoke.check_app_over_tcp),
against real parts: a throwaway PostgreSQL 15 with pgvector listening on loopback TCP with
scram-sha-256, and real paramiko on both ends of an SSH connection (an in-process SSH server
that honours direct-tcpip as sshd does; no sshd runs on this machine, so the real sshd is
proved by the real-host test). Also run under gevent's monkey patching, as pyinfra's CLI runs.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
from contextlib import contextmanager
from pathlib import Path

import paramiko
import pytest
from pyinfra.connectors.docker import DockerConnector
from pyinfra.connectors.local import LocalConnector
from pyinfra.connectors.ssh import SSHConnector

from pgvector_deploy import smoke, tunnel
from pgvector_deploy.smoke import HostChecks, SmokeApp, check_app_over_tcp

from .conftest import AS_POSTGRES, PG_BINDIR, skip_or_fail, throwaway_server_missing

PASSWORD = "tunnel-S3cret:'pa$$\\word"
SCRAM = HostChecks([], "scram")


# --- a PostgreSQL 15 on 127.0.0.1:<free port>, scram-sha-256 over TCP ------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """(port, socket dir); roles: app (SCRAM password), nopass (no password), trusted (trust
    over TCP: the misconfiguration app_over_tcp must catch); database appdb with vector."""
    missing = throwaway_server_missing()
    if missing:
        skip_or_fail(f"no throwaway PostgreSQL 15: {missing}")
    base = Path(tempfile.mkdtemp(prefix="pgvd-tunnel-"))
    base.chmod(0o755)
    shutil.chown(base, "postgres")
    port = free_port()
    subprocess.run([*AS_POSTGRES, f"{PG_BINDIR}/initdb", "-D", f"{base}/data", "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)  # fmt: skip
    (base / "data" / "pg_hba.conf").write_text(
        "local all all trust\nhost all trusted 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
    )
    options = f"-c listen_addresses=127.0.0.1 -c unix_socket_directories={base} -p {port}"
    subprocess.run([*AS_POSTGRES, f"{PG_BINDIR}/pg_ctl", "-D", f"{base}/data", "-o", options, "-l", f"{base}/log", "-w", "start"],
                   check=True, capture_output=True)  # fmt: skip
    sql = (
        "SET password_encryption = 'scram-sha-256';\n"
        f"CREATE ROLE app LOGIN PASSWORD '{PASSWORD.replace(chr(39), chr(39) * 2)}';\n"
        "CREATE ROLE nopass LOGIN; CREATE ROLE trusted LOGIN;\n"
        "CREATE DATABASE appdb OWNER app;\n"
        "\\c appdb\nCREATE EXTENSION vector;\n"
    )
    subprocess.run([*AS_POSTGRES, f"{PG_BINDIR}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(base), "-p", str(port), "-d", "postgres"],
                   input=sql, check=True, capture_output=True, text=True)  # fmt: skip
    try:
        yield port, base
    finally:
        subprocess.run([*AS_POSTGRES, f"{PG_BINDIR}/pg_ctl", "-D", f"{base}/data", "-m", "immediate", "stop"],
                       check=False, capture_output=True)  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


# --- an SSH server (paramiko) that opens direct-tcpip channels as sshd does ------------------------


class ForwardingServer(paramiko.ServerInterface):
    def __init__(self, forbid: bool):
        self.forbid = forbid
        self.targets: dict[int, socket.socket] = {}
        self.asked: list[tuple] = []

    def get_allowed_auths(self, username):
        return "password"

    def check_auth_password(self, username, password):
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_direct_tcpip_request(self, chanid, origin, destination):
        self.asked.append(destination)
        if self.forbid:
            return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        try:
            self.targets[chanid] = socket.create_connection(destination, timeout=5)
        except OSError:
            return paramiko.OPEN_FAILED_CONNECT_FAILED
        return paramiko.OPEN_SUCCEEDED


@contextmanager
def ssh_host(forbid: bool = False):
    """A pyinfra-like host whose SSHConnector holds a real paramiko client connected to an
    in-process SSH server; yields (host, server interface)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    interface = ForwardingServer(forbid)
    done = threading.Event()

    def serve():
        conn, _ = listener.accept()
        transport = paramiko.Transport(conn)
        transport.add_server_key(paramiko.ECDSAKey.generate())
        transport.start_server(server=interface)
        while not done.is_set():
            channel = transport.accept(0.2)
            if channel is None:
                continue
            target = interface.targets.pop(channel.get_id())
            threading.Thread(target=relay, args=(channel, target), daemon=True).start()
        transport.close()

    def relay(channel, target):
        with target:
            while True:
                readable, _, _ = select.select([channel, target], [], [], 5)
                if not readable:
                    break
                source, sink = (channel, target) if channel in readable else (target, channel)
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        channel.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect("127.0.0.1", listener.getsockname()[1], username="admin", password="x",
                   look_for_keys=False, allow_agent=False, timeout=10)  # fmt: skip
    connector = SSHConnector.__new__(SSHConnector)  # pyinfra's own class, with its client
    connector.client = client
    try:
        yield types.SimpleNamespace(connector=connector), interface
    finally:
        client.close()
        done.set()
        thread.join(5)
        listener.close()


def local_host():
    return types.SimpleNamespace(connector=LocalConnector.__new__(LocalConnector))


def app(user="app", password=PASSWORD, database="appdb"):
    return SmokeApp(user=user, password=password, database=database, address="127.0.0.1")


def tunnel_threads():
    return [t for t in threading.enumerate() if t.name.startswith("tunnel to ")]


# --- the SSH path -----------------------------------------------------------------------------------


def test_over_ssh_the_app_logs_in_with_scram_and_is_refused_without_its_password(server):
    port, _ = server
    before = set(Path(tempfile.gettempdir()).glob("pgvector-deploy-tunnel-*"))
    with ssh_host() as (host, interface):
        result = check_app_over_tcp(host, app(), port, SCRAM)
    assert result.status == "pass", result.detail
    assert result.detail == (
        f"role app logged in over TCP to 127.0.0.1:{port} with its password (SCRAM; refused without it), "
        "database appdb: '[1,2,3]' <-> '[4,6,3]' = 5"
    )
    assert interface.asked == [("127.0.0.1", port)] * 2  # one channel per login, to the address
    assert set(Path(tempfile.gettempdir()).glob("pgvector-deploy-tunnel-*")) == before  # removed
    assert tunnel_threads() == []  # joined


def test_the_tunnel_socket_is_private_and_gone_afterwards(server):
    port, _ = server
    with ssh_host() as (host, _):
        with tunnel.reach(host, "127.0.0.1", port) as way:
            directory = Path(way.keywords["host"])
            assert (directory.stat().st_mode & 0o777) == 0o700
            assert (directory / f".s.PGSQL.{port}").is_socket()
            held = socket.socket(socket.AF_UNIX)
            held.connect(str(directory / f".s.PGSQL.{port}"))  # a client that never finishes
        started = time.monotonic()
    assert time.monotonic() - started < 5
    assert not directory.exists()
    assert tunnel_threads() == []
    held.close()


def test_a_wrong_password_fails_and_never_shows_the_password(server):
    port, _ = server
    with ssh_host() as (host, _):
        result = check_app_over_tcp(host, app(password="Wrong-" + PASSWORD), port, SCRAM)
    assert result.status == "fail"
    assert 'password authentication failed for user "app"' in result.detail
    assert result.detail.startswith(f"role app at 127.0.0.1:{port} database appdb: ")
    assert f"127.0.0.1:{port} (through SSH)" in result.detail and "pgvector-deploy-tunnel-" not in result.detail
    assert PASSWORD not in result.detail


def test_a_login_without_a_password_is_a_failure(server):
    port, _ = server
    with ssh_host() as (host, _):
        result = check_app_over_tcp(host, app(user="trusted"), port, SCRAM)
    assert result == smoke.CheckResult(
        "app_over_tcp", "fail",
        "role trusted logged in at 127.0.0.1 without a password; pg_hba.conf must ask for scram-sha-256 there",
    )  # fmt: skip


def test_a_wrong_vector_result_or_missing_extension_fails(server):
    port, _ = server
    with ssh_host() as (host, _):
        result = check_app_over_tcp(host, app(database="postgres"), port, SCRAM)  # no vector there
    assert result.status == "fail"
    assert 'type "vector" does not exist' in result.detail


def test_an_sshd_that_forbids_forwarding_skips_naming_the_fix(server):
    port, _ = server
    with ssh_host(forbid=True) as (host, interface):
        result = check_app_over_tcp(host, app(), port, SCRAM)
    assert result.status == "skip"
    assert "does not allow TCP forwarding" in result.detail and "AllowTcpForwarding" in result.detail
    assert interface.asked == [("127.0.0.1", port)]


def test_nothing_listening_at_the_address_fails_naming_it(server):
    port = free_port()
    with ssh_host() as (host, _):
        result = check_app_over_tcp(host, app(), port, SCRAM)
    assert result.status == "fail"
    assert result.detail.startswith(f"role app at 127.0.0.1:{port} database appdb: the host could not connect to 127.0.0.1:{port}")


def test_a_closed_ssh_connection_fails_clearly(server):
    port, _ = server
    with ssh_host() as (host, _):
        host.connector.client.close()
        result = check_app_over_tcp(host, app(), port, SCRAM)
    assert result.status == "fail"
    assert "pyinfra's SSH connection to the host is not open" in result.detail


def test_control_machine_pg_variables_and_pgpass_are_not_used(server, monkeypatch, tmp_path):
    port, _ = server
    pgpass = tmp_path / ".pgpass"
    pgpass.write_text(f"*:*:*:*:{PASSWORD}\n")
    pgpass.chmod(0o600)
    for name, value in {"PGPASSWORD": PASSWORD, "PGPASSFILE": str(pgpass), "HOME": str(tmp_path),
                        "PGREQUIREAUTH": "password", "PGSSLMODE": "require", "PGDATABASE": "nope", "PGUSER": "nope"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    with ssh_host() as (host, _):
        result = check_app_over_tcp(host, app(), port, SCRAM)
    assert result.status == "pass", result.detail  # refused without it: neither variable nor file gave it


def test_app_keywords_are_keywords_and_demand_scram_with_the_password():
    where = {"host": "/tmp/x", "port": 5432}
    with_password = smoke.app_keywords(where, app(), PASSWORD)
    assert with_password["password"] == PASSWORD and with_password["require_auth"] == "scram-sha-256"
    assert with_password["connect_timeout"] == smoke.APP_CONNECT_TIMEOUT
    without = smoke.app_keywords(where, app(), None)
    assert without["password"] == "" and "none" in without["require_auth"].split(",")
    assert without["passfile"].startswith("/nonexistent/")


# --- @local, other connectors, the stored password's kind ------------------------------------------


def test_at_local_connects_directly(server):
    port, _ = server
    result = check_app_over_tcp(local_host(), app(), port, SCRAM)
    assert result.status == "pass", result.detail
    assert f"logged in over TCP to 127.0.0.1:{port}" in result.detail


def test_another_connector_skips_with_the_reason():
    host = types.SimpleNamespace(connector=DockerConnector.__new__(DockerConnector))
    result = check_app_over_tcp(host, app(), 5432, SCRAM)
    assert result.status == "skip"
    assert "DockerConnector connector cannot carry a TCP connection" in result.detail


@pytest.mark.parametrize(
    "checked, detail",
    [
        (HostChecks([], "absent"), "role app does not exist"),
        (HostChecks([], "none"), "role app has no password"),
        (HostChecks([], "other"), "role app's password is not stored as SCRAM-SHA-256 (password_encryption was md5 when it was set)"),
        (HostChecks([], "error", "psql: boom"), "cannot look up role app: psql: boom"),
        (HostChecks([], None), "no result: the suite stopped before looking up role app"),
    ],
)
def test_a_password_not_stored_as_scram_fails_before_any_connection(checked, detail):
    host = types.SimpleNamespace(connector=None)  # would skip, were it asked to connect
    assert check_app_over_tcp(host, app(), 5432, checked) == smoke.CheckResult("app_over_tcp", "fail", detail)


def test_without_an_app_or_its_address_the_check_skips():
    assert check_app_over_tcp(None, None, 5432, SCRAM).detail == "no app role given to the smoke suite"
    no_address = SmokeApp("app", PASSWORD, "appdb", None)
    assert check_app_over_tcp(None, no_address, 5432, SCRAM).status == "skip"


# --- under gevent, as pyinfra's CLI runs (monkey.patch_all) ----------------------------------------

GEVENT_RUN = """
from gevent import monkey
monkey.patch_all()
import sys
from tests.unit import test_tunnel as t
with t.ssh_host() as (host, interface):
    result = t.check_app_over_tcp(host, t.app(), int(sys.argv[1]), t.SCRAM)
print(result.status, len(interface.asked), result.detail)
"""


def test_over_ssh_under_gevent_monkey_patching(server):
    port, _ = server
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", GEVENT_RUN, str(port)], cwd=root, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(root)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("pass 2 role app logged in over TCP"), done.stdout + done.stderr
