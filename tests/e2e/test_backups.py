"""Backups to S3 and point-in-time restore onto a fresh host, on real hosts.

The lab gives each host what an EC2 instance has (tests/hosts/aws.py): an S3 endpoint on the
lab network (moto, TLS by stunnel with a lab CA, whose file the host data names as
pg_backup_s3_ca_file, as a MinIO user would), and an IMDSv2 stand-in at 169.254.169.254 in
the host's network namespace that hands out role credentials only after the token PUT. No
AWS key is ever given to the hosts.

One pair of hosts for the whole module, in order: host A is provisioned with backups; the
app writes 1,000 rows with vectors and an HNSW index; time T; 500 more rows. Fresh host B is
restored at T (exactly 1,000 rows, the index answers k-NN right, the app connects), then to
the latest state (1,500, over the existing cluster, the old data directory kept aside). The
error cases each change nothing. A backup killed mid-run is followed by one that succeeds.
The restore drill passes and reports; a corrupted backup makes it fail loudly.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from datetime import datetime, timedelta, timezone

import pytest

from tests.hosts.aws import S3, Imds
from tests.hosts.lab import GATEWAY

BUCKET = "pgv-lab-backups"
CA_ON_HOST = "/etc/pgv-lab/s3-ca.pem"
PASSWORD = "b4ckup-Test:pw"
CIPHER = "lab-repository-passphrase-0123456789"
ENV = {"PGV_TEST_APP_PASSWORD": PASSWORD, "PGV_TEST_CIPHER": CIPHER}
VECTOR = "SELECT '[1,2,3]'::vector <-> '[4,6,3]'::vector"


def dsn(database: str = "app") -> str:
    return f"host=172.17.0.1 port=5432 user=app dbname={database} password='{PASSWORD}'"


@pytest.fixture(scope="module")
def s3(lab, tmp_path_factory):
    server = S3(tmp_path_factory.mktemp("s3"), GATEWAY)
    server.client().create_bucket(Bucket=BUCKET)
    yield server
    server.stop()


class Pair:
    def __init__(self, hosts, s3, tarball, workdir):
        self.s3, self.tarball, self.workdir = s3, tarball, workdir
        self.hosts, self.containers, self.imds = {}, {}, {}
        for name in ("bk-a", "bk-b"):
            host = hosts.boot(name)
            host.add_bridge("docker0", "172.17.0.1/16")
            self.containers[name] = host.add_container("app", "docker0", "172.17.0.2/16")
            (host.root / "etc/pgv-lab").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(s3.ca.ca, host.root / CA_ON_HOST[1:])
            self.imds[name] = Imds(host, workdir)
            self.hosts[name] = host
        self.a, self.b = self.hosts["bk-a"], self.hosts["bk-b"]

    def data(self, **extra) -> dict:
        return {
            **self.tarball,
            "pg_app_user": "app",
            "pg_app_password_env": "PGV_TEST_APP_PASSWORD",
            "pg_backup_s3_bucket": BUCKET,
            "pg_backup_s3_endpoint": self.s3.endpoint,
            "pg_backup_s3_ca_file": CA_ON_HOST,
            "pg_backup_cipher_pass_env": "PGV_TEST_CIPHER",
            "pg_backup_s3_prefix": "db-a",  # host B restores from host A's prefix
            **extra,
        }

    def deploy(self, host, *args, recipe: str | None = None, **extra):
        from tests.e2e.conftest import run_deploy

        options = {"env": ENV} if recipe is None else {"env": ENV, "recipe": recipe}
        return run_deploy(self.workdir, [host.inventory_entry(**self.data(**extra))], *args, **options)

    def stop(self):
        for imds in self.imds.values():
            imds.stop()


@pytest.fixture(scope="module")
def pair(hosts, s3, tarball, tmp_path_factory):
    made = Pair(hosts, s3, tarball, tmp_path_factory.mktemp("backups"))
    yield made
    made.stop()


def snapshot(host) -> dict:
    """``TestHost.snapshot`` without the monitoring file, which its timer rewrites every 5
    minutes whatever a run does (housekeeping, like the logs)."""
    return {path: value for path, value in host.snapshot().items() if not path.startswith("var/lib/prometheus/node-exporter/")}


def info(host) -> dict:
    out = host.sudo("runuser -u postgres -- pgbackrest --config=/etc/pgbackrest/pgbackrest.conf --stanza=pgvector --output=json info")
    return json.loads(out)[0]


def rows(host) -> int:
    return int(host.psql("SELECT count(*) FROM items", "app"))


def nearest(host, index: bool) -> str:
    """The 5 nearest ids to [10.2, ...] (exact with the index off)."""
    settings = "SET enable_seqscan = off;" if index else "SET enable_indexscan = off;"
    sql = f"{settings} SELECT string_agg(id::text, ',') FROM (SELECT id FROM items ORDER BY embedding <-> '[10.2,10.2,10.2]' LIMIT 5) s"
    return host.psql(sql, "app").splitlines()[-1]


def wait_archived(host, timeout: float = 120) -> float:
    """Switch the WAL and wait until the segment is in the archive; returns the seconds."""
    segment = host.psql("SELECT pg_walfile_name(pg_switch_wal())")
    started = time.monotonic()
    while host.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") < segment:
        assert time.monotonic() - started < timeout, f"{segment} was not archived in {timeout}s"
        time.sleep(0.2)
    return time.monotonic() - started


def test_a_deploy_with_a_bucket_archives_wal_and_takes_the_first_full_backup(pair):
    result = pair.deploy(pair.a)
    assert result.returncode == 0, result.output
    assert "restarting PostgreSQL for: archive_mode" in result.output  # announced, allowed by pg_restart
    assert CIPHER not in result.output
    backup = info(pair.a)
    assert backup["status"]["code"] == 0 and [b["type"] for b in backup["backup"]] == ["full"]
    assert backup["cipher"] == "aes-256-cbc"
    assert pair.a.psql("SHOW archive_mode") == "on"
    keys = pair.s3.keys(BUCKET, "db-a/")
    assert any(key.startswith("db-a/backup/pgvector/") for key in keys) and any(key.startswith("db-a/archive/pgvector/") for key in keys)
    # The passphrase is in the one file postgres alone reads, and no AWS key is anywhere.
    assert pair.a.sudo("stat -c %a:%U:%G /etc/pgbackrest/pgbackrest.conf").strip() == "600:postgres:postgres"
    conf = pair.a.sudo("cat /etc/pgbackrest/pgbackrest.conf")
    assert "repo1-s3-key-type=auto" in conf and "repo1-s3-key=" not in conf and "repo1-s3-key-secret" not in conf
    # (the pattern on standard input: on sudo's command line it would land in the journal)
    found = pair.a.sudo("grep -rlF -f /dev/stdin /etc /var /tmp /root /home 2>/dev/null || true", input=CIPHER + "\n")
    assert found.split() == ["/etc/pgbackrest/pgbackrest.conf"]
    # The instance-role path: a token first, then the role's credentials with it.
    asked = pair.imds["bk-a"].requests()
    assert asked[0].startswith("PUT /latest/api/token 200")
    assert any(line.startswith("GET /latest/meta-data/iam/security-credentials/pgvector-db 200") for line in asked)
    timers = pair.a.sudo("systemctl is-enabled pgvector-backup-full.timer pgvector-backup-diff.timer pgvector-restore-drill.timer")
    assert timers.split() == ["enabled"] * 3
    assert "pgvector_backup_last_age_seconds" in pair.a.sudo("cat /var/lib/prometheus/node-exporter/pgvector_backup.prom")
    # The smoke suite's 11th check proved a WAL segment reaches S3; its result is monitored too.
    assert re.search(r"wal_archive\s+PASS", result.output), result.output
    assert "pgvector_smoke_success 1" in pair.a.sudo("cat /var/lib/prometheus/node-exporter/pgvector_smoke.prom")


def test_a_second_deploy_changes_nothing(pair):
    started = pair.a.psql("SELECT pg_postmaster_start_time()")
    result = pair.deploy(pair.a)
    assert result.returncode == 0, result.output
    assert result.changed(pair.a.name) == []
    assert pair.a.psql("SELECT pg_postmaster_start_time()") == started
    assert len(info(pair.a)["backup"]) == 1


def nightly(pair, host, workdir):
    """``python -m pgvector_deploy.nightly`` on ``host`` as the control host's unit runs it,
    with the textfile for node_exporter; returns (process, report, textfile)."""
    import os
    import subprocess
    import sys

    from tests.hosts.runner import REPO, write_inventory

    inventory = write_inventory(workdir / "nightly-inventory.py", [host.inventory_entry(**pair.data())])
    command = [sys.executable, "-m", "pgvector_deploy.nightly", str(inventory), "--report-dir", str(workdir / "reports"),
               "--textfile-dir", str(workdir / "textfiles")]  # fmt: skip
    proc = subprocess.run(command, cwd=REPO, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=1800)
    report = json.loads((workdir / "reports" / "nightly-latest.json").read_text())
    return proc, report, (workdir / "textfiles" / "pgvector_nightly.prom").read_text()


def test_the_nightly_report_gives_the_backup_state_and_a_no_op_run_changes_nothing(pair, tmp_path):
    """The nightly run's drift report has each host's backup state (read, never a change);
    the control host's textfile has the run's status."""
    proc, report, textfile = nightly(pair, pair.a, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    host = report["hosts"][pair.a.name]
    assert host["status"] == "clean" and host["changed"] == [], host
    backups = host["backups"]
    assert backups["repository"] == "ok" and backups["backup_count"] == 1
    assert backups["last_full"]["label"].endswith("F") and 0 <= backups["last_full"]["age_seconds"] < 3600
    assert backups["last_diff"] is None and backups["drill"] is None  # no differential, no drill yet
    wal = backups["wal_archive"]
    assert wal["status"] == "ok" and wal["archive_mode"] == "on" and wal["archived_count"] >= 1, wal
    assert "backups: last full " in proc.stdout and "WAL archive ok" in proc.stdout
    assert "pgvector_nightly_status 0" in textfile and f'pgvector_nightly_host_status{{host="{pair.a.name}"}} 0' in textfile


@pytest.fixture(scope="module")
def moment(pair):
    """The app writes 1,000 rows and an HNSW index; T; then 500 more rows, archived."""
    a = pair.a
    a.psql(
        "SET ROLE app; CREATE TABLE items (id int PRIMARY KEY, embedding vector(3)); "
        "INSERT INTO items SELECT i, ARRAY[i, i, i]::real[]::vector FROM generate_series(1, 1000) i; "
        "CREATE INDEX items_hnsw ON items USING hnsw (embedding vector_l2_ops);",
        "app",
    )
    time.sleep(1.5)
    target = a.psql("""SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')""")
    time.sleep(1.5)
    a.psql("SET ROLE app; INSERT INTO items SELECT i, ARRAY[i, i, i]::real[]::vector FROM generate_series(1001, 1500) i", "app")
    lag = wait_archived(a)
    return {"T": target, "archive_seconds": lag}


