"""SQL migrations, the app's env file, and the app's own migration tools, on a real host.

One host with a simulated docker0 (172.17.0.1/16) and an "app container" namespace at
172.17.0.2 (tests/hosts/lab.py). The deploy applies a folder of SQL migrations on the control
machine to the app's database and writes the app's env file. Then, from the container over
TCP as the app role, as an app's own tooling would:

- the SQL that ``prisma migrate dev`` sends for its shadow database is replayed (CREATE
  DATABASE "prisma_migrate_shadow_db_<uuid>", the migration with CREATE EXTENSION IF NOT
  EXISTS "vector" and a vector column, DROP DATABASE): it works because the app role may
  create databases and template1 has vector; from template0 it is refused, which is the
  failure teams hit with Docker images;
- the Alembic example project (files/examples/alembic) autogenerates a revision with a
  Vector(3) column (importing pgvector, so no NameError), upgrades, and runs a vector query
  through SQLAlchemy.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.hosts.tarballs import DEFAULT_VERSION

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "c0rrect-Horse:battery$staple"
ENV = {"PGV_TEST_APP_PASSWORD": PASSWORD}
ENV_FILE = "/etc/pgvector-deploy/app.env"
APP = {
    "pg_app_user": "app",
    "pg_app_password_env": "PGV_TEST_APP_PASSWORD",
    "pg_app_createdb": True,
    "pg_app_env_file": ENV_FILE,
}
FIRST = {
    "0001_documents.sql": (REPO / "files/migrations/example/0001_documents.sql").read_text(),
    "0002_documents_hnsw.sql": (REPO / "files/migrations/example/0002_documents_hnsw.sql").read_text(),
}
PRISMA_MIGRATION = REPO / "files/examples/prisma/migrations/20260101000000_init/migration.sql"
ALEMBIC_EXAMPLE = REPO / "files/examples/alembic"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def dsn(password: str = PASSWORD, database: str = "app", host: str = "172.17.0.1") -> str:
    return f"host={host} port=5432 user=app dbname={database} password='{password}'"


def url(password: str = PASSWORD, host: str = "172.17.0.1") -> str:
    return f"postgresql://app:{quote(password, safe='')}@{host}:5432/app"


def env_file_values(text: str) -> dict[str, str]:
    """KEY=value lines as Compose reads them: a single-quoted value is literal but for \\'."""
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            if value.startswith("'") and value.endswith("'"):
                value = value[1:-1].replace("\\'", "'")
            values[key] = value
    return values


@pytest.fixture(scope="module")
def migrated(hosts, tarball, tmp_path_factory):
    from tests.e2e.conftest import run_deploy

    folder = tmp_path_factory.mktemp("migrations")
    for name, text in FIRST.items():
        (folder / name).write_text(text)
    host = hosts.boot("migrate")
    host.add_bridge("docker0", "172.17.0.1/16")
    container = host.add_container("app", "docker0", "172.17.0.2/16")
    data = {**tarball, **APP, "pg_migrations_dir": str(folder)}
    run = run_deploy(tmp_path_factory.mktemp("deploy"), [host.inventory_entry(**data)], env=ENV)
    return host, run, container, folder, data


def ledger(host) -> list[str]:
    return host.psql("SELECT name || ' ' || sha256 FROM pgvector_deploy.schema_migrations ORDER BY name", "app").splitlines()


# --- SQL migrations --------------------------------------------------------------------------------


def test_deploy_applies_the_migrations_as_the_app_role(migrated):
    host, run, _, _, _ = migrated
    assert run.returncode == 0, run.output
    assert "App SQL migrations are applied" in run.changed(host.name)
    assert f"Vector smoke suite, pgvector {DEFAULT_VERSION}: 10 passed, 0 failed, 0 skipped" in run.output
    assert ledger(host) == [f"{name} {sha256(text)}" for name, text in FIRST.items()]
    assert host.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'documents'", "app") == "app"
    assert host.psql("SELECT indexdef FROM pg_indexes WHERE indexname = 'documents_embedding_hnsw'", "app").endswith(
        "USING hnsw (embedding vector_l2_ops)"
    )


def test_the_app_uses_the_migrated_table_from_its_container(migrated):
    _, _, container, _, _ = migrated
    sql = (
        "WITH added AS (INSERT INTO documents (content, embedding) VALUES ('a', '[1,2,3]') RETURNING embedding) "
        "SELECT embedding <-> '[1,2,4]' FROM added"
    )
    result = container.query(dsn(), sql)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1.0"


def test_rerun_changes_nothing(migrated, provision):
    host, _, _, _, data = migrated
    run = provision(host, env=ENV, **data)
    assert run.returncode == 0, run.output
    assert run.changed(host.name) == []


