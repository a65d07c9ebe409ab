"""PostgreSQL majors beyond 15 (host data ``pg_major``): validation, the platform data for each
major, plans from recorded hosts, and the refusals of a second major.

Expected paths, packages and services are written out from ``shared/reference/platforms.md``
(each major's own ``/usr/lib/postgresql/<major>``, ``/usr/pgsql-<major>``, ``postgresql<major>-*``),
never derived from the platform table. Debian 13's recordings were captured on a real trixie
lab host (tests/e2e/test_debian13_pg17.py checks them against one).
"""

from __future__ import annotations

import dataclasses

import pytest

from pgvector_deploy import pgvector, platforms, postgres, preflight
from pgvector_deploy.facts import ClusterState, HostProfile, InstalledPackages, PgvectorState, parse_host_profile
from pgvector_deploy.loading import load_settings
from pgvector_deploy.paths import BUILD_STAMP
from pgvector_deploy.plan import Plan
from pgvector_deploy.platforms import PLATFORMS, UnsupportedHost, detect_platform
from pgvector_deploy.preflight import Refusal
from pgvector_deploy.settings import SettingsError

from .conftest import recorded_output, run_operation, sh_syntax_error
from .test_platform_plans import APT_INSTALL, SAFE, pgdg_apt, plan_for, recorded_host

PROVISIONED_17 = "pg17-provisioned"  # debian13-x86_64-pg17-provisioned.*: a real trixie host after pg_major 17


def refusal_for(host) -> str:
    plan = preflight.look(host)
    assert isinstance(plan, Refusal), plan
    return plan.message


def with_profile_lines(host, *lines: str):
    """``host`` whose HostProfile output has ``lines`` added (as the fact's command prints them)."""
    host.outputs[HostProfile] = [*host.outputs[HostProfile], *lines]
    return host


# --- host data ---------------------------------------------------------------------------------


def test_pg_major_defaults_to_15_and_takes_16_to_18():
    assert load_settings({}).major == 15
    assert [load_settings({"pg_major": value}).major for value in (16, "17", " 18 ")] == [16, 17, 18]
    assert load_settings({}).allow_second_major is False
    assert load_settings({"pg_allow_second_major": "yes"}).allow_second_major is True


@pytest.mark.parametrize("value", ["17.2", "seventeen", True, -15, ""])
def test_a_major_that_is_not_a_number_is_bad_host_data(value):
    with pytest.raises(SettingsError) as error:
        load_settings({"pg_major": value})
    assert str(error.value) == (
        f"pg_major: {value!r} is not a PostgreSQL major number. Fix: set pg_major to one of 15, 16, 17, 18 (default 15)."
    )


def test_bad_host_data_is_refused_before_the_host_is_looked_at():
    host = recorded_host("debian13-x86_64", data={"pg_major": "17.2"})
    assert refusal_for(host).startswith("bad host data: pg_major: '17.2' is not a PostgreSQL major number")
    assert host.asked == []  # not even the host profile


@pytest.mark.parametrize("value", [14, "19", 9])
def test_a_major_the_toolkit_does_not_know_is_refused_naming_what_the_platform_offers(value):
    host = recorded_host("debian13-x86_64", data={"pg_major": value})
    assert refusal_for(host) == (
        f"pg_major {value}: Debian 13 (trixie) has no PostgreSQL {value} this toolkit installs; it offers PostgreSQL 17 "
        "(the distribution); 15, 16, 18 (PGDG). Nothing was changed. Fix: set pg_major to one of 15, 16, 17, 18, "
        "or use another host."
    )
    assert [cls for cls, _, _ in host.asked] == [HostProfile]  # only looked


# --- the platform data, per major ----------------------------------------------------------------

