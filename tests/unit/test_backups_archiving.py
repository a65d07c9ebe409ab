"""archive_mode after a restore (adv14 #2) and when the bucket is unset under pg_restart =
report (#5): the archiving operation's plans, and the fact's archive_mode lines read from a
real PostgreSQL 15 whose postgresql.auto.conf outranks our conf.d file."""

from __future__ import annotations

import dataclasses
import subprocess
import time

from pgvector_deploy import backups, facts
from pgvector_deploy.facts import BackupState

from .conftest import run_operation, throwaway_psql, throwaway_server
from .test_backups import BACKUP, converged, plan_with

RESTORED = "off|f"


def restored_host(plan, auto_value: str = "off") -> list[str]:
    """A converged host whose postgresql.auto.conf says archive_mode = off (pgBackRest's
    restore --archive-mode=off): our row not applied, no restart pending, archiving off."""
    ours = backups.archive_path(plan.platform)
    auto = f"{plan.platform.data_dir}/postgresql.auto.conf"
    lines = [line for line in converged(plan) if not line.startswith("archive_mode=")]
    return lines + ["archive_mode=off", f"archive_mode_file={ours}|on|f", f"archive_mode_file={auto}|{auto_value}|t"]


def test_after_a_restore_archiving_resets_pgbackrests_archive_mode_and_restarts():
    plan, host = plan_with(BACKUP)
    host.outputs[BackupState] = restored_host(plan)
    (command,) = run_operation(backups.archiving, plan, host)
    assert "ALTER SYSTEM RESET archive_mode" in command and "systemctl restart" in command
    assert command.index("ALTER SYSTEM RESET archive_mode") < command.index("pg_reload_conf") < command.index("systemctl restart")


def test_archive_mode_overridden_by_another_file_fails_naming_it():
    plan, host = plan_with(BACKUP)
    lines = restored_host(plan)[:-1] + ["archive_mode_file=/etc/postgresql/15/main/conf.d/95-local.conf|off|t"]
    host.outputs[BackupState] = lines
    (command,) = run_operation(backups.archiving, plan, host)
    assert "overridden by /etc/postgresql/15/main/conf.d/95-local.conf (archive_mode = off)" in command
    assert "ALTER SYSTEM" not in command and "systemctl restart" not in command


def test_the_fact_reads_which_file_outranks_ours_on_a_real_postgresql_15(debian12):
    with throwaway_server("pgv-archive-mode-") as base:
        psql = throwaway_psql(base)
        ours = base / "data" / "conf.d" / backups.ARCHIVE_FILE_NAME
        ours.parent.mkdir()
        ours.write_text(backups.render_archive_settings())
        with open(base / "data" / "postgresql.conf", "a") as conf:
            conf.write(f"include_dir = '{ours.parent}'\n")
        psql("ALTER SYSTEM SET archive_mode = off")
        platform = dataclasses.replace(debian12, socket_dir=str(base), data_dir=f"{base}/data", config_dir=f"{base}/data")
        command = BackupState().command(platform, 5432, ("/nonexistent",))
        output = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout.splitlines()
        state = facts.parse_backup_state(output)
        assert backups.archive_mode_overrides(state, str(ours)) == [(f"{base}/data/postgresql.auto.conf", "off")]
        psql("ALTER SYSTEM RESET archive_mode")
        state = facts.parse_backup_state(subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout.splitlines())
        assert backups.archive_mode_overrides(state, str(ours)) == []
        assert state["pending_restart"] == [f"{ours}|archive_mode"]  # now our file's value waits for the restart


def test_wal_archive_fails_when_archiving_is_off_with_a_bucket_and_skips_only_named_states(debian12):
    """adv14 #2: wal_archive skipped whenever archive_mode was off, so a host that never
    archived stayed green."""
    from pgvector_deploy.smoke import ArchiveCheck

    with throwaway_server("pgv-wal-archive-") as base:
        psql = throwaway_psql(base)
        platform = dataclasses.replace(debian12, socket_dir=str(base), data_dir=f"{base}/data", bindir="/usr/lib/postgresql/15/bin")

        def check():
            output = subprocess.run(["sh", "-c", ArchiveCheck().command(platform, 5432)], capture_output=True, text=True).stdout
            return ArchiveCheck().process(output.splitlines())

        off = check()
        assert off.status == "fail" and "archive_mode is off although pg_backup_s3_bucket is set" in off.detail
        psql("ALTER SYSTEM SET archive_mode = off")
        restored = check()
        assert restored.status == "skip" and "restored by deploy/restore.py" in restored.detail, restored
        psql("ALTER SYSTEM SET archive_mode = on")
        psql("SELECT pg_catalog.pg_reload_conf()")
        for _ in range(50):  # the postmaster reloads asynchronously
            pending = check()
            if pending.status == "skip":
                break
            time.sleep(0.1)
        assert pending.status == "skip" and "pending restart" in pending.detail, pending


def test_unsetting_the_bucket_under_pg_restart_report_keeps_a_harmless_archive_command_until_the_restart():
    """adv14 #5: the file was set aside and reloaded, archive_mode stayed on until a restart
    report mode never does, and archive_command fell back to '': WAL piled up on disk."""
    plan, host = plan_with({"pg_restart": "report"})
    path = backups.archive_path(plan.platform)
    host.outputs[BackupState] = [f"file={path}|{backups.sha256_text(backups.render_archive_settings())}|644|postgres:postgres", "archive_mode=on"]
    (command,) = run_operation(backups.archiving, plan, host)
    assert "archive_command = '/bin/true'" in command and "archive_mode = off" in command
    assert "systemctl restart" not in command and "restart pending: " in command
    ending = backups.sha256_text(backups.render_archive_ending_settings())
    plan._facts.clear()  # the host changed: asked again
    host.outputs[BackupState] = [f"file={path}|{ending}|644|postgres:postgres", "archive_mode=on"]
    assert run_operation(backups.archiving, plan, host) == []  # idempotent while the restart waits
    plan._facts.clear()
    host.outputs[BackupState] = [f"file={path}|{ending}|644|postgres:postgres", "archive_mode=off"]
    (command,) = run_operation(backups.archiving, plan, host)  # restarted since: the file goes
    assert "bak-" in command and "/bin/true" not in command
