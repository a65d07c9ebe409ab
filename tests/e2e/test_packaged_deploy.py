"""The packaged deploy as another team uses it: this repository built as a wheel, installed
(not editable) into a fresh virtualenv with its dependencies, and a pyinfra project of their
own (an inventory with their data, a deploy.py with an operation of theirs and
``postgres_with_pgvector()``) run from that virtualenv against a fresh host."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from pgvector_deploy.facts import BUILD_STAMP
from tests.hosts.runner import REPO, deploy, write_inventory

BUILD_OP = "pgvector is compiled on this host and installed"
TEAM_OP = "Team: /srv/team exists"
# Their own data: an override of a declared default (pyinfra's data_defaults come last).
TEAM_DATA = {"pg_work_mem": "12MB"}
# Nothing from this checkout: the project imports the installed package alone.
CLEAN = {"PYTHONPATH": ""}

TEAM_DEPLOY = f'''
from pyinfra.operations import files

from pgvector_deploy import postgres_with_pgvector

files.directory(name="{TEAM_OP}", path="/srv/team", _sudo=True)

postgres_with_pgvector()
'''


def run(*command: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(command, cwd=cwd, env={**os.environ, **CLEAN}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{command}: {proc.stdout}{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtualenv with the wheel of this checkout and its dependencies: its python."""
    work = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work), str(REPO))
    (wheel,) = work.glob("pgvector_deploy-*.whl")
    venv.create(work / "venv", with_pip=True)
    python = work / "venv" / "bin" / "python"
    run(str(python), "-m", "pip", "install", "-q", str(wheel))
    return python


@pytest.fixture(scope="module")
def team(installed, hosts, tarball, tmp_path_factory):
    """The team's project, and a fresh host provisioned by it once: (host, project, first run)."""
    project = tmp_path_factory.mktemp("team-project")
    (project / "deploy.py").write_text(TEAM_DEPLOY)
    host = hosts.boot("packaged")
    inventory = write_inventory(project / "inventory.py", [host.inventory_entry(**tarball, **TEAM_DATA)])
    first = deploy(inventory, python=str(installed), cwd=project, recipe="deploy.py", env=CLEAN)
    return host, project, inventory, first


def test_the_project_imports_the_installed_package_not_this_checkout(installed, team):
    _, project, _, _ = team
    found = run(str(installed), "-c", "import pgvector_deploy; print(pgvector_deploy.__file__)", cwd=project)
    assert found.startswith(str(installed.parent.parent)), found
    assert "site-packages" in found and not found.startswith(str(REPO))


def test_the_team_deploy_provisions_a_fresh_host_with_their_operation_and_ours(team):
    host, _, _, first = team
    assert first.returncode == 0, first.output
    changed = first.changed(host.name)
    assert changed[0] == TEAM_OP and BUILD_OP in changed
    assert not any(" | " in name for name in changed), changed  # our operations keep their names
    assert host.psql("SELECT extversion FROM pg_extension WHERE extname = 'vector'", "template1") == "0.8.6"
    assert host.sudo(f"test -f {BUILD_STAMP} && test -d /srv/team && echo yes").strip() == "yes"


def test_their_host_data_overrides_the_packaged_defaults(team):
    host, _, _, first = team
    assert first.returncode == 0, first.output
    assert host.psql("SHOW work_mem") == "12MB"


def test_a_second_run_of_the_team_deploy_changes_nothing(installed, team):
    host, project, inventory, _ = team
    started = host.psql("SELECT pg_postmaster_start_time()")

    again = deploy(inventory, python=str(installed), cwd=project, recipe="deploy.py", env=CLEAN)

    assert again.returncode == 0, again.output
    assert again.changed(host.name) == []
    assert host.psql("SELECT pg_postmaster_start_time()") == started


def test_the_repository_deploy_is_the_same_operations_and_changes_nothing_after_it(team, provision, tarball):
    """deploy/postgres.py, the thinnest caller, after the team's run: the same operations in
    the same order (theirs aside), none changing anything."""
    host, _, _, first = team
    ours = provision(host, **tarball, **TEAM_DATA)
    assert ours.returncode == 0, ours.output
    assert ours.changed(host.name) == []
    names = [op["name"] for op in ours.results.get("operations", [])]
    assert names == [op["name"] for op in first.results.get("operations", []) if op["name"] != TEAM_OP]
