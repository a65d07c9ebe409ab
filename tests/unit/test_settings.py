"""Host data validation (pgvector_deploy.settings)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pgvector_deploy.releases import RELEASES
from pgvector_deploy.settings import DEFAULTS, SETTINGS, SettingsError, load_settings, sha256_of_file


@pytest.fixture
def tarball(tmp_path) -> Path:
    path = tmp_path / "v0.9.0.tar.gz"
    path.write_bytes(b"not really a tarball, but bytes with a known digest\n")
    return path


def test_defaults_build_the_newest_pinned_release_portably():
    settings = load_settings({})
    assert settings.version == "0.8.6"
    assert settings.release.sha256 == RELEASES["0.8.6"].sha256
    assert settings.url == "https://github.com/pgvector/pgvector/archive/refs/tags/v0.8.6.tar.gz"
    assert settings.tarball is None
    assert settings.allow_insecure is False
    assert settings.portable is True
    assert settings.optflags == ""


def test_every_setting_key_is_declared_once_with_its_default():
    keys = [setting.key for setting in SETTINGS]
    assert len(keys) == len(set(keys))
    assert DEFAULTS["pgvector_version"] == "0.8.6"
    assert DEFAULTS["pgvector_portable"] is True


def test_none_values_mean_the_default():
    assert load_settings({"pgvector_version": None, "pgvector_portable": None}).version == "0.8.6"


def test_a_callable_like_host_data_is_accepted():
    data = {"pgvector_version": "0.8.5"}
    assert load_settings(lambda key: data.get(key)).version == "0.8.5"


def test_not_portable_builds_with_march_native():
    assert load_settings({"pgvector_portable": False}).optflags == "-march=native"


@pytest.mark.parametrize(
    "text, expected",
    [("false", False), ("False", False), ("no", False), ("0", False), ("off", False),
     ("yes", True), ("true", True), (" TRUE ", True), ("1", True), ("on", True)],
)
def test_bools_are_parsed_from_strings(text, expected):
    assert load_settings({"pgvector_portable": text}).portable is expected


def test_junk_bool_is_refused_naming_the_key():
    with pytest.raises(SettingsError, match="Fix:") as error:
        load_settings({"pgvector_portable": "maybe"})
    assert "pgvector_portable: 'maybe' is not true or false" in str(error.value)


def test_allow_insecure_as_string_admits_an_old_version():
    settings = load_settings({"pgvector_version": "0.8.1", "pgvector_allow_insecure": "yes"})
    assert (settings.version, settings.allow_insecure) == ("0.8.1", True)


def test_release_errors_become_settings_errors_with_the_fix():
    with pytest.raises(SettingsError, match="Fix:") as error:
        load_settings({"pgvector_version": "0.8.1"})
    assert "security floor" in str(error.value)


def test_bad_version_becomes_a_settings_error():
    with pytest.raises(SettingsError, match="Fix:") as error:
        load_settings({"pgvector_version": "v0.8.6"})
    assert "'v0.8.6'" in str(error.value)


def test_custom_http_url_is_kept():
    url = "https://mirror.example.com/pgvector/v0.8.6.tar.gz"
    assert load_settings({"pgvector_url": url}).url == url


@pytest.mark.parametrize("url", ["ftp://mirror.example.com/v0.8.6.tar.gz", "file:///tmp/v0.8.6.tar.gz", "mirror/v0.8.6.tar.gz"])
def test_non_http_url_is_refused(url):
    with pytest.raises(SettingsError, match="Fix:") as error:
        load_settings({"pgvector_url": url})
    assert f"pgvector_url {url!r} is not an http(s) URL" in str(error.value)


def test_blank_url_means_the_upstream_url():
    assert load_settings({"pgvector_url": "  "}).url.startswith("https://github.com/pgvector/")


def test_missing_tarball_is_refused_naming_the_path(tmp_path):
    missing = str(tmp_path / "nowhere" / "v0.8.6.tar.gz")
    with pytest.raises(SettingsError, match="Fix:") as error:
        load_settings({"pgvector_tarball": missing})
    assert missing in str(error.value)
    assert "does not exist on the control machine" in str(error.value)


def test_tarball_with_wrong_sha256_is_refused_naming_both_digests(tarball):
    actual = hashlib.sha256(tarball.read_bytes()).hexdigest()
    expected = RELEASES["0.8.6"].sha256
    with pytest.raises(SettingsError, match="Fix:") as error:
        load_settings({"pgvector_tarball": str(tarball)})
    message = str(error.value)
    assert actual in message
    assert expected in message
    assert str(tarball) in message


def test_tarball_with_its_sha256_is_accepted_for_an_unpinned_version(tarball):
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    settings = load_settings(
        {"pgvector_version": "0.9.0", "pgvector_sha256": digest, "pgvector_tarball": str(tarball)}
    )
    assert settings.version == "0.9.0"
    assert settings.release.sha256 == digest
    assert settings.tarball == tarball


def test_sha256_of_file_matches_hashlib(tmp_path):
    path = tmp_path / "big.bin"
    data = bytes(range(256)) * 5000  # more than one 1 MiB read block
    path.write_bytes(data)
    assert sha256_of_file(path) == hashlib.sha256(data).hexdigest()


def test_readme_documents_every_setting_with_its_default():
    """The README's host data table is the user's contract; it must match SETTINGS."""
    from pathlib import Path

    from pgvector_deploy.settings import SETTINGS

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in readme.splitlines() if line.startswith("| `")}
    for setting in SETTINGS:
        row = rows.get(f"`{setting.key}`")
        assert row is not None, f"README has no row for {setting.key}"
        assert f"`{setting.default!r}`" in row, f"README default for {setting.key} is stale"
        assert setting.meaning in row, f"README meaning for {setting.key} is stale"
