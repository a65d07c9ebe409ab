"""The vector smoke suite: does this host's PostgreSQL (15, or pg_major) really serve pgvector?

Ten checks, each reported by name as pass, fail or skip (with the reason). Nine run on the
host in one round trip (the ``SmokeChecks`` fact: ``templates/smoke.sh.j2`` rendered for the
host, sent on standard input and kept at ``SMOKE_SCRIPT`` to be run by hand);
``app_over_tcp`` runs on the control machine, with psycopg, through pyinfra's connection
(``tunnel.reach``), so that the app's password never reaches the host:

==================== ================================================================
extension_files      vector.control and vector.so where the platform's pg_config puts
                     them, and the server on the port is the platform's major
template1_has_vector the scratch database, made from template1, has vector without
                     CREATE EXTENSION (and at the requested version)
create_extension     ``DROP EXTENSION IF EXISTS vector CASCADE; CREATE EXTENSION vector``
                     in the scratch database, in one transaction
extversion           its extversion is the requested pgvector version
casts                vector, halfvec and sparsevec literals cast and print back unchanged
distances            ``<->``, ``<=>`` and ``<#>`` give 5, 1 and -32 (compared numerically)
hnsw_index           an HNSW index (m = 8, ef_construction = 32) on 500 rows of a temporary
                     table is built, EXPLAIN of a nearest-neighbour query (enable_seqscan
                     off) uses it by name, and the query returns 5 rows
ivfflat_index        the same with an IVFFlat index (lists = 10, all of them probed)
app_over_tcp         the app role logs in over TCP at the Docker bridge address with its
                     password (stored as SCRAM, refused without it) and runs a vector query:
                     from the control machine, through a direct-tcpip channel of pyinfra's
                     SSH connection (or directly with @local); skipped with another connector
cleanup              the scratch database is gone afterwards
==================== ================================================================

If the scratch database cannot be made, template1_has_vector and create_extension fail and
the checks that need vector in it skip. extversion, casts and distances share one query, run
in create_extension's psql session; should it fail, each runs its own and reports its own
error.

There is one scratch database, with a fixed name (``SCRATCH_DATABASE``); it carries the
comment ``SCRATCH_COMMENT`` from the moment it is made. A leftover from a killed run is
dropped only when it carries that comment; a database of the same name without it is never
touched, and the suite fails saying so. Nothing else on the host changes but the script's
own copy (``SMOKE_SCRIPT``: a tool to run by hand, not configuration), so a facts-only
round trip is honest: a converged host still reports zero changed operations.

The app's password stays on the control machine: the script only names the app role (the
host reports how its password is stored: SCRAM, none, other, absent), and psycopg gets the
password as a keyword, never in a conninfo string, a file or an environment variable.

Example::

    plan = preflight.look(host)
    smoke.verify(plan, name="Vector smoke suite")
    smoke.verify(plan, app=SmokeApp("app", password, "app", "172.17.0.1"), name="Vector smoke suite")
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import jinja2
import psycopg
from paramiko.ssh_exception import SSHException
from pyinfra import host, logger
from pyinfra.api import FactBase, operation

from . import tunnel
from .backups import REASON, TEXTFILE_DIR
from .errors import fail
from .facts import PGBR
from .networking import TEMPLATES, app_address
from .paths import STATE_DIR
from .plan import Plan
from .platforms import Platform
from .shell import HOST_LOCK, SAFE_PATH, as_postgres, fails_host_on_error, with_host_lock

# No check may hang the suite (it holds the host lock): a statement or a lock wait is bounded.
SMOKE_TIMEOUTS = "-c statement_timeout=300s -c lock_timeout=30s"
SCRATCH_DATABASE = "pgvector_deploy_smoke"  # made from template1
SCRATCH_COMMENT = "pgvector-deploy smoke scratch"  # plain text: no quotes, $, ` or backslash
SCRIPT_TEMPLATE = "smoke.sh.j2"  # in templates/: the nine host checks, rendered per host
SMOKE_SCRIPT = f"{STATE_DIR}/smoke.sh"  # each run's rendered copy on the host, to run by hand

CHECKS = (
    "extension_files",
    "template1_has_vector",
    "create_extension",
    "extversion",
    "casts",
    "distances",
    "hnsw_index",
    "ivfflat_index",
    "app_over_tcp",
    "cleanup",
)
STATUSES = ("pass", "fail", "skip")
HOST_CHECKS = tuple(name for name in CHECKS if name != "app_over_tcp")  # the script's nine
APP_ROLE = "app_role"  # the script's line app_role|<scram|none|other|absent|error>|<detail>
APP_CONNECT_TIMEOUT = 10  # seconds, libpq's connect_timeout for each of the app's logins
_ANY_AUTH = "password,md5,gss,sspi,scram-sha-256,none"  # every method libpq 16 knows
APP_SQL = "SELECT host(inet_server_addr()), ('[1,2,3]'::vector <-> '[4,6,3]'::vector) = 5"

# What the casts check expects back: the literals, printed unchanged.
CAST_LITERALS = (("vector", "[1,2,3]"), ("halfvec", "[1,2,3]"), ("sparsevec", "{1:1,3:2}/3"))
# The index checks: small, so the builds are quick (the defaults m = 16, ef_construction = 64
# take several times as long), yet IVFFlat needs at least as many rows as lists.
INDEX_ROWS = 500
HNSW_OPTIONS = "WITH (m = 8, ef_construction = 32)"
IVFFLAT_LISTS = 10
IVFFLAT_OPTIONS = f"WITH (lists = {IVFFLAT_LISTS})"
assert INDEX_ROWS >= IVFFLAT_LISTS


@dataclass(frozen=True)
class SmokeApp:
    """The application's role, its password, its database, and the Docker bridge gateway
    address (e.g. ``172.17.0.1``) it connects to; ``address=None`` skips ``app_over_tcp``."""

    user: str
    password: str
    database: str
    address: str | None

    def __post_init__(self):
        for field in ("user", "password", "database", "address"):
            value = getattr(self, field)
            if field == "address" and value is None:
                continue
            if not isinstance(value, str) or not value:
                raise ValueError(f"SmokeApp.{field} must be a non-empty string")
            if any(char in value for char in "\n\r\0"):
                raise ValueError(f"SmokeApp.{field} must not contain a newline or NUL")

    def __repr__(self) -> str:  # pyinfra prints operation arguments: never the password
        return (
            f"SmokeApp(user={self.user!r}, database={self.database!r}, "
            f"address={self.address!r}, password=<hidden>)"
        )

    __str__ = __repr__


def app_login(plan: Plan) -> SmokeApp | None:
    """The app role from host data, with the Docker bridge address it connects to."""
    app = plan.settings.app
    if app is None:
        return None
    address = app_address(plan.profile["bridges"])
    return SmokeApp(user=app.user, password=str(app.password), database=app.database, address=address)


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # pass, fail or skip
    detail: str


# --- the script --------------------------------------------------------------------------


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class ShellCode(str):
    """Shell built here by a helper that quotes its own parts (``shell.as_postgres``): the
    only text the smoke script's template takes as it is."""


