"""The loading step (pgvector_deploy.loading): the pgvector tarball's digest, SSM parameters
(moto), the migration folder; each failure a SettingsError naming the key and the fix."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pgvector_deploy import loading
from pgvector_deploy.loading import load_settings, sha256_of_file
from pgvector_deploy.releases import RELEASES
from pgvector_deploy.settings import Secret, SettingsError

from .conftest import write


@pytest.fixture
def tarball(tmp_path) -> Path:
    path = tmp_path / "v0.9.0.tar.gz"
    path.write_bytes(b"not really a tarball, but bytes with a known digest\n")
    return path


def test_missing_tarball_is_refused_naming_the_path(tmp_path):
    missing = str(tmp_path / "nowhere" / "v0.8.6.tar.gz")
    with pytest.raises(SettingsError, match="Fix:") as error:
        load_settings({"pgvector_tarball": missing})
    assert missing in str(error.value)
    assert "does not exist on the control machine" in str(error.value)


def test_unreadable_tarball_is_a_settings_error_naming_the_fix(tarball, monkeypatch):
    from pgvector_deploy import loading

    def unreadable(path):  # root reads any mode, so the error is made, not provoked with chmod
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(loading, "sha256_of_file", unreadable)
    with pytest.raises(SettingsError) as error:
        load_settings({"pgvector_tarball": str(tarball)})
    assert str(error.value) == (
        f"pgvector_tarball {str(tarball)!r} cannot be read on the control machine (Permission denied). "
        "Fix: make it readable by the user running pyinfra, or unset it to download from pgvector_url."
    )


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


@pytest.fixture
def fake_aws(monkeypatch, tmp_path):
    """moto's AWS in eu-west-1 with fake credentials, no real AWS configuration read."""
    from moto import mock_aws

    for key in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    loading._ssm_parameter.cache_clear()
    with mock_aws():
        yield
    loading._ssm_parameter.cache_clear()


def test_password_from_ssm(fake_aws):
    import boto3

    boto3.client("ssm", region_name="eu-west-1").put_parameter(
        Name="/pgvector-deploy/app-password", Value="from-ssm Pässword", Type="SecureString"
    )
    app = load_settings({"pg_app_user": "app", "pg_app_password_ssm": "/pgvector-deploy/app-password"}).app
    assert app.password == "from-ssm Pässword" and isinstance(app.password, Secret)


def test_missing_ssm_parameter_is_refused(fake_aws):
    with pytest.raises(SettingsError, match="Fix:") as error:
        load_settings({"pg_app_user": "app", "pg_app_password_ssm": "/pgvector-deploy/missing"})
    message = str(error.value)
    assert "SSM parameter '/pgvector-deploy/missing' does not exist" in message
    assert "(region eu-west-1)" in message


APP = {"pg_app_user": "app", "pg_app_password": "s3cret"}


def test_default_folder_missing_means_no_migrations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(APP)
    assert (settings.migrations_dir, settings.migrations) == (None, ())


def test_default_folder_with_files_is_used(tmp_path, monkeypatch):
    write(tmp_path / "files" / "migrations", {"0001_a.sql": "SELECT 1;"})
    monkeypatch.chdir(tmp_path)
    settings = load_settings(APP)
    assert settings.migrations_dir == Path("files/migrations")
    assert [m.name for m in settings.migrations] == ["0001_a.sql"]


def test_default_folder_with_files_but_no_app_means_no_migrations(tmp_path, monkeypatch):
    write(tmp_path / "files" / "migrations", {"0001_a.sql": "SELECT 1;"})
    monkeypatch.chdir(tmp_path)
    assert load_settings({}).migrations == ()


def test_a_folder_set_in_host_data_must_exist(tmp_path):
    with pytest.raises(SettingsError) as error:
        load_settings({**APP, "pg_migrations_dir": str(tmp_path / "nope")})
    assert f"pg_migrations_dir '{tmp_path / 'nope'}' is not a folder on the control machine" in str(error.value)
    assert "Fix: create it, or correct the path" in str(error.value)


def test_an_empty_folder_set_in_host_data_means_no_migrations(tmp_path):
    assert load_settings({**APP, "pg_migrations_dir": str(tmp_path)}).migrations == ()


def test_a_bad_file_refuses_the_host_data_naming_it(tmp_path):
    folder = write(tmp_path / "m", {"0001_a.sql": "SELECT 1;", "0002_b.sql": "SELECT 1;\nBEGIN;\n"})
    with pytest.raises(SettingsError) as error:
        load_settings({**APP, "pg_migrations_dir": str(folder)})
    assert str(error.value).startswith(f"pg_migrations_dir: in {folder}: 0002_b.sql line 2: BEGIN starts or ends")


def test_an_ssm_secret_not_loaded_yet_can_never_become_text():
    """Validation keeps an SSM secret as FromSsm; used as text before loading.load read it, it
    would write ``FromSsm(...)`` where the secret belongs (a file, a command): it raises."""
    import pytest

    from pgvector_deploy.settings import FromSsm

    unloaded = FromSsm("/prod/db/password", "pg_app_password_ssm")
    for use in (str, lambda value: f"password={value}", lambda value: "{}".format(value)):
        with pytest.raises(TypeError, match="before loading.load read it"):
            use(unloaded)
    assert "/prod/db/password" in repr(unloaded)  # its repr (in error messages) names the parameter only
