"""Host data validation (pgvector_deploy.settings), pure: the tarball, SSM and the migration
folder are read by the loading step (test_loading.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pgvector_deploy.releases import RELEASES
from pgvector_deploy.settings import DEFAULTS, SETTINGS, SettingsError
from pgvector_deploy.loading import load_settings


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


# --- networking and the app role -------------------------------------------------------------

from ipaddress import IPv4Network  # noqa: E402

from pgvector_deploy.settings import Secret  # noqa: E402

APP = {"pg_app_user": "app", "pg_app_password": "hunter2-Pässword"}


def test_docker_subnets_as_a_list():
    settings = load_settings({"pg_docker_subnets": ["172.20.0.0/16", "10.10.0.0/24", "10.0.0.0/8"]})
    assert settings.docker_subnets == (IPv4Network("172.20.0.0/16"), IPv4Network("10.10.0.0/24"), IPv4Network("10.0.0.0/8"))


def test_docker_subnets_as_a_string_from_the_command_line():
    settings = load_settings({"pg_docker_subnets": "172.20.0.0/16, 172.21.0.0/16,"})
    assert settings.docker_subnets == (IPv4Network("172.20.0.0/16"), IPv4Network("172.21.0.0/16"))


def test_no_docker_subnets_and_no_listen_addresses_by_default():
    settings = load_settings({})
    assert (settings.docker_subnets, settings.listen_addresses, settings.app) == ((), (), None)


@pytest.mark.parametrize("value", ["172.17.0.0/33", "10.0.0.1/8", "abc", "172.20.0.0/16/1"])
def test_invalid_docker_subnet_is_refused_naming_it(value):
    with pytest.raises(SettingsError, match="Fix:") as error:
        load_settings({"pg_docker_subnets": ["172.20.0.0/16", value]})
    assert f"pg_docker_subnets: {value!r} is not a valid CIDR" in str(error.value)


@pytest.mark.parametrize("value", ["16.0.0.0/4", "0.0.0.0/0", "fd00::/64"])
def test_too_broad_or_ipv6_docker_subnet_is_refused(value):
    with pytest.raises(SettingsError, match="Fix:") as error:
        load_settings({"pg_docker_subnets": [value]})
    assert f"pg_docker_subnets: {value!r} is too broad or not IPv4" in str(error.value)


def test_docker_subnets_not_a_list_is_refused():
    with pytest.raises(SettingsError, match="Fix:") as error:
        load_settings({"pg_docker_subnets": 172})
    assert "pg_docker_subnets: 172 is not a list" in str(error.value)


def test_listen_addresses_valid():
    assert load_settings({"pg_listen_addresses": ["10.0.1.10", "fd00::2"]}).listen_addresses == ("10.0.1.10", "fd00::2")
    assert load_settings({"pg_listen_addresses": "10.0.1.10,10.0.1.11"}).listen_addresses == ("10.0.1.10", "10.0.1.11")


@pytest.mark.parametrize("value", ["*", "localhost", "10.0.1.300", "10.0.1.0/24", ""])
def test_listen_address_that_is_no_ip_is_refused(value):
    with pytest.raises(SettingsError, match="Fix:") as error:
        load_settings({"pg_listen_addresses": ["10.0.1.10", value]})
    assert f"pg_listen_addresses: {value!r} is not an IP address" in str(error.value)


@pytest.mark.parametrize("value", ["0.0.0.0", "::"])
def test_wildcard_listen_address_is_refused_like_star(value):
    with pytest.raises(SettingsError, match="Fix:") as error:
        load_settings({"pg_listen_addresses": ["10.0.1.10", value]})
    assert f"pg_listen_addresses: {value!r}" in str(error.value)


@pytest.mark.parametrize(
    "value", ["fe80::1%eth0", "fe80::1%eth0'\nshared_preload_libraries = 'evil", "fe80::1%'", "fd00::2%1"]
)
def test_listen_address_with_a_zone_id_is_refused_before_it_reaches_a_config_file(value):
    with pytest.raises(SettingsError, match="Fix:") as error:
        load_settings({"pg_listen_addresses": ["10.0.1.10", value]})
    assert f"pg_listen_addresses: {value!r} has a zone id" in str(error.value)


@pytest.mark.parametrize("user", ["app", "my_app", "_app", "a" * 63, "app2"])
def test_valid_app_user(user):
    app = load_settings({**APP, "pg_app_user": user}).app
    assert (app.user, app.database, app.createdb) == (user, user, False)  # the database defaults to the user


@pytest.mark.parametrize("user", ["App", "1abc", "a" * 64, "my-app", "app;drop", "émile"])
def test_invalid_app_user_is_refused(user):
    with pytest.raises(SettingsError, match="Fix:") as error:
        load_settings({**APP, "pg_app_user": user})
    assert f"pg_app_user: {user!r} is not a valid name" in str(error.value)


@pytest.mark.parametrize("user", ["postgres", "pg_x", "pg_monitor"])
def test_reserved_app_user_is_refused(user):
    with pytest.raises(SettingsError, match="Fix:") as error:
        load_settings({**APP, "pg_app_user": user})
    assert f"pg_app_user: {user!r} is reserved" in str(error.value)


def test_app_database_and_createdb():
    app = load_settings({**APP, "pg_app_database": "vectors", "pg_app_createdb": "yes"}).app
    assert (app.user, app.database, app.createdb) == ("app", "vectors", True)


@pytest.mark.parametrize("database", ["postgres", "template0", "template1"])
def test_system_database_is_refused(database):
    with pytest.raises(SettingsError, match="Fix:") as error:
        load_settings({**APP, "pg_app_database": database})
    assert f"pg_app_database: {database!r} is a system database" in str(error.value)


def test_invalid_app_database_is_refused():
    with pytest.raises(SettingsError, match="Fix:") as error:
        load_settings({**APP, "pg_app_database": "My-DB"})
    assert "pg_app_database: 'My-DB' is not a valid name" in str(error.value)


def test_no_password_source_is_refused():
    with pytest.raises(SettingsError, match="Fix:") as error:
        load_settings({"pg_app_user": "app"})
    assert "exactly one password source is needed; found none" in str(error.value)


def test_two_password_sources_are_refused(monkeypatch):
    monkeypatch.setenv("PGVECTOR_DEPLOY_TEST_PASSWORD", "from-env")
    with pytest.raises(SettingsError, match="Fix:") as error:
        load_settings({**APP, "pg_app_password_env": "PGVECTOR_DEPLOY_TEST_PASSWORD"})
    assert "found ['pg_app_password', 'pg_app_password_env']" in str(error.value)


def test_empty_literal_password_is_refused():
    with pytest.raises(SettingsError, match="Fix:") as error:
        load_settings({"pg_app_user": "app", "pg_app_password": ""})
    assert "pg_app_password" in str(error.value)


@pytest.mark.parametrize("password", ["secret\n", "sec\nret", "secret\r\n", "sec\0ret"])
def test_a_password_with_a_line_break_is_a_clear_error_for_that_host(password):
    with pytest.raises(SettingsError, match="Fix: store the password without it") as error:
        load_settings({"pg_app_user": "app", "pg_app_password": password})
    assert "pg_app_password: the password contains a line break" in str(error.value)
    assert "sec" not in str(error.value)


def test_a_password_from_a_file_in_an_environment_variable_is_refused_too(monkeypatch):
    monkeypatch.setenv("PGV_TEST_PASSWORD", "from-a-file\n")
    with pytest.raises(SettingsError, match="pg_app_password_env: the password contains a line break"):
        load_settings({"pg_app_user": "app", "pg_app_password_env": "PGV_TEST_PASSWORD"})


def test_password_from_the_environment(monkeypatch):
    monkeypatch.setenv("PGVECTOR_DEPLOY_TEST_PASSWORD", "from-env Pässword")
    app = load_settings({"pg_app_user": "app", "pg_app_password_env": "PGVECTOR_DEPLOY_TEST_PASSWORD"}).app
    assert app.password == "from-env Pässword" and isinstance(app.password, Secret)


@pytest.mark.parametrize("value", [None, ""])
def test_unset_or_empty_environment_variable_is_refused_naming_it(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("PGVECTOR_DEPLOY_TEST_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("PGVECTOR_DEPLOY_TEST_PASSWORD", value)
    with pytest.raises(SettingsError, match="Fix:") as error:
        load_settings({"pg_app_user": "app", "pg_app_password_env": "PGVECTOR_DEPLOY_TEST_PASSWORD"})
    assert "environment variable PGVECTOR_DEPLOY_TEST_PASSWORD is not set or empty" in str(error.value)
    assert "export PGVECTOR_DEPLOY_TEST_PASSWORD=" in str(error.value)


def test_secret_repr_hides_the_value():
    secret = Secret("hunter2")
    assert repr(secret) == "Secret('***')"
    assert "hunter2" not in repr([secret]) and "hunter2" not in repr({"password": secret})
    assert secret == "hunter2" and f"{secret}" == "hunter2"  # still usable as the password


def test_settings_repr_never_shows_the_password():
    settings = load_settings(APP)
    assert settings.app.password == "hunter2-Pässword"
    for text in (repr(settings), str(settings), repr(settings.app), f"{settings!r}"):
        assert "hunter2" not in text
    assert "password=Secret('***')" in repr(settings)


# --- the server certificate (TLS for connections from beyond the host) -----------------------------


def test_tls_defaults_to_a_self_signed_certificate_and_only_when_reachable_from_beyond():
    settings = load_settings({})
    assert (settings.tls.cert_file, settings.tls.key_file, settings.tls.ca_file) == (None, None, None)
    assert settings.wants_tls is False
    assert load_settings({"pg_listen_addresses": ["10.0.1.10"]}).wants_tls is True
    assert load_settings({"pg_docker_subnets": ["10.0.0.0/16"]}).wants_tls is True  # may be a VPC range


def test_tls_files_from_host_data():
    settings = load_settings({"pg_ssl_cert_file": "/etc/ssl/db/server.pem", "pg_ssl_key_file": "/etc/ssl/db/server.key",
                              "pg_ssl_ca_file": "/etc/ssl/db/ca.pem"})  # fmt: skip
    assert (settings.tls.cert_file, settings.tls.key_file, settings.tls.ca_file) == (
        "/etc/ssl/db/server.pem", "/etc/ssl/db/server.key", "/etc/ssl/db/ca.pem"
    )  # fmt: skip
    assert settings.wants_tls is True


@pytest.mark.parametrize(
    "data, message",
    [
        ({"pg_ssl_cert_file": "/etc/ssl/db/server.pem"}, "only pg_ssl_cert_file is set"),
        ({"pg_ssl_key_file": "/etc/ssl/db/server.key"}, "only pg_ssl_key_file is set"),
        ({"pg_ssl_ca_file": "/etc/ssl/db/ca.pem"}, "pg_ssl_ca_file is set but pg_ssl_cert_file is not"),
        ({"pg_ssl_cert_file": "server.pem", "pg_ssl_key_file": "/k"}, "pg_ssl_cert_file: 'server.pem' is not a plain absolute path"),
        ({"pg_ssl_cert_file": "/etc/it's.pem", "pg_ssl_key_file": "/k"}, "is not a plain absolute path"),
        ({"pg_ssl_cert_file": "/etc/../x.pem", "pg_ssl_key_file": "/k"}, "is not a plain absolute path"),
    ],
)
def test_bad_tls_host_data_is_refused_with_a_fix(data, message):
    with pytest.raises(SettingsError) as error:
        load_settings(data)
    assert message in str(error.value) and "Fix:" in str(error.value)


def test_validation_reads_no_file_and_asks_no_service(tarball, tmp_path, monkeypatch):
    """Validation is pure: with every key that points outside host data set (a tarball, SSM
    parameters, a migration folder), and files, directories and AWS made to fail on any use,
    it still validates, naming what the loading step will read."""
    import builtins
    import io
    import os

    import boto3

    from pgvector_deploy.settings import FromSsm, MigrationsSource, validate_settings

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "0001_a.sql").write_text("SELECT 1;\n")
    data = {
        "pgvector_version": "0.9.0",
        "pgvector_sha256": hashlib.sha256(tarball.read_bytes()).hexdigest(),
        "pgvector_tarball": str(tarball),
        "pg_app_user": "app",
        "pg_app_password_ssm": "/pgvd/app-password",
        "pg_migrations_dir": str(tmp_path / "m"),
        "pg_backup_s3_bucket": "acme-db-backups",
        "pg_backup_s3_region": "eu-west-1",
        "pg_backup_s3_prefix": "db-1",
        "pg_backup_cipher_pass_ssm": "/pgvd/backup-pass",
    }
    touched = []

    def no_io(name):
        def refuse(*args, **kwargs):
            touched.append(name)
            raise AssertionError(f"validation used {name}")

        return refuse

    for owner, name in [(builtins, "open"), (io, "open"), (os, "stat"), (os, "listdir"), (os, "scandir"), (boto3, "Session"), (boto3, "client")]:
        monkeypatch.setattr(owner, name, no_io(f"{owner.__name__}.{name}"))
    for name in ("read_bytes", "read_text", "is_file", "is_dir", "iterdir", "stat", "exists"):
        monkeypatch.setattr(Path, name, no_io(f"Path.{name}"))
    settings = validate_settings(data)
    monkeypatch.undo()
    assert touched == []
    assert settings.tarball == tarball and settings.migrations == ()
    assert settings.app.password == FromSsm("/pgvd/app-password", "pg_app_password_ssm")
    assert settings.backup.cipher_pass == FromSsm("/pgvd/backup-pass", "pg_backup_cipher_pass_ssm")
    assert settings.migrations_source == MigrationsSource(tmp_path / "m", str(tmp_path / "m"), True)


def test_a_folder_set_without_an_app_is_refused(tmp_path):
    with pytest.raises(SettingsError, match="pg_migrations_dir is set .* but pg_app_user is not.*Fix:"):
        load_settings({"pg_migrations_dir": str(tmp_path)})
