"""shellcheck on every shell script of the project: the smoke suite's script as each kind of
plan renders it (templates/smoke.sh.j2), the smoke suite's other host commands, and the
repository's own scripts (files/backups/*, tests/bootstrap.sh, .ci/run, any *.sh). Any
finding fails, at every severity down to style; a line that must stay as it is carries a
``# shellcheck disable=`` with its reason.

shellcheck comes from Debian's package (tests/bootstrap.sh installs it); without it these
tests skip, and fail under CI.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pgvector_deploy import smoke
from pgvector_deploy.facts import parse_host_profile
from pgvector_deploy.preflight import make_plan
from pgvector_deploy.loading import load_settings
from pgvector_deploy.smoke import SmokeApp

from .conftest import recorded_lines, skip_or_fail

REPO = Path(__file__).resolve().parents[2]
APP = SmokeApp(user="app", password="not-in-the-script", database="app", address="172.17.0.1")
BACKUP = {"pg_backup_s3_bucket": "acme-db-backups", "pg_backup_cipher_pass": "c" * 40}

# Representative plans: (host data, recorded host, app role for app_over_tcp).
PLANS = {
    "plain": ({}, "debian12-x86_64", None),
    "app": ({"pg_app_user": "app", "pg_app_password": "x"}, "debian12-x86_64", APP),
    "app-without-address": ({"pg_app_user": "app", "pg_app_password": "x"}, "debian12-x86_64",
                            SmokeApp("app", "x", "app", None)),  # fmt: skip
    "backups-wal-archive": (BACKUP, "debian12-x86_64", APP),
    "tls": ({"pg_listen_addresses": ["10.0.1.10"]}, "debian12-x86_64", APP),
    "pg17-port-5433": ({"pg_major": 17, "pg_port": 5433}, "debian12-x86_64", None),
    "rhel9": ({}, "almalinux9-x86_64", APP),
}


def shellcheck(*args: str, script: str | None = None) -> subprocess.CompletedProcess:
    if shutil.which("shellcheck") is None:
        skip_or_fail("shellcheck is not installed (Debian: apt-get install shellcheck; tests/bootstrap.sh does)")
    return subprocess.run(
        ["shellcheck", "--severity=style", "--format=gcc", *args],
        input=script, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def plan_for(name: str):
    data, recorded_host, _app = PLANS[name]
    profile = parse_host_profile(recorded_lines("fresh", "host-profile", host=recorded_host))
    return make_plan(load_settings(data, host_name="db"), profile)


@pytest.mark.parametrize("name", sorted(PLANS))
def test_the_smoke_script_each_plan_renders_passes_shellcheck(name):
    plan = plan_for(name)
    script = smoke.host_script(plan, PLANS[name][2])
    done = shellcheck("-s", "sh", "-", script=script)
    assert done.returncode == 0, f"{name}:\n{done.stdout}{done.stderr}"
    assert ("STORED_SQL=" in script) == bool(PLANS[name][2] and PLANS[name][2].address)


def test_the_smoke_script_for_an_odd_role_name_passes_shellcheck(debian12):
    """Settings refuse such a name; the script quotes it all the same."""
    script = smoke.smoke_script(debian12, 5432, "0.8.0", "o'neil $x `id` \\")
    done = shellcheck("-s", "sh", "-", script=script)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", ["backups-wal-archive", "pg17-port-5433", "rhel9"])
def test_the_smoke_suites_other_host_commands_pass_shellcheck(name):
    """The command that keeps and runs the script (inside the host lock, shell.py's), the
    wal_archive check, and the monitoring file's writer: shell built in smoke.py."""
    plan = plan_for(name)
    commands = {
        "SmokeChecks": smoke.save_and_run(),
        "ArchiveCheck": smoke.ArchiveCheck().command(plan.platform, plan.port),
        "SmokeStatusFile": smoke.SmokeStatusFile().command(9, 1),
    }
    for fact, command in commands.items():
        done = shellcheck("-s", "sh", "-", script=command + "\n")
        assert done.returncode == 0, f"{name} {fact}:\n{done.stdout}{done.stderr}"


def shell_scripts() -> list[Path]:
    """The repository's shell scripts: tracked files named *.sh or starting with a sh/bash
    shebang (templates are rendered first, above)."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True, timeout=30)
    found = []
    for name in listed.stdout.decode().split("\0"):
        path = REPO / name
        if not name or not path.is_file() or name.endswith(".j2"):
            continue
        with path.open("rb") as stream:
            first = stream.readline()
        if name.endswith(".sh") or first.startswith((b"#!/bin/sh", b"#!/bin/bash", b"#!/usr/bin/env bash", b"#!/usr/bin/env sh")):
            found.append(path)
    return found


def test_the_repositorys_shell_scripts_are_found():
    names = {str(path.relative_to(REPO)) for path in shell_scripts()}
    assert {
        "files/backups/pgvector-backup",
        "files/backups/pgvector-backup-status",
        "files/backups/pgvector-restore-drill",
        "tests/bootstrap.sh",
        ".ci/run",
    } <= names, names


@pytest.mark.parametrize("path", shell_scripts(), ids=lambda path: str(path.relative_to(REPO)))
def test_the_repositorys_shell_scripts_pass_shellcheck(path):
    # SC1091: the settings file a host script sources (/etc/pgvector-deploy/backup.env) is
    # written on the host; it is not here to follow. The dialect comes from the shebang.
    done = shellcheck("--exclude=SC1091", str(path))
    assert done.returncode == 0, f"{path.relative_to(REPO)}:\n{done.stdout}{done.stderr}"


def test_shellcheck_can_fail():
    """The check itself: a script with a real mistake (an unquoted expansion) is reported."""
    done = shellcheck("-s", "sh", "-", script='#!/bin/sh\nrm -rf $1/tmp\n')
    assert done.returncode != 0 and "SC2086" in done.stdout
