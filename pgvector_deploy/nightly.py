"""Nightly re-application: run the recipe on a fleet, non-interactively, and say what drifted.

    python -m pgvector_deploy.nightly inventories/prod.py            # correct drift
    python -m pgvector_deploy.nightly inventories/prod.py --dry      # only show drift

Exit status: 0 nothing changed, 2 drift found (and corrected, unless --dry), 1 a host failed or
was refused, also with --dry, or pyinfra's output could not be read (failure wins over drift).
A JSON report, ``<report-dir>/nightly-<UTC time>.json`` (and ``nightly-latest.json``), lists
per host each operation that changed or failed, the failure messages, and the restarts left
pending. Extra pyinfra options follow ``--``, e.g. ``-- --limit db-1``.

The nightly run never restarts PostgreSQL (``--data pg_restart=report``): a change that needs
a restart (shared_buffers, listen_addresses) is applied to the files and reported as
"restart pending: <setting>" (drift). ``--allow-restart`` lets it restart (with a roll-back).

pyinfra runs in the directory the command was started in, as when you run pyinfra yourself:
relative paths in host data (pgvector_tarball, pg_migrations_dir, smoke_report_dir) and
``--report-dir`` start there.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from .preflight import REFUSAL
from .shell import FAILURE_MARK

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "deploy" / "postgres.py")
# "    [db-1] pgvector-deploy failed: <message>" in pyinfra's log (shell.log_failure).
_FAILURE_LINE = re.compile(r"^\s*\[(?P<host>[^\]\s]+)\]\s+(?:nested\s+)?" + re.escape(FAILURE_MARK) + r"\s*(?P<message>.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

CLEAN, DRIFT, FAILED = 0, 2, 1
STATUS_NAMES = {CLEAN: "clean", DRIFT: "drift", FAILED: "failed"}


# What the operations log for a restart they leave pending (managed_files.restart_decision),
# behind pyinfra's "[host] " prefix; colour codes stripped first.
_PENDING_LINE = re.compile(r"\[(?P<host>[^\]]+)\]\s+restart pending: (?P<settings>.+?)\s*$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def pyinfra_command(inventory: str, dry: bool, extra: list[str], allow_restart: bool = False) -> list[str]:
    # --dry needs pyinfra's change detection, which -y skips; a real run needs -y (no prompt).
    mode = ["--dry"] if dry else ["-y"]
    restart = [] if allow_restart else ["--data", "pg_restart=report"]
    return [sys.executable, "-m", "pyinfra", inventory, RECIPE, *mode, "--json", *restart, *extra]


def pending_restarts(log: str) -> dict[str, list[str]]:
    """Per host, the settings whose restart a run left pending, from pyinfra's log (stderr)."""
    found: dict[str, list[str]] = {}
    for line in _ANSI.sub("", log).splitlines():
        match = _PENDING_LINE.search(line)
        if match:
            names = found.setdefault(match.group("host"), [])
            names += [name.strip() for name in match.group("settings").split(",") if name.strip() not in names]
    return found


def note_pending_restarts(hosts: dict[str, dict], log: str) -> None:
    """Add ``restart_pending`` (a list, maybe empty) to every host; a pending restart is drift."""
    pending = pending_restarts(log)
    for name in pending:
        hosts.setdefault(name, {"changed": [], "failed": [], "status": "clean"})
    for name, host in hosts.items():
        host["restart_pending"] = pending.get(name, [])
        if host["restart_pending"] and host["status"] == "clean":
            host["status"] = "drift"


def pyinfra_environment() -> dict[str, str]:
    """This process's environment, with this checkout first on the module path: pyinfra runs
    in the caller's directory, and must still import this toolkit, not another copy."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environment.get("PYTHONPATH")]))
    return environment


def failures_in_log(log: str) -> list[tuple[str, str]]:
    """``(host, message)`` for each failure our operations logged (``shell.log_failure``)."""
    found = []
    for line in log.splitlines():
        match = _FAILURE_LINE.match(_ANSI.sub("", line))
        if match and (match["host"], match["message"]) not in found:
            found.append((match["host"], match["message"]))
    return found


def read_results(stdout: str) -> dict | None:
    """pyinfra's --json output, or None when there is none or it is not what --json prints."""
    try:
        results = json.loads(stdout)
    except ValueError:
        return None
    if not isinstance(results, dict) or not isinstance(results.get("plan"), list) or "results" not in results:
        return None
    return results