DEBIAN_LAYOUT = {
    "bindir": "/usr/lib/postgresql/{m}/bin",
    "data_dir": "/var/lib/postgresql/{m}/main",
    "config_dir": "/etc/postgresql/{m}/main",
    "create_cluster": "pg_createcluster {m} main --start-conf=auto",
    "start_without_systemd": "pg_ctlcluster {m} main start",
    "service": "postgresql@{m}-main",
    "boot_unit": "postgresql",
    "server_packages": ("postgresql-{m}",),
    "build_packages": ("postgresql-server-dev-{m}", "gcc", "make", "libc6-dev"),
}
PGDG_EL_LAYOUT = {
    "bindir": "/usr/pgsql-{m}/bin",
    "data_dir": "/var/lib/pgsql/{m}/data",
    "config_dir": "/var/lib/pgsql/{m}/data",
    "create_cluster": "/usr/pgsql-{m}/bin/postgresql-{m}-setup initdb",
    "service": "postgresql-{m}",
    "boot_unit": "postgresql-{m}",
    "server_packages": ("postgresql{m}-server",),
    "build_packages": ("postgresql{m}-devel", "gcc", "make", "redhat-rpm-config"),
}
AMAZON_LAYOUT = {
    "bindir": "/usr/bin",
    "data_dir": "/var/lib/pgsql/data",
    "create_cluster": "postgresql-setup --initdb",
    "service": "postgresql",
    "server_packages": ("postgresql{m}-server",),
    "build_packages": ("postgresql{m}-server-devel", "gcc", "make", "amazon-rpm-config"),
}
LAYOUTS = {
    "debian-12": DEBIAN_LAYOUT, "debian-13": DEBIAN_LAYOUT, "ubuntu-22.04": DEBIAN_LAYOUT,
    "ubuntu-24.04": DEBIAN_LAYOUT, "ubuntu-26.04": DEBIAN_LAYOUT, "amzn-2023": AMAZON_LAYOUT,
    "rhel-9": PGDG_EL_LAYOUT, "rhel-10": PGDG_EL_LAYOUT,
}  # fmt: skip
# Which majors each distribution ships itself (platforms.md); every other one is PGDG's.
SHIPPED = {
    "debian-12": {15}, "debian-13": {17}, "ubuntu-22.04": set(), "ubuntu-24.04": {16}, "ubuntu-26.04": {18},
    "amzn-2023": {15, 16, 17, 18}, "rhel-9": set(), "rhel-10": set(),
}  # fmt: skip
EVERY = [pytest.param(p.key, major, id=f"{p.key}-{major}") for p in PLATFORMS for major in (15, 16, 17, 18)]


def _filled(value, major):
    return tuple(v.format(m=major) for v in value) if isinstance(value, tuple) else value.format(m=major)


@pytest.mark.parametrize("key, major", EVERY)
def test_each_major_has_its_own_paths_packages_and_service(key, major):
    platform = next(p for p in PLATFORMS if p.key == key).for_major(major)
    assert platform.major == major
    for field, value in LAYOUTS[key].items():
        assert getattr(platform, field) == _filled(value, major), field
    assert platform.pg_config == _filled(LAYOUTS[key]["bindir"], major) + "/pg_config"
    stamp = BUILD_STAMP if major == 15 else f"/var/lib/pgvector-deploy/build-pg{major}.json"
    assert platform.build_stamp == stamp
    for text in (platform.create_cluster, platform.start_without_systemd, platform.restart_without_systemd,
                 *(step.check + step.setup for step in platform.repository)):  # fmt: skip
        assert "{major}" not in text and sh_syntax_error(text.replace("{arch}", "x86_64")) == "", text


@pytest.mark.parametrize("key, major", EVERY)
def test_a_major_the_distribution_ships_needs_no_repository_and_pgdgs_do(key, major):
    platform = next(p for p in PLATFORMS if p.key == key).for_major(major)
    shipped = major in SHIPPED[key]
    assert platform.source == ("distribution" if shipped else "PGDG")
    assert (platform.repository == ()) == shipped
    if key.startswith("debian-") and not shipped:
        codename = {"debian-12": "bookworm", "debian-13": "trixie"}[key]
        assert [step.setup for step in platform.repository] == pgdg_apt(codename)("x86_64")


