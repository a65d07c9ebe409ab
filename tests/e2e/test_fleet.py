"""A fleet: four fresh hosts provisioned in one parallel run, one of them failing, then the
nightly re-application (python -m pgvector_deploy.nightly) finding and correcting drift on
one host only."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.hosts.runner import REPO, deploy, write_inventory

GOOD = ("fleet-a", "fleet-b", "fleet-c")
HBA = "/etc/postgresql/15/main/pg_hba.conf"


@pytest.fixture(scope="module")
def fleet(hosts, tarball, tmp_path_factory):
    work = tmp_path_factory.mktemp("fleet")
    machines = {name: hosts.boot(name) for name in (*GOOD, "fleet-broken")}
    # The broken host: something else already serves port 5432, so it must be refused.
    machines["fleet-broken"].sudo("nohup python3 -m http.server 5432 >/dev/null 2>&1 & sleep 1")
    entries = [machine.inventory_entry(**tarball) for machine in machines.values()]
    first = deploy(write_inventory(work / "all.py", entries))
    good_inventory = write_inventory(work / "good.py", [machines[name].inventory_entry(**tarball) for name in GOOD])
    return machines, first, good_inventory, work


def nightly(inventory, work, *args: str) -> tuple[int, dict, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "pgvector_deploy.nightly", str(inventory), "--report-dir", str(work / "reports"), *args],
        cwd=REPO, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    report = json.loads((work / "reports" / "nightly-latest.json").read_text())
    return proc.returncode, report, proc.stdout + proc.stderr


def test_parallel_run_provisions_the_good_hosts_and_names_the_failed_one(fleet):
    machines, first, _, _ = fleet
    assert first.returncode != 0  # one host failed
    for name in GOOD:
        assert "pgvector is compiled on this host and installed" in first.changed(name), first.output
        assert machines[name].psql("SELECT extversion FROM pg_extension WHERE extname = 'vector'") == "0.8.0"
    assert first.failed("fleet-broken") == ["Refuse this host (nothing changed)"]
    assert "[fleet-broken]" in first.output and "port 5432 is taken by /usr/bin/python3" in first.output


def test_the_broken_host_was_left_untouched(fleet):
    machines, _, _, _ = fleet
    assert machines["fleet-broken"].sudo("dpkg-query -W postgresql-15 2>/dev/null || echo absent").strip() == "absent"


def test_nightly_on_a_converged_fleet_reports_no_changes(fleet):
    _, _, inventory, work = fleet
    status, report, output = nightly(inventory, work)
    assert status == 0, output
    assert report["status"] == "clean"
    assert sorted(report["hosts"]) == list(GOOD)
    assert all(host["changed"] == [] for host in report["hosts"].values())


def test_nightly_dry_run_shows_drift_without_correcting_it(fleet):
    machines, _, inventory, work = fleet
    machines["fleet-b"].sudo(f"echo 'host all all 0.0.0.0/0 trust' >> {HBA}")
    status, report, output = nightly(inventory, work, "--dry")
    assert status == 2, output
    assert report["mode"] == "dry"
    assert report["hosts"]["fleet-b"]["changed"] == ["pg_hba.conf admits the Docker bridges with scram-sha-256"]
    assert report["hosts"].get("fleet-a", {}).get("changed", []) == []
    assert "0.0.0.0/0 trust" in machines["fleet-b"].sudo(f"cat {HBA}")  # not corrected


def test_nightly_corrects_drift_on_that_host_only_and_keeps_the_edited_copy(fleet):
    machines, _, inventory, work = fleet
    status, report, output = nightly(inventory, work)
    assert status == 2, output
    assert report["status"] == "drift"
    assert report["hosts"]["fleet-b"]["changed"] == ["pg_hba.conf admits the Docker bridges with scram-sha-256"]
    assert report["hosts"]["fleet-a"]["changed"] == [] and report["hosts"]["fleet-c"]["changed"] == []
    assert "0.0.0.0/0 trust" not in machines["fleet-b"].sudo(f"cat {HBA}")
    copies = machines["fleet-b"].sudo(f"grep -l '0.0.0.0/0 trust' /var/lib/pgvector-deploy/backups{HBA}.bak-* || true").split()
    assert copies, "the hand-edited file was not kept"

    status, report, output = nightly(inventory, work)
    assert status == 0, output
