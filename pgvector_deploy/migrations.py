"""Ordered SQL migrations for the app's database: each file once, in name order, in its own
transaction, as the app role, recorded in a ledger with its checksum.

The files are the ``*.sql`` files directly in ``pg_migrations_dir`` on the control machine
(default ``files/migrations/``; subfolders and other files are ignored). They are read and
checked when the host data is validated, so a bad file refuses the host before anything
changes: a name outside ``[A-Za-z0-9._-]``, a file that is not UTF-8, or SQL the deploy cannot
wrap safely (a psql backslash command, ``BEGIN``/``COMMIT``/``ROLLBACK``, ``SET ROLE``,
``COPY ... FROM STDIN``, an unterminated quote or comment).

The ledger is ``pgvector_deploy.schema_migrations(name, sha256, applied_at)`` in the app's
database, owned by the app role. Before applying anything the operation reads it (the
``MigrationLedger`` fact) and compares it with the folder:

- a file whose sha256 differs from the one recorded stops the run, naming the file and both
  checksums: an applied migration is never applied again;
- a new file whose name sorts before one already applied stops the run too (it would run out
  of order);
- otherwise the pending files are applied in name order; with none pending, the operation
  yields nothing.

Each file is sent on psql's standard input (never on a command line) as the ``postgres`` OS
user over the local socket, wrapped as::

    BEGIN; SET LOCAL ROLE app;
    CREATE FUNCTION pg_temp.pgvector_deploy_migrate() ... SECURITY DEFINER AS $$
      LOCK the ledger; EXECUTE '<the file>';
      <check: still our transaction, still the app role>
      INSERT INTO pgvector_deploy.schema_migrations (name, sha256) VALUES (...);
      SET CONSTRAINTS ALL IMMEDIATE; $$;
    SELECT pg_temp.pgvector_deploy_migrate();
    <check: no deferrable trigger or constraint left to run at COMMIT>
    COMMIT;

so whatever the file creates is owned by the app role, and the file and its ledger row commit
together or not at all. A failing statement rolls the whole file back and the run stops naming
the file, the line and PostgreSQL's error; later files are not run.

``SET ROLE`` alone gives ownership, not a sandbox (the session user is postgres, so any code
of the app's the file sets off could ``RESET ROLE``); inside the app-owned security-definer
function PostgreSQL refuses any change of role or session authorization.

Example::

    migrations.apply(plan, name="App SQL migrations are applied")
"""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, operation

from .facts import parse_key_values
from .shell import SAFE_PATH, Var, as_postgres, fail, fails_host_on_error, host_locked

if TYPE_CHECKING:  # preflight imports settings, which imports this module
    from .platforms import Platform
    from .preflight import Plan

LEDGER_SCHEMA = "pgvector_deploy"
LEDGER = f"{LEDGER_SCHEMA}.schema_migrations"
# Plain names only: they go into SQL literals, shell words and fact output unquoted.
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,123}\.sql$")
DONE_MARKER = "pgvector-deploy applied"  # psql prints it (\warn) after the COMMIT
# What psql prints (\warn, our own script: no server message can stand in for it, and psql
# exits 0) when the ledger has the file already: another run applied it while this one waited
# for the host lock. A success, decided before any of the file runs.
ALREADY_APPLIED = "pgvector-deploy already in the ledger (another run applied it meanwhile), skipped:"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class MigrationError(ValueError):
    """A migration folder or file we refuse; the message names the file and the fix."""


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str
    sha256: str  # of the file's bytes, exactly as they are on disk

    def __repr__(self) -> str:
        return f"Migration({self.name!r}, sha256={self.sha256[:12]}...)"


# --- reading and checking the folder (control machine) --------------------------------------


