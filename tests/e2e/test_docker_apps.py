"""Apps in Docker containers reach the database, and nobody else does.

The host has a simulated Docker network (tests/hosts/lab.py): bridge docker0 172.17.0.1/16
with an "app container" namespace at 172.17.0.2, a Compose-like bridge br-0a1b2c3d4e5f on
172.18.0.0/16 with a second app, and a bridge that is not Docker's (lab-other,
192.168.77.0/24) with a stranger on it. Clients connect with psycopg from inside those
namespaces, exactly as a containerised app does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager

import pytest

from tests.hosts.lab import GATEWAY, NET, SUBNET
from tests.hosts.tarballs import DEFAULT_VERSION

APP = {"pg_app_user": "app", "pg_app_password_env": "PGV_TEST_APP_PASSWORD", "pg_app_createdb": True}
PASSWORD = "c0rrect-Horse:battery$staple"
ENV = {"PGV_TEST_APP_PASSWORD": PASSWORD}
VECTOR_QUERY = "SELECT '[1,2,3]'::vector <-> '[4,6,3]'::vector"
COMPOSE_BRIDGE = "br-0a1b2c3d4e5f"


def dsn(address: str, password: str = PASSWORD, database: str = "app") -> str:
    return f"host={address} port=5432 user=app dbname={database} password='{password}'"


@pytest.fixture(scope="module")
def served(hosts, tarball, tmp_path_factory):
    from tests.e2e.conftest import run_deploy

    host = hosts.boot("apps")
    host.add_bridge("docker0", "172.17.0.1/16")
    host.add_bridge(COMPOSE_BRIDGE, "172.18.0.1/16")
    host.add_bridge("lab-other", "192.168.77.1/24")
    containers = {
        "docker0": host.add_container("app", "docker0", "172.17.0.2/16"),
        "compose": host.add_container("cmp", COMPOSE_BRIDGE, "172.18.0.2/16"),
        "stranger": host.add_container("str", "lab-other", "192.168.77.2/24"),
    }
    run = run_deploy(tmp_path_factory.mktemp("deploy"), [host.inventory_entry(**tarball, **APP)], env=ENV)
    return host, run, containers


def test_deploy_succeeds_and_the_smoke_suite_passes(served):
    host, run, _ = served
    assert run.returncode == 0, run.output
    assert f"Vector smoke suite, pgvector {DEFAULT_VERSION}: 10 passed, 0 failed, 0 skipped" in run.output


def test_app_on_docker0_connects_with_its_password_and_queries_vectors(served):
    _, _, containers = served
    result = containers["docker0"].query(dsn("172.17.0.1"), VECTOR_QUERY)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5.0"


def test_app_on_a_compose_bridge_connects_at_the_docker0_gateway(served):
    """What Docker's host-gateway gives a container on any bridge: docker0's address. Its
    packets come from its own subnet, which pg_hba admits."""
    _, _, containers = served
    result = containers["compose"].query(dsn("172.17.0.1"), VECTOR_QUERY)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5.0"


def test_wrong_password_is_refused(served):
    _, _, containers = served
    result = containers["docker0"].query(dsn("172.17.0.1", password="not-it"), "SELECT 1")
    assert result.returncode != 0
    assert 'password authentication failed for user "app"' in result.stderr


def test_client_on_a_subnet_nobody_allowed_is_refused(served):
    _, _, containers = served
    result = containers["stranger"].query(dsn("172.17.0.1"), "SELECT 1")
    assert result.returncode != 0
    assert 'no pg_hba.conf entry for host "192.168.77.2"' in result.stderr


def test_server_does_not_listen_on_the_hosts_other_interfaces(served):
    host, _, _ = served
    listening = host.sudo("ss -Hltn 'sport = :5432'").split()
    addresses = sorted({word.rsplit(":", 1)[0] for word in listening if word.endswith(":5432")})
    assert addresses == ["127.0.0.1", "172.17.0.1", "[::1]"]  # Compose bridges get pg_hba rules, not listeners
    import psycopg

    with pytest.raises(psycopg.OperationalError, match="Connection refused"):
        psycopg.connect(dsn(host.address), connect_timeout=5)


def test_every_tcp_rule_uses_scram_and_local_superuser_stays_peer(served):
    host, _, _ = served
    rules = host.psql("SELECT type || ' ' || array_to_string(user_name, ',') || ' ' || auth_method FROM pg_hba_file_rules")
    lines = rules.splitlines()
    assert "local postgres peer" in lines
    tcp = [line for line in lines if line.startswith("host")]
    assert tcp and all(line.endswith("scram-sha-256") for line in tcp), tcp
    assert host.psql("SHOW password_encryption") == "scram-sha-256"


def test_shadow_databases_made_by_the_app_have_vector(served):
    """What Prisma migrate dev does: create a shadow database as the app role, use it, drop it."""
    _, _, containers = served
    app = containers["docker0"]
    code = (
        "import sys, psycopg\n"
        "with psycopg.connect(sys.argv[1], autocommit=True) as c:\n"
        "    c.execute('CREATE DATABASE prisma_shadow_check')\n"
        "with psycopg.connect(sys.argv[1].replace('dbname=app', 'dbname=prisma_shadow_check')) as c:\n"
        "    print(c.execute(\"SELECT extversion FROM pg_extension WHERE extname = 'vector'\").fetchone()[0])\n"
        "with psycopg.connect(sys.argv[1], autocommit=True) as c:\n"
        "    c.execute('DROP DATABASE prisma_shadow_check')\n"
    )
    import sys

    result = app.run(sys.executable, "-c", code, dsn("172.17.0.1"), check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == DEFAULT_VERSION


def test_rerun_changes_nothing(served, tarball, provision):
    host, _, _ = served
    run = provision(host, env=ENV, **tarball, **APP)
    assert run.returncode == 0, run.output
    assert run.changed(host.name) == []


class HostWatch:
    """While a ``with`` block runs, from this machine (nothing of it runs on the host): every
    50 ms, the command line and environment of every process in the host's pid namespace;
    every 100 ms, every file in the host's temporary places (its own tmpfs /tmp, /run,
    /dev/shm, and /var/tmp, /root, /home), as the host sees them. ``found`` lists where a
    secret showed up. Bounded: the threads stop when the block ends, or after ``limit`` s."""

    PLACES = ("tmp", "var/tmp", "run", "dev/shm", "root", "home")

    def __init__(self, host, secrets: list[str], limit: float = 900):
        import os
        import threading

        self.init = host.init_pid()
        self.namespace = os.readlink(f"/proc/{self.init}/ns/pid")
        self.root = f"/proc/{self.init}/root"
        self.secrets = [secret.encode() for secret in secrets]
        self.limit = limit
        self.found: set[str] = set()
        self.samples = self.scans = 0
        self.commands: set[bytes] = set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._sample, daemon=True), threading.Thread(target=self._scan, daemon=True)]

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _until_stopped(self, interval: float):
        import time

        deadline = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            yield
            self._stop.wait(interval)

    def _sample(self):
        import os

        for _ in self._until_stopped(0.05):
            for pid in [name for name in os.listdir("/proc") if name.isdigit()]:
                try:
                    if os.readlink(f"/proc/{pid}/ns/pid") != self.namespace:
                        continue
                    with open(f"/proc/{pid}/cmdline", "rb") as stream:
                        command = stream.read()
                    with open(f"/proc/{pid}/environ", "rb") as stream:
                        environment = stream.read()
                except OSError:  # gone meanwhile
                    continue
                self.commands.add(command)
                for secret in self.secrets:
                    if secret in command or secret in environment:
                        self.found.add(f"process {pid}: {command.replace(secret, b'<secret>')!r}")
            self.samples += 1

    def _scan(self):

        for _ in self._until_stopped(0.1):
            for place in self.PLACES:
                for path in files_under(f"{self.root}/{place}"):
                    if self.holds_secret(path):
                        self.found.add("file " + path[len(self.root):])
            self.scans += 1

    def holds_secret(self, path: str, chunk: int = 1 << 20) -> bool:
        """Whether the file's bytes contain a secret (read in chunks that overlap)."""
        overlap = max(len(secret) for secret in self.secrets) - 1
        try:
            with open(path, "rb") as stream:
                tail = b""
                while block := stream.read(chunk):
                    data = tail + block
                    if any(secret in data for secret in self.secrets):
                        return True
                    tail = data[-overlap:]
        except OSError:
            pass
        return False