def test_a_failing_migration_is_rolled_back_named_and_applied_once_fixed(migrated, provision):
    host, _, _, folder, data = migrated
    broken = folder / "0003_broken.sql"
    broken.write_text("CREATE TABLE broken_half (id int);\nINSERT INTO broken_half VALUES (1);\nSELECT no_such_function();\n")
    run = provision(host, env=ENV, **data)
    assert run.returncode != 0
    assert "migration 0003_broken.sql failed and was rolled back" in run.output, run.output
    assert "0003_broken.sql line 3: ERROR: function no_such_function() does not exist" in run.output
    assert host.psql("SELECT to_regclass('broken_half') IS NULL", "app") == "t"
    assert len(ledger(host)) == 2

    broken.write_text("CREATE TABLE broken_half (id int);\nINSERT INTO broken_half VALUES (1);\n")  # not applied yet: editable
    run = provision(host, env=ENV, **data)
    assert run.returncode == 0, run.output
    assert run.changed(host.name) == ["App SQL migrations are applied"]
    assert ledger(host)[-1] == f"0003_broken.sql {sha256(broken.read_text())}"
    assert host.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'broken_half'", "app") == "app"


def test_a_changed_migration_stops_the_run_before_any_change(migrated, provision):
    host, _, _, folder, data = migrated
    first = folder / "0001_documents.sql"
    original = first.read_text()
    first.write_text(original + "-- edited after it was applied\n")
    (folder / "0004_more.sql").write_text("CREATE TABLE more_things (id int);\n")
    try:
        run = provision(host, env=ENV, **data)
        assert run.returncode != 0
        assert (
            f"0001_documents.sql was applied with sha256 {sha256(original)}, "
            f"and the file now has sha256 {sha256(first.read_text())}"
        ) in run.output, run.output
        assert host.psql("SELECT to_regclass('more_things') IS NULL", "app") == "t"
    finally:
        first.write_text(original)
    run = provision(host, env=ENV, **data)
    assert run.returncode == 0, run.output
    assert ledger(host)[-1] == f"0004_more.sql {sha256((folder / '0004_more.sql').read_text())}"
    assert provision(host, env=ENV, **data).changed(host.name) == []


def test_migrations_log_in_as_the_app_role_itself_and_no_role_switch_gets_past(migrated, provision):
    """The deploy's migrations connect as the app (pg_ident.conf's pgvector_deploy map, the
    app's peer line in pg_hba.conf): set_config('role', 'postgres', true) creates nothing owned
    by postgres; a file sees session_user app; a renamed applied file is not run again; the
    next run changes nothing (issue 13)."""
    host, _, _, folder, data = migrated
    assert 'pgvector_deploy  postgres  "app"' in host.sudo("cat /etc/postgresql/15/main/pg_ident.conf")
    assert 'peer map=pgvector_deploy' in host.sudo("cat /etc/postgresql/15/main/pg_hba.conf")
    switch = folder / "0005_switch.sql"
    switch.write_text("SELECT set_config('role', 'postgres', true);\nCREATE TABLE by_postgres (id int);\n")
    try:
        run = provision(host, env=ENV, **data)
        assert run.returncode != 0
        assert "migration 0005_switch.sql failed and was rolled back" in run.output, run.output
        assert host.psql("SELECT to_regclass('by_postgres') IS NULL", "app") == "t"
    finally:
        switch.unlink()
    (folder / "0005_who.sql").write_text("CREATE TABLE migration_session AS SELECT session_user::text AS s, current_user::text AS c;\n")
    (folder / "0002_documents_hnsw.sql").rename(folder / "0006_hnsw_renamed.sql")
    run = provision(host, env=ENV, **data)
    assert run.returncode == 0, run.output
    assert host.psql("SELECT s || ' ' || c FROM migration_session", "app") == "app app"
    assert host.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'migration_session'", "app") == "app"
    assert "0006_hnsw_renamed.sql is not run: its content was applied as 0002_documents_hnsw.sql" in run.output, run.output
    assert "0006_hnsw_renamed.sql" not in " ".join(ledger(host))
    assert provision(host, env=ENV, **data).changed(host.name) == []


# --- the env file ----------------------------------------------------------------------------------


