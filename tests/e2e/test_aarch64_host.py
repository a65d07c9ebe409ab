"""An arm64 (Graviton-like) Debian 12 host, emulated with qemu-user, without an init system:
the deploy detects aarch64, compiles pgvector there (an aarch64 binary), the extension works,
and a re-run changes nothing. Everything under emulation is several times slower."""

from __future__ import annotations

import json
import os

import pytest

from pgvector_deploy.paths import BUILD_STAMP
from tests.hosts.emulation import aarch64_missing, enable_aarch64
from tests.hosts.tarballs import DEFAULT_VERSION

EM_AARCH64 = "b7 00"  # ELF e_machine of an aarch64 binary, little-endian


@pytest.fixture(scope="module")
def arm64(hosts, tarball, tmp_path_factory):
    from tests.e2e.conftest import run_deploy

    missing = aarch64_missing()
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"aarch64 host cannot run under CI: {missing}")
        pytest.skip(missing)
    enable_aarch64()
    host = hosts.boot("arm64", systemd=False, arch="arm64")
    run = run_deploy(tmp_path_factory.mktemp("deploy"), [host.inventory_entry(**tarball)])
    return host, run


def test_host_is_aarch64(arm64):
    host, _ = arm64
    assert host.ssh("uname -m").stdout.strip() == "aarch64"


def test_deploy_builds_an_aarch64_pgvector_on_the_host(arm64):
    host, run = arm64
    assert run.returncode == 0, run.output
    assert "pgvector is compiled on this host and installed" in run.changed(host.name)
    assert json.loads(host.sudo(f"cat {BUILD_STAMP}"))["arch"] == "aarch64"
    machine = host.sudo("od -An -tx1 -j18 -N2 /usr/lib/postgresql/15/lib/vector.so").strip()
    assert machine == EM_AARCH64


def test_vector_works_on_aarch64(arm64):
    host, _ = arm64
    assert host.psql("SELECT extversion FROM pg_extension WHERE extname = 'vector'", "template1") == DEFAULT_VERSION
    assert host.psql("SELECT '[1,2,3]'::vector <-> '[4,6,3]'::vector") == "5"


def test_rerun_on_aarch64_changes_nothing(arm64, tarball, provision):
    host, _ = arm64
    run = provision(host, **tarball)
    assert run.returncode == 0, run.output
    assert run.changed(host.name) == []
