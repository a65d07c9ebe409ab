"""The restore drill (files/backups/pgvector-restore-drill) run for real: a throwaway
PostgreSQL 15 with pgvector and amcheck archives into a local (posix) pgBackRest repository,
and the drill restores its latest backup into a scratch copy, as on a host, with a settings
file of its own (PGV_BACKUP_ENV). The S3 side is proved in tests/e2e/test_backups.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from .conftest import AS_POSTGRES, PG_BINDIR, skip_or_fail, throwaway_psql, throwaway_server_missing

REPO = Path(__file__).resolve().parents[2]
# PGV_TEST_DRILL_SCRIPT: another version of the script (to see a test fail on an older one).
DRILL = Path(os.environ.get("PGV_TEST_DRILL_SCRIPT", REPO / "files" / "backups" / "pgvector-restore-drill"))
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
    # Finding 25: the report names every table; root (the e2e tests, an operator) reads it.
    assert all((drill_dir / name).stat().st_mode & 0o077 == 0 for name in ("last.json", "last-good.json"))


def scratch_dirs(drill_dir: Path) -> list[Path]:
    return sorted(drill_dir.glob("scratch.*"))


def scratch_postmasters(drill_dir: Path) -> list[str]:
    """PIDs of servers running from a scratch copy under ``drill_dir`` (their working directory)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.readlink(proc / "cwd").startswith(f"{drill_dir}/scratch."):
                found.append(proc.name)
        except OSError:
            pass
    return found


@pytest.fixture
def slow_table(production):
    """A table whose count takes 30 s (its row-level security policy sleeps, as its owner)."""
    production.psql(
        "CREATE FUNCTION public.slow() RETURNS boolean LANGUAGE sql AS 'SELECT pg_sleep(30) IS NOT NULL';"
        "CREATE TABLE slow (i int); INSERT INTO slow VALUES (1);"
        "ALTER TABLE slow ENABLE ROW LEVEL SECURITY; ALTER TABLE slow FORCE ROW LEVEL SECURITY;"
        "CREATE POLICY slow ON slow USING (public.slow())",
        database="app", user="app",
    )  # fmt: skip
    production.archive_now()
    yield
    production.psql("DROP TABLE slow; DROP FUNCTION public.slow()", database="app", user="app")
    production.archive_now()


