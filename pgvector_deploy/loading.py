"""The loading step: read what validated host data points at, on the control machine.

``settings.validate_settings`` checks host data and touches nothing; ``load`` then reads, in
this order, what those settings only name: the pgvector tarball (pgvector_tarball: it must be
there, readable, and have the release's sha256), the app role's password in SSM
(pg_app_password_ssm), the migration folder (pg_migrations_dir: each file read and checked,
``migration_files``) and the repository passphrase in SSM (pg_backup_cipher_pass_ssm). A
failure is a ``SettingsError`` naming the key and the fix, as validation's are; preflight
refuses the host with it before anything runs there.

Example::

    settings = load(validate_settings(host.data, host_name=host.name))
"""

from __future__ import annotations

import dataclasses
import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

from .ec2 import aws_region_override
from .migration_files import Migration, MigrationError, read_folder
from .settings import (
    FromSsm,
    MigrationsSource,
    Settings,
    SettingsError,
    checked_cipher_pass,
    checked_password,
    validate_settings,
)


def load_settings(data: Mapping[str, Any] | Callable[[str], Any], host_name: str | None = None) -> Settings:
    """Validate a host's data, then load what it points at: the two steps preflight runs."""
    return load(validate_settings(data, host_name))


def load(settings: Settings) -> Settings:
    """``settings`` with the tarball checked, SSM secrets read and the migrations read."""
    check_tarball(settings)
    app = settings.app
    if app is not None and isinstance(app.password, FromSsm):
        app = dataclasses.replace(app, password=checked_password(app.password.key, _ssm_parameter(app.password.name)))
    migrations_dir, migrations = read_migrations(settings.migrations_source)
    backup = settings.backup
    if backup is not None and isinstance(backup.cipher_pass, FromSsm):
        source = backup.cipher_pass
        backup = dataclasses.replace(backup, cipher_pass=checked_cipher_pass(source.key, _ssm_parameter(source.name, source.key)))
    return dataclasses.replace(settings, app=app, backup=backup, migrations_dir=migrations_dir, migrations=migrations)


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_tarball(settings: Settings) -> None:
    """pgvector_tarball, when set: a readable file with the release's sha256."""
    tarball_path, release = settings.tarball, settings.release
    if tarball_path is None:
        return
    tarball = settings.tarball_text
    if not _is(tarball_path, Path.is_file):
        raise SettingsError(
            f"pgvector_tarball {tarball!r} does not exist on the control machine (relative paths start at "
            f"{Path.cwd()}). Fix: point it at the downloaded v{release.version}.tar.gz, or unset it to "
            "download from pgvector_url."
        )
    try:
        actual = sha256_of_file(tarball_path)
    except OSError as error:
        raise SettingsError(
            f"pgvector_tarball {tarball!r} cannot be read on the control machine ({error.strerror or error}). "
            "Fix: make it readable by the user running pyinfra, or unset it to download from pgvector_url."
        ) from None
    if actual != release.sha256:
        raise SettingsError(
            f"pgvector_tarball {tarball!r} has sha256 {actual}, expected {release.sha256} "
            f"for pgvector {release.version}. Fix: use the genuine tarball, or correct pgvector_sha256."
        )


def read_migrations(source: MigrationsSource | None) -> tuple[Path | None, tuple[Migration, ...]]:
    """The migration folder and its checked files; (None, ()) without an app, or when the
    default folder is missing or holds no migration."""
    if source is None:
        return None, ()
    folder, text = source.folder, source.text
    if not _is(folder, Path.is_dir):
        if source.explicit:
            raise SettingsError(
                f"pg_migrations_dir {text!r} is not a folder on the control machine (relative paths start at "
                f"{Path.cwd()}). Fix: create it, or correct the path."
            )
        return None, ()
    try:
        migrations = read_folder(folder)
    except MigrationError as error:
        raise SettingsError(f"pg_migrations_dir: in {folder}: {error}") from None
    except OSError as error:
        raise SettingsError(f"pg_migrations_dir: cannot read {folder} ({error}). Fix: make it readable.") from None
    return (folder, migrations) if migrations else (None, ())


def _is(path: Path, test: Callable[[Path], bool]) -> bool:
    """``path.is_file()`` or ``is_dir()``; an OS error (a name too long, no permission) is no."""
    try:
        return test(path)
    except OSError:
        return False


_SSM_FIX = (
    "Fix: check the AWS configuration on the control machine "
    "(AWS_REGION or the profile's region, credentials, permission ssm:GetParameter)."
)


@lru_cache(maxsize=None)
def _ssm_parameter(name: str, key: str = "pg_app_password_ssm") -> str:
    """A SecureString from SSM Parameter Store, decrypted (boto3's standard configuration)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    session = boto3.Session(region_name=aws_region_override())  # AWS_REGION, as the AWS CLI reads it
    try:
        response = session.client("ssm").get_parameter(Name=name, WithDecryption=True)
    except NoCredentialsError:
        raise SettingsError(
            f"{key}: no AWS credentials to read {name!r}. "
            "Fix: configure credentials (AWS_PROFILE, environment, or an instance role)."
        ) from None
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code == "ParameterNotFound":
            raise SettingsError(
                f"{key}: SSM parameter {name!r} does not exist (region "
                f"{session.region_name or 'unset'}). Fix: create it as a SecureString, "
                "or correct the name or AWS_REGION."
            ) from None
        raise SettingsError(f"{key}: reading {name!r} failed: {code or error}. {_SSM_FIX}") from None
    except BotoCoreError as error:
        raise SettingsError(f"{key}: reading {name!r} failed: {error}. {_SSM_FIX}") from None
    return response["Parameter"]["Value"]
