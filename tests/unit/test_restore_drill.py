"""The restore drill (files/backups/pgvector-restore-drill) run for real: a throwaway
PostgreSQL 15 with pgvector and amcheck archives into a local (posix) pgBackRest repository,
and the drill restores its latest backup into a scratch copy, as on a host, with a settings
file of its own (PGV_BACKUP_ENV). The S3 side is proved in tests/e2e/test_backups.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from .conftest import AS_POSTGRES, PG_BINDIR, skip_or_fail, throwaway_psql, throwaway_server_missing

REPO = Path(__file__).resolve().parents[2]
DRILL = REPO / "files" / "backups" / "pgvector-restore-drill"
STANZA = "pgvector"


class Production:
    """The "production" server: ``base`` (socket, data, repository), ``psql``, ``pgbackrest``."""

    def __init__(self, base: Path):
        self.base = base
        self.config = base / "pgbackrest.conf"
        self.psql = throwaway_psql(base)
        self.runs = 0

    def pgbackrest(self, *args: str) -> str:
        return subprocess.run([*AS_POSTGRES, "pgbackrest", f"--config={self.config}", f"--stanza={STANZA}", *args],
                              check=True, capture_output=True, text=True).stdout  # fmt: skip

    def archive_now(self) -> None:
        """Everything committed so far is in the repository (the drill replays it)."""
        segment = self.psql("SELECT pg_walfile_name(pg_switch_wal())")
        deadline = time.monotonic() + 60
        while self.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")[:24] < segment:
            assert time.monotonic() < deadline, "WAL was not archived"
            time.sleep(0.2)

    def env_file(self, drill_dir: Path, **extra: str) -> Path:
        values = {
            "PGBR_CONFIG": str(self.config), "PGBR_STANZA": STANZA, "PGV_BINDIR": PG_BINDIR,
            "PGV_DATA_DIR": str(self.base / "data"), "PGV_SOCKET_DIR": str(self.base), "PGV_PORT": "5432",
            "PGV_DRILL_PORT": "54329", "PGV_DRILL_DIR": str(drill_dir), "PGV_TEXTFILE_DIR": str(self.base / "textfile"),
            "PGV_DRILL_LOCK": str(self.base / "drill.lock"), **extra,
        }  # fmt: skip
        path = self.base / f"backup-{self.runs}.env"
        path.write_text("".join(f"{key}='{value}'\n" for key, value in values.items()))
        return path

    def drill_dir(self) -> Path:
        self.runs += 1
        return self.base / f"drill-{self.runs}"

    def start_drill(self, drill_dir: Path, **extra: str) -> subprocess.Popen:
        env = {"PATH": os.environ["PATH"], "PGV_BACKUP_ENV": str(self.env_file(drill_dir, **extra))}
        return subprocess.Popen(["sh", str(DRILL)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)  # fmt: skip

    def drill(self, **extra: str) -> tuple[int, str, Path]:
        """Runs the drill; (exit status, its output, its directory)."""
        drill_dir = self.drill_dir()
        process = self.start_drill(drill_dir, **extra)
        out, err = process.communicate(timeout=600)
        return process.returncode, out + err, drill_dir


def report(drill_dir: Path, name: str = "last.json") -> dict:
    return json.loads((drill_dir / name).read_text())


@pytest.fixture(scope="module")
def production():
    missing = throwaway_server_missing() or (None if shutil.which("pgbackrest") else "pgBackRest is not installed")
    if missing:
        skip_or_fail(f"no restore drill here: {missing}")
    base = Path(tempfile.mkdtemp(prefix="pgv-drill-"))
    base.chmod(0o755)
    shutil.chown(base, "postgres")
    prod = Production(base)
    for sub in ("repo", "lock", "log"):
        (base / sub).mkdir()
        shutil.chown(base / sub, "postgres")
    prod.config.write_text(
        f"[global]\nrepo1-path={base}/repo\nrepo1-retention-full=2\nlock-path={base}/lock\nlog-path={base}/log\n"
        f"log-level-file=off\nstart-fast=y\n\n[{STANZA}]\npg1-path={base}/data\npg1-socket-path={base}\npg1-port=5432\n"
    )
    shutil.chown(prod.config, "postgres")
    subprocess.run([*AS_POSTGRES, f"{PG_BINDIR}/initdb", "-D", f"{base}/data", "-A", "trust", "-U", "postgres", "-E", "UTF8"],
                   check=True, capture_output=True)  # fmt: skip
    with open(base / "data" / "postgresql.conf", "a") as conf:
        conf.write(f"archive_mode = on\narchive_command = 'pgbackrest --config={prod.config} --stanza={STANZA} archive-push %p'\n")
    options = f"-c listen_addresses='' -c unix_socket_directories={base} -p 5432"
    subprocess.run([*AS_POSTGRES, f"{PG_BINDIR}/pg_ctl", "-D", f"{base}/data", "-o", options, "-l", f"{base}/server.log", "-w", "start"],
                   check=True, capture_output=True)  # fmt: skip
    try:
        prod.pgbackrest("stanza-create")
        prod.psql("CREATE ROLE app LOGIN")
        prod.psql("CREATE DATABASE app OWNER app")
        prod.psql("CREATE EXTENSION vector", database="app")
        prod.psql(
            "CREATE TABLE items (id bigint PRIMARY KEY, embedding vector(3));"
            "INSERT INTO items SELECT i, ARRAY[i, i % 7, i % 3]::vector FROM generate_series(1, 200) i;"
            "CREATE INDEX items_hnsw ON items USING hnsw (embedding vector_l2_ops)",
            database="app", user="app",
        )  # fmt: skip
        prod.pgbackrest("backup", "--type=full")
        yield prod
    finally:
        subprocess.run([*AS_POSTGRES, f"{PG_BINDIR}/pg_ctl", "-D", f"{base}/data", "-m", "immediate", "stop"],
                       check=False, capture_output=True)  # fmt: skip
        for pid_file in base.glob("drill-*/**/postmaster.pid"):  # a scratch copy a failed test left running
            subprocess.run([*AS_POSTGRES, f"{PG_BINDIR}/pg_ctl", "-D", str(pid_file.parent), "-m", "immediate", "stop"],
                           check=False, capture_output=True)  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


def test_the_drill_restores_checks_and_reports(production):
    rc, out, drill_dir = production.drill()
    assert rc == 0, out
    result = report(drill_dir)
    assert result["result"] == "pass", result
    app = next(db for db in result["databases"] if db["database"] == "app")
    assert {"table": "public.items", "rows": 200} in app["tables"]
    assert app["hnsw_indexes"] == [{"index": "items_hnsw", "table": "public.items", "rows_returned": 5}]
    assert sorted(p.name for p in drill_dir.iterdir()) == ["last-good.json", "last.json"]
