"""Ordered SQL migrations for the app's database: each file once, in name order, in its own
transaction, in the app role's own session, recorded in a ledger with its checksum.

The files are the ``*.sql`` files directly in ``pg_migrations_dir`` on the control machine
(default ``files/migrations/``; subfolders and other files are ignored). They are read and
checked (``migration_files``) by the loading step after the host data is validated
(``loading``), so a bad file refuses the host before anything changes: a name outside ``[A-Za-z0-9._-]``, a file that is not UTF-8, or SQL the deploy cannot
wrap (a psql backslash command, ``BEGIN``/``COMMIT``/``ROLLBACK``, ``SET ROLE``,
``COPY ... FROM STDIN``, an unterminated quote or comment), or a statement that cannot run in
a transaction (``CREATE INDEX CONCURRENTLY``, ``VACUUM``, ...: those go in a ``.notx.sql`` file).
These checks read words outside quotes and comments; they only refuse early. What holds the
guarantees is the server: see ``migration_sql``.

The ledger is ``pgvector_deploy.schema_migrations(name, sha256, applied_at)`` in the app's
database, owned by the app role. Before applying anything the operation reads it (the
``MigrationLedger`` fact) and compares it with the folder:

- a file whose sha256 differs from the one recorded stops the run, naming the file and both
  checksums: an applied migration is never applied again;
- a file whose sha256 is recorded under another name (a renamed file) is reported, not run;
  the ledger keeps the name it ran under;
- a new file whose name sorts before one already applied stops the run too (it would run out
  of order);
- otherwise the pending files are applied in name order; with none pending, the operation
  yields nothing.

Every migration and every ledger read connects as the app role itself (``as_app``: the OS
user postgres, mapped to the app role by pg_ident.conf's ``pgvector_deploy`` map, which
``networking.client_access`` writes), so session_user is the app: nothing in a file, and no
code of the app's that it sets off, can become anyone else. Each file is sent on psql's
standard input (never on a command line), wrapped as::

    BEGIN; <refuse unless session_user and current_user are the app role>
    LOCK the ledger; <already applied, by name or content? then ROLLBACK, say so (psql \\warn), quit>
    CREATE FUNCTION pg_temp.pgvector_deploy_migrate() ... SECURITY DEFINER AS $$
      xact := pg_current_xact_id(); EXECUTE '<the file>';
      <check: still that transaction, still the app role>
      INSERT INTO pgvector_deploy.schema_migrations (name, sha256) VALUES (...); $$;
    SELECT pg_temp.pgvector_deploy_migrate();
    COMMIT;

PostgreSQL itself keeps the file in that transaction: no transaction control can run inside
a function called in a transaction block (EXECUTE of COMMIT is "not implemented", a
procedure's COMMIT is "invalid transaction termination"), and inside a security-definer
function no role can be set. A failing statement rolls the whole file back and the run stops
naming the file, the line and PostgreSQL's error; later files are not run. Whether it was
rolled back is asked of the ledger afterwards, never assumed.

A ``.notx.sql`` file runs statement by statement outside a transaction (psql's own
autocommit), in the app's session, and is recorded after its last statement succeeded. It is
not atomic: a failure leaves the statements before it committed, and the next run runs the
whole file again. It may contain no backslash at all (so psql can only split it into SQL
statements).

Example::

    migrations.apply(plan, name="App SQL migrations are applied")
"""

from __future__ import annotations

import re
import shlex

from pyinfra import host, logger
from pyinfra.api import StringCommand, operation

from .errors import Var, fail
from .facts import LEDGER, LEDGER_SCHEMA, MigrationLedger
from .migration_files import FILE_NAME, NOTX_SUFFIX, Migration, MigrationError
from .plan import Plan
from .shell import SAFE_PATH, as_app, fails_host_on_error, host_locked

DONE_MARKER = "pgvector-deploy applied"  # psql prints it (\warn) after the COMMIT
# What psql prints (\warn, our own script, and psql exits 0 only after it: no server message
# can stand in for it) when the ledger has the file already (another run applied it while this
# one waited for the host lock), or its content under another name. Decided before any of the
# file runs; a success.
ALREADY_APPLIED = "pgvector-deploy already in the ledger (another run applied it meanwhile), skipped:"
RENAMED_MARKER = "pgvector-deploy content already in the ledger under another name, skipped:"
CHANGED_MARKER = "pgvector-deploy in the ledger with another sha256, not run:"
OPEN_MARKER = "pgvector-deploy left a transaction open, rolled back:"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# --- comparing the folder with the ledger --------------------------------------------------------


def renamed(migrations: tuple[Migration, ...], applied: dict[str, str]) -> list[tuple[Migration, str]]:
    """(file, name it was applied as) for each file whose name is not in the ledger but whose
    sha256 is: its content was applied under another name (a rename, or a copy). Such a file
    is never run again; the ledger keeps the name it ran under."""
    by_content: dict[str, str] = {}
    for name, digest in sorted(applied.items()):
        by_content.setdefault(digest, name)
    return [(m, by_content[m.sha256]) for m in sorted(migrations, key=lambda m: m.name) if m.name not in applied and m.sha256 in by_content]


def pending(migrations: tuple[Migration, ...], applied: dict[str, str]) -> list[Migration]:
    """The migrations still to apply, in name order, given the ledger (name -> sha256).

    Raises ``MigrationError`` when a file changed after it was applied, or when a new file
    sorts before one that is already applied. Files in the ledger but no longer in the folder
    are left alone (nothing is ever undone); a file whose content the ledger has under another
    name is not pending (``renamed``). Two new files with the same bytes are one migration:
    the first in name order runs.
    """
    changed = [m for m in migrations if m.name in applied and applied[m.name] != m.sha256]
    if changed:
        details = "; ".join(
            f"{m.name} was applied with sha256 {applied[m.name]}, and the file now has sha256 {m.sha256}" for m in changed
        )
        raise MigrationError(
            f"applied migrations were changed: {details}. An applied migration is never applied again, so "
            "nothing was applied. Fix: put the file back as it was when applied (e.g. git checkout it), and "
            "put the change in a new file that sorts after the last one."
        )
    seen = set(applied.values())
    new = []
    for m in sorted(migrations, key=lambda m: m.name):
        if m.name not in applied and m.sha256 not in seen:
            new.append(m)
            seen.add(m.sha256)
    if new and applied:
        last = max(applied)
        early = [m.name for m in new if m.name < last]
        if early:
            raise MigrationError(
                f"{', '.join(early)} {'is' if len(early) == 1 else 'are'} new but sort{'s' if len(early) == 1 else ''} "
                f"before {last}, which is already applied: applying now would run out of name order. Nothing was "
                f"applied. Fix: rename {'it' if len(early) == 1 else 'them'} to sort after {last} "
                "(e.g. a higher number prefix)."
            )
    return new


# --- the SQL we send -------------------------------------------------------------------------------


def ledger_sql(role: str) -> str:
    """Create the ledger, as the app role (its own database; ORMs look only at public)."""
    return (
        "BEGIN;\n"
        f"{_session_check(role, 'the ledger')}"
        f"CREATE SCHEMA IF NOT EXISTS {LEDGER_SCHEMA};\n"
        f"CREATE TABLE IF NOT EXISTS {LEDGER} (\n"
        "    name text PRIMARY KEY,\n"
        "    sha256 text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),\n"
        "    applied_at timestamptz NOT NULL DEFAULT now()\n"
        ");\n"
        f"COMMENT ON TABLE {LEDGER} IS 'pgvector-deploy: SQL migrations applied from pg_migrations_dir, "
        "each once, with the sha256 of the file. Do not edit.';\n"
        "COMMIT;\n"
    )


def _session_check(role: str, what: str) -> str:
    """SQL: stop unless this is the app role's own session (``as_app``): with another session
    user, code the app planted could become that user."""
    return (
        "DO $pgvector_deploy$ BEGIN IF session_user OPERATOR(pg_catalog.<>) "
        f"'{role}' OR current_user OPERATOR(pg_catalog.<>) '{role}' THEN "
        f"RAISE EXCEPTION 'pgvector-deploy: {what} must run in the session of the app role {role}, not %', session_user; "
        "END IF; END $pgvector_deploy$;\n"
    )


def _dollar_tag(base: str, *texts: str) -> str:
    """A dollar-quote tag ``$base…$`` that occurs in none of ``texts``."""
    for suffix in range(1000):
        tag = f"${base}{suffix}$"
        if not any(tag in text for text in texts):
            return tag
    raise ValueError("no free dollar-quote tag")  # 1000 tags in one file: not a real file