def files_under(top: str):
    """Every regular file under ``top``, without following symbolic links."""
    import os
    import stat

    for directory, dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(directory, name)
            try:
                if stat.S_ISREG(os.lstat(path).st_mode):
                    yield path
            except OSError:
                continue


@contextmanager
def slow_tcp_logins(host, container):
    """Every TCP login to the host's PostgreSQL waits about a second before authentication
    (log_hostname on, and a resolver that never answers), so whatever a login's secret sits
    in stays there long enough for HostWatch to see it. Undone afterwards."""
    host.sudo("cp -p /etc/resolv.conf /etc/resolv.conf.pgvt-keep 2>/dev/null || touch /etc/resolv.conf.pgvt-keep.none; "
              f"printf 'nameserver {NET}.254.254\noptions timeout:1 attempts:1\n' > /etc/resolv.conf")  # fmt: skip
    host.psql("ALTER SYSTEM SET log_hostname = on")
    host.psql("SELECT pg_reload_conf()")
    try:
        import time

        started = time.monotonic()
        result = container.query(dsn("172.17.0.1"), "SELECT 1")
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started >= 0.9, "TCP logins were not slowed down"
        yield
    finally:
        host.psql("ALTER SYSTEM RESET log_hostname")
        host.psql("SELECT pg_reload_conf()")
        host.sudo("if [ -e /etc/resolv.conf.pgvt-keep.none ]; then rm -f /etc/resolv.conf /etc/resolv.conf.pgvt-keep.none; "
                  "else mv /etc/resolv.conf.pgvt-keep /etc/resolv.conf; fi")  # fmt: skip