def shell_word(value: object) -> str:
    """What a ``{{ value }}`` in ``templates/smoke.sh.j2`` becomes: text shell-quoted (one
    word, never expanded), a number as digits, ``ShellCode`` as it is. Anything else, and text
    with a line break or NUL (it could end a comment line), is refused.

    >>> print(shell_word("it's $HOME"), shell_word(5432))
    'it'"'"'s $HOME' 5432
    """
    if isinstance(value, ShellCode):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        if any(char in value for char in "\n\r\0"):
            raise ValueError(f"a value for the smoke script holds a line break or NUL: {value!r}")
        return shlex.quote(value)
    raise TypeError(f"the smoke script takes text, whole numbers or ShellCode, not {type(value).__name__}: {value!r}")


@lru_cache(maxsize=None)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
        finalize=shell_word,  # every {{ value }} is quoted: no template line can forget it
        autoescape=False,
    )


def render_script(values: dict[str, object]) -> str:
    """``templates/smoke.sh.j2`` rendered with ``values`` (each through ``shell_word``)."""
    return _environment().get_template(SCRIPT_TEMPLATE).render(**values)


def smoke_script(platform: Platform, port: int, version: str, app_user: str | None = None) -> str:
    """The suite's nine host checks as one POSIX shell script (``templates/smoke.sh.j2``),
    run as root on the host (``save_and_run``); with ``app_user``, it also reports how that
    role's password is stored.

    Pure: the same inputs give the same script. It never holds the app's password.
    """
    extversion_sql = "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
    casts = " || ' ' || ".join(f"{_sql_literal(text)}::{kind}::text" for kind, text in CAST_LITERALS)
    casts_want = " ".join(text for _, text in CAST_LITERALS)
    casts_detail = ", ".join(f"{text}::{kind}" for kind, text in CAST_LITERALS) + " print back unchanged"
    distances = "d1, d2, d3, abs(d1 - 5) < 1e-9 AND abs(d2 - 1) < 1e-9 AND abs(d3 + 32) < 1e-9"
    distances_from = (
        " FROM (SELECT '[1,2,3]'::vector <-> '[4,6,3]'::vector AS d1, "
        "'[1,0]'::vector <=> '[0,1]'::vector AS d2, "
        "'[1,2,3]'::vector <#> '[4,5,6]'::vector AS d3) AS distances"
    )
    # One row for extversion, casts and distances: basics|<extversion>|<casts>|<->|<=>|<#>|ok
    basics_sql = f"SELECT 'basics', ({extversion_sql}), {casts}, {distances}{distances_from}"
    stored_sql = None
    if app_user is not None:
        stored_sql = (
            "SELECT coalesce((SELECT CASE WHEN rolpassword IS NULL THEN 'none' "
            "WHEN rolpassword LIKE 'SCRAM-SHA-256$%' THEN 'scram' ELSE 'other' END "
            f"FROM pg_catalog.pg_authid WHERE rolname = {_sql_literal(app_user)}), 'absent')"
        )
    return render_script(
        {
            "script_path": SMOKE_SCRIPT,
            "host_lock": HOST_LOCK,
            "safe_path": SAFE_PATH,
            "scratch": SCRATCH_DATABASE,
            "version": version,
            # Only in postgres and the scratch database, both owned by postgres.
            "as_postgres": ShellCode(as_postgres(platform, port, None, with_public=True, options=SMOKE_TIMEOUTS)),
            "pg_config": platform.pg_config,
            "major": int(platform.major),
            "port": int(port),
            "comment_sql": _sql_literal(SCRATCH_COMMENT),
            "basics_sql": basics_sql,
            "casts_sql": f"SELECT {casts}",
            "casts_want": casts_want,
            "casts_detail": casts_detail,
            "distances_sql": f"SELECT {distances}{distances_from}",
            "hnsw_options": HNSW_OPTIONS,
            "ivfflat_options": IVFFLAT_OPTIONS,
            "rows": INDEX_ROWS,
            "ivfflat_lists": IVFFLAT_LISTS,
            "stored_sql": stored_sql,  # None: no app role to look up
        }
    )


