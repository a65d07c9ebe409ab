"""Shared helpers for unit tests: recorded fact output.

``tests/unit/recorded/<host>-<state>.<fact>.txt`` holds the output of one fact's command,
"fresh" before provisioning and "provisioned" after. ``recorded/README.md`` says which files
were captured on real Debian 12 hosts and which are reconstructed for the other platforms.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

from pgvector_deploy.facts import parse_host_profile, parse_pgvector_state
from pgvector_deploy.migration_files import Migration, parse_migration
from pgvector_deploy.platforms import PLATFORMS

RECORDED = Path(__file__).parent / "recorded"


def recorded_lines(state: str, fact: str, host: str = "debian12-x86_64") -> list[str]:
    """The recorded output lines of ``fact`` on ``host`` in ``state`` (as pyinfra passes them)."""
    return (RECORDED / f"{host}-{state}.{fact}.txt").read_text().splitlines()


def recorded_output(host: str, state: str, fact: str) -> list[str]:
    """Like ``recorded_lines``, but a fact with no file printed nothing (``[]``)."""
    path = RECORDED / f"{host}-{state}.{fact}.txt"
    return path.read_text().splitlines() if path.exists() else []


def sh_syntax_error(script: str) -> str:
    """``sh -n`` the script; returns sh's complaint, or "" when the syntax is valid."""
    result = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True, timeout=10)
    return "" if result.returncode == 0 else (result.stderr or f"exit {result.returncode}")


@pytest.fixture
def debian12():
    return next(p for p in PLATFORMS if p.key == "debian-12")


@pytest.fixture
def fresh_profile():
    return parse_host_profile(recorded_lines("fresh", "host-profile"))


@pytest.fixture
def provisioned_profile():
    return parse_host_profile(recorded_lines("provisioned", "host-profile"))


@pytest.fixture
def fresh_state():
    return parse_pgvector_state(recorded_lines("fresh", "pgvector-state"))


@pytest.fixture
def provisioned_state():
    return parse_pgvector_state(recorded_lines("provisioned", "pgvector-state"))


def with_changes(profile: dict, **changes) -> dict:
    """A deep copy of a parsed profile with some keys replaced."""
    changed = copy.deepcopy(profile)
    changed.update(changes)
    return changed


class FactHost:
    """A fake pyinfra host whose facts come from given output lines (``test_plans.FakeHost``'s
    approach): ``get_fact`` builds the fact's real command with the operation's arguments
    (kept in ``asked``) and parses ``outputs[fact class]`` with the fact's real ``process``."""

    def __init__(self, outputs: dict):
        self.outputs = outputs
        self.data: dict = {}
        self.asked: list[tuple[type, dict, str]] = []
        self.noops: list[str] = []
        self.print_prefix = "[test-host] "  # what operations put before their log lines

    def get_fact(self, cls, **kwargs):
        fact = cls()
        self.asked.append((cls, kwargs, fact.command(**kwargs)))
        lines = self.outputs[cls]
        return fact.process(lines) if lines else fact.default()

    def noop(self, description: str) -> None:
        self.noops.append(description)


def run_operation(operation, plan, host) -> list:
    """The commands ``operation``'s real generator yields with ``host`` as pyinfra's host,
    before the host lock wraps them (``shell.host_locked``; tested in test_shell.py).

    The operations do ``from pyinfra import host``, a proxy to ``ctx_host``'s current module.
    Set and restored by hand: ``ctx_host.use`` does not restore it when the body raises.
    """
    from pyinfra.context import ctx_host

    generator = getattr(operation._inner, "__wrapped__", operation._inner)
    previous = ctx_host.get()
    ctx_host.set(host)
    try:
        return list(generator(plan))
    finally:
        ctx_host.set(previous)


# --- a throwaway PostgreSQL 15 (tests that need the real server and psql) ---------------------

PG_BINDIR = "/usr/lib/postgresql/15/bin"
AS_POSTGRES = ["runuser", "-u", "postgres", "--"]


def throwaway_server_missing() -> str | None:
    """Why a throwaway PostgreSQL 15 cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (runuser -u postgres)"
    if not all(Path(PG_BINDIR, tool).exists() for tool in ("initdb", "pg_ctl", "psql", "pg_isready")):
        return f"PostgreSQL 15 binaries not found in {PG_BINDIR}"
    if subprocess.run(["id", "postgres"], check=False, capture_output=True).returncode != 0:
        return "no postgres OS user"
    return None


def skip_or_fail(reason: str) -> None:
    """Skip on a developer machine; under ``CI=true`` fail, as the real-host tests do
    (tests/bootstrap.sh installs what these tests need)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"cannot run under CI: {reason}")
    pytest.skip(reason)


@contextmanager
def throwaway_server(prefix: str):
    """A PostgreSQL 15 in a temporary directory, reachable only through its Unix socket there
    (trust for the OS user postgres); yields that directory; stopped and removed after.
    Skips the test where it cannot run (fails under CI)."""
    missing = throwaway_server_missing()
    if missing:
        skip_or_fail(f"no throwaway PostgreSQL 15: {missing}")
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)
    shutil.chown(base, "postgres")
    subprocess.run([*AS_POSTGRES, f"{PG_BINDIR}/initdb", "-D", f"{base}/data", "-A", "trust", "-U", "postgres", "-E", "UTF8"],
                   check=True, capture_output=True)  # fmt: skip
    options = f"-c listen_addresses='' -c unix_socket_directories={base} -p 5432"
    subprocess.run([*AS_POSTGRES, f"{PG_BINDIR}/pg_ctl", "-D", f"{base}/data", "-o", options, "-l", f"{base}/log", "-w", "start"],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield base
    finally:
        subprocess.run([*AS_POSTGRES, f"{PG_BINDIR}/pg_ctl", "-D", f"{base}/data", "-m", "immediate", "stop"],
                       check=False, capture_output=True)  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


def throwaway_psql(base: Path):
    """``psql(sql, database="postgres", user="postgres", check=True)`` -> its rows, against the
    throwaway server at ``base``; the database is passed as a name (``dbname_conninfo``)."""
    from pgvector_deploy.shell import dbname_conninfo

    def psql(sql: str, database: str = "postgres", user: str = "postgres", check: bool = True) -> str:
        return subprocess.run(
            [*AS_POSTGRES, f"{PG_BINDIR}/psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-h", str(base), "-U", user,
             "-d", dbname_conninfo(database), "-c", sql],
            check=check, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip

    return psql


# --- migration files (test_migrations, test_migration_files, test_loading) -------------------------


def migration(name: str, sql: str) -> Migration:
    return parse_migration(name, sql.encode())


def write(folder: Path, files: dict[str, str]) -> Path:
    """``files`` (name: text) written into ``folder``, made if missing."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder
