"""Fact commands and their parsers, fed output recorded on a real Debian 12 host (pgvector_deploy.facts)."""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
from pathlib import Path

import pytest

from pgvector_deploy import facts, shell
from pgvector_deploy.facts import (
    BackupState,
    ClusterState,
    EnvFileState,
    HostProfile,
    InstalledPackages,
    LoginAccess,
    MigrationLedger,
    PgvectorState,
    RepositoryChecks,
    parse_env_file_state,
    parse_host_profile,
    parse_installed,
    parse_key_values,
    parse_ledger,
    parse_pgvector_owners,
    parse_pgvector_packages,
    parse_pgvector_state,
    parse_postgres_version,
)
from pgvector_deploy.paths import BUILD_STAMP
from pgvector_deploy.platforms import PACKAGE_MANAGERS
from pgvector_deploy.shell import as_postgres

from .conftest import AS_POSTGRES, PG_BINDIR, recorded_lines, sh_syntax_error, throwaway_server

PROVISIONED_SHA = "867a2c328d4928a5a9d6f052cd3bc78c7d60228a9b914ad32aa3db88e9de27b0"


# --- parse_key_values / parse_postgres_version -------------------------------------------


def test_parse_key_values_keeps_repeats_and_splits_at_the_first_equals():
    assert parse_key_values(["a=1", "a=2", "b=x=y", "no separator", " c =z"]) == {
        "a": ["1", "2"], "b": ["x=y"], "c": ["z"]
    }


@pytest.mark.parametrize(
    "text, expected",
    [
        ("postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)", (15, 20)),
        ("PostgreSQL 15.20 (Debian 15.20-0+deb12u1)", (15, 20)),
        ("postgres (PostgreSQL) 16.4", (16, 4)),
        ("", None),
        ("no version here", None),
    ],
)
def test_parse_postgres_version(text, expected):
    assert parse_postgres_version(text) == expected


# --- HostProfile ---------------------------------------------------------------------------


def test_fresh_profile(fresh_profile):
    assert fresh_profile["arch"] == "x86_64"
    assert fresh_profile["os_release"]["ID"] == "debian"
    assert fresh_profile["os_release"]["VERSION_ID"] == "12"
    assert fresh_profile["package_tools"] == ["apt-get"]
    assert fresh_profile["systemd"] is True
    assert fresh_profile["pid1"] == "systemd"
    assert fresh_profile["postgres_binaries"] == []
    assert fresh_profile["clusters"] == []
    assert fresh_profile["listeners"] == []
    assert fresh_profile["cached_tarball_sha256"] is None


def test_provisioned_profile(provisioned_profile):
    profile = provisioned_profile
    assert profile["arch"] == "x86_64"
    assert (profile["os_release"]["ID"], profile["os_release"]["VERSION_ID"]) == ("debian", "12")
    assert profile["systemd"] is True
    assert profile["postgres_binaries"] == [
        {
            "path": "/usr/lib/postgresql/15/bin/postgres",
            "major": 15,
            "version": "postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)",
        }
    ]
    assert profile["clusters"] == [
        {"major": 15, "name": "main", "port": 5432, "status": "online", "data_dir": "/var/lib/postgresql/15/main"}
    ]
    assert [l["exe"] for l in profile["listeners"]] == ["/usr/lib/postgresql/15/bin/postgres"] * 2
    assert [l["process"] for l in profile["listeners"]] == ["postgres", "postgres"]
    assert profile["listeners"][0]["line"].startswith("LISTEN 0")
    assert "127.0.0.1:5432" in profile["listeners"][0]["line"]
    assert profile["cached_tarball_sha256"] == PROVISIONED_SHA


def test_listener_without_ss_or_exe_parses_to_empty_exe_and_process():
    profile = parse_host_profile(["listener=|unknown process"])
    assert profile["listeners"] == [{"exe": "", "process": "", "line": "unknown process"}]


