"""The nightly wrapper's reading of pyinfra's --json output, exit status and report."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import click
import pytest
from pyinfra.api.output import format_text

from pgvector_deploy import nightly

APPLY = {
    "plan": [],
    "results": {
        "operations": [
            {"name": "pg_hba.conf admits the Docker bridges with scram-sha-256", "success": ["db-2"], "error": [], "no_change": ["db-1"]},
            {"name": "Vector smoke suite", "success": [], "error": ["db-3"], "no_change": ["db-1", "db-2"]},
        ],
        "failed_hosts": ["db-4"],
    },
}
DRY = {
    "plan": [
        {"name": "pg_hba.conf admits the Docker bridges with scram-sha-256", "hosts_with_change": ["db-2"]},
        {"name": "PostgreSQL 15 is running and starts at boot", "hosts_with_change": []},
    ],
    "results": None,  # what pyinfra 3.10 prints with --dry
}


def test_apply_results_are_summarised_per_host():
    hosts = nightly.summarise(APPLY, dry=False)
    assert hosts["db-1"] == {"changed": [], "failed": [], "not_run": [], "messages": [], "status": "clean"}
    assert hosts["db-2"]["changed"] == ["pg_hba.conf admits the Docker bridges with scram-sha-256"]
    assert hosts["db-2"]["status"] == "drift"
    assert hosts["db-3"] == {"changed": [], "failed": ["Vector smoke suite"], "not_run": [], "messages": [], "status": "failed"}
    assert hosts["db-4"] == {"changed": [], "failed": ["(could not connect or prepare)"], "not_run": [], "messages": [], "status": "failed"}


def test_dry_results_list_what_would_change():
    hosts = nightly.summarise(DRY, dry=True)
    assert hosts == {
        "db-2": {"changed": ["pg_hba.conf admits the Docker bridges with scram-sha-256"], "failed": [], "not_run": [], "messages": [], "status": "drift"}
    }


def test_exit_status_failure_wins_over_drift():
    assert nightly.exit_status(nightly.summarise(APPLY, dry=False), 1) == nightly.FAILED
    assert nightly.exit_status(nightly.summarise(DRY, dry=True), 0) == nightly.DRIFT
    assert nightly.exit_status({"db-1": {"changed": [], "failed": []}}, 0) == nightly.CLEAN
    assert nightly.exit_status({"db-1": {"changed": [], "failed": []}}, 1) == nightly.FAILED
    assert nightly.exit_status({"db-1": {"changed": [], "failed": []}}, 0, ["no report"]) == nightly.FAILED


def test_pyinfra_command_uses_dry_without_yes():
    dry = nightly.pyinfra_command("inv.py", True, [])
    assert "--dry" in dry and "-y" not in dry
    apply = nightly.pyinfra_command("inv.py", False, ["--limit", "db-1"])
    assert "-y" in apply and "--dry" not in apply
    assert apply[-2:] == ["--limit", "db-1"] and apply[apply.index("inv.py") + 1] == str(nightly.REPO / "deploy" / "postgres.py")


def test_report_is_written_private_and_as_latest(tmp_path):
    report = {"started": "2026-11-21T03:15:00Z", "status": "clean", "hosts": {}}
    path = nightly.write_report(tmp_path / "reports", report)
    assert path.name == "nightly-2026-11-21T031500Z.json"
    assert json.loads((tmp_path / "reports" / "nightly-latest.json").read_text()) == report
    assert (tmp_path / "reports").stat().st_mode & 0o777 == 0o700


# --- restarts: never by default, and the ones left pending are in the report --------------------


def pyinfra_log_line(host: str, message: str, level: int = logging.WARNING) -> str:
    """A line as pyinfra's log formatter (pyinfra_cli.log, not imported here: it monkey-patches
    ssl through gevent) prints ``logger.warning(host.print_prefix + message)``: indented, the
    host's prefix as Host.print_prefix makes it, warnings in yellow."""
    line = f"    {format_text('')}[{format_text(host, bold=True)}] {message}"
    return click.style(line, "yellow") if level == logging.WARNING else line


