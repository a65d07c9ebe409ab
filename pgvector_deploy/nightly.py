"""Nightly re-application: run the recipe on a fleet, non-interactively, and say what drifted.

    python -m pgvector_deploy.nightly inventories/prod.py            # correct drift
    python -m pgvector_deploy.nightly inventories/prod.py --dry      # only show drift

Exit status: 0 nothing changed, 2 drift found (and corrected, unless --dry), 1 a host failed or
was refused, also with --dry, or pyinfra's output could not be read (failure wins over drift).
A JSON report, ``<report-dir>/nightly-<UTC time>.json`` (and ``nightly-latest.json``), lists
per host each operation that changed, the one that failed and those not run after it, the
failure messages, and the restarts left pending. Extra pyinfra options follow ``--``, e.g.
``-- --limit db-1``.

Each report is replaced atomically. Before pyinfra starts, both files say ``"status":
"running"``; a run stopped by SIGTERM (the unit's TimeoutStartSec) writes a failed report, and
one killed outright leaves the marker, which ``--status`` reads as failed once no run holds
the run lock:

    python -m pgvector_deploy.nightly --status --report-dir reports  # 0 clean, 2 drift, 1 failed, 3 running

The nightly run never restarts PostgreSQL (``--data pg_restart=report``): a change that needs
a restart (shared_buffers, listen_addresses) is applied to the files and reported as
"restart pending: <setting>" (drift). ``--allow-restart`` lets it restart (with a roll-back).

pyinfra runs in the directory the command was started in, as when you run pyinfra yourself:
relative paths in host data (pgvector_tarball, pg_migrations_dir, smoke_report_dir) and
``--report-dir`` start there.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from .backups import BACKUP_STATE_MARK
from .errors import FAILURE_MARK
from .preflight import REFUSAL

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "deploy" / "postgres.py")
# "    [db-1] pgvector-deploy failed: <message>" in pyinfra's log (errors.log_failure).
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
        hosts.setdefault(name, {"changed": [], "failed": [], "not_run": [], "messages": [], "status": "clean"})
    for name, host in hosts.items():
        host["restart_pending"] = pending.get(name, [])
        if host["restart_pending"] and host["status"] == "clean":
            host["status"] = "drift"


# What backups.report logs: "[host] backup state: {...}" (one JSON object).
_BACKUP_LINE = re.compile(r"\[(?P<host>[^\]]+)\]\s+" + re.escape(BACKUP_STATE_MARK) + r"(?P<state>.*?)\s*$")


def backup_states(log: str) -> tuple[dict[str, dict], list[str]]:
    """Per host, the backup state its run logged last (backups.report), and a problem for
    each line that is not a JSON object (never a crash, never silently dropped)."""
    states: dict[str, dict] = {}
    problems = []
    for line in _ANSI.sub("", log).splitlines():
        match = _BACKUP_LINE.search(line)
        if not match:
            continue
        try:
            state = json.loads(match["state"])
        except ValueError:
            state = None
        if isinstance(state, dict):
            states[match["host"]] = state
        else:
            problems.append(f"{match['host']}: its backup state line is not readable JSON: {match['state'][:200]}")
    return states, problems


def note_backup_states(hosts: dict[str, dict], log: str) -> list[str]:
    """Add ``backups`` to every host: its backup state, or None (no backups there, or the run
    stopped before the backup stage ended). Reading it is no change and no drift."""
    states, problems = backup_states(log)
    for name in states:
        hosts.setdefault(name, {"changed": [], "failed": [], "not_run": [], "messages": [], "status": "clean"})
    for name, host in hosts.items():
        host["backups"] = states.get(name)
    return problems


def pyinfra_environment() -> dict[str, str]:
    """This process's environment, with this checkout first on the module path: pyinfra runs
    in the caller's directory, and must still import this toolkit, not another copy."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), environment.get("PYTHONPATH")]))
    return environment


def failures_in_log(log: str) -> list[tuple[str, str]]:
    """``(host, message)`` for each failure our operations logged (``errors.log_failure``)."""
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
        return hosts.setdefault(name, {"changed": [], "failed": [], "not_run": [], "messages": []})

    if dry:
        for operation in results.get("plan", []):
            for name in operation.get("hosts_with_change", []):
                entry(name)["failed" if operation["name"] == REFUSAL else "changed"].append(operation["name"])
    else:
        # pyinfra lists a host under "error" for the operation that failed and for every later
        # one, which it never ran (no outcome counts as no success). The operations come in the
        # order they ran, and this toolkit ignores no errors: a host's first error is its
        # failure, the rest were not run.
        for operation in (results.get("results") or {}).get("operations", []):
            for name in operation.get("success", []):
                entry(name)["changed"].append(operation["name"])
            for name in operation.get("error", []):
                host = entry(name)
                host["not_run" if host["failed"] else "failed"].append(operation["name"])
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