def read_folder(folder: Path) -> tuple[Migration, ...]:
    """The ``*.sql`` files directly in ``folder``, in name order, each read and checked.

    Raises ``MigrationError`` naming the first bad file.
    """
    migrations = []
    for path in sorted(folder.iterdir(), key=lambda path: path.name):
        if not path.name.endswith(".sql") or path.name.startswith(".") or not path.is_file():
            continue
        if not FILE_NAME.match(path.name):
            raise MigrationError(
                f"{path.name!r}: a migration name may use only letters, digits, '.', '_' and '-', "
                "start with a letter or digit, and be at most 128 characters. "
                "Fix: rename it, e.g. 0003_add_documents.sql."
            )
        raw = path.read_bytes()
        migrations.append(parse_migration(path.name, raw))
    return tuple(migrations)


def parse_migration(name: str, raw: bytes) -> Migration:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise MigrationError(f"{name}: not UTF-8 ({error}). Fix: save the file as UTF-8.") from None
    if "\0" in text:
        raise MigrationError(f"{name}: contains a NUL byte. Fix: save it as a plain UTF-8 text file.")
    problems = sql_problems(text.removeprefix("\ufeff"))
    if problems:
        raise MigrationError(f"{name} line {problems[0][0]}: {problems[0][1]}")
    return Migration(name=name, sql=text.removeprefix("\ufeff"), sha256=hashlib.sha256(raw).hexdigest())


_IDENT_CHAR = re.compile(r"[A-Za-z0-9_$\x80-\uffff]")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_\x80-\uffff][A-Za-z0-9_\x80-\uffff]*)?\$")
_WORD = re.compile(r"[A-Za-z_\x80-\uffff][A-Za-z0-9_$\x80-\uffff]*")

_TRANSACTION_FIX = (
    "the deploy runs each file in one transaction of its own. Fix: remove it (a statement that "
    "cannot run in a transaction, such as CREATE INDEX CONCURRENTLY, cannot be a migration here)."
)
_ROLE_FIX = "the deploy runs every file as the app role. Fix: remove it."
_BACKSLASH = (
    "a backslash outside quotes is a psql command (\\c, \\i, \\copy, \\set, ...), and files must be plain "
    "SQL. Fix: remove it; use INSERT instead of COPY FROM STDIN data."
)
_UNENDED = (
    "the last statement never ends (a parenthesis or BEGIN ATOMIC ... END is not closed). "
    "Fix: close it and end the statement with ;."
)


@dataclass
class _Statement:
    line: int  # where its first word is
    words: list[str]  # upper-cased words outside quotes and comments