def _ledger_state(migration: Migration, locked: bool) -> str:
    """psql: whether the ledger has this file (by name, or its content under another name),
    asked before any of it runs; if so say so (our own \\warn, then exit 0) and stop."""
    name, digest = migration.name, migration.sha256
    where = f"FROM ONLY {LEDGER} AS l WHERE"
    lock = f"LOCK TABLE ONLY {LEDGER} IN SHARE ROW EXCLUSIVE MODE;\n" if locked else ""
    end = "ROLLBACK;\n" if locked else ""
    return (
        lock
        + f"SELECT EXISTS (SELECT {where} l.name = '{name}' AND l.sha256 = '{digest}') AS pgvector_deploy_applied, "
        f"EXISTS (SELECT {where} l.name = '{name}' AND l.sha256 <> '{digest}') AS pgvector_deploy_changed, "
        f"EXISTS (SELECT {where} l.name <> '{name}' AND l.sha256 = '{digest}') AS pgvector_deploy_renamed \\gset\n"
        f"\\if :pgvector_deploy_applied\n{end}\\warn {ALREADY_APPLIED} {name}\n\\quit\n\\endif\n"
        f"\\if :pgvector_deploy_renamed\n{end}\\warn {RENAMED_MARKER} {name}\n\\quit\n\\endif\n"
        f"\\if :pgvector_deploy_changed\n{end}\\warn {CHANGED_MARKER} {name}\n\\quit\n\\endif\n"
    )


def migration_sql(migration: Migration, role: str) -> str:
    """The file wrapped in its transaction, in the app role's session (``as_app``), with its
    ledger row inside the same transaction; the file runs inside a function (``EXECUTE``).

    That function is what keeps the file in our transaction, for certain and by PostgreSQL:
    statements run by EXECUTE in a function called inside a transaction block cannot commit,
    roll back or start a transaction (nor can a procedure they CALL), and CREATE INDEX
    CONCURRENTLY or VACUUM are refused there. It checks anyway, after the file, that the
    transaction id is the one it started with. It is ``SECURITY DEFINER`` (owned by the app),
    so no role can be set inside either, not even one the app is a member of.
    The file starts on line 1 of the text EXECUTE runs, so PostgreSQL's ``LINE n`` is the file's.
    """
    if migration.notx:
        return notx_sql(migration, role)
    name = migration.name
    assert FILE_NAME.match(name) and _HEX64.match(migration.sha256)
    file_tag = _dollar_tag("pgvector_deploy_file", migration.sql)
    body_tag = _dollar_tag("pgvector_deploy_body", migration.sql, file_tag)
    # The file is the app's SQL: PostgreSQL's default search_path for it (our sessions pin
    # pg_catalog, pg_temp); everything of ours is schema-qualified.
    return (
        "BEGIN;\n"
        + _session_check(role, name)
        + f"SELECT pg_catalog.set_config('pgvector_deploy.migration', '{name}', true);\n"
        + _ledger_state(migration, locked=True)
        + "CREATE FUNCTION pg_temp.pgvector_deploy_migrate() RETURNS void LANGUAGE plpgsql SECURITY DEFINER "
        f"SET search_path TO \"$user\", public AS {body_tag}\n"
        "DECLARE xact pg_catalog.xid8 := pg_catalog.pg_current_xact_id();\nBEGIN\n"
        f"EXECUTE {file_tag}{migration.sql}\n{file_tag};\n"
        f"IF pg_catalog.pg_current_xact_id() OPERATOR(pg_catalog.<>) xact OR session_user OPERATOR(pg_catalog.<>) '{role}' "
        f"OR current_user OPERATOR(pg_catalog.<>) '{role}' OR pg_catalog.current_setting('pgvector_deploy.migration', true) "
        f"IS DISTINCT FROM '{name}' THEN\n"
        f"  RAISE EXCEPTION 'pgvector-deploy: {name} left its transaction or changed the role; it was not recorded';\n"
        "END IF;\n"
        f"INSERT INTO {LEDGER} (name, sha256) VALUES ('{name}', '{migration.sha256}');\n"
        f"END {body_tag};\n"
        "SELECT pg_temp.pgvector_deploy_migrate();\n"
        "COMMIT;\n"
        f"\\warn {DONE_MARKER} {name}\n"
    )


