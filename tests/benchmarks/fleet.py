"""Benchmark: nightly no-op cost for one host and for N hosts in parallel (prints numbers).

    sudo .venv/bin/python -m tests.benchmarks.fleet [N]        # N test hosts, default 4

Boots N fresh Debian 12 test hosts, provisions them in one parallel run, then times the
nightly re-application (``python -m pgvector_deploy.nightly``, no changes expected) on one
host and on all N, in the same run. Repeats each no-op run three times and reports the median.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from tests.benchmarks.common import fresh_hosts, print_table
from tests.hosts.runner import REPO, deploy, write_inventory

REPEATS = 3


def nightly_seconds(inventory: Path, reports: Path) -> float:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pgvector_deploy.nightly", str(inventory), "--report-dir", str(reports)],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"nightly run was not clean (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return seconds


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    with fresh_hosts([(f"bench-{n}", 210 + n) for n in range(count)]) as (data, made, work):
        entries = [host.inventory_entry(**data) for host in made]
        everyone = write_inventory(work / "all.py", entries)
        single = write_inventory(work / "one.py", entries[:1])

        fresh = deploy(everyone)
        assert fresh.returncode == 0, fresh.output
        one = statistics.median(nightly_seconds(single, work / "reports") for _ in range(REPEATS))
        many = statistics.median(nightly_seconds(everyone, work / "reports") for _ in range(REPEATS))

        print_table(
            [
                (f"fresh provision of {count} hosts in parallel", fresh.seconds),
                ("nightly no-op, 1 host (median of 3)", one),
                (f"nightly no-op, {count} hosts in parallel (median of 3)", many),
            ]
        )
        print(f"{count} hosts / 1 host: {many / one:.2f}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
