"""Ordered SQL migrations for the app's database: each file once, in name order, in its own
transaction, in the app role's own session, recorded in a ledger with its checksum.

The files are the ``*.sql`` files directly in ``pg_migrations_dir`` on the control machine
(default ``files/migrations/``; subfolders and other files are ignored). They are read and
checked when the host data is validated, so a bad file refuses the host before anything
changes: a name outside ``[A-Za-z0-9._-]``, a file that is not UTF-8, or SQL the deploy cannot
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

import hashlib
import re
import shlex
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

from pyinfra import host, logger
from pyinfra.api import FactBase, StringCommand, operation

from .facts import parse_key_values
from .shell import SAFE_PATH, SUPERUSER_OPTIONS, Var, as_postgres, dbname_conninfo, fail, fails_host_on_error, host_locked

if TYPE_CHECKING:  # preflight imports settings, which imports this module
    from .platforms import Platform
    from .preflight import Plan

LEDGER_SCHEMA = "pgvector_deploy"
LEDGER = f"{LEDGER_SCHEMA}.schema_migrations"
# Plain names only: they go into SQL literals, shell words and fact output unquoted.
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,123}\.sql$")
NOTX_SUFFIX = ".notx.sql"  # run outside a transaction, statement by statement
DONE_MARKER = "pgvector-deploy applied"  # psql prints it (\warn) after the COMMIT
# What psql prints (\warn, our own script, and psql exits 0 only after it: no server message
# can stand in for it) when the ledger has the file already (another run applied it while this
# one waited for the host lock), or its content under another name. Decided before any of the
# file runs; a success.
ALREADY_APPLIED = "pgvector-deploy already in the ledger (another run applied it meanwhile), skipped:"
RENAMED_MARKER = "pgvector-deploy content already in the ledger under another name, skipped:"
CHANGED_MARKER = "pgvector-deploy in the ledger with another sha256, not run:"
OPEN_MARKER = "pgvector-deploy left a transaction open, rolled back:"
# Our sessions as the app: the settings of SUPERUSER_OPTIONS (the app's ALTER DATABASE/ROLE SET
# cannot reach our own statements), and standard_conforming_strings on, so that psql and the
# server read quotes as our checks did.
APP_OPTIONS = f"{SUPERUSER_OPTIONS} -c standard_conforming_strings=on"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class MigrationError(ValueError):
    """A migration folder or file we refuse; the message names the file and the fix."""


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str
    sha256: str  # of the file's bytes, exactly as they are on disk

    @property
    def notx(self) -> bool:
        """Run outside a transaction (name ends ``.notx.sql``)?"""
        return self.name.endswith(NOTX_SUFFIX)

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
    problems = sql_problems(text.removeprefix("\ufeff"), name)
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
_NOTX_BACKSLASH = (
    "a .notx.sql file is split into statements by psql itself, so it may hold no backslash at all (not even in a "
    "string: psql would read it as a command). Fix: remove it, or write the string another way (chr(92))."
)
_BACKSLASH = (
    "a backslash outside quotes is a psql command (\\c, \\i, \\copy, \\set, ...), and files must be plain "
    "SQL. Fix: remove it; use INSERT instead of COPY FROM STDIN data."
)
_UNENDED = "the last statement never ends (a parenthesis is not closed). Fix: close it and end the statement with ;."


def _creates_routine(words: list[str]) -> bool:
    """Does the statement so far start CREATE [OR REPLACE] FUNCTION|PROCEDURE (psql's test)?"""
    kind = words[3:4] if words[1:3] == ["OR", "REPLACE"] else words[1:2]
    return words[:1] == ["CREATE"] and kind in (["FUNCTION"], ["PROCEDURE"])


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
            # psql's rule: in CREATE [OR REPLACE] FUNCTION|PROCEDURE only, BEGIN (and then
            # CASE) opens a block whose semicolons do not end the statement (BEGIN ATOMIC
            # bodies); END closes it. Anywhere else BEGIN is a word like any other (a column).
            if text == "BEGIN" and _creates_routine(words):
                begin_depth += 1
            elif text == "CASE" and begin_depth:
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
    if paren_depth:
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
    if first in ("SAVEPOINT", "RELEASE") or (first == "ROLLBACK" and second == "TO"):
        # The file runs inside a function (EXECUTE): PostgreSQL refuses these there.
        return (
            f"{first}{' TO' if first == 'ROLLBACK' else ''} is a savepoint command, which PostgreSQL refuses in the deploy's "
            "wrapper (the file runs inside a function). Fix: remove it; to catch an error, use a DO block with "
            "BEGIN ... EXCEPTION ... END (its own subtransaction)."
        )
    if first == "COPY" and any(a == "TO" and b in ("STDOUT", "PSTDOUT") for a, b in pairwise(words)):
        return "COPY ... TO STDOUT cannot run in the deploy's wrapper (the file runs inside a function). Fix: remove it (use SELECT)."
    return role_problem(words) or copy_problem(words)


def role_problem(words: list[str]) -> str | None:
    first, second, third = (words + ["", "", ""])[:3]
    if first == "SET" and (second == "ROLE" or (second in ("SESSION", "LOCAL") and third in ("ROLE", "AUTHORIZATION"))):
        return f"SET {second if second == 'ROLE' else second + ' ' + third} changes who runs the migration, but {_ROLE_FIX}"
    if first == "RESET" and second in ("ROLE", "SESSION", "ALL"):
        return f"RESET {second} changes who runs the migration, but {_ROLE_FIX}"
    return None


def copy_problem(words: list[str]) -> str | None:
    if words[0] == "COPY" and any(a == "FROM" and b in ("STDIN", "PSTDIN") for a, b in pairwise(words)):
        return "COPY ... FROM STDIN reads data from psql's input, which carries the migration itself. Fix: use INSERT ... VALUES."
    return None


def _follows(words: list[str], *sequence: str) -> bool:
    """Do ``sequence``'s words occur one after the other in ``words``?"""
    n = len(sequence)
    return any(words[i : i + n] == list(sequence) for i in range(len(words) - n + 1))


def non_transactional(words: list[str]) -> str | None:
    """The statement PostgreSQL refuses to run inside a transaction block (or a function), as
    named in the message, or None. By its words (outside quotes and comments), so it errs
    toward refusing: what it misses, the server refuses when the file runs (rolled back)."""
    first, second = (words + ["", ""])[:2]
    if first == "VACUUM":
        return "VACUUM"
    if first in ("CREATE", "DROP") and second in ("DATABASE", "TABLESPACE", "SUBSCRIPTION"):
        return f"{first} {second}"
    if first == "CREATE" and (_follows(words[:4], "INDEX", "CONCURRENTLY")):
        return "CREATE INDEX CONCURRENTLY"
    if first == "DROP" and _follows(words[:3], "INDEX", "CONCURRENTLY"):
        return "DROP INDEX CONCURRENTLY"
    if first == "REINDEX":
        if "CONCURRENTLY" in words:
            return "REINDEX ... CONCURRENTLY"
        for scope in ("DATABASE", "SYSTEM", "SCHEMA"):
            if scope in words[1:6]:
                return f"REINDEX {scope}"
    if first == "ALTER" and second == "SYSTEM":
        return "ALTER SYSTEM"
    if first == "ALTER" and second == "SUBSCRIPTION":
        return "ALTER SUBSCRIPTION"
    if first == "ALTER" and second == "DATABASE" and _follows(words, "SET", "TABLESPACE"):
        return "ALTER DATABASE ... SET TABLESPACE"
    if first == "ALTER" and second == "TABLE" and "DETACH" in words and "CONCURRENTLY" in words:
        return "DETACH PARTITION ... CONCURRENTLY"
    if first == "CLUSTER" and [w for w in words[1:] if w != "VERBOSE"] == []:
        return "CLUSTER (every table)"
    if first == "DISCARD" and second == "ALL":
        return "DISCARD ALL"
    return None


def notx_name(name: str) -> str:
    """The name a file of its own for statements outside a transaction should have."""
    return name.removesuffix(NOTX_SUFFIX).removesuffix(".sql") + NOTX_SUFFIX


def sql_problems(sql: str, name: str = "NNNN_name.sql") -> list[tuple[int, str]]:
    """Everything in ``sql`` (the file ``name``) the deploy refuses to run, as (line, message),
    in line order. A ``.notx.sql`` file may hold statements that cannot run in a transaction
    (and transaction control), and no backslash at all."""
    statements, problems = split_statements(sql)
    notx = name.endswith(NOTX_SUFFIX)
    if notx:
        problems = [p for p in problems if p[1] != _BACKSLASH]
        for number, text in enumerate(sql.splitlines(), start=1):
            if "\\" in text:
                problems.append((number, _NOTX_BACKSLASH))
                break
    for statement in statements:
        problem = (role_problem(statement.words) or copy_problem(statement.words)) if notx else statement_problem(statement.words)
        outside = None if notx else non_transactional(statement.words)
        if outside:
            problem = (
                f"{outside} cannot run inside a transaction, and the deploy runs each file in one. Fix: move it to a "
                f"file of its own named like {notx_name(name)}, which runs statement by statement outside a transaction "
                "as the app role (not atomic: write it to be safe to run again, e.g. CREATE INDEX CONCURRENTLY IF NOT EXISTS)."
            )
        if problem:
            problems.append((statement.line, problem))
    return sorted(problems, key=lambda problem: problem[0])


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


# What the ledger is, from pg_catalog alone: "none", "table" (the plain heap table we made,
# name and sha256 of type pg_catalog.text), or what else it is. The rows are read in the app's
# own session, so nothing the app put there runs with more than its rights; the shape is still
# checked (as superuser, reading the catalog only), so that a ledger replaced by a view or a
# table of other types is refused, named, rather than read.
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
LEDGER_ROWS_SQL = f"SELECT 'applied=' || l.name || '|' || l.sha256 FROM ONLY {LEDGER} AS l"
APP_LOGIN_TRIES = 20  # x 0.25 s: a pg_hba.conf/pg_ident.conf reload just sent may not be in force yet


class MigrationLedger(FactBase):
    """The app database's ledger: whether the database and the ledger table exist, each
    applied migration's name and sha256 (read in the app role's own session, ``as_app``), what
    refuses it (``LEDGER_SHAPE_SQL``), and whether the app could log in at all (``app_login``:
    no on a host whose pg_hba.conf has not the app's peer line yet, or without the role).
    """

    def command(self, platform: Platform, port: int, database: str, user: str):
        exists_sql = f"SELECT 1 FROM pg_catalog.pg_database WHERE datname = '{database}'"
        read = " ".join([as_app(platform, port, database, user), *(f"-c {shlex.quote(sql)}" for sql in ("BEGIN READ ONLY", LEDGER_ROWS_SQL, "COMMIT"))])
        return f"""
PATH={SAFE_PATH}
if [ "$({as_postgres(platform, port, 'postgres', exists_sql)} 2>/dev/null)" = 1 ]; then
  echo database=yes
  shape=$({as_postgres(platform, port, database, LEDGER_SHAPE_SQL)} 2>/dev/null)
  case $shape in
    table)
      echo ledger=yes
      tries=0
      until rows=$({read} </dev/null 2>/dev/null); do
        tries=$((tries + 1)); [ $tries -lt {APP_LOGIN_TRIES} ] || break; sleep 0.25
      done
      if [ $tries -lt {APP_LOGIN_TRIES} ]; then
        [ -z "$rows" ] || printf '%s\\n' "$rows" | grep '^applied='
      else
        echo app_login=no
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
        "app_login": values.get("app_login", [""])[0] != "no",
    }


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
