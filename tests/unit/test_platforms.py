"""Platform detection and /etc/os-release parsing (pgvector_deploy.platforms)."""

from __future__ import annotations

import pytest

from pgvector_deploy.platforms import (
    PLATFORMS,
    UnsupportedHost,
    detect_platform,
    parse_os_release,
    supported_summary,
)
from pgvector_deploy.facts import parse_host_profile

from .conftest import recorded_lines


def test_recorded_debian12_host_is_detected(fresh_profile):
    platform = detect_platform(fresh_profile["os_release"], fresh_profile["arch"])
    assert platform.key == "debian-12"
    assert platform.pg_config == "/usr/lib/postgresql/15/bin/pg_config"
    assert platform.psql == "/usr/lib/postgresql/15/bin/psql"
    assert platform.package_manager.name == "apt"


def test_debian12_on_aarch64_is_supported():
    assert detect_platform({"ID": "debian", "VERSION_ID": "12"}, "aarch64").key == "debian-12"


def test_debian12_packages_are_tools_then_server_then_build_tools(debian12):
    assert debian12.postgres_packages == (
        "postgresql-15", "postgresql-server-dev-15", "gcc", "make", "libc6-dev"
    )
    assert debian12.packages == debian12.tool_packages + debian12.postgres_packages


def test_pgbackrest_comes_from_the_distribution_or_pgdg_and_amazon_linux_has_none_set_up():
    for platform in PLATFORMS:
        assert platform.backup_packages == (() if platform.key == "amzn-2023" else ("pgbackrest",)), platform.key


def test_every_platform_uses_its_own_bindir_for_pg_config():
    for platform in PLATFORMS:
        assert platform.pg_config == platform.bindir + "/pg_config"
        assert platform.psql == platform.bindir + "/psql"


def test_only_amazon_linux_2023_uses_usr_bin():
    # There /usr/bin is 15's own: postgresql15* conflict with every other major's packages
    # (and preflight refuses another major found there). Everywhere else /usr/bin/pg_config
    # may point at the newest installed major.
    assert {p.key: p.bindir for p in PLATFORMS if "15" not in p.bindir} == {"amzn-2023": "/usr/bin"}


def test_only_debian_12_is_proved_end_to_end():
    assert {p.key: p.proof for p in PLATFORMS} == {
        "debian-12": "e2e",
        "debian-13": "plan",
        "ubuntu-22.04": "plan",
        "ubuntu-24.04": "plan",
        "ubuntu-26.04": "plan",
        "amzn-2023": "plan",
        "rhel-9": "plan",
        "rhel-10": "plan",
    }


@pytest.mark.parametrize(
    "os_id, version, key",
    [
        ("ubuntu", "22.04", "ubuntu-22.04"),
        ("ubuntu", "24.04", "ubuntu-24.04"),
        ("ubuntu", "26.04", "ubuntu-26.04"),
        ("debian", "13", "debian-13"),
        ("amzn", "2023", "amzn-2023"),
        ("rhel", "9.4", "rhel-9"),
        ("rocky", "9.5", "rhel-9"),
        ("almalinux", "9.4", "rhel-9"),
        ("rocky", "9", "rhel-9"),
        ("rhel", "10.0", "rhel-10"),
        ("rocky", "10.1", "rhel-10"),
        ("almalinux", "10.0", "rhel-10"),
    ],
)
def test_ec2_distributions_are_detected_on_both_arches(os_id, version, key):
    for arch in ("x86_64", "aarch64"):
        assert detect_platform({"ID": os_id, "VERSION_ID": version}, arch).key == key


@pytest.mark.parametrize(
    "os_release, found",
    [
        ({"ID": "ubuntu", "VERSION_ID": "20.04", "PRETTY_NAME": "Ubuntu 20.04.6 LTS"}, "Ubuntu 20.04.6 LTS"),
        ({"ID": "ubuntu", "VERSION_ID": "22.10"}, "ubuntu 22.10"),
        ({"ID": "rocky", "VERSION_ID": "8.10", "PRETTY_NAME": "Rocky Linux 8.10 (Green Obsidian)"}, "Rocky Linux 8.10"),
        ({"ID": "centos", "VERSION_ID": "9", "PRETTY_NAME": "CentOS Stream 9"}, "CentOS Stream 9"),
        ({"ID": "fedora", "VERSION_ID": "40"}, "fedora 40"),
        ({"ID": "debian", "VERSION_ID": "14", "PRETTY_NAME": "Debian GNU/Linux 14 (forky)"}, "Debian GNU/Linux 14 (forky)"),
        ({"ID": "ubuntu", "VERSION_ID": "25.10"}, "ubuntu 25.10"),
        ({"ID": "rhel", "VERSION_ID": "8.10"}, "rhel 8.10"),
    ],
)
def test_other_releases_are_refused_listing_what_is_supported(os_release, found):
    message = _refusal(os_release)
    assert f"found {found}" in message
    assert supported_summary() in message


