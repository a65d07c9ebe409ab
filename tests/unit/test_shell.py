"""Shell helpers (pgvector_deploy.shell): psql as postgres, and failing with a message."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from pgvector_deploy.shell import SAFE_PATH, SUPERUSER_OPTIONS, as_postgres, fail


def test_as_postgres_uses_the_platform_psql_over_the_socket(debian12):
    command = as_postgres(debian12, 5432, "app", "SELECT 1")
    assert shlex.split(command) == [
        f"PGOPTIONS={SUPERUSER_OPTIONS}", "runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/psql",
        "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
        "-h", "/var/run/postgresql", "-p", "5432", "-d", "dbname='app'", "-c", "SELECT 1",
    ]


def test_as_postgres_quotes_sql_and_database_names(debian12):
    sql = "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
    words = shlex.split(as_postgres(debian12, 5432, "my db", sql))
    assert words[-4:] == ["-d", "dbname='my db'", "-c", sql]


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


# --- the host lock -----------------------------------------------------------------------


def test_every_changing_operation_takes_the_host_lock():
    from pgvector_deploy import apps, networking, pgvector, postgres

    operations = [
        postgres.repository, postgres.packages, postgres.cluster, postgres.running,
        pgvector.fetch, pgvector.build, pgvector.extension,
        networking.listen, networking.client_access, apps.role, apps.database,
    ]  # fmt: skip
    for operation in operations:
        assert getattr(operation._inner, "__wrapped__", None) is not None, operation.__name__


def test_host_lock_wraps_a_command_and_keeps_its_exit_status(tmp_path):
    import subprocess

    from pgvector_deploy.shell import HOST_LOCK_DIR, with_host_lock

    command = with_host_lock("echo inside; exit 3").replace(HOST_LOCK_DIR, str(tmp_path / "locks"))
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=10)
    assert result.stdout == "inside\n"
    assert result.returncode == 3


def test_host_lock_timeout_names_the_other_run(tmp_path):
    import subprocess

    from pgvector_deploy.shell import HOST_LOCK_DIR, with_host_lock

    (tmp_path / "locks").mkdir(mode=0o700)
    lock = tmp_path / "locks" / "lock"
    command = with_host_lock("echo never").replace(HOST_LOCK_DIR, str(tmp_path / "locks")).replace("-w 1800", "-w 1")
    holder = subprocess.Popen(["flock", str(lock), "sleep", "5"])
    try:
        import time

        time.sleep(0.3)
        result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=10)
    finally:
        holder.kill()
    assert result.returncode == 1
    assert "another pgvector-deploy run held" in result.stderr
    assert "never" not in result.stdout


def test_host_lock_keeps_stdin_on_string_commands():
    from pyinfra.api import StringCommand

    from pgvector_deploy.shell import HOST_LOCK_DIR, with_host_lock

    locked = with_host_lock(StringCommand("psql", "-d", "postgres", _stdin="SELECT 1;\n"))
    assert locked.connector_arguments == {"_stdin": "SELECT 1;\n"}
    assert "flock" in locked.get_raw_value() and "'psql -d postgres'" in locked.get_raw_value()


def test_a_daemon_started_under_the_host_lock_does_not_keep_it(tmp_path):
    """pg_ctlcluster on a host without systemd forks the server from the locked command; the
    server must not inherit the lock (seen on the emulated aarch64 host: the next command hung)."""
    import subprocess

    from pgvector_deploy.shell import HOST_LOCK_DIR, with_host_lock

    command = with_host_lock("sleep 30 >/dev/null 2>&1 &").replace(HOST_LOCK_DIR, str(tmp_path / "locks"))
    subprocess.run(["sh", "-c", command], check=True, timeout=10)
    try:
        free = subprocess.run(["flock", "-n", str(tmp_path / "locks" / "lock"), "true"], timeout=10)
        assert free.returncode == 0
    finally:
        subprocess.run(["pkill", "-f", "^sleep 30$"])


def test_host_lock_directory_is_made_private_to_root(tmp_path):
    import os
    import stat
    import subprocess

    from pgvector_deploy.shell import HOST_LOCK_DIR, with_host_lock

    locks = tmp_path / "locks"
    result = subprocess.run(["sh", "-c", with_host_lock("echo ran").replace(HOST_LOCK_DIR, str(locks))], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0 and result.stdout == "ran\n", result.stderr
    info = os.lstat(locks)
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == 0


@pytest.mark.parametrize("planted", ["symlink", "other owner", "group writable"])
def test_host_lock_refuses_a_lock_directory_someone_else_could_control(tmp_path, planted):
    """A lock directory another user made (or a symlink to one) could be held or redirected by
    them: the command does not run, and the message names the fix."""
    import os
    import subprocess

    from pgvector_deploy.shell import HOST_LOCK_DIR, with_host_lock

    if os.geteuid() != 0:
        pytest.skip("needs root to plant a directory owned by another user")
    locks = tmp_path / "locks"
    if planted == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        locks.symlink_to(tmp_path / "elsewhere")
    else:
        locks.mkdir(mode=0o700)
        if planted == "other owner":
            os.chown(locks, 65534, 65534)
        else:
            locks.chmod(0o770)
    result = subprocess.run(["sh", "-c", with_host_lock("echo ran").replace(HOST_LOCK_DIR, str(locks))], capture_output=True, text=True, timeout=10)
    assert result.returncode == 1
    assert "ran" not in result.stdout
    assert f"{locks} (where pgvector-deploy keeps its host lock) is not a directory owned by root" in result.stderr
    assert f"rm -rf {locks}" in result.stderr
