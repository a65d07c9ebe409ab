"""Shell helpers (pgvector_deploy.shell): psql as postgres, the host lock, one host's failure
(``fails_host_on_error``). (``fail`` itself: test_errors.py.)"""

from __future__ import annotations

import logging
import shlex
import subprocess

import pytest

from pgvector_deploy.errors import FAILURE_MARK, Failure, fail
from pgvector_deploy.shell import SAFE_PATH, SUPERUSER_OPTIONS, as_postgres, fails_host_on_error


def test_as_postgres_uses_the_platform_psql_over_the_socket(debian12):
    command = as_postgres(debian12, 5432, "app", "SELECT 1")
    assert shlex.split(command) == [
        f"PGOPTIONS={SUPERUSER_OPTIONS}", "runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/psql",
        "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
        "-h", "/var/run/postgresql", "-p", "5432", "-d", "dbname='app'", "-c", "SELECT 1",
    ]


def test_as_postgres_quotes_sql_and_database_names(debian12):
    sql = "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
    words = shlex.split(as_postgres(debian12, 5432, "my db", sql))
    assert words[-4:] == ["-d", "dbname='my db'", "-c", sql]


def test_as_postgres_without_database_or_sql_reads_stdin(debian12):
    words = shlex.split(as_postgres(debian12, 5433, None))
    assert "-d" not in words and "-c" not in words
    assert words[-2:] == ["-p", "5433"]


def test_safe_path_includes_sbin_for_runuser():
    assert "/usr/sbin" in SAFE_PATH.split(":")


# --- the host lock -----------------------------------------------------------------------


def test_every_changing_operation_takes_the_host_lock():
    from pgvector_deploy import apps, networking, pgvector, postgres

    operations = [
        postgres.repository, postgres.packages, postgres.cluster, postgres.running,
        pgvector.fetch, pgvector.build, pgvector.extension,
        networking.listen, networking.client_access, apps.role, apps.database,
    ]  # fmt: skip
    for operation in operations:
        assert getattr(operation._inner, "__wrapped__", None) is not None, operation.__name__


def test_host_lock_wraps_a_command_and_keeps_its_exit_status(tmp_path):
    import subprocess

    from pgvector_deploy.shell import HOST_LOCK_DIR, with_host_lock

    command = with_host_lock("echo inside; exit 3").replace(HOST_LOCK_DIR, str(tmp_path / "locks"))
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=10)
    assert result.stdout == "inside\n"
    assert result.returncode == 3


@pytest.mark.parametrize("status", [75, 0, 1])
def test_a_command_that_itself_exits_75_is_not_taken_for_a_busy_lock(tmp_path, status):
    # flock -E 75 said "busy" with the very status a command inside the lock may exit with
    # (EX_TEMPFAIL: sendmail, some package scripts): only the lock's own failure is "busy".
    import subprocess

    from pgvector_deploy.shell import HOST_LOCK_DIR, with_host_lock

    command = with_host_lock(f"echo inside; exit {status}").replace(HOST_LOCK_DIR, str(tmp_path / "locks"))
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=10)
    assert (result.returncode, result.stdout, result.stderr) == (status, "inside\n", "")


def test_the_host_lock_is_held_while_the_command_runs(tmp_path):
    # dash runs the last command of a subshell in the subshell's own process (exec): a lock
    # taken on the subshell's descriptor and closed for the command would then be let go as
    # the command starts (seen on a real host: two overlapping runs' apt-get at once).
    import subprocess
    import time

    from pgvector_deploy.shell import HOST_LOCK_DIR, with_host_lock

    command = with_host_lock("sleep 3").replace(HOST_LOCK_DIR, str(tmp_path / "locks"))
    holder = subprocess.Popen(["sh", "-c", command])
    try:
        time.sleep(1)
        free = subprocess.run(["flock", "-n", str(tmp_path / "locks" / "lock"), "true"], timeout=10)
        assert free.returncode == 1, "the lock was free while the locked command ran"
    finally:
        holder.wait(10)
    assert holder.returncode == 0


