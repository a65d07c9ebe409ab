"""Every ``host.data`` key the toolkit reads, declared once with its default and meaning.

``SETTINGS`` is the single list; the README's table of data keys is checked against it by a
test. ``validate_settings`` checks a host's data, every value, and returns a ``Settings``;
a bad value raises ``SettingsError`` naming the key, the problem and the fix, before anything
runs on the host. Validation reads nothing but the host data (and the control machine's
environment variables a key names): no file, no AWS. What host data points at (the pgvector
tarball, SSM parameters, the migration folder) is read next, by ``loading.load``; until then
such a value is only named (``FromSsm``, ``MigrationsSource``, ``Settings.tarball``).

Example::

    >>> s = validate_settings({"pgvector_version": "0.8.6"})
    >>> s.release.version, s.optflags
    ('0.8.6', '')
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Network, ip_address, ip_network
from pathlib import Path
from typing import Any, Callable, Mapping

from .migration_files import Migration
from .platforms import KNOWN_MAJORS, POSTGRES_MAJOR
from .releases import NEWEST_RELEASE, Release, ReleaseError, SECURITY_FLOOR, choose_release


class SettingsError(ValueError):
    """A host data value we cannot use; the message names the key and the fix."""


@dataclass(frozen=True)
class Setting:
    key: str
    default: Any
    meaning: str


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "pg_major",
        POSTGRES_MAJOR,
        f"PostgreSQL major to install and build pgvector for ({', '.join(map(str, KNOWN_MAJORS))}), from the "
        "distribution or PGDG, whichever the platform has it from; one the platform lacks is refused, naming what it offers.",
    ),
    Setting(
        "pg_allow_second_major",
        False,
        "allow installing pg_major on a host where a cluster of another major already exists; that cluster is never "
        "touched, and must not use port 5432. False: such a host is refused.",
    ),
    Setting("pgvector_version", NEWEST_RELEASE, "pgvector release to compile on the host (X.Y.Z)."),
    Setting(
        "pgvector_sha256",
        None,
        "sha256 of the tarball; default: the pinned digest for pgvector_version. Required for a version with no pin.",
    ),
    Setting(
        "pgvector_url",
        None,
        "where the host downloads the tarball; default: the upstream GitHub tag tarball of pgvector_version.",
    ),
    Setting(
        "pgvector_tarball",
        None,
        "path on the control machine to the tarball; uploaded instead of downloaded (hosts without egress).",
    ),
    Setting(
        "pgvector_allow_insecure",
        False,
        f"allow versions below {SECURITY_FLOOR} (CVE-2026-3172); refused otherwise.",
    ),
    Setting(
        "pgvector_portable",
        True,
        'build with OPTFLAGS="" so the binary runs on any CPU of the architecture; False builds with -march=native.',
    ),
    Setting(
        "pg_docker_subnets",
        [],
        "extra client CIDRs the app role may connect from over TCP (scram-sha-256; hostssl, TLS only, unless the "
        "subnet is a Docker bridge found on the host), e.g. Compose networks not created yet or VPC ranges; "
        "docker0 and br-* bridges on the host are found automatically. pg_hba rules only: containers on any "
        "bridge reach PostgreSQL at the docker0 gateway.",
    ),
    Setting(
        "pg_listen_addresses",
        [],
        "extra IP addresses to listen on besides localhost and the docker0 gateway (e.g. the private IP), "
        "TLS only (ssl = on; write hostssl USER RULES for its clients); empty: no other interface.",
    ),
    Setting(
        "pg_ssl_cert_file",
        None,
        "absolute path on the host of the server certificate (PEM) for connections from beyond the host "
        "(pg_listen_addresses, pg_docker_subnets, hostssl rules); readable by postgres; unset: a self-signed "
        "one made on the host once, kept in the configuration directory.",
    ),
    Setting(
        "pg_ssl_key_file",
        None,
        "absolute path on the host of that certificate's private key (owner postgres and mode 0600, or root "
        "and 0640); set together with pg_ssl_cert_file.",
    ),
    Setting(
        "pg_ssl_ca_file",
        None,
        "absolute path of the CA certificate (PEM) that signed pg_ssl_cert_file, where clients find it: the "
        "connection strings printed and written for clients beyond the host then say sslmode=verify-full "
        "sslrootcert=<it> instead of sslmode=require. Needs pg_ssl_cert_file.",
    ),
    Setting(
        "pg_restart",
        "allowed",
        "allowed: a run restarts PostgreSQL when a restart-only setting it manages changed (shared_buffers, "
        "listen_addresses), with a roll-back if it does not come back; report: it never restarts, and says "
        "'restart pending: <setting>' (drift) instead. The nightly CLI uses report unless given --allow-restart.",
    ),
    Setting("pg_app_user", None, "login role for the app (lowercase identifier, not postgres or pg_*); unset: no app role."),
    Setting("pg_app_password", None, "the app role's password (prefer pg_app_password_env or pg_app_password_ssm)."),
    Setting("pg_app_password_env", None, "name of an environment variable on the control machine that holds the password."),
    Setting(
        "pg_app_password_ssm",
        None,
        "name of an AWS SSM Parameter Store SecureString that holds the password (read with boto3 on the control machine).",
    ),
    Setting("pg_app_database", None, "database owned by the app role, with vector enabled; default: the pg_app_user name."),
    Setting(
        "pg_app_createdb",
        False,
        "let the app role create databases (ORM shadow databases, e.g. Prisma migrate dev); they get vector from template1.",
    ),
    Setting(
        "pg_app_host",
        None,
        "host name or address app containers connect to, in the printed connection string and the env file; "
        "default: the Docker bridge gateway (172.17.0.1 on docker0). host.docker.internal needs "
        "--add-host host.docker.internal:host-gateway.",
    ),
    Setting(
        "pg_app_env_file",
        None,
        "absolute path on the host of an env file for the app's containers (DATABASE_URL, PGHOST, ..., "
        "PGPASSWORD; mode 0600 root:root), e.g. /etc/pgvector-deploy/app.env; unset: none is written.",
    ),
    Setting(
        "pg_migrations_dir",
        "files/migrations",
        "folder on the control machine (relative to where pyinfra runs) whose .sql files are applied to "
        "pg_app_database as the app role, in name order, each once; the default folder may be missing or empty, "
        "a folder you set must exist.",
    ),
    Setting(
        "pg_data_mount",
        None,
        "mount point of the volume that holds the cluster's data directory (e.g. /var/lib/postgresql on its own EBS "
        "volume): the host is refused, before anything changes, unless it is mounted and the data directory is under "
        "it; unset: no such check (a data directory or parent listed in /etc/fstab must still be mounted).",
    ),
    Setting("smoke_report_dir", "reports", "directory on the control machine for the smoke suite's JSON report per host."),
    Setting(
        "pg_tuning",
        True,
        "write the tuning include file (conf.d/80-pgvector-tuning.conf) sized from the host's memory and CPUs; "
        "False: none (an existing one is set aside as a .bak copy under /var/lib/pgvector-deploy/backups).",
    ),
    Setting("pg_shared_buffers", "auto", "PostgreSQL's own page cache (restart to change); auto: 25% of memory, at least 128MB."),
    Setting("pg_effective_cache_size", "auto", "the planner's estimate of memory caching data (allocates nothing); auto: 75% of memory."),
    Setting(
        "pg_maintenance_work_mem",
        "auto",
        "memory one index build may use; auto: room for the HNSW graph of pg_hnsw_expected_vectors x "
        "pg_hnsw_expected_dimensions, at least 64MB, at most 25% of memory and 80% of /dev/shm.",
    ),
    Setting(
        "pg_max_parallel_maintenance_workers",
        "auto",
        "extra processes one index build may use; auto: CPUs - 1, at most 8; 0 when /dev/shm is too small for a parallel build.",
    ),
    Setting(
        "pg_work_mem",
        "auto",
        "memory per sort or hash step of a query; auto: (memory - shared_buffers) / (4 x max_connections), within 4MB..256MB.",
    ),
    Setting("pg_hnsw_expected_vectors", 1_000_000, "rows in the largest HNSW index you expect to build (sizes maintenance_work_mem)."),
    Setting("pg_hnsw_expected_dimensions", 1536, "dimensions of those vectors (1536: OpenAI text-embedding-3-small)."),
    Setting(
        "pg_backup_s3_bucket",
        None,
        "S3 bucket for pgBackRest's repository (full and differential backups, and the WAL archived "
        "continuously); unset: no backups, no archiving.",
    ),
    Setting("pg_backup_s3_region", "us-east-1", "the bucket's AWS region (e.g. eu-west-1)."),
    Setting(
        "pg_backup_s3_prefix",
        None,
        "path in the bucket under which this host's repository lives; default: the host's name. A restore on "
        "another host names the source host's prefix.",
    ),
    Setting(
        "pg_backup_s3_endpoint",
        None,
        "S3 endpoint, host[:port], for S3-compatible servers (MinIO, a lab); default: s3.<region>.amazonaws.com. "
        "HTTPS always.",
    ),
    Setting(
        "pg_backup_s3_uri_style",
        None,
        "host (bucket.endpoint) or path (endpoint/bucket); default: host for AWS, path with pg_backup_s3_endpoint or a bucket name with dots (host style is refused for those).",
    ),
    Setting(
        "pg_backup_s3_ca_file",
        None,
        "absolute path on the host of the CA certificate (PEM) that signed the S3 endpoint's certificate "
        "(MinIO with a private CA); unset: the system's trusted CAs.",
    ),
    Setting(
        "pg_backup_cipher_pass",
        None,
        "passphrase that encrypts the repository (aes-256-cbc), at least 20 characters (prefer "
        "pg_backup_cipher_pass_env or pg_backup_cipher_pass_ssm); exactly one source is required with a bucket.",
    ),
    Setting(
        "pg_backup_cipher_pass_env",
        None,
        "name of an environment variable on the control machine that holds the repository passphrase.",
    ),
    Setting(
        "pg_backup_cipher_pass_ssm",
        None,
        "name of an SSM Parameter Store SecureString that holds the repository passphrase (boto3, control machine).",
    ),
    Setting(
        "pg_backup_s3_access_key_env",
        None,
        "name of an environment variable on the control machine holding a static AWS access key id, for hosts "
        "without an instance role; unset: the instance role (IMDSv2). Set with pg_backup_s3_secret_key_env.",
    ),
    Setting(
        "pg_backup_s3_secret_key_env",
        None,
        "name of an environment variable on the control machine holding that key's secret; both go into "
        "pgbackrest.conf (0600 postgres), on standard input only.",
    ),
    Setting("pg_backup_retention_full", 2, "full backups kept (with their differentials and the WAL they need), 1 to 100."),
    Setting(
        "pg_backup_retention_days",
        None,
        "keep full backups by age instead: every full backup younger than this many days (1 to 3650), and the "
        "newest older one; overrides pg_backup_retention_full.",
    ),
    Setting(
        "pg_backup_full_schedule",
        "Sun 01:00",
        "when the full backup runs: days (daily, or Mon..Sun, comma-separated) and HH:MM, host time; a systemd "
        "timer (a cron entry without systemd).",
    ),
    Setting(
        "pg_backup_diff_schedule",
        "Mon,Tue,Wed,Thu,Fri,Sat 01:00",
        "when the differential backup runs (same form as pg_backup_full_schedule); none: no differentials.",
    ),
    Setting(
        "pg_backup_drill_schedule",
        "Sat 04:00",
        "when the restore drill runs (same form); none: only when run by hand.",
    ),
    Setting(
        "pg_backup_drill_port",
        54329,
        "port of the drill's scratch server (sockets only, in its own directory; 1024 to 65535, not 5432).",
    ),
    Setting(
        "restore_target_time",
        None,
        "deploy/restore.py: the moment to restore to, ISO 8601 with a time zone (2026-12-01T12:00:00+00:00); "
        "unset: the latest state in the archive.",
    ),
    Setting(
        "restore_over_existing",
        False,
        "deploy/restore.py: restore over a cluster that holds databases of its own (its data directory is kept "
        "aside); refused otherwise, nothing changed.",
    ),
)

DEFAULTS = {setting.key: setting.default for setting in SETTINGS}


class Secret(str):
    """A string that never shows itself in reprs, logs or tracebacks."""

    def __repr__(self) -> str:
        return "Secret('***')"


@dataclass(frozen=True)
class FromSsm:
    """A secret still to be read from SSM Parameter Store (``loading.load`` reads it): the
    parameter's name, and the host-data key that named it."""

    name: str
    key: str

    def __str__(self) -> str:  # never text in a file or a command: loading.load reads it first
        raise TypeError(f"{self.key}: the SSM parameter {self.name!r} was used before loading.load read it")

    def __format__(self, spec: str) -> str:
        return str(self)


