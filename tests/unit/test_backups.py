"""Backups (pgvector_deploy/backups.py): host data, what is rendered, the operations' plans
against a fake host, the restore's refusals, and the host scripts' syntax. The real thing
(pgBackRest, S3, IMDSv2, restores, the drill) is proved in tests/e2e/test_backups.py."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pyinfra.api import StringCommand

from pgvector_deploy import backups, preflight
from pgvector_deploy.backups import BackupState, sha256_text
from pgvector_deploy.facts import HostProfile
from pgvector_deploy.preflight import Plan
from pgvector_deploy.settings import SettingsError, load_settings

from .conftest import FactHost, recorded_output, run_operation, sh_syntax_error

CIPHER = "a-long-enough-passphrase-0123"
BACKUP = {"pg_backup_s3_bucket": "acme-db-backups", "pg_backup_cipher_pass": CIPHER}
REPO = Path(__file__).resolve().parents[2]


def test_no_bucket_means_no_backups():
    assert load_settings({}).backup is None


def test_defaults_with_a_bucket():
    backup = load_settings(BACKUP, host_name="db-1").backup
    assert (backup.prefix, backup.region, backup.endpoint, backup.uri_style) == ("db-1", "us-east-1", "s3.us-east-1.amazonaws.com", "host")
    assert (backup.retention_full, backup.retention_days, backup.drill_port) == (2, None, 54329)
    assert backup.full.on_calendar == "Sun *-*-* 01:00:00" and backup.full.cron == "0 1 * * 0"
    assert backup.diff.cron == "0 1 * * 1,2,3,4,5,6" and backup.drill.on_calendar == "Sat *-*-* 04:00:00"
    assert "***" in repr(backup) and CIPHER not in repr(backup)


def test_an_endpoint_means_path_style_and_its_port():
    backup = load_settings({**BACKUP, "pg_backup_s3_endpoint": "10.0.0.5:9000"}, host_name="db").backup
    assert (backup.host, backup.port, backup.uri_style) == ("10.0.0.5", 9000, "path")


def test_a_bucket_name_with_dots_means_path_style():
    # *.s3.<region>.amazonaws.com cannot cover a dotted bucket's host name, so TLS would fail.
    backup = load_settings({**BACKUP, "pg_backup_s3_bucket": "acme.db.backups"}, host_name="db").backup
    assert backup.uri_style == "path"


def test_a_bucket_name_with_dots_and_host_style_is_refused_naming_path():
    with pytest.raises(SettingsError, match="pg_backup_s3_uri_style: host cannot reach the bucket 'acme.db' over TLS.*Fix: .*path"):
        load_settings({**BACKUP, "pg_backup_s3_bucket": "acme.db", "pg_backup_s3_uri_style": "host"}, host_name="db")


def test_a_china_region_gets_the_china_endpoint():
    backup = load_settings({**BACKUP, "pg_backup_s3_region": "cn-north-1"}, host_name="db").backup
    assert backup.endpoint == "s3.cn-north-1.amazonaws.com.cn"


@pytest.mark.parametrize(
    "key, value, says",
    [
        ("pg_backup_s3_bucket", "Acme_Backups", "is not an S3 bucket name"),
        ("pg_backup_s3_bucket", "a\nb", "control character"),
        ("pg_backup_s3_region", "eu-west-1\nrepo1-path=/x", "control character"),
        ("pg_backup_s3_region", "eu-west-1 x", "is not an AWS region"),
        ("pg_backup_s3_prefix", "../other", "is not a plain path"),
        ("pg_backup_s3_prefix", "db 1", "is not a plain path"),
        ("pg_backup_s3_endpoint", "https://minio:9000", "is not a host or host:port"),
        ("pg_backup_s3_endpoint", "minio:99999", "is not a host or host:port"),
        ("pg_backup_s3_uri_style", "virtual", "neither host nor path"),
        ("pg_backup_s3_ca_file", "relative/ca.pem", "is not a plain absolute path"),
        ("pg_backup_retention_full", 0, "is not a whole number from 1 to 100"),
        ("pg_backup_retention_days", "7d", "is not a whole number from 1 to 3650"),
        ("pg_backup_full_schedule", "none", "is not a schedule"),
        ("pg_backup_diff_schedule", "Sun 25:00", "is not a schedule"),
        ("pg_backup_diff_schedule", "Sun,Sun 01:00", "is not a schedule"),
        ("pg_backup_drill_schedule", "*-*-* 01:00\nExecStart=/bin/evil", "control character"),
        ("pg_backup_drill_schedule", "Sat 04:00 ExecStart=/bin/evil", "is not a schedule"),
        ("pg_backup_cipher_pass", 123456789012345678901234, "is not text"),
        ("pg_backup_drill_port", 5432, "is the cluster's own port"),
        ("pg_backup_cipher_pass", "short", "at least 20 characters"),
        ("pg_backup_cipher_pass", CIPHER + "\nrepo1-path=/x", "without control characters"),
        ("restore_target_time", "2026-12-01 12:00:00", "with a time zone"),
        ("restore_target_time", "yesterday", "with a time zone"),
        ("restore_over_existing", "maybe", "is not true or false"),
    ],
)
def test_hostile_backup_values_are_refused_naming_the_key(key, value, says):
    with pytest.raises(SettingsError) as error:
        load_settings({**BACKUP, key: value}, host_name="db-1")
    assert key in str(error.value) and says in str(error.value) and "Fix:" in str(error.value)


def test_a_host_name_that_cannot_be_a_prefix_needs_one():
    with pytest.raises(SettingsError, match="pg_backup_s3_prefix is unset"):
        load_settings(BACKUP, host_name="@local")


def test_exactly_one_passphrase_source(monkeypatch):
    with pytest.raises(SettingsError, match="exactly one repository passphrase source"):
        load_settings({"pg_backup_s3_bucket": "acme-db-backups"}, host_name="db")
    monkeypatch.setenv("PGV_UNIT_CIPHER", CIPHER)
    backup = load_settings({"pg_backup_s3_bucket": "acme-db-backups", "pg_backup_cipher_pass_env": "PGV_UNIT_CIPHER"}, host_name="db").backup
    assert backup.cipher_pass == CIPHER


# --- plans against a fake host ------------------------------------------------------------------


def plan_with(data: dict, systemd: bool = True) -> tuple[Plan, FactHost]:
    outputs = {HostProfile: recorded_output("debian12-x86_64", "provisioned", "host-profile"), BackupState: []}
    host = FactHost(outputs)
    host.data = {"pgvector_version": "0.8.0", "pgvector_allow_insecure": True, **data}
    host.name = "db-1"
    plan = preflight.look(host)
    assert isinstance(plan, Plan), plan
    if not systemd:
        plan.profile["systemd"] = False
    return plan, host


def converged(plan: Plan) -> list[str]:
    files = {backups.PGBR_CONFIG: (backups.render_config(plan), "600", "postgres:postgres")}
    files[backups.archive_path(plan.platform)] = (backups.render_archive_settings(), "644", "postgres:postgres")
    files.update(backups.wanted_files(plan))
    lines = [f"file={path}|{sha256_text(content)}|{mode}|{owner}" for path, (content, mode, owner) in files.items()]
    info = [{"name": "pgvector", "status": {"code": 0, "message": "ok"},
             "backup": [{"label": "20261201-120000F", "type": "full", "timestamp": {"start": 1, "stop": 2}}]}]  # fmt: skip
    lines += ["pgbackrest=yes", "archive_mode=on", "backlog=0", "data_dir=yes", "user_databases=1", f"info={json.dumps(info)}"]
    lines += [f"timer={name}|enabled|active" for name in backups.timers(plan)]
    return lines


OPERATIONS = (backups.packages, backups.repository, backups.archiving, backups.schedules, backups.first_backup)


@pytest.mark.parametrize("systemd", [True, False])
def test_a_converged_host_with_backups_gets_no_command(systemd):
    plan, host = plan_with(BACKUP, systemd)
    host.outputs[BackupState] = converged(plan)
    for operation in OPERATIONS:
        assert run_operation(operation, plan, host) == [], operation.__name__


def test_a_fresh_host_gets_pgbackrest_the_config_on_stdin_the_stanza_archiving_schedules_and_a_first_backup():
    plan, host = plan_with(BACKUP)
    host.outputs[BackupState] = ["archive_mode=off", "data_dir=yes"]
    commands = {operation.__name__: run_operation(operation, plan, host) for operation in OPERATIONS}
    assert "install --no-install-recommends pgbackrest" in commands["packages"][0]
    config, stanza = commands["repository"]
    assert isinstance(config, StringCommand) and CIPHER not in str(config) and "--output=json --log-level-console=off --log-level-stderr=error info" in str(config)
    assert CIPHER in config.connector_arguments["_stdin"] and "repo1-s3-key-type=auto" in config.connector_arguments["_stdin"]
    assert "stanza-create" in stanza
    assert "archive_mode = on" in commands["archiving"][0] and "systemctl restart" in commands["archiving"][0]
    assert "systemctl daemon-reload" in commands["schedules"][-1]
    assert commands["first_backup"] == []  # archiving is not on yet in this fact: it waits (the run re-asks after the restart)
    assert all(CIPHER not in str(command) for listed in commands.values() for command in listed)


def test_with_pg_restart_report_archiving_is_only_reported():
    plan, host = plan_with({**BACKUP, "pg_restart": "report"})
    host.outputs[BackupState] = ["archive_mode=off", "data_dir=yes"]
    (command,) = run_operation(backups.archiving, plan, host)
    assert "systemctl restart" not in command and "restart pending: " in command


def test_without_a_bucket_our_archive_file_is_set_aside():
    plan, host = plan_with({})
    host.outputs[BackupState] = [f"file={backups.archive_path(plan.platform)}|x|644|postgres:postgres", "archive_mode=on"]
    (command,) = run_operation(backups.archiving, plan, host)
    assert "bak-" in command and "pg_reload_conf" in command


def test_without_systemd_the_schedules_are_a_cron_file():
    plan, _ = plan_with(BACKUP, systemd=False)
    cron = backups.wanted_files(plan)[backups.CRON_FILE][0]
    assert "0 1 * * 0 root /usr/local/lib/pgvector-deploy/pgvector-backup full" in cron
    assert "0 4 * * 6 root /usr/local/lib/pgvector-deploy/pgvector-restore-drill" in cron


def test_an_unreadable_repository_fails_clearly_instead_of_creating_a_stanza():
    plan, host = plan_with(BACKUP)
    lines = [line for line in converged(plan) if not line.startswith("info=")] + ["info_error=ERROR: [039]: HTTP request failed with 403"]
    host.outputs[BackupState] = lines
    (command,) = run_operation(backups.repository, plan, host)
    assert "cannot read the repository s3://acme-db-backups/db-1" in command and "403" in command


# --- restore ------------------------------------------------------------------------------------


def state(user_databases=0, stops=(1_000_000,)) -> dict:
    return {
        "stanza_code": 0, "stanza_message": "ok", "user_databases": user_databases,
        "backups": [{"label": f"b{stop}", "type": "full", "start": stop - 10, "stop": stop} for stop in stops],
    }  # fmt: skip


def test_restore_refusals():
    plan, _ = plan_with(BACKUP)
    assert backups.restore_refusal(plan, state()) is None
    assert "holds 2 database(s)" in backups.restore_refusal(plan, state(user_databases=2))
    assert "holds no backup" in backups.restore_refusal(plan, state(stops=()))
    over, _ = plan_with({**BACKUP, "restore_over_existing": True})
    assert backups.restore_refusal(over, state(user_databases=2)) is None
    early = datetime.fromtimestamp(999_000, timezone.utc).isoformat()
    at, _ = plan_with({**BACKUP, "restore_target_time": early})
    assert "is before the end of the first backup" in backups.restore_refusal(at, state())
    later, _ = plan_with({**BACKUP, "restore_target_time": (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()})
    assert "is in the future" in backups.restore_refusal(later, state())


def test_restore_to_a_time_promotes_there():
    when = "2026-12-01T12:30:01.5+01:00"
    plan, _ = plan_with({**BACKUP, "restore_target_time": when})
    script = backups.restore_script(plan)
    assert "--type=time '--target=2026-12-01 11:30:01+00' --target-action=promote" in script
    assert sh_syntax_error(script) == ""


@pytest.mark.parametrize("script", backups.SCRIPTS)
def test_the_host_scripts_are_valid_sh(script):
    assert sh_syntax_error((REPO / "files" / "backups" / script).read_text()) == ""


def test_the_generated_shell_is_valid_sh():
    plan, _ = plan_with(BACKUP)
    for script in (backups.config_script(), backups.stanza_script(), backups.install_from_stdin("/etc/x", "644", "root:root")):
        assert sh_syntax_error(script) == ""


def test_the_backup_state_fact_runs_on_a_real_postgresql_15(debian12):
    """Its queries, as pyinfra runs them (sh, as root), against a throwaway server: every line
    comes back (a query that fails stops the ones after it, and user_databases once read 0
    on a host with a database: the restore then went over it)."""
    import dataclasses
    import subprocess

    from .conftest import throwaway_psql, throwaway_server

    with throwaway_server("pgv-backup-state-") as base:
        throwaway_psql(base)("CREATE DATABASE app")
        platform = dataclasses.replace(debian12, socket_dir=str(base), data_dir=f"{base}/data")
        command = BackupState().command(platform, 5432, ("/nonexistent",))
        output = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout.splitlines()
    state = backups.parse_backup_state(output)
    assert state["user_databases"] == 1 and state["archive_mode"] == "off" and state["data_dir"]
    assert (state["archived_count"], state["failed_count"], state["last_archived"]) == (0, 0, None)


def test_an_unknown_database_count_refuses_the_restore():
    plan, _ = plan_with(BACKUP)
    assert "could not ask PostgreSQL" in backups.restore_refusal(plan, {**state(), "user_databases": None})


def test_static_keys_only_when_given_and_then_only_on_stdin(monkeypatch):
    plan, _ = plan_with(BACKUP)
    assert "repo1-s3-key-type=auto" in backups.render_config(plan) and "repo1-s3-key=" not in backups.render_config(plan)
    monkeypatch.setenv("PGV_UNIT_KEY", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("PGV_UNIT_SECRET", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    keyed, host = plan_with({**BACKUP, "pg_backup_s3_access_key_env": "PGV_UNIT_KEY", "pg_backup_s3_secret_key_env": "PGV_UNIT_SECRET"})
    config = backups.render_config(keyed)
    assert "repo1-s3-key-type=shared" in config and "repo1-s3-key=AKIAIOSFODNN7EXAMPLE" in config
    host.outputs[BackupState] = ["archive_mode=off", "data_dir=yes"]
    command = run_operation(backups.repository, keyed, host)[0]
    assert "EXAMPLEKEY" not in str(command) and "EXAMPLEKEY" in command.connector_arguments["_stdin"]
    with pytest.raises(SettingsError, match="go together"):
        load_settings({**BACKUP, "pg_backup_s3_access_key_env": "PGV_UNIT_KEY"}, host_name="db")
    monkeypatch.setenv("PGV_UNIT_SECRET", "has a space in it, no")
    with pytest.raises(SettingsError, match="not an AWS access key"):
        load_settings({**BACKUP, "pg_backup_s3_access_key_env": "PGV_UNIT_KEY", "pg_backup_s3_secret_key_env": "PGV_UNIT_SECRET"}, host_name="db")


def test_pgbackrest_output_that_is_not_json_is_an_error_not_a_crash():
    """pgBackRest printed an error line before its JSON (credentials missing): the fact once
    raised, and the host was refused with a traceback's one line instead of the clear error."""
    state = backups.parse_backup_state(["info=ERROR: [039]: unable to get credentials[{}]", "archive_mode=on"])
    assert state["stanza_code"] is None and "unreadable pgbackrest info output" in state["stanza_message"]
    warned = backups.parse_backup_state(['info=[{"name":"pgvector","status":{"code":99,"message":"other"}}]', "info_error=WARN: role not found"])
    assert warned["stanza_code"] == 99 and warned["stanza_message"] == "other"
