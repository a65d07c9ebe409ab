"""The restore's shell (backups.restore_script) against a real PostgreSQL 15 that archives into
a real local pgBackRest 2.45 repository (posix): the latest state restored over the running
cluster by swapping directories, pgBackRest's recovery settings reset after; and a target
after the last archived WAL (adv14 #12: PostgreSQL stops with a FATAL in recovery) fails at
once, naming that line, with the previous directory back and running."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path


from pgvector_deploy import backups

from .conftest import AS_POSTGRES, PG_BINDIR, skip_or_fail, throwaway_psql, throwaway_server
from .test_backups import BACKUP, plan_with


def restore(base: Path, target: str | None = None) -> subprocess.CompletedProcess:
    data = {**BACKUP, "restore_over_existing": True, **({"restore_target_time": target} if target else {})}
    plan, _ = plan_with(data, systemd=False)
    options = f"-c listen_addresses='' -c unix_socket_directories={base} -p 5432"
    start = f"runuser -u postgres -- {PG_BINDIR}/pg_ctl -D {base}/data -o \"{options}\" -l {base}/log -w -t 30 start"
    platform = dataclasses.replace(plan.platform, data_dir=f"{base}/data", socket_dir=str(base), bindir=PG_BINDIR, start_without_systemd=start)
    script = backups.restore_script(dataclasses.replace(plan, platform=platform, port=5432))
    script = script.replace(backups.PGBR_CONFIG, f"{base}/pgbackrest.conf").replace("/var/log/postgresql/postgresql-*-main.log", f"{base}/log")
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=300)


def test_restores_over_a_running_cluster_for_real():
    if shutil.which("pgbackrest") is None:
        skip_or_fail("pgbackrest is not installed here (tests/bootstrap.sh installs it)")
    with throwaway_server("pgv-restore-") as base:
        psql = throwaway_psql(base)
        (base / "repo").mkdir()
        shutil.chown(base / "repo", "postgres")
        config = base / "pgbackrest.conf"
        config.write_text(
            f"[global]\nrepo1-path={base}/repo\nrepo1-retention-full=2\nlog-level-file=off\nlock-path={base}/lock\n"
            f"[pgvector]\npg1-path={base}/data\npg1-port=5432\npg1-socket-path={base}\n"
        )
        shutil.chown(config, "postgres")
        pgbackrest = [*AS_POSTGRES, "pgbackrest", f"--config={config}", "--stanza=pgvector"]
        psql("ALTER SYSTEM SET archive_mode = on")
        psql(f"ALTER SYSTEM SET archive_command = 'pgbackrest --config={config} --stanza=pgvector archive-push %p'")
        options = f"-c listen_addresses='' -c unix_socket_directories={base} -p 5432"
        subprocess.run([*AS_POSTGRES, f"{PG_BINDIR}/pg_ctl", "-D", f"{base}/data", "-o", options, "-l", f"{base}/log", "-w", "restart"],
                       check=True, capture_output=True)  # fmt: skip
        subprocess.run([*pgbackrest, "stanza-create"], check=True, capture_output=True)
        psql("CREATE TABLE t (i int); INSERT INTO t SELECT generate_series(1, 100)")
        subprocess.run([*pgbackrest, "--type=full", "backup"], check=True, capture_output=True)
        psql("INSERT INTO t SELECT generate_series(1, 50)")  # only in WAL: the restore switches and waits for it

        latest = restore(base)
        assert latest.returncode == 0, latest.stderr
        assert psql("SELECT count(*) FROM t") == "150" and psql("SELECT pg_is_in_recovery()") == "f"
        (aside,) = base.glob("data.before-restore-*")
        assert (aside / "PG_VERSION").exists() and not list(base.glob("data.restoring-*"))
        auto = (base / "data" / "postgresql.auto.conf").read_text()
        assert "restore_command" not in auto and "archive_mode = 'off'" in auto  # the archiving operation resets the latter
        shutil.rmtree(aside)

        psql("INSERT INTO t SELECT generate_series(1, 7)")  # never archived: its segment is not switched
        time.sleep(2)
        began = time.monotonic()
        after = restore(base, (datetime.now(timezone.utc) - timedelta(seconds=1)).isoformat())
        assert after.returncode == 1 and time.monotonic() - began < 120
        assert "FATAL:  recovery ended before configured recovery target was reached" in after.stderr
        assert "put back and started" in after.stderr
        assert psql("SELECT count(*) FROM t") == "157" and psql("SELECT pg_is_in_recovery()") == "f"
        assert sorted(p.name for p in base.glob("data*")) == ["data"]