def test_the_smoke_script_run_by_hand_reports_what_the_suite_reported(served, tarball, provision, tmp_path):
    """README, "The vector smoke suite": each run keeps its script on the host, root's and
    private; run by hand as the README says (as root, under the host lock), it prints the same
    nine host checks, with the same statuses and details, as the run's JSON report, passing
    and failing alike (a database in the scratch database's name that is not the suite's)."""
    from pgvector_deploy.shell import HOST_LOCK
    from pgvector_deploy.smoke import HOST_CHECKS, SCRATCH_DATABASE, SMOKE_SCRIPT, parse_host_checks

    host, _, _ = served
    reports = tmp_path / "reports"

    def suite_then_by_hand(expect_success: bool):
        run = provision(host, env=ENV, recipe="deploy/smoke.py", **tarball, **APP, smoke_report_dir=str(reports))
        assert (run.returncode == 0) == expect_success, run.output
        report = json.loads((reports / f"smoke-{host.name}.json").read_text())
        printed = host.ssh(f"sudo flock {HOST_LOCK} sh {SMOKE_SCRIPT}")  # the README's command, over SSH
        assert printed.returncode == 0 and printed.stderr == "", printed.stderr
        by_hand = parse_host_checks(printed.stdout.splitlines())
        assert by_hand.app_role == "scram"  # what app_over_tcp, from the control machine, starts from
        reported = [check for check in report["checks"] if check["name"] in HOST_CHECKS]
        assert [vars(result) for result in by_hand.results] == reported
        return report

    report = suite_then_by_hand(expect_success=True)
    assert report["passed"] is True and len(report["checks"]) == 10
    assert host.sudo(f"stat -c '%a %U %G' {SMOKE_SCRIPT}").split() == ["600", "root", "root"]
    kept = host.sudo(f"cat {SMOKE_SCRIPT}")
    assert kept.startswith("#!/bin/sh\n") and PASSWORD not in kept and "STORED_SQL=" in kept

    host.psql(f"CREATE DATABASE {SCRATCH_DATABASE}")  # not the suite's: no comment
    try:
        report = suite_then_by_hand(expect_success=False)
    finally:
        host.psql(f"DROP DATABASE {SCRATCH_DATABASE}")
    statuses = {check["name"]: check["status"] for check in report["checks"]}
    assert statuses["template1_has_vector"] == statuses["create_extension"] == "fail" and statuses["extversion"] == "skip"