def test_env_file_is_root_only_and_its_details_connect_from_the_container(migrated):
    host, run, container, _, _ = migrated
    assert host.sudo(f"stat -c '%a %U:%G' {ENV_FILE}").strip() == "600 root:root"
    values = env_file_values(host.sudo(f"cat {ENV_FILE}"))
    assert values["DATABASE_URL"] == url()
    assert (values["PGHOST"], values["PGPORT"], values["PGUSER"], values["PGDATABASE"]) == ("172.17.0.1", "5432", "app", "app")
    assert values["PGPASSWORD"] == PASSWORD
    assert "App containers connect with postgresql://app:<password>@172.17.0.1:5432/app" in run.output
    assert PASSWORD not in run.output and quote(PASSWORD, safe="") not in run.output
    result = container.query(values["DATABASE_URL"], "SELECT current_user || ' ' || current_database()")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "app app"
    libpq = {key: values[key] for key in ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE")}
    result = container.run(
        "env", *(f"{key}={value}" for key, value in libpq.items()), sys.executable, "-c",
        "import psycopg; print(psycopg.connect('').execute('SELECT current_user').fetchone()[0])", check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "app"


def test_password_rotation_rewrites_the_env_file_and_the_password_shows_nowhere_else(migrated, provision):
    host, _, container, _, data = migrated
    new_password = "Rotated-7b1e$pw"
    rotated = {**ENV, "PGV_TEST_APP_PASSWORD": new_password}
    host.sudo("nohup sh -c 'while :; do ps -eo args; done' > /run/ps-sampler-migrate.log 2>&1 & echo $! > /run/ps-sampler-migrate.pid")
    try:
        run = provision(host, "-vvv", env=rotated, **data)
    finally:
        host.sudo("kill $(cat /run/ps-sampler-migrate.pid)")
    try:
        assert run.returncode == 0, run.output
        # The env file changed in the role's own command (apps.role), so its operation finds it current.
        assert run.changed(host.name) == ["App role exists with its password"]
        assert new_password not in run.output and quote(new_password, safe="") not in run.output
        sampled = host.sudo(
            "wc -l < /run/ps-sampler-migrate.log; grep -c -F -f - /run/ps-sampler-migrate.log || true", input=new_password
        )
        assert int(sampled.split()[0]) > 1000, "the ps sampler did not run"
        assert sampled.split()[1] == "0"
        found = host.sudo("grep -rlsF -f - /etc /var /home /root /tmp /opt /usr/local || true", input=new_password)
        assert found.split() == [ENV_FILE], "the password may be on the host only in the env file"
        assert host.sudo("ls -A /etc/pgvector-deploy").split() == ["app.env"], "a temporary file was left behind"
        assert host.sudo(f"stat -c '%a %U:%G' {ENV_FILE}").strip() == "600 root:root"
        assert env_file_values(host.sudo(f"cat {ENV_FILE}"))["DATABASE_URL"] == url(new_password)
        assert container.query(url(new_password), "SELECT 1").stdout.strip() == "1"
        assert provision(host, env=rotated, **data).changed(host.name) == []
    finally:
        assert provision(host, env=ENV, **data).returncode == 0


def test_a_rotation_run_whose_migration_fails_leaves_the_env_file_and_the_role_agreeing(migrated, provision):
    """The new password and a bad migration in one run: the migration stops the host, and
    the env file must still hold the password the role has (containers recreated from it log in)."""
    host, _, container, folder, data = migrated
    new_password = "Rotated-Mig-41c9$pw"
    rotated = {**ENV, "PGV_TEST_APP_PASSWORD": new_password}
    broken = folder / "0009_fails_after_a_rotation.sql"
    broken.write_text("SELECT no_such_function();\n")
    try:
        run = provision(host, env=rotated, **data)
        assert run.returncode != 0
        assert "migration 0009_fails_after_a_rotation.sql failed and was rolled back" in run.output, run.output
        values = env_file_values(host.sudo(f"cat {ENV_FILE}"))
        # What a container recreated from the env file does: it logs in with the file's details.
        result = container.query(values["DATABASE_URL"], "SELECT current_user")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "app"
        assert container.query(dsn(values["PGPASSWORD"]), "SELECT 1").stdout.strip() == "1"
        # The rotation took: the role and the file both have the new password, the old one is refused.
        assert values["PGPASSWORD"] == new_password and values["DATABASE_URL"] == url(new_password)
        assert container.query(dsn(PASSWORD), "SELECT 1").returncode != 0
        assert new_password not in run.output and quote(new_password, safe="") not in run.output
        assert host.sudo("ls -A /etc/pgvector-deploy").split() == ["app.env"], "a temporary file was left behind"
    finally:
        broken.unlink()
    run = provision(host, env=ENV, **data)  # back to the module's password, for the tests below
    assert run.returncode == 0, run.output
    assert container.query(env_file_values(host.sudo(f"cat {ENV_FILE}"))["DATABASE_URL"], "SELECT 1").stdout.strip() == "1"


def test_host_docker_internal_form(migrated, provision):
    """pg_app_host: host.docker.internal, which a container started with --add-host
    host.docker.internal:host-gateway resolves to the docker0 gateway. The lab gives the
    container namespace that /etc/hosts line the way ip netns exec provides one
    (/etc/netns/<name>/hosts), as Docker does for --add-host."""
    host, _, container, _, data = migrated
    run = provision(host, env=ENV, **data, pg_app_host="host.docker.internal")
    assert run.returncode == 0, run.output
    assert run.changed(host.name) == ["App connection details for containers are current"]
    text = host.sudo(f"cat {ENV_FILE}")
    values = env_file_values(text)
    assert values["DATABASE_URL"] == url(host="host.docker.internal") and values["PGHOST"] == "host.docker.internal"
    assert "--add-host host.docker.internal:host-gateway" in text
    hosts_dir = Path("/etc/netns") / container.netns
    hosts_dir.mkdir(parents=True, exist_ok=True)
    (hosts_dir / "hosts").write_text("127.0.0.1 localhost\n172.17.0.1 host.docker.internal\n")
    try:
        result = container.query(values["DATABASE_URL"], "SELECT inet_server_addr()::text")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "172.17.0.1/32"
    finally:
        shutil.rmtree(hosts_dir, ignore_errors=True)
    assert provision(host, env=ENV, **data).changed(host.name) == ["App connection details for containers are current"]


# --- Prisma: the shadow database of `prisma migrate dev` ----------------------------------------------

SHADOW_REPLAY = """
import sys, uuid, psycopg
from psycopg.conninfo import make_conninfo

dsn, migration, template = sys.argv[1], open(sys.argv[2]).read(), sys.argv[3]
shadow = f"prisma_migrate_shadow_db_{uuid.uuid4()}"
create = f'CREATE DATABASE "{shadow}"' + (f" TEMPLATE {template}" if template != "-" else "")
with psycopg.connect(dsn, autocommit=True) as conn:
    conn.execute(create)
try:
    with psycopg.connect(make_conninfo(dsn, dbname=shadow)) as conn:
        conn.execute(migration)  # one multi-statement script, as Prisma sends it
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
        conn.execute('INSERT INTO "Document" (content, embedding) VALUES (%s, %s::vector)', ("a", "[1,2,3]"))
        distance = conn.execute('SELECT embedding <-> %s::vector FROM "Document"', ("[1,2,4]",)).fetchone()[0]
        print(version, distance)
finally:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{shadow}"')
"""


def test_prisma_shadow_database_as_the_app_role(migrated):
    host, _, container, _, _ = migrated
    assert 'CREATE EXTENSION IF NOT EXISTS "vector";' in PRISMA_MIGRATION.read_text()
    result = container.run(sys.executable, "-c", SHADOW_REPLAY, dsn(), str(PRISMA_MIGRATION), "-", check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [DEFAULT_VERSION, "1.0"]
    assert host.psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'prisma_migrate_shadow_db_%'") == "0"


def test_a_shadow_database_without_vector_is_what_failed(migrated):
    """The control: from template0 (no vector), the app role may not create the extension.
    That is the error Prisma's shadow database hit with images that added vector only to the
    app's own database."""
    host, _, container, _, _ = migrated
    result = container.run(sys.executable, "-c", SHADOW_REPLAY, dsn(), str(PRISMA_MIGRATION), "template0", check=False)
    assert result.returncode != 0
    assert 'permission denied to create extension "vector"' in result.stderr
    assert host.psql("SELECT count(*) FROM pg_database WHERE datname LIKE 'prisma_migrate_shadow_db_%'") == "0"


# --- Alembic + SQLAlchemy ---------------------------------------------------------------------------


def test_alembic_autogenerate_upgrade_and_a_vector_query_from_the_container(migrated, tmp_path):
    host, _, container, _, _ = migrated
    project = tmp_path / "alembic"
    shutil.copytree(ALEMBIC_EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    for revision in (project / "migrations" / "versions").glob("*.py"):
        revision.unlink()

    def alembic(*args: str):
        return container.run("env", f"DATABASE_URL={url()}", sys.executable, "-m", "alembic", "-c",
                             str(project / "alembic.ini"), *args, check=False)  # fmt: skip

    made = alembic("revision", "--autogenerate", "-m", "init", "--rev-id", "e2e1")
    assert made.returncode == 0, made.stderr
    revision = (project / "migrations" / "versions" / "e2e1_init.py").read_text()
    assert "import pgvector.sqlalchemy" in revision
    assert "pgvector.sqlalchemy.vector.VECTOR(dim=3)" in revision
    assert "'documents'" not in revision, "tables from the SQL migrations must be left alone"
    upgraded = alembic("upgrade", "head")
    assert upgraded.returncode == 0, upgraded.stderr
    assert alembic("check").returncode == 0
    assert host.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'items'", "app") == "app"
    assert host.psql("SELECT version_num FROM alembic_version", "app") == "e2e1"
    nearest = container.run("env", f"DATABASE_URL={url()}", sys.executable, str(project / "nearest.py"), check=False)
    assert nearest.returncode == 0, nearest.stderr
    assert nearest.stdout.splitlines() == ["near 1", "middle 3.4641"]
