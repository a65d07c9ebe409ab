"""Small helpers for the shell commands we send to hosts: psql as postgres (``as_postgres``),
the host lock (``host_locked``), one host's failure instead of the run's (``fails_host_on_error``).
Failure messages themselves (``fail``, ``Var``) are in ``errors``."""

from __future__ import annotations

import re
import shlex
from functools import wraps

from pyinfra.api import QuoteString, StringCommand

from .errors import Failure, fail, log_failure, unexpected_error
from .platforms import Platform

# sudo and minimal images may leave /usr/sbin out of PATH; runuser and pg_* tools live there.
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# Settings for every superuser session, sent by the client: the app owns its databases and
# can ALTER DATABASE ... SET search_path (to put its own pg_extension first), role (to run
# us as itself, so its code could RESET ROLE) or client_encoding; a client setting outranks
# those (PGC_S_CLIENT over PGC_S_DATABASE). pg_temp last: it is searched first otherwise.
# PGOPTIONS also reaches every \connect of a psql script.
# The rest undo what an owner could set to make our own commands fail in its database (a
# read-only default, a 1 ms statement timeout): the server's defaults, as in any other database.
SUPERUSER_OPTIONS = (
    "-c search_path=pg_catalog,pg_temp -c role=none -c client_encoding=UTF8 "
    "-c default_transaction_read_only=off -c statement_timeout=0 -c lock_timeout=0 "
    "-c idle_in_transaction_session_timeout=0"
)
# Only for a database the postgres role owns (postgres, template1, the smoke suite's scratch
# database): its public schema belongs to pg_database_owner, so the app cannot write there.
# pg_catalog is still searched first (implicitly), and public is where new objects go.
SUPERUSER_OPTIONS_WITH_PUBLIC = SUPERUSER_OPTIONS.replace("pg_catalog,pg_temp", "public,pg_temp")


def dbname_conninfo(database: str) -> str:
    """A libpq connection string naming only ``database``: psql's ``-d`` reads a value with
    ``=`` or a ``postgres://`` prefix as a connection string, so a name always goes quoted.

    >>> dbname_conninfo("dbname=postgres it's")
    "dbname='dbname=postgres it\\\\'s'"
    """
    escaped = database.replace("\\", "\\\\").replace("'", "\\'")
    return f"dbname='{escaped}'"


def as_postgres(
    platform: Platform,
    port: int,
    database: str | None,
    sql: str | None = None,
    *,
    with_public: bool = False,
    options: str = "",
) -> str:
    """A psql command run as the ``postgres`` OS user over the local socket (peer auth), with
    ``SUPERUSER_OPTIONS`` (search_path pinned to pg_catalog, role none) whatever the
    database's own settings say. ``with_public`` (only for databases the postgres role owns)
    puts ``public`` on the path (after pg_catalog), for SQL that names pgvector's types unqualified.
    ``options`` come after the pinned ones (``-c statement_timeout=300s``): PGOPTIONS is one
    variable, so a caller's own export of it would be replaced, never added to.

    Uses the target major's own psql, stops at the first error, prints bare rows. With
    ``sql=None`` it reads SQL from standard input. ``database`` is a name, never a
    connection string (``dbname_conninfo``).
    """
    parts = [
        f"PGOPTIONS={shlex.quote(' '.join(filter(None, [SUPERUSER_OPTIONS_WITH_PUBLIC if with_public else SUPERUSER_OPTIONS, options])))}",
        "runuser -u postgres --",
        platform.psql,
        "-X -A -t -q -v ON_ERROR_STOP=1",
        f"-h {shlex.quote(platform.socket_dir)} -p {int(port)}",
    ]
    if database is not None:
        parts.append(f"-d {shlex.quote(dbname_conninfo(database))}")
    if sql is not None:
        parts.append(f"-c {shlex.quote(sql)}")
    return " ".join(parts)


def fails_host_on_error(operation_function):
    """Decorator for an operation's generator: an exception in it (a fact's parser, the
    operation's own code) fails this host alone, with one line naming it, instead of stopping
    the whole run with a traceback (pyinfra 3 lets an operation's exception end the run).
    Each failure, raised or yielded (``fail``), is also logged (``log_failure``): with
    ``--dry`` no failing command runs, and the log is then the only place that says so.

    .. code:: python

        @operation()
        @host_locked
        @fails_host_on_error
        def build(plan): ...
    """

    @wraps(operation_function)
    def guarded(*args, **kwargs):
        try:
            for command in operation_function(*args, **kwargs):
                if isinstance(command, Failure):
                    log_failure(command.message)
                yield command
        except Exception as error:  # noqa: BLE001 - any error fails this host, not the run
            message = unexpected_error(error, operation_function.__name__.replace("_", " "))
            log_failure(message)
            yield fail(message)

    return guarded