def test_restore_on_a_fresh_host_at_T_gives_exactly_the_1000_rows_and_a_working_index(pair, moment):
    result = pair.deploy(pair.b, recipe="deploy/restore.py", restore_target_time=moment["T"])
    assert result.returncode == 0, result.output
    assert rows(pair.b) == 1000
    assert nearest(pair.b, index=True) == nearest(pair.b, index=False) == "10,11,9,12,8"
    assert "Index Scan using items_hnsw" in pair.b.psql(
        "SET enable_seqscan = off; EXPLAIN SELECT id FROM items ORDER BY embedding <-> '[1,1,1]' LIMIT 5", "app"
    )
    app = pair.containers["bk-b"].query(dsn(), "SELECT count(*) FROM items")
    assert app.returncode == 0 and app.stdout.strip() == "1000", app.stderr
    assert pair.b.psql("SHOW archive_mode") == "off"  # B never archives into A's repository


def test_restore_over_a_cluster_with_data_is_refused_unless_asked_and_changes_nothing(pair):
    before = snapshot(pair.b)
    result = pair.deploy(pair.b, recipe="deploy/restore.py")
    assert result.returncode != 0
    assert "holds 1 database(s) of its own" in result.output and "restore_over_existing=True" in result.output
    assert snapshot(pair.b) == before