@dataclass(frozen=True)
class MigrationsSource:
    """The migration folder to read (``loading.load`` reads it): ``explicit`` when host data
    names it (pg_migrations_dir: it must exist), else the default folder (it may be missing)."""

    folder: Path
    text: str | None  # pg_migrations_dir as given, for messages
    explicit: bool


@dataclass(frozen=True)
class App:
    user: str
    database: str
    password: Secret | FromSsm  # FromSsm until loaded
    createdb: bool
    host: str | None = None  # what containers connect to; None: the Docker bridge gateway
    env_file: str | None = None  # absolute path on the host; None: no env file


@dataclass(frozen=True)
class TuningSettings:
    """The tuning keys: None means auto (sized from the host); sizes in MB."""

    enabled: bool = True
    shared_buffers_mb: int | None = None
    effective_cache_size_mb: int | None = None
    maintenance_work_mem_mb: int | None = None
    max_parallel_maintenance_workers: int | None = None
    work_mem_mb: int | None = None
    hnsw_vectors: int = 1_000_000
    hnsw_dimensions: int = 1536


@dataclass(frozen=True)
class ServerTls:
    """The server certificate from host data; no cert_file: a self-signed one made on the host."""

    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None  # for clients (sslrootcert); the server does not read it


@dataclass(frozen=True)
class Schedule:
    """A backup or drill time: ``days`` (systemd names, empty: daily) at ``hour``:``minute``."""

    days: tuple[str, ...]
    hour: int
    minute: int

    @property
    def on_calendar(self) -> str:
        """systemd.time(7): ``Sun *-*-* 01:00:00``."""
        days = ",".join(self.days)
        return f"{days + ' ' if days else ''}*-*-* {self.hour:02d}:{self.minute:02d}:00"

    @property
    def cron(self) -> str:
        """crontab(5)'s first five fields: ``0 1 * * 0``."""
        days = ",".join(str(WEEKDAYS.index(day)) for day in self.days) or "*"
        return f"{self.minute} {self.hour} * * {days}"


WEEKDAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")


@dataclass(frozen=True)
class Backup:
    """pgBackRest to S3 (``pg_backup_*``); None in ``Settings`` when no bucket is set."""

    bucket: str
    region: str
    prefix: str
    endpoint: str
    uri_style: str
    ca_file: str | None
    cipher_pass: Secret | FromSsm  # FromSsm until loaded
    access_key: tuple[Secret, Secret] | None  # (key id, secret); None: the instance role
    retention_full: int
    retention_days: int | None
    full: Schedule
    diff: Schedule | None
    drill: Schedule | None
    drill_port: int

    @property
    def port(self) -> int | None:
        """The endpoint's port, when it names one (pgBackRest's repo1-storage-port)."""
        host, _, port = self.endpoint.rpartition(":")
        return int(port) if host else None

    @property
    def host(self) -> str:
        return self.endpoint.rpartition(":")[0] or self.endpoint


@dataclass(frozen=True)
class Restore:
    """deploy/restore.py's keys."""

    target_time: datetime | None = None
    over_existing: bool = False


@dataclass(frozen=True)
class Settings:
    release: Release
    url: str
    tarball: Path | None  # read and checked by loading.load
    allow_insecure: bool
    portable: bool
    docker_subnets: tuple[IPv4Network, ...] = ()
    listen_addresses: tuple[str, ...] = ()
    app: App | None = None
    smoke_report_dir: Path = Path("reports")
    migrations_dir: Path | None = None  # None: no migrations (no app, or no default folder)
    migrations: tuple[Migration, ...] = ()  # read by loading.load from migrations_source
    migrations_source: MigrationsSource | None = None  # None: no app, so no migrations
    tuning: TuningSettings = TuningSettings()
    data_mount: str | None = None  # pg_data_mount: must be mounted before a cluster is made or adopted
    restart_allowed: bool = True  # pg_restart: allowed (True) or report (False)
    tls: ServerTls = ServerTls()
    major: int = POSTGRES_MAJOR  # pg_major
    allow_second_major: bool = False  # pg_allow_second_major
    backup: Backup | None = None  # pg_backup_s3_bucket unset: no backups
    restore: Restore = Restore()
    tarball_text: str | None = None  # pgvector_tarball as given, for loading's messages

    @property
    def version(self) -> str:
        return self.release.version

    @property
    def wants_tls(self) -> bool:
        """Host data opens PostgreSQL beyond the host (pg_listen_addresses, pg_docker_subnets,
        which may be VPC ranges), or names a certificate: the server gets ssl = on."""
        return bool(self.listen_addresses or self.docker_subnets or self.tls.cert_file)

    @property
    def optflags(self) -> str:
        # Upstream's Makefile defaults to -march=native on x86_64/aarch64, which can die with
        # "Illegal instruction" on another CPU model; empty OPTFLAGS builds portably.
        return "" if self.portable else "-march=native"


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{key}: {value!r} is not true or false. Fix: set {key} to True or False.")


def _quote_fix(key: str) -> str:
    # pyinfra's --data reads a bare number as an int (a password 0123 would become 123) and
    # true/false and JSON as such; quotes keep text text.
    return f"Fix: give {key} as a string: in quotes in the inventory, or --data '{key}=\"...\"' on the command line."


def _text(key: str, value: Any, paths: bool = False) -> str | None:
    """A text value with its surrounding spaces stripped; None (or only spaces): unset.
    Anything else (a list, a number, True) and any control character (a line break, NUL, tab)
    is refused naming the key: values reach config files, shell scripts and SQL. ``paths``:
    a ``pathlib.Path`` is text too (control-machine paths in a Python inventory)."""
    if value is None:
        return None
    if paths and isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise SettingsError(f"{key}: {value!r} is not text ({type(value).__name__}). {_quote_fix(key)}")
    if any(unicodedata.category(char) == "Cc" for char in value.strip(" ")):
        raise SettingsError(
            f"{key}: {value!r} contains a line break, tab, NUL or other control character. "
            f"Fix: give {key} without it (a value pasted or read from a file keeps its newline)."
        )
    return value.strip(" ") or None