LATEST = "nightly-latest.json"
# Held (shared) by every run for as long as it runs; flock lets go when the process dies, even
# by SIGKILL, so a reader that can take it exclusively knows no run is still going.
RUN_LOCK = ".nightly-run.lock"
RUNNING = 3  # --status only: a run is going on now


def report_path(report_dir: Path, started: str) -> Path:
    return report_dir / f"nightly-{started.replace(':', '')}.json"


def write_json_atomically(path: Path, data: dict) -> None:
    """``data`` into ``path`` whole or not at all: a private temporary file in the same
    directory, flushed to disk, renamed over ``path``; the directory then synced too, so the
    rename outlives a power cut. A reader never sees half a report; a full disk leaves the old one."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    descriptor, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_report(report_dir: Path, report: dict) -> Path:
    """The run's own report file, then ``nightly-latest.json``, each replaced atomically."""
    report_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = report_path(report_dir, report["started"])
    write_json_atomically(path, report)
    write_json_atomically(report_dir / LATEST, report)
    return path


TEXTFILE = "pgvector_nightly.prom"


def _label(value: str) -> str:
    """A Prometheus label value: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _epoch(moment: str | None) -> int:
    return int(datetime.strptime(moment, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()) if moment else 0


def render_textfile(report: dict) -> str:
    """The run's status in node_exporter's textfile format: written on the control host, the
    one place that knows it also for a host that could not be reached, or a run killed
    outright (``running`` stays 1: alert on it lasting longer than the unit's TimeoutStartSec)."""
    codes = {name: code for code, name in STATUS_NAMES.items()} | {"running": RUNNING}
    lines = [
        "# HELP pgvector_nightly_status Status of the last nightly run: 0 clean, 2 drift, 1 failed, 3 running.",
        "# TYPE pgvector_nightly_status gauge",
        f"pgvector_nightly_status {codes.get(report.get('status'), FAILED)}",
        "# HELP pgvector_nightly_running 1 while a nightly run is going on (or one was killed before it finished).",
        "# TYPE pgvector_nightly_running gauge",
        f"pgvector_nightly_running {int(report.get('status') == 'running')}",
        "# HELP pgvector_nightly_last_start_timestamp_seconds When the last nightly run started.",
        "# TYPE pgvector_nightly_last_start_timestamp_seconds gauge",
        f"pgvector_nightly_last_start_timestamp_seconds {_epoch(report.get('started'))}",
        "# HELP pgvector_nightly_last_finish_timestamp_seconds When the last nightly run finished (0: not finished).",
        "# TYPE pgvector_nightly_last_finish_timestamp_seconds gauge",
        f"pgvector_nightly_last_finish_timestamp_seconds {_epoch(report.get('finished'))}",
    ]
    per_host = (
        ("pgvector_nightly_host_status", "Each host's status in the last nightly run: 0 clean, 2 drift, 1 failed.",
         lambda host: codes.get(host.get("status"), FAILED)),
        ("pgvector_nightly_host_changed_operations", "Operations the last nightly run changed on the host.",
         lambda host: len(host.get("changed", []))),
        ("pgvector_nightly_host_restart_pending", "1 if the last nightly run left a restart pending on the host.",
         lambda host: int(bool(host.get("restart_pending")))),
    )  # fmt: skip
    for name, meaning, value in per_host:
        lines += [f"# HELP {name} {meaning}", f"# TYPE {name} gauge"]
        lines += [f'{name}{{host="{_label(host)}"}} {value(entry)}' for host, entry in sorted(report.get("hosts", {}).items())]
    return "\n".join(lines) + "\n"


def write_textfile(textfile_dir: Path, report: dict) -> None:
    """``pgvector_nightly.prom`` replaced in one rename (node_exporter never reads half), 0644."""
    textfile_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = textfile_dir / TEXTFILE
    descriptor, tmp = tempfile.mkstemp(dir=textfile_dir, prefix=f".{TEXTFILE}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(render_textfile(report))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def start_marker(started: str, mode: str, inventory: str) -> dict:
    """What the report says while the run is going: "running", not finished. A run that is
    killed leaves it so, and a reader (``read_status``) then takes it as failed."""
    return {
        "started": started, "finished": None, "status": "running", "mode": mode, "inventory": inventory,
        "pid": os.getpid(), "problems": [], "hosts": {},
    }  # fmt: skip


def did_not_finish(report: dict) -> str:
    return (
        f"the run started at {report['started']} did not finish (killed, by the unit's TimeoutStartSec or "
        "otherwise, or the machine stopped): what it did on the hosts is not known. Fix: see its log "
        "(journalctl -u pgvector-deploy-nightly), and run it again."
    )


@contextlib.contextmanager
def run_lock(report_dir: Path):
    """Held for the whole run (shared: overlapping runs are each other's business on the hosts,
    under the host lock). Taken exclusively first, when no other run holds it: a "running"
    report left then is from a run that died, and is recorded as failed in its own file."""
    report_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(report_dir / RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # another run is going on: its report is its own
        else:
            settle_unfinished(report_dir)
        fcntl.flock(descriptor, fcntl.LOCK_SH)
        yield
    finally:
        os.close(descriptor)


def read_latest(report_dir: Path) -> dict | None:
    try:
        report = json.loads((report_dir / LATEST).read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def run_in_progress(report_dir: Path) -> bool:
    """Does a nightly run hold the run lock now (``run_lock``)?"""
    try:
        descriptor = os.open(report_dir / RUN_LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)
    return False


def unfinished_reports(report_dir: Path) -> list[dict]:
    """The reports still saying "running", oldest first: the latest one, and each run's own file
    (an overlapping run that finished may have replaced ``nightly-latest.json`` since)."""
    found = {}
    for path in [report_dir / LATEST, *sorted(report_dir.glob("nightly-*.json"))]:
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(report, dict) and report.get("status") == "running" and isinstance(report.get("started"), str):
            found[report["started"]] = report
    return [found[started] for started in sorted(found)]


def settle_unfinished(report_dir: Path) -> None:
    """With no run going on, a "running" report is from a run that died: its own report file
    says failed from now on (``nightly-latest.json`` is the new run's next)."""
    for report in unfinished_reports(report_dir):
        failed = {**report, "status": "failed", "problems": [did_not_finish(report), *report.get("problems", [])]}
        write_json_atomically(report_path(report_dir, report["started"]), failed)


def read_status(report_dir: Path) -> tuple[int, str]:
    """(exit status, one line) for ``--status``: the latest report's status; "running" is
    taken as failed once no run holds the run lock (the run died before it could say)."""
    report = read_latest(report_dir)
    if report is None:
        return FAILED, f"nightly: failed: no nightly report readable in {report_dir}"
    status, started = report.get("status"), report.get("started")
    if status == "running" and run_in_progress(report_dir):
        return RUNNING, f"nightly: running since {started} (pid {report.get('pid')})"
    dead = [] if run_in_progress(report_dir) else unfinished_reports(report_dir)
    if dead:  # the latest, or a run an overlapping one's latest report hides
        return FAILED, f"nightly: failed: {did_not_finish(dead[-1])}"
    codes = {name: code for code, name in STATUS_NAMES.items()}
    if status not in codes:
        return FAILED, f"nightly: failed: the latest report has no known status ({status!r})"
    return codes[status], f"nightly: {status} (started {started})"


class Stopped(Exception):
    """The run got SIGTERM (systemd's TimeoutStartSec, systemctl stop)."""


def _stop(signum, frame):
    raise Stopped(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pgvector_deploy.nightly", description=__doc__.split("\n\n")[0])
    parser.add_argument("inventory", nargs="?", help="pyinfra inventory, e.g. inventories/prod.py")
    parser.add_argument("--dry", action="store_true", help="show drift without correcting it")
    parser.add_argument(
        "--allow-restart", action="store_true", help="let the run restart PostgreSQL when a setting needs it (default: report it)"
    )
    parser.add_argument("--report-dir", default="reports", help="where the JSON report goes (default: reports)")
    parser.add_argument(
        "--status", action="store_true", help="only read the latest report: exit 0 clean, 2 drift, 1 failed or unfinished, 3 running"
    )
    parser.add_argument(
        "--textfile-dir",
        help="also write the run's status as pgvector_nightly.prom there, for node_exporter's textfile collector",
    )
    parser.add_argument("pyinfra_args", nargs="*", help="extra pyinfra options, after --")
    argv = sys.argv[1:] if argv is None else list(argv)
    # Everything after the first "--" is pyinfra's, wherever our own options stand.
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.pyinfra_args = [*args.pyinfra_args, *extra]
    if args.status:
        status, line = read_status(Path(args.report_dir))
        print(line)
        return status
    if args.inventory is None:
        parser.error("the inventory is required (or --status)")
    report_dir = Path(args.report_dir)
    with run_lock(report_dir):
        return run(args, report_dir)


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(args: argparse.Namespace, report_dir: Path) -> int:
    """One nightly run: the start marker, pyinfra, the report (also when stopped by SIGTERM)."""
    started, clock = now(), time.monotonic()
    mode = "dry" if args.dry else "apply"
    command = pyinfra_command(os.path.abspath(args.inventory), args.dry, args.pyinfra_args, args.allow_restart)
    previous = signal.signal(signal.SIGTERM, _stop)  # before the marker: from then on a SIGTERM gets a report
    try:
        write_report(report_dir, start_marker(started, mode, args.inventory))
        if args.textfile_dir:
            write_textfile(Path(args.textfile_dir), start_marker(started, mode, args.inventory))
        proc = subprocess.run(
            command, cwd=os.getcwd(), env=pyinfra_environment(), capture_output=True, text=True, stdin=subprocess.DEVNULL
        )  # on Stopped, subprocess.run kills pyinfra before it re-raises
    except Stopped as stop:
        proc = subprocess.CompletedProcess(command, None, "", "")
        stopped = (
            f"the run was stopped by {stop} after {round(time.monotonic() - clock)}s, before pyinfra finished (the unit's "
            "TimeoutStartSec, or systemctl stop): what it did on the hosts is not known. Fix: see its log, and run it "
            "again; if it keeps running out of time, raise TimeoutStartSec or use pyinfra's --parallel."
        )
    else:
        stopped = None
    finally:
        signal.signal(signal.SIGTERM, previous)
    sys.stderr.write(proc.stderr)  # pyinfra's own log, for the journal or the CI log
    results = read_results(proc.stdout)
    problems = [stopped] if stopped else []
    if results is None and not stopped:  # no report is no news, never good news
        problems.append(
            f"pyinfra printed no readable --json report (exit status {proc.returncode}); its log is above. "
            "Fix: run the same pyinfra command by hand to see why."
        )
    hosts = summarise(results or {}, args.dry, proc.stderr)
    note_pending_restarts(hosts, proc.stderr)
    problems += note_backup_states(hosts, proc.stderr)
    if results is not None and proc.returncode != 0 and not any(host["failed"] for host in hosts.values()):
        problems.append(f"pyinfra exited {proc.returncode} without naming a failed host; its log is above.")
    status = exit_status(hosts, proc.returncode or 0, problems)
    report = {
        "started": started,
        "finished": now(),
        "seconds": round(time.monotonic() - clock, 1),
        "mode": mode,
        "inventory": args.inventory,
        "status": STATUS_NAMES[status],
        "pyinfra_exit_status": proc.returncode,
        "problems": problems,
        "hosts": hosts,
    }
    path = write_report(report_dir, report)
    if args.textfile_dir:
        write_textfile(Path(args.textfile_dir), report)
    print_summary(report, path, args.dry)
    return status


def _age(seconds) -> str:
    seconds = int(seconds or 0)
    return f"{seconds}s" if seconds < 120 else (f"{seconds // 60}min" if seconds < 7200 else f"{seconds // 3600}h")


def backup_line(state: dict) -> str:
    """One line of a host's backup state for the summary: backups, the WAL archive, the drill."""
    parts = []
    for key, what in (("last_full", "last full"), ("last_diff", "last diff/incr")):
        backup = state.get(key)
        parts.append(f"{what} {backup['at']} ({_age(backup['age_seconds'])} ago)" if backup else f"{what}: none")
    if state.get("repository") != "ok":
        parts.append(f"repository: {state.get('repository')}")
    wal = state.get("wal_archive") or {}
    waiting = f"{wal.get('backlog_files', 0)} segments wait, oldest {wal.get('lag_seconds', 0)}s"
    if wal.get("status") == "failing":
        parts.append(f"WAL archive FAILING: {wal.get('reason')} ({waiting})")
    else:
        parts.append(f"WAL archive {wal.get('status')} ({waiting})")
    drill = state.get("drill")
    parts.append(f"drill {drill.get('result')} ({drill.get('started_at')})" if drill else "drill: never run")
    return "backups: " + "; ".join(parts)


def print_summary(report: dict, path: Path, dry: bool) -> None:
    verb = "would change" if dry else "changed"
    hosts = report["hosts"]
    print(f"nightly {report['mode']}: {report['status']} ({len(hosts)} hosts, {report['seconds']}s); report: {path}")
    for name, host in sorted(hosts.items()):
        detail = "; ".join(
            [f"{verb}: {op}" for op in host["changed"]]
            + [f"FAILED: {op}" for op in host["failed"]]
            + [f"not run: {op}" for op in host.get("not_run", [])]
            + [f"restart pending: {', '.join(host['restart_pending'])}"] * bool(host["restart_pending"])
        )
        print(f"  {name:<24} {host['status']:<7} {detail}")
        for message in host.get("messages", []):
            print(f"  {'':<24} {'':<7} {message}")
        if host.get("backups"):
            print(f"  {'':<24} {'':<7} {backup_line(host['backups'])}")
    for problem in report["problems"]:
        print(f"  {problem}")


if __name__ == "__main__":
    sys.exit(main())