def test_a_target_before_the_first_backup_is_refused_and_changes_nothing(pair):
    before = snapshot(pair.b)
    early = (datetime.now(timezone.utc) - timedelta(days=1)).isoformat()
    result = pair.deploy(pair.b, recipe="deploy/restore.py", restore_target_time=early, restore_over_existing=True)
    assert result.returncode != 0
    assert "is before the end of the first backup" in result.output
    assert snapshot(pair.b) == before


def test_restore_latest_over_the_existing_cluster_gives_1500_rows_and_keeps_the_old_directory(pair):
    result = pair.deploy(pair.b, recipe="deploy/restore.py", restore_over_existing=True)
    assert result.returncode == 0, result.output
    assert rows(pair.b) == 1500
    assert nearest(pair.b, index=True) == "10,11,9,12,8"
    kept = pair.b.sudo("ls -d /var/lib/postgresql/15/main.before-restore-*").split()
    assert len(kept) == 2  # the fresh cluster, then the one restored at T


def test_a_restored_host_deployed_with_its_own_prefix_archives_and_backs_up(pair):
    """adv14 #2: pgBackRest's restore leaves archive_mode = 'off' in postgresql.auto.conf,
    which outranks our conf.d file: the deploy reported the restart on every run, never did
    it, and wal_archive skipped, so the restored host never got a backup."""
    result = pair.deploy(pair.b, pg_backup_s3_prefix="db-b")
    assert result.returncode == 0, result.output
    assert "resetting archive_mode in postgresql.auto.conf" in result.output
    assert pair.b.psql("SHOW archive_mode") == "on"
    assert any(key.startswith("db-b/backup/pgvector/") for key in pair.s3.keys(BUCKET, "db-b/"))
    assert re.search(r"wal_archive\s+PASS", result.output), result.output
    again = pair.deploy(pair.b, pg_backup_s3_prefix="db-b")
    assert again.returncode == 0, again.output
    assert again.changed(pair.b.name) == []