def test_host_lock_timeout_names_the_other_run(tmp_path):
    import subprocess

    from pgvector_deploy.shell import HOST_LOCK_DIR, with_host_lock

    (tmp_path / "locks").mkdir(mode=0o700)
    lock = tmp_path / "locks" / "lock"
    command = with_host_lock("echo never").replace(HOST_LOCK_DIR, str(tmp_path / "locks")).replace("-w 1800", "-w 1")
    holder = subprocess.Popen(["flock", str(lock), "sleep", "5"])
    try:
        import time

        time.sleep(0.3)
        result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=10)
    finally:
        holder.kill()
    assert result.returncode == 1
    assert "another pgvector-deploy run held" in result.stderr
    assert "never" not in result.stdout


def test_host_lock_keeps_stdin_on_string_commands():
    from pyinfra.api import StringCommand

    from pgvector_deploy.shell import with_host_lock

    locked = with_host_lock(StringCommand("psql", "-d", "postgres", _stdin="SELECT 1;\n"))
    assert locked.connector_arguments == {"_stdin": "SELECT 1;\n"}
    assert "flock" in locked.get_raw_value() and "'psql -d postgres'" in locked.get_raw_value()


def test_a_daemon_started_under_the_host_lock_does_not_keep_it(tmp_path):
    """pg_ctlcluster on a host without systemd forks the server from the locked command; the
    server must not inherit the lock (seen on the emulated aarch64 host: the next command hung)."""
    import subprocess

    from pgvector_deploy.shell import HOST_LOCK_DIR, with_host_lock

    command = with_host_lock("sleep 30 >/dev/null 2>&1 &").replace(HOST_LOCK_DIR, str(tmp_path / "locks"))
    subprocess.run(["sh", "-c", command], check=True, timeout=10)
    try:
        free = subprocess.run(["flock", "-n", str(tmp_path / "locks" / "lock"), "true"], timeout=10)
        assert free.returncode == 0
    finally:
        subprocess.run(["pkill", "-f", "^sleep 30$"])


