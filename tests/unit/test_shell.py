"""Shell helpers (pgvector_deploy.shell): psql as postgres, and failing with a message."""

from __future__ import annotations

import shlex
import subprocess

from pgvector_deploy.shell import SAFE_PATH, as_postgres, fail


def test_as_postgres_uses_the_platform_psql_over_the_socket(debian12):
    command = as_postgres(debian12, 5432, "app", "SELECT 1")
    assert shlex.split(command) == [
        "runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/psql",
        "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
        "-h", "/var/run/postgresql", "-p", "5432", "-d", "app", "-c", "SELECT 1",
    ]


def test_as_postgres_quotes_sql_and_database_names(debian12):
    sql = "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
    words = shlex.split(as_postgres(debian12, 5432, "my db", sql))
    assert words[-4:] == ["-d", "my db", "-c", sql]


def test_as_postgres_without_database_or_sql_reads_stdin(debian12):
    words = shlex.split(as_postgres(debian12, 5433, None))
    assert "-d" not in words and "-c" not in words
    assert words[-2:] == ["-p", "5433"]


def test_fail_prints_the_message_verbatim_on_stderr_and_exits_1():
    message = "it's $HOME and `date` and \"quotes\". Fix: nothing"
    result = subprocess.run(["sh", "-c", f"{fail(message)}\necho not reached"], capture_output=True, text=True, timeout=10)
    assert result.returncode == 1
    assert result.stderr == message + "\n"
    assert result.stdout == ""


def test_safe_path_includes_sbin_for_runuser():
    assert "/usr/sbin" in SAFE_PATH.split(":")