def validate_settings(data: Mapping[str, Any] | Callable[[str], Any], host_name: str | None = None) -> Settings:
    """Validate a host's data (a mapping, or pyinfra's ``host.data``) into ``Settings``;
    ``host_name`` is the default ``pg_backup_s3_prefix``. Reads no file and asks no service:
    the tarball, SSM parameters and migration folder are read by ``loading.load``."""
    get = data.get if hasattr(data, "get") else data  # type: ignore[union-attr]

    def value(key: str) -> Any:
        found = get(key)  # type: ignore[operator]
        return DEFAULTS[key] if found is None else found

    allow_insecure = _as_bool("pgvector_allow_insecure", value("pgvector_allow_insecure"))
    portable = _as_bool("pgvector_portable", value("pgvector_portable"))
    try:
        release = choose_release(
            _text("pgvector_version", value("pgvector_version")) or "",
            _text("pgvector_sha256", value("pgvector_sha256")),
            allow_insecure,
        )
    except ReleaseError as error:
        raise SettingsError(str(error)) from None

    url = _text("pgvector_url", value("pgvector_url")) or release.url
    if not _URL.match(url):
        raise SettingsError(
            f"pgvector_url {url!r} is not an http(s) URL. Fix: give a full http:// or https:// URL "
            "(printable ASCII, no spaces, quotes, backslashes, $ or `: percent-encode them), "
            "or set pgvector_tarball to upload a file from the control machine."
        )

    tarball = _control_path("pgvector_tarball", value("pgvector_tarball"))
    tarball_path = None if tarball is None else Path(tarball).expanduser()  # read and checked by loading.load

    app = _app(value)
    migrations_source = _migrations(_control_path("pg_migrations_dir", get("pg_migrations_dir")), app)  # type: ignore[operator]
    return Settings(
        release=release,
        url=url,
        tarball=tarball_path,
        allow_insecure=allow_insecure,
        portable=portable,
        docker_subnets=_subnets(value("pg_docker_subnets")),
        listen_addresses=_addresses(value("pg_listen_addresses")),
        app=app,
        smoke_report_dir=Path(_control_path("smoke_report_dir", value("smoke_report_dir")) or DEFAULTS["smoke_report_dir"]).expanduser(),
        migrations_source=migrations_source,
        tuning=_tuning(value),
        data_mount=_data_mount(_text("pg_data_mount", value("pg_data_mount"))),
        restart_allowed=_restart_allowed(value("pg_restart")),
        tls=_tls(value),
        major=_major(value("pg_major")),
        allow_second_major=_as_bool("pg_allow_second_major", value("pg_allow_second_major")),
        backup=_backup(value, host_name),
        restore=_restore(value),
        tarball_text=tarball,
    )


# http(s) and the characters of RFC 3986 but for ' (and no $, `, \, spaces, quotes): the URL
# goes into a shell script (quoted) and into messages.
# The patterns here end in \Z, not $, which would also match before a final newline.
_URL = re.compile(r"^https?://[A-Za-z0-9._~:/?#\[\]@!&()*+,;=%-]{1,2040}\Z")
_MAX_PATH = 1023  # PostgreSQL's MAXPGPATH - 1, and plenty for any host path


def _control_path(key: str, value: Any) -> str | None:
    """A path on the control machine: text without control characters, not absurdly long."""
    text = _text(key, value, paths=True)
    if text is not None and len(text) > 4095:
        raise SettingsError(f"{key}: the path is {len(text)} characters long. Fix: give a path of at most 4095.")
    return text


def _major(value: Any) -> int:
    """A PostgreSQL major number (an int, or its ASCII digits as text); whether the host's
    platform offers it (and this toolkit knows it) is the preflight's to say, naming what
    that platform offers."""
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    else:
        text = _text("pg_major", value) if isinstance(value, str) else None
    if text is None or not re.match(r"[0-9]{1,3}\Z", text):
        raise SettingsError(
            f"pg_major: {value!r:.80} is not a PostgreSQL major number. Fix: set pg_major to one of "
            f"{', '.join(map(str, KNOWN_MAJORS))} (default {POSTGRES_MAJOR})."
        )
    return int(text)


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}\Z")
_PREFIX_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}\Z")
_SCHEDULE = re.compile(r"^(daily|[A-Z][a-z]{2}(,[A-Z][a-z]{2})*) ([01][0-9]|2[0-3]):([0-5][0-9])\Z")
MIN_CIPHER_PASS = 20


def _backup(value: Callable[[str], Any], host_name: str | None) -> Backup | None:
    """The ``pg_backup_*`` keys, each checked strictly: they go into pgbackrest.conf, systemd
    units and cron lines, so only the characters each needs are let through."""
    bucket = _text("pg_backup_s3_bucket", value("pg_backup_s3_bucket"))
    if bucket is None:
        return None
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise SettingsError(
            f"pg_backup_s3_bucket: {bucket!r} is not an S3 bucket name. Fix: 3 to 63 lowercase letters, digits, "
            "dots and hyphens, starting and ending with a letter or digit (e.g. acme-db-backups)."
        )
    region = _text("pg_backup_s3_region", value("pg_backup_s3_region")) or ""
    if not _REGION.match(region):
        raise SettingsError(f"pg_backup_s3_region: {region!r} is not an AWS region. Fix: give one such as eu-west-1.")
    endpoint = _endpoint(_text("pg_backup_s3_endpoint", value("pg_backup_s3_endpoint")), region)
    uri_style = _text("pg_backup_s3_uri_style", value("pg_backup_s3_uri_style"))
    if uri_style is None:
        # A dotted bucket's host name (a.b.s3.<region>.amazonaws.com) is not covered by S3's
        # wildcard certificate, so such a bucket is reached by path.
        own_endpoint = _text("pg_backup_s3_endpoint", value("pg_backup_s3_endpoint"))
        uri_style = "path" if own_endpoint or "." in bucket else "host"
    if uri_style not in ("host", "path"):
        raise SettingsError(f"pg_backup_s3_uri_style: {uri_style!r} is neither host nor path. Fix: give host or path.")
    if uri_style == "host" and "." in bucket:
        raise SettingsError(
            f"pg_backup_s3_uri_style: host cannot reach the bucket {bucket!r} over TLS: a bucket name with dots is not "
            "covered by S3's certificate. Fix: set pg_backup_s3_uri_style to path (or leave it unset)."
        )
    days = value("pg_backup_retention_days")
    return Backup(
        bucket=bucket,
        region=region,
        prefix=_prefix(_text("pg_backup_s3_prefix", value("pg_backup_s3_prefix")), host_name),
        endpoint=endpoint,
        uri_style=uri_style,
        ca_file=_host_file("pg_backup_s3_ca_file", _text("pg_backup_s3_ca_file", value("pg_backup_s3_ca_file"))),
        cipher_pass=_cipher_pass(value),
        access_key=_static_key(value),
        retention_full=_count("pg_backup_retention_full", value("pg_backup_retention_full"), 1, 100),  # type: ignore[arg-type]
        retention_days=None if days is None else _count("pg_backup_retention_days", days, 1, 3650),
        full=_schedule("pg_backup_full_schedule", value("pg_backup_full_schedule"), optional=False),  # type: ignore[arg-type]
        diff=_schedule("pg_backup_diff_schedule", value("pg_backup_diff_schedule")),
        drill=_schedule("pg_backup_drill_schedule", value("pg_backup_drill_schedule")),
        drill_port=_drill_port(value("pg_backup_drill_port")),
    )


