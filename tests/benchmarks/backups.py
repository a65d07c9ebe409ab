"""Benchmark: backup and restore throughput against a plain copy, and the WAL archive's lag
(prints numbers; no asserts).

    sudo .venv/bin/python -m tests.benchmarks.backups [ROWS] [DIMENSIONS]

Boots one fresh test host with the lab's S3 (moto behind stunnel) and IMDSv2 stand-ins,
deploys it with backups, loads ROWS x DIMENSIONS random vectors (default 330,000 x 768: over
1 GB), then, in the same run on the same host and data:

1. a plain copy of the data directory (``cp -a`` to the same disk, then ``sync``) without
   ``pg_wal``, as a backup leaves it out too (the archive has it): the physical floor;
2. a full backup (``pgvector-backup full``: pgBackRest, zstd level 3, encrypted, to S3);
3. a restore of it into another directory (``pgbackrest restore``, no WAL replay);
4. the restore drill (restore, start, recovery, amcheck, k-NN, row counts);
5. the archive lag under a steady insert load: for each sampled commit, the seconds from
   COMMIT until its WAL segment is an object in the bucket (seen by listing the bucket).
"""

from __future__ import annotations

import shlex
import shutil
import statistics
import sys
import threading
import time

from tests.benchmarks.common import fresh_hosts
from tests.hosts.aws import S3, Imds
from tests.hosts.lab import GATEWAY
from tests.hosts.runner import deploy, write_inventory

BUCKET = "pgv-bench-backups"
CIPHER = "bench-repository-passphrase-0123456789"
CA_ON_HOST = "/etc/pgv-lab/s3-ca.pem"
LOAD_SECONDS = 90


def long_sudo(host, command: str) -> str:
    """``host.sudo`` without its 10-minute ssh timeout: a 1 GB backup to the lab's S3 on 2 busy
    cores can take longer than that."""
    return host.ssh(f"sudo sh -c {shlex.quote(command)}", timeout=3600).stdout


def timed(action) -> tuple[float, object]:
    started = time.monotonic()
    result = action()
    return time.monotonic() - started, result


def main() -> int:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 330_000
    dims = int(sys.argv[2]) if len(sys.argv) > 2 else 768
    with fresh_hosts([("bench-bk", 211)]) as (data, (host,), work):
        s3 = S3(work / "s3", GATEWAY)
        s3.client().create_bucket(Bucket=BUCKET)
        (host.root / "etc/pgv-lab").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(s3.ca.ca, host.root / CA_ON_HOST[1:])
        imds = Imds(host, work)
        try:
            data = {
                **data, "pg_backup_s3_bucket": BUCKET, "pg_backup_s3_endpoint": s3.endpoint,
                "pg_backup_s3_ca_file": CA_ON_HOST, "pg_backup_cipher_pass_env": "PGV_BENCH_CIPHER",
            }  # fmt: skip
            inventory = write_inventory(work / "inventory.py", [host.inventory_entry(**data)])
            result = deploy(inventory, env={"PGV_BENCH_CIPHER": CIPHER})
            assert result.returncode == 0, result.output
            host.psql(f"CREATE TABLE items (id bigint PRIMARY KEY, embedding vector({dims}))")
            def load():
                for first in range(1, rows + 1, 25_000):  # batches: each psql well within ssh's timeout
                    last = min(rows, first + 24_999)
                    host.psql(
                        f"INSERT INTO items SELECT i, (SELECT array_agg(random()::real) FROM generate_series(1, {dims}) "
                        f"WHERE i > 0)::vector FROM generate_series({first}, {last}) i"
                    )
                host.psql("CHECKPOINT")

            load_s, _ = timed(load)
            # The sizes and throughputs are of the data directory without pg_wal, which
            # pgBackRest does not copy (a 1 GB load leaves up to max_wal_size of WAL there).
            wal = int(host.sudo("du -sb /var/lib/postgresql/15/main/pg_wal | cut -f1"))
            size = int(host.sudo("du -sb /var/lib/postgresql/15/main | cut -f1")) - wal
            database = int(host.psql("SELECT pg_database_size('postgres')"))
            copy_s, _ = timed(lambda: long_sudo(host, (
                "install -d -m 0700 -o postgres -g postgres /var/tmp/copy && cd /var/lib/postgresql/15/main && "
                "find . -mindepth 1 -maxdepth 1 ! -name pg_wal -exec cp -a -t /var/tmp/copy {} + && sync"
            )))  # fmt: skip
            host.sudo("rm -rf /var/tmp/copy")  # not timed: neither backup nor restore removes anything
            backup_s, _ = timed(lambda: long_sudo(host, "/usr/local/lib/pgvector-deploy/pgvector-backup full"))
            stored = int(host.sudo(
                "runuser -u postgres -- pgbackrest --config=/etc/pgbackrest/pgbackrest.conf --stanza=pgvector --output=json info"
                " | grep -o '\"repository\":{\"delta\":[0-9]*' | tail -n1 | grep -o '[0-9]*$'"
            ).strip() or 0)  # fmt: skip
            restore_s, _ = timed(lambda: long_sudo(host, 
                "install -d -m 0700 -o postgres -g postgres /var/tmp/restore && runuser -u postgres -- pgbackrest "
                "--config=/etc/pgbackrest/pgbackrest.conf --stanza=pgvector --pg1-path=/var/tmp/restore --type=immediate "
                "--archive-mode=off restore && sync"
            ))  # fmt: skip
            host.sudo("rm -rf /var/tmp/restore")
            drill_s, _ = timed(lambda: long_sudo(host, "/usr/local/lib/pgvector-deploy/pgvector-restore-drill >/dev/null"))
            report(rows, dims, size, wal, database, load_s, copy_s, backup_s, restore_s, drill_s, stored)
            lags = archive_lag(host, s3)
        finally:
            # PostgreSQL stopped while S3 still answers: its shutdown archives the last WAL, and
            # with S3 gone archive-push would retry until the host's stop times out.
            host.sudo("systemctl stop postgresql", check=False)
            imds.stop()
            s3.stop()
    if lags:
        print(f"archive lag, commit to WAL object in S3, {len(lags)} commits under load: median {statistics.median(lags):.1f} s, "
              f"max {max(lags):.1f} s")  # fmt: skip
    return 0


