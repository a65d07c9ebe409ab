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


@pytest.mark.parametrize(
    "data, says",
    [
        ({}, "this host already has a cluster of another PostgreSQL major (15/main on port 5432, online), and pg_major is 17"),
        ({"pg_allow_second_major": True}, "pg_allow_second_major lets PostgreSQL 17 in beside cluster 15/main (online), but that cluster has port 5432"),
    ],
    ids=["not-allowed", "allowed-but-15-owns-5432"],
)
def test_pg_major_17_beside_the_running_15_is_refused_and_15_is_left_alone(adopted, tarball, provision, data, says):
    host, _, _ = adopted
    started = host.psql("SELECT pg_postmaster_start_time()")
    before = host.snapshot()
    run = provision(host, **tarball, pg_major=17, **data)
    assert run.returncode != 0
    assert "REFUSED, nothing was changed on this host: " + says in run.output, run.output
    assert host.snapshot() == before
    assert host.psql("SELECT pg_postmaster_start_time()") == started


# --- the data directory on its own volume (pg_data_mount; a volume that did not mount) ------------
#
# A tmpfs at /srv/pgvol stands in for the EBS volume, bind-mounted at /var/lib/postgresql as its
# mount point; unmounting the bind is the volume failing to mount at boot (the tmpfs keeps the
# data, so mounting it again brings the very same cluster back).

DATA_MOUNT = "/var/lib/postgresql"
DATA_DIR = "/var/lib/postgresql/15/main"


def _configuration(host) -> str:
    return host.sudo("cd /etc/postgresql/15/main && find . -type f | sort | xargs sha256sum")


def _has_pg_version(host) -> bool:
    return host.sudo(f"test -e {DATA_DIR}/PG_VERSION && echo yes || echo no").strip() == "yes"


@pytest.fixture(scope="module")
def volume_host(hosts, tarball):
    host = hosts.boot("volume")
    host.sudo(f"mkdir -p /srv/pgvol {DATA_MOUNT}")
    return host


def test_pg_data_mount_not_mounted_refuses_a_fresh_host_and_installs_nothing(volume_host, tarball, provision):
    host = volume_host
    run = provision(host, **tarball, pg_data_mount=DATA_MOUNT)
    assert run.returncode != 0
    assert "REFUSED, nothing was changed on this host: pg_data_mount /var/lib/postgresql is not mounted" in run.output, run.output
    assert f"Fix: attach the volume and mount it at {DATA_MOUNT}" in run.output
    assert host.sudo("dpkg-query -W -f='${db:Status-Status}' postgresql-15 2>/dev/null || echo none").strip() in ("none", "not-installed")
    assert host.sudo(f"ls -A {DATA_MOUNT}").strip() == ""


def test_pg_data_mount_mounted_provisions_the_cluster_on_that_volume(volume_host, tarball, provision):
    host = volume_host
    # nspawn gives the host CAP_SYS_ADMIN in its own mount namespace: a real mount inside it.
    host.sudo(f"mount -t tmpfs -o size=1g,mode=0755 pgvol /srv/pgvol && mount --bind /srv/pgvol {DATA_MOUNT}")
    run = provision(host, **tarball, pg_data_mount=DATA_MOUNT)
    assert run.returncode == 0, run.output
    assert _has_pg_version(host)
    assert host.sudo(f"findmnt -n -o FSTYPE --target {DATA_DIR}").strip() == "tmpfs"
    assert host.psql("SELECT current_setting('data_directory')") == DATA_DIR
    host.psql("CREATE TABLE kept (id int); INSERT INTO kept VALUES (42)")