def summarise(results: dict, dry: bool, log: str = "") -> dict[str, dict]:
    """Per host: the operations that changed (or would change, with --dry) and that failed,
    and the failure messages in pyinfra's ``log``. A refused host is failed, also with --dry
    (where its refusal is only planned, not run)."""
    hosts: dict[str, dict] = {}

    def entry(name: str) -> dict:
        return hosts.setdefault(name, {"changed": [], "failed": [], "messages": []})

    if dry:
        for operation in results.get("plan", []):
            for name in operation.get("hosts_with_change", []):
                entry(name)["failed" if operation["name"] == REFUSAL else "changed"].append(operation["name"])
    else:
        for operation in (results.get("results") or {}).get("operations", []):
            for name in operation.get("success", []):
                entry(name)["changed"].append(operation["name"])
            for name in operation.get("error", []):
                entry(name)["failed"].append(operation["name"])
            for name in operation.get("no_change", []):
                entry(name)
    for name in (results.get("results") or {}).get("failed_hosts") or []:  # null with --dry
        if not entry(name)["failed"]:
            hosts[name]["failed"].append("(could not connect or prepare)")
    for name, message in failures_in_log(log):
        host = entry(name)
        host["messages"].append(message)
        if not host["failed"]:  # with --dry (nothing ran), the log is all there is
            host["failed"].append("(see the message)")
    for name, host in hosts.items():
        host["status"] = "failed" if host["failed"] else ("drift" if host["changed"] else "clean")
    return hosts


def exit_status(hosts: dict[str, dict], pyinfra_returncode: int, problems: list[str] = ()) -> int:
    if pyinfra_returncode != 0 or problems or any(host["failed"] for host in hosts.values()):
        return FAILED
    if any(host["changed"] or host.get("restart_pending") for host in hosts.values()):
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
    parser.add_argument(
        "--allow-restart", action="store_true", help="let the run restart PostgreSQL when a setting needs it (default: report it)"
    )
    parser.add_argument("--report-dir", default="reports", help="where the JSON report goes (default: reports)")
    parser.add_argument("pyinfra_args", nargs="*", help="extra pyinfra options, after --")
    argv = sys.argv[1:] if argv is None else list(argv)
    # Everything after the first "--" is pyinfra's, wherever our own options stand.
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.pyinfra_args = [*args.pyinfra_args, *extra]

    started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    clock = time.monotonic()
    command = pyinfra_command(os.path.abspath(args.inventory), args.dry, args.pyinfra_args, args.allow_restart)
    proc = subprocess.run(
        command, cwd=os.getcwd(), env=pyinfra_environment(), capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    sys.stderr.write(proc.stderr)  # pyinfra's own log, for the journal or the CI log
    results = read_results(proc.stdout)
    problems = []
    if results is None:  # no report is no news, never good news
        problems.append(
            f"pyinfra printed no readable --json report (exit status {proc.returncode}); its log is above. "
            "Fix: run the same pyinfra command by hand to see why."
        )
    hosts = summarise(results or {}, args.dry, proc.stderr)
    note_pending_restarts(hosts, proc.stderr)
    if results is not None and proc.returncode != 0 and not any(host["failed"] for host in hosts.values()):
        problems.append(f"pyinfra exited {proc.returncode} without naming a failed host; its log is above.")
    status = exit_status(hosts, proc.returncode, problems)
    report = {
        "started": started,
        "seconds": round(time.monotonic() - clock, 1),
        "mode": "dry" if args.dry else "apply",
        "inventory": args.inventory,
        "status": STATUS_NAMES[status],
        "pyinfra_exit_status": proc.returncode,
        "problems": problems,
        "hosts": hosts,
    }
    path = write_report(Path(args.report_dir), report)

    verb = "would change" if args.dry else "changed"
    print(f"nightly {report['mode']}: {report['status']} ({len(hosts)} hosts, {report['seconds']}s); report: {path}")
    for name, host in sorted(hosts.items()):
        detail = "; ".join(
            [f"{verb}: {op}" for op in host["changed"]]
            + [f"FAILED: {op}" for op in host["failed"]]
            + [f"restart pending: {', '.join(host['restart_pending'])}"] * bool(host["restart_pending"])
        )
        print(f"  {name:<24} {host['status']:<7} {detail}")
        for message in host["messages"]:
            print(f"  {'':<24} {'':<7} {message}")
    for problem in problems:
        print(f"  {problem}")
    return status


if __name__ == "__main__":
    sys.exit(main())
