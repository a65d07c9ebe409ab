"""The app's login role and database.

The password never leaves the control machine in clear text: we compute its SCRAM-SHA-256
verifier here (the form PostgreSQL stores) and send ``ALTER ROLE ... PASSWORD '<verifier>'``
on the SQL connection's standard input, so it is in no command line (``ps``) and in no
pyinfra output. To see whether the password changed, the host reports only the verifier's
salt and a sha256 of the stored verifier; we recompute with that salt and compare. An
unchanged password therefore reports no change.

Example::

    apps.role(plan, name="App role can log in with its password")
    apps.database(plan, name="App database exists, owned by the app, with vector")
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stringprep
import unicodedata

from pyinfra.api import StringCommand, operation

from . import appenv
from .errors import Var, fail
from .facts import AppState
from .plan import Plan
from .shell import SAFE_PATH, as_postgres, fails_host_on_error, host_locked

SCRAM_ITERATIONS = 4096  # PostgreSQL's default scram_iterations
# CREATE DATABASE copies template1 and fails ("source database "template1" is being accessed
# by other users") when another session is connected to it for longer than the server's own
# 5 s wait: our template1 extension step's backend still exiting, a monitor, an app that
# connects there. So the creation is tried up to this many times, this many seconds apart
# (about a minute in all); then the failure names the sessions.
CREATE_DATABASE_TRIES = 6
CREATE_DATABASE_PAUSE = 5
# Who is on template1: pid, role and application_name (chosen by the client: only ever
# expanded inside double quotes, never run).
TEMPLATE1_SESSIONS_SQL = (
    "SELECT pg_catalog.string_agg(pg_catalog.format('pid %s (%s, %s)%s', pid, usename, "
    "coalesce(nullif(application_name, ''), 'no application_name'), coalesce(' from ' || client_addr, '')), '; ') "
    "FROM pg_catalog.pg_stat_activity WHERE datname = 'template1'"
)


def saslprep(password: str) -> str:
    """SASLprep (RFC 4013) as PostgreSQL and libpq apply it to SCRAM passwords: ASCII is kept
    as is; otherwise map (drop B.1, non-ASCII spaces to space), NFKC-normalise, and fall back
    to the raw password when a prohibited or unassigned character remains, as they do."""
    if password.isascii():
        return password
    # Non-ASCII spaces become a space first (U+200B is in both tables; PostgreSQL maps it to a
    # space), then the "commonly mapped to nothing" characters go.
    spaced = "".join(" " if stringprep.in_table_c12(char) else char for char in password)
    mapped = "".join(char for char in spaced if not stringprep.in_table_b1(char))
    normalised = unicodedata.normalize("NFKC", mapped)
    prohibited = (
        stringprep.in_table_a1, stringprep.in_table_c12, stringprep.in_table_c21_c22, stringprep.in_table_c3,
        stringprep.in_table_c4, stringprep.in_table_c5, stringprep.in_table_c6, stringprep.in_table_c7,
        stringprep.in_table_c8, stringprep.in_table_c9,
    )  # fmt: skip
    if any(check(char) for char in normalised for check in prohibited):
        return password
    return normalised


def scram_verifier(password: str, salt: bytes, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677)."""
    normalised = saslprep(password).encode()
    salted = hashlib.pbkdf2_hmac("sha256", normalised, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def password_matches(password: str, salt_part: str, stored_digest: str) -> bool:
    """Does the stored verifier (known by its ``iterations:salt`` part and sha256) come from
    ``password``?"""
    try:
        iterations, salt = salt_part.split(":", 1)
        verifier = scram_verifier(password, base64.b64decode(salt), int(iterations))
    except (ValueError, TypeError):
        return False  # md5 or no password: not what we want
    return hmac.compare_digest(hashlib.sha256(verifier.encode()).hexdigest(), stored_digest)


def _sql_on_stdin(plan: Plan, database: str, sql: str) -> StringCommand:
    """psql reading ``sql`` from standard input: nothing of it shows in ps or in the output."""
    return StringCommand(f"PATH={SAFE_PATH};", as_postgres(plan.platform, plan.port, database), _stdin=sql)


@operation()
@host_locked
@fails_host_on_error
def role(plan: Plan):
    """Create or correct the app's LOGIN role and its password (only when it differs).

    .. code:: python

        apps.role(plan)
    """
    app = plan.settings.app
    state = plan.fact(AppState, platform=plan.platform, port=plan.port, user=app.user, database=app.database)
    createdb = "CREATEDB" if app.createdb else "NOCREATEDB"
    # Not postgres.role: it puts the clear-text password in psql's command line on the host (ps,
    # the server's log); here a SCRAM verifier goes on standard input.
    if not state["role_exists"]:
        verifier = scram_verifier(app.password, os.urandom(16))
        # Only if it is still missing (another run may have created it while this one waited for
        # the lock); an error's context must not echo the statement, which holds the verifier.
        create = (
            "DO $pgvector_deploy$ BEGIN IF NOT EXISTS "
            f"(SELECT FROM pg_catalog.pg_roles WHERE rolname = '{app.user}') THEN "
            f"CREATE ROLE {app.user} WITH LOGIN {createdb} PASSWORD '{verifier}'; END IF; END $pgvector_deploy$;"
        )
        yield _password_sql(plan, create, "\\set SHOW_CONTEXT never\n")
        return
    if not state["can_login"] or state["createdb"] != app.createdb:
        yield _sql_on_stdin(plan, "postgres", f"ALTER ROLE {app.user} WITH LOGIN {createdb};\n")
    if not password_matches(app.password, state["salt_part"], state["stored_digest"]):
        verifier = scram_verifier(app.password, os.urandom(16))
        yield _password_sql(plan, f"ALTER ROLE {app.user} WITH PASSWORD '{verifier}';")


def _password_sql(plan: Plan, statement: str, before: str = "") -> StringCommand:
    """``statement`` (one line, which sets the role's password; psql's ``before`` it) on psql's
    standard input; with ``pg_app_env_file``, in the same on-host command as the env file with
    the new password (``appenv.with_role_password``): whatever fails later in the run (a
    migration, the smoke suite), the two agree."""
    if plan.settings.app.env_file is None:
        return _sql_on_stdin(plan, "postgres", f"{before}{statement}\n")
    # Terse: an error never quotes the statement (LINE 1: ...), which holds the verifier.
    psql = as_postgres(plan.platform, plan.port, "postgres") + " -v SHOW_CONTEXT=never -v VERBOSITY=terse"
    return appenv.with_role_password(plan, psql, statement)


def create_database_script(plan: Plan, database: str) -> str:
    """Shell: run the SQL on standard input (the CREATE DATABASE) as postgres, again while
    template1 is busy with other sessions (``CREATE_DATABASE_TRIES``); any other error ends it."""
    psql = as_postgres(plan.platform, plan.port, "postgres")
    sessions = as_postgres(plan.platform, plan.port, "postgres", TEMPLATE1_SESSIONS_SQL)
    waited = CREATE_DATABASE_TRIES * (CREATE_DATABASE_PAUSE + 5)
    busy = fail(
        f"CREATE DATABASE {database} could not copy template1: other sessions stayed connected to it for "
        f"{CREATE_DATABASE_TRIES} tries over about {waited}s (",
        Var("sessions"),
        "). Nothing was created. Fix: close those connections (a client that needs a database to connect to "
        "should use postgres or its own, never template1, the template every new database is copied from), "
        "then run again.",
    )
    return f"""PATH={SAFE_PATH}
sql=$(cat)
try=1
while ! out=$(printf '%s\\n' "$sql" | {psql} 2>&1); do
  case $out in *"is being accessed by other users"*) ;; *) printf '%s\\n' "$out" >&2; exit 1 ;; esac
  if [ "$try" -ge {CREATE_DATABASE_TRIES} ]; then
    sessions=$({sessions} 2>/dev/null)
    {busy}
  fi
  try=$((try + 1))
  sleep {CREATE_DATABASE_PAUSE}
done
[ -z "$out" ] || printf '%s\\n' "$out"
"""


@operation()
@host_locked
@fails_host_on_error
def database(plan: Plan):
    """Create the app's database (from template1, so it has vector), owned by the app role.
    An existing database is kept: only its owner is corrected and vector created if missing.

    .. code:: python

        apps.database(plan)
    """
    app = plan.settings.app
    state = plan.fact(AppState, platform=plan.platform, port=plan.port, user=app.user, database=app.database)
    # Not postgres.database: it asks its own fact (a round trip every no-op run) and gives up at
    # once while another session holds template1.
    if state["database_owner"] is None:
        # CREATE DATABASE cannot run in a DO block: psql's \gexec runs it only if the database
        # is still missing (another run may have created it while this one waited for the lock).
        create = (
            f"SELECT 'CREATE DATABASE {app.database} OWNER {app.user}' WHERE NOT EXISTS "
            f"(SELECT FROM pg_catalog.pg_database WHERE datname = '{app.database}') \\gexec\n"
        )
        yield StringCommand(create_database_script(plan, app.database), _stdin=create)
        return
    if state["database_owner"] != app.user:
        yield _sql_on_stdin(plan, "postgres", f"ALTER DATABASE {app.database} OWNER TO {app.user};\n")
    if state["database_vector"] is None:
        yield _sql_on_stdin(plan, app.database, "CREATE EXTENSION IF NOT EXISTS vector SCHEMA public;\n")