def test_docker_proxy_listener_names_its_process():
    line = 'LISTEN 0 4096 0.0.0.0:5432 0.0.0.0:* users:(("docker-proxy",pid=811,fd=4))'
    profile = parse_host_profile([f"listener=/usr/bin/docker-proxy|{line}"])
    assert profile["listeners"] == [{"exe": "/usr/bin/docker-proxy", "process": "docker-proxy", "line": line}]


def test_short_cluster_lines_are_ignored():
    assert parse_host_profile(["cluster=15 main 5432"])["clusters"] == []


def test_host_profile_command_checks_the_port_and_quotes_the_tarball_path():
    command = HostProfile().command(port=5433, cached_tarball="/var/cache/pgvector-deploy/x y.tar.gz")
    assert "ss -Hltnp 'sport = :5433'" in command
    assert ":1539$" in command  # 5433 in /proc/net/tcp's hex, for hosts without ss
    assert "'/var/cache/pgvector-deploy/x y.tar.gz'" in command
    assert sh_syntax_error(command) == ""


def test_host_profile_process_is_parse_host_profile():
    lines = recorded_lines("provisioned", "host-profile")
    assert HostProfile().process(lines) == parse_host_profile(lines)


# --- InstalledPackages ----------------------------------------------------------------------


def test_recorded_installed_packages_are_all_the_platform_needs(debian12):
    assert parse_installed(recorded_lines("provisioned", "installed-packages")) == set(debian12.packages)


def test_parse_installed_skips_removed_and_unknown_packages():
    lines = ["gcc installed", "postgresql-15 config-files", "make not-installed", "", "libc6-dev installed  "]
    assert parse_installed(lines) == {"gcc", "libc6-dev"}


def test_installed_packages_command_asks_dpkg_for_every_package(debian12):
    command = InstalledPackages().command(platform=debian12)
    assert "dpkg-query -W -f='${Package} ${db:Status-Status}\\n'" in command
    assert " ".join(debian12.packages) in command
    assert sh_syntax_error(command) == ""


FAKE_RPM = """#!/bin/sh
# rpm -q --quiet --whatprovides NAME: exit 0 when an installed package provides NAME, else 1.
[ "$1 $2 $3 $#" = "-q --quiet --whatprovides 4" ] || { echo "unexpected: $*" >&2; exit 2; }
grep -qx "$4" "$INSTALLED"
"""


def run_dnf_query(tmp_path, installed: list[str], packages: str) -> subprocess.CompletedProcess:
    """Run the dnf package manager's query with a fake rpm that knows ``installed``."""
    (tmp_path / "rpm").write_text(FAKE_RPM)
    (tmp_path / "rpm").chmod(0o755)
    (tmp_path / "installed").write_text("".join(f"{name}\n" for name in installed))
    query = PACKAGE_MANAGERS["dnf"].query_installed.format(packages=packages)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "INSTALLED": str(tmp_path / "installed")}
    return subprocess.run(["sh", "-c", query], capture_output=True, text=True, env=env, timeout=10)


def test_dnf_query_prints_only_the_installed_packages(tmp_path):
    result = run_dnf_query(tmp_path, ["gcc", "make"], "postgresql15-server gcc make redhat-rpm-config")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == ["gcc installed", "make installed"]
    assert parse_installed(result.stdout.splitlines()) == {"gcc", "make"}


def test_dnf_query_prints_nothing_and_succeeds_when_none_is_installed(tmp_path):
    result = run_dnf_query(tmp_path, [], "gcc make")
    assert (result.returncode, result.stdout) == (0, "")


def test_dnf_install_is_non_interactive():
    assert PACKAGE_MANAGERS["dnf"].install.format(packages="gcc make") == "dnf -y install gcc make"


# --- RepositoryChecks -----------------------------------------------------------------------


def test_repository_checks_report_the_passing_ones_in_one_script():
    # Each check runs in a subshell: one that exits, or prints, does not disturb the others.
    command = RepositoryChecks().command(checks=("true", "false", "exit 0", "echo noise; exit 1", "[ 1 = 1 ]"))
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0
    assert result.stdout.splitlines() == ["passed=0", "passed=2", "passed=4"]
    assert RepositoryChecks().process(result.stdout.splitlines()) == {0, 2, 4}