def test_the_default_platforms_are_15s_as_before():
    assert {p.major for p in PLATFORMS} == {15}
    assert detect_platform({"ID": "debian", "VERSION_ID": "13"}, "x86_64") == next(p for p in PLATFORMS if p.key == "debian-13")
    debian13 = detect_platform({"ID": "debian", "VERSION_ID": "13"}, "x86_64")
    assert debian13.for_major(17).for_major(15) == debian13


def test_how_each_major_is_proved():
    proofs = {(p.key, major): p.for_major(major).proof for p in PLATFORMS for major in (15, 16, 17, 18)}
    assert {key for key, proof in proofs.items() if proof == "e2e"} == {("debian-12", 15), ("debian-13", 17)}


def test_a_major_the_platform_does_not_offer_is_refused_naming_what_it_offers(monkeypatch):
    # Every platform today offers 15 to 18; one without 18 (say, before PGDG builds it for a
    # new release) is refused before anything changes.
    jammy = platforms.TEMPLATES_BY_KEY["ubuntu-22.04"]
    monkeypatch.setitem(platforms.TEMPLATES_BY_KEY, "ubuntu-22.04", dataclasses.replace(jammy, majors=platforms.offered(pgdg=(15, 16, 17))))
    host = recorded_host("ubuntu2204-x86_64", data={"pg_major": 18})
    assert refusal_for(host) == (
        "pg_major 18: Ubuntu 22.04 (jammy) has no PostgreSQL 18 this toolkit installs; it offers PostgreSQL 15, 16, 17 "
        "(PGDG). Nothing was "
        "changed. Fix: set pg_major to one of 15, 16, 17, or use another host."
    )
    assert [cls for cls, _, _ in host.asked] == [HostProfile]  # only looked


def test_offers_names_the_distributions_majors_then_pgdgs():
    debian13 = next(p for p in PLATFORMS if p.key == "debian-13")
    assert debian13.offers() == "PostgreSQL 17 (the distribution); 15, 16, 18 (PGDG)"
    with pytest.raises(UnsupportedHost, match="has no PostgreSQL 14 this toolkit installs; it offers PostgreSQL 17 .the distribution.; 15, 16, 18 .PGDG."):
        debian13.for_major(14)


# --- Debian 13 from the real trixie host: 17 from the distribution, 15 from PGDG -------------------


def test_debian_13_pg_major_17_plans_the_distributions_17():
    host = recorded_host("debian13-x86_64", data={"pg_major": 17})
    plan = plan_for(host)
    assert (plan.platform.key, plan.platform.major, plan.platform.source, plan.platform.proof) == ("debian-13", 17, "distribution", "e2e")
    assert repr(plan) == "Plan(debian-13, PostgreSQL 17, pgvector 0.8.6)"
    assert run_operation(postgres.repository, plan, host) == []
    assert host.noops[-1] == "Debian 13 (trixie) ships PostgreSQL 17 in its own repositories"
    assert run_operation(postgres.packages, plan, host) == [
        SAFE + APT_INSTALL + "postgresql-17 postgresql-server-dev-17 gcc make libc6-dev"
    ]
    assert run_operation(postgres.cluster, plan, host) == [
        f"{SAFE}[ -s /var/lib/postgresql/17/main/PG_VERSION ] || pg_createcluster 17 main --start-conf=auto"
    ]
    assert run_operation(postgres.running, plan, host) == ["systemctl enable postgresql", "systemctl start postgresql@17-main"]
    [script] = run_operation(pgvector.build, plan, host)
    assert script.count("PG_CONFIG=/usr/lib/postgresql/17/bin/pg_config ") == 2
    assert "> /var/lib/pgvector-deploy/build-pg17.json.new" in script and BUILD_STAMP + " " not in script
    assert "/15/" not in script and sh_syntax_error(script) == ""