def test_a_bucket_that_does_not_exist_is_a_clear_error_and_changes_nothing(pair):
    before = snapshot(pair.a)
    result = pair.deploy(pair.a, pg_backup_s3_bucket="pgv-no-such-bucket")
    assert result.returncode != 0
    assert "cannot reach the S3 repository with the new settings" in result.output
    assert "NoSuchBucket" in result.output
    assert snapshot(pair.a) == before


def test_missing_instance_credentials_are_a_clear_error_and_change_nothing(pair):
    pair.imds["bk-a"].deny()
    try:
        before = snapshot(pair.a)
        result = pair.deploy(pair.a)
        assert result.returncode != 0
        assert "pgBackRest cannot read the repository s3://pgv-lab-backups/db-a" in result.output
        assert snapshot(pair.a) == before
    finally:
        pair.imds["bk-a"].allow()


def test_a_backup_killed_mid_run_is_followed_by_one_that_succeeds(pair):
    a = pair.a
    # Enough data that a full backup takes a few seconds.
    a.psql("CREATE TABLE IF NOT EXISTS filler AS SELECT i, md5(i::text) || repeat('x', 400) AS pad FROM generate_series(1, 300000) i")
    count = len(info(a)["backup"])
    pid = a.sudo("setsid sh -c 'exec /usr/local/lib/pgvector-deploy/pgvector-backup full' >/dev/null 2>&1 & echo $!").strip()
    deadline = time.monotonic() + 60
    while "backup" not in a.sudo("pgrep -a -s " + pid + " pgbackrest || true"):
        assert time.monotonic() < deadline, "the backup never started"
        time.sleep(0.2)
    time.sleep(2)
    a.sudo(f"/bin/kill -s KILL -- -{pid}")  # the whole session: the script, runuser, pgBackRest and its workers (dash's kill has no --)
    assert len(info(a)["backup"]) == count  # nothing half-done counts as a backup
    result = a.sudo("/usr/local/lib/pgvector-deploy/pgvector-backup full; echo rc=$?")
    assert result.strip().endswith("rc=0"), result
    assert len(info(a)["backup"]) == count + 1