def test_a_data_volume_in_fstab_that_did_not_mount_is_refused_and_nothing_is_initialised(volume_host, tarball, provision):
    from pgvector_deploy.facts import HostProfile, parse_host_profile

    host = volume_host
    system_id = _system_identifier(host)
    host.sudo("systemctl stop postgresql@15-main")
    host.sudo(f"printf '%s\\n' '/srv/pgvol {DATA_MOUNT} none bind 0 0' >> /etc/fstab && umount {DATA_MOUNT}")
    assert not _has_pg_version(host)  # the root disk's empty directory shows through
    profile = parse_host_profile(host.sudo(HostProfile().command(port=5432, cached_tarball="/nonexistent")).splitlines())
    assert {"source": "/srv/pgvol", "mount_point": DATA_MOUNT, "type": "none", "options": "bind"} in profile["fstab"]
    assert DATA_MOUNT not in profile["mounts"] and profile["initialised_data_dirs"] == [] and profile["build_stamp"]
    configuration = _configuration(host)

    run = provision(host, **tarball)

    assert run.returncode != 0
    assert (
        f"REFUSED, nothing was changed on this host: /etc/fstab mounts /srv/pgvol at {DATA_MOUNT}, which holds "
        f"the cluster's data directory {DATA_DIR}, but nothing is mounted there"
    ) in run.output, run.output
    assert not _has_pg_version(host)
    assert _configuration(host) == configuration
    assert host.ssh("systemctl is-active postgresql@15-main", check=False).stdout.strip() != "active"

    # Without the fstab line (the volume simply missing): pg_lsclusters still lists the cluster.
    host.sudo("sed -i '\\#^/srv/pgvol #d' /etc/fstab")
    run = provision(host, **tarball)
    assert run.returncode != 0
    assert (
        f"a PostgreSQL 15 cluster is expected in {DATA_DIR} (pg_lsclusters lists cluster 15/main there; "
        "pgvector-deploy's build stamp /var/lib/pgvector-deploy/build.json says it provisioned this host), "
        "but it has no PG_VERSION"
    ) in run.output, run.output
    assert not _has_pg_version(host)
    assert _configuration(host) == configuration

    # The volume back: the same cluster (same system identifier, same rows) is adopted again.
    host.sudo(f"mount --bind /srv/pgvol {DATA_MOUNT}")
    run = provision(host, **tarball, pg_data_mount=DATA_MOUNT)
    assert run.returncode == 0, run.output
    assert "PostgreSQL 15 cluster exists" not in run.changed(host.name)
    assert _system_identifier(host) == system_id
    assert host.psql("SELECT id FROM kept") == "42"


# --- pgvector already installed from a package -------------------------------------------------
#
# Debian 12 has no postgresql-15-pgvector (apt-cache policy on a lab host lists none: pgvector
# entered Debian after bookworm), and PGDG is out of reach here. So the host builds one the way
# Debian's package lays it out (pgvector 0.8.0 into /usr/lib/postgresql/15/lib and
# /usr/share/postgresql/15/extension, LLVM bitcode included; the real 0.8.0 release, as an old
# distribution package would be) and installs that .deb through apt:
# a real package in dpkg's database, owning the files, as the real one would.

PACKAGED_VERSION = "0.8.0"


def _install_pgvector_package(host, url: str, name: str) -> None:
    """Build pgvector on the host into a .deb named ``name`` and install it with apt-get."""
    root = f"/var/tmp/{name}-deb"
    host.sudo(
        f"set -e; rm -rf /var/tmp/pgvector-src {root}; mkdir -p /var/tmp/pgvector-src {root}/DEBIAN; "
        f"curl -fsS {url} | tar -xz -C /var/tmp/pgvector-src; "
        f"cd /var/tmp/pgvector-src/pgvector-{PACKAGED_VERSION}; "
        "make -s PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config OPTFLAGS='' with_llvm=no >/dev/null 2>&1; "
        f"make -s PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config OPTFLAGS='' with_llvm=no install DESTDIR={root} >/dev/null; "
        # What Debian's with_llvm build adds: bitcode for the JIT (a stand-in file, same place).
        f"mkdir -p {root}/usr/lib/postgresql/15/lib/bitcode/vector/src; "
        f"printf 'BC' > {root}/usr/lib/postgresql/15/lib/bitcode/vector/src/vector.bc; "
        f"printf 'BC' > {root}/usr/lib/postgresql/15/lib/bitcode/vector.index.bc; "
        f"printf '%s\\n' 'Package: {name}' 'Version: {PACKAGED_VERSION}-1' 'Architecture: amd64' "
        "'Maintainer: pgvector-deploy tests <tests@invalid>' 'Depends: postgresql-15' "
        f"'Description: pgvector for PostgreSQL 15 (test package)' > {root}/DEBIAN/control; "
        f"dpkg-deb --build --root-owner-group {root} /var/tmp/{name}.deb >/dev/null; "
        f"DEBIAN_FRONTEND=noninteractive apt-get -q -y install /var/tmp/{name}.deb >/dev/null; "
        f"rm -rf /var/tmp/pgvector-src {root} /var/tmp/{name}.deb"
    )


