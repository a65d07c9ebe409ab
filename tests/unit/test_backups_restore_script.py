"""The restore's shell (backups.restore_script) run for real with sh, against a data directory
in a temporary directory, with stub commands for what needs a server or S3 (pgBackRest,
pg_ctl, psql, the start command) and, per test, a failing ``mv`` or a postmaster that dies
in recovery. What the stubs do is what the real ones were seen to do: pgBackRest refuses a
populated pg1-path with [040]; a mount point refuses rename(2) with EBUSY; PostgreSQL 15
stops with "FATAL: recovery ended before configured recovery target was reached"."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from pathlib import Path

import pytest

from pgvector_deploy import backups
from pgvector_deploy.shell import SAFE_PATH

from .test_backups import BACKUP, plan_with

STUBS = {
    # runuser -u postgres -- cmd...: the command, as root (the test's files are root's).
    "runuser": 'while [ "$1" != -- ]; do shift; done; shift; exec "$@"',
    # pgbackrest ... --pg1-path=DIR restore: refuses a populated directory as the real one does.
    "pgbackrest": """for arg; do case $arg in --pg1-path=*) dir=${arg#--pg1-path=};; esac; done
echo "$*" >> "$STUB/pgbackrest.args"
[ -n "$(ls -A "$dir")" ] && { echo "ERROR: [040]: unable to restore to path '$dir' because it contains files"; exit 40; }
[ "${STUB_PGBR_RC:-0}" = 0 ] || { echo "ERROR: [055]: stubbed failure"; exit "$STUB_PGBR_RC"; }
echo 15 > "$dir/PG_VERSION"; touch "$dir/restored"; mkdir -p "$dir/pg_wal/archive_status"; chmod 700 "$dir"
""",
    # pg_ctl status -D DIR: 0 when DIR/postmaster.pid exists, else 3; pg_ctl -D DIR stop.
    "pg_ctl": """case " $* " in
*" status "*) while [ "$1" != -D ]; do shift; done; [ -f "$2/postmaster.pid" ] && exit 0; exit 3;;
*" stop "*) echo stop >> "$STUB/calls"; [ "${STUB_STOP:-}" = hang ] && exit 1; rm -f "$STUB/data/postmaster.pid"
  [ "${STUB_STOP:-}" = unarchived ] && touch "$STUB/data/pg_wal/archive_status/000000010000000000000009.ready"; true;;
esac""",
    # The start command: a restored directory dies in recovery when asked to.
    "start": """echo start >> "$STUB/calls"
d="$STUB/data"
if [ -f "$d/restored" ] && [ "${STUB_RECOVERY:-}" = die ]; then
  mkdir -p "$d/log"; echo "2026-12-01 FATAL:  recovery ended before configured recovery target was reached" >> "$d/log/postgresql.log"; exit 1
fi
touch "$d/postmaster.pid\"""",
    "pg_isready": '[ "${STUB_STOP:-}" = hang ] && exit 1; [ -f "$STUB/data/postmaster.pid" ]',
    "psql": """sql=; while [ $# -gt 0 ]; do [ "$1" = -c ] && sql=$2; shift; done
[ -f "$STUB/data/postmaster.pid" ] || exit 2
case $sql in
*pg_is_in_recovery*) echo f;;
*pg_switch_wal*) [ "${STUB_DRAIN:-}" = yes ] && rm -f "$STUB"/data/pg_wal/archive_status/*.ready; echo 0/0;;
'') cat > "$STUB/psql.stdin";;
esac""",
    "mountpoint": 'exit "${STUB_MOUNTPOINT:-1}"',
    "journalctl": "true",
}
# mv of the data directory fails as on a mount point (rename(2): EBUSY); any other mv is real.
FAILING_MV = 'if [ "$1" = "$STUB/data" ]; then echo "mv: cannot move \'$1\': Device or resource busy" >&2; exit 1; fi; exec /bin/mv "$@"'


