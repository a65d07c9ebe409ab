"""Inputs of the build change: a real upgrade (pgvector 0.8.0 with data and an HNSW index, then
0.8.6 through upstream's own ``ALTER EXTENSION vector UPDATE`` chain, 0.8.0--0.8.1 ...
0.8.5--0.8.6), a flags change rebuilds, a downgrade is refused. The first deploy here uploads
the tarball from the control machine (pgvector_tarball) instead of downloading.
"""

from __future__ import annotations

import json

import pytest

from pgvector_deploy.paths import BUILD_STAMP
from tests.hosts.tarballs import DEFAULT_VERSION

BUILD_OP = "pgvector is compiled on this host and installed"
OLD = "0.8.0"
# 0.8.0 is below the security floor (CVE-2026-3172): it is here only as what a host to be
# upgraded already runs, so this module says pgvector_allow_insecure openly.
OLD_DATA = {"pgvector_version": OLD, "pgvector_allow_insecure": True}
ROWS_SQL = "SELECT count(*) || ':' || md5(string_agg(id || '=' || embedding::text, ',' ORDER BY id)) FROM items"
POINT = "[500.3,3.1,6.2]"
KNN_SQL = f"SELECT id FROM items ORDER BY embedding <-> '{POINT}' LIMIT 10"
# The HNSW index: its oid (the same index, not a new one) and whether it is valid.
INDEX_SQL = "SELECT indexrelid || ':' || indisvalid FROM pg_index WHERE indexrelid = 'items_embedding_idx'::regclass"
# A role that is not superuser owns a database with a pg_extension view whose function makes
# it superuser when a superuser runs it, and points the database's search_path there: the
# upgrade's ALTER EXTENSION UPDATE must act on the real catalog and never run it. (The name
# has a quote; not a space, which the lab's snapshot cannot take.)
TRAPS = """
CREATE ROLE mallory NOLOGIN;
CREATE DATABASE "mallory's_db" OWNER mallory;
\\connect "mallory's_db"
SET ROLE mallory;
CREATE FUNCTION public.escalate() RETURNS TABLE (extname name, extversion text) LANGUAGE plpgsql AS $f$
BEGIN
  BEGIN EXECUTE 'ALTER ROLE mallory SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
  RETURN QUERY SELECT 'vector'::name, '9.9.9'::text;
END $f$;
CREATE VIEW public.pg_extension AS SELECT * FROM public.escalate();
ALTER DATABASE "mallory's_db" SET search_path = public, pg_catalog;
"""


def extversions(host) -> dict[str, str]:
    found = {}
    for database in host.psql("SELECT datname FROM pg_database WHERE datallowconn").splitlines():
        conninfo = "dbname='" + database.replace("'", "\\'") + "'"
        found[database] = host.psql("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'vector'", conninfo)
    return found


def knn(host, *settings: str) -> str:
    """The 10 nearest ids to POINT, and the plan that found them, under ``settings``."""
    prefix = "".join(f"SET {setting}; " for setting in settings)
    plan = host.psql(f"{prefix}EXPLAIN (COSTS OFF) {KNN_SQL}", "app")
    ids = host.psql(f"{prefix}{KNN_SQL}", "app").split()
    return plan, ids


@pytest.fixture(scope="module")
def uploaded(hosts, lab, tmp_path_factory):
    from tests.e2e.conftest import run_deploy, shared_tarball

    host = hosts.boot("rebuild")
    downloads = len(lab.requests)
    run = run_deploy(
        tmp_path_factory.mktemp("deploy"),
        [host.inventory_entry(**OLD_DATA, pgvector_tarball=str(shared_tarball(OLD)))],
    )
    return host, run, len(lab.requests) - downloads


def test_upload_mode_builds_without_any_download(uploaded):
    host, run, downloads = uploaded
    assert run.returncode == 0, run.output
    assert BUILD_OP in run.changed(host.name)
    assert downloads == 0
    assert host.psql("SELECT extversion FROM pg_extension WHERE extname = 'vector'") == OLD


def test_real_upgrade_keeps_the_rows_and_the_hnsw_index_and_updates_every_database(uploaded, tarball, provision):
    host, _, _ = uploaded
    host.psql("CREATE DATABASE app")
    host.psql(
        "CREATE TABLE items (id int PRIMARY KEY, embedding vector(3)); "
        "INSERT INTO items SELECT g, ('[' || g || ',' || g % 7 || ',' || g % 13 || ']')::vector "
        "FROM generate_series(1, 1000) g; "
        "CREATE INDEX items_embedding_idx ON items USING hnsw (embedding vector_l2_ops); ANALYZE items",
        "app",
    )
    host.sudo("runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d postgres -f -", input=TRAPS)
    assert host.psql("SET ROLE mallory; SELECT extversion FROM pg_extension", "mallory's_db") == "9.9.9"  # armed
    rows, index = host.psql(ROWS_SQL, "app"), host.psql(INDEX_SQL, "app")
    exact = knn(host, "enable_indexscan = off")[1]
    assert set(extversions(host).values()) == {OLD}
    assert rows.startswith("1000:") and index.endswith(":true"), index

    run = provision(host, **tarball)

    assert run.returncode == 0, run.output
    assert BUILD_OP in run.changed(host.name)
    databases = ("app", "mallory's_db", "postgres", "template1")
    assert extversions(host) == dict.fromkeys(databases, DEFAULT_VERSION)
    assert json.loads(host.sudo(f"cat {BUILD_STAMP}"))["version"] == DEFAULT_VERSION
    assert host.psql("SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'") == "f", run.output
    assert "9.9.9" not in run.output
    assert host.psql(ROWS_SQL, "app") == rows
    assert host.psql(INDEX_SQL, "app") == index
    # The index built by 0.8.0 answers under 0.8.6: the planner uses it, and it finds what a
    # sequential scan finds (ef_search above the row count makes the search exhaustive).
    plan, found = knn(host, "enable_seqscan = off", "hnsw.ef_search = 1000")
    assert "Index Scan using items_embedding_idx" in plan, plan
    assert found == knn(host, "enable_indexscan = off")[1] == exact, (found, exact)
    assert "Index Scan using items_embedding_idx" in knn(host)[0]  # chosen unforced, too


def test_rerun_after_upgrade_changes_nothing(uploaded, tarball, provision):
    host, _, _ = uploaded
    run = provision(host, **tarball)
    assert run.returncode == 0, run.output
    assert run.changed(host.name) == []


def test_flags_change_rebuilds(uploaded, tarball, provision):
    host, _, _ = uploaded
    run = provision(host, **tarball, pgvector_portable=False)
    assert run.returncode == 0, run.output
    assert run.changed(host.name) == [BUILD_OP]
    assert json.loads(host.sudo(f"cat {BUILD_STAMP}"))["optflags"] == "-march=native"
    assert provision(host, **tarball, pgvector_portable=False).changed(host.name) == []


def test_downgrade_is_refused_and_nothing_changes(uploaded, release, provision):
    host, _, _ = uploaded
    before = host.snapshot()
    run = provision(host, **release(OLD), pgvector_allow_insecure=True)  # past the floor, to the downgrade check
    assert run.returncode != 0
    assert f"app has {DEFAULT_VERSION}" in run.output and "no downgrade path" in run.output, run.output
    assert host.snapshot() == before
