"""Backups (pgvector_deploy/backups.py): host data, what is rendered, the operations' plans
against a fake host, the restore's refusals, and the host scripts' syntax. The real thing
(pgBackRest, S3, IMDSv2, restores, the drill) is proved in tests/e2e/test_backups.py."""

from __future__ import annotations

import json
import re
import shutil
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pyinfra.api import StringCommand

from pgvector_deploy import backups, facts, managed_files, preflight
from pgvector_deploy.facts import BackupState, HostProfile
from pgvector_deploy.loading import load_settings
from pgvector_deploy.managed_files import sha256_text
from pgvector_deploy.plan import Plan
from pgvector_deploy.settings import SettingsError

from .conftest import FactHost, recorded_output, run_operation, sh_syntax_error, skip_or_fail

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


@pytest.mark.parametrize("passphrase", [12345678901234567890123, b"a-long-enough-passphrase-bytes"], ids=["int", "bytes"])
def test_a_passphrase_that_is_not_text_is_refused_without_showing_it(passphrase):
    # --data pg_backup_cipher_pass=<digits> arrives as a number: the refusal must not print it.
    with pytest.raises(SettingsError) as refused:
        load_settings({**BACKUP, "pg_backup_cipher_pass": passphrase}, host_name="db")
    assert "pg_backup_cipher_pass" in str(refused.value) and "is not text" in str(refused.value)
    assert str(passphrase) not in str(refused.value) and "12345678901234567890123" not in str(refused.value)


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
    files = {facts.PGBR_CONFIG: (backups.render_config(plan), "600", "postgres:postgres")}
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
    for script in (backups.config_script(), backups.stanza_script(), managed_files.install_from_stdin("/etc/x", "644", "root:root")):
        assert sh_syntax_error(script) == ""


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


def test_the_backup_report_is_logged_and_is_never_a_change():
    plan, host = plan_with(BACKUP)
    host.outputs[facts.BackupReport] = ["now=10", "archive_mode=on", "archiver=1|0|9||"]
    assert run_operation(backups.report, plan, host) == []
    assert host.noops[-1].startswith("backup state reported")
    none, host = plan_with({})
    assert run_operation(backups.report, none, host) == [] and "not set" in host.noops[-1]


def test_a_bucket_unset_again_removes_our_timers_scripts_and_monitoring_files_and_keeps_the_config_aside():
    plan, host = plan_with({})
    ours = [*backups.installable_files()[:4], "/etc/systemd/system/pgvector-backup-full.timer", *backups.MONITORING_FILES]
    host.outputs[BackupState] = [f"file={path}|x|644|root:root" for path in [*ours, backups.PGBR_CONFIG]] + ["archive_mode=off"]
    removal, config = run_operation(backups.schedules, plan, host)
    assert "systemctl disable --now pgvector-backup-full.timer" in removal and "systemctl daemon-reload" in removal
    assert all(path in removal for path in ours) and backups.PGBR_CONFIG not in removal
    assert "pgbackrest.conf" in config and "bak-$stamp" in config and 'rm -f "$file"' in config
    assert sh_syntax_error(removal) == "" and sh_syntax_error(config) == ""
    # Backups in S3 are never deleted: no pgBackRest command at all.
    assert "pgbackrest" not in removal.replace("/etc/pgbackrest", "") and "stanza-delete" not in config
    plan, host = plan_with({})  # the second run
    host.outputs[BackupState] = ["archive_mode=off"]
    assert run_operation(backups.schedules, plan, host) == [] and "not set" in host.noops[-1]


def test_a_schedule_set_to_none_removes_its_timer():
    plan, host = plan_with({**BACKUP, "pg_backup_drill_schedule": "none"})
    lines = converged(plan) + ["file=/etc/systemd/system/pgvector-restore-drill.timer|x|644|root:root"]
    host.outputs[BackupState] = lines
    (removal, enable) = run_operation(backups.schedules, plan, host)
    assert "disable --now pgvector-restore-drill.timer" in removal and "pgvector-restore-drill.timer" not in enable