def test_debian_13_pg_major_15_plans_pgdgs_15_from_the_real_trixie_host():
    host = recorded_host("debian13-x86_64")  # pg_major unset: 15
    plan = plan_for(host)
    assert (plan.platform.major, plan.platform.source, plan.platform.proof) == (15, "PGDG", "plan")
    commands = run_operation(postgres.repository, plan, host)
    assert [command.split("; else ", 1)[1].removesuffix("; fi") for command in commands] == pgdg_apt("trixie")("x86_64")
    assert run_operation(postgres.packages, plan, host) == [
        SAFE + APT_INSTALL + "postgresql-15 postgresql-server-dev-15 gcc make libc6-dev"
    ]
    assert run_operation(postgres.running, plan, host) == ["systemctl enable postgresql", "systemctl start postgresql@15-main"]


def test_the_real_converged_trixie_host_with_17_yields_no_commands():
    host = recorded_host("debian13-x86_64", PROVISIONED_17, data={"pg_major": 17})
    plan = plan_for(host)
    recipe = (postgres.tools, postgres.repository, postgres.packages, postgres.cluster, postgres.running,
              pgvector.build, pgvector.extension)  # fmt: skip
    assert {op.__name__: run_operation(op, plan, host) for op in recipe} == {op.__name__: [] for op in recipe}


def test_the_converged_17_host_with_the_default_major_is_refused_naming_17():
    host = recorded_host("debian13-x86_64", PROVISIONED_17)
    assert refusal_for(host) == (
        "this host already has a cluster of another PostgreSQL major (17/main on port 5432, online), and pg_major is 15. "
        "Nothing was changed. Fix: set pg_major to 17 to manage that cluster instead, or set pg_allow_second_major: True "
        "to install PostgreSQL 15 beside it (that cluster is left as it is, and must not use port 5432)."
    )


# --- a second major beside a running one --------------------------------------------------------


def test_debian_12_with_15_running_refuses_17_unless_allowed_and_then_the_port_is_15s():
    host = recorded_host("debian12-x86_64", "provisioned", data={"pg_major": 17})
    assert "another PostgreSQL major (15/main on port 5432, online), and pg_major is 17" in refusal_for(host)
    host = recorded_host("debian12-x86_64", "provisioned", data={"pg_major": 17, "pg_allow_second_major": True})
    assert refusal_for(host) == (
        "pg_allow_second_major lets PostgreSQL 17 in beside cluster 15/main (online), but that cluster has port 5432, "
        "where this toolkit runs PostgreSQL 17. Nothing was changed. Fix: move that cluster to another port (its port "
        "setting, such as port = 5433, then restart it), or set pg_major to 15."
    )


def _beside_15_on_5433(**data):
    host = recorded_host("debian12-x86_64", "provisioned", data={"pg_major": 17, **data})
    lines = host.outputs[HostProfile]
    host.outputs[HostProfile] = [
        line.replace("15 main 5432 online", "15 main 5433 online")
        for line in lines
        if not line.startswith("listener=")  # 15 listens on 5433 now: nothing on 5432
    ]
    # 17 is not installed yet: the fresh host's packages, no 17 cluster, no pgvector for it.
    host.outputs[InstalledPackages] = recorded_output("debian12-x86_64", "fresh", "installed-packages")
    host.outputs[ClusterState] = recorded_output("debian12-x86_64", "fresh", "cluster-state")
    host.outputs[PgvectorState] = []
    return host