def test_the_app_password_never_reaches_the_host_during_deploy_smoke_suite_or_rotation(served, tarball, provision, tmp_path):
    """A deploy, the standalone smoke suite and a password rotation (each with app_over_tcp
    passing: SCRAM, refused without the password), watched by HostWatch; then every file on
    the host, as the host sees it: neither the old nor the new password is anywhere."""
    import json
    import time

    host, _, containers = served
    rotated = "Rotated-Smoke-7b1e$pw"
    reports = tmp_path / "reports"
    data = {**tarball, **APP, "smoke_report_dir": str(reports)}
    timings = {}
    for attempt in (1, 2):  # the standalone suite at full speed, for the README's measurements
        started = time.monotonic()
        plain = provision(host, env=ENV, recipe="deploy/smoke.py", **data)
        timings[f"smoke alone {attempt}"] = round(time.monotonic() - started, 1)
        assert plain.returncode == 0, plain.output
    canary = "Canary-3c9a$like-a-password"
    with slow_tcp_logins(host, containers["docker0"]), HostWatch(host, [PASSWORD, rotated, canary]) as watch:
        # The watch can fail: what the suite used to do (a mktemp file in /tmp for about as
        # long as one slowed login) and a secret in a process's environment are both seen.
        host.sudo('f=$(mktemp); cat > "$f"; env PGPASSWORD="$(cat "$f")" sleep 1; rm -f "$f"', input=canary)
        time.sleep(0.5)
        canaries = sorted(watch.found)
        watch.found.clear()
        runs = {}
        for name, recipe, password in (
            ("deploy", None, PASSWORD),
            ("smoke", "deploy/smoke.py", PASSWORD),
            ("rotation", None, rotated),
        ):
            started = time.monotonic()
            options = {"recipe": recipe} if recipe else {}
            runs[name] = provision(host, "-vvv", env={"PGV_TEST_APP_PASSWORD": password}, **options, **data)
            timings[name] = round(time.monotonic() - started, 1)
            report = json.loads((reports / f"smoke-{host.name}.json").read_text())
            app_check = next(check for check in report["checks"] if check["name"] == "app_over_tcp")
            runs[name].app_check = app_check
    print(f"runs (s): {timings}")
    # The watch really watched: it saw the smoke script's command under the host lock.
    assert watch.samples > 100 and watch.scans > 50, (watch.samples, watch.scans)
    from pgvector_deploy.shell import HOST_LOCK
    from pgvector_deploy.smoke import SMOKE_SCRIPT

    assert any(HOST_LOCK.encode() in command and f"sh {SMOKE_SCRIPT}".encode() in command for command in watch.commands)
    assert any(where.startswith("file /tmp/tmp.") for where in canaries), canaries
    assert any(where.startswith("process ") for where in canaries), canaries
    assert sorted(watch.found) == []
    scanned = 0
    found = []
    for top in [name for name in __import__("os").listdir(watch.root) if name not in ("proc", "sys")]:
        for path in files_under(f"{watch.root}/{top}"):
            scanned += 1
            if watch.holds_secret(path):
                found.append(path[len(watch.root):])
    assert scanned > 10000, scanned
    assert found == []
    for name, run in runs.items():
        assert run.returncode == 0, f"{name}: {run.output}"
        assert PASSWORD not in run.output and rotated not in run.output
        assert run.app_check["status"] == "pass", (name, run.app_check)
        assert "logged in over TCP to 172.17.0.1:5432 with its password (SCRAM; refused without it)" in run.app_check["detail"]
    assert runs["rotation"].changed(host.name) == ["App role exists with its password"]


def test_the_password_appears_nowhere(served, tarball, provision):
    """Not in pyinfra's most verbose output, not in any command line on the host during a run
    that changes the password, not in any file on the host."""
    host, _, _ = served
    new_password = "Rotated-9f2c$pw"
    host.sudo("nohup sh -c 'while :; do ps -eo args; done' > /run/ps-sampler.log 2>&1 & echo $! > /run/ps-sampler.pid")
    try:
        run = provision(host, "-vvv", env={"PGV_TEST_APP_PASSWORD": new_password}, **tarball, **APP)
    finally:
        host.sudo("kill $(cat /run/ps-sampler.pid)")
    assert run.returncode == 0, run.output
    assert run.changed(host.name) == ["App role exists with its password"]
    # The password goes to grep on stdin: on a command line, sudo would log it to the journal.
    sampled = host.sudo("wc -l < /run/ps-sampler.log; grep -c -F -f - /run/ps-sampler.log || true", input=new_password)
    assert int(sampled.split()[0]) > 1000, "the ps sampler did not run"
    assert sampled.split()[1] == "0"
    assert new_password not in run.output
    found = host.sudo("grep -rlsF -f - /etc /var /home /root /tmp /opt /usr/local || true", input=new_password)
    assert found.split() == []
    # and the rotated password is the one that works now
    run = provision(host, env={"PGV_TEST_APP_PASSWORD": new_password}, **tarball, **APP)
    assert run.changed(host.name) == []