# --- results -----------------------------------------------------------------------------


def parse_smoke(lines: Iterable[str], names: Iterable[str] = CHECKS) -> list[CheckResult]:
    """``check=<name>|<status>|<detail>`` lines -> one ``CheckResult`` per check of ``names``
    (the suite's, or the script's ``HOST_CHECKS``), in suite order.

    A check that printed no line (the script was cut short) is a fail; an unknown status is a
    fail naming it; other lines are ignored; a name's first line counts.

    >>> parse_smoke(["check=casts|pass|ok"])[4]
    CheckResult(name='casts', status='pass', detail='ok')
    """
    found: dict[str, CheckResult] = {}
    for line in lines:
        line = line.rstrip("\r\n")
        if not line.startswith("check="):
            continue
        name, _, rest = line[len("check="):].partition("|")
        status, _, detail = rest.partition("|")
        name, status = name.strip(), status.strip()
        if not name or name in found:
            continue
        if status not in STATUSES:
            detail = f"unknown status {status!r}: {detail}"
            status = "fail"
        found[name] = CheckResult(name, status, detail)
    results = [
        found.pop(name, CheckResult(name, "fail", "no result: the suite stopped before this check"))
        for name in names
    ]
    return results + list(found.values())


@dataclass(frozen=True)
class HostChecks:
    """What the script reports: its nine checks, and how the app role's password is stored
    (``scram``, ``none``, ``other``, ``absent``, ``error``; ``None`` when not asked or not
    reported) with the lookup's error text."""

    results: list[CheckResult]
    app_role: str | None = None
    app_role_error: str = ""


