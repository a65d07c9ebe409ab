"""files/backups/pgvector-backup-status run for real against a throwaway PostgreSQL 15 (its
settings file moved into the test's directory): it runs SQL as superuser with the pinned
client settings (adv14 #10: an operator an app role made in public ran as postgres), and its
metrics say when the repository or PostgreSQL did not answer instead of vanishing (#16)."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from pgvector_deploy.shell import SUPERUSER_OPTIONS

from .conftest import AS_POSTGRES, PG_BINDIR, throwaway_psql, throwaway_server

SCRIPT = Path(__file__).resolve().parents[2] / "files" / "backups" / "pgvector-backup-status"


def run_status(base: Path, textfile: Path) -> dict[str, str]:
    env = base / "backup.env"
    env.write_text(
        f"PGBR_CONFIG=/nonexistent/pgbackrest.conf\nPGBR_STANZA=pgvector\nPGV_BINDIR={PG_BINDIR}\nPGV_DATA_DIR={base}/data\n"
        f"PGV_SOCKET_DIR={base}\nPGV_PORT=5432\nPGV_TEXTFILE_DIR={textfile}\n"
    )
    script = SCRIPT.read_text().replace("/etc/pgvector-deploy/backup.env", str(env))
    subprocess.run(["sh", "-c", script], check=True, capture_output=True, text=True, timeout=120)
    lines = (textfile / "pgvector_backup.prom").read_text().splitlines()
    return dict(line.split(" ", 1) for line in lines if line and not line.startswith("#"))


def test_the_status_script_pins_the_superuser_settings():
    assert f"PGOPTIONS='{SUPERUSER_OPTIONS}'" in SCRIPT.read_text()


def test_an_operator_planted_in_public_never_runs_as_postgres_and_the_gauges_say_what_answered():
    with throwaway_server("pgv-status-") as base, tempfile.TemporaryDirectory() as textfile:
        psql = throwaway_psql(base)
        # A cluster upgraded from PG 14 or older: PUBLIC may still create in postgres's public schema.
        psql("GRANT CREATE ON SCHEMA public TO PUBLIC")
        psql("CREATE ROLE app LOGIN")
        psql("CREATE TABLE public.ran (who text); GRANT INSERT ON public.ran TO PUBLIC")
        psql(
            "CREATE FUNCTION public.cat(text, bigint) RETURNS text LANGUAGE sql AS "
            "$$ INSERT INTO public.ran VALUES (current_user) RETURNING 'x' $$;"
            "CREATE OPERATOR public.|| (leftarg = text, rightarg = bigint, function = public.cat)",
            user="app",
        )
        metrics = run_status(base, Path(textfile))
        assert psql("SELECT count(*) FROM public.ran WHERE who = 'postgres'") == "0"
        assert metrics["pgvector_backup_count"] == "0" and metrics["pgvector_backup_info_ok"] == "0"
        assert metrics["pgvector_backup_server_up"] == "1" and metrics["pgvector_wal_archived_total"] == "0"

        # The repository unreadable: the last backup as the previous file knew it, its age growing.
        prom = Path(textfile) / "pgvector_backup.prom"
        prom.write_text(prom.read_text() + "pgvector_backup_last_timestamp_seconds 1000\npgvector_backup_last_full_timestamp_seconds 900\n")
        metrics = run_status(base, Path(textfile))
        assert metrics["pgvector_backup_last_timestamp_seconds"] == "1000"
        assert abs(int(metrics["pgvector_backup_last_age_seconds"]) - (time.time() - 1000)) < 60
        assert metrics["pgvector_backup_last_full_timestamp_seconds"] == "900"

        subprocess.run([*AS_POSTGRES, f"{PG_BINDIR}/pg_ctl", "-D", f"{base}/data", "-m", "fast", "-w", "stop"], check=True, capture_output=True)
        metrics = run_status(base, Path(textfile))
        assert metrics["pgvector_backup_server_up"] == "0" and metrics["pgvector_backup_last_timestamp_seconds"] == "1000"