def notx_sql(migration: Migration, role: str) -> str:
    """A ``.notx.sql`` file for psql to run statement by statement in autocommit, in the app
    role's session, then its ledger row. The file holds no backslash (``sql_problems``), so
    psql reads it as SQL only. Afterwards: a transaction the file left open is rolled back and
    the file not recorded (two transaction ids that differ prove autocommit); a role it set is
    reset before the row is written."""
    name = migration.name
    assert FILE_NAME.match(name) and _HEX64.match(migration.sha256) and "\\" not in migration.sql
    return (
        _session_check(role, name)
        + _ledger_state(migration, locked=False)
        # The file gets the search_path a wrapped file gets (our own statements pin theirs).
        + "SET search_path TO \"$user\", public;\n"
        + f"{migration.sql}\n;\n"
        + "RESET search_path;\n"
        # Not a transaction block: each statement is its own transaction, so two ids differ.
        "SELECT pg_catalog.pg_current_xact_id()::pg_catalog.text AS pgvector_deploy_xact \\gset\n"
        "SELECT pg_catalog.pg_current_xact_id()::pg_catalog.text OPERATOR(pg_catalog.<>) :'pgvector_deploy_xact' "
        "AS pgvector_deploy_autocommit \\gset\n"
        f"\\if :pgvector_deploy_autocommit\n\\else\nROLLBACK;\n\\warn {OPEN_MARKER} {name}\n\\quit\n\\endif\n"
        "RESET ROLE;\n"
        + _session_check(role, name)
        + f"INSERT INTO {LEDGER} (name, sha256) VALUES ('{name}', '{migration.sha256}');\n"
        f"\\warn {DONE_MARKER} {name}\n"
    )


def ledger_command(plan: Plan) -> StringCommand:
    app = plan.settings.app
    psql = as_app(plan.platform, plan.port, app.database, app.user)
    return StringCommand(f"PATH={SAFE_PATH};", psql, "-f - > /dev/null", _stdin=ledger_sql(app.user))


# psql's error -> one line "<file> line <n>: ERROR: ... DETAIL: ... HINT: ...": the line is
# PostgreSQL's LINE n (the file is line 1 of the text EXECUTE runs); the quoted statement,
# the caret and the CONTEXT (our wrapper function) are left out.
_ERROR_AWK = r"""
/^psql:<stdin>:[0-9]+: / { sub(/^psql:<stdin>:[0-9]+: /, ""); msg = msg " " $0; skip = 0; next }
/^LINE [0-9]+: / { if (line == "") { line = $2; sub(/:$/, "", line) } skip = 1; next }
/^(QUERY|CONTEXT): / { skip = 1; next }
/^(DETAIL|HINT): / { msg = msg " " $0; skip = 0; next }
skip { next }
{ msg = msg " " $0 }
END { gsub(/[ \t]+/, " ", msg); sub(/^ /, "", msg); printf "%s%s: %s", name, (line == "" ? "" : " line " line), msg }
"""


def apply_script(plan: Plan, name: str, sha256: str = "0" * 64) -> str:
    """Shell: run psql on the SQL from standard input; on failure name the file, the line and
    PostgreSQL's error, and say what the ledger says happened (the file and its row commit
    together, so a row means it committed); on success insist that psql reached the end (the
    marker after COMMIT)."""
    assert FILE_NAME.match(name) and _HEX64.match(sha256)
    app = plan.settings.app
    psql = f"{as_app(plan.platform, plan.port, app.database, app.user)} -f -"
    notx = name.endswith(NOTX_SUFFIX)
    recorded_sql = f"SELECT pg_catalog.count(*) FROM ONLY {LEDGER} WHERE name = '{name}' AND sha256 = '{sha256}'"
    recorded = as_app(plan.platform, plan.port, app.database, app.user, recorded_sql)
    if notx:
        after = (
            f"migration {name} failed: it is a {NOTX_SUFFIX} file, run outside a transaction, so the statements "
            "before the failing one may have been committed, and it was not recorded (the next run runs it again "
            "from its first statement); later files were not run. "
        )
    else:
        after = f"migration {name} failed and was rolled back: nothing of it was applied, and later files were not run. "
    failed = fail(after, Var("why"), f" Fix: correct {name} (it is not in the ledger) and run the deploy again.")
    unknown = fail(
        f"migration {name} failed, and whether it was committed is unknown: the ledger could not be read "
        f"afterwards. Later files were not run. ", Var("why"),
        f" Fix: if psql could not log in as the app role, check the pgvector_deploy peer line in pg_hba.conf and the "
        f"map in pg_ident.conf (the deploy writes both); otherwise look for {name} in {LEDGER}; then run the deploy again.",
    )  # fmt: skip
    unfinished = fail(
        f"migration {name}: psql stopped before the end of the file, so it was not recorded"
        + (" (statements of this .notx.sql file may have been committed). " if notx else ". "),
        Var("why"), " Fix: check the file for an unfinished statement.",
    )  # fmt: skip
    changed = fail(
        f"migration {name} is in the ledger with another sha256 (another run recorded it meanwhile): an applied "
        f"migration is never applied again; nothing of it was run. Fix: put {name} back as it was when applied, "
        "and put the change in a new file."
    )
    left_open = fail(
        f"migration {name} ({NOTX_SUFFIX}) left a transaction open at its end: that transaction was rolled back, the "
        "statements before it were committed, and the file was not recorded. Fix: end every BEGIN with COMMIT in it."
    )
    line = lambda marker: shlex.quote(f"{marker} {name}")  # noqa: E731
    return (
        f"PATH={SAFE_PATH}; "
        # Only psql's own lines, and only when it exits 0, tell success or "already applied":
        # a server message (the app's RAISE, from a trigger or a row security policy) may say
        # anything, line breaks included, but only before our last line: each marker is the
        # last thing psql prints (\quit or the end follows it), so only the last line counts.
        f"if why=$({psql} 2>&1 >/dev/null); then "
        "last=$(printf '%s\\n' \"$why\" | tail -n 1); "
        f"if [ \"$last\" = {line(DONE_MARKER)} ]; then :; "
        f"elif [ \"$last\" = {line(ALREADY_APPLIED)} ]; then "
        f"echo {shlex.quote(f'{name} was applied by another run meanwhile; skipped')}; "
        f"elif [ \"$last\" = {line(RENAMED_MARKER)} ]; then "
        f"echo {shlex.quote(f'{name}: its content was applied under another name (by another run meanwhile); skipped')}; "
        f"elif [ \"$last\" = {line(CHANGED_MARKER)} ]; then {changed}; "
        f"elif [ \"$last\" = {line(OPEN_MARKER)} ]; then {left_open}; "
        f"else {unfinished}; fi; "
        "else "
        f"why=$(printf '%s\\n' \"$why\" | awk -v name={name} {shlex.quote(_ERROR_AWK)}); "
        # The file and its ledger row commit together: the ledger says which happened.
        f"case $({recorded} </dev/null 2>/dev/null) in "
        f"1) echo {shlex.quote(f'{name} was committed and recorded, though psql then failed:')} \"$why\" ;; "
        f"0) {failed} ;; "
        f"*) {unknown} ;; esac; "
        "fi"
    )