def test_nightly_passes_pg_restart_report_unless_allowed():
    command = nightly.pyinfra_command("inv.py", False, ["--limit", "db-1"])
    assert command[command.index("--data") + 1] == "pg_restart=report" and command[-2:] == ["--limit", "db-1"]
    assert nightly.pyinfra_command("inv.py", True, [])[-2:] == ["--data", "pg_restart=report"]
    assert "--data" not in nightly.pyinfra_command("inv.py", False, [], allow_restart=True)


def test_pending_restarts_are_read_from_pyinfra_log_per_host():
    log = "\n".join([
        "--> Starting operation: PostgreSQL is sized for this host's memory and CPUs",
        pyinfra_log_line("db-1", "restart pending: shared_buffers"),
        pyinfra_log_line("db-1", "restart pending: shared_buffers"),  # pyinfra may run a generator twice
        pyinfra_log_line("db-2", "restart pending: listen_addresses, shared_buffers"),
        "    [db-3] restart pending: listen_addresses",  # without colours
        pyinfra_log_line("db-4", "restarting PostgreSQL for: shared_buffers", logging.INFO),
    ])  # fmt: skip
    assert nightly.pending_restarts(log) == {
        "db-1": ["shared_buffers"],
        "db-2": ["listen_addresses", "shared_buffers"],
        "db-3": ["listen_addresses"],
    }


def test_pending_restarts_go_in_the_report_and_count_as_drift():
    hosts = nightly.summarise(APPLY, dry=False)
    nightly.note_pending_restarts(hosts, pyinfra_log_line("db-1", "restart pending: shared_buffers"))
    assert hosts["db-1"] == {"changed": [], "failed": [], "not_run": [], "messages": [], "status": "drift", "restart_pending": ["shared_buffers"]}
    assert hosts["db-2"]["restart_pending"] == [] and hosts["db-2"]["status"] == "drift"
    assert hosts["db-3"]["status"] == "failed"  # failure still wins
    assert nightly.exit_status({"db-1": hosts["db-1"]}, 0) == nightly.DRIFT


def test_main_writes_the_pending_restarts_into_the_report(tmp_path, monkeypatch, capsys):
    """main() with pyinfra's run replaced by its recorded output: the report and the summary line."""
    results = {"plan": [], "results": {"operations": [
        {"name": "PostgreSQL is sized for this host's memory and CPUs", "success": ["db-1"], "error": [], "no_change": []},
    ], "failed_hosts": []}}  # fmt: skip
    stderr = pyinfra_log_line("db-1", "restart pending: shared_buffers") + "\n"
    seen = []

    def fake_run(command, **kwargs):
        seen.append(command)
        return subprocess.CompletedProcess(command, 0, json.dumps(results), stderr)

    monkeypatch.setattr(nightly.subprocess, "run", fake_run)
    status = nightly.main(["inv.py", "--report-dir", str(tmp_path)])
    assert status == nightly.DRIFT and "pg_restart=report" in seen[0]
    report = json.loads((tmp_path / "nightly-latest.json").read_text())
    assert report["hosts"]["db-1"]["restart_pending"] == ["shared_buffers"]
    assert "restart pending: shared_buffers" in capsys.readouterr().out


# --- the truth about failures, also with --dry ----------------------------------------------------

REFUSED_DRY = {
    "plan": [
        {"name": "Refuse this host (nothing changed)", "hosts_with_change": ["db-3"]},
        {"name": "pg_hba.conf admits the Docker bridges with scram-sha-256", "hosts_with_change": ["db-2"]},
    ],
    "results": None,
}
LOG = (
    "--> Preparing operations...\n"
    "    [db-3] pgvector-deploy failed: REFUSED, nothing was changed on this host: port 5432 is taken by nginx. Fix: stop it.\n"
    "    \x1b[1m[db-5]\x1b[0m \x1b[31mpgvector-deploy failed: unexpected KeyError while client access: 'x'. Fix: ...\x1b[0m\n"
    "    [db-2] Ready: deploy/postgres.py\n"
)