def test_supported_summary_lists_every_platform_and_both_arches():
    assert supported_summary() == (
        "supported: Debian 12 (bookworm), Debian 13 (trixie), Ubuntu 22.04 (jammy), Ubuntu 24.04 (noble), "
        "Ubuntu 26.04 (resolute), Amazon Linux 2023, RHEL / Rocky / AlmaLinux 9 and RHEL / Rocky / AlmaLinux 10, "
        "each on x86_64 or aarch64"
    )


def test_repository_steps_depend_on_the_os_id_and_fill_in_the_arch():
    rhel9 = next(p for p in PLATFORMS if p.key == "rhel-9")
    rhel = rhel9.repository_steps("rhel", "aarch64")
    rocky = rhel9.repository_steps("rocky", "x86_64")
    assert [step.check for step in rhel[:2]] == [step.check for step in rocky[:2]]
    assert "EL-9-aarch64/" in rhel[0].setup and "EL-9-x86_64/" in rocky[0].setup
    assert rhel[2].setup.startswith("rhui=$(dnf -q repolist --all ")
    assert "grep -Ex 'codeready-builder-for-rhel-9-(aarch64-)?rhui-rpms'" in rhel[2].setup
    assert "subscription-manager repos --enable codeready-builder-for-rhel-9-aarch64-rpms " in rhel[2].setup
    assert rocky[2].setup == "dnf -y install dnf-plugins-core && dnf config-manager --set-enabled crb"
    assert len(rhel) == len(rocky) == 3
    assert "{arch}" not in "".join(step.check + step.setup for step in rhel + rocky)


def test_debian_12_has_no_repository_steps(debian12):
    assert debian12.repository == ()
    assert debian12.repository_steps("debian", "x86_64") == ()


def _refusal(os_release: dict, arch: str = "x86_64") -> str:
    with pytest.raises(UnsupportedHost) as error:
        detect_platform(os_release, arch)
    return str(error.value)


def test_amazon_linux_2_is_refused_naming_what_was_found_and_what_is_supported():
    message = _refusal({"ID": "amzn", "VERSION_ID": "2", "PRETTY_NAME": "Amazon Linux 2"})
    assert "found Amazon Linux 2 on x86_64" in message
    assert "end of life" in message
    assert "Fix: use Amazon Linux 2023" in message
    assert message.endswith(f"{supported_summary()}.")


def test_amazon_linux_2_on_graviton_is_refused_too():
    assert "found Amazon Linux 2 on aarch64" in _refusal({"ID": "amzn", "VERSION_ID": "2", "PRETTY_NAME": "Amazon Linux 2"}, "aarch64")


def test_amazon_linux_2_without_pretty_name_names_id_and_version():
    assert "found amzn 2 on x86_64" in _refusal({"ID": "amzn", "VERSION_ID": "2"})


def test_centos_7_point_release_is_refused():
    message = _refusal({"ID": "centos", "VERSION_ID": "7.9.2009"})
    assert "CentOS 7 is end of life" in message
    assert "Fix: use Rocky Linux 9 or AlmaLinux 9" in message
    assert supported_summary() in message


@pytest.mark.parametrize("arch", ["i686", "armv7l", ""])
def test_32_bit_and_unknown_arches_are_refused(arch):
    message = _refusal({"ID": "debian", "VERSION_ID": "12", "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)"}, arch)
    assert f"architecture {arch!r} is not supported" in message
    assert "on x86_64 or aarch64" in message


def test_unknown_distribution_is_refused():
    message = _refusal({"ID": "arch", "PRETTY_NAME": "Arch Linux"})
    assert message.startswith("unsupported host: found Arch Linux on x86_64.")
    assert "supported: Debian 12" in message


def test_debian_11_is_refused():
    message = _refusal({"ID": "debian", "VERSION_ID": "11", "PRETTY_NAME": "Debian GNU/Linux 11 (bullseye)"})
    assert "found Debian GNU/Linux 11 (bullseye) on x86_64" in message


def test_missing_os_release_is_refused_and_says_so():
    assert "found no /etc/os-release on x86_64" in _refusal({})


def test_parse_os_release_handles_quotes_comments_and_blank_lines():
    text = """
# a comment line
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"

ID=debian
VERSION_ID='12'
  NAME = "Debian GNU/Linux"
not a key value line
EMPTY=
HOME_URL="https://www.debian.org/?a=b"
"""
    assert parse_os_release(text) == {
        "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)",
        "ID": "debian",
        "VERSION_ID": "12",
        "NAME": "Debian GNU/Linux",
        "EMPTY": "",
        "HOME_URL": "https://www.debian.org/?a=b",
    }


def test_parse_os_release_keeps_a_lone_quote_character():
    assert parse_os_release('X="') == {"X": '"'}


def test_recorded_os_release_lines_parse_to_debian_12():
    profile = parse_host_profile(recorded_lines("provisioned", "host-profile"))
    assert profile["os_release"]["ID"] == "debian"
    assert profile["os_release"]["VERSION_ID"] == "12"
    assert profile["os_release"]["VERSION_CODENAME"] == "bookworm"
