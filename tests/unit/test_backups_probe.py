"""The new pgbackrest.conf is tried before it replaces the old (backups.config_script), run
for real: pgBackRest 2.45 with a local posix repository made by a throwaway PostgreSQL 15
(tests/unit/conftest.py). A passphrase that does not decrypt the repository, or a stanza
made by another cluster, leaves the current file as it was (adv14 #3: the probe was
``repo-ls``, which needs neither, so the new file went in and archive-push broke)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from pgvector_deploy import backups
from pgvector_deploy.managed_files import BACKUP_DIR

from .conftest import AS_POSTGRES, PG_BINDIR, skip_or_fail, throwaway_server

PASS_A = "passphrase-A-0123456789abcdef"
PASS_B = "passphrase-B-0123456789abcdef"


def config(base: Path, passphrase: str, data: Path, comment: str = "") -> str:
    return (
        f"# test{comment}\n[global]\nrepo1-path={base}/repo\nrepo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass={passphrase}\n"
        f"log-level-file=off\nlock-path={base}/lock\n\n[pgvector]\npg1-path={data}\npg1-port=5432\npg1-socket-path={base}\n"
    )


@pytest.fixture(scope="module")
def repository():
    """A stanza made with passphrase A by a running cluster; yields (base, its data dir)."""
    if shutil.which("pgbackrest") is None:
        skip_or_fail("pgbackrest is not installed here (tests/bootstrap.sh installs it)")
    with throwaway_server("pgv-probe-") as base:
        (base / "repo").mkdir()
        shutil.chown(base / "repo", "postgres")
        (base / "a.conf").write_text(config(base, PASS_A, base / "data"))
        shutil.chown(base / "a.conf", "postgres")
        subprocess.run([*AS_POSTGRES, "pgbackrest", f"--config={base}/a.conf", "--stanza=pgvector", "stanza-create"],
                       check=True, capture_output=True)  # fmt: skip
        yield base, base / "data"


def probe(base: Path, current: str, new: str, cluster_data: Path | None, debian12):
    """Runs config_script with /etc/pgbackrest and the copies' directory moved under ``base``."""
    etc = base / "etc"
    shutil.rmtree(etc, ignore_errors=True)
    shutil.rmtree(base / "copies", ignore_errors=True)
    etc.mkdir()
    (etc / "pgbackrest.conf").write_text(current)
    (etc / "pgbackrest.conf").chmod(0o600)
    shutil.chown(etc / "pgbackrest.conf", "postgres", "postgres")
    cluster = None if cluster_data is None else dataclasses.replace(debian12, data_dir=str(cluster_data), bindir=PG_BINDIR)
    script = backups.config_script("s3://bucket/db-1", cluster).replace("/etc/pgbackrest", str(etc)).replace(BACKUP_DIR, str(base / "copies"))
    result = subprocess.run(["sh", "-c", script], input=new, capture_output=True, text=True, timeout=120)
    return result, (etc / "pgbackrest.conf").read_text()


def test_a_passphrase_that_does_not_decrypt_the_repository_changes_nothing(repository, debian12):
    base, data = repository
    current = config(base, PASS_A, data)
    result, after = probe(base, current, config(base, PASS_B, data), data, debian12)
    assert result.returncode == 1 and "cannot decrypt s3://bucket/db-1" in result.stderr and "passphrase" in result.stderr
    assert after == current and PASS_B not in result.stderr + result.stdout


def test_a_stanza_of_another_cluster_changes_nothing(repository, debian12):
    base, data = repository
    other = base / "other"
    other.mkdir()
    shutil.chown(other, "postgres")
    subprocess.run([*AS_POSTGRES, f"{PG_BINDIR}/initdb", "-D", f"{other}/data", "-U", "postgres"], check=True, capture_output=True)
    current = config(base, PASS_A, other / "data", " old")
    result, after = probe(base, current, config(base, PASS_A, other / "data"), other / "data", debian12)
    assert result.returncode == 1 and "holds the stanza of another cluster" in result.stderr
    assert "pg_backup_s3_prefix" in result.stderr and after == current


def test_the_right_passphrase_and_cluster_replace_the_file_and_keep_one_private_copy(repository, debian12):
    base, data = repository
    first = config(base, PASS_A, data, " 1")
    result, after = probe(base, first, config(base, PASS_A, data, " 2"), data, debian12)
    assert result.returncode == 0, result.stderr
    assert after == config(base, PASS_A, data, " 2")
    for n in (3, 4, 5):  # later changes: only the newest copy of the secret-bearing file stays (adv14 #20)
        time.sleep(1.1)  # the copies are named by the second
        current = (base / "etc" / "pgbackrest.conf").read_text()
        script = backups.config_script("s3://bucket/db-1", None).replace("/etc/pgbackrest", str(base / "etc"))
        script = script.replace(BACKUP_DIR, str(base / "copies"))
        subprocess.run(["sh", "-c", script], input=config(base, PASS_A, data, f" {n}"), check=True, capture_output=True, text=True)
        assert current != (base / "etc" / "pgbackrest.conf").read_text()
    copies = sorted((base / "copies").rglob("pgbackrest.conf.bak-*"))
    assert len(copies) == 1 and oct(copies[0].stat().st_mode & 0o777) == "0o600"
    assert copies[0].read_text() == config(base, PASS_A, data, " 4")


def test_a_bucket_s3_does_not_know_is_named_as_unreachable_and_changes_nothing(tmp_path, debian12):
    """pgbackrest info exits 0 for a missing bucket, with status 99 and S3's error in the
    message (as moto and S3 answer): the run must say the repository cannot be reached, with
    S3's code, not only "an error status", and keep the current file."""
    # runuser -u postgres runs it: a directory postgres can reach (tmp_path's parents are root's).
    reachable = Path(tempfile.mkdtemp(prefix="pgv-probe-stub-", dir="/tmp"))
    reachable.chmod(0o755)
    stub = reachable / "pgbackrest"
    message = (
        "[039]: HTTP request failed with 404 (Not Found):\\n*** Response Content ***:\\n<?xml version=\\\"1.0\\\" "
        "encoding=\\\"UTF-8\\\"?><Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message>"
        "<BucketName>pgv-no-such-bucket</BucketName></Error>"
    )
    stub.write_text(f"#!/bin/sh\ncat <<'EOF'\n[{{\"name\":\"pgvector\",\"status\":{{\"code\":99,\"message\":\"{message}\"}}}}]\nEOF\n")
    stub.chmod(0o755)
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "pgbackrest.conf").write_text("# current\n")
    script = (
        backups.config_script("s3://pgv-no-such-bucket/db-1")
        .replace("/etc/pgbackrest", str(etc))
        .replace(BACKUP_DIR, str(tmp_path / "copies"))
        .replace("timeout 120 pgbackrest", f"timeout 120 {stub}")
    )
    try:
        result = subprocess.run(["sh", "-c", script], input="# new\n", capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(reachable)
    assert result.returncode != 0
    assert "cannot reach the S3 repository with the new settings" in result.stdout + result.stderr
    assert "NoSuchBucket" in result.stdout + result.stderr
    assert (etc / "pgbackrest.conf").read_text() == "# current\n"