@pytest.fixture
def lab(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, body in STUBS.items():
        (bindir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bindir / name).chmod(0o755)
    data = tmp_path / "data"
    (data / "base").mkdir(parents=True)
    (data / "PG_VERSION").write_text("15\n")
    (data / "base" / "the-cluster").write_text("rows\n")
    (data / "pg_wal" / "archive_status").mkdir(parents=True)
    (data / "postmaster.pid").write_text("1\n")
    return tmp_path


def script_for(lab: Path, data: dict, systemd: bool = False) -> str:
    plan, _ = plan_with({**BACKUP, "restore_over_existing": True, **data}, systemd=systemd)
    platform = dataclasses.replace(
        plan.platform, data_dir=str(lab / "data"), bindir=str(lab / "bin"), socket_dir=str(lab), start_without_systemd=str(lab / "bin" / "start")
    )
    script = backups.restore_script(dataclasses.replace(plan, platform=platform))
    return script.replace(f"PATH={SAFE_PATH}", f"PATH={lab / 'bin'}:{SAFE_PATH}", 1)


def run(lab: Path, script: str, timeout: float = 30, **env) -> subprocess.CompletedProcess:
    environ = {**os.environ, "STUB": str(lab), **env}
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=timeout, env=environ)


def siblings(lab: Path) -> list[str]:
    return sorted(p.name for p in lab.iterdir() if p.name.startswith("data"))


def test_a_data_directory_that_cannot_be_moved_aside_is_kept_and_started_again(lab):
    """adv14 #1: ``mv data aside`` failed (a mount point: EBUSY), pgBackRest then refused the
    populated directory, and the failure branch ran ``rm -rf data``: the cluster was gone."""
    (lab / "bin" / "mv").write_text(f"#!/bin/sh\n{FAILING_MV}\n")
    (lab / "bin" / "mv").chmod(0o755)
    result = run(lab, script_for(lab, {}), STUB_DRAIN="yes")
    assert result.returncode == 1
    assert (lab / "data" / "base" / "the-cluster").read_text() == "rows\n"
    assert not (lab / "data" / "restored").exists() and siblings(lab) == ["data"]  # the restored copy removed, only it
    assert "could not move the data directory aside" in result.stderr and (lab / "data" / "postmaster.pid").exists()


def test_a_data_directory_that_is_a_mount_point_is_refused_before_anything_changes(lab):
    result = run(lab, script_for(lab, {}), STUB_MOUNTPOINT="0")
    assert result.returncode == 1 and "is a mount point" in result.stderr and "Fix: mount the volume one level up" in result.stderr
    assert not (lab / "calls").exists() and not (lab / "pgbackrest.args").exists()  # never stopped, nothing restored
    assert siblings(lab) == ["data"]


def test_a_failed_pgbackrest_restore_changes_nothing(lab):
    result = run(lab, script_for(lab, {}), STUB_PGBR_RC="55")
    assert result.returncode == 1 and "stubbed failure" in result.stderr and "Nothing was changed" in result.stderr
    assert siblings(lab) == ["data"] and (lab / "data" / "base" / "the-cluster").exists()
    assert not (lab / "calls").exists()  # the cluster was never stopped


def test_a_restore_swaps_the_directories_and_resets_pgbackrests_recovery_settings(lab):
    result = run(lab, script_for(lab, {}), STUB_DRAIN="yes")
    assert result.returncode == 0, result.stderr
    assert (lab / "data" / "restored").exists()
    (aside,) = [name for name in siblings(lab) if name.startswith("data.before-restore-")]
    assert (lab / aside / "base" / "the-cluster").exists() and siblings(lab) == ["data", aside]
    args = (lab / "pgbackrest.args").read_text()
    assert "--pg1-path=" + str(lab / "data.restoring-") in args and '--recovery-option=restore_command=pgbackrest' in args
    assert "ALTER SYSTEM RESET restore_command;" in (lab / "psql.stdin").read_text()
    assert "archive_mode" not in (lab / "psql.stdin").read_text()  # the archiving operation resets it (deploy/postgres.py)