def test_a_restore_killed_halfway_then_rerun_finishes_and_loses_nothing(pair, moment):
    """deploy/restore.py on B, its whole remote command (the script, runuser, pgBackRest) killed
    with SIGKILL while pgBackRest writes the copy: PostgreSQL kept running on the data it had
    (the copy is made beside it, in <data dir>.restoring-<time>), no kept directory is lost; the rerun
    deletes the partial copy, restores to the end (1,500 rows and A's 300,000-row filler table,
    backed up by the test above) and keeps the previous directory aside."""
    import threading

    b = pair.b
    kept = set(b.sudo("ls -d /var/lib/postgresql/15/main.before-restore-*").split())
    assert rows(b) == 1500 and b.psql("SELECT to_regclass('public.filler') IS NULL") == "t"
    killed = {}

    def kill_mid_restore():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            # By process name, not by a command-line pattern (which this probe's own sh would match).
            pid = b.sudo(
                "for p in $(pgrep -x pgbackrest); do grep -qa main.restoring /proc/$p/cmdline && echo $p; done | head -n1; true"
            ).strip()
            size = b.sudo("du -smc /var/lib/postgresql/15/main.restoring-* 2>/dev/null | tail -n1 | cut -f1 || true").strip()
            if pid and size.isdigit() and int(size) >= 20:
                killed["size_mb"] = int(size)
                # The session of the remote command: the script, its subshells, runuser, pgBackRest.
                b.sudo(f"sid=$(ps -o sid= -p {pid} | tr -d ' '); [ -n \"$sid\" ] && pkill -KILL -s \"$sid\"")
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=kill_mid_restore)
    watcher.start()
    result = pair.deploy(b, recipe="deploy/restore.py", restore_over_existing=True)
    watcher.join()
    assert killed, "pgBackRest was never seen writing the copy"
    assert result.returncode != 0
    assert rows(b) == 1500  # PostgreSQL kept running on its data
    assert set(b.sudo("ls -d /var/lib/postgresql/15/main.before-restore-*").split()) == kept
    assert b.sudo("ls -d /var/lib/postgresql/15/main.restoring-* 2>/dev/null | wc -l").strip() == "1"  # the partial copy
    again = pair.deploy(b, recipe="deploy/restore.py", restore_over_existing=True)
    assert again.returncode == 0, again.output
    assert rows(b) == 1500 and b.psql("SELECT count(*) FROM filler") == "300000"
    after = set(b.sudo("ls -d /var/lib/postgresql/15/main.before-restore-*").split())
    assert after > kept and len(after - kept) == 1  # the previous directory, kept aside
    assert b.sudo("ls -d /var/lib/postgresql/15/main.restoring-* 2>/dev/null | wc -l").strip() == "0"


