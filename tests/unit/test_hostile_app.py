"""A hostile app role against the toolkit's SQL (issue 12, second adversarial read): each test
failed on the code the reviewer attacked (before ledger reads and migrations ran the app's code only
with its rights, and before every superuser session pinned the settings an owner could break).

Against a throwaway PostgreSQL 15 (tests/unit/conftest.py), the app role owning its database.
"""

from __future__ import annotations

import dataclasses
import subprocess

import pytest

from pgvector_deploy.shell import as_postgres

ESCALATE = (
    "CREATE FUNCTION public.escalate() RETURNS integer LANGUAGE plpgsql VOLATILE AS $f$ "
    "BEGIN IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN "
    "EXECUTE 'ALTER ROLE app SUPERUSER'; END IF; RETURN 1; END $f$; "
    # IMMUTABLE on the outside (so PostgreSQL accepts it in an index and folds it at plan time),
    # volatile inside: volatility is not checked transitively.
    "CREATE FUNCTION public.looks_pure(integer) RETURNS integer LANGUAGE sql IMMUTABLE "
    "AS $f$ SELECT public.escalate() + $1 $f$"
)


@pytest.fixture
def server():
    from pgvector_deploy.platforms import PLATFORMS
    from tests.unit.conftest import throwaway_psql, throwaway_server

    with throwaway_server("pgvd-adv-") as base:
        psql = throwaway_psql(base)

        psql("CREATE ROLE app LOGIN")
        psql("CREATE DATABASE app OWNER app")
        platform = dataclasses.replace(next(p for p in PLATFORMS if p.key == "debian-12"), socket_dir=str(base))
        yield {"platform": platform, "psql": psql, "base": base}


def _superuser(server) -> str:
    return server["psql"]("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = 'app'")


def test_reading_the_ledger_never_plans_the_app_s_index_predicate_as_superuser(server):
    """MigrationLedger's shape check accepts a plain heap table of text, but the superuser
    SELECT plans it: the planner runs eval_const_expressions over the table's index
    expressions and predicates, so an IMMUTABLE app function with constant arguments in a
    partial index runs with superuser rights."""
    from pgvector_deploy.facts import MigrationLedger

    psql = server["psql"]
    psql(
        ESCALATE + "; CREATE SCHEMA pgvector_deploy; "
        "CREATE TABLE pgvector_deploy.schema_migrations (name text PRIMARY KEY, sha256 text NOT NULL); "
        "CREATE INDEX ON pgvector_deploy.schema_migrations (name) WHERE public.looks_pure(0) > 0",
        "app", user="app",
    )
    assert _superuser(server) == "f"
    command = MigrationLedger().command(platform=server["platform"], port=5432, database="app", user="app")
    state = MigrationLedger().process(subprocess.run(["sh", "-c", command], capture_output=True, text=True).stdout.splitlines())
    assert state["refused"] is None and state["ledger"] is True  # the shape check passed it
    assert _superuser(server) == "f", "the app became superuser while the toolkit read its ledger"


def test_a_hold_cursor_in_a_migration_never_runs_outside_the_app_s_function(server):
    """A cursor WITH HOLD declared inside the migration (here by an app trigger that an ordinary
    INSERT fires) is run to its end at
    COMMIT, outside the security-definer function, with current_user the app through
    SET LOCAL ROLE and session_user postgres: the app's code there can RESET ROLE."""
    from pgvector_deploy import migration_files, migrations, shell

    psql = server["psql"]
    psql(
        "CREATE FUNCTION public.at_commit() RETURNS integer LANGUAGE plpgsql AS $f$ "
        "BEGIN RESET ROLE; IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN "
        "EXECUTE 'ALTER ROLE app SUPERUSER'; END IF; RETURN 1; "
        "EXCEPTION WHEN OTHERS THEN RAISE WARNING 'at_commit: %', SQLERRM; RETURN 0; END $f$; "
        # planted by the compromised app: a trigger on a table an ordinary migration writes to
        "CREATE TABLE public.docs (id integer); "
        "CREATE FUNCTION public.plant() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN "
        "EXECUTE 'DECLARE c CURSOR WITH HOLD FOR SELECT public.at_commit()'; RETURN NEW; END $f$; "
        "CREATE TRIGGER plant BEFORE INSERT ON public.docs FOR EACH ROW EXECUTE FUNCTION public.plant()",
        "app", user="app",
    )
    subprocess.run(["sh", "-c", shell.as_app(server["platform"], 5432, "app", "app")], input=migrations.ledger_sql("app"),
                   text=True, check=True, capture_output=True)  # fmt: skip
    sql = "INSERT INTO public.docs VALUES (1);\n"  # an ordinary migration; the app's trigger does the rest
    migration = migration_files.parse_migration("0001_hold.sql", sql.encode())
    script = migrations.migration_sql(migration, "app")
    result = subprocess.run(["sh", "-c", shell.as_app(server["platform"], 5432, "app", "app") + " -f -"], input=script,
                            text=True, capture_output=True)  # fmt: skip
    print(result.stdout, result.stderr)
    assert _superuser(server) == "f", f"a migration's hold cursor made the app superuser: {result.stderr}"