def test_a_postmaster_that_dies_in_recovery_fails_at_once_with_its_fatal_line_and_the_old_directory_runs(lab):
    """adv14 #12: a target after the last archived WAL: PostgreSQL stops with a FATAL; the
    script polled for an hour and left the host down with the unstartable restored directory."""
    when = "2026-12-01T12:00:00+00:00"
    began = time.monotonic()
    result = run(lab, script_for(lab, {"restore_target_time": when}), timeout=20, STUB_RECOVERY="die")
    assert time.monotonic() - began < 15
    assert result.returncode == 1
    assert "recovery ended before configured recovery target was reached" in result.stderr and "put back and started" in result.stderr
    assert (lab / "data" / "base" / "the-cluster").exists() and (lab / "data" / "postmaster.pid").exists()
    assert siblings(lab) == ["data"]


def test_a_postmaster_still_shutting_down_is_not_moved(lab):
    """adv14 #23: pg_ctl stop timed out, pg_isready no longer answered, and the script moved
    the data directory of a live postmaster; now pg_ctl status (postmaster.pid) decides."""
    (lab / "bin" / "pg_isready").write_text("#!/bin/sh\nexit 1\n")
    result = run(lab, script_for(lab, {}), STUB_STOP="hang", STUB_DRAIN="yes")
    assert result.returncode == 1 and "still running after the stop" in result.stderr
    assert siblings(lab) == ["data"] and (lab / "data" / "base" / "the-cluster").exists()


def test_restoring_the_latest_state_waits_for_the_wal_backlog_and_refuses_naming_it(lab, monkeypatch):
    """adv14 #13: WAL waiting in pg_wal moved aside with the old directory, its commits lost."""
    monkeypatch.setattr(backups, "DRAIN_WAIT_S", 2)
    for segment in ("000000010000000000000007", "000000010000000000000008"):
        (lab / "data" / "pg_wal" / "archive_status" / f"{segment}.ready").touch()
    result = run(lab, script_for(lab, {}))
    assert result.returncode == 1 and "would lose the commits in 2 WAL segment(s)" in result.stderr
    assert not (lab / "calls").exists() and siblings(lab) == ["data"]  # never stopped, the restored copy removed
    # The shutdown's own last segment that the archiver could not push: the old cluster comes back.
    shutdown = run(lab, script_for(lab, {}), STUB_DRAIN="yes", STUB_STOP="unarchived")
    assert shutdown.returncode == 1 and "would lose the commits in 1 WAL segment(s)" in shutdown.stderr
    assert siblings(lab) == ["data"] and (lab / "data" / "postmaster.pid").exists() and not (lab / "data" / "restored").exists()
    (lab / "data" / "pg_wal" / "archive_status" / "000000010000000000000009.ready").unlink()
    drained = run(lab, script_for(lab, {}), STUB_DRAIN="yes")
    assert drained.returncode == 0, drained.stderr


def test_the_restore_script_is_valid_sh_with_systemd():
    plan, _ = plan_with({**BACKUP, "restore_over_existing": True})
    from .conftest import sh_syntax_error

    assert sh_syntax_error(backups.restore_script(plan)) == ""


@pytest.mark.parametrize("systemd", [True, False])
def test_the_restore_and_probe_scripts_pass_shellcheck(systemd):
    from .test_shellcheck import shellcheck

    plan, _ = plan_with({**BACKUP, "restore_over_existing": True}, systemd=systemd)
    timed, _ = plan_with({**BACKUP, "restore_target_time": "2026-12-01T12:00:00+00:00"}, systemd=systemd)
    scripts = [backups.restore_script(plan), backups.restore_script(timed), backups.config_script("the repository s3://b/p", plan.platform)]
    for script in scripts:
        result = shellcheck("--shell=sh", "-", script=script)
        assert result.returncode == 0, result.stdout