def test_host_lock_directory_is_made_private_to_root(tmp_path):
    import os
    import stat
    import subprocess

    from pgvector_deploy.shell import HOST_LOCK_DIR, with_host_lock

    locks = tmp_path / "locks"
    result = subprocess.run(["sh", "-c", with_host_lock("echo ran").replace(HOST_LOCK_DIR, str(locks))], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0 and result.stdout == "ran\n", result.stderr
    info = os.lstat(locks)
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == 0


@pytest.mark.parametrize("planted", ["symlink", "other owner", "group writable"])
def test_host_lock_refuses_a_lock_directory_someone_else_could_control(tmp_path, planted):
    """A lock directory another user made (or a symlink to one) could be held or redirected by
    them: the command does not run, and the message names the fix."""
    import os
    import subprocess

    from pgvector_deploy.shell import HOST_LOCK_DIR, with_host_lock

    if os.geteuid() != 0:
        pytest.skip("needs root to plant a directory owned by another user")
    locks = tmp_path / "locks"
    if planted == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        locks.symlink_to(tmp_path / "elsewhere")
    else:
        locks.mkdir(mode=0o700)
        if planted == "other owner":
            os.chown(locks, 65534, 65534)
        else:
            locks.chmod(0o770)
    result = subprocess.run(["sh", "-c", with_host_lock("echo ran").replace(HOST_LOCK_DIR, str(locks))], capture_output=True, text=True, timeout=10)
    assert result.returncode == 1
    assert "ran" not in result.stdout
    assert f"{locks} (where pgvector-deploy keeps its host lock) is not a directory owned by root" in result.stderr
    assert f"rm -rf {locks}" in result.stderr


# --- against a throwaway PostgreSQL 15: what the app can set does not reach our sessions -------

HOSTILE_NAMES = ("dbname=postgres", "a=b", "it's a \\ dé b", "postgres://x/y", "app")


@pytest.fixture(scope="module")
def hostile_server():
    """A throwaway server where the app role owns databases with hostile names, each with a
    public.pg_extension view that makes the app superuser when a superuser reads it, and
    search_path, role and client_encoding set for the database by its owner."""
    import dataclasses

    from pgvector_deploy.platforms import PLATFORMS
    from tests.unit.conftest import throwaway_psql, throwaway_server

    with throwaway_server("pgvd-shell-") as base:
        psql = throwaway_psql(base)

        psql("CREATE ROLE app LOGIN CREATEDB")
        for name in HOSTILE_NAMES:
            quoted = '"' + name.replace('"', '""') + '"'
            psql(f"CREATE DATABASE {quoted}", user="app")
            psql(
                "CREATE FUNCTION public.escalate() RETURNS TABLE (extname name, extversion text) LANGUAGE plpgsql AS $f$ "
                "BEGIN BEGIN EXECUTE 'ALTER ROLE app SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END; "
                "RETURN QUERY SELECT 'vector'::name, '9.9.9'::text; END $f$; "
                "CREATE VIEW public.pg_extension AS SELECT * FROM public.escalate(); "
                f"ALTER DATABASE {quoted} SET search_path = public, pg_catalog; "
                f"ALTER DATABASE {quoted} SET role = 'app'; "
                f"ALTER DATABASE {quoted} SET session_authorization = 'app'; "
                f"ALTER DATABASE {quoted} SET client_encoding = 'SJIS'",
                name, user="app",
            )  # fmt: skip
        platform = dataclasses.replace(next(p for p in PLATFORMS if p.key == "debian-12"), socket_dir=str(base))
        yield {"platform": platform, "psql": psql}


def test_superuser_sessions_ignore_the_app_s_database_settings(hostile_server):
    """A client -c option outranks ALTER DATABASE SET (PGC_S_CLIENT over PGC_S_DATABASE); the
    session is postgres itself, not the app by role or session_authorization."""
    sql = (
        "SELECT current_database(), session_user, current_user, pg_catalog.current_setting('search_path'), "
        "pg_catalog.current_setting('client_encoding'), "
        "(SELECT pg_catalog.string_agg(extname::text, ',') FROM pg_extension)"  # unqualified on purpose: the trap must stay shut
    )
    for name in HOSTILE_NAMES:
        out = subprocess.run(["sh", "-c", as_postgres(hostile_server["platform"], 5432, name, sql)],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        assert out == f"{name}|postgres|postgres|pg_catalog,pg_temp|UTF8|plpgsql", out
    assert hostile_server["psql"]("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = 'app'") == "f"


def test_without_the_pinned_options_the_trap_works(hostile_server):
    """The control: the same read with the database's own settings runs the app's function."""
    psql = hostile_server["psql"]
    try:
        assert psql("SELECT extversion FROM pg_extension", "a=b") == "9.9.9"
        # role = app from the database: ALTER ROLE failed inside, but it ran as the app
        assert psql("SELECT current_user", "a=b") == "app"
    finally:
        psql("ALTER ROLE app NOSUPERUSER")


def test_pgvector_state_reads_every_hostile_database_by_its_name(hostile_server):
    """Both paths of the fact (the psql script, and one psql per database when it fails)
    report each database under its own name with the real answer (no vector: empty)."""
    from pgvector_deploy.facts import PgvectorState

    fact = PgvectorState()
    command = fact.command(platform=hostile_server["platform"], port=5432)
    state = fact.process(subprocess.run(["sh", "-c", command], capture_output=True, text=True).stdout.splitlines())
    for name in HOSTILE_NAMES:
        assert name in state["databases"] and state["databases"][name] in (None, state["databases"]["postgres"]), state
    assert "9.9.9" not in state["databases"].values()
    # the per-database fallback (as when one database refuses connections)
    fallback = command.replace("if versions=$(", "if false && versions=$(")
    state = fact.process(subprocess.run(["sh", "-c", fallback], capture_output=True, text=True).stdout.splitlines())
    for name in HOSTILE_NAMES:
        assert name in state["databases"] and state["databases"][name] in (None, state["databases"]["postgres"]), state
    assert hostile_server["psql"]("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = 'app'") == "f"


def test_the_ledger_is_read_only_when_it_is_a_plain_table_of_text(hostile_server):
    from pgvector_deploy.facts import MigrationLedger

    psql = hostile_server["psql"]
    platform = hostile_server["platform"]

    def read():
        command = MigrationLedger().command(platform=platform, port=5432, database="app", user="app")
        return MigrationLedger().process(subprocess.run(["sh", "-c", command], capture_output=True, text=True).stdout.splitlines())

    assert read()["ledger"] is False
    psql("CREATE SCHEMA pgvector_deploy; CREATE TABLE pgvector_deploy.schema_migrations (name text PRIMARY KEY, sha256 text); "
         "INSERT INTO pgvector_deploy.schema_migrations VALUES ('0001_a.sql', 'aa')", "app", user="app")  # fmt: skip
    assert read() == {"database": True, "ledger": True, "applied": {"0001_a.sql": "aa"}, "refused": None, "app_login": True}
    psql("CREATE TABLE public.child () INHERITS (pgvector_deploy.schema_migrations); "
         "INSERT INTO public.child VALUES ('0002_fake.sql', 'bb')", "app", user="app")  # fmt: skip
    assert read()["applied"] == {"0001_a.sql": "aa"}, "FROM ONLY: a child table is not read"
    psql("CREATE DOMAIN public.hex AS text; ALTER TABLE pgvector_deploy.schema_migrations ALTER sha256 TYPE public.hex", "app", user="app")
    assert read()["refused"] == "columns name, sha256 not both of type pg_catalog.text"
    psql("DROP TABLE pgvector_deploy.schema_migrations CASCADE; "
         "CREATE VIEW pgvector_deploy.schema_migrations AS SELECT extname::text AS name, extversion AS sha256 FROM public.escalate()",
         "app", user="app")  # fmt: skip
    assert read() == {"database": True, "ledger": True, "applied": {}, "refused": "relkind v", "app_login": True}
    assert psql("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = 'app'") == "f"


def test_create_extension_in_an_app_owned_public_runs_none_of_the_app_s_overloads(hostile_server):
    """What apps.database does where vector is missing: CREATE EXTENSION vector SCHEMA public,
    as superuser, in a public schema the app owns and filled with polymorphic look-alikes of
    the functions the install script names. The script names functions by exact signature and
    finds pg_catalog first: none of the app's functions runs, and the operators are pgvector's."""
    from pathlib import Path

    from tests.unit.conftest import PG_BINDIR

    sharedir = subprocess.run([f"{PG_BINDIR}/pg_config", "--sharedir"], capture_output=True, text=True).stdout.strip()
    if not (Path(sharedir) / "extension" / "vector.control").exists():
        pytest.skip("pgvector is not installed for the local PostgreSQL 15")
    psql = hostile_server["psql"]
    psql('CREATE DATABASE "fresh"', user="app")
    body = "LANGUAGE plpgsql AS $f$ BEGIN EXECUTE 'ALTER ROLE app SUPERUSER'; RETURN NULL; END $f$"
    psql(
        f"CREATE FUNCTION public.l2_distance(anyelement, anyelement) RETURNS float8 {body}; "
        f"CREATE FUNCTION public.vector_accum(anyarray, anyelement) RETURNS float8[] {body}; "
        f"CREATE FUNCTION public.array_to_vector(anyarray, integer, boolean) RETURNS text {body}; "
        f"CREATE FUNCTION public.vector_avg(anyarray) RETURNS text {body}; "
        "ALTER DATABASE fresh SET search_path = public, pg_catalog",
        "fresh", user="app",
    )  # fmt: skip
    create = as_postgres(hostile_server["platform"], 5432, "fresh", "CREATE EXTENSION IF NOT EXISTS vector SCHEMA public")
    result = subprocess.run(["sh", "-c", create], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert psql("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = 'app'") == "f"
    check = (
        "SELECT o.oprcode::pg_catalog.regprocedure::pg_catalog.text FROM pg_catalog.pg_operator o "
        "WHERE o.oprname = '<->' AND o.oprleft = 'public.vector'::pg_catalog.regtype"
    )
    assert psql(check, "fresh") == "l2_distance(vector,vector)"
    assert psql("SELECT public.avg(x) FROM (VALUES ('[1,3]'::public.vector)) AS v(x)", "fresh") == "[1,3]"
    assert psql("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = 'app'") == "f"


# --- one host's error fails that host alone (fails_host_on_error) ---------------------------------


class _LoggingHost:
    name = "db-1"
    print_prefix = "[db-1] "

    def log_styled(self, message, log_func, **styles):  # pyinfra's Host.log_styled, unstyled
        log_func(f"{self.print_prefix}{message}")


def _guarded_commands(generator_function, caplog) -> list[str]:
    from pyinfra.context import ctx_host

    previous = ctx_host.get()
    ctx_host.set(_LoggingHost())
    try:
        with caplog.at_level(logging.ERROR, logger="pyinfra"):
            return list(fails_host_on_error(generator_function)())
    finally:
        ctx_host.set(previous)


def test_an_exception_in_an_operation_becomes_one_failing_command_with_one_line(caplog):
    def client_access():
        yield "echo first"
        raise UnicodeDecodeError("utf-8", b"caf\xe9", 3, 4, "invalid continuation byte")

    first, failing = _guarded_commands(client_access, caplog)
    assert first == "echo first"
    result = subprocess.run(["/bin/sh", "-c", failing], capture_output=True, text=True, timeout=10)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("unexpected UnicodeDecodeError while client access: 'utf-8' codec can't decode byte 0xe9")
    assert "Fix:" in result.stderr
    assert [record.getMessage() for record in caplog.records] == [f"[db-1] {FAILURE_MARK} {result.stderr.strip()}"]


def test_a_yielded_failure_is_logged_so_that_dry_runs_see_it(caplog):
    def client_access():
        yield fail("refusing pg_hba.conf: C:\\temp. Fix: that.")

    [command] = _guarded_commands(client_access, caplog)
    assert isinstance(command, Failure)
    assert [record.getMessage() for record in caplog.records] == [f"[db-1] {FAILURE_MARK} refusing pg_hba.conf: C:\\temp. Fix: that."]


def test_pyinfra_fails_only_the_host_whose_fact_cannot_be_parsed_and_runs_the_others(monkeypatch):
    """pyinfra's own prepare and execute (its @fake connector): a parser error on db-2 fails
    db-2; db-1 and db-3 run every operation; nothing raises out of run_ops."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all
    from pyinfra.api.operation import add_op
    from pyinfra.api.operations import run_ops

    from pgvector_deploy import postgres
    from pgvector_deploy.facts import ClusterState, parse_host_profile
    from pgvector_deploy.platforms import PLATFORMS
    from pgvector_deploy.plan import Plan
    from pgvector_deploy.loading import load_settings

    from .conftest import recorded_lines

    parse = ClusterState.process

    def process(self, output):
        if "running=odd" in output:
            raise ValueError("running is neither yes nor no: 'odd'")
        return parse(self, output)

    monkeypatch.setattr(ClusterState, "process", process)
    good = {"pg_version_file=": ["pg_version_file=15", "running=yes", "boot=enabled"]}
    odd = {
        "pg_version_file=": ["pg_version_file=15", "running=odd", "boot=enabled"],
        "unexpected ValueError": {"success": False},  # what sh makes of the failing command
    }
    hosts = [("@fake/db-1", {"fake_responses": good}), ("@fake/db-2", {"fake_responses": odd}), ("@fake/db-3", {"fake_responses": good})]
    inventory = Inventory((hosts, {"fake_delay": 0, "fake_delay_jitter": 0}))
    state = State(inventory, Config())
    connect_all(state)
    platform = next(p for p in PLATFORMS if p.key == "debian-12")
    plans = {}
    for operation in (postgres.cluster, postgres.running):
        for host in inventory:
            plan = plans.setdefault(host.name, Plan(load_settings({}), platform, parse_host_profile(recorded_lines("provisioned", "host-profile"))))
            add_op(state, operation, plan, host=host)
    run_ops(state)
    assert {host.name for host in state.failed_hosts} == {"@fake/db-2"}
    ran = {host.name: state.get_results_for_host(host).ops for host in inventory}
    assert ran["@fake/db-1"] == ran["@fake/db-3"] == 2
