"""A fleet: four fresh hosts provisioned in one parallel run, one of them failing, then the
nightly re-application (python -m pgvector_deploy.nightly) finding and correcting drift on
one host only; then a host with a hand-edited file it cannot carry over, which fails alone."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.hosts.runner import REPO, deploy, write_inventory
from tests.hosts.tarballs import DEFAULT_VERSION

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


def nightly(inventory, work, *args: str, cwd=REPO) -> tuple[int, dict, str]:
    """The nightly command, started in ``cwd`` (this checkout's, wherever that is)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pgvector_deploy.nightly", str(inventory), "--report-dir", str(work / "reports"), *args],
        cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    report = json.loads((work / "reports" / "nightly-latest.json").read_text())
    return proc.returncode, report, proc.stdout + proc.stderr


def test_parallel_run_provisions_the_good_hosts_and_names_the_failed_one(fleet):
    machines, first, _, _ = fleet
    assert first.returncode != 0  # one host failed
    for name in GOOD:
        assert "pgvector is compiled on this host and installed" in first.changed(name), first.output
        assert machines[name].psql("SELECT extversion FROM pg_extension WHERE extname = 'vector'") == DEFAULT_VERSION
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


# On the host: Latin-1 bytes into pg_hba.conf (inside the USER RULES section, or at its end),
# and what the files hold, read as bytes (the test's ssh reads text).
LATIN1_IN_USER_RULES = (
    "import sys; p = sys.argv[1]; d = open(p, 'rb').read(); "
    "open(p, 'wb').write(d.replace(b'# END USER RULES', b'# caf\\xe9\\n# END USER RULES', 1))"
)
LATIN1_AT_THE_END = "import sys; open(sys.argv[1], 'ab').write(b'# edited by Ren\\xe9\\n')"
HOLDS = "import glob, sys; print(sum(bytes.fromhex(sys.argv[2]) in open(p, 'rb').read() for p in glob.glob(sys.argv[1])))"


def holding(machine, pattern: str, text: str) -> int:
    """How many files matching ``pattern`` hold ``text`` as Latin-1 bytes."""
    hexed = text.encode("latin-1").hex()  # no byte beyond ASCII on the command line
    return int(machine.sudo(f"python3 -c {shlex.quote(HOLDS)} {shlex.quote(pattern)} {hexed}").strip())


def test_a_latin1_byte_in_pg_hba_fails_that_host_alone_with_one_line_and_the_fleet_finishes(fleet):
    machines, _, inventory, work = fleet
    odd, edited, untouched = machines["fleet-c"], machines["fleet-a"], machines["fleet-b"]
    odd.sudo(f"python3 -c {shlex.quote(LATIN1_IN_USER_RULES)} {HBA}")
    edited.sudo(f"python3 -c {shlex.quote(LATIN1_AT_THE_END)} {HBA}")
    before = odd.sudo(f"sha256sum {HBA}").split()[0]

    run = deploy(inventory)
    assert "Traceback" not in run.output, run.output
    assert run.returncode != 0
    # The odd host: one failing operation, one line naming the line and the fix, file untouched.
    # (pyinfra lists the operations a failed host never reached as errors too)
    assert run.failed("fleet-c")[0] == "pg_hba.conf admits the Docker bridges with scram-sha-256", run.output
    assert run.changed("fleet-c") == []
    [line] = {line.strip() for line in run.output.splitlines() if "[fleet-c]" in line and "pgvector-deploy failed:" in line}
    assert "these USER RULES lines are not UTF-8 text" in line and "# caf\\xe9" in line and "Fix:" in line
    assert odd.sudo(f"sha256sum {HBA}").split()[0] == before
    # The hand edit outside the USER RULES is just a difference: replaced, the edited copy kept.
    assert "pg_hba.conf admits the Docker bridges with scram-sha-256" in run.changed("fleet-a")
    assert holding(edited, HBA, "Ren\xe9") == 0 and holding(edited, f"/var/lib/pgvector-deploy/backups{HBA}.bak-*", "Ren\xe9") >= 1
    # The others ran to the end: the smoke suite passed on both.
    [smoke] = [op for op in run.results["operations"] if op["name"] == "Vector smoke suite"]
    assert {"fleet-a", "fleet-b"} <= set(smoke["no_change"]) and run.failed("fleet-a") == run.failed("fleet-b") == []
    assert untouched.psql("SELECT 1") == "1"

    # The nightly report tells the truth also with --dry: the odd host failed, with its message.
    status, report, output = nightly(inventory, work, "--dry")
    assert "Traceback" not in output
    assert status == 1 and report["status"] == "failed", output
    assert report["hosts"]["fleet-c"]["status"] == "failed"
    assert any("not UTF-8 text" in message for message in report["hosts"]["fleet-c"]["messages"])
    assert all(report["hosts"].get(name, {}).get("failed", []) == [] for name in ("fleet-a", "fleet-b"))

    # pyinfra's own --sudo keeps working (the login is admin; the toolkit's sudo stays on).
    status, report, output = nightly(inventory, work, "--", "--sudo")
    assert status == 1 and report["hosts"]["fleet-c"]["status"] == "failed", output
    assert all(report["hosts"][name]["status"] == "clean" for name in ("fleet-a", "fleet-b")), output

    # The fix the message names works: converted to UTF-8, the line is carried over.
    odd.sudo(f"iconv -f latin1 -t utf-8 {HBA} > {HBA}.utf8 && cat {HBA}.utf8 > {HBA} && rm {HBA}.utf8")
    status, report, output = nightly(inventory, work)
    # Converted, the file is either ours to the byte already (clean) or needs only its pg_hba step.
    assert status in (0, 2) and report["hosts"]["fleet-c"]["failed"] == [], output
    assert report["hosts"]["fleet-c"]["changed"] in ([], ["pg_hba.conf admits the Docker bridges with scram-sha-256"]), output
    assert "# café" in odd.sudo(f"cat {HBA}").splitlines()
    assert nightly(inventory, work)[0] == 0


def test_relative_paths_in_host_data_start_where_the_nightly_command_runs(fleet, tarball, tmp_path):
    from tests.e2e.conftest import shared_tarball

    machines, _, _, work = fleet
    shutil.copy(shared_tarball(), tmp_path / "pgvector.tar.gz")
    data = {**tarball, "pgvector_tarball": "pgvector.tar.gz", "smoke_report_dir": "smoke"}
    inventory = write_inventory(tmp_path / "relative.py", [machines[name].inventory_entry(**data) for name in GOOD])
    status, report, output = nightly(inventory, work, cwd=tmp_path)
    assert status == 0, output  # the tarball was found where the command ran (not refused)
    assert sorted(path.name for path in (tmp_path / "smoke").iterdir()) == [f"smoke-{name}.json" for name in GOOD]