def test_an_app_error_text_never_passes_for_already_applied(server, tmp_path):
    """apply_script takes any psql output containing the ALREADY_APPLIED text as 'applied by
    another run': an app function the migration calls can raise that text, and the failed,
    unrecorded migration is reported as a success (the run goes on to the next file)."""
    from pgvector_deploy import migration_files, migrations, shell

    psql = server["psql"]
    psql(
        "CREATE FUNCTION public.helper() RETURNS void LANGUAGE plpgsql AS $f$ BEGIN "
        f"RAISE EXCEPTION '{migrations.ALREADY_APPLIED} 0002_b.sql'; END $f$",
        "app", user="app",
    )
    subprocess.run(["sh", "-c", shell.as_app(server["platform"], 5432, "app", "app")], input=migrations.ledger_sql("app"),
                   text=True, check=True, capture_output=True)  # fmt: skip
    migration = migration_files.parse_migration("0002_b.sql", b"SELECT public.helper();\n")

    class Plan:  # what apply_script reads
        platform = server["platform"]
        port = 5432
        settings = type("S", (), {"app": type("A", (), {"database": "app", "user": "app"})()})()

    script = migrations.apply_script(Plan, migration.name)
    result = subprocess.run(["sh", "-c", script], input=migrations.migration_sql(migration, "app"),
                            text=True, capture_output=True)  # fmt: skip
    recorded = psql("SELECT count(*) FROM pgvector_deploy.schema_migrations", "app")
    assert recorded == "0"
    assert result.returncode != 0, f"an unrecorded, failed migration was reported as a success: {result.stdout!r}"


def test_the_smoke_suite_keeps_its_statement_and_lock_timeouts(debian12):
    """The smoke script exports PGOPTIONS with statement_timeout/lock_timeout, but every psql
    it runs is as_postgres(...), which assigns PGOPTIONS again for that command: the
    timeouts never reach the server. A lock wait (DROP/CREATE DATABASE, a held lock on
    template1) can then hang the suite, which holds the host lock (other runs wait 1800 s)."""
    from pgvector_deploy.smoke import smoke_script

    script = smoke_script(debian12, 5432, "0.8.0", "app")
    psql_lines = [line for line in script.splitlines() if "runuser -u postgres" in line]
    assert psql_lines
    for line in psql_lines:
        assert "statement_timeout" in line and "lock_timeout" in line, line


@pytest.mark.parametrize("setting", ["default_transaction_read_only = on", "statement_timeout = '1ms'"])
def test_the_app_s_database_settings_do_not_break_superuser_commands(server, setting):
    """PGOPTIONS pins search_path, role and client_encoding only: the app's ALTER DATABASE SET
    of other user-settable parameters reaches every superuser command in its database
    (CREATE/ALTER EXTENSION vector, the ledger, migrations). read-only makes them fail, so
    the app can stop pgvector upgrades (ALTER EXTENSION ... UPDATE stops the host at its
    database, before template1 and postgres) and every later step on that host."""
    psql = server["psql"]
    psql(f"ALTER DATABASE app SET {setting}", "app", user="app")
    command = as_postgres(server["platform"], 5432, "app",
                          "CREATE TABLE pg_temp.t AS SELECT 1 AS x FROM pg_catalog.pg_sleep(0.05); SELECT 1")  # a write, ~50 ms
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True)
    assert result.returncode == 0, f"{setting}: {result.stderr.strip()}"