def test_password_from_ssm_parameter_store(served, tarball, provision, aws):
    """pg_app_password_ssm: a SecureString read with boto3 (AWS_ENDPOINT_URL -> moto)."""
    import boto3

    host, _, containers = served
    ssm = boto3.client("ssm", endpoint_url=aws["AWS_ENDPOINT_URL"], region_name=aws["AWS_DEFAULT_REGION"],
                       aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    ssm.put_parameter(Name="/apps/app/db-password", Value="from-SSM-7d1e", Type="SecureString", Overwrite=True)
    data = {**tarball, **APP, "pg_app_password_env": None, "pg_app_password_ssm": "/apps/app/db-password"}

    run = provision(host, env=aws, **data)

    assert run.returncode == 0, run.output
    assert run.changed(host.name) == ["App role exists with its password"]
    assert containers["docker0"].query(dsn("172.17.0.1", "from-SSM-7d1e"), VECTOR_QUERY).stdout.strip() == "5.0"
    assert provision(host, env=aws, **data).changed(host.name) == []
    assert provision(host, env=ENV, **tarball, **APP).changed(host.name) == ["App role exists with its password"]


def test_a_broken_user_rule_is_rejected_and_the_server_keeps_running(served, tarball, provision):
    host, _, containers = served
    hba = "/etc/postgresql/15/main/pg_hba.conf"
    good_rule = "hostssl    all    all    10.9.0.0/16    scram-sha-256"  # beyond the host: TLS only
    host.sudo(f"sed -i '/^# END USER RULES/i {good_rule}' {hba}")
    run = provision(host, env=ENV, **tarball, **APP)
    assert run.returncode == 0, run.output
    assert good_rule in host.sudo(f"cat {hba}"), "a user rule was lost"

    host.sudo(f"sed -i '/^# END USER RULES/i host all all 10.8.0.0/33 scram-sha-256' {hba}")
    run = provision(host, env=ENV, **tarball, **APP)
    assert run.returncode != 0
    assert "10.8.0.0/33" in run.output or "invalid IP mask" in run.output, run.output
    assert host.sudo("pg_isready -q -p 5432 && echo up").strip() == "up"
    assert containers["docker0"].query(dsn("172.17.0.1"), VECTOR_QUERY).stdout.strip() == "5.0"

    host.sudo(f"sed -i '/10.8.0.0\\/33/d' {hba}")
    run = provision(host, env=ENV, **tarball, **APP)
    assert run.returncode == 0, run.output
    assert run.changed(host.name) == []


NEW_BRIDGE = "br-5e6f7a8b9c0d"
TUNING_FILE = "/etc/postgresql/15/main/conf.d/80-pgvector-tuning.conf"


def started(host) -> str:
    return host.psql("SELECT pg_postmaster_start_time()")


def set_memory(host, factor: float) -> str:
    """Give the host a MemTotal ``factor`` times its real one, the way LXCFS gives containers
    theirs: a meminfo file bind-mounted over /proc/meminfo (what the host profile reads)."""
    host.sudo(
        "umount /proc/meminfo 2>/dev/null; "
        f"awk '/^MemTotal:/ {{ $2 = int($2 * {factor}) }} {{ print }}' /proc/meminfo > /run/meminfo.lab && "
        "mount --bind /run/meminfo.lab /proc/meminfo"
    )
    return host.sudo("awk '/^MemTotal:/ {print $2}' /proc/meminfo").strip()


def nightly(host, workdir, *args: str, **data) -> tuple[subprocess.CompletedProcess, dict]:
    """``python -m pgvector_deploy.nightly`` against an inventory of ``host``, as cron runs it."""
    from tests.hosts.runner import REPO, write_inventory

    inventory = write_inventory(workdir / "nightly-inventory.py", [host.inventory_entry(**data)])
    reports = workdir / "reports"
    proc = subprocess.run(
        [sys.executable, "-m", "pgvector_deploy.nightly", str(inventory), "--report-dir", str(reports), *args],
        cwd=REPO, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    return proc, json.loads((reports / "nightly-latest.json").read_text())["hosts"][host.name]


def test_memory_noise_and_compose_bridges_coming_and_going_never_restart_postgresql(served, tarball, provision, tmp_path):
    """A kernel update moves MemTotal by a few percent, ``docker compose up/down`` adds and
    removes a bridge: the nightly run follows the bridges in pg_hba.conf (a reload) and
    changes nothing else; PostgreSQL is never restarted."""
    host, _, _ = served
    real = set_memory(host, 1.0)
    before, tuning_file = started(host), host.sudo(f"stat -c %Y:%s {TUNING_FILE}")
    try:
        for factor, bridge_up in ((1.02, True), (0.97, False)):
            assert set_memory(host, factor) != real
            if bridge_up:
                host.add_bridge(NEW_BRIDGE, "172.19.0.1/16")
            else:
                host.remove_bridge(NEW_BRIDGE)
            proc, report = nightly(host, tmp_path, **tarball, **APP)
            assert started(host) == before, f"PostgreSQL was restarted (memory x{factor}, bridge up: {bridge_up}): {report}"
            assert proc.returncode == 2, proc.stdout + proc.stderr  # drift: the bridge's pg_hba rule
            assert report["failed"] == [] and report["restart_pending"] == [], proc.stderr
            assert report["changed"] == ["pg_hba.conf admits the Docker bridges with scram-sha-256"], proc.stderr
            if bridge_up:
                newcomer = host.add_container("new", NEW_BRIDGE, "172.19.0.2/16")
                result = newcomer.query(dsn("172.17.0.1"), VECTOR_QUERY)
                assert result.returncode == 0, result.stderr
        assert host.sudo(f"stat -c %Y:%s {TUNING_FILE}") == tuning_file  # not even rewritten
        hba_copies = host.sudo("ls /var/lib/pgvector-deploy/backups/etc/postgresql/15/main").split()
        assert 2 <= len([name for name in hba_copies if name.startswith("pg_hba.conf.bak-")]) <= 5, hba_copies
        assert ".bak-" not in host.sudo("ls -a /etc/postgresql/15/main /etc/postgresql/15/main/conf.d")
    finally:
        host.sudo("umount /proc/meminfo 2>/dev/null; true")
        host.remove_bridge(NEW_BRIDGE)
    assert provision(host, env=ENV, **tarball, **APP).changed(host.name) == []  # the real memory again: nothing


def test_a_needed_restart_is_only_reported_by_the_nightly_run_and_done_when_allowed(served, tarball, provision, tmp_path):
    """pg_shared_buffers changes: the nightly run (pg_restart = report) writes the file and
    says "restart pending: shared_buffers", PostgreSQL keeps running on the old value; with
    --allow-restart it restarts onto the new one. Copies of the file stay out of conf.d."""
    host, _, _ = served
    before, running = started(host), host.psql("SHOW shared_buffers")
    assert running != "1GB"
    for _ in range(2):  # reported again until someone restarts
        proc, report = nightly(host, tmp_path, **tarball, **APP, pg_shared_buffers="1GB")
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert report["restart_pending"] == ["shared_buffers"] and report["status"] == "drift", proc.stderr
        assert report["changed"] == ["PostgreSQL is sized for this host's memory and CPUs"]
        assert "restart pending: shared_buffers" in proc.stdout
        assert started(host) == before and host.psql("SHOW shared_buffers") == running
    assert "shared_buffers = '1024MB'" in host.sudo(f"cat {TUNING_FILE}")

    proc, report = nightly(host, tmp_path, "--allow-restart", **tarball, **APP, pg_shared_buffers="1GB")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert report["changed"] == ["PostgreSQL is sized for this host's memory and CPUs"]  # the file was right: the restart
    assert report["restart_pending"] == [] and started(host) != before and host.psql("SHOW shared_buffers") == "1GB"
    # nothing piles up next to the files; the copies are kept, at most 5 a file, in the state directory
    assert ".bak-" not in host.sudo("ls -a /etc/postgresql/15/main /etc/postgresql/15/main/conf.d")
    copies = host.sudo("ls /var/lib/pgvector-deploy/backups/etc/postgresql/15/main/conf.d").split()
    tuning_copies = [name for name in copies if name.startswith("80-pgvector-tuning.conf.bak-")]
    assert 1 <= len(tuning_copies) <= 5, copies

    run = provision(host, env=ENV, **tarball, **APP)  # back to auto (pg_restart allowed: a deploy may restart)
    assert run.returncode == 0, run.output
    assert host.psql("SHOW shared_buffers") == running


def test_the_bridge_rules_admit_the_app_role_only(served):
    """A role that is not pg_app_user, with a valid password, is refused from a bridge."""
    host, _, containers = served
    host.psql("CREATE ROLE intruder LOGIN PASSWORD 'intruder-Pw-1'")
    try:
        result = containers["docker0"].query("host=172.17.0.1 port=5432 user=intruder dbname=postgres password=intruder-Pw-1", "SELECT 1")
    finally:
        host.psql("DROP ROLE intruder")
    assert result.returncode != 0
    assert 'no pg_hba.conf entry for host "172.17.0.2", user "intruder"' in result.stderr, result.stderr
    assert containers["docker0"].query(dsn("172.17.0.1"), VECTOR_QUERY).stdout.strip() == "5.0"


HBA = "/etc/postgresql/15/main/pg_hba.conf"
SELF_SIGNED_KEY = "/etc/postgresql/15/main/pgvector-deploy-server.key"


def vpc_data(host, tarball) -> dict:
    return {**tarball, **APP, "pg_listen_addresses": [host.address]}


def test_a_client_beyond_the_host_gets_in_only_over_tls(served, tarball, provision):
    """pg_listen_addresses opens the host's lab address, its "VPC" address; the control
    machine (the lab bridge's gateway) is the VPC client, admitted by a hostssl USER
    RULE. ssl is turned off in postgresql.conf first, as the RHEL family and Amazon Linux
    ship it (Debian ships ssl = on with the snakeoil certificate)."""
    import psycopg

    host, _, _ = served
    host.sudo("sed -i -e 's/^ssl = on/ssl = off/' /etc/postgresql/15/main/postgresql.conf")
    host.sudo(f"sed -i '/^# END USER RULES/i hostssl app app {SUBNET} scram-sha-256' {HBA}")

    run = provision(host, env=ENV, **vpc_data(host, tarball))

    assert run.returncode == 0, run.output
    assert f"Clients beyond this host connect with postgresql://app:<password>@{host.address}:5432/app?sslmode=require" in run.output
    with pytest.raises(psycopg.OperationalError, match=f'no pg_hba.conf entry for host "{GATEWAY}".*no encryption'):
        psycopg.connect(dsn(host.address) + " sslmode=disable", connect_timeout=5)
    with psycopg.connect(dsn(host.address) + " sslmode=require", connect_timeout=5) as conn:
        assert conn.execute(VECTOR_QUERY).fetchone()[0] == 5.0
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0] is True
    assert host.psql("SHOW ssl") == "on"
    assert host.psql("SHOW ssl_key_file") == SELF_SIGNED_KEY
    assert host.sudo(f"stat -c '%U:%G %a' {SELF_SIGNED_KEY}").strip() == "postgres:postgres 600"
    cert = host.psql("SHOW ssl_cert_file")
    assert f"IP Address:{host.address}" in host.sudo(f"openssl x509 -in {cert} -noout -ext subjectAltName")
    made = host.sudo(f"sha256sum {cert} {SELF_SIGNED_KEY}")

    again = provision(host, env=ENV, **vpc_data(host, tarball))

    assert again.returncode == 0, again.output
    assert again.changed(host.name) == []
    assert host.sudo(f"sha256sum {cert} {SELF_SIGNED_KEY}") == made  # made once, kept


def test_a_plain_host_rule_for_clients_beyond_the_host_is_refused(served, tarball, provision):
    import psycopg

    host, _, _ = served
    rule = f"host app app {SUBNET} scram-sha-256"
    host.sudo(f"sed -i '/^# END USER RULES/i {rule}' {HBA}")
    written = host.sudo(f"cat {HBA}")
    try:
        run = provision(host, env=ENV, **vpc_data(host, tarball))
        assert run.returncode != 0
        assert f"without TLS: {rule}. Nothing was changed. Fix: write them as hostssl" in run.output, run.output
        assert host.sudo(f"cat {HBA}") == written  # not applied
        with pytest.raises(psycopg.OperationalError, match="no encryption"):
            psycopg.connect(dsn(host.address) + " sslmode=disable", connect_timeout=5)
    finally:
        host.sudo(f"sed -i '\\#^{rule}$#d' {HBA}")
    assert provision(host, env=ENV, **vpc_data(host, tarball)).changed(host.name) == []


def test_after_a_reboot_with_docker0_up_late_the_app_gets_in(served):
    """docker0 is gone when PostgreSQL starts at boot, and appears afterwards (as when dockerd
    starts later): the gateway address was bound anyway (net.ipv4.ip_nonlocal_bind)."""
    host, _, _ = served
    host.shutdown()
    host.remove_bridge("docker0")
    host.boot()
    host.wait_until("systemctl is-active --quiet postgresql@15-main")
    assert "172.17.0.1:5432" in host.sudo("ss -Hltn 'sport = :5432'")
    host.add_bridge("docker0", "172.17.0.1/16")
    late = host.add_container("late", "docker0", "172.17.0.3/16")
    result = late.query(dsn("172.17.0.1"), VECTOR_QUERY)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5.0"


# --- a hostile app: it owns its databases and tries to become superuser ---------------------

HOSTILE_DATABASES = ("app", "dbname=postgres", "it's a dé b")
FAKE_VERSION = "9.9.9"
# As the app role: a function that makes the app superuser when a superuser runs it (and
# answers fake extension rows either way), public.pg_extension calling it, and the database's
# search_path set so that an unqualified pg_extension is that view.
TRAPS = f"""
CREATE OR REPLACE FUNCTION public.escalate() RETURNS TABLE (extname name, extversion text)
LANGUAGE plpgsql AS $f$
BEGIN
  BEGIN EXECUTE 'ALTER ROLE app SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
  RETURN QUERY SELECT 'vector'::name, '{FAKE_VERSION}'::text;
END $f$;
CREATE OR REPLACE VIEW public.pg_extension AS SELECT * FROM public.escalate();
"""
LEDGER_TRAP = """
CREATE OR REPLACE FUNCTION public.ledger_rows() RETURNS TABLE (name text, sha256 text, applied_at timestamptz)
LANGUAGE plpgsql AS $f$
BEGIN
  BEGIN EXECUTE 'ALTER ROLE app SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
  RETURN QUERY SELECT s.name, s.sha256, s.applied_at FROM public.ledger_copy s;
END $f$;
CREATE TABLE public.ledger_copy AS SELECT * FROM pgvector_deploy.schema_migrations;
DROP TABLE pgvector_deploy.schema_migrations;
CREATE VIEW pgvector_deploy.schema_migrations AS SELECT * FROM public.ledger_rows();
"""
PLANT = """
import sys, psycopg
from psycopg import sql
dsn, traps, ledger_trap = sys.argv[1], sys.argv[2], sys.argv[3]
with psycopg.connect(dsn + " dbname=app", autocommit=True) as conn:
    for name in sys.argv[4:]:
        if name != "app":
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
for name in sys.argv[4:]:
    with psycopg.connect(dsn, dbname=name, autocommit=True) as conn:
        conn.execute(traps)
        if name == "app":
            conn.execute(ledger_trap)
        conn.execute(sql.SQL("ALTER DATABASE {} SET search_path = public, pg_catalog").format(sql.Identifier(name)))
    with psycopg.connect(dsn, dbname=name) as conn:  # a new session gets the database's search_path
        print(name, conn.execute("SELECT extversion FROM pg_extension").fetchone()[0])
"""


def app_is_superuser(host) -> str:
    return host.psql("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = 'app'")


def real_extversions(host) -> dict[str, str]:
    """extversion in every database, read with everything qualified (the traps stay shut)."""
    import json

    code = (
        "SELECT pg_catalog.json_agg(datname) FROM pg_catalog.pg_database WHERE datallowconn"
    )
    found = {}
    for name in json.loads(host.psql(code)):
        conninfo = "dbname='" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"
        found[name] = host.psql("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'vector'", conninfo)
    return found


def test_the_app_role_never_becomes_superuser_through_planted_objects(served, tarball, provision, tmp_path):
    """The app, over TCP from its container, plants a pg_extension view whose function runs
    ALTER ROLE app SUPERUSER, sets its databases' search_path to find it, replaces the
    migrations ledger with such a view, and makes databases named like connection strings.
    Deploying, the smoke suite and the nightly run leave it a plain role, and the toolkit acts
    on the real extension versions. (The same trap during a real upgrade, ALTER EXTENSION
    UPDATE run as superuser in such a database: test_rebuild.py.)"""
    import json
    import os
    import subprocess
    import sys

    from tests.hosts.runner import REPO, write_inventory

    host, _, _ = served
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_items.sql").write_text("CREATE TABLE items (id int);\n")
    run = provision(host, env=ENV, pg_migrations_dir=str(migrations), **tarball, **APP)
    assert run.returncode == 0, run.output

    hostile = host.add_container("hostile", "docker0", "172.17.0.4/16")
    planted = hostile.run(sys.executable, "-c", PLANT, "host=172.17.0.1 port=5432 user=app password='" + PASSWORD + "'",
                          TRAPS, LEDGER_TRAP, *HOSTILE_DATABASES, check=False)  # fmt: skip
    assert planted.returncode == 0, planted.stderr
    assert planted.stdout.splitlines() == [f"{name} {FAKE_VERSION}" for name in HOSTILE_DATABASES]  # its own view
    assert app_is_superuser(host) == "f"

    # With the migrations: the replaced ledger is refused unread, nothing applied.
    run = provision(host, env=ENV, pg_migrations_dir=str(migrations), **tarball, **APP)
    assert app_is_superuser(host) == "f", run.output
    assert run.returncode != 0 and "is not the plain table pgvector-deploy made (relkind v)" in run.output, run.output

    run = provision(host, env=ENV, **tarball, **APP)
    assert app_is_superuser(host) == "f", run.output
    assert run.returncode == 0, run.output
    assert FAKE_VERSION not in run.output
    assert run.changed(host.name) == []

    run = provision(host, env=ENV, recipe="deploy/smoke.py", **tarball, **APP)
    assert app_is_superuser(host) == "f", run.output
    assert run.returncode == 0, run.output

    versions = real_extversions(host)
    assert {name: versions.get(name) for name in HOSTILE_DATABASES} == dict.fromkeys(HOSTILE_DATABASES, DEFAULT_VERSION)
    assert set(versions.values()) == {DEFAULT_VERSION}, versions

    inventory = write_inventory(tmp_path / "nightly.py", [host.inventory_entry(**tarball, **APP)])
    nightly = subprocess.run(
        [sys.executable, "-m", "pgvector_deploy.nightly", str(inventory), "--report-dir", str(tmp_path / "reports")],
        cwd=REPO, capture_output=True, text=True, timeout=1800, env={**os.environ, **ENV},
    )  # fmt: skip
    assert app_is_superuser(host) == "f", nightly.stdout + nightly.stderr
    assert nightly.returncode == 0, nightly.stdout + nightly.stderr
    assert json.loads((tmp_path / "reports" / "nightly-latest.json").read_text())["status"] == "clean"
