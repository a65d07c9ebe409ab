"""Hostile host data: every key declared in ``settings.SETTINGS`` is fed quotes, line breaks, NUL,
backslashes, ``#``, ``$(...)``, backticks, an IPv6 zone id with a setting behind it, very long
and non-ASCII text, surrounding spaces and wrong types (list, dict, bool, numbers, bytes).

For each key and each value, ``load_settings`` either

- refuses it with a ``SettingsError`` whose message names the key and says ``Fix:`` (never
  another exception: that would be a traceback), or
- accepts it; then every file rendered from those settings holds exactly the settings meant
  (``check_rendered``): the settings include file and the tuning file parse, strictly here and
  by the real PostgreSQL (``pg_file_settings``), as exactly the intended names and values;
  pg_hba.conf has exactly the intended records (here and ``pg_hba_file_rules``); the app's env
  file has exactly its variables, and reads back the password; every value that reaches shell
  scripts, SQL or URLs is in its strict form; the scripts built from them pass ``sh -n``.

A bad value is refused for its host alone: ``test_a_bad_value_refuses_its_host_and_the_others_run``
runs pyinfra itself (its @fake connector) with three hosts, one of them hostile.

Adding a host data key: ``test_every_declared_key_has_a_hostile_case`` fails until ``KEYS``
has an entry for it, ``"pg_new_key": Case(valid=<a good value>, needs={<other keys it needs to
matter, e.g. **APP>})``; the generic hostile values (``hostile_values``) are then fed to it,
alone, appended to the valid value, and as wrong types. Key-specific ones go in
``Case(extra=[...])``. If the new key reaches a new rendered file or script, add that file's
check to ``check_rendered`` (and its values to ``host_bound``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import tempfile
import unicodedata
from dataclasses import dataclass, field
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from pgvector_deploy import appenv, loading, managed_files, networking, pgvector, preflight, tuning
from pgvector_deploy.facts import Bridge, certificate_paths, parse_host_profile, settings_path
from pgvector_deploy.loading import load_settings
from pgvector_deploy.plan import Plan
from pgvector_deploy.platforms import PLATFORMS, UnsupportedHost
from pgvector_deploy.settings import SETTINGS, SQL_KEYWORDS, SettingsError

from .conftest import recorded_lines, sh_syntax_error, skip_or_fail, throwaway_psql, throwaway_server, throwaway_server_missing

# Files the valid values point at, kept for the module's life (removed at exit).
_FILES = tempfile.TemporaryDirectory(prefix="pgvd-hostile-")
TARBALL = Path(_FILES.name, "v0.9.0.tar.gz")
TARBALL.write_bytes(b"bytes with a known digest\n")
TARBALL_SHA = hashlib.sha256(TARBALL.read_bytes()).hexdigest()
MIGRATIONS = Path(_FILES.name, "migrations")
MIGRATIONS.mkdir()
PASSWORD_ENV = "PGVD_HOSTILE_TEST_PASSWORD"

APP = {"pg_app_user": "app", "pg_app_password": "pw-ok"}
CIPHER = "a-long-enough-passphrase-0123"
CIPHER_ENV, KEY_ENV, SECRET_ENV = "PGVD_HOSTILE_CIPHER", "PGVD_HOSTILE_KEY", "PGVD_HOSTILE_SECRET"
BACKUP = {"pg_backup_s3_bucket": "acme-db-backups", "pg_backup_cipher_pass": CIPHER, "pg_backup_s3_prefix": "db-1"}
TLS = {"pg_ssl_cert_file": "/etc/ssl/pgv/server.pem", "pg_ssl_key_file": "/etc/ssl/pgv/server.key"}


@dataclass(frozen=True)
class Case:
    valid: Any  # a value the key accepts
    needs: dict = field(default_factory=dict)  # other host data the key needs to matter
    extra: tuple = ()  # hostile values only this key gets
    accepts: tuple = ()  # the types a value may have; default: the valid value's (bool never counts as int)

    def takes(self, value: Any) -> bool:
        types = self.accepts or (type(self.valid),)
        return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


KEYS: dict[str, Case] = {
    "pgvector_version": Case("0.8.6", extra=("0.8.6٣", "v0.8.6", "0.8")),
    "pgvector_sha256": Case("10bf9938906e5d643bbc4a7eea104b6f57ba4898e5b76b20e60484ea1d5a7f8f", {"pgvector_version": "0.8.6"}),
    "pgvector_url": Case(
        "https://example.com/pgvector/v0.8.6.tar.gz",
        extra=("https://example.com/a b", "https://example.com/'$(id)'", "file:///etc/passwd", "https://é.example/x"),
    ),
    "pgvector_tarball": Case(str(TARBALL), {"pgvector_version": "0.9.0", "pgvector_sha256": TARBALL_SHA}, (TARBALL,), (str, Path)),
    "pgvector_allow_insecure": Case(True, {"pgvector_version": "0.7.4"}, accepts=(bool, str, int)),
    "pgvector_portable": Case(False, accepts=(bool, str, int)),
    "pg_docker_subnets": Case(["172.20.0.0/16"], APP, (["172.20.0.0/16 trust"], "172.20.0.0/16,all"), (list, str)),
    "pg_listen_addresses": Case(
        ["10.0.1.10"], APP, ("fe80::1%eth0'\nshared_preload_libraries = 'evil", ["fe80::1%eth0"], ["*"], ["::"]), (list, str)
    ),
    "pg_ssl_cert_file": Case(TLS["pg_ssl_cert_file"], {"pg_ssl_key_file": TLS["pg_ssl_key_file"], "pg_listen_addresses": ["10.0.1.10"]}),
    "pg_ssl_key_file": Case(TLS["pg_ssl_key_file"], {"pg_ssl_cert_file": TLS["pg_ssl_cert_file"], "pg_listen_addresses": ["10.0.1.10"]}),
    "pg_ssl_ca_file": Case("/etc/ssl/pgv/ca.pem", {**APP, **TLS, "pg_listen_addresses": ["10.0.1.10"], "pg_app_host": "10.0.1.10"}),
    "pg_restart": Case("report"),
    "pg_major": Case(17, extra=("17.0", "１７", "¹⁷", "0x11", "+17", 14, 99, 999), accepts=(str, int)),
    "pg_allow_second_major": Case(True, {"pg_major": 17}, accepts=(bool, str, int)),
    "pg_app_user": Case("app", {"pg_app_password": "pw-ok"}, extra=("all", "user", "public", "postgres", "pg_x", "sameuser", "App")),
    "pg_app_password": Case("pw-ok", {"pg_app_user": "app"}, extra=("it's", "\\'", "a\\", "p@ss:w/rd?#%", "x" * 100_000)),
    "pg_app_password_env": Case(PASSWORD_ENV, {"pg_app_user": "app"}),
    "pg_app_password_ssm": Case("/pgvd/app-password", {"pg_app_user": "app"}),
    "pg_app_database": Case("vectors", APP, extra=("all", "left", "template1", "replication")),
    "pg_app_createdb": Case(True, APP, accepts=(bool, str, int)),
    "pg_app_host": Case("host.docker.internal", APP, extra=("10.0.1.10:5432", "::1", "-x", "a..b")),
    "pg_app_env_file": Case("/etc/pgvector-deploy/app.env", APP, extra=("/etc/../root/x", "/proc/self/x", "relative.env")),
    "pg_migrations_dir": Case(str(MIGRATIONS), APP, (MIGRATIONS,), (str, Path)),
    "pg_data_mount": Case("/var/lib/postgresql", extra=("/", "//", "/var/lib/../x")),
    "smoke_report_dir": Case("reports", accepts=(str, Path)),
    "pg_tuning": Case(True, accepts=(bool, str, int)),
    "pg_shared_buffers": Case("2GB", extra=("2gb", "9TB", "-1MB", "1e3MB"), accepts=(str, int)),
    "pg_effective_cache_size": Case("18GB", extra=("17TB",), accepts=(str, int)),
    "pg_maintenance_work_mem": Case("1GB", extra=("3TB",), accepts=(str, int)),
    "pg_max_parallel_maintenance_workers": Case("2", extra=("65", "1025"), accepts=(str, int)),
    "pg_work_mem": Case("64MB", extra=("2097152MB",), accepts=(str, int)),
    "pg_hnsw_expected_vectors": Case(1000, extra=(10**11,), accepts=(str, int)),
    "pg_hnsw_expected_dimensions": Case(768, extra=(16001,), accepts=(str, int)),
    # Backups (pgbackrest.conf lines, systemd units, cron lines, shell): see check_rendered.
    "pg_backup_s3_bucket": Case("acme-db-backups", {"pg_backup_cipher_pass": CIPHER, "pg_backup_s3_prefix": "db-1"},
                                extra=("Acme", "a..b", "-ab", "ab")),
    "pg_backup_s3_region": Case("eu-west-1", {**BACKUP}, extra=("eu-west-1a", "EU-WEST-1")),
    "pg_backup_s3_prefix": Case("prod/db-1", {"pg_backup_s3_bucket": "acme-db-backups", "pg_backup_cipher_pass": CIPHER},
                                extra=("../x", "a//b", "/", "a/./b")),
    "pg_backup_s3_endpoint": Case("minio.internal:9000", {**BACKUP}, extra=("https://x", "x:0", "x:99999", "x:٣", "x:")),
    "pg_backup_s3_uri_style": Case("path", {**BACKUP}),
    "pg_backup_s3_ca_file": Case("/etc/ssl/minio-ca.pem", {**BACKUP}),
    "pg_backup_cipher_pass": Case(CIPHER, {"pg_backup_s3_bucket": "acme-db-backups", "pg_backup_s3_prefix": "db-1"}),
    "pg_backup_cipher_pass_env": Case(CIPHER_ENV, {"pg_backup_s3_bucket": "acme-db-backups", "pg_backup_s3_prefix": "db-1"}),
    "pg_backup_cipher_pass_ssm": Case("/pgvd/backup-pass", {"pg_backup_s3_bucket": "acme-db-backups", "pg_backup_s3_prefix": "db-1"}),
    "pg_backup_s3_access_key_env": Case(KEY_ENV, {**BACKUP, "pg_backup_s3_secret_key_env": SECRET_ENV}),
    "pg_backup_s3_secret_key_env": Case(SECRET_ENV, {**BACKUP, "pg_backup_s3_access_key_env": KEY_ENV}),
    "pg_backup_retention_full": Case(3, {**BACKUP}, extra=(101,), accepts=(str, int)),
    "pg_backup_retention_days": Case(14, {**BACKUP}, extra=(3651,), accepts=(str, int)),
    "pg_backup_full_schedule": Case("Sun 01:00", {**BACKUP}, extra=("Sun 1:00", "Sun *-*-* 01:00:00", "Dim 01:00")),
    "pg_backup_diff_schedule": Case("daily 02:30", {**BACKUP}),
    "pg_backup_drill_schedule": Case("Sat 04:00", {**BACKUP}),
    "pg_backup_drill_port": Case(54329, {**BACKUP}, extra=(5432, 80), accepts=(str, int)),
    "restore_target_time": Case("2026-12-01T12:00:00+00:00", extra=("2026-12-01T12:00:00",)),
    "restore_over_existing": Case(True, accepts=(bool, str, int)),
}

# Texts that break out of a quoted value, a line, a token or a shell word somewhere.
ATTACKS = (
    "'", '"', "\n", "\r\n", "\r", "\0", "\t", "\\", "#", ",", ";", " ", "$(touch /tmp/pgvd-pwned)", "`touch /tmp/pgvd-pwned`",
    "%eth0'\nshared_preload_libraries = 'evil", "'\nshared_preload_libraries = 'evil'\n#",
    "\nhost all all 0.0.0.0/0 trust", " all", "\\'", "é", "\u202e", "٣", "²", "\x7f",
)  # fmt: skip
WRONG_TYPES = ([], {}, {"value": 1}, True, False, 0, -1, 1.5, b"bytes")


def hostile_values(case: Case) -> list:
    """The generic hostile values for a key with this valid value, then its own."""
    texts = [*ATTACKS, "x" * 5000, "", " "]
    values: list = []
    if isinstance(case.valid, list):
        values += [[*case.valid, text] for text in texts] + [case.valid[0] + text for text in texts]
        values += [[None], [["10.0.0.1"]], [{"a": 1}], [case.valid[0]] * 2]
    else:
        text = str(case.valid)
        values += texts + [text + attack for attack in texts] + [attack + text for attack in ("'", "\n", "-", "$(id)")]
        values += [f"  {text}  ", text * 200, [case.valid], {"value": case.valid}]
    return values + list(WRONG_TYPES) + list(case.extra)


def test_every_declared_key_has_a_hostile_case():
    declared = [setting.key for setting in SETTINGS]
    missing = [key for key in declared if key not in KEYS]
    assert not missing, f"no hostile case for {missing}: add KEYS[key] = Case(valid=..., needs=...) (see this module's docstring)"
    assert set(KEYS) <= set(declared), f"hostile cases for undeclared keys: {set(KEYS) - set(declared)}"


@pytest.fixture(autouse=True)
def password_sources(monkeypatch):
    """The password keys' sources: an environment variable, and SSM (no AWS here)."""
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    monkeypatch.setenv(CIPHER_ENV, "from-env-" + CIPHER)
    monkeypatch.setenv(KEY_ENV, "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv(SECRET_ENV, "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    monkeypatch.setattr(loading, "_ssm_parameter", lambda name, key="pg_app_password_ssm": "from-ssm" + ("-" + CIPHER if key != "pg_app_password_ssm" else ""))


# --- what the rendered files say ------------------------------------------------------------------

PLATFORM = next(p for p in PLATFORMS if p.key == "debian-12")
BRIDGES = [Bridge("docker0", IPv4Interface("172.17.0.1/16"))]
PROFILE = parse_host_profile(recorded_lines("provisioned", "host-profile"))  # the recorded Debian 12 host
_CONF_LINE = re.compile(r"^([a-z_]+) = (?:'((?:[^'\\\n\r\0]|'')*)'|([a-z0-9]+))$")  # quoted, or a bare word (ssl = on)


def conf_settings(text: str) -> list[tuple[str, str]]:
    """A config file of ours, parsed strictly: every line a comment, blank, or ``name = 'value'``."""
    found = []
    for line in text.split("\n"):
        if line == "" or line.startswith("#"):
            continue
        match = _CONF_LINE.match(line)
        assert match, f"not a setting line: {line!r}"
        quoted, bare = match.group(2), match.group(3)
        found.append((match.group(1), bare if quoted is None else quoted.replace("''", "'")))
    return found


def hba_records(text: str) -> list[list[str]]:
    return [fields for fields in (networking.hba_fields(line) for line in text.split("\n")) if fields]


def env_variables(text: str) -> dict[str, str]:
    """The env file as Compose reads it: NAME=value, single quotes literal but for \\'."""
    found: dict[str, str] = {}
    for line in text.split("\n"):
        if line == "" or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_]+", name) and name not in found, f"bad env line: {line!r}"
        if value.startswith("'"):
            assert value.endswith("'") and len(value) >= 2, line
            value = value[1:-1].replace("\\'", "'")
        found[name] = value
    return found


