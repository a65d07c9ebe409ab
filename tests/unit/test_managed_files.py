"""The one way managed files change (pgvector_deploy.managed_files): writing, checking and
pruning copies (``replace_file_script``, with shims for install and psql), restart-or-roll-back
and the restart decision, run for real with sh against a fake systemctl and a fake psql; and
files from standard input (``install_from_stdin``)."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
from ipaddress import IPv4Interface

import pytest

from pgvector_deploy import managed_files
from pgvector_deploy.facts import Bridge, tuning_path
from pgvector_deploy.loading import load_settings
from pgvector_deploy.managed_files import BACKUP_DIR, replace_file_script
from pgvector_deploy.networking import render_hba, render_settings
from pgvector_deploy.platforms import PLATFORMS
from pgvector_deploy.preflight import make_plan
from pgvector_deploy.shell import SAFE_PATH, SUPERUSER_OPTIONS

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


# --- replace_file_script -----------------------------------------------------------------------------

HBA = "/etc/postgresql/15/main/pg_hba.conf"
BR = Bridge("br-3f2a1b4c5d6e", IPv4Interface("172.18.0.1/16"))


PSQL = f"PGOPTIONS={shlex.quote(SUPERUSER_OPTIONS)} runuser -u postgres -- /usr/lib/postgresql/15/bin/psql -X -A -t -q -v ON_ERROR_STOP=1 -h /var/run/postgresql -p 5432"


MARKER = "PGVECTOR_DEPLOY_EOF"


def heredoc_body(script: str) -> str:
    """The file content a replace_file_script writes."""
    return script.split(f"<<'{MARKER}'\n", 1)[1].split(f"{MARKER}\n", 1)[0]


OLD = "local all postgres peer\n# the previous file\n"


NEW = "local all postgres peer\n# the new file, with a 'quote' and $HOME and `backticks`\n"


# the real install, without -o/-g (the tests need not run as root)
INSTALL_WITHOUT_OWNER = """n=$#
while [ "$n" -gt 0 ]; do
  a=$1; shift; n=$((n - 1))
  case $a in
    -o|-g) shift; n=$((n - 1)) ;;
    *) set -- "$@" "$a" ;;
  esac
done
exec {install} "$@"
"""


def shimmed(script: str, shims) -> str:
    """The script with runuser (psql) and chown replaced by shims, and install run without
    -o/-g: psql prints $FAKE_PSQL_OUTPUT's content and exits $FAKE_PSQL_STATUS."""
    shims.mkdir()
    for name, body in {
        "runuser": 'cat "$FAKE_PSQL_OUTPUT"; exit "${FAKE_PSQL_STATUS:-0}"',
        "install": INSTALL_WITHOUT_OWNER.format(install=shutil.which("install")),
        "chown": "exit 0",
    }.items():
        (shims / name).write_text(f"#!/bin/sh\n{body}\n")
        (shims / name).chmod(0o755)
    line = f"PATH={SAFE_PATH}\n"
    assert script.count(line) == 1
    return script.replace(line, f"PATH={shims}:{SAFE_PATH}\n")


def copies_of(tmp_path, target) -> list[str]:
    """The copies kept of ``target`` (under tmp_path/backups, standing in for BACKUP_DIR)."""
    copies = tmp_path / "backups" / os.path.relpath(target.parent, "/")
    return sorted(path.name for path in copies.iterdir()) if copies.is_dir() else []


def run_replace(tmp_path, debian12, previous: str | None, psql_output: str, psql_status: int = 0, directory_mode: int = 0o755):
    target = tmp_path / "etc" / "pg_hba.conf"
    if previous is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.parent.chmod(directory_mode)
        target.write_text(previous)
    script = replace_file_script(str(target), NEW, "0640", "SELECT 1", debian12, 5432, "pg_hba.conf", backups=str(tmp_path / "backups"))
    (tmp_path / "psql-output").write_text(psql_output)
    env = dict(os.environ, FAKE_PSQL_OUTPUT=str(tmp_path / "psql-output"), FAKE_PSQL_STATUS=str(psql_status))
    result = subprocess.run(["sh", "-c", shimmed(script, tmp_path / "shims")], capture_output=True, text=True, env=env, timeout=30)
    return result, target


def test_replace_file_script_is_valid_sh_and_backs_up_before_writing(debian12):
    for content in (render_hba([BR], load_settings({}), ""), render_settings(debian12, ["localhost"])):
        script = replace_file_script(HBA, content, "0640", "SELECT 1", debian12, 5432, "pg_hba.conf")
        assert sh_syntax_error(script) == ""
        assert heredoc_body(script) == content
        assert f"copies={BACKUP_DIR}/etc/postgresql/15/main\n" in script  # never next to the file
        backup = script.index('cp -p "$file" "$backup"')
        same = script.index('cmp -s "$file.pgvector-new" "$file"')
        assert script.index('cat > "$file.pgvector-new"') < same < backup < script.index('mv -f "$file.pgvector-new" "$file"')
        assert script.index('mv -f "$file.pgvector-new" "$file"') < script.index("errors=$(")


def test_replace_file_script_leaves_a_file_that_already_has_the_content_alone(tmp_path, debian12):
    """Another run wrote the same file while this one waited for the lock: no backup, no
    rewrite, nothing checked, success."""
    result, target = run_replace(tmp_path, debian12, NEW, psql_output="line 1: planted error")
    assert result.returncode == 0, result.stderr
    assert target.read_text() == NEW
    assert sorted(path.name for path in target.parent.iterdir()) == ["pg_hba.conf"]
    assert copies_of(tmp_path, target) == []