def split_statements(sql: str) -> tuple[list[_Statement], list[tuple[int, str]]]:
    """Split SQL the way psql does (quotes, comments, dollar quotes, parentheses, BEGIN ATOMIC
    and CASE ... END) into statements; returns them with the problems found: psql backslash
    commands and unterminated quotes or comments, each with its line number."""
    statements: list[_Statement] = []
    problems: list[tuple[int, str]] = []
    words: list[str] = []
    first_line = 0
    paren_depth = begin_depth = 0
    line, i, n = 1, 0, len(sql)
    previous = ""  # the last character outside quotes and comments

    def end_statement():
        nonlocal words, first_line
        if words:
            statements.append(_Statement(first_line, words))
        words, first_line = [], 0

    while i < n:
        char = sql[i]
        if char == "\n":
            line += 1
            i += 1
            previous = char
            continue
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
            continue
        if sql.startswith("/*", i):
            start, depth, i = line, 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    line += sql[i] == "\n"
                    i += 1
            if depth:
                problems.append((start, "a /* comment is never closed. Fix: close it with */."))
            previous = " "
            continue
        if char in "'\"":
            start = line
            escapes = char == "'" and _is_e_prefix(sql, i)  # E'...': backslash escapes
            i += 1
            closed = False
            while i < n:
                if escapes and sql[i] == "\\":
                    line += sql[i + 1 : i + 2] == "\n"
                    i += 2
                    continue
                if sql[i] == char:
                    if sql.startswith(char * 2, i):  # '' or "" inside the literal
                        i += 2
                        continue
                    i += 1
                    closed = True
                    break
                line += sql[i] == "\n"
                i += 1
            if not closed:
                what = "quoted string" if char == "'" else 'quoted name (")'
                problems.append((start, f"a {what} is never closed. Fix: close the quote."))
            if not first_line:
                first_line = start
            words.append("'" if char == "'" else '"')
            previous = char
            continue
        if char == "$" and not _IDENT_CHAR.match(previous or " "):
            tag = _DOLLAR_TAG.match(sql, i)
            if tag:
                start = line
                close = sql.find(tag.group(0), tag.end())
                body_end = n if close < 0 else close + len(tag.group(0))
                line += sql.count("\n", i, body_end)
                i = body_end
                if close < 0:
                    problems.append((start, f"a {tag.group(0)} quoted string is never closed. Fix: close it with {tag.group(0)}."))
                if not first_line:
                    first_line = start
                words.append("$")
                previous = "$"
                continue
        if char == "\\":
            problems.append((line, _BACKSLASH))
            end = sql.find("\n", i)  # psql takes the rest of the line as the command's arguments
            i = n if end < 0 else end
            continue
        if char == "(":
            paren_depth += 1
        elif char == ")" and paren_depth:
            paren_depth -= 1
        elif char == ";" and paren_depth == 0 and begin_depth == 0:
            end_statement()
            i += 1
            previous = char
            continue
        word = _WORD.match(sql, i) if not _IDENT_CHAR.match(previous or " ") else None
        if word:
            text = word.group(0).upper()
            # psql's rule: BEGIN or CASE after a statement's first word opens a block whose
            # semicolons do not end the statement (BEGIN ATOMIC bodies); END closes it.
            if text in ("BEGIN", "CASE") and words:
                begin_depth += 1
            elif text == "END" and begin_depth:
                begin_depth -= 1
            if not first_line:
                first_line = line
            words.append(text)
            i = word.end()
            previous = sql[i - 1]
            continue
        if not char.isspace() and not first_line:
            first_line = line
        if not char.isspace():
            words.append(char)
        previous = char
        i += 1
    if paren_depth or begin_depth:
        problems.append((first_line or line, _UNENDED))
    end_statement()
    return statements, problems


def _is_e_prefix(sql: str, quote: int) -> bool:
    """Is the quote at ``quote`` an E'...' string (E not part of a longer word)?"""
    return quote >= 1 and sql[quote - 1] in "eE" and (quote < 2 or not _IDENT_CHAR.match(sql[quote - 2]))


def statement_problem(words: list[str]) -> str | None:
    """Why the deploy cannot run this statement inside its transaction as the app role, or None."""
    first = words[0]
    second = words[1] if len(words) > 1 else ""
    third = words[2] if len(words) > 2 else ""
    if first in ("BEGIN", "START", "COMMIT", "END", "ABORT") or (first == "ROLLBACK" and second != "TO"):
        return f"{first} starts or ends a transaction, but {_TRANSACTION_FIX}"
    if first == "PREPARE" and second == "TRANSACTION":
        return f"PREPARE TRANSACTION ends the transaction, but {_TRANSACTION_FIX}"
    if first == "SET" and (second == "ROLE" or (second in ("SESSION", "LOCAL") and third in ("ROLE", "AUTHORIZATION"))):
        return f"SET {second if second == 'ROLE' else second + ' ' + third} changes who runs the migration, but {_ROLE_FIX}"
    if first == "RESET" and second in ("ROLE", "SESSION", "ALL"):
        return f"RESET {second} changes who runs the migration, but {_ROLE_FIX}"
    if first == "COPY" and any(a == "FROM" and b in ("STDIN", "PSTDIN") for a, b in pairwise(words)):
        return "COPY ... FROM STDIN reads data from psql's input, which carries the migration itself. Fix: use INSERT ... VALUES."
    return None