def parse_host_checks(lines: Iterable[str]) -> HostChecks:
    """The script's output -> ``HostChecks``; the first ``app_role|<kind>|<error>`` line counts.

    >>> parse_host_checks(["app_role|scram|"]).app_role
    'scram'
    """
    lines = [line.rstrip("\r\n") for line in lines]
    role = next((line.split("|", 2) for line in lines if line.startswith(f"{APP_ROLE}|")), None)
    kind, error = (role[1], role[2] if len(role) > 2 else "") if role else (None, "")
    return HostChecks(parse_smoke(lines, HOST_CHECKS), kind, " ".join(error.split()))


def merge(host_results: list[CheckResult], app_result: CheckResult) -> list[CheckResult]:
    """The host's results and ``app_over_tcp`` in the suite's order (``CHECKS``); a line
    from the host never stands for ``app_over_tcp``; names the suite does not know come last."""
    known = {r.name: r for r in host_results if r.name in HOST_CHECKS}
    known[app_result.name] = app_result
    return [known[name] for name in CHECKS if name in known] + [r for r in host_results if r.name not in CHECKS]


# --- app_over_tcp, from the control machine -------------------------------------------------------


def app_keywords(where: dict, app: SmokeApp, password: str | None) -> dict:
    """libpq's keywords for the app's login at ``where`` (``host``/``port``): every one named,
    so that nothing comes from the control machine's PG* variables, ~/.pgpass or a service
    file's defaults; with a password, only SCRAM is accepted (libpq 16 and later)."""
    keywords = {
        **where,
        "user": app.user,
        "dbname": app.database,
        "password": password or "",  # "": not PGPASSWORD's
        "passfile": "/nonexistent/pgvector-deploy-smoke",  # never ~/.pgpass
        "sslmode": "prefer",
        "gssencmode": "disable",
        "channel_binding": "prefer",
        "connect_timeout": APP_CONNECT_TIMEOUT,
        "application_name": "pgvector-deploy smoke",
        "options": "-c statement_timeout=30s",
    }
    if psycopg.pq.version() >= 160000:  # explicit, not PGREQUIREAUTH's; without a password, any
        keywords["require_auth"] = "scram-sha-256" if password else _ANY_AUTH  # (trust must show)
    return keywords


def _one_line(error: BaseException, password: str) -> str:
    return " ".join(str(error).replace(password, "<hidden>").split()) or type(error).__name__


def _login(way, app: SmokeApp, password: str | None) -> tuple | None:
    """Log in at ``way`` as the app; with a password, run ``APP_SQL`` and return its row."""
    with psycopg.connect(**app_keywords(way.keywords, app, password), autocommit=True) as conn:
        return conn.execute(APP_SQL).fetchone() if password else None