def wait_for_the_slow_count(drill_dir: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while "pg_sleep" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout and not any(
        "app app [local] SELECT" in line for line in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    ):  # fmt: skip
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the drill never reached the slow table"
        time.sleep(0.2)


# --- finding 4: free space, cleanup after a stop or a kill ----------------------------------------


def test_a_copy_that_would_not_fit_is_refused_with_a_report_before_anything_is_restored(production):
    rc, out, drill_dir = production.drill(PGV_DRILL_SPACE_MARGIN_MB="100000000")
    assert rc == 1, out
    result = report(drill_dir)
    assert result["result"] == "fail" and "not enough free space" in result["error"] and "MB are free" in result["error"], result
    assert scratch_dirs(drill_dir) == [] and not (drill_dir / "last-good.json").exists()
    assert "pgvector_restore_drill_success 0" in (production.base / "textfile" / "pgvector_drill.prom").read_text()


def test_a_drill_stopped_with_sigterm_stops_and_removes_its_copy_and_reports(production, slow_table):
    """systemctl stop, a shutdown: dash runs no EXIT trap on SIGTERM (the copy stayed, running)."""
    drill_dir = production.drill_dir()
    process = production.start_drill(drill_dir)
    wait_for_the_slow_count(drill_dir, process)
    os.killpg(process.pid, signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode != 0
    assert scratch_dirs(drill_dir) == [] and scratch_postmasters(drill_dir) == []
    result = report(drill_dir)
    assert result["result"] == "fail" and "stopped" in result["error"], result


def test_the_next_drill_stops_and_removes_what_a_killed_one_left(production, slow_table):
    """SIGKILL (the OOM killer, cron without systemd's cgroup): the copy and its server stay;
    the next drill (under the same lock) stops that server and removes the copy."""
    drill_dir = production.drill_dir()
    process = production.start_drill(drill_dir)
    wait_for_the_slow_count(drill_dir, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    (left,) = scratch_dirs(drill_dir)
    if not scratch_postmasters(drill_dir):  # the kill reached its server too: start it again, as cron's survivor
        options = (f"-c config_file={left}/postgresql.conf -c hba_file={left}/pg_hba.conf -c ident_file={left}/pg_ident.conf "
                   f"-c port=54330 -c listen_addresses= -c unix_socket_directories={left} -c archive_mode=off")  # fmt: skip
        subprocess.run([*AS_POSTGRES, f"{PG_BINDIR}/pg_ctl", "-D", f"{left}/data", "-o", options, "-l", f"{left}/again.log", "-w", "start"],
                       check=True, capture_output=True)  # fmt: skip
    assert scratch_postmasters(drill_dir)
    production.psql("DROP TABLE slow", database="app", user="app")
    production.psql("CREATE TABLE slow (i int)", database="app", user="app")
    production.archive_now()
    again = production.start_drill(drill_dir)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, out + err
    assert scratch_dirs(drill_dir) == [] and scratch_postmasters(drill_dir) == []


# --- finding 9: root never writes through what postgres controls ---------------------------------


@pytest.fixture
def victim(production):
    """A root-owned 0600 file a planted symlink points at."""
    path = production.base / "victim"
    path.write_text("root's own\n")
    path.chmod(0o600)
    yield path
    path.unlink()


def test_planted_report_symlinks_are_not_followed(production, victim):
    drill_dir = production.drill_dir()
    drill_dir.mkdir(mode=0o700)
    shutil.chown(drill_dir, "postgres", "postgres")
    for name in ("last.json", "last-good.json", "last.json.new"):
        subprocess.run([*AS_POSTGRES, "ln", "-s", str(victim), str(drill_dir / name)], check=True)
    process = production.start_drill(drill_dir)
    out, err = process.communicate(timeout=600)
    assert victim.read_text() == "root's own\n" and (victim.stat().st_mode & 0o777, victim.stat().st_uid) == (0o600, 0)
    assert process.returncode == 0, out + err
    assert report(drill_dir)["result"] == "pass" and not (drill_dir / "last.json").is_symlink()


def test_a_symlink_planted_in_the_scratch_copy_is_not_followed(production, victim):
    """postgres owns the scratch directory: a postgresql.conf symlink planted there once made
    root write into (and chown) the file it pointed at."""
    drill_dir = production.drill_dir()
    process = production.start_drill(drill_dir)
    deadline = time.monotonic() + 60
    while not scratch_dirs(drill_dir):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.005)
    scratch = scratch_dirs(drill_dir)[0]
    for name in ("postgresql.conf", "pg_hba.conf", "pg_ident.conf"):
        subprocess.run([*AS_POSTGRES, "ln", "-s", str(victim), str(scratch / name)], check=True)
    process.communicate(timeout=600)
    assert victim.read_text() == "root's own\n" and (victim.stat().st_mode & 0o777, victim.stat().st_uid) == (0o600, 0)


# --- finding 7: the database's own settings cannot break the drill or fake corruption ------------


@pytest.mark.parametrize("setting", ["role = 'app'", "default_transaction_read_only = on", "search_path = public",
                                     "statement_timeout = '1ms'", "lock_timeout = '1ms'"])  # fmt: skip
def test_the_app_database_settings_cannot_break_the_drill(production, setting):
    production.psql(f"ALTER DATABASE app SET {setting}")
    production.archive_now()
    try:
        rc, out, drill_dir = production.drill()
    finally:
        production.psql(f"ALTER DATABASE app RESET {setting.split()[0]}")
        production.archive_now()
    assert rc == 0, out
    assert report(drill_dir)["result"] == "pass"


# --- finding 8: app text cannot break or forge the report ----------------------------------------


FORGED = '\t","result":"pass","error":"","x":[{"y":"'
FORGED_SQL = "E'" + FORGED.replace("\t", "\\t") + "'"  # a tab, quotes and JSON, as an SQL literal


def drill_with_a_guarded_table(production, name: str, body: str, rows: int):
    """A table of the app's ``name`` with ``rows`` rows behind a row-level policy that calls
    the app's function ``public.<name>()`` (``body``: its plpgsql), so the drill's count as the
    owner runs the app's code; the drill's (rc, out, directory), the objects removed after."""
    production.psql(
        f"CREATE FUNCTION public.{name}() RETURNS boolean LANGUAGE plpgsql AS $f$BEGIN {body} END$f$;"
        f"CREATE TABLE {name} (i int); INSERT INTO {name} SELECT pg_catalog.generate_series(1, {rows});"
        f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY; ALTER TABLE {name} FORCE ROW LEVEL SECURITY;"
        f"CREATE POLICY {name} ON {name} USING (public.{name}())",
        database="app", user="app",
    )  # fmt: skip
    production.archive_now()
    try:
        return production.drill()
    finally:
        production.psql(f"DROP TABLE {name}; DROP FUNCTION public.{name}()", database="app", user="app")
        production.archive_now()


def test_app_warnings_do_not_reach_the_report(production):
    rc, out, drill_dir = drill_with_a_guarded_table(production, "chatty", f"RAISE WARNING '%', {FORGED_SQL}; RETURN true;", 3)
    result = report(drill_dir)  # valid JSON
    app = next(db for db in result["databases"] if db["database"] == "app")
    assert {"table": "public.chatty", "rows": 3} in app["tables"], app
    assert all(isinstance(table["rows"], int) for table in app["tables"])
    assert rc == 0 and result["result"] == "pass", out


def test_an_app_error_cannot_forge_the_report(production):
    rc, out, drill_dir = drill_with_a_guarded_table(production, "angry", f"RAISE EXCEPTION '%', {FORGED_SQL};", 1)
    assert rc == 1, out
    result = report(drill_dir)  # valid JSON, control characters and quotes included
    assert result["result"] == "fail" and "counting" in result["error"] and "x" not in result, result
    assert not (drill_dir / "last-good.json").exists()


# --- finding 11: the drill judges how fresh the backup is -----------------------------------------


def test_a_backup_older_than_the_schedule_allows_fails_the_drill(production):
    rc, out, drill_dir = production.drill(PGV_DRILL_MAX_BACKUP_AGE_S="1")
    assert rc == 1, out
    result = report(drill_dir)
    assert result["result"] == "fail" and "hours before the drill" in result["error"], result
    assert result["backup_age_seconds"] >= 1 and result["databases"], result  # the checks ran and are reported
    assert "pgvector_restore_drill_backup_age_seconds " in (production.base / "textfile" / "pgvector_drill.prom").read_text()


def test_backup_env_says_how_old_the_newest_backup_may_be():
    from pgvector_deploy import backups

    from .test_backups import BACKUP, plan_with

    def max_age(schedule: str) -> str:
        plan, _ = plan_with({**BACKUP, "pg_backup_full_schedule": schedule})
        return next(line for line in backups.render_env(plan).splitlines() if line.startswith("PGV_DRILL_MAX_BACKUP_AGE_S="))

    day = 86400
    assert max_age("Sun 01:00") == f"PGV_DRILL_MAX_BACKUP_AGE_S={8 * day}"  # a week, and a day's margin
    assert max_age("Sun,Wed 01:00") == f"PGV_DRILL_MAX_BACKUP_AGE_S={5 * day}"  # Wed to Sun: 4 days
    assert max_age("daily 01:00") == f"PGV_DRILL_MAX_BACKUP_AGE_S={2 * day}"


# --- findings 18, 19: production's configuration and tablespaces stay out of the copy ------------


def test_what_alter_system_put_in_production_does_not_act_in_the_copy(production):
    """postgresql.auto.conf comes with the backup: a preloaded library (pg_cron) would run in the
    copy, the log collector would write into production's log directory."""
    logs = production.base / "production-logs"
    production.psql("ALTER SYSTEM SET shared_preload_libraries = 'pgv_no_such_library'")
    production.psql("ALTER SYSTEM SET logging_collector = on")
    production.psql(f"ALTER SYSTEM SET log_directory = '{logs}'")
    production.psql(f"ALTER SYSTEM SET external_pid_file = '{production.base}/production.pid'")
    production.pgbackrest("backup", "--type=incr")
    try:
        rc, out, drill_dir = production.drill()
    finally:
        production.psql("ALTER SYSTEM RESET ALL")
        production.pgbackrest("backup", "--type=incr")
    assert rc == 0, out + json.dumps(report(drill_dir))
    assert not logs.exists()


def test_a_tablespace_is_restored_into_the_copy_not_over_production(production):
    location = production.base / "tablespace"
    location.mkdir()
    shutil.chown(location, "postgres", "postgres")
    production.psql(f"CREATE TABLESPACE extra LOCATION '{location}'")  # not in a transaction block
    production.psql("GRANT CREATE ON TABLESPACE extra TO app")
    production.psql("CREATE TABLE spaced (i int) TABLESPACE extra; INSERT INTO spaced SELECT generate_series(1, 7)", database="app", user="app")
    production.pgbackrest("backup", "--type=incr")
    before = sorted((str(p), p.stat().st_mtime_ns) for p in location.rglob("*"))
    try:
        rc, out, drill_dir = production.drill()
        after = sorted((str(p), p.stat().st_mtime_ns) for p in location.rglob("*"))
    finally:
        production.psql("DROP TABLE spaced", database="app", user="app")
        production.psql("DROP TABLESPACE extra")
        production.pgbackrest("backup", "--type=incr")
    assert rc == 0, out + json.dumps(report(drill_dir))
    app = next(db for db in report(drill_dir)["databases"] if db["database"] == "app")
    assert {"table": "public.spaced", "rows": 7} in app["tables"]
    assert after == before  # production's tablespace untouched


# --- finding 11, last: a gap in the archive (this one breaks the archive: a new backup after) ------


def test_a_recovery_short_of_what_production_archived_fails_the_drill(production):
    production.psql("CREATE TABLE gap (i int)", database="app", user="app")
    production.archive_now()
    segments = sorted(p for p in (production.base / "repo" / "archive").rglob("*") if re.match(r"^[0-9A-F]{24}-", p.name))
    segments[-1].unlink()  # the newest segment never reached the repository
    try:
        rc, out, drill_dir = production.drill()
    finally:
        production.psql("DROP TABLE gap", database="app", user="app")
        production.pgbackrest("backup", "--type=full")
    assert rc == 1, out
    result = report(drill_dir)
    assert result["result"] == "fail" and "WAL is missing from the repository" in result["error"], result
