"""A fresh Debian 13 (trixie) host with systemd, pg_major 17: PostgreSQL 17 from the
distribution itself, pgvector 0.8.6 compiled against 17's own pg_config, the smoke suite
passing, and a second run changing nothing. Then a run for another major (the default, 15) is
refused on that host and leaves the running 17 alone, even when a second major is allowed.

The host's fact output is compared with what tests/unit/recorded/ holds for Debian 13 (the
plan tests' input): those files were captured on this very kind of host. With
``PGV_RECORD_FACTS=1`` this module writes them anew instead (then review the diff).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from pgvector_deploy.facts import ClusterState, HostProfile, InstalledPackages, PgvectorState, parse_host_profile
from pgvector_deploy.paths import BUILD_STAMP
from pgvector_deploy.platforms import PLATFORMS
from tests.hosts.tarballs import DEFAULT_VERSION

VERSION = DEFAULT_VERSION  # conftest's tarball fixture: the default release, checked against its pin
BUILD_OP = "pgvector is compiled on this host and installed"
RECORDED = Path(__file__).resolve().parents[1] / "unit" / "recorded"
DEBIAN13 = next(p for p in PLATFORMS if p.key == "debian-13")


def facts_output(host, state: str, platform) -> dict[str, str]:
    """The output of the facts the plan tests read, run on the host as pyinfra runs them (root)."""
    commands = {
        "host-profile": HostProfile().command(port=5432, cached_tarball=f"/var/cache/pgvector-deploy/pgvector-{VERSION}.tar.gz"),
        "installed-packages": InstalledPackages().command(platform=platform),
        "cluster-state": ClusterState().command(platform=platform, port=5432),
    }
    if state == "provisioned":
        commands["pgvector-state"] = PgvectorState().command(platform=platform, port=5432)
    return {fact: host.sudo(command) for fact, command in commands.items()}


def record_or_compare(name: str, outputs: dict[str, str]) -> None:
    """Write the recordings (PGV_RECORD_FACTS=1), or check that the recorded ones are this host's."""
    for fact, text in outputs.items():
        path = RECORDED / f"{name}.{fact}.txt"
        if os.environ.get("PGV_RECORD_FACTS") == "1":
            path.write_text(text)
            continue
        recorded = path.read_text() if path.exists() else ""
        if fact == "host-profile":
            # What differs from host to host by itself (addresses, memory, free space) aside.
            live, kept = parse_host_profile(text.splitlines()), parse_host_profile(recorded.splitlines())
            for key in ("arch", "os_release", "package_tools", "systemd", "pid1", "postgres_binaries", "clusters",
                        "initialised_data_dirs", "config_dirs", "build_stamp", "build_stamp_majors"):  # fmt: skip
                assert live[key] == kept[key], (path.name, key)
        elif fact == "pgvector-state":
            assert json.loads(_stamp(text)) == json.loads(_stamp(recorded)), path.name
        else:
            assert text == recorded, path.name


def _stamp(text: str) -> str:
    return next((line.removeprefix("stamp=") for line in text.splitlines() if line.startswith("stamp=")), "null")


@pytest.fixture(scope="module")
def trixie(hosts, tarball, tmp_path_factory):
    """A fresh trixie host, its facts before any run, then one deploy with pg_major 17."""
    from tests.e2e.conftest import run_deploy

    host = hosts.boot("trixie-pg17", suite="trixie")
    # pg_major 15's facts on the fresh host: the plan tests plan Debian 13 with PGDG's 15 from them.
    record_or_compare("debian13-x86_64-fresh", facts_output(host, "fresh", DEBIAN13))
    run = run_deploy(tmp_path_factory.mktemp("deploy"), [host.inventory_entry(**tarball, pg_major=17)])
    return host, run


def test_trixie_host_is_debian_13(trixie):
    host, _ = trixie
    assert host.ssh(". /etc/os-release && echo $ID $VERSION_ID").stdout.split() == ["debian", "13"]