def test_a_refused_host_is_failed_under_dry_with_its_message():
    assert nightly.REFUSAL == "Refuse this host (nothing changed)"
    hosts = nightly.summarise(REFUSED_DRY, dry=True, log=LOG)
    assert hosts["db-3"]["status"] == "failed"
    assert hosts["db-3"]["failed"] == ["Refuse this host (nothing changed)"]
    assert hosts["db-3"]["messages"] == ["REFUSED, nothing was changed on this host: port 5432 is taken by nginx. Fix: stop it."]
    assert hosts["db-5"]["status"] == "failed" and hosts["db-5"]["messages"][0].startswith("unexpected KeyError")
    assert hosts["db-2"]["status"] == "drift"
    assert nightly.exit_status(hosts, 0) == nightly.FAILED  # pyinfra --dry itself exits 0 here


def test_dry_results_with_null_failed_hosts_are_read():
    assert nightly.summarise({"plan": [], "results": {"failed_hosts": None}}, dry=True) == {}


class _Pyinfra:
    """Stands in for subprocess.run: records how pyinfra was started, prints ``stdout``."""

    def __init__(self, stdout: str, returncode: int = 0, stderr: str = ""):
        self.stdout, self.returncode, self.stderr = stdout, returncode, stderr
        self.calls: list[tuple[list, dict]] = []

    def __call__(self, command, **kwargs):
        self.calls.append((command, kwargs))
        return subprocess.CompletedProcess(command, self.returncode, self.stdout, self.stderr)


