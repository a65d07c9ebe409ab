"""A fresh Debian 12 host, with systemd as PID 1 (an EC2 instance) and without an init system
(a container or minimal image): one deploy leaves PostgreSQL 15 running with a pgvector that
was compiled on the host and works; a second deploy changes nothing."""

from __future__ import annotations

import json

import pytest

from pgvector_deploy.paths import BUILD_STAMP
from tests.hosts.tarballs import DEFAULT_VERSION

BUILD_OP = "pgvector is compiled on this host and installed"


@pytest.fixture(scope="module", params=["systemd", "no-init"])
def provisioned(request, hosts, tarball, tmp_path_factory):
    """A fresh host of each kind, after one deploy: (host, the deploy's run)."""
    from tests.e2e.conftest import run_deploy

    host = hosts.boot(f"fresh-{request.param}", systemd=request.param == "systemd")
    run = run_deploy(tmp_path_factory.mktemp("deploy"), [host.inventory_entry(**tarball)])
    return host, run


def test_first_deploy_succeeds_and_builds_pgvector(provisioned):
    host, run = provisioned
    assert run.returncode == 0, run.output
    assert BUILD_OP in run.changed(host.name)


def test_postgresql_15_runs(provisioned):
    host, _ = provisioned
    assert host.psql("SHOW server_version_num")[:2] == "15"


def test_vector_is_enabled_in_template1_and_postgres_at_the_requested_version(provisioned):
    host, _ = provisioned
    for database in ("template1", "postgres"):
        version = host.psql("SELECT extversion FROM pg_extension WHERE extname = 'vector'", database)
        assert version == DEFAULT_VERSION, database


def test_vector_queries_give_the_right_numbers(provisioned):
    host, _ = provisioned
    assert host.psql("SELECT '[1,2,3]'::vector <-> '[4,6,3]'::vector") == "5"
    rows = host.psql(
        "CREATE TEMP TABLE items (id int, embedding vector(3));"
        "INSERT INTO items VALUES (1, '[1,1,1]'), (2, '[5,5,5]'), (3, '[2,2,2]');"
        "SELECT id FROM items ORDER BY embedding <-> '[2,2,3]' LIMIT 2;"
    )
    assert rows.split() == ["3", "1"]


def test_new_databases_are_born_with_vector(provisioned):
    """What an ORM shadow database (Prisma migrate dev) relies on."""
    host, _ = provisioned
    host.psql("CREATE DATABASE shadow_check")
    assert host.psql("SELECT extversion FROM pg_extension WHERE extname = 'vector'", "shadow_check") == DEFAULT_VERSION


def test_build_stamp_records_what_was_built_on_this_host(provisioned):
    host, _ = provisioned
    stamp = json.loads(host.sudo(f"cat {BUILD_STAMP}"))
    assert stamp["arch"] == host.ssh("uname -m").stdout.strip()
    assert stamp["pg_version"] == host.sudo("/usr/lib/postgresql/15/bin/pg_config --version").strip()
    assert stamp["version"] == DEFAULT_VERSION
    assert stamp["optflags"] == "" and stamp["with_llvm"] == "no"
    assert host.sudo("test -f /usr/lib/postgresql/15/lib/vector.so && echo yes").strip() == "yes"


def test_running_server_uses_the_tuning_sized_from_this_host(provisioned):
    """The include file's values are the server's own (shared_buffers needed the restart), and
    they are what plan_tuning makes of the host's memory and CPUs as the host reports them."""
    from pgvector_deploy.facts import HostProfile, parse_host_profile
    from pgvector_deploy.settings import TuningSettings
    from pgvector_deploy.tuning import plan_tuning

    host, _ = provisioned
    text = host.sudo("cat /etc/postgresql/15/main/conf.d/80-pgvector-tuning.conf")
    written = dict(line.replace("'", "").split(" = ") for line in text.splitlines() if line and not line.startswith("#"))
    profile = parse_host_profile(host.ssh(HostProfile().command(port=5432, cached_tarball="/nonexistent")).stdout.splitlines())
    assert written == {tuned.name: tuned.value for tuned in plan_tuning(TuningSettings(), profile)}
    for name, value in written.items():
        unit_bytes = "pg_size_bytes(CASE WHEN unit ~ '^[0-9]' THEN unit ELSE '1' || unit END)"  # '8kB', 'kB'
        running = host.psql(f"SELECT setting::bigint * coalesce({unit_bytes}, 1) FROM pg_settings WHERE name = '{name}'")
        expected = value if value.isdigit() else str(int(value.removesuffix("MB")) << 20)
        assert running == expected, name
    assert host.psql("SELECT count(*) FROM pg_file_settings WHERE error IS NOT NULL") == "0"


def test_cluster_starts_at_boot_where_systemd_is_init(provisioned):
    host, _ = provisioned
    if not host.systemd:
        assert host.sudo("pg_lsclusters --no-header").split()[3] == "online"
        return
    assert host.ssh("systemctl is-enabled postgresql").stdout.strip() == "enabled"
    assert host.ssh("systemctl is-active postgresql@15-main").stdout.strip() == "active"