def test_repository_checks_default_is_none_passed():
    # pyinfra hands the default over when the command prints nothing (no check passed).
    assert RepositoryChecks().default() == set()


# --- ClusterState ---------------------------------------------------------------------------


def test_recorded_cluster_state_is_initialised_running_enabled():
    assert ClusterState().process(recorded_lines("provisioned", "cluster-state")) == {
        "initialised": True, "running": True, "enabled_at_boot": True
    }


@pytest.mark.parametrize(
    "lines, expected",
    [
        ([], {"initialised": False, "running": False, "enabled_at_boot": False}),
        (["running=no", "boot=disabled"], {"initialised": False, "running": False, "enabled_at_boot": False}),
        (["pg_version_file=15", "running=yes", "boot=static"], {"initialised": True, "running": True, "enabled_at_boot": True}),
        (["running=yes", "boot=enabled-runtime"], {"initialised": False, "running": True, "enabled_at_boot": True}),
    ],
)
def test_cluster_state_variants(lines, expected):
    assert ClusterState().process(lines) == expected


def test_cluster_state_command_uses_the_platform_paths(debian12):
    command = ClusterState().command(platform=debian12, port=5432)
    assert "/var/lib/postgresql/15/main/PG_VERSION" in command
    assert "/usr/lib/postgresql/15/bin/pg_isready -q -h /var/run/postgresql -p 5432" in command
    assert "systemctl is-enabled postgresql" in command
    assert sh_syntax_error(command) == ""


# --- PgvectorState --------------------------------------------------------------------------


def test_fresh_pgvector_state_is_empty(fresh_state):
    assert fresh_state == {
        "pg_version": None, "library": None, "control_version": None, "stamp": None, "databases": {}
    }


def test_pgvector_state_default_equals_the_fresh_state(fresh_state):
    assert PgvectorState.default() == fresh_state


def test_provisioned_pgvector_state(provisioned_state):
    state = provisioned_state
    assert state["pg_version"] == "PostgreSQL 15.20 (Debian 15.20-0+deb12u1)"
    assert state["library"] == "/usr/lib/postgresql/15/lib/vector.so"
    assert state["control_version"] == "0.8.0"
    assert state["stamp"] == {
        "arch": "x86_64",
        "optflags": "",
        "pg_version": "PostgreSQL 15.20 (Debian 15.20-0+deb12u1)",
        "sha256": PROVISIONED_SHA,
        "version": "0.8.0",
        "with_llvm": "no",
    }
    assert state["databases"] == {"app": "0.8.0", "postgres": "0.8.0", "template1": "0.8.0"}


def test_damaged_stamp_parses_to_none():
    lines = recorded_lines("provisioned", "pgvector-state")
    damaged = [line[:40] if line.startswith("stamp=") else line for line in lines]
    state = parse_pgvector_state(damaged)
    assert state["stamp"] is None
    assert state["control_version"] == "0.8.0"  # the rest still parses


def test_database_without_the_extension_maps_to_none_and_keeps_pipes_in_names():
    state = parse_pgvector_state(["database=plain|", "database=odd|name|0.8.6"])
    assert state["databases"] == {"plain": None, "odd|name": "0.8.6"}


def test_pgvector_state_command_uses_the_absolute_pg_config(debian12):
    command = PgvectorState().command(platform=debian12, port=5432)
    assert "/usr/lib/postgresql/15/bin/pg_config --version --pkglibdir --sharedir" in command
    assert "$(pg_config" not in command and " pg_config " not in command
    assert f"[ -f {BUILD_STAMP} ]" in command
    assert "runuser -u postgres -- /usr/lib/postgresql/15/bin/psql" in command
    assert sh_syntax_error(command) == ""


