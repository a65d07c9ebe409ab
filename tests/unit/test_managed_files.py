"""The one way managed files change (pgvector_deploy.managed_files): restart-or-roll-back and
the restart decision, run for real with sh against a fake systemctl and a fake psql. (Writing,
checking and pruning copies: test_networking.py's replace_file_script tests.)"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess

import pytest

from pgvector_deploy import managed_files
from pgvector_deploy.facts import tuning_path
from pgvector_deploy.loading import load_settings
from pgvector_deploy.preflight import make_plan

from .conftest import sh_syntax_error

BASE = {"pgvector_version": "0.8.6"}
STAMP_PATTERN = "80-pgvector-tuning.conf.bak-"


@pytest.fixture
def fake_server(tmp_path, provisioned_profile):
    """A conf.d in tmp_path, backups in tmp_path/backups, a fake systemctl that fails while the
    file says BAD, and a fake psql (runuser) that prints $FAKE_PENDING (the pending settings)."""
    bindir, confd = tmp_path / "bin", tmp_path / "conf.d"
    bindir.mkdir()
    confd.mkdir()

    def make(restart: str = "allowed"):
        plan = make_plan(load_settings({**BASE, "pg_restart": restart}), provisioned_profile)
        platform = dataclasses.replace(plan.platform, config_dir=str(tmp_path))
        return dataclasses.replace(plan, platform=platform)

    path = tuning_path(make().platform)
    (bindir / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/restarts\n! grep -qs BAD {path}\n')
    (bindir / "runuser").write_text('#!/bin/sh\nprintf "%s" "$FAKE_PENDING"\n')
    for tool in ("systemctl", "runuser"):
        (bindir / tool).chmod(0o755)
    backups = str(tmp_path / "backups")
    copies = tmp_path / "backups" / os.path.relpath(confd, "/")

    def run(previous: str | None, new: str, restart: str = "allowed", pending: str = "shared_buffers"):
        """Keep a copy of ``previous`` as a managed-file write does, put ``new`` in place, then
        let ``apply_restart`` decide."""
        if previous is not None:
            (confd / os.path.basename(path)).write_text(previous)
        plan = make(restart)
        script = "\n".join([
            "set -eu",
            managed_files.locate(path, backups),
            managed_files.keep_copy(),
            f'printf "%s" {shlex.quote(new)} > "$file"',
            managed_files.apply_restart(plan, f"sourcefile = '{path}'", "lower pg_shared_buffers, then run again."),
        ])  # fmt: skip
        assert sh_syntax_error(script) == ""
        env = {"PATH": f"{bindir}:/usr/bin:/bin", "FAKE_PENDING": pending}
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env, timeout=30)

    def restarts() -> int:
        return (tmp_path / "restarts").read_text().count("restart") if (tmp_path / "restarts").exists() else 0

    return run, path, copies, restarts


def test_restart_that_works_keeps_the_new_file(fake_server):
    run, path, _, restarts = fake_server
    done = run("shared_buffers = '128MB'\n", "shared_buffers = '1GB'\n")
    assert done.returncode == 0, done.stderr
    assert open(path).read() == "shared_buffers = '1GB'\n"
    assert restarts() == 1


def test_restart_that_fails_puts_the_previous_file_back_and_restarts_again(fake_server):
    run, path, _, restarts = fake_server
    done = run("shared_buffers = '128MB'\n", "shared_buffers = 'BAD'\n")
    assert done.returncode == 1
    assert "did not start with the new" in done.stderr and path in done.stderr and "Fix:" in done.stderr
    assert open(path).read() == "shared_buffers = '128MB'\n"
    assert restarts() == 2


def test_restart_that_fails_without_a_previous_file_sets_ours_aside_out_of_the_config_dir(fake_server):
    run, path, copies, restarts = fake_server
    done = run(None, "shared_buffers = 'BAD'\n")
    assert done.returncode == 1
    assert not os.path.exists(path) and os.listdir(os.path.dirname(path)) == []
    [aside] = os.listdir(copies)
    assert aside.startswith(STAMP_PATTERN) and (copies / aside).read_text() == "shared_buffers = 'BAD'\n"
    assert restarts() == 2


def test_nothing_pending_means_no_restart(fake_server):
    run, path, _, restarts = fake_server
    done = run("work_mem = '4MB'\n", "work_mem = '8MB'\n", pending="")
    assert done.returncode == 0 and done.stdout == "" and restarts() == 0


def test_with_report_a_pending_restart_is_printed_and_the_server_left_alone(fake_server):
    run, path, _, restarts = fake_server
    done = run("shared_buffers = '128MB'\n", "shared_buffers = 'BAD'\n", restart="report")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("restart pending: shared_buffers")
    assert restarts() == 0 and open(path).read() == "shared_buffers = 'BAD'\n"


def test_restart_decision_logs_the_line_the_nightly_report_reads(provisioned_profile, caplog):
    from pyinfra.context import ctx_host

    from .conftest import FactHost

    previous = ctx_host.get()
    ctx_host.set(FactHost({}))
    try:
        report = make_plan(load_settings({**BASE, "pg_restart": "report"}), provisioned_profile)
        managed_files.restart_decision(report, [])
        assert caplog.text == ""
        managed_files.restart_decision(report, ["shared_buffers", "listen_addresses"])
        assert "[test-host] restart pending: shared_buffers, listen_addresses" in caplog.text
        assert caplog.records[-1].levelname == "WARNING"
    finally:
        ctx_host.set(previous)


# --- files from standard input (install_from_stdin: backups' files, the app's env file) -----------


def install(tmp_path, target, content: str, **options) -> subprocess.CompletedProcess:
    script = managed_files.install_from_stdin(str(target), "640", "root:root", backups=str(tmp_path / "backups"), **options)
    return subprocess.run(["sh", "-c", script], input=content, check=False, capture_output=True, text=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown root:root needs root")
def test_install_from_stdin_replaces_in_one_rename_and_keeps_a_copy(tmp_path):
    target = tmp_path / "etc" / "x.conf"
    assert sh_syntax_error(managed_files.install_from_stdin(str(target), "640", "root:root")) == ""
    assert install(tmp_path, target, "one\n").returncode == 0
    assert target.read_text() == "one\n" and oct(target.stat().st_mode & 0o777) == "0o640"
    inode = target.stat().st_ino
    assert install(tmp_path, target, "one\n").returncode == 0  # already so: left alone, no copy
    assert target.stat().st_ino == inode and not (tmp_path / "backups").exists()
    assert install(tmp_path, target, "two\n").returncode == 0
    copies = list((tmp_path / "backups" / str(target.parent).lstrip("/")).iterdir())
    assert target.read_text() == "two\n" and [c.read_text() for c in copies] == ["one\n"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.conf"]  # no temporary file left


@pytest.mark.skipif(os.geteuid() != 0, reason="chown root:root needs root")
def test_install_from_stdin_of_a_secret_keeps_no_copy_and_refuses_a_directory(tmp_path):
    target = tmp_path / "app.env"
    assert install(tmp_path, target, "A=1\n", keep_copy=False).returncode == 0
    assert install(tmp_path, target, "A=2\n", keep_copy=False).returncode == 0
    assert target.read_text() == "A=2\n" and not (tmp_path / "backups").exists()
    folder = tmp_path / "folder"
    folder.mkdir()
    result = install(tmp_path, folder, "A=1\n", directory_fix="give a file path.")
    assert result.returncode != 0 and f"{folder} is a directory. Fix: give a file path." in result.stderr
    assert list(folder.iterdir()) == []