def test_replace_file_script_refuses_content_holding_the_heredoc_marker(debian12):
    with pytest.raises(AssertionError):
        replace_file_script(HBA, f"host all all 10.0.0.0/8 scram-sha-256\n{MARKER}\nrm -rf /\n", "0640", "SELECT 1", debian12, 5432, "x")


def test_replace_file_script_accepted_keeps_a_backup(tmp_path, debian12):
    result, target = run_replace(tmp_path, debian12, OLD, psql_output="")
    assert result.returncode == 0, result.stderr
    assert target.read_text() == NEW
    assert oct(target.stat().st_mode & 0o777) == "0o640"
    assert [path.name for path in target.parent.iterdir()] == ["pg_hba.conf"]  # nothing piles up beside it
    backups = copies_of(tmp_path, target)
    assert len(backups) == 1 and re.fullmatch(r"pg_hba\.conf\.bak-\d{8}T\d{6}Z", backups[0])
    assert (tmp_path / "backups" / os.path.relpath(target.parent, "/") / backups[0]).read_text() == OLD


def test_replace_file_script_keeps_the_newest_five_copies_and_moves_old_ones_out_of_the_config_dir(tmp_path, debian12):
    target = tmp_path / "etc" / "pg_hba.conf"
    copies = tmp_path / "backups" / os.path.relpath(target.parent, "/")
    copies.mkdir(parents=True)
    for day in range(1, 8):
        (copies / f"pg_hba.conf.bak-202001{day:02d}T000000Z").write_text("old\n")
    target.parent.mkdir(parents=True)
    (target.parent / "pg_hba.conf.bak-20191231T000000Z").write_text("older, beside it (PGDATA on the RHEL family)\n")
    (copies / "other.conf.bak-20200101T000000Z").write_text("another file's copy\n")
    result, target = run_replace(tmp_path, debian12, OLD, psql_output="")
    assert result.returncode == 0, result.stderr
    assert [path.name for path in target.parent.iterdir()] == ["pg_hba.conf"]
    kept = copies_of(tmp_path, target)
    ours = [name for name in kept if name.startswith("pg_hba.conf.bak-")]
    assert len(ours) == 5 and ours[:4] == [f"pg_hba.conf.bak-202001{day:02d}T000000Z" for day in (4, 5, 6, 7)]
    assert (copies / ours[4]).read_text() == OLD  # this run's copy is the newest
    assert "other.conf.bak-20200101T000000Z" in kept  # pruning is per file
    assert oct((tmp_path / "backups").stat().st_mode & 0o777) == "0o700"


def test_replace_file_script_rejected_puts_the_previous_file_back(tmp_path, debian12):
    result, target = run_replace(tmp_path, debian12, OLD, psql_output='line 3: invalid authentication method "scram-sha265"\n')
    assert result.returncode == 1
    assert target.read_text() == OLD
    assert [path.name for path in target.parent.iterdir()] == ["pg_hba.conf"]  # no new file left
    assert copies_of(tmp_path, target) == []  # nor a copy of what is in place again
    assert f"PostgreSQL rejected the new pg_hba.conf ({target}): line 3: invalid authentication method" in result.stderr
    assert "previous file was put back" in result.stderr and "Fix:" in result.stderr


def test_replace_file_script_rejected_without_a_previous_file_leaves_none(tmp_path, debian12):
    result, target = run_replace(tmp_path, debian12, None, psql_output="line 1: bad\n")
    assert result.returncode == 1
    assert list(target.parent.iterdir()) == [] and copies_of(tmp_path, target) == []


def test_replace_file_script_creates_a_missing_directory(tmp_path, debian12):
    target = tmp_path / "etc" / "conf.d" / "90-pgvector-deploy.conf"
    script = replace_file_script(str(target), NEW, "0644", "SELECT 1", debian12, 5432, "server settings", backups=str(tmp_path / "backups"))
    (tmp_path / "psql-output").write_text("")
    env = dict(os.environ, FAKE_PSQL_OUTPUT=str(tmp_path / "psql-output"))
    result = subprocess.run(["sh", "-c", shimmed(script, tmp_path / "shims")], capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    assert target.read_text() == NEW and oct(target.stat().st_mode & 0o777) == "0o644"


def test_replace_file_script_keeps_the_mode_of_an_existing_directory(tmp_path, debian12):
    assert any(platform.config_dir == platform.data_dir for platform in PLATFORMS)  # where it matters
    result, target = run_replace(tmp_path, debian12, OLD, psql_output="", directory_mode=0o700)
    assert result.returncode == 0, result.stderr
    assert oct(target.parent.stat().st_mode & 0o777) == "0o700"


def test_replace_file_script_does_not_keep_an_unchecked_file(tmp_path, debian12):
    result, target = run_replace(tmp_path, debian12, OLD, psql_output="", psql_status=2)
    assert result.returncode != 0
    assert target.read_text() == OLD
    assert [path.name for path in target.parent.iterdir()] == ["pg_hba.conf"]
    assert f"PostgreSQL could not check the new pg_hba.conf ({target})" in result.stderr and "Fix:" in result.stderr