@pytest.mark.parametrize("stdout", ["", "not json", "[]", '{"plan": []}', "--> Loading config...\n"])
def test_empty_or_unreadable_pyinfra_output_is_a_failure_never_clean(stdout, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(nightly.subprocess, "run", _Pyinfra(stdout))
    status = nightly.main(["inv.py", "--report-dir", str(tmp_path)])
    report = json.loads((tmp_path / "nightly-latest.json").read_text())
    assert status == nightly.FAILED and report["status"] == "failed"
    assert report["problems"][0].startswith("pyinfra printed no readable --json report (exit status 0)")
    assert "pyinfra printed no readable --json report" in capsys.readouterr().out


def test_dry_run_with_a_refusal_exits_1(tmp_path, monkeypatch):
    monkeypatch.setattr(nightly.subprocess, "run", _Pyinfra(json.dumps(REFUSED_DRY), stderr=LOG))
    assert nightly.main(["inv.py", "--dry", "--report-dir", str(tmp_path)]) == nightly.FAILED
    report = json.loads((tmp_path / "nightly-latest.json").read_text())
    assert report["status"] == "failed" and report["hosts"]["db-3"]["status"] == "failed"


def test_pyinfra_runs_where_the_command_was_started_with_this_checkout_first(tmp_path, monkeypatch):
    pyinfra = _Pyinfra(json.dumps(DRY))
    monkeypatch.setattr(nightly.subprocess, "run", pyinfra)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    nightly.main(["inv.py", "--dry"])
    [(command, kwargs)] = pyinfra.calls
    assert kwargs["cwd"] == str(tmp_path)  # relative host data paths start here, as with pyinfra itself
    assert command[command.index(str(tmp_path / "inv.py")) + 1] == str(nightly.REPO / "deploy" / "postgres.py")
    assert kwargs["env"]["PYTHONPATH"].split(os.pathsep) == [str(nightly.REPO), "/elsewhere"]
    assert (tmp_path / "reports" / "nightly-latest.json").exists()  # --report-dir's default starts here too


def test_pyinfra_options_after_a_double_dash_pass_through_wherever_our_options_stand(tmp_path, monkeypatch):
    pyinfra = _Pyinfra(json.dumps(DRY))
    monkeypatch.setattr(nightly.subprocess, "run", pyinfra)
    nightly.main(["inv.py", "--report-dir", str(tmp_path), "--", "--sudo", "--limit", "db-1"])
    [(command, _)] = pyinfra.calls
    assert command[-3:] == ["--sudo", "--limit", "db-1"]


# --- a failed host: the operation that failed, and the ones after it that never ran ---------------

# What pyinfra 3.10 prints with --json when db-2's migrations fail: every later operation lists
# db-2 under "error" too (it never ran them, and no outcome is no success).
FAILED_MIDWAY = {
    "plan": [],
    "results": {
        "operations": [
            {"name": "App role exists with its password", "success": ["db-2"], "error": [], "no_change": ["db-1"]},
            {"name": "App database exists, owned by the app, with vector", "success": [], "error": [], "no_change": ["db-1", "db-2"]},
            {"name": "App SQL migrations are applied", "success": [], "error": ["db-2"], "no_change": ["db-1"]},
            {"name": "App connection details for containers are current", "success": [], "error": ["db-2"], "no_change": ["db-1"]},
            {"name": "Vector smoke suite", "success": [], "error": ["db-2"], "no_change": ["db-1"]},
        ],
        "failed_hosts": ["db-2"],
    },
}


def test_a_failed_host_has_one_failed_operation_and_the_later_ones_not_run():
    hosts = nightly.summarise(FAILED_MIDWAY, dry=False)
    assert hosts["db-2"]["failed"] == ["App SQL migrations are applied"]
    assert hosts["db-2"]["not_run"] == ["App connection details for containers are current", "Vector smoke suite"]
    assert hosts["db-2"]["changed"] == ["App role exists with its password"] and hosts["db-2"]["status"] == "failed"
    assert hosts["db-1"]["not_run"] == [] and hosts["db-1"]["status"] == "clean"


def test_the_summary_says_not_run_for_the_operations_after_the_failure(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(nightly.subprocess, "run", _Pyinfra(json.dumps(FAILED_MIDWAY), returncode=1))
    assert nightly.main(["inv.py", "--report-dir", str(tmp_path)]) == nightly.FAILED
    out = capsys.readouterr().out
    assert "FAILED: App SQL migrations are applied" in out
    assert "FAILED: Vector smoke suite" not in out and "not run: Vector smoke suite" in out
    report = json.loads((tmp_path / "nightly-latest.json").read_text())
    assert report["hosts"]["db-2"]["not_run"] == ["App connection details for containers are current", "Vector smoke suite"]


# --- the latest report: written whole or not at all; a run that never finished says so -------------

WRITE_WITH_A_SMALL_FILE_SIZE_LIMIT = """
import json, resource, signal, sys
from pathlib import Path
from pgvector_deploy import nightly
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write beyond the limit fails (EFBIG), as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))
report = {"started": "2026-11-22T03:15:00Z", "status": "failed", "hosts": {f"db-{n}": {"failed": ["x" * 50]} for n in range(20)}}
try:
    nightly.write_report(Path(sys.argv[1]), report)
except OSError as error:
    print("write failed:", error)
"""


def test_a_report_that_cannot_be_written_whole_leaves_the_previous_latest_intact(tmp_path):
    reports = tmp_path / "reports"
    previous = {"started": "2026-11-21T03:15:00Z", "status": "clean", "hosts": {}}
    nightly.write_report(reports, previous)
    result = subprocess.run(
        [sys.executable, "-c", WRITE_WITH_A_SMALL_FILE_SIZE_LIMIT, str(reports)], capture_output=True, text=True, check=False
    )
    assert "write failed:" in result.stdout, result.stdout + result.stderr
    assert json.loads((reports / "nightly-latest.json").read_text()) == previous  # not truncated, not half the new one
    assert sorted(path.name for path in reports.iterdir()) == ["nightly-2026-11-21T031500Z.json", "nightly-latest.json"]


def test_the_report_replaces_latest_in_one_rename_and_is_private(tmp_path):
    reports = tmp_path / "reports"
    nightly.write_report(reports, {"started": "2026-11-21T03:15:00Z", "status": "clean", "hosts": {}})
    before = (reports / "nightly-latest.json").stat().st_ino
    nightly.write_report(reports, {"started": "2026-11-22T03:15:00Z", "status": "drift", "hosts": {}})
    latest = reports / "nightly-latest.json"
    assert latest.stat().st_ino != before  # a new file renamed over the old one, never rewritten in place
    assert json.loads(latest.read_text())["status"] == "drift"
    assert {path.stat().st_mode & 0o777 for path in reports.iterdir()} == {0o600}


# A nightly run whose pyinfra only waits: the process is stopped or killed while it "runs".
SLOW_PYINFRA = """
import sys, time
from pgvector_deploy import nightly
nightly.subprocess.run = lambda *args, **kwargs: time.sleep(120)
sys.exit(nightly.main(["inv.py", "--report-dir", sys.argv[1]]))
"""


def start_slow_run(reports) -> subprocess.Popen:
    """A nightly run that waits in pyinfra; returns once its start marker is in place."""
    run = subprocess.Popen([sys.executable, "-c", SLOW_PYINFRA, str(reports)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        latest = reports / "nightly-latest.json"
        if latest.exists() and json.loads(latest.read_text())["status"] == "running":
            return run
        assert run.poll() is None, run.communicate()
        time.sleep(0.05)
    run.kill()
    raise AssertionError("the run wrote no start marker")


def status_of(reports) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "pgvector_deploy.nightly", "--status", "--report-dir", str(reports)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    return result.returncode, result.stdout


def test_a_killed_run_leaves_a_report_that_reads_failed_not_the_previous_clean(tmp_path, monkeypatch):
    reports = tmp_path / "reports"
    nightly.write_report(reports, {"started": "2026-11-21T03:15:00Z", "status": "clean", "hosts": {}})
    assert status_of(reports)[0] == nightly.CLEAN
    run = start_slow_run(reports)
    try:
        status, out = status_of(reports)  # while it runs, a reader sees it running
        assert status == nightly.RUNNING and out.startswith("nightly: running since "), out
    finally:
        run.kill()  # SIGKILL: what is left after TimeoutStartSec's SIGTERM, or a power cut
        run.wait()
    latest = json.loads((reports / "nightly-latest.json").read_text())
    assert latest["status"] == "running" and latest["finished"] is None
    status, out = status_of(reports)
    assert status == nightly.FAILED
    assert out.startswith(f"nightly: failed: the run started at {latest['started']} did not finish"), out
    # The next run records the unfinished one as failed in its own report file.
    monkeypatch.setattr(nightly.subprocess, "run", _Pyinfra(json.dumps(DRY)))
    nightly.main(["inv.py", "--dry", "--report-dir", str(reports)])
    unfinished = json.loads((reports / f"nightly-{latest['started'].replace(':', '')}.json").read_text())
    assert unfinished["status"] == "failed" and "did not finish" in unfinished["problems"][0]


def test_a_run_stopped_by_sigterm_writes_a_failed_report(tmp_path):
    reports = tmp_path / "reports"
    nightly.write_report(reports, {"started": "2026-11-21T03:15:00Z", "status": "clean", "hosts": {}})
    run = start_slow_run(reports)
    run.send_signal(signal.SIGTERM)  # what systemd sends first when TimeoutStartSec runs out
    out, err = run.communicate(timeout=30)
    assert run.returncode == nightly.FAILED, out + err
    latest = json.loads((reports / "nightly-latest.json").read_text())
    assert latest["status"] == "failed" and latest["finished"]
    assert latest["problems"][0].startswith("the run was stopped by SIGTERM"), latest["problems"]
    assert status_of(reports)[0] == nightly.FAILED


def test_status_without_any_report_is_failed(tmp_path):
    status, out = status_of(tmp_path / "none")
    assert status == nightly.FAILED and "no nightly report" in out


def test_status_of_a_finished_report_is_its_own(tmp_path):
    reports = tmp_path / "reports"
    nightly.write_report(reports, {"started": "2026-11-21T03:15:00Z", "status": "drift", "hosts": {}, "finished": "2026-11-21T03:20:00Z"})
    assert status_of(reports) == (nightly.DRIFT, "nightly: drift (started 2026-11-21T03:15:00Z)\n")


REAL_PYINFRA_DEPLOY = """
from pyinfra.operations import server
for step in ("one", "two", "three", "four"):
    server.shell(name=f"Step {step}", commands=[f"echo step-{step}"])
"""
REAL_PYINFRA_INVENTORY = """
hosts = [
    ("@fake/db-1", {"fake_delay": 0, "fake_delay_jitter": 0}),
    ("@fake/db-2", {"fake_delay": 0, "fake_delay_jitter": 0, "fake_responses": {"step-two": {"success": False}}}),
]
"""


def test_pyinfra_s_own_json_for_a_host_that_failed_midway_reads_failed_then_not_run(tmp_path):
    """The real pyinfra CLI (its @fake connector: no host is touched), db-2 failing the second
    of four operations: its --json lists db-2 under "error" for the last three; the report says
    the second failed and the two after it were not run."""
    (tmp_path / "deploy.py").write_text(REAL_PYINFRA_DEPLOY)
    (tmp_path / "inventory.py").write_text(REAL_PYINFRA_INVENTORY)
    proc = subprocess.run(
        [sys.executable, "-m", "pyinfra", "inventory.py", "deploy.py", "-y", "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    results = nightly.read_results(proc.stdout)
    assert results is not None, proc.stdout + proc.stderr
    assert [op["error"] for op in results["results"]["operations"]] == [[], ["@fake/db-2"], ["@fake/db-2"], ["@fake/db-2"]]
    hosts = nightly.summarise(results, dry=False)
    assert hosts["@fake/db-2"]["failed"] == ["Step two"]
    assert hosts["@fake/db-2"]["not_run"] == ["Step three", "Step four"]
    assert hosts["@fake/db-1"]["failed"] == [] and hosts["@fake/db-1"]["not_run"] == []


def test_a_killed_run_is_not_hidden_by_an_overlapping_run_that_finished(tmp_path):
    """Overlapping runs are allowed (the run lock is shared): a run A that finishes while a
    later run B is going on replaces nightly-latest.json; B then killed must still read failed."""
    reports = tmp_path / "reports"
    run_b = start_slow_run(reports)
    try:
        nightly.write_report(reports, {"started": "2026-11-21T03:15:00Z", "finished": "2026-11-21T03:40:00Z", "status": "clean", "hosts": {}})
    finally:
        run_b.kill()
        run_b.wait()
    status, out = status_of(reports)
    assert status == nightly.FAILED and "did not finish" in out, out


# --- the backup state of each host, and the run's status for monitoring --------------------------

BACKUP_STATE = {
    "repository": "ok", "backup_count": 2,
    "last": {"label": "20261201-010000F_20261202-010000D", "type": "diff", "at": "2026-12-02T01:02:00Z", "age_seconds": 3600},
    "last_full": {"label": "20261201-010000F", "type": "full", "at": "2026-12-01T01:05:00Z", "age_seconds": 90000},
    "last_diff": {"label": "20261201-010000F_20261202-010000D", "type": "diff", "at": "2026-12-02T01:02:00Z", "age_seconds": 3600},
    "wal_archive": {"status": "failing", "reason": "[039]: HTTP request failed with 403 (Forbidden)", "backlog_files": 7, "lag_seconds": 420},
    "drill": {"result": "pass", "started_at": "2026-11-28T04:00:00Z", "last_good_started_at": "2026-11-28T04:00:00Z"},
}  # fmt: skip


def test_the_backup_state_each_host_logs_goes_into_the_report_and_the_summary(tmp_path, monkeypatch, capsys):
    """backups.report logs one JSON line per host; the nightly run puts it in the host's entry
    (also for a host with nothing else to say) and prints it; no change is counted for it."""
    from pgvector_deploy.backups import BACKUP_STATE_MARK

    results = {"plan": [], "results": {"operations": [
        {"name": "Backup state is reported", "success": [], "error": [], "no_change": ["db-1", "db-2"]},
    ], "failed_hosts": []}}  # fmt: skip
    stderr = pyinfra_log_line("db-1", BACKUP_STATE_MARK + json.dumps(BACKUP_STATE), level=logging.INFO) + "\n"
    stderr += pyinfra_log_line("db-1", "Vector smoke suite, pgvector 0.8.6: 11 passed", level=logging.INFO) + "\n"
    monkeypatch.setattr(nightly.subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(command, 0, json.dumps(results), stderr))
    assert nightly.main(["inv.py", "--report-dir", str(tmp_path)]) == nightly.CLEAN
    report = json.loads((tmp_path / "nightly-latest.json").read_text())
    assert report["hosts"]["db-1"]["backups"] == BACKUP_STATE and report["hosts"]["db-1"]["status"] == "clean"
    assert report["hosts"]["db-2"]["backups"] is None  # no backups there (or the run stopped before)
    out = capsys.readouterr().out
    assert "backups: last full 2026-12-01T01:05:00Z (25h ago); last diff/incr 2026-12-02T01:02:00Z (60min ago)" in out
    assert "WAL archive FAILING: [039]: HTTP request failed with 403 (Forbidden) (7 segments wait, oldest 420s)" in out
    assert "drill pass (2026-11-28T04:00:00Z)" in out


def test_a_backup_state_line_that_is_not_json_is_a_problem_not_a_crash():
    states, problems = nightly.backup_states(pyinfra_log_line("db-1", "backup state: {not json", level=logging.INFO))
    assert states == {} and "db-1" in problems[0] and "not readable" in problems[0]


def prom(path) -> dict[str, float]:
    """node_exporter's textfile format, read as a real Prometheus parser reads it."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return values


def test_the_run_writes_its_status_for_node_exporter_on_the_control_host(tmp_path, monkeypatch):
    """--textfile-dir: pgvector_nightly.prom, "running" from the start, the final status at the
    end, per host too (a host that cannot be reached can say nothing itself)."""
    textfiles = tmp_path / "textfiles"
    seen = {}

    def fake_run(command, **kwargs):
        seen["during"] = prom(textfiles / "pgvector_nightly.prom")
        return subprocess.CompletedProcess(command, 1, json.dumps(APPLY), "")

    monkeypatch.setattr(nightly.subprocess, "run", fake_run)
    assert nightly.main(["inv.py", "--report-dir", str(tmp_path / "r"), "--textfile-dir", str(textfiles)]) == nightly.FAILED
    assert seen["during"]["pgvector_nightly_running"] == 1 and seen["during"]["pgvector_nightly_status"] == nightly.RUNNING
    after = prom(textfiles / "pgvector_nightly.prom")
    assert after["pgvector_nightly_running"] == 0 and after["pgvector_nightly_status"] == nightly.FAILED
    assert after["pgvector_nightly_last_finish_timestamp_seconds"] >= after["pgvector_nightly_last_start_timestamp_seconds"] > 0
    assert after["pgvector_nightly_host_status{host=db-1}"] == nightly.CLEAN
    assert after["pgvector_nightly_host_status{host=db-2}"] == nightly.DRIFT
    assert after["pgvector_nightly_host_status{host=db-4}"] == nightly.FAILED
    assert after["pgvector_nightly_host_changed_operations{host=db-2}"] == 1
    assert oct((textfiles / "pgvector_nightly.prom").stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in textfiles.iterdir()] == ["pgvector_nightly.prom"]  # no temporary file left


def test_host_names_are_escaped_in_the_textfile(tmp_path):
    hosts = {'odd"name\\x': {"changed": [], "failed": [], "status": "clean", "restart_pending": ["shared_buffers"]}}
    nightly.write_textfile(tmp_path, {"status": "clean", "started": "2026-12-01T03:15:00Z", "finished": "2026-12-01T03:16:00Z", "hosts": hosts})
    values = prom(tmp_path / "pgvector_nightly.prom")
    assert values['pgvector_nightly_host_restart_pending{host=odd"name\\x}'] == 1
