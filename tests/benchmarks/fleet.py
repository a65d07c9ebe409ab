"""Benchmark: nightly no-op cost for one host and for N hosts in parallel (prints numbers).

    sudo .venv/bin/python -m tests.benchmarks.fleet [N]        # N test hosts, default 4

Boots N fresh Debian 12 test hosts, provisions them in one parallel run, then times the
nightly re-application (``python -m pgvector_deploy.nightly``, no changes expected) on one
host and on all N, in the same run. Repeats each no-op run three times and reports the median,
with the control machine's CPU time (here the test hosts share its cores; a real fleet does not).
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tests.benchmarks.common import fresh_hosts, print_table
from tests.hosts.runner import REPO, deploy, write_inventory

REPEATS = 3


def nightly_run(inventory: Path, reports: Path) -> tuple[float, float]:
    """Wall seconds of one nightly no-op run, and the control machine's CPU seconds for it
    (the nightly CLI and its pyinfra, user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pgvector_deploy.nightly", str(inventory), "--report-dir", str(reports)],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"nightly run was not clean (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def median_run(inventory: Path, reports: Path) -> tuple[float, float]:
    runs = [nightly_run(inventory, reports) for _ in range(REPEATS)]
    return statistics.median(wall for wall, _ in runs), statistics.median(cpu for _, cpu in runs)


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    with fresh_hosts([(f"bench-{n}", 210 + n) for n in range(count)]) as (data, made, work):
        entries = [host.inventory_entry(**data) for host in made]
        everyone = write_inventory(work / "all.py", entries)
        single = write_inventory(work / "one.py", entries[:1])

        fresh = deploy(everyone)
        assert fresh.returncode == 0, fresh.output
        one, one_cpu = median_run(single, work / "reports")
        many, many_cpu = median_run(everyone, work / "reports")

        print_table(
            [
                (f"fresh provision of {count} hosts in parallel", fresh.seconds),
                ("nightly no-op, 1 host (median of 3)", one),
                (f"nightly no-op, {count} hosts in parallel (median of 3)", many),
                ("  control machine CPU, 1 host", one_cpu),
                (f"  control machine CPU, {count} hosts", many_cpu),
            ]
        )
        print(f"{count} hosts / 1 host: {many / one:.2f}")
        # Here the test hosts share the control machine's cores; on a real fleet each host has its own.
        print(f"control CPU per extra host: {(many_cpu - one_cpu) / max(count - 1, 1):.2f} s")
        return 0


if __name__ == "__main__":
    sys.exit(main())