def test_archive_mode_left_pending_by_a_set_aside_file_is_restarted_off_when_allowed():
    """With our archive file set aside, pg_file_settings has no row for archive_mode (its file
    is gone), so the restart must be asked of pg_settings.pending_restart: asked of
    pg_file_settings, archive_mode stayed on with no archive_command and the WAL piled up."""
    plan, host = plan_with({})
    host.outputs[BackupState] = [f"file={backups.archive_path(plan.platform)}|x|644|postgres:postgres", "archive_mode=on"]
    (command,) = run_operation(backups.archiving, plan, host)
    assert "pg_settings WHERE pending_restart AND name" in command and "systemctl restart" in command
    plan, host = plan_with({})
    host.outputs[BackupState] = ["archive_mode=on", "archive_mode_pending=true"]  # set aside earlier, under pg_restart = report
    (command,) = run_operation(backups.archiving, plan, host)
    assert "systemctl restart" in command
    plan, host = plan_with({})
    host.outputs[BackupState] = ["archive_mode=on", "archive_mode_pending=false"]  # the user's own archiving: not ours
    assert run_operation(backups.archiving, plan, host) == []


def test_the_pending_archive_mode_query_reads_a_real_postgresql_15(debian12):
    """The question archive_off_restart asks, on a throwaway server whose archive_mode=on file
    is removed and reloaded: pending (pg_file_settings has no row naming the file)."""
    import subprocess

    from .conftest import throwaway_psql, throwaway_server

    with throwaway_server("pgv-archive-off-") as base:
        psql = throwaway_psql(base)
        psql("ALTER SYSTEM SET archive_mode = on")
        data = f"{base}/data"
        # A log file, and no pipe the new postmaster would hold open (run would wait for it).
        subprocess.run(["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_ctl", "-D", data, "-l", f"{base}/log",
                        "-w", "restart"], check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=60)  # fmt: skip
        assert psql(backups.ARCHIVE_OFF_PENDING_SQL) == ""
        psql("ALTER SYSTEM RESET archive_mode")
        psql("SELECT pg_reload_conf()")
        time.sleep(0.5)
        assert psql(backups.ARCHIVE_OFF_PENDING_SQL) == "archive_mode"
        assert psql(facts.ARCHIVE_MODE_PENDING_SQL) == "archive_mode_pending=true"


ODD = {
    "database": 'App DB "x"',
    "schema": 'My Schema"',
    "table": "Tab'le\nName",
    "owner": 'Odd "Owner"\nx',
    "index": 'HNSW "Idx"\nOdd',
}