def _endpoint(text: str | None, region: str) -> str:
    if text is None:
        # The China regions are a partition of their own, under amazonaws.com.cn.
        return f"s3.{region}.amazonaws.com" + (".cn" if region.startswith("cn-") else "")
    host, colon, port = text.rpartition(":")
    if not colon:
        host, port = text, ""
    fix = "Fix: give the endpoint as host or host:port, such as minio.internal:9000 or 10.0.0.5:443 (no https://)."
    try:
        address_ok = ip_address(host).version == 4
    except ValueError:
        address_ok = False
    name_ok = len(host) <= 253 and all(_HOST_LABEL.match(label) for label in host.split(".")) and not host.replace(".", "").isdigit()
    if not (address_ok or name_ok) or (colon and not (re.fullmatch(r"[0-9]{1,5}", port) and 1 <= int(port) <= 65535)):
        raise SettingsError(f"pg_backup_s3_endpoint: {text!r} is not a host or host:port. {fix}")
    return text


def _prefix(text: str | None, host_name: str | None) -> str:
    given = text if text is not None else host_name
    parts = (given or "").strip("/").split("/")
    if not given or not all(_PREFIX_PART.match(part) for part in parts) or any(part in (".", "..") for part in parts):
        if text is None:
            raise SettingsError(
                f"pg_backup_s3_prefix is unset and the host's name {host_name!r} cannot be a path in the bucket. "
                "Fix: set pg_backup_s3_prefix, such as db-1 or prod/db-1."
            )
        raise SettingsError(
            f"pg_backup_s3_prefix: {text!r} is not a plain path in the bucket. Fix: letters, digits, _ . - and "
            "/ between parts (no .., no spaces), such as prod/db-1."
        )
    return "/".join(parts)


def _schedule(key: str, value: Any, optional: bool = True) -> Schedule | None:
    text = _text(key, value) or ""
    if optional and text == "none":
        return None
    match = _SCHEDULE.match(text)
    days = () if match is None or match.group(1) == "daily" else tuple(match.group(1).split(","))
    if match is None or any(day not in WEEKDAYS for day in days) or len(set(days)) != len(days):
        none = " or none" if optional else ""
        raise SettingsError(
            f"{key}: {value!r} is not a schedule. Fix: give days and a time, such as 'Sun 01:00', "
            f"'Mon,Wed,Fri 02:30' or 'daily 01:00'{none} (days: {', '.join(WEEKDAYS)})."
        )
    return Schedule(days, int(match.group(3)), int(match.group(4)))


def _drill_port(value: Any) -> int:
    port = _count("pg_backup_drill_port", value, 1024, 65535)
    if port == 5432:
        raise SettingsError("pg_backup_drill_port: 5432 is the cluster's own port. Fix: give another, such as 54329.")
    return port  # type: ignore[return-value]


def _cipher_pass(value: Callable[[str], Any]) -> Secret:
    keys = ("pg_backup_cipher_pass", "pg_backup_cipher_pass_env", "pg_backup_cipher_pass_ssm")
    given = [key for key in keys if value(key) is not None]
    if len(given) != 1:
        raise SettingsError(
            f"pg_backup_s3_bucket is set, so exactly one repository passphrase source is needed; found "
            f"{given or 'none'}. Fix: set one of pg_backup_cipher_pass_env (an environment variable name), "
            "pg_backup_cipher_pass_ssm (an SSM parameter name) or pg_backup_cipher_pass. Keep the passphrase "
            "safe elsewhere too: without it no backup can be restored."
        )
    key = given[0]
    if not isinstance(value(key), str):
        # The value itself is never shown: for pg_backup_cipher_pass it is the secret.
        shown = "" if key == "pg_backup_cipher_pass" else f" {value(key)!r}"
        raise SettingsError(f"{key}:{shown} is not text ({type(value(key)).__name__}). {_quote_fix(key)}")
    text = value(key) if key == "pg_backup_cipher_pass" else (_text(key, value(key)) or "")
    if key == "pg_backup_cipher_pass_env":
        text = os.environ.get(text, "")
        if not text:
            raise SettingsError(
                f"pg_backup_cipher_pass_env: the environment variable {str(value(key)).strip()} is not set or empty on "
                "the control machine. Fix: export it before running pyinfra."
            )
    elif key == "pg_backup_cipher_pass_ssm":
        return FromSsm(text.strip(), key)
    return checked_cipher_pass(key, text)


def checked_cipher_pass(key: str, text: str) -> Secret:
    """The repository passphrase as given (or read from SSM by ``loading``), checked."""
    if len(text) < MIN_CIPHER_PASS or any(unicodedata.category(char) == "Cc" for char in text) or text != text.strip():
        raise SettingsError(
            f"{key}: the passphrase must be at least {MIN_CIPHER_PASS} characters, without control characters, line "
            "breaks or spaces at either end (it is one line of pgbackrest.conf). Fix: generate one, e.g. "
            "openssl rand -base64 48."
        )
    return Secret(text)


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
_ACCESS_KEY_ID = re.compile(r"^[A-Z0-9]{16,128}\Z")