def report(rows, dims, size, wal, database, load_s, copy_s, backup_s, restore_s, drill_s, stored) -> None:
    """Printed before the archive lag is measured, so a failure there keeps these numbers."""
    mb = size / 1e6
    print(f"\n{rows:,} x {dims} vectors: data directory {mb:,.0f} MB without pg_wal ({wal / 1e6:,.0f} MB; "
          f"database {database / 1e6:,.0f} MB), loaded in {load_s:.0f} s")
    print(f"{'measurement':<62} {'seconds':>8} {'MB/s':>8}")
    for label, seconds in (
        ("plain copy of the data directory (cp -a, sync; no pg_wal): the floor", copy_s),
        ("full backup to S3 (pgBackRest, zstd 3, aes-256-cbc)", backup_s),
        ("restore of that backup into another directory", restore_s),
        ("restore drill (restore, recovery, amcheck, k-NN, counts)", drill_s),
    ):
        print(f"{label:<62} {seconds:>8.1f} {mb / seconds:>8.1f}")
    print(f"stored in S3 for the full backup: {stored / 1e6:,.0f} MB")
    print(f"backup / copy: {backup_s / copy_s:.2f}; restore / copy: {restore_s / copy_s:.2f}", flush=True)


def archive_lag(host, s3: S3) -> list[float]:
    """A steady insert load (one row of 1,000 bytes every 10 ms, committed) for LOAD_SECONDS;
    every 5 s a commit is sampled (its WAL segment's name and the time), while the bucket is
    listed every 0.5 s (when each segment first appears). Lag: first seen - committed."""
    seen: dict[str, float] = {}
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            for key in s3.keys(BUCKET, ""):
                seen.setdefault(key.rsplit("/", 1)[-1][:24], time.time())
            time.sleep(0.5)

    # Made before either thread starts: the samples insert into it from the first moment.
    host.psql("CREATE TABLE IF NOT EXISTS load (t timestamptz, pad text)")
    load = threading.Thread(target=lambda: host.sudo(
        f"end=$(( $(date +%s) + {LOAD_SECONDS} )); while [ $(date +%s) -lt $end ]; do "
        "echo \"INSERT INTO load VALUES (now(), repeat('x', 1000)); SELECT pg_sleep(0.01);\"; done | "
        "runuser -u postgres -- psql -XAtq >/dev/null"
    ), daemon=True)  # fmt: skip
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    load.start()
    samples: list[tuple[float, str]] = []
    started = time.monotonic()
    while time.monotonic() - started < LOAD_SECONDS - 5:
        host.psql("INSERT INTO load VALUES (now(), 'sample')")
        samples.append((time.time(), host.psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())")))
        time.sleep(5)
    deadline = time.monotonic() + 180
    while any(segment not in seen for _, segment in samples) and time.monotonic() < deadline:
        time.sleep(1)
    stop.set()
    load.join(LOAD_SECONDS + 30)
    missing = sum(1 for _, segment in samples if segment not in seen)
    if missing:  # said, not dropped silently: a lag over the wait would otherwise look short
        print(f"{missing} of {len(samples)} sampled commits not in S3 within 180 s of the load's end", flush=True)
    return [seen[segment] - at for at, segment in samples if segment in seen]


if __name__ == "__main__":
    sys.exit(main())
