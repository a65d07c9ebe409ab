"""Small helpers for the shell commands we send to hosts."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # platforms uses fail(); importing Platform at run time would be a cycle
    from .platforms import Platform

# sudo and minimal images may leave /usr/sbin out of PATH; runuser and pg_* tools live there.
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def as_postgres(platform: Platform, port: int, database: str | None, sql: str | None = None) -> str:
    """A psql command run as the ``postgres`` OS user over the local socket (peer auth).

    Uses the target major's own psql, stops at the first error, prints bare rows. With
    ``sql=None`` it reads SQL from standard input.
    """
    parts = [
        "runuser -u postgres --",
        platform.psql,
        "-X -A -t -q -v ON_ERROR_STOP=1",
        f"-h {shlex.quote(platform.socket_dir)} -p {int(port)}",
    ]
    if database is not None:
        parts.append(f"-d {shlex.quote(database)}")
    if sql is not None:
        parts.append(f"-c {shlex.quote(sql)}")
    return " ".join(parts)


class Var(str):
    """A shell variable to expand inside a ``fail``/``words`` message, e.g. ``Var("actual")``."""


def words(*parts: str) -> str:
    """One shell word: literal parts single-quoted (never expanded), ``Var`` parts expanded."""
    return "".join(f'"${{{part}}}"' if isinstance(part, Var) else shlex.quote(part) for part in parts)


def fail(*parts: str) -> str:
    """Shell that prints the message on stderr and exits 1.

    >>> fail("expected 1, found ", Var("found"))
    '{ echo \'expected 1, found \'"${found}" >&2; exit 1; }'
    """
    return f"{{ echo {words(*parts)} >&2; exit 1; }}"
