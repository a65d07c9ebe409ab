"""The build stamp and the shell that fetches and builds pgvector (pgvector_deploy.pgvector)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import stat
import subprocess

import pytest

from pgvector_deploy import pgvector
from pgvector_deploy.loading import load_settings
from pgvector_deploy.paths import BUILD_STAMP
from pgvector_deploy.pgvector import (
    WITH_LLVM,
    _newer_than,
    build_script,
    desired_stamp,
    download_script,
    is_current,
    verify_and_store_script,
)

from .conftest import sh_syntax_error

TARBALL = "/var/cache/pgvector-deploy/pgvector-0.8.6.tar.gz"
PG_VERSION = "PostgreSQL 15.20 (Debian 15.20-0+deb12u1)"
# What the recorded provisioned host was built with.
RECORDED_BUILD = {"pgvector_version": "0.8.0", "pgvector_allow_insecure": True}


def script_for(platform, portable=True):
    settings = load_settings({"pgvector_portable": portable})
    stamp = desired_stamp(settings, "x86_64", PG_VERSION)
    return build_script(platform, settings, TARBALL, stamp, 5432), stamp


# --- desired_stamp / is_current -----------------------------------------------------------


def test_desired_stamp_records_every_build_input():
    settings = load_settings({"pgvector_portable": False})
    assert desired_stamp(settings, "aarch64", PG_VERSION) == {
        "version": "0.8.6",
        "sha256": settings.release.sha256,
        "arch": "aarch64",
        "pg_version": PG_VERSION,
        "optflags": "-march=native",
        "with_llvm": "no",
    }
    assert WITH_LLVM == "no"


def test_desired_stamp_follows_an_explicit_sha256():
    sha = "b" * 64
    assert desired_stamp(load_settings({"pgvector_sha256": sha}), "x86_64", PG_VERSION)["sha256"] == sha


def test_recorded_provisioned_build_is_current(provisioned_state):
    stamp = desired_stamp(load_settings(RECORDED_BUILD), "x86_64", provisioned_state["pg_version"])
    assert is_current(provisioned_state, stamp) is True


def test_fresh_host_is_not_current(fresh_state):
    stamp = desired_stamp(load_settings({}), "x86_64", fresh_state["pg_version"])
    assert is_current(fresh_state, stamp) is False


def test_new_postgres_minor_makes_the_build_stale(provisioned_state):
    stamp = desired_stamp(load_settings(RECORDED_BUILD), "x86_64", "PostgreSQL 15.21 (Debian 15.21-0+deb12u1)")
    assert is_current(provisioned_state, stamp) is False


def test_different_optflags_make_the_build_stale(provisioned_state):
    settings = load_settings({**RECORDED_BUILD, "pgvector_portable": False})
    assert is_current(provisioned_state, desired_stamp(settings, "x86_64", provisioned_state["pg_version"])) is False


def test_different_version_makes_the_build_stale(provisioned_state):
    stamp = desired_stamp(load_settings({}), "x86_64", provisioned_state["pg_version"])
    assert is_current(provisioned_state, stamp) is False


def test_missing_library_makes_the_build_stale(provisioned_state):
    stamp = desired_stamp(load_settings(RECORDED_BUILD), "x86_64", provisioned_state["pg_version"])
    assert is_current({**provisioned_state, "library": None}, stamp) is False


def test_control_file_of_another_version_makes_the_build_stale(provisioned_state):
    stamp = desired_stamp(load_settings(RECORDED_BUILD), "x86_64", provisioned_state["pg_version"])
    assert is_current({**provisioned_state, "control_version": "0.7.4"}, stamp) is False


def test_damaged_stamp_makes_the_build_stale(provisioned_state):
    stamp = desired_stamp(load_settings(RECORDED_BUILD), "x86_64", provisioned_state["pg_version"])
    assert is_current({**provisioned_state, "stamp": None}, stamp) is False


@pytest.mark.parametrize(
    "installed, expected", [("0.8.6", True), ("0.10.0", True), ("0.8.0", False), ("0.7.4", False), ("1.0", False)]
)
def test_newer_than(installed, expected):
    assert _newer_than(installed, (0, 8, 0)) is expected


# --- build_script -------------------------------------------------------------------------


def test_build_script_is_valid_sh(debian12):
    for portable in (True, False):
        assert sh_syntax_error(script_for(debian12, portable)[0]) == ""


def test_build_script_uses_the_absolute_pg_config_of_postgres_15(debian12):
    script, _ = script_for(debian12)
    assert script.count("PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config ") == 2  # build and install
    assert "PG_CONFIG=pg_config" not in script
    assert "/usr/bin/pg_config" not in script
    assert not re.search(r"(?<![/\w])pg_config --", script)  # no bare pg_config call either


def test_build_script_disables_llvm_bitcode(debian12):
    script, _ = script_for(debian12)
    assert script.count("with_llvm=no") == 2


def test_portable_build_has_empty_optflags(debian12):
    script, _ = script_for(debian12, portable=True)
    assert script.count("OPTFLAGS='' ") == 2
    assert "-march=native" not in script


def test_native_build_uses_march_native(debian12):
    script, _ = script_for(debian12, portable=False)
    assert script.count("OPTFLAGS=-march=native ") == 2


def test_build_script_verifies_the_tarball_before_unpacking(debian12):
    script, stamp = script_for(debian12)
    check = script.index(f'[ "$actual" = {stamp["sha256"]} ]')
    assert check < script.index("tar -xzf")


def test_build_script_installs_into_a_staging_dir(debian12):
    script, _ = script_for(debian12)
    assert 'install PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config' in script
    assert 'DESTDIR="$work/stage"' in script
    assert script.index('DESTDIR="$work/stage"') < script.index('cd "$work/stage"')


def test_build_script_places_vector_control_last(debian12):
    script, _ = script_for(debian12)
    loop = script.index("! -name vector.control | sort | while IFS= read -r file; do place")
    control_place = script.index('place "${control#./}"')
    assert loop < control_place
    assert script.index("done", loop) < control_place
    # nothing else is placed after the control file
    assert "place " not in script[control_place + 1:]


def test_build_script_checks_the_installed_control_version(debian12):
    script, _ = script_for(debian12)
    assert '"$(/usr/lib/postgresql/15/bin/pg_config --sharedir)/extension/vector.control"' in script
    assert '[ "$installed" = 0.8.6 ]' in script


def test_build_script_writes_the_stamp_json_last(debian12):
    script, stamp = script_for(debian12)
    printf_line = next(line for line in script.splitlines() if line.startswith("printf '%s\\n' "))
    words = shlex.split(printf_line)
    assert words[:2] == ["printf", "%s\\n"]
    assert json.loads(words[2]) == stamp
    assert words[3:] == [">", f"{BUILD_STAMP}.new"]
    assert f"mv -f {BUILD_STAMP}.new {BUILD_STAMP}" in script
    # the stamp is written only after the install was verified in PostgreSQL
    assert script.index("CREATE EXTENSION IF NOT EXISTS vector") < script.index(printf_line)


def test_control_version_mismatch_message_shows_the_installed_version(debian12, tmp_path):
    script, _ = script_for(debian12)
    check = next(line for line in script.splitlines() if line.startswith('[ "$installed" ='))
    result = subprocess.run(["sh", "-c", f"installed=0.7.4\n{check}"], capture_output=True, text=True, timeout=10)
    assert result.returncode == 1
    assert "default_version 0.7.4, expected 0.8.6" in result.stderr


# --- download_script / verify_and_store_script -------------------------------------------


def test_download_script_is_valid_sh():
    settings = load_settings({})
    assert sh_syntax_error(download_script(settings.url, TARBALL, settings.release.sha256)) == ""


def test_download_script_verifies_before_storing_and_removes_a_bad_download():
    expected = load_settings({}).release.sha256
    script = download_script("https://example.com/v0.8.6.tar.gz", TARBALL, expected)
    download = script.index('-o "$tmp" https://example.com/v0.8.6.tar.gz')
    digest = script.index('actual=$(sha256sum "$tmp"')
    compare = script.index(f'if [ "$actual" != {expected} ]; then')
    remove = script.index('rm -f "$tmp"', compare)
    fail = script.index("exit 1", remove)
    store = script.index(f'mv -f "$tmp" {TARBALL}')
    assert download < digest < compare < remove < fail < store
    error_line = script[remove:fail]
    assert f"expected {expected}" in error_line
    assert "has sha256 '\"${actual}\"'" in error_line


def test_download_script_quotes_the_url():
    url = "https://example.com/pgvector.tar.gz?a=1&b=2"
    script = download_script(url, TARBALL, "c" * 64)
    assert f"-o \"$tmp\" '{url}' ||" in script
    assert sh_syntax_error(script) == ""


def _run_verify(tmp_path, content: bytes, expected: str, source="https://example.com/v0.9.0.tar.gz"):
    candidate = tmp_path / "download.tmp"
    candidate.write_bytes(content)
    dest = tmp_path / "cache" / "pgvector-0.9.0.tar.gz"
    script = "set -eu\n" + verify_and_store_script(shlex.quote(str(candidate)), str(dest), expected, source)
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=10)
    return result, candidate, dest


def test_verify_and_store_removes_a_mismatching_file_and_names_both_digests(tmp_path):
    content = b"tampered tarball\n"
    expected = "d" * 64
    result, candidate, dest = _run_verify(tmp_path, content, expected)
    assert result.returncode == 1
    assert not candidate.exists()
    assert not dest.exists()
    assert f"has sha256 {hashlib.sha256(content).hexdigest()}, expected {expected}" in result.stderr
    assert "https://example.com/v0.9.0.tar.gz" in result.stderr
    assert "Fix:" in result.stderr


def test_verify_and_store_moves_a_matching_file_into_the_cache(tmp_path, monkeypatch):
    # The real cache dir is /var/cache/pgvector-deploy; point it into tmp_path for this run.
    monkeypatch.setattr(pgvector, "CACHE_DIR", str(tmp_path / "cache"))
    content = b"genuine tarball\n"
    result, candidate, dest = _run_verify(tmp_path, content, hashlib.sha256(content).hexdigest())
    assert result.returncode == 0, result.stderr
    assert not candidate.exists()
    assert dest.read_bytes() == content
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o644


def test_verify_and_store_prints_the_source_verbatim(tmp_path):
    source = "https://mirror.example.com/$(echo INJECTED)/v0.9.0.tar.gz"
    result, _, _ = _run_verify(tmp_path, b"tampered\n", "d" * 64, source=source)
    assert result.returncode == 1
    assert source in result.stderr


def test_a_tarball_that_is_not_the_requested_pgvector_is_removed_before_anything_is_installed(tmp_path, monkeypatch):
    """Right digest, wrong content (say a mirror's repack): refused at fetch, nothing stored."""
    import hashlib
    import io
    import tarfile

    from pgvector_deploy import pgvector as module

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("something-else/README")
        archive.addfile(info, io.BytesIO(b""))
    candidate = tmp_path / "download.tar.gz"
    candidate.write_bytes(buffer.getvalue())
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    monkeypatch.setattr(module, "CACHE_DIR", str(tmp_path / "cache"))
    dest = tmp_path / "cache" / "pgvector-0.9.0.tar.gz"
    script = "set -eu\n" + module.verify_and_store_script(str(candidate), str(dest), digest, "http://mirror/x", "0.9.0")
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=10)
    assert result.returncode == 1
    assert "is not pgvector 0.9.0 (no pgvector-0.9.0/vector.control in it)" in result.stderr
    assert not candidate.exists() and not dest.exists()


