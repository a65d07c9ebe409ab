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


def test_debian12_packages_are_server_then_build_tools(debian12):
    assert debian12.packages == (
        "postgresql-15", "postgresql-server-dev-15", "gcc", "make", "libc6-dev"
    )


def test_every_platform_has_its_own_bindir_for_pg_config():
    for platform in PLATFORMS:
        assert platform.pg_config != "/usr/bin/pg_config"
        assert platform.pg_config.startswith(platform.bindir + "/")
        assert "15" in platform.bindir


def _refusal(os_release: dict, arch: str = "x86_64") -> str:
    with pytest.raises(UnsupportedHost) as error:
        detect_platform(os_release, arch)
    return str(error.value)


def test_amazon_linux_2_is_refused_naming_what_was_found_and_what_is_supported():
    message = _refusal({"ID": "amzn", "VERSION_ID": "2", "PRETTY_NAME": "Amazon Linux 2"})
    assert "found Amazon Linux 2 on x86_64" in message
    assert "end of life" in message
    assert "supported: Debian 12 (bookworm), on x86_64 or aarch64" in message


def test_amazon_linux_2_without_pretty_name_names_id_and_version():
    assert "found amzn 2 on x86_64" in _refusal({"ID": "amzn", "VERSION_ID": "2"})


def test_centos_7_point_release_is_refused():
    message = _refusal({"ID": "centos", "VERSION_ID": "7.9.2009"})
    assert "CentOS 7 is end of life" in message
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