def test_first_deploy_builds_pgvector_against_17_and_the_smoke_suite_passes(trixie):
    host, run = trixie
    assert run.returncode == 0, run.output
    changed = run.changed(host.name)
    # The cluster itself comes with the package (postgresql-common makes 17/main at install).
    assert BUILD_OP in changed and "PostgreSQL 17, PGXS headers and compiler are installed" in changed
    # No app role here: the app's own checks are skipped, every other one passes.
    summary = re.search(rf"Vector smoke suite, pgvector {re.escape(VERSION)}: (\d+) passed, (\d+) failed, (\d+) skipped", run.output)
    assert summary, run.output
    passed, failed, skipped = map(int, summary.groups())
    assert (failed, passed + skipped) == (0, 10) and passed >= 8, summary.group(0)
    assert re.search(r"extension_files +PASS +.*server on port 5432 is PostgreSQL 17 ", run.output), run.output


def test_postgresql_17_from_the_distribution_serves_port_5432(trixie):
    host, _ = trixie
    assert host.psql("SHOW server_version_num")[:2] == "17"
    assert host.sudo("pg_lsclusters --no-header").split()[:4] == ["17", "main", "5432", "online"]
    # From trixie itself: no PGDG repository was set up, no other major installed.
    assert host.sudo("test -e /etc/apt/sources.list.d/pgdg.list && echo pgdg || echo none").strip() == "none"
    assert host.sudo("ls /usr/lib/postgresql").split() == ["17"]
    version = host.sudo("dpkg-query -W -f='${Version}' postgresql-17")
    assert "deb13" in version and "pgdg" not in version, version
    assert host.ssh("systemctl is-active postgresql@17-main").stdout.strip() == "active"
    assert host.ssh("systemctl is-enabled postgresql").stdout.strip() == "enabled"


def test_pgvector_0_8_6_is_built_for_17_with_its_own_build_stamp(trixie):
    host, _ = trixie
    stamp = json.loads(host.sudo("cat /var/lib/pgvector-deploy/build-pg17.json"))
    assert stamp["pg_version"] == host.sudo("/usr/lib/postgresql/17/bin/pg_config --version").strip()
    assert stamp["pg_version"].startswith("PostgreSQL 17.")
    assert stamp["version"] == VERSION and stamp["optflags"] == ""
    assert host.sudo(f"test -e {BUILD_STAMP} && echo 15-stamp || echo none").strip() == "none"
    assert host.sudo("test -f /usr/lib/postgresql/17/lib/vector.so && echo yes").strip() == "yes"
    for database in ("template1", "postgres"):
        assert host.psql("SELECT extversion FROM pg_extension WHERE extname = 'vector'", database) == VERSION
    assert host.psql("SELECT '[1,2,3]'::vector <-> '[4,6,3]'::vector") == "5"
    # The tuning and settings files are 17's own.
    assert "shared_buffers" in host.sudo("cat /etc/postgresql/17/main/conf.d/80-pgvector-tuning.conf")


def test_second_deploy_changes_nothing(trixie, tarball, provision):
    host, _ = trixie
    started = host.psql("SELECT pg_postmaster_start_time()")
    before = host.snapshot()
    run = provision(host, **tarball, pg_major=17)
    assert run.returncode == 0, run.output
    assert run.changed(host.name) == []
    assert host.snapshot() == before
    assert host.psql("SELECT pg_postmaster_start_time()") == started
    # The converged host's facts, as the plan tests read them for pg_major 17.
    record_or_compare("debian13-x86_64-pg17-provisioned", facts_output(host, "provisioned", DEBIAN13.for_major(17)))


@pytest.mark.parametrize(
    "data, says",
    [
        ({}, "this host already has a cluster of another PostgreSQL major (17/main on port 5432, online), and pg_major is 15"),
        ({"pg_allow_second_major": True}, "pg_allow_second_major lets PostgreSQL 15 in beside cluster 17/main (online), but that cluster has port 5432"),
        ({"pg_major": 14}, "pg_major 14: Debian 13 (trixie) has no PostgreSQL 14 this toolkit installs; it offers "
                           "PostgreSQL 17 (the distribution); 15, 16, 18 (PGDG)"),
    ],
    ids=["second-major-not-allowed", "second-major-allowed-but-17-owns-5432", "major-not-offered"],
)
def test_another_major_is_refused_and_the_running_17_is_left_alone(trixie, tarball, provision, data, says):
    host, _ = trixie
    started = host.psql("SELECT pg_postmaster_start_time()")
    before = host.snapshot()
    run = provision(host, **tarball, **data)  # pg_major: the default, 15, unless data says
    assert run.returncode != 0
    assert "REFUSED, nothing was changed on this host: " + says in run.output, run.output
    assert host.snapshot() == before
    assert host.psql("SELECT pg_postmaster_start_time()") == started
