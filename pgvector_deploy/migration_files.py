"""Migration files on the control machine: read the ``*.sql`` files of ``pg_migrations_dir``
and check each before anything changes on a host (``read_folder``, ``sql_problems``).

Data only: the loading step (``loading``) reads the folder, ``settings`` holds the result, and
``migrations`` applies the files and keeps the ledger. What is refused, and why, is described
in ``migrations``' docstring.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

# Plain names only: they go into SQL literals, shell words and fact output unquoted.
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,123}\.sql$")
NOTX_SUFFIX = ".notx.sql"  # run outside a transaction, statement by statement


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
