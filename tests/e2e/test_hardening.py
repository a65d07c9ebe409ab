"""Hardening on a real host: faults survived, nothing lost, and a security scan of the live host.

One host with a Docker bridge, an app role and an app that has written rows. Each test is
named after what it proves.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from pgvector_deploy.paths import BUILD_STAMP
from pgvector_deploy.releases import RELEASES
from tests.hosts.runner import DEPLOY, REPO, write_inventory
from tests.hosts.tarballs import DEFAULT_VERSION

PASSWORD = "hardening-Pass-4417"
APP = {"pg_app_user": "app", "pg_app_password_env": "PGV_TEST_APP_PASSWORD"}
ENV = {"PGV_TEST_APP_PASSWORD": PASSWORD}
LIB = "/usr/lib/postgresql/15/lib/vector.so"
CONTROL = "/usr/share/postgresql/15/extension/vector.control"
ROWS_SQL = "SELECT count(*) || ':' || md5(string_agg(id || '=' || embedding::text, ',' ORDER BY id)) FROM items"


def dsn(password: str = PASSWORD) -> str:
    return f"host=172.17.0.1 port=5432 user=app dbname=app password='{password}'"


@pytest.fixture(scope="module")
def hardened(hosts, tarball, tmp_path_factory):
    from tests.e2e.conftest import run_deploy

    host = hosts.boot("hardened")
    host.add_bridge("docker0", "172.17.0.1/16")
    app = host.add_container("app", "docker0", "172.17.0.2/16")
    run = run_deploy(tmp_path_factory.mktemp("deploy"), [host.inventory_entry(**tarball, **APP)], env=ENV)
    assert run.returncode == 0, run.output
    code = (
        "import sys, psycopg\n"
        "with psycopg.connect(sys.argv[1]) as c:\n"
        "    c.execute('CREATE TABLE items (id int PRIMARY KEY, embedding vector(3))')\n"
        "    c.execute(\"INSERT INTO items SELECT g, ('[' || g || ',' || g % 7 || ',' || g % 13 || ']')::vector "
        "FROM generate_series(1, 1000) g\")\n"
    )
    app.run(sys.executable, "-c", code, dsn())
    rows = app.query(dsn(), ROWS_SQL).stdout.strip()
    system_id = _system_identifier(host)
    return host, app, rows, system_id


def _system_identifier(host) -> str:
    output = host.sudo("/usr/lib/postgresql/15/bin/pg_controldata /var/lib/postgresql/15/main")
    return next(line.split(":")[1].strip() for line in output.splitlines() if "system identifier" in line)


BACKUPS = "/var/lib/pgvector-deploy/backups"  # managed_files.BACKUP_DIR


def _deploy(provision, host, tarball, **extra):
    return provision(host, env=ENV, **tarball, **APP, **extra)


def test_postgres_stopped_by_hand_is_started_again(hardened, tarball, provision):
    host, app, _, _ = hardened
    host.sudo("systemctl stop postgresql@15-main")
    run = _deploy(provision, host, tarball)
    assert run.returncode == 0, run.output
    assert run.changed(host.name) == ["PostgreSQL 15 is running and starts at boot"]
    assert app.query(dsn(), "SELECT 1").stdout.strip() == "1"


def test_managed_files_edited_by_hand_are_restored_and_the_edit_is_kept(hardened, tarball, provision):
    host, app, _, _ = hardened
    settings = "/etc/postgresql/15/main/conf.d/90-pgvector-deploy.conf"
    hba = "/etc/postgresql/15/main/pg_hba.conf"
    host.sudo(f"echo \"listen_addresses = '*'\" >> {settings}; echo 'host all all 0.0.0.0/0 trust' >> {hba}")
    run = _deploy(provision, host, tarball)
    assert run.returncode == 0, run.output
    assert sorted(run.changed(host.name)) == [
        "PostgreSQL listens on localhost and the Docker bridge gateways",
        "pg_hba.conf admits the Docker bridges with scram-sha-256",
    ]
    assert "'*'" not in host.sudo(f"cat {settings}") and "trust" not in host.sudo(f"grep -v '^#' {hba}")
    # the copies are kept out of the configuration directory, in the toolkit's state directory
    assert host.sudo(f"grep -l \"listen_addresses = '\\*'\" {BACKUPS}{settings}.bak-*").strip()
    assert host.sudo(f"grep -l '0.0.0.0/0 trust' {BACKUPS}{hba}.bak-*").strip()
    assert ".bak-" not in host.sudo("ls -a /etc/postgresql/15/main /etc/postgresql/15/main/conf.d")
    assert host.psql("SHOW listen_addresses") == "localhost,172.17.0.1"
    assert app.query(dsn(), "SELECT 1").stdout.strip() == "1"


def test_a_run_killed_during_the_build_leaves_nothing_half_installed_and_the_rerun_finishes(hardened, tarball, tmp_path):
    host, app, _, _ = hardened
    library = host.sudo(f"sha256sum {LIB}").split()[0]
    inventory = write_inventory(tmp_path / "inventory.py", [host.inventory_entry(**tarball, **APP, pgvector_portable=False)])
    run = subprocess.Popen(
        [sys.executable, "-m", "pyinfra", str(inventory), DEPLOY, "-y"], cwd=REPO,
        env={**__import__("os").environ, **ENV}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while host.sudo("pgrep -f 'make -C /var/tmp/pgvector-[b]uild' || true").strip() == "":
            assert run.poll() is None and time.monotonic() < deadline, "the build never started"
            time.sleep(0.2)
    finally:
        run.send_signal(signal.SIGKILL)  # the run dies...
        run.wait()
    host.sudo("pkill -9 -f 'pgvector-[b]uild' || true")  # ...and so does its build on the host

    assert host.sudo(f"sha256sum {LIB}").split()[0] == library
    assert f"default_version = '{DEFAULT_VERSION}'" in host.sudo(f"cat {CONTROL}")
    assert host.sudo("find /usr/lib/postgresql /usr/share/postgresql -name '*.pgvector-new'").strip() == ""
    assert json.loads(host.sudo(f"cat {BUILD_STAMP}"))["optflags"] == ""
    assert app.query(dsn(), "SELECT '[1,2,3]'::vector <-> '[4,6,3]'::vector").stdout.strip() == "5.0"

    rerun = write_and_run(tmp_path, host, tarball, pgvector_portable=False)
    assert rerun.returncode == 0, rerun.output
    assert "pgvector is compiled on this host and installed" in rerun.changed(host.name)
    assert json.loads(host.sudo(f"cat {BUILD_STAMP}"))["optflags"] == "-march=native"
    assert host.sudo("ls -d /var/tmp/pgvector-build.* 2>/dev/null || true").strip() == ""


def write_and_run(tmp_path, host, tarball, **extra):
    from tests.e2e.conftest import run_deploy

    return run_deploy(tmp_path, [host.inventory_entry(**tarball, **APP, **extra)], env=ENV)


def test_app_rows_survive_reruns_and_a_rebuild(hardened, tarball, provision):
    """(A version upgrade with app rows and an HNSW index: test_rebuild.py, from real 0.8.0.)"""
    host, app, rows, system_id = hardened
    databases = set(host.psql("SELECT datname FROM pg_database").split())
    assert _deploy(provision, host, tarball, pgvector_portable=False).changed(host.name) == []
    rebuild = _deploy(provision, host, tarball)  # portable again: a rebuild
    assert "pgvector is compiled on this host and installed" in rebuild.changed(host.name), rebuild.output
    assert host.psql("SELECT extversion FROM pg_extension WHERE extname = 'vector'", "app") == DEFAULT_VERSION
    assert app.query(dsn(), ROWS_SQL).stdout.strip() == rows
    assert rows.startswith("1000:")
    assert _system_identifier(host) == system_id  # never re-initialised
    assert databases <= set(host.psql("SELECT datname FROM pg_database").split())  # none dropped


def test_security_scan_of_the_live_host(hardened):
    host, _, _, _ = hardened
    rules = host.psql("SELECT type || ' ' || auth_method FROM pg_hba_file_rules").splitlines()
    assert all(rule.endswith("scram-sha-256") for rule in rules if rule.startswith("host")), rules
    assert not any(rule.endswith("trust") for rule in rules)
    assert host.psql("SHOW password_encryption") == "scram-sha-256"
    assert host.psql("SELECT count(*) FROM pg_authid WHERE rolpassword IS NOT NULL AND rolpassword NOT LIKE 'SCRAM-SHA-256$%'") == "0"
    listening = sorted({word.rsplit(":", 1)[0] for word in host.sudo("ss -Hltn 'sport = :5432'").split() if word.endswith(":5432")})
    assert listening == ["127.0.0.1", "172.17.0.1", "[::1]"]
    modes = dict(
        line.split(" ", 1)[::-1]
        for line in host.sudo(
            "stat -c '%U:%G:%a %n' /etc/postgresql/15/main/pg_hba.conf /etc/postgresql/15/main/conf.d/90-pgvector-deploy.conf "
            "/etc/sysctl.d/60-pgvector-deploy.conf /var/lib/pgvector-deploy/build.json /var/lib/postgresql/15/main "
            "/var/cache/pgvector-deploy"
        ).splitlines()
    )
    assert modes == {
        "/etc/postgresql/15/main/pg_hba.conf": "postgres:postgres:640",
        "/etc/postgresql/15/main/conf.d/90-pgvector-deploy.conf": "postgres:postgres:644",
        "/etc/sysctl.d/60-pgvector-deploy.conf": "root:root:644",
        "/var/lib/pgvector-deploy/build.json": "root:root:644",
        "/var/lib/postgresql/15/main": "postgres:postgres:700",
        "/var/cache/pgvector-deploy": "root:root:755",
    }
    world_writable = host.sudo("find /etc/postgresql /var/lib/pgvector-deploy /var/cache/pgvector-deploy /etc/sysctl.d -perm -o+w -not -type l")
    assert world_writable.strip() == ""
    assert host.sudo("grep -rlsF -f - /etc /var /home /root /tmp || true", input=PASSWORD).split() == []
    cached = host.sudo("sha256sum /var/cache/pgvector-deploy/*.tar.gz").split()
    assert RELEASES[DEFAULT_VERSION].sha256 in cached, cached
