"""Run the real pyinfra CLI on the real deploy, as a user would, and read its JSON results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPLOY = "deploy/postgres.py"


@dataclass
class DeployRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    results: dict = field(default_factory=dict)

    def changed(self, host: str) -> list[str]:
        """Names of the operations that changed something on ``host``."""
        return [op["name"] for op in self.results.get("operations", []) if host in op.get("success", [])]

    def failed(self, host: str) -> list[str]:
        return [op["name"] for op in self.results.get("operations", []) if host in op.get("error", [])]

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def write_inventory(path: Path, hosts: list[tuple[str, dict]]) -> Path:
    path.write_text("hosts = " + repr(hosts) + "\n")
    return path


def deploy_together(
    inventory: Path, copies: int = 2, *args: str, timeout: float = 1800, env: dict | None = None, repo: Path = REPO
) -> list[DeployRun]:
    """``copies`` pyinfra processes of the deploy on the same inventory, started at the same
    moment (each its own process, as two people or a cron job and a person would), then waited
    for; ``repo``: the checkout whose deploy runs (another version of the toolkit, say)."""
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pyinfra", str(inventory), DEPLOY, "-y", "--json", *args],
            cwd=repo, env={**os.environ, **(env or {})}, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        for _ in range(copies)
    ]
    runs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=max(1.0, timeout - (time.monotonic() - started)))
        runs.append(DeployRun(proc.returncode, stdout, stderr, time.monotonic() - started, _results(stdout)))
    return runs


def _results(stdout: str) -> dict:
    try:
        return json.loads(stdout).get("results", {}) if stdout.strip() else {}
    except ValueError:
        return {}


def deploy(
    inventory: Path,
    *args: str,
    timeout: float = 1800,
    env: dict | None = None,
    recipe: str = DEPLOY,
    python: str = sys.executable,
    cwd: Path = REPO,
) -> DeployRun:
    """``pyinfra INVENTORY deploy/postgres.py -y --json [args]`` from the repository root;
    ``env`` adds environment variables on the control machine (password sources, AWS);
    ``python`` and ``cwd``: another installation and project (the packaged deploy's test)."""
    started = time.monotonic()
    proc = subprocess.run(
        [python, "-m", "pyinfra", str(inventory), recipe, "-y", "--json", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        text=True,
        capture_output=True,
        timeout=timeout,
    )
    seconds = time.monotonic() - started
    results = {}
    try:
        results = json.loads(proc.stdout).get("results", {}) if proc.stdout.strip() else {}
    except ValueError:
        pass
    return DeployRun(proc.returncode, proc.stdout, proc.stderr, seconds, results)