def sql_problems(sql: str) -> list[tuple[int, str]]:
    """Everything in ``sql`` the deploy refuses to run, as (line, message), in line order."""
    statements, problems = split_statements(sql)
    for statement in statements:
        problem = statement_problem(statement.words)
        if problem:
            problems.append((statement.line, problem))
    return sorted(problems, key=lambda problem: problem[0])


# --- comparing the folder with the ledger --------------------------------------------------------


def pending(migrations: tuple[Migration, ...], applied: dict[str, str]) -> list[Migration]:
    """The migrations still to apply, in name order, given the ledger (name -> sha256).

    Raises ``MigrationError`` when a file changed after it was applied, or when a new file
    sorts before one that is already applied. Files in the ledger but no longer in the folder
    are left alone (nothing is ever undone).
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
    new = [m for m in sorted(migrations, key=lambda m: m.name) if m.name not in applied]
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
    """Create the ledger, owned by the app role (its own database; ORMs look only at public)."""
    return (
        "BEGIN;\n"
        f"SET LOCAL ROLE {role};\n"
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


# Deferrable checks run at COMMIT, outside the security-definer function: a constraint
# trigger or a deferrable unique/exclusion constraint (index expressions) could run the app's
# code there, where it could still RESET ROLE. Foreign keys run as the table owner, safely;
# a constraint trigger ('t') is listed as the trigger.
DEFERRED_CODE_SQL = (
    "SELECT pg_catalog.string_agg(what, ', ') FROM ("
    "SELECT 'trigger ' || t.tgname || ' on ' || t.tgrelid::pg_catalog.regclass::pg_catalog.text AS what "
    "FROM pg_catalog.pg_trigger t WHERE t.tgdeferrable AND NOT t.tgisinternal "
    "UNION ALL SELECT 'constraint ' || c.conname || ' on ' || c.conrelid::pg_catalog.regclass::pg_catalog.text "
    "FROM pg_catalog.pg_constraint c WHERE c.condeferrable AND c.contype NOT IN ('f', 't')) AS found"
)


def _dollar_tag(base: str, *texts: str) -> str:
    """A dollar-quote tag ``$base…$`` that occurs in none of ``texts``."""
    for suffix in range(1000):
        tag = f"${base}{suffix}$"
        if not any(tag in text for text in texts):
            return tag
    raise ValueError("no free dollar-quote tag")  # 1000 tags in one file: not a real file


def migration_sql(migration: Migration, role: str) -> str:
    """The file wrapped in its transaction, as the app role, with its ledger row inside the same
    transaction; the file runs inside a ``SECURITY DEFINER`` function owned by the app role.

    ``SET ROLE`` alone is no sandbox: the session user is postgres, so any code of the app's
    that the file sets off (a trigger, a function it replaced) could ``RESET ROLE``. Inside a
    security-definer function PostgreSQL refuses to change role or session authorization, so
    that code has the app's rights only. After it, and before COMMIT, the database must have
    no deferrable check that could run the app's code at COMMIT (``DEFERRED_CODE_SQL``).
    The file starts on line 1 of the text EXECUTE runs, so PostgreSQL's ``LINE n`` is the file's.
    """
    name = migration.name
    assert FILE_NAME.match(name) and _HEX64.match(migration.sha256)
    file_tag = _dollar_tag("pgvector_deploy_file", migration.sql)
    body_tag = _dollar_tag("pgvector_deploy_body", migration.sql, file_tag)
    # The file is the app's SQL: PostgreSQL's default search_path for it (our sessions pin
    # pg_catalog, pg_temp); everything of ours is schema-qualified.
    return (
        f"BEGIN;\nSET LOCAL ROLE {role};\nSET LOCAL client_encoding TO 'UTF8';\n"
        f"SELECT pg_catalog.set_config('pgvector_deploy.migration', '{name}', true);\n"
        # Whether the ledger has it, asked as the app (its table): locked until COMMIT.
        "CREATE FUNCTION pg_temp.pgvector_deploy_applied() RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER "
        "SET search_path TO pg_catalog, pg_temp AS $pgvector_deploy$\nBEGIN\n"
        f"LOCK TABLE {LEDGER} IN SHARE ROW EXCLUSIVE MODE;\n"
        f"RETURN EXISTS (SELECT FROM ONLY {LEDGER} WHERE name = '{name}');\nEND $pgvector_deploy$;\n"
        "SELECT pg_temp.pgvector_deploy_applied() AS pgvector_deploy_already \\gset\n"
        "\\if :pgvector_deploy_already\nROLLBACK;\n"
        f"\\warn {ALREADY_APPLIED} {name}\n\\quit\n\\endif\n"
        "CREATE FUNCTION pg_temp.pgvector_deploy_migrate() RETURNS void LANGUAGE plpgsql SECURITY DEFINER "
        f"SET search_path TO \"$user\", public AS {body_tag}\nBEGIN\n"
        f"EXECUTE {file_tag}{migration.sql}\n{file_tag};\n"
        f"IF current_user <> '{role}' OR pg_catalog.current_setting('pgvector_deploy.migration', true) "
        f"IS DISTINCT FROM '{name}' THEN\n"
        f"  RAISE EXCEPTION 'pgvector-deploy: {name} ended the transaction or changed the role; it was not recorded';\n"
        "END IF;\n"
        f"INSERT INTO {LEDGER} (name, sha256) VALUES ('{name}', '{migration.sha256}');\n"
        f"SET CONSTRAINTS ALL IMMEDIATE;\nEND {body_tag};\n"
        "SELECT pg_temp.pgvector_deploy_migrate();\n"
        # A WITH HOLD cursor the app's code declared would run its query at COMMIT, outside the
        # function, where the session user (postgres) could be taken back: closed unread.
        "CLOSE ALL;\n"
        # Back as our own code: nothing of the app's on the path (it may have SET it).
        "SET LOCAL search_path TO pg_catalog, pg_temp;\n"
        f"DO $pgvector_deploy$ DECLARE found text := ({DEFERRED_CODE_SQL}); BEGIN IF found IS NOT NULL THEN "
        f"RAISE EXCEPTION 'pgvector-deploy: {name} was rolled back: the database has deferrable checks (%), which "
        "would run at COMMIT with more than the app role''s rights, so they must be NOT DEFERRABLE.', found; "
        "END IF; END $pgvector_deploy$;\n"
        "COMMIT;\n"
        f"\\warn {DONE_MARKER} {name}\n"
    )


def _psql_stdin(plan: Plan, database: str) -> str:
    return f"{as_postgres(plan.platform, plan.port, database)} -f -"


def ledger_command(plan: Plan) -> StringCommand:
    app = plan.settings.app
    return StringCommand(f"PATH={SAFE_PATH};", _psql_stdin(plan, app.database), "> /dev/null", _stdin=ledger_sql(app.user))


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


def apply_script(plan: Plan, name: str) -> str:
    """Shell: run psql on the SQL from standard input; on failure name the file, the line and
    PostgreSQL's error; on success insist that psql reached the end (the marker after COMMIT)."""
    assert FILE_NAME.match(name)
    psql = _psql_stdin(plan, plan.settings.app.database)
    failed = fail(
        f"migration {name} failed and was rolled back: nothing of it was applied, and later files were not run. ",
        Var("why"),
        f" Fix: correct {name} (it is not in the ledger yet) and run the deploy again.",
    )
    unfinished = fail(
        f"migration {name}: psql stopped before the end of the file, so it was not recorded. ", Var("why"),
        " Fix: check the file for an unfinished statement.",
    )  # fmt: skip
    return (
        f"PATH={SAFE_PATH}; "
        # Only psql's own lines, and only when it exits 0, tell success or "already applied":
        # a server message (the app's RAISE) may say anything, line breaks included.
        f"if why=$({psql} 2>&1 >/dev/null); then "
        f"if printf '%s\\n' \"$why\" | grep -qxF {shlex.quote(f'{DONE_MARKER} {name}')}; then :; "
        f"elif printf '%s\\n' \"$why\" | grep -qxF {shlex.quote(f'{ALREADY_APPLIED} {name}')}; then "
        f"echo {shlex.quote(f'{name} was applied by another run meanwhile; skipped')}; "
        f"else {unfinished}; fi; "
        "else "
        f"why=$(printf '%s\\n' \"$why\" | awk -v name={name} {shlex.quote(_ERROR_AWK)}); "
        f"{failed}; "
        "fi"
    )


