"""What the benchmark scripts share: a lab with fresh hosts, and a table of numbers."""

from __future__ import annotations

import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from tests.hosts.lab import Lab, prerequisites_missing
from tests.hosts.tarballs import REAL_VERSION, real_tarball


@contextmanager
def fresh_hosts(names_and_indexes: list[tuple[str, int]]):
    """A started lab serving the real tarball, with fresh booted hosts; all torn down after.

    Yields ``(data, hosts, workdir)``, ``data`` being the host data that builds that tarball.
    """
    missing = prerequisites_missing()
    if missing:
        sys.exit(f"cannot run: {missing}")
    work = Path(tempfile.mkdtemp(prefix="pgv-bench-"))
    lab = Lab(work).start()
    made = []
    try:
        url = lab.serve(real_tarball(), f"v{REAL_VERSION}.tar.gz")
        data = {"pgvector_version": REAL_VERSION, "pgvector_allow_insecure": True, "pgvector_url": url}
        for name, index in names_and_indexes:
            made.append(lab.host(name, index).create().boot())
        yield data, made, work
    finally:
        for host in made:
            host.destroy()
        lab.stop()


def print_table(rows: list[tuple[str, float]]) -> None:
    width = max(len(label) for label, _ in rows) + 2
    print(f"\n{'measurement':<{width}} {'seconds':>8}")
    for label, seconds in rows:
        print(f"{label:<{width}} {seconds:>8.1f}")
    print()
