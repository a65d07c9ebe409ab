"""The nightly wrapper's reading of pyinfra's --json output, exit status and report."""

from __future__ import annotations

import json

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
    assert hosts["db-1"] == {"changed": [], "failed": [], "status": "clean"}
    assert hosts["db-2"]["changed"] == ["pg_hba.conf admits the Docker bridges with scram-sha-256"]
    assert hosts["db-2"]["status"] == "drift"
    assert hosts["db-3"] == {"changed": [], "failed": ["Vector smoke suite"], "status": "failed"}
    assert hosts["db-4"] == {"changed": [], "failed": ["(could not connect or prepare)"], "status": "failed"}


def test_dry_results_list_what_would_change():
    hosts = nightly.summarise(DRY, dry=True)
    assert hosts == {"db-2": {"changed": ["pg_hba.conf admits the Docker bridges with scram-sha-256"], "failed": [], "status": "drift"}}


def test_exit_status_failure_wins_over_drift():
    assert nightly.exit_status(nightly.summarise(APPLY, dry=False), 1) == nightly.FAILED
    assert nightly.exit_status(nightly.summarise(DRY, dry=True), 0) == nightly.DRIFT
    assert nightly.exit_status({"db-1": {"changed": [], "failed": []}}, 0) == nightly.CLEAN
    assert nightly.exit_status({"db-1": {"changed": [], "failed": []}}, 1) == nightly.FAILED


def test_pyinfra_command_uses_dry_without_yes():
    dry = nightly.pyinfra_command("inv.py", True, [])
    assert "--dry" in dry and "-y" not in dry
    apply = nightly.pyinfra_command("inv.py", False, ["--limit", "db-1"])
    assert "-y" in apply and "--dry" not in apply
    assert apply[-2:] == ["--limit", "db-1"] and apply[apply.index("inv.py") + 1] == "deploy/postgres.py"


def test_report_is_written_private_and_as_latest(tmp_path):
    report = {"started": "2026-11-21T03:15:00Z", "status": "clean", "hosts": {}}
    path = nightly.write_report(tmp_path / "reports", report)
    assert path.name == "nightly-2026-11-21T031500Z.json"
    assert json.loads((tmp_path / "reports" / "nightly-latest.json").read_text()) == report
    assert (tmp_path / "reports").stat().st_mode & 0o777 == 0o700