def _static_key(value: Callable[[str], Any]) -> tuple[Secret, Secret] | None:
    """Static keys only when the user gives both explicitly (by environment variable name)."""
    names = {key: _text(key, value(key)) for key in ("pg_backup_s3_access_key_env", "pg_backup_s3_secret_key_env")}
    if not any(names.values()):
        return None
    if not all(names.values()):
        raise SettingsError(
            "pg_backup_s3_access_key_env and pg_backup_s3_secret_key_env go together. Fix: set both (a static key for "
            "a host without an instance role), or neither (the instance role, through IMDSv2)."
        )
    found = []
    for key, name in names.items():
        if not _ENV_NAME.match(name):  # type: ignore[arg-type]
            raise SettingsError(f"{key}: {name!r} is not an environment variable name. Fix: give one such as PGV_S3_KEY.")
        text = os.environ.get(name, "")  # type: ignore[arg-type]
        if not text:
            raise SettingsError(f"{key}: the environment variable {name} is not set or empty on the control machine. Fix: export it.")
        found.append(text)
    key_id, secret = found
    if not _ACCESS_KEY_ID.match(key_id) or len(secret) < 16 or any(c == " " or unicodedata.category(c) == "Cc" for c in secret):
        raise SettingsError(
            "pg_backup_s3_access_key_env / pg_backup_s3_secret_key_env: that is not an AWS access key (an id of capital "
            "letters and digits, a secret without spaces or control characters). Fix: export the key as AWS gave it."
        )
    return Secret(key_id), Secret(secret)


def _restore(value: Callable[[str], Any]) -> Restore:
    text = _text("restore_target_time", value("restore_target_time"))
    target = None
    if text is not None:
        try:
            target = datetime.fromisoformat(text)
        except ValueError:
            target = None
        if target is None or target.tzinfo is None:
            raise SettingsError(
                f"restore_target_time: {text!r} is not an ISO 8601 time with a time zone. Fix: give one such as "
                "2026-12-01T12:00:00+00:00 (or ...Z)."
            )
    return Restore(target_time=target, over_existing=_as_bool("restore_over_existing", value("restore_over_existing")))


def _data_mount(text: str | None) -> str | None:
    """An absolute, plain path (no ``.``/``..``, no trailing slash), not ``/`` itself."""
    if text is None:
        return None
    parts = text.rstrip("/").split("/")
    if text.rstrip("/") == "" or not _PLAIN_PATH.match(text.rstrip("/")) or any(part in ("", ".", "..") for part in parts[1:]):
        raise SettingsError(
            f"pg_data_mount: {text!r} is not the absolute path of a mount point. Fix: give the directory the data "
            "volume is mounted at, such as /var/lib/postgresql (not /; letters, digits, and . _ - @ +)."
        )
    return text.rstrip("/")


def _restart_allowed(value: Any) -> bool:
    text = value.strip() if isinstance(value, str) else value
    if text not in ("allowed", "report"):
        raise SettingsError(
            f"pg_restart: {value!r} is neither 'allowed' nor 'report'. Fix: give 'allowed' (a run may restart "
            "PostgreSQL) or 'report' (a needed restart is only reported)."
        )
    return text == "allowed"


_SIZE = re.compile(r"([0-9]+) *(kB|MB|GB|TB)?")
_SIZE_UNITS_MB = {"kB": 1 / 1024, "MB": 1, "GB": 1024, "TB": 1024 * 1024}

# The most PostgreSQL 15 accepts for each size the tuning file sets, in MB: shared_buffers and
# effective_cache_size count 8kB pages up to INT_MAX / 2 and INT_MAX, maintenance_work_mem and
# work_mem kB up to INT_MAX (postgres --describe-config; checked against it by test_tuning.py).
# Overrides beyond them are refused; computed values are clamped to them.
PG_MAX_MB = {
    "shared_buffers": 1073741823 * 8 // 1024,
    "effective_cache_size": 2147483647 * 8 // 1024,
    "maintenance_work_mem": 2147483647 // 1024,
    "work_mem": 2147483647 // 1024,
}


def _size_mb(key: str, value: Any) -> int | None:
    """'auto' -> None; 512 (MB), '512MB', '2GB' -> MB. PostgreSQL's units, case as it wants them,
    within what PostgreSQL accepts for the setting (``PG_MAX_MB``)."""
    text = value.strip() if isinstance(value, str) else value
    if text == "auto":
        return None
    match = _SIZE.fullmatch(text) if isinstance(text, str) else None
    if isinstance(text, int) and not isinstance(text, bool):
        size = text
    else:
        size = int(int(match.group(1)) * _SIZE_UNITS_MB[match.group(2) or "MB"]) if match else 0
    if size < 1:
        raise SettingsError(
            f"{key}: {value!r} is not a size of at least 1MB. Fix: give 'auto', a number of MB, "
            "or a PostgreSQL size such as '512MB' or '2GB' (units kB, MB, GB, TB as written)."
        )
    most = PG_MAX_MB[key.removeprefix("pg_")]
    if size > most:
        raise SettingsError(
            f"{key}: {value!r} is more than PostgreSQL accepts ({most}MB). Fix: give 'auto' or a smaller size."
        )
    return size


def _count(key: str, value: Any, low: int, high: int, auto: bool = False) -> int | None:
    if auto and isinstance(value, str) and value.strip() == "auto":
        return None
    text = str(value).strip() if isinstance(value, (str, int)) else ""
    # ASCII digits only: str.isdigit() is also true for '²', which int() refuses.
    if isinstance(value, bool) or not re.fullmatch(r"[0-9]{1,12}", text) or not low <= int(text) <= high:
        allowed = "'auto' or " if auto else ""
        raise SettingsError(f"{key}: {value!r} is not a whole number from {low} to {high}. Fix: give {allowed}such a number.")
    return int(text)