def test_build_script_stops_when_the_stamp_on_disk_already_says_this_build(tmp_path, debian12):
    """Another run built this very version while this one waited for the host lock: the stamp,
    library and control file on disk say so, and nothing is unpacked or compiled."""
    from pgvector_deploy.paths import BUILD_LOG

    settings = load_settings({})
    stamp = pgvector.desired_stamp(settings, "x86_64", "PostgreSQL 15.20")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "vector.so").write_bytes(b"\x7fELF")
    (tmp_path / "share" / "extension").mkdir(parents=True)
    (tmp_path / "share" / "extension" / "vector.control").write_text(f"default_version = '{settings.version}'\n")
    fake = tmp_path / "pg_config"
    fake.write_text(f'#!/bin/sh\ncase "$1" in --sharedir) echo {tmp_path}/share;; --pkglibdir) echo {tmp_path}/lib;; *) echo "PostgreSQL 15.20";; esac\n')
    fake.chmod(0o755)
    stamp_file = tmp_path / "build.json"
    script = (
        pgvector.build_script(debian12, settings, str(tmp_path / "missing.tar.gz"), stamp, 5432)
        .replace(debian12.pg_config, str(fake))
        .replace(BUILD_LOG, str(tmp_path / "build.log"))
        .replace(BUILD_STAMP, str(stamp_file))
    )
    stamp_file.write_text(json.dumps(stamp, sort_keys=True) + "\n")
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"pgvector {settings.version} is already built for PostgreSQL 15.20 (build stamp {stamp_file}); nothing to do\n"
    assert not (tmp_path / "build.log").exists()
    # Any other stamp (here: another version's) and the build goes on (and stops at the missing tarball).
    stamp_file.write_text(json.dumps({**stamp, "version": "0.8.5"}, sort_keys=True) + "\n")
    building = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert building.returncode == 1 and "missing.tar.gz is missing; the fetch step must run first" in building.stderr
    (tmp_path / "share" / "extension" / "vector.control").write_text("default_version = '0.8.5'\n")
    stamp_file.write_text(json.dumps(stamp, sort_keys=True) + "\n")
    assert "is missing" in subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30).stderr


def test_download_stops_when_the_cache_already_holds_the_verified_tarball(tmp_path):
    cached = tmp_path / "pgvector.tar.gz"
    cached.write_bytes(b"tarball")
    digest = hashlib.sha256(b"tarball").hexdigest()
    script = pgvector.download_script("http://192.0.2.1/never.tar.gz", str(cached), digest).replace("curl ", "false ")
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert cached.read_bytes() == b"tarball"