def test_the_restore_drill_passes_and_reports(pair, moment):
    a = pair.a
    started = a.psql("SELECT pg_postmaster_start_time()")
    out = a.sudo("/usr/local/lib/pgvector-deploy/pgvector-restore-drill; echo rc=$?")
    assert out.strip().endswith("rc=0"), out
    report = json.loads(a.sudo("cat /var/lib/pgvector-deploy/drill/last.json"))
    assert report["result"] == "pass", report
    app = next(db for db in report["databases"] if db["database"] == "app")
    assert {"table": "public.items", "rows": 1500} in app["tables"]
    assert app["hnsw_indexes"] == [{"index": "items_hnsw", "table": "public.items", "rows_returned": 5}]
    assert app["btree_indexes_checked"] >= 1 and report["recovery_point"]
    assert a.sudo("ls /var/lib/pgvector-deploy/drill").split() == ["last-good.json", "last.json"]  # scratch removed
    assert a.psql("SELECT pg_postmaster_start_time()") == started  # production untouched
    assert "pgvector_restore_drill_success 1" in a.sudo("cat /var/lib/prometheus/node-exporter/pgvector_drill.prom")


def test_a_corrupted_backup_makes_the_drill_fail_loudly(pair):
    a = pair.a
    latest = info(a)["backup"][-1]["label"]
    client = pair.s3.client()
    files = [key for key in pair.s3.keys(BUCKET, f"db-a/backup/pgvector/{latest}/") if "/pg_data/" in key or "/bundle/" in key]
    assert files
    for key in files:
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        client.put_object(Bucket=BUCKET, Key=key, Body=bytes(b ^ 0x5A for b in body))
    out = a.sudo("/usr/local/lib/pgvector-deploy/pgvector-restore-drill; echo rc=$?")
    assert out.strip().endswith("rc=1"), out
    report = json.loads(a.sudo("cat /var/lib/pgvector-deploy/drill/last.json"))
    assert report["result"] == "fail" and "pgBackRest could not restore" in report["error"], report
    assert "pgvector_restore_drill_success 0" in a.sudo("cat /var/lib/prometheus/node-exporter/pgvector_drill.prom")
    assert json.loads(a.sudo("cat /var/lib/pgvector-deploy/drill/last-good.json"))["result"] == "pass"
    assert re.search(r"^scratch", a.sudo("ls /var/lib/pgvector-deploy/drill"), re.M) is None


def test_a_bucket_unset_again_removes_our_jobs_and_scripts_keeps_the_config_aside_and_the_backups(pair):
    """pg_backup_s3_bucket unset: the timers, scripts, settings and monitoring files of ours go,
    archiving is turned off (its restart allowed, as by default), pgbackrest.conf is kept aside
    as a copy, nothing in S3 is deleted; a second run changes nothing."""
    a = pair.a
    keys = pair.s3.keys(BUCKET, "db-a/")
    result = pair.deploy(a, pg_backup_s3_bucket=None)
    assert result.returncode == 0, result.output
    assert a.psql("SHOW archive_mode") == "off"
    assert a.sudo("systemctl list-unit-files 'pgvector-backup*' 'pgvector-restore*' --no-legend | wc -l").strip() == "0"
    left = a.sudo(
        "ls -d /usr/local/lib/pgvector-deploy/pgvector-* /etc/pgvector-deploy/backup.env /etc/systemd/system/pgvector-* "
        "/etc/cron.d/pgvector-deploy-backups /etc/pgbackrest/pgbackrest.conf /var/lib/prometheus/node-exporter/*.prom "
        "/etc/postgresql/15/main/conf.d/70-pgvector-backups.conf 2>/dev/null || true"
    )
    assert left.split() == [], left
    kept = a.sudo("ls /var/lib/pgvector-deploy/backups/etc/pgbackrest/").split()
    assert kept and all(name.startswith("pgbackrest.conf.bak-") for name in kept)
    copy = f"/var/lib/pgvector-deploy/backups/etc/pgbackrest/{sorted(kept)[-1]}"
    assert a.sudo(f"stat -c %a:%U {copy}").strip() == "600:postgres"
    assert "repo1-s3-bucket=pgv-lab-backups" in a.sudo(f"cat {copy}")
    assert set(pair.s3.keys(BUCKET, "db-a/")) >= set(keys)  # every backup and WAL segment is still in S3
    again = pair.deploy(a, pg_backup_s3_bucket=None)
    assert again.returncode == 0, again.output
    assert again.changed(a.name) == []