@pytest.fixture(scope="module")
def packaged(hosts, tarball):
    host = hosts.boot("packaged")
    host.sudo(
        "DEBIAN_FRONTEND=noninteractive apt-get -q update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get -q -y "
        "install --no-install-recommends postgresql-15 postgresql-server-dev-15 gcc make libc6-dev >/dev/null"
    )
    assert "postgresql-15-pgvector" not in host.sudo("apt-cache policy postgresql-15-pgvector")
    return host


def _refused_naming(host, tarball, provision, *texts):
    """The deploy runs exactly one operation on the host, the refusal, which fails naming
    ``texts``; the host's snapshot is unchanged. (A run whose only host failed prints no
    JSON results: the operations are read from pyinfra's own lines.)"""
    import re

    from pgvector_deploy.preflight import REFUSAL

    before = host.snapshot()
    run = provision(host, **tarball)
    assert run.returncode != 0
    assert re.findall(r"^--> Starting operation: (.*?) *$", run.output, re.M) == [REFUSAL], run.output
    assert f"[{host.name}] Error: executed 0 commands" in run.output, run.output
    for text in texts:
        assert text in run.output, run.output
    assert host.snapshot() == before
    return run


def test_pgvector_from_a_package_is_refused_naming_it_and_the_fix(packaged, release, tarball, provision):
    from pgvector_deploy.facts import HostProfile, parse_host_profile

    host = packaged
    _install_pgvector_package(host, release(PACKAGED_VERSION)["pgvector_url"], "postgresql-15-pgvector")
    host.psql("CREATE DATABASE appdata")
    host.psql("CREATE EXTENSION vector", "appdata")
    output = host.sudo(HostProfile().command(port=5432, cached_tarball="/nonexistent"))
    profile = parse_host_profile(output.splitlines())
    assert {"manager": "apt", "name": "postgresql-15-pgvector"} in profile["pgvector_packages"], output
    assert {
        "manager": "apt", "pg_config": "/usr/lib/postgresql/15/bin/pg_config",
        "file": "/usr/lib/postgresql/15/lib/vector.so", "packages": ["postgresql-15-pgvector"],
    } in profile["pgvector_owners"], output  # fmt: skip

    _refused_naming(
        host, tarball, provision,
        "REFUSED, nothing was changed on this host: pgvector for PostgreSQL 15 is installed from the package "
        "postgresql-15-pgvector (/usr/lib/postgresql/15/lib/vector.so belongs to postgresql-15-pgvector",
        "Fix: remove the package (apt-get remove postgresql-15-pgvector), then run again",
    )  # fmt: skip


def test_a_pgvector_package_by_another_name_is_found_by_its_files(packaged, release, tarball, provision):
    host = packaged
    host.sudo("DEBIAN_FRONTEND=noninteractive apt-get -q -y remove postgresql-15-pgvector >/dev/null")
    _install_pgvector_package(host, release(PACKAGED_VERSION)["pgvector_url"], "acme-pgvector")
    _refused_naming(
        host, tarball, provision,
        "is installed from the package acme-pgvector (/usr/lib/postgresql/15/lib/vector.so belongs to acme-pgvector; "
        "/usr/share/postgresql/15/extension/vector.control belongs to acme-pgvector)",
        "Fix: remove the package (apt-get remove acme-pgvector)",
    )  # fmt: skip