def login_over_tcp(way, app: SmokeApp, port: int) -> CheckResult:
    """``app_over_tcp`` through ``way`` (``tunnel.reach``): refused without the password, in
    with it, and the vector query right. A tunnel that could not connect is reported as such."""
    role, address, database = shlex.quote(app.user), app.address, shlex.quote(app.database)
    where = f"role {role} at {address}:{int(port)} database {database}"

    def broken(error: BaseException) -> CheckResult:
        if isinstance(way.error, tunnel.Unreachable):
            return CheckResult("app_over_tcp", "skip", f"not run: {way.error}")
        if way.error is not None:
            return CheckResult("app_over_tcp", "fail", f"{where}: {way.error}")
        return CheckResult("app_over_tcp", "fail", f"{where}: {way.describe(_one_line(error, app.password))}")

    try:
        _login(way, app, None)
    except psycopg.OperationalError as error:
        if "no password supplied" not in str(error):  # refused, but not because it lacked one
            return broken(error)
    else:
        return CheckResult("app_over_tcp", "fail", f"role {role} logged in at {address} without a password; pg_hba.conf must ask for scram-sha-256 there")
    try:
        row = _login(way, app, app.password)
    except psycopg.Error as error:
        return broken(error)
    got = f"{row[0]}|{'t' if row[1] else 'f'}" if row else ""
    if not got.endswith("|t"):
        return CheckResult("app_over_tcp", "fail", f"vector query in {database} gave '{got}', expected the distance 5")
    return CheckResult(
        "app_over_tcp", "pass",
        f"role {role} logged in over TCP to {row[0]}:{int(port)} with its password (SCRAM; refused without it), "
        f"database {database}: '[1,2,3]' <-> '[4,6,3]' = 5",
    )  # fmt: skip


def check_app_over_tcp(target, app: SmokeApp | None, port: int, checked: HostChecks) -> CheckResult:
    """``app_over_tcp`` for pyinfra host ``target``: the stored password's kind as the host
    reported it, then ``login_over_tcp`` through ``tunnel.reach``."""
    if app is None:
        return CheckResult("app_over_tcp", "skip", "no app role given to the smoke suite")
    if not app.address:
        return CheckResult("app_over_tcp", "skip", f"no Docker bridge address given for role {app.user}")
    role = shlex.quote(app.user)
    failed = {
        None: "no result: the suite stopped before looking up role " + role,
        "error": f"cannot look up role {role}: {checked.app_role_error}",
        "absent": f"role {role} does not exist",
        "none": f"role {role} has no password",
    }
    if checked.app_role != "scram":
        reason = failed.get(checked.app_role, f"role {role}'s password is not stored as SCRAM-SHA-256 (password_encryption was md5 when it was set)")
        return CheckResult("app_over_tcp", "fail", reason)
    try:
        with tunnel.reach(target, app.address, port) as way:
            return login_over_tcp(way, app, port)
    except tunnel.Unreachable as error:
        return CheckResult("app_over_tcp", "skip", f"not run: {error}")
    except (tunnel.TunnelFailed, SSHException, OSError) as error:
        return CheckResult("app_over_tcp", "fail", f"role {role} at {app.address}:{int(port)}: {_one_line(error, app.password)}")


def redact(results: Iterable[CheckResult], secret: str | None) -> list[CheckResult]:
    """Replace the secret wherever it shows up in a detail (belt and braces: it never should)."""
    if not secret:
        return list(results)
    return [CheckResult(r.name, r.status, r.detail.replace(secret, "<hidden>")) for r in results]


def report_path(report_dir: str | os.PathLike, host_name: str) -> Path:
    """``<report_dir>/smoke-<host name>.json``; characters unsafe in a file name become ``_``."""
    safe = re.sub(r"[^A-Za-z0-9._@-]", "_", host_name).lstrip(".") or "host"
    return Path(report_dir) / f"smoke-{safe}.json"