def apply_command(plan: Plan, migration: Migration) -> StringCommand:
    return StringCommand(apply_script(plan, migration.name), _stdin=migration_sql(migration, plan.settings.app.user))


# --- the fact and the operation ---------------------------------------------------------------------


# What the ledger is, from pg_catalog alone: "none", "table" (the plain heap table we made,
# name and sha256 of type pg_catalog.text), or what else it is. The app owns it, so it could
# be a view, a foreign or partitioned table, or have columns of its own type whose casts or
# output function run its code; only a plain table of text is read with superuser rights.
LEDGER_SHAPE_SQL = (
    "SELECT CASE WHEN c.oid IS NULL THEN 'none' "
    "WHEN c.relkind <> 'r' THEN 'relkind ' || c.relkind::pg_catalog.text "
    "WHEN c.relam IS DISTINCT FROM (SELECT oid FROM pg_catalog.pg_am WHERE amname = 'heap') THEN 'a table access method' "
    "WHEN (SELECT pg_catalog.count(*) FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND NOT a.attisdropped "
    "AND a.attname IN ('name', 'sha256') AND a.atttypid = 'pg_catalog.text'::pg_catalog.regtype) <> 2 "
    "THEN 'columns name, sha256 not both of type pg_catalog.text' ELSE 'table' END "
    "FROM (SELECT) AS one LEFT JOIN pg_catalog.pg_class c ON c.relname = 'schema_migrations' "
    f"AND c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = '{LEDGER_SCHEMA}')"
)