def test_the_drill_checks_odd_names_nologin_owners_and_never_runs_app_code_as_superuser(tmp_path):
    """The drill's checks (PGV_DRILL_CHECK_SOCKET: the checks alone) on a real throwaway
    PostgreSQL 15 with pgvector and amcheck: a database, schema, table, column and HNSW index
    with quotes, spaces, mixed case and newlines in their names, owned by a role that cannot log
    in (and has no CONNECT); pgvector in its own schema; an HNSW index on an expression that
    calls an app function which refuses to run as a superuser. The old drill skipped every such
    name (a regex filter) and failed on the NOLOGIN owner."""
    import subprocess

    from .conftest import PG_BINDIR, throwaway_psql, throwaway_server

    with throwaway_server("pgv-drill-checks-") as base:
        psql = throwaway_psql(base)
        db, schema, table, owner, index = (ODD[key] for key in ("database", "schema", "table", "owner", "index"))

        def ident(name: str) -> str:
            return '"' + name.replace('"', '""') + '"'

        psql(f"CREATE ROLE {ident(owner)} NOLOGIN")
        psql(f"CREATE DATABASE {ident(db)}")
        psql(f"REVOKE CONNECT ON DATABASE {ident(db)} FROM PUBLIC")
        sql = f"""
CREATE SCHEMA ext; CREATE EXTENSION vector SCHEMA ext;
CREATE SCHEMA {ident(schema)} AUTHORIZATION {ident(owner)};
GRANT USAGE ON SCHEMA ext TO {ident(owner)};
SET ROLE {ident(owner)};
CREATE FUNCTION {ident(schema)}.embed(v ext.vector) RETURNS ext.vector(3) LANGUAGE plpgsql IMMUTABLE AS $f$
BEGIN
  IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN RAISE EXCEPTION 'app code ran as a superuser'; END IF;
  RETURN v;
END $f$;
CREATE TABLE {ident(schema)}.{ident(table)} (id int PRIMARY KEY, "Emb Col" ext.vector(3));
INSERT INTO {ident(schema)}.{ident(table)} SELECT i, ARRAY[i, i, i]::real[]::ext.vector FROM generate_series(1, 50) i;
CREATE INDEX {ident(index)} ON {ident(schema)}.{ident(table)} USING hnsw ("Emb Col" ext.vector_l2_ops);
CREATE INDEX expr_hnsw ON {ident(schema)}.{ident(table)} USING hnsw (({ident(schema)}.embed("Emb Col")::ext.vector(3)) ext.vector_l2_ops);
CREATE TABLE {ident(schema)}.parted (id int, e ext.vector(3)) PARTITION BY RANGE (id);
CREATE TABLE {ident(schema)}.parted_1 PARTITION OF {ident(schema)}.parted FOR VALUES FROM (0) TO (100);
INSERT INTO {ident(schema)}.parted SELECT i, ARRAY[i, i, i]::real[]::ext.vector FROM generate_series(1, 20) i;
CREATE INDEX parted_hnsw ON {ident(schema)}.parted USING hnsw (e ext.vector_l2_ops);
"""
        from pgvector_deploy.shell import dbname_conninfo

        made = subprocess.run(["runuser", "-u", "postgres", "--", f"{PG_BINDIR}/psql", "-XAtq", "-v", "ON_ERROR_STOP=1", "-h", str(base),
                               "-d", dbname_conninfo(db), "-c", sql], capture_output=True, text=True)  # fmt: skip
        assert made.returncode == 0, made.stderr
        env_file = tmp_path / "backup.env"
        env_file.write_text(
            f"PGV_BINDIR={PG_BINDIR}\nPGV_SOCKET_DIR=/nonexistent\nPGV_PORT=5432\nPGV_DRILL_PORT=5432\n"
            f"PGV_DRILL_DIR={tmp_path}/drill\nPGV_TEXTFILE_DIR={tmp_path}/prom\nPGBR_CONFIG=/nonexistent\nPGBR_STANZA=x\n"
        )
        drill = REPO / "files" / "backups" / "pgvector-restore-drill"
        env = {"PATH": "/usr/bin:/bin", "PGV_BACKUP_ENV": str(env_file), "PGV_DRILL_CHECK_SOCKET": str(base), "PGV_DRILL_CHECK_PORT": "5432"}
        done = subprocess.run(["sh", str(drill)], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report["result"] == "pass", report
        odd = next(entry for entry in report["databases"] if entry["database"] == db)
        assert sorted(odd["tables"], key=lambda t: t["table"]) == [
            {"table": f"{schema}.{table}", "rows": 50}, {"table": f"{schema}.parted_1", "rows": 20}]  # fmt: skip
        # A partitioned table's HNSW index is checked on each partition (its parent holds no rows).
        assert sorted(odd["hnsw_indexes"], key=lambda h: h["index"]) == sorted(
            [{"index": index, "table": f"{schema}.{table}", "rows_returned": 5},
             {"index": "expr_hnsw", "table": f"{schema}.{table}", "rows_returned": 5},
             {"index": "parted_1_e_idx", "table": f"{schema}.parted_1", "rows_returned": 5}], key=lambda h: h["index"])  # fmt: skip
        assert odd["btree_indexes_checked"] >= 1
        # The same checks with the app function's refusal hit: run as a superuser, they fail.
        psql(f"ALTER ROLE {ident(owner)} SUPERUSER")
        failed = subprocess.run(["sh", str(drill)], env=env, capture_output=True, text=True, timeout=300)
        refused = json.loads(failed.stdout.strip().splitlines()[-1])
        assert failed.returncode == 1 and refused["result"] == "fail" and "app code ran as a superuser" in refused["error"], refused


CRON_SCHEDULES = [
    {},  # the defaults: full Sunday 01:00, differential Monday to Saturday 01:00, drill Saturday 04:00
    {"pg_backup_full_schedule": "Mon,Wed,Fri 02:30", "pg_backup_diff_schedule": "daily 23:59", "pg_backup_drill_schedule": "Tue,Sun 00:05"},
]


def systemd_elapses(on_calendar: str, base: datetime, count: int) -> list[datetime]:
    """The next ``count`` times systemd's own calendar parser gives for ``on_calendar``."""
    import subprocess

    out = subprocess.run(
        ["systemd-analyze", "calendar", f"--iterations={count}", f"--base-time=@{int(base.timestamp())}", on_calendar],
        capture_output=True, text=True, check=True, env={"TZ": "UTC", "PATH": "/usr/bin:/bin"},
    ).stdout  # fmt: skip
    found = [line.split(":", 1)[1].strip() for line in out.splitlines() if "Next elapse:" in line or "Iter. #" in line]
    return [datetime.strptime(text.rsplit(" ", 1)[0], "%a %Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc) for text in found]


@pytest.mark.parametrize("extra", CRON_SCHEDULES)
def test_the_cron_file_is_what_cron_reads_and_fires_when_the_timers_do(extra):
    """Without systemd: /etc/cron.d/pgvector-deploy-backups read as cron reads it (a name
    without dots, 0644 root, a final newline, environment lines, then five fields, the user,
    the command, no "%", which cron turns into a newline), each schedule parsed by croniter,
    a real cron-expression parser, and firing at exactly the times systemd's own parser
    (systemd-analyze calendar) gives for the timer the same host data makes on a systemd host;
    each command is one of the scripts installed, 0755, with an argument it accepts."""
    from croniter import croniter

    if shutil.which("systemd-analyze") is None:
        skip_or_fail("systemd-analyze is not installed here")
    cron_plan, _ = plan_with({**BACKUP, **extra}, systemd=False)
    timer_plan, _ = plan_with({**BACKUP, **extra})
    files = backups.wanted_files(cron_plan)
    text, mode, owner = files[backups.CRON_FILE]
    assert "." not in Path(backups.CRON_FILE).name and (mode, owner) == ("644", "root:root") and text.endswith("\n")
    units = backups.wanted_files(timer_plan)
    base = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)  # a Wednesday
    jobs = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or re.match(r"^[A-Z_]+=", line):
            continue
        fields = line.split(None, 6)
        assert len(fields) == 7 and fields[5] == "root" and "%" not in fields[6], line
        schedule = " ".join(fields[:5])
        assert croniter.is_valid(schedule), line
        script, *arguments = fields[6].replace(" >/dev/null 2>&1", "").split()
        assert script in files and files[script][1] == "755", script
        usage = {"pgvector-backup": [["full"], ["diff"], ["incr"]], "pgvector-restore-drill": [[]], "pgvector-backup-status": [[]]}
        assert arguments in usage[Path(script).name], line
        jobs[fields[6]] = schedule
    for name, command, schedule in backups.jobs(timer_plan):
        cron = next(expression for line, expression in jobs.items() if line.startswith(command + " ") or line == command)
        timer = units[f"{backups.UNIT_DIR}/{name}.timer"][0]
        on_calendar = re.search(r"^OnCalendar=(.+)$", timer, re.M).group(1)
        fires = croniter(cron, base)
        assert [fires.get_next(datetime) for _ in range(8)] == systemd_elapses(on_calendar, base, 8), name
    status = next(expression for line, expression in jobs.items() if "pgvector-backup-status" in line)
    fires = croniter(status, base)
    assert [fires.get_next(datetime) for _ in range(3)] == systemd_elapses("*:0/5", base, 3)


def test_the_restore_touches_the_data_directory_only_after_a_complete_copy():
    """The copy goes to <data dir>.restoring-<time> while PostgreSQL runs; a partial one from a
    killed run is deleted first (it is only a copy from S3); the stop and the renames come after
    pgBackRest succeeded. (The kill itself is proved on a real host: test_backups.py e2e.)"""
    plan, _ = plan_with({**BACKUP, "restore_over_existing": True})
    script = backups.restore_script(plan)
    lines = script.splitlines()
    data = plan.platform.data_dir

    def at(text: str) -> int:
        return next(number for number, line in enumerate(lines) if text in line)

    assert at(f"for old in {data}.restoring-*") < at('rm -rf "$old"') < at('--pg1-path="$new"') < at("systemctl stop")
    assert at("systemctl stop") < at(f"mv {data} \"$aside\"") < at(f"mv \"$new\" {data}")
    assert f"new={data}.restoring-$stamp" in script and f"rm -rf {data}" not in script  # the data directory is never deleted
    # Recovery fetches WAL with the configuration's pg1-path (the data directory), not the
    # staging path pgBackRest would write into restore_command (gone after the swap: a restore
    # to a time once waited forever in systemctl start, e2e caught it).
    assert "'--recovery-option=restore_command=pgbackrest --config=/etc/pgbackrest/pgbackrest.conf --stanza=pgvector archive-get %f \"%p\"'" in script
    assert sh_syntax_error(script) == ""