def test_once_the_package_is_removed_the_deploy_builds_pgvector_and_keeps_the_extension(packaged, tarball, provision):
    host = packaged
    host.sudo("DEBIAN_FRONTEND=noninteractive apt-get -q -y remove acme-pgvector >/dev/null")
    assert host.sudo("ls /usr/lib/postgresql/15/lib/bitcode/vector* 2>/dev/null || true").strip() == ""
    run = provision(host, **tarball)
    assert run.returncode == 0, run.output
    assert "pgvector is compiled on this host and installed" in run.changed(host.name)
    # The package's 0.8.0 extension is kept and brought to the release built here.
    assert host.psql("SELECT extversion FROM pg_extension WHERE extname = 'vector'", "appdata") == tarball["pgvector_version"]
    assert host.psql("SELECT '[3,4]'::vector <-> '[0,0]'::vector", "appdata") == "5"
    assert host.sudo("dpkg-query -S /usr/lib/postgresql/15/lib/vector.so 2>/dev/null || echo unowned").strip() == "unowned"


# --- a data directory reached through a symlink onto the volume -------------------------------
#
# /var/lib/postgresql -> /data/postgresql, the volume in /etc/fstab at /data (a bind of a tmpfs
# at /srv/datavol stands in for it). The data directory is judged where it really is.


def test_a_symlinked_data_directory_whose_volume_did_not_mount_is_refused_then_provisioned_on_it(hosts, tarball, provision):
    from tests.e2e.test_bad_input import refused_without_change

    host = hosts.boot("symlinked")
    host.ssh("sudo true")  # sudo's first use writes ~/.sudo_as_admin_successful: not ours
    host.sudo("mkdir -p /srv/datavol /data/postgresql && ln -s /data/postgresql /var/lib/postgresql && "
              "printf '%s\\n' '/srv/datavol /data none bind,noauto 0 0' >> /etc/fstab")  # fmt: skip
    refused_without_change(
        host,
        lambda: provision(host, **tarball),
        "REFUSED, nothing was changed on this host: /etc/fstab mounts /srv/datavol at /data, which holds the cluster's "
        "data directory /var/lib/postgresql/15/main (really /data/postgresql/15/main: a symlink leads there), but "
        "nothing is mounted there",
        "Its /etc/fstab options say noauto (bind,noauto): nothing mounts it at boot",
    )
    host.sudo("mount -t tmpfs -o size=1g,mode=0755 datavol /srv/datavol && mount /data && mkdir -p /data/postgresql")
    run = provision(host, **tarball, pg_data_mount="/data")
    assert run.returncode == 0, run.output
    assert host.sudo("findmnt -n -o FSTYPE --target /var/lib/postgresql/15/main").strip() == "tmpfs"
    assert host.psql("SELECT current_setting('data_directory')") == "/var/lib/postgresql/15/main"


def test_debian_13_s_own_postgresql_17_pgvector_package_is_refused_naming_it(hosts, tarball, provision):
    """Trixie ships pgvector for its PostgreSQL 17: the real package, installed through apt."""
    host = hosts.boot("trixie-packaged", suite="trixie")
    host.ssh("sudo true")  # sudo's first use writes ~/.sudo_as_admin_successful: not ours
    host.sudo(
        "DEBIAN_FRONTEND=noninteractive apt-get -q update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get -q -y "
        "install --no-install-recommends postgresql-17 postgresql-17-pgvector >/dev/null"
    )
    assert host.sudo("dpkg-query -W -f='${db:Status-Status}' postgresql-17-pgvector").strip() == "installed"
    _refused_naming(
        host, {**tarball, "pg_major": 17}, provision,
        "REFUSED, nothing was changed on this host: pgvector for PostgreSQL 17 is installed from the package "
        "postgresql-17-pgvector (/usr/lib/postgresql/17/lib/vector.so belongs to postgresql-17-pgvector",
        "Fix: remove the package (apt-get remove postgresql-17-pgvector), then run again",
    )  # fmt: skip