def apply_command(plan: Plan, migration: Migration) -> StringCommand:
    return StringCommand(apply_script(plan, migration.name, migration.sha256), _stdin=migration_sql(migration, plan.settings.app.user))


# --- the fact and the operation ---------------------------------------------------------------------


@operation()
@host_locked
@fails_host_on_error
def apply(plan: Plan):
    """Apply the app database's pending SQL migrations, each in its own transaction in the app
    role's session, recording each in the ledger; refuse when an applied file changed.

    .. code:: python

        migrations.apply(plan, name="App SQL migrations are applied")
    """
    settings = plan.settings
    app = settings.app
    if app is None or not settings.migrations:
        host.noop(f"no SQL migrations in {settings.migrations_dir or 'pg_migrations_dir'}")
        return
    state = plan.fact(MigrationLedger, platform=plan.platform, port=plan.port, database=app.database, user=app.user)
    if state["refused"]:
        yield fail(
            f"{LEDGER} in database {app.database} is not the plain table pgvector-deploy made ({state['refused']}); "
            "it was not read. Nothing was applied. Fix: find out who changed it, restore it as a plain table with text "
            "columns name and sha256 listing the applied files, then run again."
        )
        return
    if not state["app_login"]:
        # The ledger is there but the app cannot log in yet (this run's pg_hba.conf change is
        # not executed yet, while pyinfra plans): every file is planned, each command asks the
        # ledger itself, in the app's session, before any of it runs.
        for migration in sorted(settings.migrations, key=lambda m: m.name):
            yield apply_command(plan, migration)
        return
    try:
        todo = pending(settings.migrations, state["applied"])
    except MigrationError as error:
        yield fail(f"{settings.migrations_dir}: {error}")
        return
    for migration, applied_as in renamed(settings.migrations, state["applied"]):
        shown = applied_as if FILE_NAME.match(applied_as) else "another name"  # the ledger is the app's to write
        message = f"{migration.name} is not run: its content was applied as {shown} (renamed or copied)"
        host.noop(message)
        logger.warning(f"{host.print_prefix}{message}")  # shown at every verbosity: a noop is not
    if not todo:
        host.noop(f"all {len(settings.migrations)} migrations in {settings.migrations_dir} are applied")
        return
    if not state["ledger"]:
        yield ledger_command(plan)
    # Not postgres.sql / postgres.load: they run as the login they are given every time, with no
    # ledger to skip a file already applied, and no check of the ledger under its lock.
    for migration in todo:
        yield apply_command(plan, migration)
