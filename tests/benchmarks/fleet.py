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
import tempfile
import time
from pathlib import Path

from tests.hosts.lab import Lab, prerequisites_missing
from tests.hosts.runner import REPO, deploy, write_inventory
from tests.hosts.tarballs import REAL_VERSION, real_tarball

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
    missing = prerequisites_missing()
    if missing:
        print(f"cannot run: {missing}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="pgv-fleet-bench-"))
    lab = Lab(work).start()
    made = []
    try:
        url = lab.serve(real_tarball(), f"v{REAL_VERSION}.tar.gz")
        data = {"pgvector_version": REAL_VERSION, "pgvector_allow_insecure": True, "pgvector_url": url}
        made = [lab.host(f"bench-{n}", 210 + n).create().boot() for n in range(count)]
        entries = [host.inventory_entry(**data) for host in made]
        everyone = write_inventory(work / "all.py", entries)
        single = write_inventory(work / "one.py", entries[:1])

        fresh = deploy(everyone)
        assert fresh.returncode == 0, fresh.output
        one = statistics.median(nightly_seconds(single, work / "reports") for _ in range(REPEATS))
        many = statistics.median(nightly_seconds(everyone, work / "reports") for _ in range(REPEATS))

        print(f"\n{'measurement':<52} {'seconds':>8}")
        print(f"{f'fresh provision of {count} hosts in parallel':<52} {fresh.seconds:>8.1f}")
        print(f"{'nightly no-op, 1 host (median of 3)':<52} {one:>8.1f}")
        print(f"{f'nightly no-op, {count} hosts in parallel (median of 3)':<52} {many:>8.1f}")
        print(f"\n{count} hosts / 1 host: {many / one:.2f}")
        return 0
    finally:
        for host in made:
            host.destroy()
        lab.stop()


if __name__ == "__main__":
    sys.exit(main())
