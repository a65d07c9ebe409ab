"""What the benchmark scripts share: a lab with fresh hosts, and a table of numbers."""

from __future__ import annotations

import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from tests.hosts.lab import Lab, prerequisites_missing
from tests.hosts.tarballs import DEFAULT_VERSION, TarballMismatch, TarballMissing, release_tarball


@contextmanager
def fresh_hosts(names_and_indexes: list[tuple[str, int]]):
    """A started lab serving the default release (the real 0.8.6 tarball, from the shared
    directory), with fresh booted hosts; all torn down after.

    Yields ``(data, hosts, workdir)``, ``data`` being the host data that builds that tarball.
    """
    missing = prerequisites_missing()
    if missing:
        sys.exit(f"cannot run: {missing}")
    try:
        tarball = release_tarball(DEFAULT_VERSION)
    except (TarballMissing, TarballMismatch) as error:
        sys.exit(f"cannot run: {error}")
    work = Path(tempfile.mkdtemp(prefix="pgv-bench-"))
    lab = Lab(work).start()
    made = []
    try:
        data = {"pgvector_version": DEFAULT_VERSION, "pgvector_url": lab.serve(tarball)}
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
