"""Nightly re-application: run the recipe on a fleet, non-interactively, and say what drifted.

    python -m pgvector_deploy.nightly inventories/prod.py            # correct drift
    python -m pgvector_deploy.nightly inventories/prod.py --dry      # only show drift

Exit status: 0 nothing changed, 2 drift found (and corrected, unless --dry), 1 a host failed
(failure wins over drift). A JSON report, ``<report-dir>/nightly-<UTC time>.json`` (and
``nightly-latest.json``), lists per host each operation that changed or failed. Extra pyinfra
options follow ``--``, e.g. ``-- --limit db-1``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = "deploy/postgres.py"

CLEAN, DRIFT, FAILED = 0, 2, 1
STATUS_NAMES = {CLEAN: "clean", DRIFT: "drift", FAILED: "failed"}


def pyinfra_command(inventory: str, dry: bool, extra: list[str]) -> list[str]:
    # --dry needs pyinfra's change detection, which -y skips; a real run needs -y (no prompt).
    mode = ["--dry"] if dry else ["-y"]
    return [sys.executable, "-m", "pyinfra", inventory, RECIPE, *mode, "--json", *extra]


def summarise(results: dict, dry: bool) -> dict[str, dict]:
    """Per host: the operations that changed (or would change, with --dry) and that failed."""
    hosts: dict[str, dict] = {}

    def entry(name: str) -> dict:
        return hosts.setdefault(name, {"changed": [], "failed": []})

    if dry:
        for operation in results.get("plan", []):
            for name in operation.get("hosts_with_change", []):
                entry(name)["changed"].append(operation["name"])
    else:
        for operation in (results.get("results") or {}).get("operations", []):
            for name in operation.get("success", []):
                entry(name)["changed"].append(operation["name"])
            for name in operation.get("error", []):
                entry(name)["failed"].append(operation["name"])
            for name in operation.get("no_change", []):
                entry(name)
    for name in (results.get("results") or {}).get("failed_hosts", []):  # null with --dry
        entry(name).setdefault("failed", [])
        if not hosts[name]["failed"]:
            hosts[name]["failed"].append("(could not connect or prepare)")
    for name, host in hosts.items():
        host["status"] = "failed" if host["failed"] else ("drift" if host["changed"] else "clean")
    return hosts


def exit_status(hosts: dict[str, dict], pyinfra_returncode: int) -> int:
    if pyinfra_returncode != 0 or any(host["failed"] for host in hosts.values()):
        return FAILED
    if any(host["changed"] for host in hosts.values()):
        return DRIFT
    return CLEAN


def write_report(report_dir: Path, report: dict) -> Path:
    report_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = report_dir / f"nightly-{report['started'].replace(':', '')}.json"
    text = json.dumps(report, indent=2, sort_keys=True) + "\n"
    path.write_text(text)
    latest = report_dir / "nightly-latest.json"
    latest.write_text(text)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pgvector_deploy.nightly", description=__doc__.split("\n\n")[0])
    parser.add_argument("inventory", help="pyinfra inventory, e.g. inventories/prod.py")
    parser.add_argument("--dry", action="store_true", help="show drift without correcting it")
    parser.add_argument("--report-dir", default="reports", help="where the JSON report goes (default: reports)")
    parser.add_argument("pyinfra_args", nargs="*", help="extra pyinfra options, after --")
    args = parser.parse_args(argv)

    started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    clock = time.monotonic()
    command = pyinfra_command(os.path.abspath(args.inventory), args.dry, args.pyinfra_args)
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    sys.stderr.write(proc.stderr)  # pyinfra's own log, for the journal or the CI log
    try:
        results = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except ValueError:
        results = {}
    hosts = summarise(results, args.dry)
    status = exit_status(hosts, proc.returncode)
    report = {
        "started": started,
        "seconds": round(time.monotonic() - clock, 1),
        "mode": "dry" if args.dry else "apply",
        "inventory": args.inventory,
        "status": STATUS_NAMES[status],
        "pyinfra_exit_status": proc.returncode,
        "hosts": hosts,
    }
    path = write_report(Path(args.report_dir), report)

    verb = "would change" if args.dry else "changed"
    print(f"nightly {report['mode']}: {report['status']} ({len(hosts)} hosts, {report['seconds']}s); report: {path}")
    for name, host in sorted(hosts.items()):
        detail = "; ".join(
            [f"{verb}: {op}" for op in host["changed"]] + [f"FAILED: {op}" for op in host["failed"]]
        )
        print(f"  {name:<24} {host['status']:<7} {detail}")
    return status


if __name__ == "__main__":
    sys.exit(main())
