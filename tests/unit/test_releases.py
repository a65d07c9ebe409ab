"""pgvector version parsing, the security floor and checksum pins (pgvector_deploy.releases)."""

from __future__ import annotations

import pytest

from pgvector_deploy.releases import (
    NEWEST_RELEASE,
    RELEASES,
    SECURITY_FLOOR,
    ReleaseError,
    choose_release,
    parse_version,
)

SHA_A = "a" * 64


@pytest.mark.parametrize(
    "text, expected",
    [("0.8.6", (0, 8, 6)), ("0.10.0", (0, 10, 0)), ("1.0.12", (1, 0, 12)), (" 0.8.2\n", (0, 8, 2))],
)
def test_parse_version_accepts_three_numbers(text, expected):
    assert parse_version(text) == expected


@pytest.mark.parametrize(
    "text", ["v0.8.6", "latest", "0.8", "0.8.6.1", "0.08.6", "00.8.6", "0.8.06", "", "0.8.x", "0.8.6-rc1"]
)
def test_parse_version_refuses_anything_else(text):
    with pytest.raises(ReleaseError, match="Fix:") as error:
        parse_version(text)
    assert repr(text) in str(error.value)


def test_parse_version_error_suggests_the_newest_release():
    with pytest.raises(ReleaseError) as error:
        parse_version("v0.8.6")
    assert "no leading 'v'" in str(error.value)
    assert NEWEST_RELEASE in str(error.value)


def test_newest_release_is_pinned_and_not_below_the_floor():
    assert NEWEST_RELEASE in RELEASES
    assert parse_version(NEWEST_RELEASE) >= parse_version(SECURITY_FLOOR)


def test_every_pin_is_a_lowercase_sha256_and_matches_its_key():
    for version, release in RELEASES.items():
        assert release.version == version
        parse_version(version)
        assert len(release.sha256) == 64 and set(release.sha256) <= set("0123456789abcdef"), version


def test_pinned_release_is_returned_with_its_sha256_and_upstream_url():
    release = choose_release("0.8.6", sha256=None, allow_insecure=False)
    assert release.version == "0.8.6"
    assert release.sha256 == "10bf9938906e5d643bbc4a7eea104b6f57ba4898e5b76b20e60484ea1d5a7f8f"
    assert release.url == "https://github.com/pgvector/pgvector/archive/refs/tags/v0.8.6.tar.gz"


def test_security_floor_refuses_0_8_1_without_allow_insecure():
    with pytest.raises(ReleaseError, match="Fix:") as error:
        choose_release("0.8.1", sha256=None, allow_insecure=False)
    message = str(error.value)
    assert "security floor 0.8.2" in message
    assert "CVE-2026-3172" in message
    assert "pgvector_allow_insecure" in message


def test_security_floor_accepts_0_8_1_with_allow_insecure():
    release = choose_release("0.8.1", sha256=None, allow_insecure=True)
    assert release.version == "0.8.1"
    assert release.sha256 == "a9094dfb85ccdde3cbb295f1086d4c71a20db1d26bf1d6c39f07a7d164033eb4"


def test_floor_version_itself_is_accepted():
    assert choose_release("0.8.2", sha256=None, allow_insecure=False).version == "0.8.2"


def test_floor_compares_numerically_not_as_text():
    # "0.10.0" < "0.8.2" as strings; numerically it is above the floor.
    assert choose_release("0.10.0", sha256=SHA_A, allow_insecure=False).version == "0.10.0"


def test_floor_is_checked_before_the_checksum():
    with pytest.raises(ReleaseError, match="security floor"):
        choose_release("0.5.0", sha256=SHA_A, allow_insecure=False)


def test_unknown_version_without_sha256_is_refused_listing_the_pins():
    with pytest.raises(ReleaseError, match="Fix: set pgvector_sha256") as error:
        choose_release("0.9.0", sha256=None, allow_insecure=False)
    message = str(error.value)
    assert "0.9.0 has no pinned sha256" in message
    for version in RELEASES:
        assert version in message


def test_unknown_version_with_sha256_is_accepted():
    release = choose_release("0.9.0", sha256=SHA_A, allow_insecure=False)
    assert (release.version, release.sha256, release.commit) == ("0.9.0", SHA_A, "")
    assert release.url.endswith("/v0.9.0.tar.gz")


@pytest.mark.parametrize("bad", ["abc", "g" * 64, "a" * 63, "a" * 65, "sha256:" + "a" * 64])
def test_bad_sha256_format_is_refused(bad):
    with pytest.raises(ReleaseError, match="not a sha256 digest") as error:
        choose_release("0.9.0", sha256=bad, allow_insecure=False)
    assert "Fix:" in str(error.value)


def test_explicit_sha256_overrides_the_pin_and_keeps_its_metadata():
    pinned = RELEASES["0.8.6"]
    release = choose_release("0.8.6", sha256=SHA_A, allow_insecure=False)
    assert release.sha256 == SHA_A != pinned.sha256
    assert (release.released, release.commit) == (pinned.released, pinned.commit)


def test_explicit_sha256_is_normalised_to_lowercase():
    release = choose_release("0.9.0", sha256="  " + "AB" * 32 + "\n", allow_insecure=False)
    assert release.sha256 == "ab" * 32
