"""Failures as shell: ``fail`` builds a command that prints a message and exits 1, ``Var``
expands a shell variable inside one; the one-line forms of failures and errors for the log.

The bottom of the package: it imports nothing of ours, so ``platforms`` (whose commands
fail with these) and everything above can use it.
"""

from __future__ import annotations

import shlex

from pyinfra import logger
from pyinfra.context import ctx_host


class Var(str):
    """A shell variable to expand inside a ``fail``/``words`` message, e.g. ``Var("actual")``."""


def words(*parts: str) -> str:
    """One shell word: literal parts single-quoted (never expanded), ``Var`` parts expanded."""
    return "".join(f'"${{{part}}}"' if isinstance(part, Var) else shlex.quote(part) for part in parts)


class Failure(str):
    """A command that only fails; ``message`` is what it prints (``fail``)."""

    message: str


def fail(*parts: str) -> Failure:
    r"""Shell that prints the message on stderr and exits 1 (printf, not echo: dash's echo
    would interpret the backslashes in a message).

    >>> print(fail("expected 1, found ", Var("found")))
    { printf '%s\n' 'expected 1, found '"${found}" >&2; exit 1; }
    """
    command = Failure(f"{{ printf '%s\\n' {words(*parts)} >&2; exit 1; }}")
    command.message = "".join(f"${{{part}}}" if isinstance(part, Var) else part for part in parts)
    return command


# Marks each failure of ours in pyinfra's log, "[host] pgvector-deploy failed: <message>", so
# that the nightly report names the host and the message also under --dry, where no failing
# command runs.
FAILURE_MARK = "pgvector-deploy failed:"


def log_failure(message: str) -> None:
    """Log ``message`` as this host's failure (``FAILURE_MARK``), on one line."""
    prefix = getattr(ctx_host.get(), "print_prefix", "") if ctx_host.isset() else ""
    logger.error(f"{prefix}{FAILURE_MARK} {one_line(message)}")


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def unexpected_error(error: BaseException, during: str) -> str:
    """One line for an exception met while ``during``, naming it and the fix.

    >>> unexpected_error(ValueError("bad\\nvalue"), "reading the host")[:56]
    'unexpected ValueError while reading the host: bad value.'
    """
    return (
        f"unexpected {type(error).__name__} while {during}: {one_line(error)}. Nothing more was done on "
        "this host; the other hosts carry on. Fix: correct what this names on the host (or in its host "
        "data) and run again; if it looks right, report this line as a pgvector-deploy bug."
    )