# What PostgreSQL 15's pg_hba.conf reads as keywords, not names, in the database and user columns.
HBA_KEYWORDS = ("all", "sameuser", "samerole", "samegroup", "replication")
PLAIN_PATH = re.compile(r"^(/[A-Za-z0-9_.@+-]+)+$")
URL = re.compile(r"^https?://[A-Za-z0-9._~:/?#\[\]@!&()*+,;=%-]+$")


def host_bound(s) -> list[tuple[str, str, re.Pattern]]:
    """Every host data value that reaches a shell script, SQL, a URL or a config file, with the
    strict form it must have there."""
    strict = [
        ("pgvector_version", s.version, re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+$")),
        ("pgvector_sha256", s.release.sha256, re.compile(r"^[0-9a-f]{64}$")),
        ("pgvector_url", s.url, URL),
        *(("pg_listen_addresses", address, re.compile(r"^[0-9a-f.:]+$")) for address in s.listen_addresses),
        *(("pg_docker_subnets", str(subnet), re.compile(r"^[0-9./]+$")) for subnet in s.docker_subnets),
        *((name, path, PLAIN_PATH) for name, path in (("pg_ssl_cert_file", s.tls.cert_file), ("pg_ssl_key_file", s.tls.key_file),
                                                      ("pg_ssl_ca_file", s.tls.ca_file), ("pg_data_mount", s.data_mount)) if path),
    ]  # fmt: skip
    if s.backup:
        b = s.backup
        strict += [
            ("pg_backup_s3_bucket", b.bucket, re.compile(r"^[a-z0-9.-]{3,63}$")),
            ("pg_backup_s3_region", b.region, re.compile(r"^[a-z0-9-]+$")),
            ("pg_backup_s3_prefix", b.prefix, re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")),
            ("pg_backup_s3_endpoint", b.endpoint, re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$")),
            ("pg_backup_s3_uri_style", b.uri_style, re.compile(r"^(host|path)$")),
        ]
        strict += [("pg_backup_s3_ca_file", b.ca_file, PLAIN_PATH)] if b.ca_file else []
    if s.app:
        name = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
        strict += [("pg_app_user", s.app.user, name), ("pg_app_database", s.app.database, name)]
        strict += [("pg_app_host", s.app.host, re.compile(r"^[A-Za-z0-9.-]{1,253}$"))] if s.app.host else []
        strict += [("pg_app_env_file", s.app.env_file, PLAIN_PATH)] if s.app.env_file else []
    return strict


class RealReader:
    """The real PostgreSQL's reading of our files: ``pg_file_settings`` of a file included by a
    throwaway server's postgresql.conf, ``pg_hba_file_rules`` of its pg_hba.conf (written, never
    reloaded: the server keeps the trust rules it started with). Same texts are read once."""

    def __init__(self, base: Path):
        self.base, self.psql, self.seen = base, throwaway_psql(base), set()
        self.probe = base / "probe.conf"
        with open(base / "data" / "postgresql.conf", "a") as conf:
            conf.write(f"\ninclude_if_exists = '{self.probe}'\n")

    def settings(self, text: str) -> list[tuple[str, str]] | None:
        if ("conf", text) in self.seen:
            return None
        self.seen.add(("conf", text))
        self.probe.write_text(text)
        rows = json.loads(self.psql(
            "SELECT coalesce(json_agg(json_build_array(name, setting, error) ORDER BY seqno), '[]') "
            f"FROM pg_catalog.pg_file_settings WHERE sourcefile IS DISTINCT FROM '{self.base}/data/postgresql.conf'"
        ))  # fmt: skip
        assert [error for _, _, error in rows if error not in (None, "setting could not be applied")] == []
        return [(name, setting) for name, setting, _ in rows]

    def hba(self, text: str) -> list[list] | None:
        if ("hba", text) in self.seen:
            return None
        self.seen.add(("hba", text))
        (self.base / "data" / "pg_hba.conf").write_text(text)
        rows = json.loads(self.psql(
            "SELECT coalesce(json_agg(json_build_array(type, database, user_name, address, auth_method, error) "
            "ORDER BY line_number), '[]') FROM pg_catalog.pg_hba_file_rules"
        ))  # fmt: skip
        # This server has ssl off (the deploy turns it on for hostssl rules): that error only.
        assert [row for row in rows if row[-1] not in (None, "hostssl record cannot match because SSL is disabled")] == []
        return [row[:-1] for row in rows]


@pytest.fixture(scope="module")
def real():
    """A RealReader, or None where no throwaway PostgreSQL can run (the strict parse still runs;
    under CI=true that fails instead)."""
    missing = throwaway_server_missing()
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"cannot run under CI: {missing}")
        yield None
        return
    with throwaway_server("pgvd-hostile-") as base:
        yield RealReader(base)


_SH_CHECKED: dict[str, str] = {}


def sh_ok(script: str) -> bool:
    """``sh -n`` passes (each distinct script checked once: most cases build the same ones)."""
    if script not in _SH_CHECKED:
        _SH_CHECKED[script] = sh_syntax_error(script)
    return _SH_CHECKED[script] == ""


def check_rendered(s, real: RealReader | None) -> None:
    """The files and scripts rendered from accepted settings hold exactly what they mean."""
    for key, value, form in host_bound(s):
        assert form.fullmatch(value), f"{key} reaches the host as {value!r}, not in its strict form"
    for path in (s.smoke_report_dir, s.migrations_dir, s.tarball):  # control-machine paths: printed, opened
        assert path is None or not any(unicodedata.category(char) == "Cc" for char in str(path)), repr(path)
    profile = PROFILE
    plan = Plan(s, PLATFORM, {**profile, "bridges": BRIDGES})

    # The settings include file.
    addresses = networking.listen_addresses(BRIDGES, s)
    tls = certificate_paths(PLATFORM, s.tls.cert_file, s.tls.key_file) if networking.tls_wanted(s, "") else None
    text = networking.render_settings(PLATFORM, addresses, tls)
    intended = [("listen_addresses", ",".join(addresses)), ("password_encryption", "scram-sha-256")]
    if tls:
        intended += [("ssl", "on"), ("ssl_cert_file", tls[0]), ("ssl_key_file", tls[1]), ("ssl_min_protocol_version", "TLSv1.2")]
    assert conf_settings(text) == intended
    read = real and real.settings(text)
    assert read in (None, intended)

    # pg_hba.conf: the fixed records and one per client rule, each token meaning itself.
    hba = networking.render_hba(BRIDGES, s, "")
    rules = networking.client_rules(BRIDGES, s)
    # with an app: its peer line (migrations), its names quoted, so never a keyword
    app_peer = [["local", s.app.database, s.app.user, "peer", "map=pgvector_deploy"]] if s.app else []
    intended_hba = [
        ["local", "all", "postgres", "peer"], *app_peer, ["local", "all", "all", "peer"],
        ["host", "all", "all", "127.0.0.1/32", "scram-sha-256"], ["host", "all", "all", "::1/128", "scram-sha-256"],
        *([rule["type"], "all", rule["user"], rule["cidr"], "scram-sha-256"] for rule in rules),
        ["local", "replication", "all", "peer"],
    ]  # fmt: skip
    fixed = 4 + len(app_peer)  # records before the client rules
    assert hba_records(hba) == intended_hba
    assert all(rule["user"] == s.app.user for rule in rules)
    cidrs = {rule["cidr"] for rule in rules}
    for line in hba.split("\n"):  # the client rules as written: their user is a role, never a keyword
        if not line.startswith("#") and len(line.split()) == 5 and line.split()[3] in cidrs:
            assert line.split()[2] not in HBA_KEYWORDS, f"the user in {line!r} is a pg_hba.conf keyword"
    read_hba = real and real.hba(hba)
    if read_hba is not None:
        assert [row[0] for row in read_hba] == [record[0] for record in intended_hba]
        assert [row[2] for row in read_hba][fixed:-1] == [[rule["user"]] for rule in rules]
        assert [row[3] for row in read_hba][fixed:-1] == [rule["cidr"].split("/")[0] for rule in rules]

    # The tuning file.
    if s.tuning.enabled:
        chosen = tuning.plan_tuning(s.tuning, profile)
        text = tuning.render(chosen, profile)
        intended = [(tuned.name, tuned.value) for tuned in chosen]
        assert conf_settings(text) == intended
        assert real is None or real.settings(text) in (None, intended)

    # The app's env file (written when pg_app_env_file is set; the same text is printed).
    if s.app:
        conn = appenv.connection(plan)
        variables = env_variables(appenv.render_env_file(conn))
        assert {"DATABASE_URL", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE"} <= set(variables) <= {
            "DATABASE_URL", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD", "PGSSLMODE", "PGSSLROOTCERT",
        }  # fmt: skip
        assert (variables["PGHOST"], variables["PGUSER"], variables["PGDATABASE"]) == (conn.host, s.app.user, s.app.database)
        assert variables.get("PGPASSWORD", s.app.password) == s.app.password
        url = urlsplit(variables["DATABASE_URL"])
        assert (unquote(url.username), unquote(url.password), url.hostname, url.path) == (
            s.app.user, str(s.app.password), conn.host.lower(), f"/{s.app.database}",
        )  # fmt: skip
        if s.tls.ca_file and conn.sslmode:
            assert variables["PGSSLROOTCERT"] == s.tls.ca_file
        if s.app.env_file:
            script = appenv.write_script(s.app.env_file)
            assert sh_ok(script) and f"file={shlex.quote(s.app.env_file)}\n" in script
            assert str(s.app.password) not in script or len(str(s.app.password)) < 4

    # pgbackrest.conf: every line a comment, a section or one option; the passphrase on its own line.
    if s.backup:
        from pgvector_deploy import backups

        config = backups.render_config(plan)
        lines = [line for line in config.split("\n") if line and not line.startswith("#")]
        assert all(re.fullmatch(r"\[[a-z]+\]|[a-z0-9-]+=[^\n\r\0]*", line) for line in lines), config
        assert f"repo1-cipher-pass={s.backup.cipher_pass}" in lines and f"repo1-s3-bucket={s.backup.bucket}" in lines
        assert len([line for line in lines if line.startswith("repo1-")]) == len({line.split("=")[0] for line in lines if line.startswith("repo1-")})
        for path, (content, _, _) in backups.wanted_files(plan).items():  # units and cron: schedules strict
            for line in content.split("\n"):
                if line.startswith("OnCalendar="):
                    assert re.fullmatch(r"OnCalendar=((Sun|Mon|Tue|Wed|Thu|Fri|Sat)(,(Sun|Mon|Tue|Wed|Thu|Fri|Sat))* )?\*-\*-\* [0-9]{2}:[0-9]{2}:00|OnCalendar=\*:0/5", line), line
        assert sh_ok(backups.restore_script(plan))

    # Shell scripts built from host data: valid sh, the values quoted where they go.
    script = pgvector.download_script(s.url, plan.cached_tarball, s.release.sha256, s.version)
    assert sh_ok(script) and shlex.quote(s.url) in script
    if tls:
        cert, key = tls
        for script in (networking.self_signed_script(cert, key, addresses, s.listen_addresses),
                       networking.tls_check_script(cert, key, settings_path(PLATFORM))):  # fmt: skip
            assert sh_ok(script) and shlex.quote(cert) in script


def refused_or_rendered(key: str, value: Any, real: RealReader | None) -> None:
    """``value`` for ``key`` is refused naming the key and the fix, or renders what it means."""
    data = {**KEYS[key].needs, key: value}
    if key in ("pg_app_password_env", "pg_app_password_ssm"):
        data.pop("pg_app_password", None)
    try:
        s = load_settings(data)
    except SettingsError as error:
        message = str(error)
        assert key in message and "Fix:" in message, message
        assert "\n" not in message, "one line: the value is shown with repr"
        if key == "pg_app_password" and isinstance(value, str) and len(value) > 3:
            assert value not in message  # a password is never shown
        return
    assert KEYS[key].takes(value), f"a {type(value).__name__} was accepted for {key}"
    try:
        preflight.make_plan(s, PROFILE)
    except UnsupportedHost as error:  # refused by the preflight, before anything changes: fine too
        assert key in str(error) and "Fix:" in str(error), str(error)
    check_rendered(s, real)


@pytest.mark.parametrize("key", list(KEYS))
def test_hostile_host_data_is_refused_naming_the_key_or_renders_exactly_what_it_means(key, real):
    """Every hostile value for ``key`` (``hostile_values``); the failures are listed together."""
    failures = []
    for value in hostile_values(KEYS[key]):
        try:
            refused_or_rendered(key, value, real)
        except Exception as error:  # noqa: BLE001 - a traceback from load_settings is a failure too
            failures.append(f"{value!r:.80}: {type(error).__name__}: {str(error)[:400]}")
    assert not failures, f"{key}: {len(failures)} hostile values not refused cleanly or misrendered:\n" + "\n".join(failures)


def test_the_valid_values_are_accepted_and_render(real):
    """Each key's valid value is taken (so the hostile cases test refusals of something)."""
    for key, case in KEYS.items():
        data = {**case.needs, key: case.valid}
        if key in ("pg_app_password_env", "pg_app_password_ssm"):
            data.pop("pg_app_password", None)
        check_rendered(load_settings(data), real)


def test_a_zone_id_with_a_setting_behind_it_never_reaches_the_file():
    """The issue's own case: ipaddress lets it through, PostgreSQL would take the extra line."""
    with pytest.raises(SettingsError, match="pg_listen_addresses: .* has a zone id"):
        load_settings({"pg_listen_addresses": ["fe80::1%eth0'\nshared_preload_libraries = 'evil"]})
    with pytest.raises(ValueError, match="control character"):
        networking.render_settings(PLATFORM, ["localhost", "fe80::1%eth0'\nshared_preload_libraries = 'evil"])


@pytest.mark.parametrize("token, written", [("app", "app"), ("all", '"all"'), ("+admins", '"+admins"'), ("a b", '"a b"'), ("a,b", '"a,b"')])
def test_hba_tokens_mean_only_themselves(token, written):
    assert networking.hba_token(token) == written
    assert networking.hba_fields(f"host all {networking.hba_token(token)} 10.0.0.0/8 scram-sha-256")[2] == token


@pytest.mark.parametrize("token", ['a"b', "a\nb", ""])
def test_hba_tokens_that_no_quoting_can_hold_are_refused(token):
    with pytest.raises(ValueError, match="pg_hba.conf token"):
        networking.hba_token(token)


def test_pg_string_doubles_quotes_and_backslashes(real):
    text = f"a = {managed_files.pg_string(chr(39) + 'x' + chr(92) + 'y')}\n"
    assert text == "a = '''x\\\\y'\n"
    if real is not None:
        assert real.settings(text.replace("a =", "application_name =")) == [("application_name", "'x\\y")]


def test_sql_keywords_are_postgresqls_own(real):
    if real is None:
        skip_or_fail("no throwaway PostgreSQL 15")
    words = real.psql("SELECT string_agg(word, ' ') FROM pg_catalog.pg_get_keywords() WHERE catcode <> 'U'").split()
    assert set(words) == SQL_KEYWORDS


# --- one bad host, the others carry on (pyinfra itself, its @fake connector) ----------------------


def test_a_bad_value_refuses_its_host_and_the_others_run():
    """db-2's pg_listen_addresses carries a zone id with a setting behind it: preflight.look
    refuses db-2 with one failing operation naming the key; db-1 and db-3 run every operation."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.connect import connect_all
    from pyinfra.api.operation import add_op
    from pyinfra.api.operations import run_ops

    from pgvector_deploy import postgres

    responses = {
        'echo "pid1=': recorded_lines("provisioned", "host-profile"),  # HostProfile, which look gathers
        "pg_version_file=": ["pg_version_file=15", "running=yes", "boot=enabled"],  # ClusterState
        "REFUSED": {"success": False},  # what sh makes of the refusal's failing command
    }
    bad = {"pg_listen_addresses": ["10.0.1.10", "fe80::1%eth0'\nshared_preload_libraries = 'evil"]}
    hosts = [
        ("@fake/db-1", {"fake_responses": responses}),
        ("@fake/db-2", {"fake_responses": responses, **bad}),
        ("@fake/db-3", {"fake_responses": responses}),
    ]
    inventory = Inventory((hosts, {"fake_delay": 0, "fake_delay_jitter": 0}))
    state = State(inventory, Config())
    connect_all(state)
    refusals = {}
    for host in inventory:
        plan = preflight.look(host)  # what deploy/postgres.py does first, per host
        if isinstance(plan, preflight.Refusal):
            refusals[host.name] = plan.message
            add_op(state, preflight.refuse, plan, host=host)
        else:
            for operation in (postgres.cluster, postgres.running):
                add_op(state, operation, plan, host=host)
    run_ops(state)
    assert list(refusals) == ["@fake/db-2"]
    assert refusals["@fake/db-2"].startswith("bad host data: pg_listen_addresses: ") and "Fix:" in refusals["@fake/db-2"]
    assert {host.name for host in state.failed_hosts} == {"@fake/db-2"}
    ran = {host.name: state.get_results_for_host(host).ops for host in inventory}
    assert ran["@fake/db-1"] == ran["@fake/db-3"] == 2
    assert vars(next(state.get_results_for_host(host) for host in inventory if host.name == "@fake/db-2")) == {"error_ops": 1}
    sent = [command for host in inventory if host.name == "@fake/db-2" for command in host.connector.executed_commands]
    assert not any("shared_preload_libraries" in command and "REFUSED" not in command for command in sent)