# The rows are read by a function owned by the ledger's owner (the app) and run with its
# rights (SECURITY DEFINER, where no code can change role): planning a query on an app-owned
# table evaluates the app's code (an index predicate, an expression), which must never run as
# superuser. Read only (no write can set off a deferred trigger), and any cursor it declared
# WITH HOLD closed unread before COMMIT (which would run it outside the function).
LEDGER_READER_SQL = (
    "CREATE FUNCTION pg_temp.pgvector_deploy_ledger() RETURNS SETOF pg_catalog.text LANGUAGE plpgsql "
    "SECURITY DEFINER SET search_path TO pg_catalog, pg_temp AS $pgvector_deploy$ BEGIN RETURN QUERY "
    f"SELECT l.name OPERATOR(pg_catalog.||) '|' OPERATOR(pg_catalog.||) l.sha256 FROM ONLY {LEDGER} AS l; "
    "END $pgvector_deploy$",
    "DO $pgvector_deploy$ BEGIN EXECUTE pg_catalog.format('ALTER FUNCTION pg_temp.pgvector_deploy_ledger() "
    f"OWNER TO %I', (SELECT pg_catalog.pg_get_userbyid(relowner) FROM pg_catalog.pg_class WHERE oid = '{LEDGER}'"
    "::pg_catalog.regclass)); END $pgvector_deploy$",
)


