"""Ordered SQL migrations (pgvector_deploy.migrations): the ledger logic, the SQL and shell we
send, and the operation. (Reading and checking the files: test_migration_files.py; reading the
folder from host data: test_loading.py; the MigrationLedger fact: test_facts.py.)

The last section runs the generated commands for real (sh, psql, PostgreSQL 15) against a
throwaway server in a temporary directory (Unix socket only), and the Alembic example
project against it. It needs root and PostgreSQL 15's binaries (and pgvector for Alembic);
without them those tests skip.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pgvector_deploy import migrations, shell
from pgvector_deploy.facts import LEDGER, MigrationLedger, parse_ledger
from pgvector_deploy.loading import load_settings
from pgvector_deploy.migration_files import Migration, MigrationError, read_folder
from pgvector_deploy.migrations import DONE_MARKER, apply_command, ledger_command, migration_sql, pending
from pgvector_deploy.plan import Plan
from pgvector_deploy.settings import SettingsError
from pgvector_deploy.shell import SAFE_PATH, dbname_conninfo

from .conftest import AS_POSTGRES, FactHost, PG_BINDIR, migration, run_operation, sh_syntax_error, skip_or_fail, throwaway_server, write

REPO = Path(__file__).resolve().parents[2]
APP = {"pg_app_user": "app", "pg_app_password": "s3cret"}
PSQL = f"PGOPTIONS={shlex.quote(shell.APP_OPTIONS)} runuser -u postgres -- /usr/lib/postgresql/15/bin/psql -X -A -t -q -v ON_ERROR_STOP=1 -h /var/run/postgresql -p 5432 -U app"


# --- reading the folder ----------------------------------------------------------------------------


# --- what the deploy refuses inside a file -----------------------------------------------------------


# --- the ledger and the folder --------------------------------------------------------------------

A, B, C = migration("0001_a.sql", "SELECT 1;"), migration("0002_b.sql", "SELECT 2;"), migration("0003_c.sql", "SELECT 3;")


def test_everything_is_pending_on_an_empty_ledger_in_name_order():
    assert pending((C, A, B), {}) == [A, B, C]


def test_files_recorded_with_the_same_checksum_are_not_pending():
    assert pending((A, B, C), {A.name: A.sha256, B.name: B.sha256}) == [C]
    assert pending((A, B, C), {m.name: m.sha256 for m in (A, B, C)}) == []


def test_a_changed_file_stops_everything_naming_the_file_and_both_checksums():
    changed = migration("0002_b.sql", "SELECT 22;")
    with pytest.raises(MigrationError) as error:
        pending((A, changed, C), {A.name: A.sha256, B.name: B.sha256})
    message = str(error.value)
    assert f"0002_b.sql was applied with sha256 {B.sha256}, and the file now has sha256 {changed.sha256}" in message
    assert "nothing was applied" in message and "Fix:" in message
    assert "0001_a.sql" not in message and "0003_c.sql" not in message


def test_every_changed_file_is_named():
    changed_a, changed_b = migration("0001_a.sql", "SELECT 11;"), migration("0002_b.sql", "SELECT 22;")
    with pytest.raises(MigrationError) as error:
        pending((changed_a, changed_b), {A.name: A.sha256, B.name: B.sha256})
    assert "0001_a.sql was applied" in str(error.value) and "0002_b.sql was applied" in str(error.value)


def test_a_new_file_that_sorts_before_an_applied_one_is_refused():
    with pytest.raises(MigrationError) as error:
        pending((A, B, C), {A.name: A.sha256, C.name: C.sha256})
    assert str(error.value).startswith("0002_b.sql is new but sorts before 0003_c.sql, which is already applied")
    assert "Fix: rename it" in str(error.value)


def test_files_gone_from_the_folder_are_left_in_the_ledger():
    assert pending((B, C), {A.name: A.sha256, B.name: B.sha256}) == [C]


# --- the SQL and the commands ---------------------------------------------------------------------


def test_migration_sql_is_one_transaction_in_the_app_s_session_with_the_ledger_row_inside():
    sql = migration_sql(B, "app")
    assert sql.startswith("BEGIN;\nDO $pgvector_deploy$ BEGIN IF session_user OPERATOR(pg_catalog.<>) 'app' OR current_user")
    assert "SET LOCAL ROLE" not in sql  # the session is the app's own (as_app)
    # the file starts the text EXECUTE runs, so PostgreSQL's LINE n is the file's line n
    assert "EXECUTE $pgvector_deploy_file0$SELECT 2;" in sql
    assert "LANGUAGE plpgsql SECURITY DEFINER" in sql and "SELECT pg_temp.pgvector_deploy_migrate();" in sql
    insert = f"INSERT INTO {LEDGER} (name, sha256) VALUES ('0002_b.sql', '{B.sha256}');"
    assert sql.count("BEGIN;") == 1 and sql.count("COMMIT;") == 1
    assert sql.index("pg_catalog.pg_current_xact_id();\nBEGIN\n") < sql.index("SELECT 2;") < sql.index(insert)
    assert sql.index("SELECT 2;") < sql.index("pg_catalog.pg_current_xact_id() OPERATOR(pg_catalog.<>) xact") < sql.index(insert)
    assert sql.index(insert) < sql.index("COMMIT;") < sql.index(f"\\warn {DONE_MARKER} 0002_b.sql")
    # "already applied" (by name, or by content under another name) is asked before the file
    # runs, under a lock, and told by psql itself (\warn), never an error text
    assert sql.index(f"LOCK TABLE ONLY {LEDGER}") < sql.index("\\if :pgvector_deploy_applied") < sql.index("EXECUTE $pgvector_deploy_file0$")
    assert f"l.name <> '0002_b.sql' AND l.sha256 = '{B.sha256}') AS pgvector_deploy_renamed" in sql
    assert f"\\warn {migrations.ALREADY_APPLIED} 0002_b.sql\n\\quit" in sql
    assert f"\\warn {migrations.RENAMED_MARKER} 0002_b.sql\n\\quit" in sql


def test_notx_sql_runs_the_file_at_top_level_then_checks_autocommit_then_records():
    notx = migration("0003_i.notx.sql", "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (x)")
    sql = migration_sql(notx, "app")
    assert "BEGIN;" not in sql and "EXECUTE" not in sql
    assert sql.index("\\if :pgvector_deploy_applied") < sql.index("CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (x)\n;\n")
    assert sql.index("CREATE INDEX CONCURRENTLY") < sql.index("\\if :pgvector_deploy_autocommit") < sql.index("INSERT INTO")


def test_a_file_holding_our_dollar_quote_tag_gets_another():
    sql = migration_sql(migration("0001_x.sql", "SELECT $pgvector_deploy_file0$x$pgvector_deploy_file0$;"), "app")
    assert "EXECUTE $pgvector_deploy_file1$SELECT $pgvector_deploy_file0$x" in sql


def test_the_file_is_ended_even_without_a_final_semicolon():
    sql = migration_sql(migration("0001_x.sql", "SELECT 1 -- no semicolon"), "app")
    assert "SELECT 1 -- no semicolon\n$pgvector_deploy_file0$;\n" in sql


def test_ledger_sql_creates_the_table_in_the_app_s_session():
    sql = migrations.ledger_sql("app")
    assert sql.startswith("BEGIN;\nDO $pgvector_deploy$ BEGIN IF session_user OPERATOR(pg_catalog.<>) 'app'")
    assert "CREATE SCHEMA IF NOT EXISTS pgvector_deploy;\n" in sql
    assert f"CREATE TABLE IF NOT EXISTS {LEDGER} (\n    name text PRIMARY KEY," in sql
    assert "sha256 text NOT NULL" in sql and "applied_at timestamptz NOT NULL DEFAULT now()" in sql
    assert sql.endswith("COMMIT;\n")


def plan_with(debian12, profile, tmp_path, files: dict[str, str], **data) -> Plan:
    folder = write(tmp_path / "migrations", files)
    settings = load_settings({**APP, "pg_migrations_dir": str(folder), **data})
    return Plan(settings, debian12, profile)


def test_apply_command_sends_the_sql_on_stdin_to_psql_with_on_error_stop(debian12, provisioned_profile, tmp_path):
    plan = plan_with(debian12, provisioned_profile, tmp_path, {"0001_secret_table.sql": "CREATE TABLE very_visible (id int);"})
    command = apply_command(plan, plan.settings.migrations[0])
    text = str(command)
    assert set(command.connector_arguments) == {"_stdin"}
    assert command.connector_arguments["_stdin"] == migration_sql(plan.settings.migrations[0], "app")
    assert f"{PSQL} -d {shlex.quote(dbname_conninfo('app'))} -f -" in text and "ON_ERROR_STOP=1" in text
    assert "very_visible" not in text and "CREATE TABLE" not in text
    assert text.startswith(f"PATH={SAFE_PATH}; ")
    assert sh_syntax_error(text) == ""


def test_ledger_command_sends_the_table_sql_on_stdin(debian12, provisioned_profile, tmp_path):
    plan = plan_with(debian12, provisioned_profile, tmp_path, {"0001_a.sql": "SELECT 1;"})
    command = ledger_command(plan)
    assert str(command) == f"PATH={SAFE_PATH}; {PSQL} -d {shlex.quote(dbname_conninfo('app'))} -f - > /dev/null"
    assert command.connector_arguments == {"_stdin": migrations.ledger_sql("app")}


# --- the fact ---------------------------------------------------------------------------------------


def test_without_an_app_login_every_file_is_planned_and_each_asks_the_ledger_itself(debian12, provisioned_profile, tmp_path):
    plan = plan_with(debian12, provisioned_profile, tmp_path, FILES)
    commands, _ = run_apply(plan, ["database=yes", "ledger=yes", "app_login=no"])
    assert [c.connector_arguments["_stdin"] for c in commands] == [migration_sql(m, "app") for m in plan.settings.migrations]


def test_a_renamed_file_is_reported_and_the_run_changes_nothing(debian12, provisioned_profile, tmp_path):
    plan = plan_with(debian12, provisioned_profile, tmp_path, {"0032_seed.sql": "SELECT 1;"})
    commands, host = run_apply(plan, ["database=yes", "ledger=yes", f"applied=0031_seed.sql|{hashlib.sha256(b'SELECT 1;').hexdigest()}"])
    assert commands == []
    assert host.noops[0] == "0032_seed.sql is not run: its content was applied as 0031_seed.sql (renamed or copied)"


# --- the operation ----------------------------------------------------------------------------------


def ledger_lines(*recorded: Migration, table: bool = True) -> list[str]:
    lines = ["database=yes"] + (["ledger=yes"] if table else [])
    return lines + [f"applied={m.name}|{m.sha256}" for m in recorded]


def run_apply(plan, lines) -> tuple[list, FactHost]:
    host = FactHost({MigrationLedger: lines})
    return run_operation(migrations.apply, plan, host), host


FILES = {"0001_documents.sql": "CREATE TABLE documents (id int, embedding vector(3));", "0002_index.sql": "SELECT 2;"}


def test_fresh_database_gets_the_ledger_then_every_file_in_order(debian12, provisioned_profile, tmp_path):
    plan = plan_with(debian12, provisioned_profile, tmp_path, FILES)
    commands, host = run_apply(plan, ["database=yes"])
    assert [c.connector_arguments["_stdin"] for c in commands] == [
        migrations.ledger_sql("app"),
        migration_sql(plan.settings.migrations[0], "app"),
        migration_sql(plan.settings.migrations[1], "app"),
    ]
    [(fact, kwargs, _)] = host.asked
    assert fact is MigrationLedger and kwargs == {"platform": debian12, "port": 5432, "database": "app", "user": "app"}


def test_converged_database_yields_nothing(debian12, provisioned_profile, tmp_path):
    plan = plan_with(debian12, provisioned_profile, tmp_path, FILES)
    commands, host = run_apply(plan, ledger_lines(*plan.settings.migrations))
    assert commands == []
    assert host.noops == [f"all 2 migrations in {plan.settings.migrations_dir} are applied"]


def test_only_new_files_are_applied(debian12, provisioned_profile, tmp_path):
    plan = plan_with(debian12, provisioned_profile, tmp_path, FILES)
    [command] = run_apply(plan, ledger_lines(plan.settings.migrations[0]))[0]
    assert command.connector_arguments["_stdin"] == migration_sql(plan.settings.migrations[1], "app")


def test_a_changed_file_yields_one_failure_and_applies_nothing(debian12, provisioned_profile, tmp_path):
    plan = plan_with(debian12, provisioned_profile, tmp_path, {**FILES, "0003_new.sql": "SELECT 3;"})
    recorded = dataclasses.replace(plan.settings.migrations[0], sha256="0" * 64)
    [command] = run_apply(plan, ledger_lines(recorded, plan.settings.migrations[1]))[0]
    text = str(command)
    assert "_stdin" not in getattr(command, "connector_arguments", {})
    assert text.startswith("{ printf '%s\\n' ") and text.rstrip().endswith("exit 1; }")
    words = " ".join(shlex.split(text))
    assert f"0001_documents.sql was applied with sha256 {'0' * 64}, and the file now has sha256 {plan.settings.migrations[0].sha256}" in words
    assert str(plan.settings.migrations_dir) in words


def test_out_of_order_file_yields_one_failure(debian12, provisioned_profile, tmp_path):
    plan = plan_with(debian12, provisioned_profile, tmp_path, {**FILES, "0000_early.sql": "SELECT 0;"})
    [command] = run_apply(plan, ledger_lines(*plan.settings.migrations[1:]))[0]
    assert "0000_early.sql is new but sorts before 0002_index.sql" in " ".join(shlex.split(str(command)))


def test_no_migrations_asks_nothing_and_yields_nothing(debian12, provisioned_profile, tmp_path):
    plan = plan_with(debian12, provisioned_profile, tmp_path, {})
    commands, host = run_apply(plan, [])
    assert commands == [] and host.asked == []
    plan = Plan(load_settings({}), debian12, provisioned_profile)  # no app at all
    assert run_apply(plan, [])[0] == []


# --- host data ----------------------------------------------------------------------------------------


def test_the_repository_ships_no_migration_to_apply_by_default():
    """files/migrations/ holds a README and an example subfolder only: a deploy from this
    checkout applies nothing until you add files."""
    assert read_folder(REPO / "files" / "migrations") == ()
    examples = read_folder(REPO / "files" / "migrations" / "example")
    assert [m.name for m in examples] == ["0001_documents.sql", "0002_documents_hnsw.sql"]


# --- for real: sh, psql and PostgreSQL 15 on a throwaway server -------------------------------------

@pytest.fixture(scope="module")
def server(debian12_module):
    """A throwaway PostgreSQL 15 in a temporary directory, reachable only through its Unix
    socket there; the app role owns database app (made from template1, as the deploy does)."""
    with throwaway_server("pgvd-migrations-") as base:
        psql = lambda database, sql: subprocess.run(  # noqa: E731
            [*AS_POSTGRES, f"{PG_BINDIR}/psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-h", str(base), "-d", database, "-c", sql],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        sharedir = subprocess.run([f"{PG_BINDIR}/pg_config", "--sharedir"], check=False, capture_output=True, text=True).stdout.strip()
        vector = (Path(sharedir) / "extension" / "vector.control").exists()
        if vector:
            psql("template1", "CREATE EXTENSION vector")
        psql("postgres", "CREATE ROLE app LOGIN")
        psql("postgres", "CREATE DATABASE app OWNER app")
        yield {"base": base, "platform": dataclasses.replace(debian12_module, socket_dir=str(base)), "psql": psql, "vector": vector}


@pytest.fixture(scope="module")
def debian12_module():
    from pgvector_deploy.platforms import PLATFORMS

    return next(p for p in PLATFORMS if p.key == "debian-12")


def run_command(command) -> subprocess.CompletedProcess:
    """Run a yielded command as pyinfra would (sh -c, its _stdin on standard input)."""
    stdin = getattr(command, "connector_arguments", {}).get("_stdin")
    return subprocess.run(["sh", "-c", str(command)], input=stdin, check=False, capture_output=True, text=True, timeout=60)


def deploy_once(server, tmp_path, files: dict[str, str], folder: str = "migrations") -> tuple[list, list]:
    """One run of the operation against the server: the fact for real, then its commands."""
    plan = Plan(load_settings({**APP, "pg_migrations_dir": str(write(tmp_path / folder, files))}), server["platform"], {})
    fact = MigrationLedger().command(platform=server["platform"], port=5432, database="app", user="app")
    lines = subprocess.run(["sh", "-c", fact], check=False, capture_output=True, text=True).stdout.splitlines()
    commands = run_operation(migrations.apply, plan, FactHost({MigrationLedger: lines}))
    results = []
    for command in commands:
        results.append(run_command(command))
        if results[-1].returncode:
            break
    return commands, results


def ledger_rows(server) -> list[str]:
    if server["psql"]("app", f"SELECT to_regclass('{LEDGER}') IS NOT NULL") != "t":
        return []
    return server["psql"]("app", f"SELECT name || ' ' || sha256 FROM {LEDGER} ORDER BY name").splitlines()


def test_real_server_applies_in_order_records_and_converges(server, tmp_path):
    files = {
        "0001_items.sql": "CREATE TABLE items (id bigserial PRIMARY KEY, body text);\n",
        "0002_items_rows.sql": "INSERT INTO items (body) VALUES ('one'), ('two');\nSELECT count(*) FROM items;\n",
    }
    commands, results = deploy_once(server, tmp_path, files)
    assert len(commands) == 3 and all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert ledger_rows(server) == [f"{name} {hashlib.sha256(text.encode()).hexdigest()}" for name, text in files.items()]
    assert server["psql"]("app", "SELECT tableowner FROM pg_tables WHERE tablename = 'items'") == "app"
    assert server["psql"]("app", "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'pgvector_deploy'") == "app"
    assert server["psql"]("app", "SELECT count(*) FROM items") == "2"
    commands, _ = deploy_once(server, tmp_path, files)
    assert commands == [], "a second run must change nothing"
    assert server["psql"]("app", "SELECT count(*) FROM items") == "2"


def test_real_server_rolls_back_a_failing_file_and_names_it(server, tmp_path):
    before = ledger_rows(server)
    files = {"0101_half.sql": "CREATE TABLE half_done (id int);\nINSERT INTO half_done VALUES (1);\n\nSELECT\n  no_such_column\nFROM half_done;\n",
             "0102_after.sql": "CREATE TABLE after_the_failure (id int);"}  # fmt: skip
    _, results = deploy_once(server, tmp_path, files)
    failed = results[-1]
    assert failed.returncode != 0
    assert "migration 0101_half.sql failed and was rolled back" in failed.stderr
    assert '0101_half.sql line 5: ERROR: column "no_such_column" does not exist' in failed.stderr
    assert server["psql"]("app", "SELECT to_regclass('half_done') IS NULL AND to_regclass('after_the_failure') IS NULL") == "t"
    assert ledger_rows(server) == before


def test_real_server_applies_a_file_only_once_and_a_second_run_on_a_stale_ledger_succeeds(server, tmp_path):
    plan = Plan(load_settings({**APP, "pg_migrations_dir": str(write(tmp_path / "m", {"0201_once.sql": "CREATE TABLE once (id int);"}))}),
                server["platform"], {})  # fmt: skip
    command = apply_command(plan, plan.settings.migrations[0])
    assert run_command(command).returncode == 0
    rows = ledger_rows(server)
    again = run_command(command)  # as a second run would, had it read the ledger before the first ended
    assert again.returncode == 0, again.stderr  # a success that applies nothing: the other run did
    assert again.stdout == "0201_once.sql was applied by another run meanwhile; skipped\n"
    assert ledger_rows(server) == rows


def test_real_server_never_records_a_file_that_ends_the_transaction(server, tmp_path):
    """The folder check refuses COMMIT; this is the guard behind it, with the check bypassed."""
    plan = Plan(load_settings({**APP, "pg_migrations_dir": str(write(tmp_path / "m", {"0301_x.sql": "SELECT 1;"}))}), server["platform"], {})
    sneaky = Migration("0301_x.sql", "COMMIT; CREATE TABLE public.sneaky (id int);", hashlib.sha256(b"x").hexdigest())
    result = run_command(apply_command(plan, sneaky))
    assert result.returncode != 0
    assert "migration 0301_x.sql failed and was rolled back" in result.stderr
    assert "transaction commands is not implemented" in result.stderr  # no COMMIT inside the wrapper
    assert "0301_x.sql" not in " ".join(ledger_rows(server))
    assert server["psql"]("app", "SELECT to_regclass('public.sneaky') IS NULL") == "t"


ESCALATE_TRIGGER = (
    "CREATE FUNCTION public.escalate() RETURNS trigger LANGUAGE plpgsql AS $f$ "
    "BEGIN RESET ROLE; ALTER ROLE app SUPERUSER; RETURN NEW; END $f$"
)


def app_is_superuser(server) -> str:
    return server["psql"]("postgres", "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = 'app'")


def as_app(server, sql: str) -> None:
    server["psql"]("app", f"SET ROLE app; {sql}")


def test_real_server_a_trigger_the_app_planted_cannot_reset_role(server, tmp_path):
    """The app adds a trigger (RESET ROLE; ALTER ROLE app SUPERUSER) to a table the next
    migration writes to, and to the ledger: inside the security-definer wrapper PostgreSQL
    refuses the role change, the migration is rolled back, the app stays a plain role."""
    as_app(server, "CREATE TABLE public.planted (id int); " + ESCALATE_TRIGGER + "; "
           "CREATE TRIGGER planted BEFORE INSERT ON public.planted FOR EACH ROW EXECUTE FUNCTION public.escalate()")  # fmt: skip
    try:
        for files in ({"0601_writes.sql": "INSERT INTO planted VALUES (1);"}, {"0602_ledger.sql": "SELECT 1;"}):
            if "0602_ledger.sql" in files:
                as_app(server, "CREATE TRIGGER planted BEFORE INSERT ON pgvector_deploy.schema_migrations "
                       "FOR EACH ROW EXECUTE FUNCTION public.escalate()")  # fmt: skip
            _, results = deploy_once(server, tmp_path, files, next(iter(files)))
            assert results[-1].returncode != 0
            assert 'cannot set parameter "role" within security-definer function' in results[-1].stderr
            assert app_is_superuser(server) == "f"
            assert next(iter(files)) not in " ".join(ledger_rows(server))
    finally:
        as_app(server, "DROP TRIGGER IF EXISTS planted ON pgvector_deploy.schema_migrations; DROP TABLE public.planted; "
               "DROP FUNCTION public.escalate()")  # fmt: skip
        server["psql"]("postgres", "ALTER ROLE app NOSUPERUSER")


def test_real_server_a_deferred_trigger_runs_at_commit_with_the_app_s_rights_only(server, tmp_path):
    """A deferrable trigger fires at COMMIT, after the wrapper function returned; the session
    is the app's own, so its RESET ROLE changes nothing: the app stays a plain role. (With the
    session user postgres, such databases had to be refused.)"""
    as_app(server, "CREATE TABLE public.later (id int); "
           "CREATE FUNCTION public.escalate() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN RESET ROLE; "
           "IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = session_user) THEN EXECUTE 'ALTER ROLE app SUPERUSER'; "
           "END IF; RETURN NEW; END $f$; "
           "CREATE CONSTRAINT TRIGGER later AFTER INSERT ON public.later DEFERRABLE INITIALLY DEFERRED "
           "FOR EACH ROW EXECUTE FUNCTION public.escalate()")  # fmt: skip
    try:
        _, results = deploy_once(server, tmp_path, {"0701_later.sql": "INSERT INTO later VALUES (1);"}, "later")
        assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
        assert app_is_superuser(server) == "f"
        assert server["psql"]("app", "SELECT count(*) FROM public.later") == "1"
        assert "0701_later.sql" in " ".join(ledger_rows(server))
    finally:
        as_app(server, "DROP TABLE public.later; DROP FUNCTION public.escalate()")
        server["psql"]("postgres", "ALTER ROLE app NOSUPERUSER")


def test_real_server_does_not_record_a_file_that_swallows_the_end(server, tmp_path):
    """An unterminated comment would swallow the ledger row and the COMMIT (also refused by the
    folder check): psql fails at the end of its input, nothing is recorded."""
    plan = Plan(load_settings({**APP, "pg_migrations_dir": str(write(tmp_path / "m", {"0401_x.sql": "SELECT 1;"}))}), server["platform"], {})
    result = run_command(apply_command(plan, Migration("0401_x.sql", "CREATE TABLE swallowed (id int); /* open", "1" * 64)))
    assert result.returncode != 0 and "migration 0401_x.sql failed" in result.stderr
    assert server["psql"]("app", "SELECT to_regclass('swallowed') IS NULL") == "t"


def test_real_server_refuses_a_changed_file_before_any_change(server, tmp_path):
    files = {"0751_t.sql": "CREATE TABLE t501 (id int);"}
    _, results = deploy_once(server, tmp_path, files, "changed")
    assert all(r.returncode == 0 for r in results)
    changed = {"0751_t.sql": "CREATE TABLE t501 (id bigint);", "0752_more.sql": "CREATE TABLE t502 (id int);"}
    [_], [result] = deploy_once(server, tmp_path, changed, "changed")
    assert result.returncode != 0
    assert f"0751_t.sql was applied with sha256 {hashlib.sha256(files['0751_t.sql'].encode()).hexdigest()}" in result.stderr
    assert server["psql"]("app", "SELECT to_regclass('t502') IS NULL") == "t"


# --- the Alembic example project ---------------------------------------------------------------------

ALEMBIC_EXAMPLE = REPO / "files" / "examples" / "alembic"


def test_alembic_example_imports_and_its_revision_template_imports_pgvector():
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import models; "
        "print(type(models.Item.__table__.c.embedding.type).__module__, models.Item.__table__.c.embedding.type.dim)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(ALEMBIC_EXAMPLE)], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["pgvector.sqlalchemy.vector", "3"]
    template = (ALEMBIC_EXAMPLE / "migrations" / "script.py.mako").read_text()
    assert re.search(r"^import pgvector\.sqlalchemy\b", template, re.MULTILINE)
    shipped = (ALEMBIC_EXAMPLE / "migrations" / "versions" / "0001_items_with_embeddings.py").read_text()
    assert "import pgvector.sqlalchemy" in shipped and "pgvector.sqlalchemy.vector.VECTOR(dim=3)" in shipped


def alembic(project: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": url}
    return subprocess.run([sys.executable, "-m", "alembic", "-c", str(project / "alembic.ini"), *args],
                          check=False, capture_output=True, text=True, env=env, timeout=120)  # fmt: skip


@pytest.fixture
def alembic_database(server):
    if not server["vector"]:
        skip_or_fail("pgvector is not installed for PostgreSQL 15 here (tests/bootstrap.sh builds it)")
    name = f"alembic_{os.getpid()}_{len(os.listdir(server['base']))}"
    server["psql"]("postgres", f"CREATE DATABASE {name} OWNER app")
    # A table the models do not have (as pgvector-deploy's SQL migrations make): left alone.
    server["psql"](name, "SET ROLE app; CREATE TABLE documents (id int, embedding vector(3))")
    yield f"postgresql://app:p%40ss%3Aword@localhost/{name}?host={server['base']}&port=5432"
    server["psql"]("postgres", f"DROP DATABASE {name} WITH (FORCE)")


def test_alembic_autogenerates_a_vector_column_that_upgrades_and_queries(alembic_database, tmp_path):
    project = tmp_path / "alembic"
    shutil.copytree(ALEMBIC_EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    for revision in (project / "migrations" / "versions").glob("*.py"):
        revision.unlink()
    made = alembic(project, alembic_database, "revision", "--autogenerate", "-m", "init", "--rev-id", "aaaa")
    assert made.returncode == 0, made.stderr
    text = (project / "migrations" / "versions" / "aaaa_init.py").read_text()
    assert "import pgvector.sqlalchemy" in text
    assert "sa.Column('embedding', pgvector.sqlalchemy.vector.VECTOR(dim=3), nullable=True)" in text
    assert "'documents'" not in text, "a table that is not in models.py must not be dropped"
    upgraded = alembic(project, alembic_database, "upgrade", "head")
    assert upgraded.returncode == 0, upgraded.stderr
    assert alembic(project, alembic_database, "check").returncode == 0  # the models and the database agree
    env = {**os.environ, "DATABASE_URL": alembic_database}
    nearest = subprocess.run([sys.executable, str(project / "nearest.py")], check=False, capture_output=True, text=True, env=env, timeout=60)
    assert nearest.returncode == 0, nearest.stderr
    assert nearest.stdout.splitlines() == ["near 1", "middle 3.4641"]


def test_alembics_stock_template_fails_with_the_nameerror_this_example_avoids(alembic_database, tmp_path):
    """The control: with Alembic's own script.py.mako, the autogenerated revision cannot even load."""
    import alembic as alembic_package

    project = tmp_path / "alembic"
    shutil.copytree(ALEMBIC_EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    for revision in (project / "migrations" / "versions").glob("*.py"):
        revision.unlink()
    stock = Path(alembic_package.__file__).parent / "templates" / "generic" / "script.py.mako"
    shutil.copyfile(stock, project / "migrations" / "script.py.mako")
    assert alembic(project, alembic_database, "revision", "--autogenerate", "-m", "init").returncode == 0
    upgraded = alembic(project, alembic_database, "upgrade", "head")
    assert upgraded.returncode != 0
    assert "NameError: name 'pgvector' is not defined" in upgraded.stderr


# --- issue 13: "each file once, in its own transaction, as the app role", against an adversary ----
# Each test below failed on the code before the fix (the app connected as postgres with SET LOCAL
# ROLE, the splitter counted BEGIN everywhere, the ledger matched names only).


@pytest.mark.parametrize(
    "sql, what",
    [
        ("CREATE INDEX CONCURRENTLY items_body ON items (body);", "CREATE INDEX CONCURRENTLY"),
        ("create unique index concurrently if not exists i on t (x);", "CREATE INDEX CONCURRENTLY"),
        ("DROP INDEX CONCURRENTLY i;", "DROP INDEX CONCURRENTLY"),
        ("REINDEX INDEX CONCURRENTLY i;", "REINDEX ... CONCURRENTLY"),
        ("REINDEX DATABASE app;", "REINDEX DATABASE"),
        ("VACUUM ANALYZE items;", "VACUUM"),
        ("CREATE DATABASE other;", "CREATE DATABASE"),
        ("DROP DATABASE other;", "DROP DATABASE"),
        ("ALTER SYSTEM SET work_mem = '1GB';", "ALTER SYSTEM"),
        ("CREATE TABLESPACE t LOCATION '/x';", "CREATE TABLESPACE"),
        ("ALTER TABLE p DETACH PARTITION c CONCURRENTLY;", "DETACH PARTITION ... CONCURRENTLY"),
    ],
)
def test_statements_that_cannot_run_in_a_transaction_are_refused_with_the_fix(tmp_path, sql, what):
    folder = write(tmp_path / "m", {"0001_a.sql": "SELECT 1;", "0002_index.sql": f"SELECT 1;\n{sql}\n"})
    with pytest.raises(SettingsError) as error:
        load_settings({**APP, "pg_migrations_dir": str(folder)})
    message = str(error.value)
    assert f"0002_index.sql line 2: {what} cannot run inside a transaction" in message, message
    assert "0002_index.notx.sql" in message  # the fix, named


def test_a_renamed_file_is_reported_not_pending():
    seed = migration("0031_seed.sql", "INSERT INTO t VALUES (1);")
    renamed = migration("0032_seed.sql", "INSERT INTO t VALUES (1);")
    assert pending((renamed,), {seed.name: seed.sha256}) == []
    assert migrations.renamed((renamed,), {seed.name: seed.sha256}) == [(renamed, "0031_seed.sql")]


def test_real_server_a_renamed_file_is_not_applied_again(server, tmp_path):
    seed = "CREATE TABLE IF NOT EXISTS seeded (id int);\nINSERT INTO seeded VALUES (1);\n"
    _, results = deploy_once(server, tmp_path, {"0801_seed.sql": seed}, "rename")
    assert all(r.returncode == 0 for r in results)
    (tmp_path / "rename" / "0801_seed.sql").rename(tmp_path / "rename" / "0802_seed.sql")
    commands, results = deploy_once(server, tmp_path, {}, "rename")
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert server["psql"]("app", "SELECT count(*) FROM seeded") == "1", "the renamed file ran a second time"
    assert commands == []


def test_real_server_a_migration_runs_in_the_app_s_own_session(server, tmp_path):
    """session_user is the app: nothing in the file can become anyone else (with session_user
    postgres, SET LOCAL ROLE could be undone by code the app planted)."""
    files = {"0901_who.sql": "CREATE TABLE who AS SELECT session_user::text AS s, current_user::text AS c;"}
    _, results = deploy_once(server, tmp_path, files, "who")
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert server["psql"]("app", "SELECT s || ' ' || c FROM who") == "app app"


@pytest.mark.parametrize(
    "name, sql",
    [
        ("0911_set_config.sql", "SELECT set_config('role', 'postgres', true);\nCREATE TABLE by_set_config (id int);"),
        ("0912_quoted.sql", 'SET "role" TO postgres;\nCREATE TABLE by_quoted_role (id int);'),
        ("0913_do.sql", "DO $$ BEGIN EXECUTE 'SET ROLE postgres'; END $$;\nCREATE TABLE by_do_role (id int);"),
        ("0914_auth.sql", "SELECT set_config('session_authorization', 'postgres', false);\nCREATE TABLE by_auth (id int);"),
    ],
)
def test_real_server_a_role_switch_in_any_spelling_creates_nothing_as_postgres(server, tmp_path, name, sql):
    _, results = deploy_once(server, tmp_path, {name: sql}, name)
    assert results[-1].returncode != 0, "the role switch was accepted"
    assert f"migration {name} failed and was rolled back" in results[-1].stderr
    owned = server["psql"]("app", "SELECT count(*) FROM pg_class WHERE relname LIKE 'by\\_%' AND relowner <> 'app'::regrole")
    assert owned == "0"
    assert name not in " ".join(ledger_rows(server))


def test_real_server_a_file_ending_its_transaction_commits_nothing_and_says_so(server, tmp_path):
    """The issue's file, the folder check bypassed: the server refuses the END inside the
    wrapper, nothing of it exists, the ledger has nothing, the message names the file."""
    plan = Plan(load_settings({**APP, "pg_migrations_dir": str(write(tmp_path / "e", {"0951_x.sql": "SELECT 1;"}))}), server["platform"], {})
    text = "CREATE TABLE spans (id int, begin int); END; CREATE TABLE after_end (x int);"
    result = run_command(apply_command(plan, Migration("0951_x.sql", text, hashlib.sha256(text.encode()).hexdigest())))
    assert result.returncode != 0
    assert "migration 0951_x.sql failed and was rolled back" in result.stderr, result.stderr
    assert server["psql"]("app", "SELECT to_regclass('spans') IS NULL AND to_regclass('after_end') IS NULL") == "t"
    assert "0951_x.sql" not in " ".join(ledger_rows(server))


def test_real_server_a_notx_file_builds_its_index_concurrently_as_the_app(server, tmp_path):
    files = {
        "1001_docs.sql": "CREATE TABLE docs (id int, body text);\n",
        "1002_docs_body.notx.sql": "CREATE INDEX CONCURRENTLY IF NOT EXISTS docs_body ON docs (body);\nVACUUM (ANALYZE) docs;\n",
    }
    _, results = deploy_once(server, tmp_path, files, "notx")
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert server["psql"]("app", "SELECT indisvalid FROM pg_index WHERE indexrelid = 'docs_body'::regclass") == "t"
    assert server["psql"]("app", "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'docs_body'") == "app"
    assert "1002_docs_body.notx.sql" in " ".join(ledger_rows(server))
    commands, _ = deploy_once(server, tmp_path, files, "notx")
    assert commands == []


def test_real_server_the_app_s_peer_map_lets_only_the_deploy_in_as_the_app(debian12_module, tmp_path):
    """The pg_hba.conf and pg_ident.conf the deploy writes (networking.render_hba/render_ident,
    through managed_files.replace_file_script with PostgreSQL's own checks), on a server of
    their own: the deploy's sessions (OS user postgres) log in as the app with no password;
    another OS user cannot, and the OS user postgres gets no other role that way."""
    from pgvector_deploy import networking
    from pgvector_deploy.managed_files import replace_file_script

    with throwaway_server("pgvd-peer-") as base:
        platform = dataclasses.replace(debian12_module, socket_dir=str(base))
        psql = lambda sql, *who: subprocess.run(  # noqa: E731
            ["runuser", "-u", who[0] if who else "postgres", "--", f"{PG_BINDIR}/psql", "-XAtq", "-h", str(base),
             "-U", who[1] if len(who) > 1 else "postgres", "-d", "app", "-c", sql],
            check=False, capture_output=True, text=True,
        )  # fmt: skip
        subprocess.run([*AS_POSTGRES, f"{PG_BINDIR}/psql", "-XAtq", "-h", str(base), "-d", "postgres", "-c",
                        "CREATE ROLE app LOGIN; CREATE ROLE other LOGIN"], check=True, capture_output=True)  # fmt: skip
        subprocess.run([*AS_POSTGRES, f"{PG_BINDIR}/psql", "-XAtq", "-h", str(base), "-d", "postgres", "-c",
                        "CREATE DATABASE app OWNER app"], check=True, capture_output=True)  # fmt: skip
        settings = load_settings(APP)
        data = base / "data"
        ident = networking.render_ident((data / "pg_ident.conf").read_text(), settings)
        for name, text in (("pg_ident.conf", ident), ("pg_hba.conf", networking.render_hba([], settings, ""))):
            check = networking.IDENT_CHECK_SQL if name == "pg_ident.conf" else (
                "SELECT 'line ' || line_number || ': ' || error FROM pg_catalog.pg_hba_file_rules WHERE error IS NOT NULL")
            script = replace_file_script(str(data / name), text, "0640", check, platform, 5432, name, backups=str(tmp_path / "copies"))
            result = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
            assert result.returncode == 0, result.stderr
        subprocess.run([*AS_POSTGRES, f"{PG_BINDIR}/pg_ctl", "-D", str(data), "reload"], check=True, capture_output=True)
        for _ in range(50):
            if psql("SELECT 1", "postgres", "app").returncode == 0:
                break
            time.sleep(0.1)
        who = subprocess.run(["sh", "-c", shell.as_app(platform, 5432, "app", "app", "SELECT session_user")],
                             capture_output=True, text=True)  # fmt: skip
        assert (who.returncode, who.stdout.strip()) == (0, "app"), who.stderr
        assert "Peer authentication failed" in psql("SELECT 1", "nobody", "app").stderr
        assert "Peer authentication failed" in psql("SELECT 1", "postgres", "other").stderr
        # the whole migration path, through the map: the ledger, a file, the fact
        plan = Plan(load_settings({**APP, "pg_migrations_dir": str(write(tmp_path / "m", {"0001_t.sql": "CREATE TABLE t (id int);"}))}), platform, {})
        for command in (ledger_command(plan), apply_command(plan, plan.settings.migrations[0])):
            result = run_command(command)
            assert result.returncode == 0, result.stderr
        fact = MigrationLedger().command(platform=platform, port=5432, database="app", user="app")
        state = parse_ledger(subprocess.run(["sh", "-c", fact], capture_output=True, text=True).stdout.splitlines())
        assert state["applied"] == {"0001_t.sql": plan.settings.migrations[0].sha256} and state["app_login"]


def test_real_server_a_failure_after_the_commit_is_never_called_a_roll_back(server, tmp_path):
    """psql fails after the file committed (here: a statement after our COMMIT): the ledger
    has the row, so the run says it was committed and recorded, and goes on (the code
    before said 'rolled back: nothing of it was applied')."""
    plan = Plan(load_settings({**APP, "pg_migrations_dir": str(write(tmp_path / "c", {"1101_c.sql": "CREATE TABLE committed_1101 (id int);"}))}),
                server["platform"], {})  # fmt: skip
    migration = plan.settings.migrations[0]
    assert run_command(ledger_command(plan)).returncode == 0  # (made already when other tests ran first)
    command = apply_command(plan, migration)
    result = subprocess.run(["sh", "-c", str(command)], input=command.connector_arguments["_stdin"] + "SELECT 1/0;\n",
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "rolled back" not in result.stderr + result.stdout
    assert result.returncode == 0 and result.stdout.startswith("1101_c.sql was committed and recorded, though psql then failed:")
    assert "division by zero" in result.stdout
    assert server["psql"]("app", "SELECT to_regclass('committed_1101') IS NOT NULL") == "t"


# --- adversary review (branch adv) --------------------------------------------------------------


def test_real_server_a_forged_done_line_does_not_hide_a_notx_file_left_open(server, tmp_path):
    """A server message may hold line breaks (an app function a .notx.sql statement calls can
    RAISE one): a line equal to our done marker must not turn "left a transaction open, rolled
    back, not recorded" into a success."""
    forged = "'x' || chr(10) || 'pgvector-deploy applied 9911_open.notx.sql'"
    files = {"9911_open.notx.sql": f"DO $$ BEGIN RAISE NOTICE '%', {forged}; END $$;\nBEGIN;\nSELECT 1;\n"}
    _, results = deploy_once(server, tmp_path, files, "forged")
    assert "9911_open.notx.sql" not in " ".join(ledger_rows(server))
    assert results[-1].returncode != 0, "reported success for a file that was rolled back and not recorded"
    assert "left a transaction open" in results[-1].stderr


def test_reindex_schema_is_refused_before_anything_runs(tmp_path):
    folder = write(tmp_path / "m", {"0001_a.sql": "SELECT 1;", "0002_r.sql": "REINDEX SCHEMA public;\n"})
    with pytest.raises(SettingsError, match=r"0002_r.sql line 1: REINDEX SCHEMA cannot run inside a transaction"):
        load_settings({**APP, "pg_migrations_dir": str(folder)})


def test_real_server_a_savepoint_is_refused_at_validation_not_after_earlier_files_ran(server, tmp_path):
    files = {"9960_first.sql": "CREATE TABLE before_savepoint (id int);\n", "9961_sp.sql": "SAVEPOINT a;\nSELECT 1;\nRELEASE SAVEPOINT a;\n"}
    try:
        _, results = deploy_once(server, tmp_path, files, "savepoint")
    except SettingsError:
        results = []
    assert server["psql"]("app", "SELECT to_regclass('before_savepoint') IS NULL") == "t", "an earlier file ran"
    assert not any(r.returncode for r in results), [r.stderr for r in results]


def test_real_server_a_forged_failure_line_does_not_turn_a_committed_file_into_a_roll_back(server, tmp_path):
    """The other way round: a line forged as "in the ledger with another sha256, not run" (or
    "left a transaction open, rolled back") in a file that committed must not be reported as
    not run: the run never claims a roll-back that did not happen."""
    forged = "'x' || chr(10) || 'pgvector-deploy in the ledger with another sha256, not run: 9971_ok.sql'"
    files = {"9971_ok.sql": f"CREATE TABLE forged_ok (id int);\nDO $$ BEGIN RAISE NOTICE '%', {forged}; END $$;\n"}
    _, results = deploy_once(server, tmp_path, files, "forged_fail")
    assert "9971_ok.sql" in " ".join(ledger_rows(server))
    assert results[-1].returncode == 0, results[-1].stderr
