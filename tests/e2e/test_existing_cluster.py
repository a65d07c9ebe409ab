"""A host where PostgreSQL 15 was already installed and holds data: the deploy adopts the
cluster (never initialises it again), adds pgvector, and the data survives."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def adopted(hosts, tarball, tmp_path_factory):
    from tests.e2e.conftest import run_deploy

    host = hosts.boot("existing")
    host.sudo("DEBIAN_FRONTEND=noninteractive apt-get -q update && "
              "DEBIAN_FRONTEND=noninteractive apt-get -q -y install --no-install-recommends postgresql-15")
    host.psql("CREATE DATABASE appdata")
    host.psql("CREATE TABLE notes (id int PRIMARY KEY, body text); "
              "INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 1000) g", "appdata")
    before = {
        "system_id": _system_identifier(host),
        "rows": host.psql("SELECT count(*), sum(id) FROM notes", "appdata"),
    }
    run = run_deploy(tmp_path_factory.mktemp("deploy"), [host.inventory_entry(**tarball)])
    return host, run, before


def _system_identifier(host) -> str:
    output = host.sudo("/usr/lib/postgresql/15/bin/pg_controldata /var/lib/postgresql/15/main")
    return next(line.split(":")[1].strip() for line in output.splitlines() if "system identifier" in line)


def test_deploy_succeeds_without_creating_a_cluster(adopted):
    host, run, _ = adopted
    assert run.returncode == 0, run.output
    assert "PostgreSQL 15 cluster exists" not in run.changed(host.name)
    assert "pgvector is compiled on this host and installed" in run.changed(host.name)


def test_cluster_was_not_reinitialised(adopted):
    host, _, before = adopted
    assert _system_identifier(host) == before["system_id"]


def test_existing_data_survives(adopted):
    host, _, before = adopted
    assert host.psql("SELECT count(*), sum(id) FROM notes", "appdata") == before["rows"] == "1000|500500"


def test_existing_database_can_use_vector(adopted):
    host, _, _ = adopted
    host.psql("CREATE EXTENSION IF NOT EXISTS vector", "appdata")
    assert host.psql("SELECT '[3,4]'::vector <-> '[0,0]'::vector", "appdata") == "5"


def test_rerun_changes_nothing(adopted, tarball, provision):
    host, _, _ = adopted
    run = provision(host, **tarball)
    assert run.returncode == 0, run.output
    assert run.changed(host.name) == []