# One lock per host, held by each command that changes something: two overlapping runs (a
# nightly run and a manual one, say) queue command by command instead of building or writing
# configuration at the same time. flock releases it when the command ends or dies, so a
# killed run never leaves a stale lock behind. The lock is taken on a descriptor of a subshell
# that the command itself runs without (9>&-): a daemon the command starts (pg_ctlcluster on a
# host without systemd) must not inherit, and so hold, the lock. Only flock's own failure
# says "busy": the command's exit status, whatever it is (75, EX_TEMPFAIL, included), passes
# through untouched.
# The lock lives in a directory only root can write (not /run/lock, which is 1777: any local
# user could create the lock file, hold it, and stall every run; or plant a symlink there).
HOST_LOCK_DIR = "/run/pgvector-deploy"
HOST_LOCK = f"{HOST_LOCK_DIR}/lock"
HOST_LOCK_WAIT = 1800  # seconds; a build under emulation can take minutes
_LOCK_FD = 9


def with_host_lock(command):
    """``command`` run under the host lock; file uploads pass through unchanged.

    The lock directory is made 0700 root if missing, and used only while it is a real
    directory (not a symlink) owned by root that nobody else can write.
    """
    untrusted = fail(
        f"{HOST_LOCK_DIR} (where pgvector-deploy keeps its host lock) is not a directory owned by root that only "
        f"root can write (a symlink, or made by someone else). Nothing was changed. Fix: remove it "
        f"(rm -rf {HOST_LOCK_DIR}; it holds only the lock), then run again."
    )
    busy = fail(f"another pgvector-deploy run held {HOST_LOCK} for {HOST_LOCK_WAIT}s. Fix: let it finish, then run again.")
    wrap = [
        f"mkdir -p -m 0700 {HOST_LOCK_DIR} 2>/dev/null;",
        f'[ -n "$(find {HOST_LOCK_DIR} -maxdepth 0 -type d -user 0 ! -perm /022 2>/dev/null)" ] || {untrusted};',
        f"( flock -w {HOST_LOCK_WAIT} {_LOCK_FD} || {busy}; sh -c",
    ]
    # "; exit $?": the command must not be the subshell's last, which dash would exec in the
    # subshell's own process, closing the descriptor and so letting the lock go at its start.
    after = [f"{_LOCK_FD}>&-; exit $? ) {_LOCK_FD}>>{HOST_LOCK}"]
    if isinstance(command, str):
        return " ".join([*wrap, shlex.quote(command), *after])
    if isinstance(command, StringCommand):
        return StringCommand(*wrap, QuoteString(command), *after, **command.connector_arguments)
    return command


def host_locked(operation_function):
    """Decorator for an operation's generator: every command it yields takes the host lock,
    and makes the plan (the first argument) forget the facts it remembers (``Plan.fact``).

    pyinfra executes a yielded command right after the yield returns, and, while planning,
    stops at the first one. So the plan forgets before the command leaves the generator
    (nothing runs between that and its execution) and again when the generator resumes
    after it: no fact remembered from before a command is ever used after it.

    .. code:: python

        @operation()
        @host_locked
        def build(plan): ...
    """

    @wraps(operation_function)
    def locked(*args, **kwargs):
        forget = _fact_forgetters(args, kwargs)
        for command in operation_function(*args, **kwargs):
            _forget_facts(forget)
            try:
                yield with_host_lock(command)
            finally:
                _forget_facts(forget)

    return locked


def _fact_forgetters(args: tuple, kwargs: dict) -> list:
    """``forget_facts`` of each argument that remembers facts: the plan, first by convention,
    wherever it is passed; nothing for an operation without one."""
    forgetters = []
    for value in (*args, *kwargs.values()):
        forget = getattr(value, "forget_facts", None)
        if callable(forget):
            forgetters.append(forget)
    return forgetters


def _forget_facts(forgetters: list) -> None:
    for forget in forgetters:
        forget()


# Our sessions as the app: the settings of SUPERUSER_OPTIONS (the app's ALTER DATABASE/ROLE SET
# cannot reach our own statements), and standard_conforming_strings on, so that psql and the
# server read quotes as our checks did.
APP_OPTIONS = f"{SUPERUSER_OPTIONS} -c standard_conforming_strings=on"


def as_app(platform: Platform, port: int, database: str, user: str, sql: str | None = None) -> str:
    """A psql command in the app role's own session: the OS user postgres over the local
    socket, mapped to ``user`` by pg_ident.conf's ``pgvector_deploy`` map (peer; the pg_hba.conf
    line ``networking`` writes). session_user is then the app, which no statement can change:
    whatever a migration runs has the app's rights, never more. Settings pinned as for our
    superuser sessions (``APP_OPTIONS``)."""
    assert re.match(r"^[a-z_][a-z0-9_]{0,62}$", user)
    parts = [
        f"PGOPTIONS={shlex.quote(APP_OPTIONS)}",
        "runuser -u postgres --",
        platform.psql,
        "-X -A -t -q -v ON_ERROR_STOP=1",
        f"-h {shlex.quote(platform.socket_dir)} -p {int(port)}",
        f"-U {user}",
        f"-d {shlex.quote(dbname_conninfo(database))}",
    ]
    if sql is not None:
        parts.append(f"-c {shlex.quote(sql)}")
    return " ".join(parts)
