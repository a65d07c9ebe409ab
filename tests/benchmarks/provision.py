"""Benchmark: how long provisioning takes, side by side in one run (prints numbers; no asserts).

    sudo .venv/bin/python -m tests.benchmarks.provision

Boots two identical fresh Debian 12 test hosts (same cached root filesystem and the same
cached .debs, so downloads weigh the same on both) and measures:

1. the raw commands a person would type on host A (apt install of server, headers and
   compiler, download, unpack, make, make install, CREATE EXTENSION);
2. ``pyinfra ... deploy/postgres.py -y`` on host B, fresh;
3. the same deploy again on host B (no-op: zero changes expected), and
4. pyinfra running an empty deploy on host B (the floor for any pyinfra run), alternating with
   3, five times each; the medians are compared.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from tests.benchmarks.common import fresh_hosts, print_table
from tests.hosts.runner import deploy, write_inventory
from tests.hosts.tarballs import DEFAULT_VERSION

REPEATS = 5

RAW_COMMANDS = """set -e
sudo DEBIAN_FRONTEND=noninteractive apt-get -q update
sudo DEBIAN_FRONTEND=noninteractive apt-get -q -y install --no-install-recommends postgresql-15 postgresql-server-dev-15 gcc make libc6-dev
cd /tmp && curl -fsSL -o v{version}.tar.gz {url} && tar xzf v{version}.tar.gz && cd pgvector-{version}
make -j"$(nproc)" OPTFLAGS="" with_llvm=no PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
sudo make install with_llvm=no PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
sudo -u postgres psql -c 'CREATE EXTENSION vector'
"""


def timed(action):
    started = time.monotonic()
    result = action()
    return time.monotonic() - started, result


def main() -> int:
    with fresh_hosts([("bench-raw", 201), ("bench-deploy", 202)]) as (data, (raw_host, deploy_host), work):
        inventory = write_inventory(work / "inventory.py", [deploy_host.inventory_entry(**data)])
        empty = work / "empty_deploy.py"
        empty.write_text("# no operations: what any pyinfra run costs\n")

        commands = RAW_COMMANDS.format(version=DEFAULT_VERSION, url=data["pgvector_url"])
        raw_seconds, _ = timed(lambda: raw_host.ssh(commands))
        fresh = deploy(inventory)
        assert fresh.returncode == 0, fresh.output
        # No-op and empty runs alternate, REPEATS times each; the medians are compared.
        noop_times, empty_times = [], []
        for _ in range(REPEATS):
            noop = deploy(inventory)
            assert noop.returncode == 0 and noop.changed(deploy_host.name) == [], noop.output
            noop_times.append(noop.seconds)
            seconds, empty_run = timed(
                lambda: subprocess.run([sys.executable, "-m", "pyinfra", str(inventory), str(empty), "-y"], capture_output=True)
            )
            assert empty_run.returncode == 0
            empty_times.append(seconds)
        noop_seconds, empty_seconds = statistics.median(noop_times), statistics.median(empty_times)

        print_table(
            [
                ("raw commands by hand, fresh host", raw_seconds),
                ("deploy/postgres.py, fresh host", fresh.seconds),
                (f"deploy/postgres.py, no-op re-run (median of {REPEATS})", noop_seconds),
                (f"pyinfra empty deploy, same host (median of {REPEATS})", empty_seconds),
            ]
        )
        print(f"fresh provision / raw commands: {fresh.seconds / raw_seconds:.2f}")
        print(f"no-op re-run / empty deploy:    {noop_seconds / empty_seconds:.2f}")
        print(f"no-op re-run changed operations: {len(noop.changed(deploy_host.name))}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