class MigrationLedger(FactBase):
    """The app database's ledger: whether the database and the ledger table exist, each
    applied migration's name and sha256, and what refuses it (``LEDGER_SHAPE_SQL``).

    The rows are read in one transaction holding a lock on the table (so it cannot be swapped
    meanwhile) that checks the shape again, with ``FROM ONLY`` (no child table is read).
    """

    def command(self, platform: Platform, port: int, database: str):
        exists_sql = f"SELECT 1 FROM pg_catalog.pg_database WHERE datname = '{database}'"
        recheck = (
            f"DO $pgvector_deploy$ BEGIN IF ({LEDGER_SHAPE_SQL}) <> 'table' THEN "
            "RAISE EXCEPTION 'the ledger changed while it was read'; END IF; END $pgvector_deploy$"
        )
        read = " ".join(
            [as_postgres(platform, port, database)]
            + [f"-c {shlex.quote(sql)}" for sql in (*LEDGER_READER_SQL, "BEGIN READ ONLY", f"LOCK TABLE ONLY {LEDGER} IN ACCESS SHARE MODE", recheck, "SELECT * FROM pg_temp.pgvector_deploy_ledger()", "CLOSE ALL", "COMMIT")]
        )  # fmt: skip
        return f"""
PATH={SAFE_PATH}
if [ "$({as_postgres(platform, port, 'postgres', exists_sql)} 2>/dev/null)" = 1 ]; then
  echo database=yes
  shape=$({as_postgres(platform, port, database, LEDGER_SHAPE_SQL)} 2>/dev/null)
  case $shape in
    table)
      echo ledger=yes
      if rows=$({read} </dev/null 2>/dev/null); then
        [ -z "$rows" ] || printf '%s\\n' "$rows" | sed -e 's/^/applied=/'
      else
        echo "ledger_refused=it changed while it was read"
      fi ;;
    none) ;;
    *) echo "ledger_refused=${{shape:-unreadable}}" ;;
  esac
fi
true
"""

    @staticmethod
    def default():
        return parse_ledger([])

    def process(self, output):
        return parse_ledger(output)


def parse_ledger(lines: list[str]) -> dict:
    values = parse_key_values(lines)
    applied = {}
    for entry in values.get("applied", []):
        name, _, digest = entry.rpartition("|")
        if name:
            applied[name] = digest
    refused = values.get("ledger_refused", [""])[0] or None
    return {
        "database": values.get("database", [""])[0] == "yes",
        "ledger": values.get("ledger", [""])[0] == "yes" or refused is not None,
        "applied": {} if refused else applied,
        "refused": refused,
    }


@operation()
@host_locked
@fails_host_on_error
def apply(plan: Plan):
    """Apply the app database's pending SQL migrations, each in its own transaction as the app
    role, recording each in the ledger; refuse when an applied file changed.

    .. code:: python

        migrations.apply(plan, name="App SQL migrations are applied")
    """
    settings = plan.settings
    app = settings.app
    if app is None or not settings.migrations:
        host.noop(f"no SQL migrations in {settings.migrations_dir or 'pg_migrations_dir'}")
        return
    state = plan.fact(MigrationLedger, platform=plan.platform, port=plan.port, database=app.database)
    if state["refused"]:
        yield fail(
            f"{LEDGER} in database {app.database} is not the plain table pgvector-deploy made ({state['refused']}); "
            "it was not read, since reading it with superuser rights would run whatever the app role (its owner) "
            "put there. Nothing was applied. Fix: find out who changed it, restore it as a plain table with text "
            "columns name and sha256 listing the applied files, then run again."
        )
        return
    try:
        todo = pending(settings.migrations, state["applied"])
    except MigrationError as error:
        yield fail(f"{settings.migrations_dir}: {error}")
        return
    if not todo:
        host.noop(f"all {len(settings.migrations)} migrations in {settings.migrations_dir} are applied")
        return
    if not state["ledger"]:
        yield ledger_command(plan)
    for migration in todo:
        yield apply_command(plan, migration)