def test_an_allowed_second_major_plans_only_its_own_cluster_and_leaves_15_alone():
    host = _beside_15_on_5433(pg_allow_second_major=True)
    plan = plan_for(host)
    assert plan.platform.major == 17 and plan.port == 5432
    commands = [
        command
        for op in (postgres.repository, postgres.packages, postgres.cluster, postgres.running, pgvector.build)
        for command in run_operation(op, plan, host)
    ]
    assert commands[-4:-1] == [
        f"{SAFE}[ -s /var/lib/postgresql/17/main/PG_VERSION ] || pg_createcluster 17 main --start-conf=auto",
        "systemctl enable postgresql",
        "systemctl start postgresql@17-main",
    ]
    # Nothing a run yields names 15's files, service or stamp (the cluster on 5433 is left alone).
    for command in commands:
        assert "/15/" not in command and "15-main" not in command and "15 main" not in command, command
        assert BUILD_STAMP + " " not in command and BUILD_STAMP + "\n" not in command
    # And every fact the operations asked was about 17's cluster.
    for _, kwargs, _ in host.asked:
        if "platform" in kwargs:
            assert kwargs["platform"].major == 17


def test_a_second_major_not_allowed_is_refused_even_on_another_port():
    assert "(15/main on port 5433, online), and pg_major is 17" in refusal_for(_beside_15_on_5433())


def test_el_with_15s_data_directory_refuses_16_naming_it():
    host = with_profile_lines(
        recorded_host("rhel9-x86_64", "provisioned", data={"pg_major": 16}),
        "data_dirs_checked=yes", "pg_version_file=/var/lib/pgsql/15/data",
    )
    assert refusal_for(host).startswith(
        "this host already has a cluster of another PostgreSQL major (PostgreSQL 15 in /var/lib/pgsql/15/data), "
        "and pg_major is 16. Nothing was changed. Fix: set pg_major to 15"
    )


def test_amazon_linux_with_15_in_usr_bin_refuses_17():
    host = with_profile_lines(
        recorded_host("amzn2023-x86_64", "provisioned", data={"pg_major": 17, "pg_allow_second_major": True})
    )
    assert refusal_for(host).startswith("/usr/bin/postgres is PostgreSQL 15 (postgres (PostgreSQL) 15.")


# --- each major's own build stamp in the data-directory check --------------------------------------


def test_a_17_stamp_without_17s_data_is_refused_and_a_15_stamp_does_not_count_for_17():
    host = with_profile_lines(
        recorded_host("debian13-x86_64", data={"pg_major": 17}), "build_stamp_major=17"
    )
    message = refusal_for(host)
    assert message.startswith("a PostgreSQL 17 cluster is expected in /var/lib/postgresql/17/main (pgvector-deploy's build stamp /var/lib/pgvector-deploy/build-pg17.json says")
    assert message.endswith("first: rm /var/lib/pgvector-deploy/build-pg17.json.")
    host = with_profile_lines(recorded_host("debian13-x86_64", data={"pg_major": 17}), "build_stamp=yes")
    assert isinstance(preflight.look(host), Plan)


def test_the_host_profile_reads_each_majors_stamp():
    profile = parse_host_profile(["build_stamp_major=17", "build_stamp_major=18"])
    assert profile["build_stamp_majors"] == [17, 18] and profile["build_stamp"] is False
    command = HostProfile().command(port=5432, cached_tarball="/x")
    assert "for major in 16 17 18; do [ -e /var/lib/pgvector-deploy/build-pg$major.json ]" in command
    for data_dir in ("/var/lib/postgresql/17/main", "/var/lib/pgsql/16/data", "/var/lib/pgsql/data"):
        assert data_dir in command


# --- the test hosts' Debian 13 root filesystem ------------------------------------------------------


def test_the_trixie_test_host_recipe_is_bookworms_with_trixies_sources_and_its_own_cache_key():
    from tests.hosts import rootfs

    trixie, bookworm = rootfs.customise("trixie"), rootfs.customise("bookworm")
    assert "deb http://deb.debian.org/debian-security trixie-security main" in trixie and "bookworm" not in trixie
    assert trixie.replace("trixie", "bookworm") == bookworm
    assert rootfs._recipe_key("amd64", "trixie") != rootfs._recipe_key("amd64", "bookworm")
    with pytest.raises(ValueError, match="no test-host recipe for suite 'sid'"):
        rootfs.base_tarball("amd64", "sid")