def test_second_deploy_changes_nothing_downloads_nothing_restarts_nothing(provisioned, lab, tarball, provision):
    host, _ = provisioned
    started = host.psql("SELECT pg_postmaster_start_time()")
    stamp = host.sudo(f"stat -c %Y {BUILD_STAMP}")
    downloads = len(lab.requests)

    run = provision(host, **tarball)

    assert run.returncode == 0, run.output
    assert run.changed(host.name) == []
    assert len(lab.requests) == downloads
    assert host.sudo(f"stat -c %Y {BUILD_STAMP}") == stamp
    assert host.psql("SELECT pg_postmaster_start_time()") == started


# --- two deploys at the same moment on one fresh host ---------------------------------------

OVERLAP_ENV = {"PGV_TEST_OVERLAP_PASSWORD": "overlap-Pässword-1"}


@pytest.fixture(scope="module")
def overlapping(hosts, lab, tarball, tmp_path_factory):
    """A fresh host, two deploys of it started at the same moment (two pyinfra processes, the
    same inventory entry, with an app, a migration and an env file): (host, data, runs, downloads)."""
    from tests.hosts.runner import deploy_together, write_inventory

    host = hosts.boot("overlap")
    workdir = tmp_path_factory.mktemp("overlap")
    (workdir / "migrations").mkdir()
    (workdir / "migrations" / "0001_documents.sql").write_text("CREATE TABLE documents (id int PRIMARY KEY, embedding vector(3));\n")
    data = {
        **tarball,
        "pg_app_user": "app",
        "pg_app_password_env": "PGV_TEST_OVERLAP_PASSWORD",
        "pg_migrations_dir": str(workdir / "migrations"),
        "pg_app_env_file": "/etc/pgvector-deploy/app.env",
    }
    inventory = write_inventory(workdir / "inventory.py", [host.inventory_entry(**data)])
    downloads = len(lab.requests)
    runs = deploy_together(inventory, 2, env=OVERLAP_ENV)
    return host, inventory, runs, len(lab.requests) - downloads


def test_two_deploys_started_together_on_a_fresh_host_both_succeed_and_build_once(overlapping):
    host, _, runs, downloads = overlapping
    for run in runs:
        assert run.returncode == 0, run.output
        assert "already exists" not in run.output, run.output
    # The host's own record of builds (one line per build that ran), and the one download.
    assert host.sudo("cat /var/lib/pgvector-deploy/build.log").count(f"pgvector {DEFAULT_VERSION} built and installed for") == 1
    assert downloads == 1
    assert host.psql("SELECT rolname FROM pg_roles WHERE rolname = 'app'") == "app"
    assert host.psql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'") == "app"
    assert host.psql("SELECT name FROM pgvector_deploy.schema_migrations", "app") == "0001_documents.sql"
    assert host.psql("SELECT count(*) FROM pg_extension WHERE extname = 'vector'", "app") == "1"


def test_a_third_deploy_after_the_overlap_changes_nothing(overlapping):
    from tests.hosts.runner import deploy

    host, inventory, _, _ = overlapping
    run = deploy(inventory, env=OVERLAP_ENV)
    assert run.returncode == 0, run.output
    assert run.changed(host.name) == []


def test_a_lock_file_an_unprivileged_user_holds_cannot_stall_a_run(overlapping):
    """/run/lock is world-writable: a local user creates and holds the lock file the toolkit
    used to use there (and plants a symlink beside it). A run still goes straight through: the
    lock lives in /run/pgvector-deploy, 0700 root, where that user cannot create anything."""
    from tests.hosts.runner import deploy

    host, inventory, _, _ = overlapping
    holder = host.sudo("install -d -m 1777 /run/lock && "
                       "runuser -u nobody -- flock /run/lock/pgvector-deploy.lock sleep 900 >/dev/null 2>&1 < /dev/null & "
                       "echo $!; runuser -u nobody -- ln -sf /etc/shadow /run/lock/pgvector-deploy.lock.new; sleep 1").split()[0]  # fmt: skip
    try:
        assert host.sudo("runuser -u nobody -- flock -n /run/lock/pgvector-deploy.lock true; echo $?").strip() == "1"  # held
        assert host.sudo("runuser -u nobody -- mkdir /run/pgvector-deploy/planted 2>/dev/null; echo $?").strip() != "0"
        assert host.sudo("stat -c %U:%a /run/pgvector-deploy").strip() == "root:700"
        run = deploy(inventory, env=OVERLAP_ENV, timeout=600)
        assert run.returncode == 0, run.output
        assert run.changed(host.name) == []
        # well under the 30-minute wait a held lock would cost
        assert run.seconds < 300, run.seconds
    finally:
        host.sudo(f"kill {int(holder)} || true")