def _tuning(value: Callable[[str], Any]) -> TuningSettings:
    return TuningSettings(
        enabled=_as_bool("pg_tuning", value("pg_tuning")),
        shared_buffers_mb=_size_mb("pg_shared_buffers", value("pg_shared_buffers")),
        effective_cache_size_mb=_size_mb("pg_effective_cache_size", value("pg_effective_cache_size")),
        maintenance_work_mem_mb=_size_mb("pg_maintenance_work_mem", value("pg_maintenance_work_mem")),
        max_parallel_maintenance_workers=_count(
            "pg_max_parallel_maintenance_workers", value("pg_max_parallel_maintenance_workers"), 0, 64, auto=True
        ),
        work_mem_mb=_size_mb("pg_work_mem", value("pg_work_mem")),
        hnsw_vectors=_count("pg_hnsw_expected_vectors", value("pg_hnsw_expected_vectors"), 1, 10**10),  # type: ignore[arg-type]
        hnsw_dimensions=_count("pg_hnsw_expected_dimensions", value("pg_hnsw_expected_dimensions"), 1, 16000),  # type: ignore[arg-type]
    )


def _as_list(key: str, value: Any) -> list[str]:
    if isinstance(value, str):  # from --data key=a,b
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        return [str(part).strip() for part in value]
    raise SettingsError(f"{key}: {value!r} is not a list. Fix: give a list such as ['172.20.0.0/16'].")


def _subnets(value: Any) -> tuple[IPv4Network, ...]:
    subnets = []
    for text in _as_list("pg_docker_subnets", value):
        try:
            subnets.append(ip_network(text, strict=True))
        except ValueError as error:
            raise SettingsError(
                f"pg_docker_subnets: {text!r} is not a valid CIDR ({error}). "
                "Fix: use a network address with its prefix, such as 172.20.0.0/16."
            ) from None
        if subnets[-1].version != 4 or subnets[-1].prefixlen < 8:
            raise SettingsError(
                f"pg_docker_subnets: {text!r} is too broad or not IPv4. "
                "Fix: list the Docker networks themselves (IPv4, prefix /8 or longer)."
            )
    return tuple(subnets)


# What an address looks like once ipaddress has normalised it: digits, hex, dots and colons.
_PLAIN_ADDRESS = re.compile(r"^[0-9a-f.:]+\Z")


def _addresses(value: Any) -> tuple[str, ...]:
    addresses = []
    for text in _as_list("pg_listen_addresses", value):
        fix = "Fix: list addresses of this host, such as its private IP 10.0.1.10 ('*', 0.0.0.0 and :: are not accepted)."
        try:
            address = ip_address(text)
        except ValueError:
            raise SettingsError(f"pg_listen_addresses: {text!r} is not an IP address. {fix}") from None
        if address.is_unspecified:  # 0.0.0.0 and :: mean every interface, like '*'
            raise SettingsError(f"pg_listen_addresses: {text!r} means every interface. {fix}")
        if getattr(address, "scope_id", None) is not None or not _PLAIN_ADDRESS.match(str(address)):
            # ip_address accepts an IPv6 zone id ("fe80::1%eth0") whose text is anything,
            # quotes and line breaks included; PostgreSQL's listen_addresses takes none.
            raise SettingsError(f"pg_listen_addresses: {text!r} has a zone id (%...) or characters an address has not. {fix}")
        addresses.append(str(address))
    return tuple(addresses)


# Lowercase, unquoted SQL identifiers only: no quoting surprises in SQL, shell or URLs.
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}\Z")
_RESERVED_ROLES = ("postgres", "public")
# PostgreSQL 15's keywords that are not "unreserved" (pg_get_keywords() catcode R, T or C; the
# list is checked against the real server by test_hostile_host_data.py): unquoted in CREATE
# ROLE or CREATE DATABASE they are a syntax error or mean something else, and "all" in a
# pg_hba.conf user column means every role.
SQL_KEYWORDS = frozenset(
    """all analyse analyze and any array as asc asymmetric authorization between bigint binary bit boolean both
    case cast char character check coalesce collate collation column concurrently constraint create cross
    current_catalog current_date current_role current_schema current_time current_timestamp current_user dec
    decimal default deferrable desc distinct do else end except exists extract false fetch float for foreign
    freeze from full grant greatest group grouping having ilike in initially inner inout int integer intersect
    interval into is isnull join lateral leading least left like limit localtime localtimestamp national natural
    nchar none normalize not notnull null nullif numeric offset on only or order out outer overlaps overlay
    placing position precision primary real references returning right row select session_user setof similar
    smallint some substring symmetric table tablesample then time timestamp to trailing treat trim true union
    unique user using values varchar variadic verbose when where window with xmlattributes xmlconcat xmlelement
    xmlexists xmlforest xmlnamespaces xmlparse xmlpi xmlroot xmlserialize xmltable""".split()
)


def _identifier(key: str, text: str) -> str:
    if not _IDENTIFIER.match(text):
        raise SettingsError(
            f"{key}: {text!r} is not a valid name. Fix: use lowercase letters, digits and _, "
            "starting with a letter or _, at most 63 characters (e.g. app or my_app)."
        )
    if text in SQL_KEYWORDS:
        raise SettingsError(
            f"{key}: {text!r} is an SQL keyword PostgreSQL does not take as a plain name. "
            "Fix: choose another name, such as app or my_app."
        )
    return text


def _app(value: Callable[[str], Any]) -> App | None:
    user = _text("pg_app_user", value("pg_app_user"))
    if user is None:
        return None
    _identifier("pg_app_user", user)
    if user in _RESERVED_ROLES or user.startswith("pg_"):
        raise SettingsError(
            f"pg_app_user: {user!r} is reserved (the superuser, or PostgreSQL's pg_ prefix). "
            "Fix: give the app its own role name, such as app."
        )
    database = _identifier("pg_app_database", _text("pg_app_database", value("pg_app_database")) or user)
    if database in ("postgres", "template0", "template1"):
        raise SettingsError(f"pg_app_database: {database!r} is a system database. Fix: name the app's own database.")
    return App(
        user=user,
        database=database,
        password=_password(value),
        createdb=_as_bool("pg_app_createdb", value("pg_app_createdb")),
        host=_app_host(_text("pg_app_host", value("pg_app_host"))),
        env_file=_env_file(_text("pg_app_env_file", value("pg_app_env_file"))),
    )


_HOST_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