def write_report(
    report_dir: str | os.PathLike,
    host_name: str,
    version: str,
    results: list[CheckResult],
    now: datetime | None = None,
) -> Path:
    """Write the host's JSON report on the control machine; return its path.

    The directory is made with mode 0700 (an existing one keeps its mode); the file is
    written 0600 beside its final name and renamed, so a reader never sees half a report.
    """
    directory = Path(report_dir)
    if not directory.is_dir():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
    path = report_path(directory, host_name)
    moment = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    report = {
        "host": host_name,
        "time": moment.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "pgvector_version": version,
        "passed": not any(r.status == "fail" for r in results),
        "checks": [asdict(r) for r in results],
    }
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(report, stream, indent=2)
            stream.write("\n")
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return path


def format_table(results: list[CheckResult]) -> list[str]:
    """A readable table: a summary line, then name, status and detail per check."""
    counts = {status: sum(r.status == status for r in results) for status in STATUSES}
    width = max(len(r.name) for r in results) if results else 4
    lines = [f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped"]
    lines.append(f"  {'check'.ljust(width)}  status  detail")
    for r in results:
        lines.append(f"  {r.name.ljust(width)}  {r.status.upper().ljust(6)}  {r.detail}")
    return lines


class SmokeStdin:
    """The script as ``_stdin``: pyinfra reads it with ``readlines()`` (once per attempt),
    while ``str()``/``repr()`` hide it, since pyinfra logs a fact's arguments."""

    def __init__(self, script: str):
        self._script = script

    def readlines(self) -> list[str]:
        return self._script.splitlines(keepends=True)

    def __iter__(self) -> Iterator[str]:  # pyinfra type-checks _stdin as Iterable[str]
        return iter(self.readlines())

    def __repr__(self) -> str:
        return "<vector smoke script>"

    __str__ = __repr__


# The script arrives on standard input and is kept at SMOKE_SCRIPT (root's, 0600: it holds
# no secret, but it is run as root), then run from there: the copy a person runs by hand is
# the one this run ran. Should it not be written, the suite says so in a line of its own.
def save_and_run(path: str = SMOKE_SCRIPT) -> str:
    """Shell that keeps the script on its standard input at ``path`` and runs it from there, as
    root. The same script leaves the file as it was (a converged host's files stay untouched),
    but only a file that is root's alone (0600, no link) in a directory only root can write in
    is kept or run: anything else is replaced, or, for the directory, refused with a line."""
    directory, quoted = shlex.quote(os.path.dirname(path)), shlex.quote(path)
    untrusted = (
        f"check=smoke_script|fail|{os.path.dirname(path)} is not root's alone (a link, another owner, or group or "
        f"others may write in it), so the smoke script is not kept or run from it. Fix: chown root:root "
        f"{os.path.dirname(path)} && chmod 0755 {os.path.dirname(path)}"
    )
    return f"""umask 077
tmp=
# Root's alone: no link, owned by root, neither group nor others may write (stat %A: -rwxr-xr-x).
private() {{
  [ ! -L "$1" ] && [ "$(stat -c %u "$1")" = 0 ] || return 1
  case "$(stat -c %A "$1")" in ?????w* | ????????w*) return 1 ;; esac
}}
keep() {{
  {{ [ -d {directory} ] || mkdir -m 0755 {directory}; }} || return 1
  private {directory} || {{ echo {shlex.quote(untrusted)}; return 2; }}
  tmp=$(mktemp {quoted}.XXXXXX) && cat > "$tmp" || return 1
  if [ "$(sha256sum < "$tmp")" = "$(sha256sum < {quoted} 2>/dev/null)" ] && [ ! -L {quoted} ] \
    && [ "$(stat -c %a:%u:%g {quoted})" = 600:0:0 ]; then rm -f "$tmp"; else mv -f "$tmp" {quoted}; fi
}}
keep 2>/dev/null
kept=$?
if [ "$kept" != 0 ]; then
  [ -z "$tmp" ] || rm -f "$tmp"
  [ "$kept" = 2 ] || echo {shlex.quote(f"check=smoke_script|fail|could not write the smoke script to {path} (is its disk full or read-only?)")}
  exit 0
fi
sh {quoted} </dev/null"""


class SmokeChecks(FactBase):
    """Runs the vector smoke suite's host checks: the script arrives on standard input, is
    kept at ``SMOKE_SCRIPT`` and run from there by ``sh``, as one round trip; a fact, so it
    never counts as a change. Parsed into ``HostChecks``.

    .. code:: python

        host.get_fact(SmokeChecks, _stdin=SmokeStdin(smoke_script(platform, 5432, "0.8.6", "app")))
    """

    def command(self):
        # Under the host lock: two overlapping runs would collide on the scratch databases.
        return with_host_lock(save_and_run())

    @staticmethod
    def default():
        return parse_host_checks([])

    def process(self, output):
        return parse_host_checks(output)


ARCHIVE_MODE_SQL = (
    "SELECT CASE WHEN pg_catalog.current_setting('archive_mode') <> 'off' THEN 'on' "
    "WHEN (SELECT pending_restart FROM pg_catalog.pg_settings WHERE name = 'archive_mode') THEN 'pending' "
    "WHEN EXISTS (SELECT FROM pg_catalog.pg_file_settings WHERE name = 'archive_mode' AND applied "
    "AND sourcefile LIKE '%/postgresql.auto.conf') THEN 'restored' ELSE 'off' END"
)


class ArchiveCheck(FactBase):
    """``wal_archive`` (only with pg_backup_s3_bucket): ``pgbackrest check`` switches a WAL
    segment and waits for it in S3, so a bucket gone or credentials expired fail here, named,
    with the backlog of WAL that waits on the host's disk. With archiving off it fails, except
    while its restart is pending or on a host restored by deploy/restore.py (skipped)."""

    def command(self, platform: Platform, port: int):
        # on; off with its restart pending (pg_restart = report); off by postgresql.auto.conf (left by
        # deploy/restore.py; deploy/postgres.py's archiving step resets it); or off: a failure.
        mode = as_postgres(platform, port, "postgres", ARCHIVE_MODE_SQL)
        ready = f"{shlex.quote(platform.data_dir)}/pg_wal/archive_status"
        return f"""PATH={SAFE_PATH}
backlog=$(find {ready} -name '*.ready' 2>/dev/null | wc -l)
mode=$({mode} 2>/dev/null)
if [ "$mode" = pending ]; then
  echo "check=wal_archive|skip|archive_mode is off until its pending restart (pg_restart = report)"
elif [ "$mode" = restored ]; then
  echo "check=wal_archive|skip|archive_mode = off in postgresql.auto.conf (restored by deploy/restore.py; deploy/postgres.py with this host's own prefix turns archiving on)"
elif [ "$mode" != on ]; then
  echo "check=wal_archive|fail|archive_mode is off although pg_backup_s3_bucket is set: no WAL reaches S3 and no backup can run; $backlog segment(s) waiting. Fix: run deploy/postgres.py (its archiving step turns it on, with the restart pg_restart allows)"
elif out=$({PGBR} --archive-timeout=60 --log-level-console=off --log-level-stderr=error check 2>&1); then
  echo "check=wal_archive|pass|a WAL segment reached the repository (pgbackrest check); $backlog segment(s) waiting"
else
  {REASON}
  echo "check=wal_archive|fail|WAL archiving to S3 fails: $reason; $backlog WAL segment(s) wait on this host's disk"
fi
"""

    @staticmethod
    def default():
        return CheckResult("wal_archive", "fail", "no result: the archive check did not run")

    def process(self, output):
        return parse_smoke(output, ("wal_archive",))[0]


class SmokeStatusFile(FactBase):
    """Writes the suite's result for monitoring, ``pgvector_smoke.prom`` in node_exporter's
    textfile directory (with backups on, beside their state). A fact like the suite itself:
    monitoring state, not configuration, so a passing run still reports no change."""

    def command(self, passed: int, failed: int):
        lines = (
            "# HELP pgvector_smoke_success 1 if the last vector smoke suite passed.",
            "# TYPE pgvector_smoke_success gauge",
            f"pgvector_smoke_success {0 if failed else 1}",
            f"pgvector_smoke_checks_passed {int(passed)}",
            f"pgvector_smoke_checks_failed {int(failed)}",
        )
        body = "\\n".join(lines)
        return (
            f"PATH={SAFE_PATH}; install -d -m 0755 {TEXTFILE_DIR} && tmp=$(mktemp {TEXTFILE_DIR}/.pgvector_smoke.XXXXXX) && "
            f"printf '{body}\\npgvector_smoke_timestamp_seconds %s\\n' \"$(date +%s)\" > \"$tmp\" && chmod 0644 \"$tmp\" && "
            f"mv -f \"$tmp\" {TEXTFILE_DIR}/pgvector_smoke.prom; echo written"
        )

    def process(self, output):
        return output


def host_script(plan: Plan, app: SmokeApp | None) -> str:
    """The script ``verify`` runs on the plan's host: the app role is named only when
    ``app_over_tcp`` will run (it has an address)."""
    return smoke_script(plan.platform, plan.port, plan.settings.version, app.user if app and app.address else None)


@operation()
@fails_host_on_error
def verify(plan: Plan, app: SmokeApp | None = None, report_dir: str = "reports"):
    """Run the vector smoke suite on the host (``app_over_tcp`` from here, through pyinfra's
    connection); fail the host naming the failed checks.

    + plan: the host's plan from ``preflight.look``
    + app: the application's role (``SmokeApp``) for ``app_over_tcp``; ``None`` skips that check
    + report_dir: where the JSON report ``smoke-<host>.json`` goes on the control machine

    The checks run when the deploy executes (the host's in one round trip, then the app's
    login), not while pyinfra detects changes nor with ``--dry``. All passing or skipped: no change. A failure: one
    command that fails, naming the failed checks; the table in the log and the report say why.

    **Example:**

    .. code:: python

        smoke.verify(plan, name="Vector smoke suite")
        smoke.verify(
            plan,
            app=SmokeApp(user="app", password=password, database="app", address="172.17.0.1"),
            report_dir="reports",
            name="Vector smoke suite",
        )
    """
    if not host.state.is_executing:
        host.noop("the vector smoke suite runs on the host when the deploy executes")
        return
    version = plan.settings.version
    checked = host.get_fact(SmokeChecks, _stdin=SmokeStdin(host_script(plan, app)))
    results = merge(checked.results, check_app_over_tcp(host, app, plan.port, checked))
    if plan.settings.backup is not None:  # the 11th check, only with backups
        results.append(host.get_fact(ArchiveCheck, platform=plan.platform, port=plan.port))
    results = redact(results, app.password if app else None)
    path = write_report(report_dir, host.name, version, results)
    table = format_table(results)
    logger.info(f"{host.print_prefix}Vector smoke suite, pgvector {version}: {table[0]} (report: {path})")
    for line in table[1:]:
        logger.info(f"{host.print_prefix}{line}")
    failed = [r.name for r in results if r.status == "fail"]
    if plan.settings.backup is not None:  # monitoring beside the backup state (node_exporter's textfile)
        host.get_fact(SmokeStatusFile, passed=sum(r.status == "pass" for r in results), failed=len(failed))
    if failed:
        yield fail(f"vector smoke suite failed: {', '.join(failed)}. Details above and in {path}")