def test_remote_uid():
    assert LoginAccess().process(["0\n"]) == {"uid": 0, "sudo": True}
    assert LoginAccess().process(["1000", "sudo=yes"]) == {"uid": 1000, "sudo": True}
    assert LoginAccess().process(["1000", "sudo=no"]) == {"uid": 1000, "sudo": False}


def test_listener_under_qemu_user_emulation_is_identified_by_argv0():
    """Under qemu-user, /proc/PID/exe is the emulator; the program is argv[0] (seen on the
    emulated aarch64 test host)."""
    from pgvector_deploy.facts import parse_host_profile

    line = (
        "listener=/usr/bin/qemu-aarch64-static|LISTEN 0 244 127.0.0.1:5432 0.0.0.0:* "
        'users:(("postgres",pid=51,fd=6))|argv=/usr/libexec/qemu-binfmt/aarch64-binfmt-P '
        "/usr/lib/postgresql/15/bin/postgres /usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main "
    )
    listener = parse_host_profile([line])["listeners"][0]
    assert listener["exe"] == "/usr/lib/postgresql/15/bin/postgres"
    assert listener["process"] == "postgres"
    assert listener["line"].endswith('fd=6))')


def test_listener_argv0_is_ignored_without_emulation():
    from pgvector_deploy.facts import parse_host_profile

    line = "listener=/usr/sbin/nginx|LISTEN 0 511 0.0.0.0:5432 0.0.0.0:*|argv=/usr/lib/postgresql/15/bin/postgres"
    assert parse_host_profile([line])["listeners"][0]["exe"] == "/usr/sbin/nginx"


# --- PgvectorState against a real PostgreSQL 15: two psql processes for every database ----------

# Names a careless script would mangle, split, interpolate (:v) or run (backquotes).
AWKWARD_DATABASES = ("we'ird \\ na=me|x", ":v -d", "a`touch {marker}`b", "-d x", "ünï cödé\ttab", "dbname=postgres")