def _app_host(text: str | None) -> str | None:
    if text is None:
        return None
    fix = "Fix: give an IPv4 address or a host name, such as 172.17.0.1 or host.docker.internal."
    try:
        address = ip_address(text)
    except ValueError:
        labels = text.split(".")
        if len(text) > 253 or not all(_HOST_LABEL.match(label) for label in labels) or text.replace(".", "").isdigit():
            raise SettingsError(f"pg_app_host: {text!r} is not a host name or IPv4 address. {fix}") from None
        return text
    if address.version != 4 or address.is_unspecified:
        raise SettingsError(f"pg_app_host: {text!r} is not an address containers can connect to. {fix}")
    return str(address)


# A plain absolute path: it goes into postgresql.conf between single quotes, shell scripts, URLs.
_PLAIN_PATH = re.compile(r"^(/[A-Za-z0-9_.@+-]+)+\Z")
_ENV_FILE = _PLAIN_PATH


def _env_file(text: str | None) -> str | None:
    if text is None:
        return None
    parts = text.split("/")
    special = text.startswith(("/proc/", "/sys/", "/dev/"))
    if len(text) > _MAX_PATH or not _ENV_FILE.match(text) or any(part in (".", "..") for part in parts) or special:
        raise SettingsError(
            f"pg_app_env_file: {text!r} is not an absolute path we can write safely. Fix: give a plain absolute "
            "path such as /etc/pgvector-deploy/app.env (letters, digits, and . _ - @ +)."
        )
    return text


def _tls(value: Callable[[str], Any]) -> ServerTls:
    names = ("pg_ssl_cert_file", "pg_ssl_key_file", "pg_ssl_ca_file")
    cert, key, ca = (_host_file(name, _text(name, value(name))) for name in names)
    if (cert is None) != (key is None):
        raise SettingsError(
            f"pg_ssl_cert_file and pg_ssl_key_file go together; only {'pg_ssl_cert_file' if cert else 'pg_ssl_key_file'} "
            "is set. Fix: set both (the certificate and its private key), or neither for a self-signed certificate."
        )
    if ca is not None and cert is None:
        raise SettingsError(
            "pg_ssl_ca_file is set but pg_ssl_cert_file is not: a self-signed certificate has no CA to verify it "
            "with. Fix: set pg_ssl_cert_file and pg_ssl_key_file to a certificate that CA signed, or unset pg_ssl_ca_file."
        )
    return ServerTls(cert_file=cert, key_file=key, ca_file=ca)


def _host_file(key: str, text: str | None) -> str | None:
    """A plain absolute path (it goes into postgresql.conf between single quotes)."""
    if text is None:
        return None
    if len(text) > _MAX_PATH or not _PLAIN_PATH.match(text) or any(part in (".", "..") for part in text.split("/")):
        raise SettingsError(
            f"{key}: {text!r} is not a plain absolute path. Fix: give a path on the host such as "
            "/etc/ssl/pgvector/server.pem (letters, digits, and . _ - @ +)."
        )
    return text


def _migrations(text: str | None, app: App | None) -> MigrationsSource | None:
    """The migration folder to read (``loading.load`` reads it and checks its files). The
    default folder may be missing or empty; a folder set in host data must exist. Without an
    app there is no database to migrate. The default's own value is the default (the packaged
    deploy gives it as pyinfra data)."""
    explicit = text is not None and text != DEFAULTS["pg_migrations_dir"]
    if app is None:
        if explicit:
            raise SettingsError(
                f"pg_migrations_dir is set ({text!r}) but pg_app_user is not: migrations run in the app's "
                "database as the app role. Fix: set pg_app_user (and its password), or unset pg_migrations_dir."
            )
        return None
    folder = Path(text if explicit else DEFAULTS["pg_migrations_dir"]).expanduser()  # type: ignore[arg-type]
    return MigrationsSource(folder, text if explicit else None, explicit)


def _password(value: Callable[[str], Any]) -> Secret:
    sources = {key: value(key) for key in ("pg_app_password", "pg_app_password_env", "pg_app_password_ssm")}
    given = [key for key, found in sources.items() if found is not None]
    if len(given) != 1:
        raise SettingsError(
            f"pg_app_user is set, so exactly one password source is needed; found {given or 'none'}. "
            "Fix: set one of pg_app_password_env (an environment variable name), pg_app_password_ssm "
            "(an SSM parameter name) or pg_app_password."
        )
    key = given[0]
    if not isinstance(sources[key], str):  # the value itself is never shown: it may be the password
        raise SettingsError(f"{key} is not text ({type(sources[key]).__name__}). {_quote_fix(key)}")
    if key == "pg_app_password":
        password = sources[key]
    elif not sources[key].strip():
        raise SettingsError(f"{key} is empty. Fix: give the name of the variable or parameter that holds the password.")
    elif key == "pg_app_password_env":
        name = _text(key, sources[key]) or ""
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", name):
            raise SettingsError(
                f"pg_app_password_env: {name!r} is not an environment variable name. Fix: give the variable's "
                "name (letters, digits and _), such as APP_DB_PASSWORD, not its value."
            )
        password = os.environ.get(name, "")
        if not password:
            raise SettingsError(
                f"pg_app_password_env: the environment variable {name} is not set or empty on the control "
                f"machine. Fix: export {name}=... before running pyinfra."
            )
    else:
        name = _text(key, sources[key]) or ""
        if not re.fullmatch(r"[A-Za-z0-9_.\-/]{1,2048}", name):
            raise SettingsError(
                f"pg_app_password_ssm: {name!r} is not an SSM parameter name. Fix: give the parameter's name "
                "(letters, digits and _ . - /), such as /prod/app/db-password."
            )
        return FromSsm(name, key)
    return checked_password(key, password)


def checked_password(key: str, password: str) -> Secret:
    """The app role's password as given (or read from SSM by ``loading``), checked."""
    if not password:
        raise SettingsError(f"{key}: the password is empty. Fix: give the app role a non-empty password.")
    if any(char in password for char in "\r\n\0"):
        # A SecureString stored from a file keeps its last line break; libpq and env files
        # cannot carry one. Refused (for this host) rather than stripped: a stripped password
        # would silently differ from the one the app's other clients were given.
        raise SettingsError(
            f"{key}: the password contains a line break or NUL (an SSM value or variable set from a file "
            "keeps the file's last newline). Fix: store the password without it (e.g. aws ssm put-parameter "
            "--value \"$(tr -d '\\n' < file)\"), or choose one without control characters."
        )
    return Secret(password)
