"""Inputs of the build change: a new pgvector version is compiled and every database that has
the extension is updated; a flags change rebuilds; a downgrade is refused. The first deploy
here uploads the tarball from the control machine (pgvector_tarball) instead of downloading.

The "new version" is synthetic (0.9.0: the real 0.8.0 source relabelled, with an empty
upgrade script; see tests/hosts/tarballs.py), because no second real release is reachable.
"""

from __future__ import annotations

import json

import pytest

from pgvector_deploy.facts import BUILD_STAMP
from tests.hosts.tarballs import REAL_VERSION, real_tarball, sha256, synthetic_release

BUILD_OP = "pgvector is compiled on this host and installed"
NEXT = "0.9.0"


def extversions(host) -> dict[str, str]:
    found = {}
    for database in host.psql("SELECT datname FROM pg_database WHERE datallowconn").split():
        found[database] = host.psql("SELECT extversion FROM pg_extension WHERE extname = 'vector'", database)
    return found


@pytest.fixture(scope="module")
def uploaded(hosts, lab, tmp_path_factory):
    from tests.e2e.conftest import REAL, run_deploy

    host = hosts.boot("rebuild")
    downloads = len(lab.requests)
    run = run_deploy(
        tmp_path_factory.mktemp("deploy"), [host.inventory_entry(**REAL, pgvector_tarball=str(real_tarball()))]
    )
    return host, run, len(lab.requests) - downloads


@pytest.fixture(scope="module")
def next_release(lab):
    path = synthetic_release(NEXT)
    return {"pgvector_version": NEXT, "pgvector_sha256": sha256(path), "pgvector_url": lab.serve(path)}


def test_upload_mode_builds_without_any_download(uploaded):
    host, run, downloads = uploaded
    assert run.returncode == 0, run.output
    assert BUILD_OP in run.changed(host.name)
    assert downloads == 0
    assert host.psql("SELECT extversion FROM pg_extension WHERE extname = 'vector'") == REAL_VERSION


def test_new_version_rebuilds_and_updates_every_database(uploaded, next_release, provision):
    host, _, _ = uploaded
    host.psql("CREATE DATABASE app")
    host.psql("CREATE TABLE docs (id int, embedding vector(2)); INSERT INTO docs VALUES (1, '[3,4]')", "app")
    assert set(extversions(host).values()) == {REAL_VERSION}

    run = provision(host, **next_release)

    assert run.returncode == 0, run.output
    assert BUILD_OP in run.changed(host.name)
    assert extversions(host) == {"app": NEXT, "postgres": NEXT, "template1": NEXT}
    assert host.psql("SELECT embedding <-> '[0,0]' FROM docs", "app") == "5"
    assert json.loads(host.sudo(f"cat {BUILD_STAMP}"))["version"] == NEXT


def test_rerun_after_upgrade_changes_nothing(uploaded, next_release, provision):
    host, _, _ = uploaded
    run = provision(host, **next_release)
    assert run.returncode == 0, run.output
    assert run.changed(host.name) == []


def test_flags_change_rebuilds(uploaded, next_release, provision):
    host, _, _ = uploaded
    run = provision(host, **next_release, pgvector_portable=False)
    assert run.returncode == 0, run.output
    assert run.changed(host.name) == [BUILD_OP]
    assert json.loads(host.sudo(f"cat {BUILD_STAMP}"))["optflags"] == "-march=native"
    assert provision(host, **next_release, pgvector_portable=False).changed(host.name) == []


def test_downgrade_is_refused_and_nothing_changes(uploaded, tarball, provision):
    host, _, _ = uploaded
    before = host.snapshot()
    run = provision(host, **tarball)
    assert run.returncode != 0
    assert "app has 0.9.0" in run.output and "no downgrade path" in run.output, run.output
    assert host.snapshot() == before