@pytest.fixture(scope="module")
def pg_server():
    """A throwaway PostgreSQL 15 on a Unix socket in a temporary directory, with databases
    named awkwardly, one with vector, one that pg_hba.conf can reject, one taking no
    connections; ``bindir`` holds a psql that counts its runs."""
    import dataclasses

    from pgvector_deploy.platforms import PLATFORMS

    with throwaway_server("pgvd-state-") as base:
        bindir = base / "bin"
        bindir.mkdir(mode=0o755)
        log = base / "psql-runs"
        log.touch(mode=0o666)
        log.chmod(0o666)
        (bindir / "psql").write_text(f'#!/bin/sh\necho run >> {log}\nexec {PG_BINDIR}/psql "$@"\n')
        (bindir / "psql").chmod(0o755)
        for tool in ("pg_isready", "pg_config"):
            (bindir / tool).symlink_to(f"{PG_BINDIR}/{tool}")
        psql = lambda database, sql: subprocess.run(  # noqa: E731
            [*AS_POSTGRES, f"{PG_BINDIR}/psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-h", str(base), "-d", database, "-c", sql],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        marker = base / "backquote-ran"
        names = [name.replace("{marker}", str(marker)) for name in AWKWARD_DATABASES]
        for name in (*names, "app", "rejected", "closed", "two\nlines"):
            psql("postgres", 'CREATE DATABASE "' + name.replace('"', '""') + '"')
        psql("postgres", "ALTER DATABASE closed ALLOW_CONNECTIONS false")
        vector = subprocess.run(  # where pgvector is installed here, app gets it
            [*AS_POSTGRES, f"{PG_BINDIR}/psql", "-XAtq", "-h", str(base), "-d", "app", "-c", "CREATE EXTENSION vector"],
            check=False, capture_output=True,
        ).returncode == 0  # fmt: skip
        platform = dataclasses.replace(next(p for p in PLATFORMS if p.key == "debian-12"), socket_dir=str(base), bindir=str(bindir))
        yield {"base": base, "platform": platform, "psql": psql, "log": log, "names": names, "marker": marker,
               "vector": psql("app", "SELECT extversion FROM pg_extension WHERE extname = 'vector'").strip() if vector else None}  # fmt: skip


def _gather_state(server) -> tuple[dict, int]:
    """Run PgvectorState's real command as pyinfra would (sh -c); the parsed state and how
    many psql processes it started."""
    server["log"].write_text("")
    command = PgvectorState().command(platform=server["platform"], port=5432)
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return PgvectorState().process(result.stdout.splitlines()), server["log"].read_text().count("run")


def _expected_databases(server) -> dict:
    return {
        **{name: None for name in (*server["names"], "postgres", "template1", "rejected")},
        "app": server["vector"],
    }  # template0 and closed take no connections; "two\nlines" cannot be one line


def test_pgvector_state_reads_every_database_with_two_psql(pg_server):
    state, psql_runs = _gather_state(pg_server)
    assert state["databases"] == _expected_databases(pg_server)
    assert psql_runs == 2
    assert not pg_server["marker"].exists()  # the backquoted name was never run


def test_pgvector_state_falls_back_to_one_psql_per_database_when_one_refuses(pg_server):
    hba = pg_server["base"] / "data" / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text("local rejected all reject\n" + original)
    pg_server["psql"]("postgres", "SELECT pg_reload_conf()")
    try:
        state, psql_runs = _gather_state(pg_server)
    finally:
        hba.write_text(original)
        pg_server["psql"]("postgres", "SELECT pg_reload_conf()")
    assert state["databases"] == _expected_databases(pg_server)  # the same answer, names intact
    assert psql_runs == 2 + 1 + len(_expected_databases(pg_server))
    assert not pg_server["marker"].exists()


def test_pgvector_state_command_starts_two_psql_before_any_fallback(debian12):
    command = PgvectorState().command(platform=debian12, port=5432)
    batch = command.split("if versions=$(", 1)[1].split("\n", 1)[0]
    assert batch.count("runuser -u postgres -- /usr/lib/postgresql/15/bin/psql ") == 2
    assert "while IFS= read -r db" not in command.split("if versions=$(", 1)[0]


# --- FactBundle: several facts in one round trip ------------------------------------------------


def test_fact_bundle_runs_commands_side_by_side_and_keeps_each_output_apart(tmp_path):
    from pgvector_deploy.facts import FactBundle, parse_bundle

    go = tmp_path / "go"
    # The first command can only see "go" if the fourth runs while it waits (5 s at most).
    waits = f"for i in $(seq 50); do [ -f {go} ] && break; sleep 0.1; done; [ -f {go} ] && echo saw=go; printf a=2"
    commands = (waits, "echo b=1; exit 3", "true", f"touch {go}; echo 'c=x y'")
    result = subprocess.run(["sh", "-c", FactBundle().command(commands=commands)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert parse_bundle(result.stdout.splitlines()) == [(0, ["saw=go", "a=2"]), (3, ["b=1"]), (0, []), (0, ["c=x y"])]
    assert sh_syntax_error(FactBundle().command(commands=commands)) == ""


def test_parse_bundle_ignores_lines_before_the_first_marker():
    from pgvector_deploy.facts import FactBundle, parse_bundle

    assert parse_bundle(["noise", f"{FactBundle.MARKER} 0 0", "x=1", f"{FactBundle.MARKER} 1 1"]) == [(0, ["x=1"]), (1, [])]


# --- pgvector from a package (HostProfile's pgvector_package / pgvector_owner lines) -----------


def test_host_profile_reads_a_pgvector_package_from_dpkg_by_name_and_by_its_files():
    # Captured on a lab host with a postgresql-15-pgvector .deb installed through apt
    # (test_existing_cluster.py builds it: bookworm itself has none).
    profile = parse_host_profile(recorded_lines("pgvector-package", "host-profile"))
    assert profile["pgvector_packages"] == [{"manager": "apt", "name": "postgresql-15-pgvector"}]
    debian = "/usr/lib/postgresql/15/bin/pg_config"
    assert [owner for owner in profile["pgvector_owners"] if owner["pg_config"] == debian] == [
        {"manager": "apt", "pg_config": debian, "file": "/usr/lib/postgresql/15/lib/vector.so",
         "packages": ["postgresql-15-pgvector"]},
        {"manager": "apt", "pg_config": debian, "file": "/usr/share/postgresql/15/extension/vector.control",
         "packages": ["postgresql-15-pgvector"]},
    ]  # fmt: skip


def test_host_profile_finds_a_pgvector_package_by_another_name_only_by_its_files():
    profile = parse_host_profile(recorded_lines("pgvector-other-name", "host-profile"))
    assert profile["pgvector_packages"] == []
    assert {owner["file"]: owner["packages"] for owner in profile["pgvector_owners"]} == {
        "/usr/lib/postgresql/15/lib/vector.so": ["acme-pgvector"],
        "/usr/share/postgresql/15/extension/vector.control": ["acme-pgvector"],
    }


def test_host_profile_reads_a_pgvector_package_from_rpm():
    # The rpm lines: the fact's own rpm shell run against a real rpm database (rpm 4.18 with
    # --root) holding a pgvector_15 package built with rpmbuild (recorded/README.md).
    profile = parse_host_profile(recorded_lines("pgvector-package", "host-profile", host="rhel9-x86_64"))
    assert profile["pgvector_packages"] == [{"manager": "dnf", "name": "pgvector_15"}]
    assert profile["pgvector_owners"] == [
        {"manager": "dnf", "pg_config": "/usr/pgsql-15/bin/pg_config", "file": "/usr/pgsql-15/lib/vector.so",
         "packages": ["pgvector_15"]},
        {"manager": "dnf", "pg_config": "/usr/pgsql-15/bin/pg_config",
         "file": "/usr/pgsql-15/share/extension/vector.control", "packages": ["pgvector_15"]},
    ]  # fmt: skip


def test_hosts_without_a_pgvector_package_have_none(fresh_profile, provisioned_profile):
    # The provisioned host has our own build: no package owns it.
    for profile in (fresh_profile, provisioned_profile):
        assert (profile["pgvector_packages"], profile["pgvector_owners"]) == ([], [])


@pytest.mark.parametrize(
    "line, found",
    [
        ("apt|postgresql-15-pgvector installed", [{"manager": "apt", "name": "postgresql-15-pgvector"}]),
        ("apt|postgresql-15-pgvector config-files", []),  # removed, not purged: its files are gone
        ("apt|postgresql-15-pgvector not-installed", []),
        ("apt|postgresql-15-pgvector half-installed", []),
    ],
)
def test_parse_pgvector_packages_counts_only_installed_packages(line, found):
    assert parse_pgvector_packages([line]) == found


def test_parse_pgvector_owners_reads_dpkg_s_lines_with_several_packages_and_diversions():
    file = "/usr/lib/postgresql/15/lib/vector.so"
    prefix = f"apt|/usr/lib/postgresql/15/bin/pg_config|{file}|"
    owners = parse_pgvector_owners([
        prefix + f"diversion by local-pgvector from: {file}",
        prefix + f"diversion by local-pgvector to: {file}.distrib",
        prefix + f"postgresql-15-pgvector, local-pgvector: {file}",
    ])  # fmt: skip
    assert owners == [{"manager": "apt", "pg_config": "/usr/lib/postgresql/15/bin/pg_config", "file": file,
                       "packages": ["postgresql-15-pgvector", "local-pgvector"]}]  # fmt: skip
    assert parse_pgvector_owners([prefix + f"diversion by local-pgvector from: {file}"]) == []
    assert parse_pgvector_owners(["dnf|/usr/pgsql-15/bin/pg_config|/x|file /x is not owned by any package"]) == []


def test_parse_ledger():
    digest = "a" * 64
    assert parse_ledger(["database=yes", "ledger=yes", f"applied=0001_a.sql|{digest}", f"applied=0002_b.sql|{'b' * 64}"]) == {
        "database": True,
        "ledger": True,
        "applied": {"0001_a.sql": digest, "0002_b.sql": "b" * 64},
        "refused": None,
        "app_login": True,
    }


def test_parse_ledger_refused_reads_nothing():
    assert parse_ledger(["database=yes", "ledger_refused=relkind v", "applied=x|y"]) == {
        "database": True, "ledger": True, "applied": {}, "refused": "relkind v", "app_login": True,
    }


def test_parse_ledger_without_database_or_table_or_app_login():
    empty = {"database": False, "ledger": False, "applied": {}, "refused": None, "app_login": True}
    assert parse_ledger([]) == empty and MigrationLedger.default() == empty
    assert parse_ledger(["database=yes"]) == {**empty, "database": True}
    assert parse_ledger(["database=yes", "ledger=yes", "app_login=no"]) == {**empty, "database": True, "ledger": True, "app_login": False}


def test_ledger_fact_command_is_valid_sh_and_reads_the_rows_in_the_app_s_session(debian12):
    command = MigrationLedger().command(platform=debian12, port=5432, database="vectors", user="app")
    assert sh_syntax_error(command) == ""
    assert as_postgres(debian12, 5432, "postgres", "SELECT 1 FROM pg_catalog.pg_database WHERE datname = 'vectors'") in command
    assert as_postgres(debian12, 5432, "vectors", facts.LEDGER_SHAPE_SQL) in command  # the catalog only
    # the rows: as the app role itself, read only
    read = " ".join([shell.as_app(debian12, 5432, "vectors", "app"),
                     *(f"-c {shlex.quote(sql)}" for sql in ("BEGIN READ ONLY", facts.LEDGER_ROWS_SQL, "COMMIT"))])  # fmt: skip
    assert read in command
    assert as_postgres(debian12, 5432, "vectors", facts.LEDGER_ROWS_SQL) not in command  # never as superuser
    assert command.rstrip().endswith("true"), "a fresh host (no server yet) must not fail the fact"


def test_parse_env_file_state():
    digest = hashlib.sha256(b"x").hexdigest()
    assert parse_env_file_state([f"sha256={digest}", "mode=600", "owner=root:root"]) == {"sha256": digest, "mode": "600", "owner": "root:root"}
    assert parse_env_file_state([]) == {"sha256": None, "mode": None, "owner": None}
    assert EnvFileState.default() == {"sha256": None, "mode": None, "owner": None}


def test_the_fact_prints_only_hash_mode_and_owner(tmp_path):
    path = tmp_path / "app.env"
    path.write_text("PGPASSWORD=secret-value\n")
    path.chmod(0o640)
    command = EnvFileState().command(path=str(path))
    assert sh_syntax_error(command) == ""
    output = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout
    assert "secret-value" not in output
    owner = f"{Path(path).owner()}:{Path(path).group()}"
    assert parse_env_file_state(output.splitlines()) == {
        "sha256": hashlib.sha256(b"PGPASSWORD=secret-value\n").hexdigest(),
        "mode": "640",
        "owner": owner,
    }
    missing = subprocess.run(["sh", "-c", EnvFileState().command(path=str(tmp_path / "none"))], check=False, capture_output=True, text=True)
    assert missing.returncode == 0 and missing.stdout.strip() == ""


def test_the_backup_state_fact_runs_on_a_real_postgresql_15(debian12):
    """Its queries, as pyinfra runs them (sh, as root), against a throwaway server: every line
    comes back (a query that fails stops the ones after it, and user_databases once read 0
    on a host with a database: the restore then went over it)."""
    import dataclasses
    import subprocess

    from .conftest import throwaway_psql, throwaway_server

    with throwaway_server("pgv-backup-state-") as base:
        throwaway_psql(base)("CREATE DATABASE app")
        platform = dataclasses.replace(debian12, socket_dir=str(base), data_dir=f"{base}/data")
        command = BackupState().command(platform, 5432, ("/nonexistent",))
        output = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout.splitlines()
    state = facts.parse_backup_state(output)
    assert state["user_databases"] == 1 and state["archive_mode"] == "off" and state["data_dir"]
    assert (state["archived_count"], state["failed_count"], state["last_archived"]) == (0, 0, None)


def test_pgbackrest_output_that_is_not_json_is_an_error_not_a_crash():
    """pgBackRest printed an error line before its JSON (credentials missing): the fact once
    raised, and the host was refused with a traceback's one line instead of the clear error."""
    state = facts.parse_backup_state(["info=ERROR: [039]: unable to get credentials[{}]", "archive_mode=on"])
    assert state["stanza_code"] is None and "unreadable pgbackrest info output" in state["stanza_message"]
    warned = facts.parse_backup_state(['info=[{"name":"pgvector","status":{"code":99,"message":"other"}}]', "info_error=WARN: role not found"])
    assert warned["stanza_code"] == 99 and warned["stanza_message"] == "other"


def test_the_backup_report_fact_runs_on_a_real_postgresql_15(debian12, tmp_path):
    """The state the nightly report gets (backups.report logs it), as pyinfra runs it, against a
    throwaway server: PostgreSQL answers, nothing is archived, no pgBackRest here."""
    import dataclasses
    import subprocess


    with throwaway_server("pgv-backup-report-") as base:
        platform = dataclasses.replace(debian12, socket_dir=str(base), data_dir=f"{base}/data")
        command = facts.BackupReport().command(platform, 5432)
        assert sh_syntax_error(command) == ""
        output = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout.splitlines()
    report = facts.backup_report(output)
    assert report["wal_archive"]["archive_mode"] == "off" and report["wal_archive"]["status"] == "off"
    assert report["backup_count"] == 0 and report["last_full"] is None and report["wal_archive"]["backlog_files"] == 0


def test_the_backup_report_says_when_and_why_archiving_fails_and_how_old_the_backups_are():
    info = [{"name": "pgvector", "status": {"code": 0, "message": "ok"}, "backup": [
        {"label": "20261201-010000F", "type": "full", "timestamp": {"start": 1000, "stop": 1100}},
        {"label": "20261201-010000F_20261202-010000I", "type": "incr", "timestamp": {"start": 5000, "stop": 5100}},
    ]}]  # fmt: skip
    drill = {"result": "fail", "error": "amcheck found a broken btree index in app: x", "started_at": "2026-12-05T04:00:00Z"}
    good = {"result": "pass", "started_at": "2026-11-28T04:00:00Z"}
    lines = [
        "now=9100", "archive_mode=on", "archiver=40|3|8000|9000|00000001000000000000002A", "backlog=4", "oldest_ready=8500",
        f"info={json.dumps(info)}",
        "push_error=2026-12-05 10:00:00.000 P00  ERROR: [039]: HTTP request failed with 403 (Forbidden)",
        f"drill_last={json.dumps(drill)}", f"drill_last-good={json.dumps(good)}",
    ]  # fmt: skip
    report = facts.backup_report(lines)
    assert report["last_full"] == {"label": "20261201-010000F", "type": "full", "at": "1970-01-01T00:18:20Z", "age_seconds": 8000}
    assert report["last_diff"]["type"] == "incr" and report["last"]["age_seconds"] == 4000
    wal = report["wal_archive"]
    assert (wal["status"], wal["reason"], wal["backlog_files"], wal["lag_seconds"]) == ("failing", "[039]: HTTP request failed with 403 (Forbidden)", 4, 600)
    assert report["drill"]["result"] == "fail" and report["drill"]["last_good_started_at"] == "2026-11-28T04:00:00Z"
    healthy = facts.backup_report(["now=9100", "archive_mode=on", "archiver=41|3|9050|9000|x", "backlog=0"])
    assert healthy["wal_archive"]["status"] == "ok" and "reason" not in healthy["wal_archive"] and healthy["drill"] is None
    assert facts.backup_report(["drill_last=not json"])["drill"]["result"] == "unreadable"
