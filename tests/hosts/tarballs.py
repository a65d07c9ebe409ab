"""The real pgvector tarball for tests, and a synthetic "next release" made from it.

GitHub is out of reach here. Debian's source archive carries pgvector 0.8.0's upstream
tarball byte-identical to GitHub's (its sha256 is the pinned one), fetched with apt-get
through a private apt configuration that leaves the machine's own sources alone. 0.8.0 is
below the security floor, so tests that use it say ``pgvector_allow_insecure`` openly.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

from .rootfs import CACHE

REAL_VERSION = "0.8.0"
DEBIAN_SOURCE = "pgvector=0.8.0-1"


def real_tarball() -> Path:
    """pgvector 0.8.0's upstream tarball, as ``v0.8.0.tar.gz`` (cached)."""
    target = CACHE / "tarballs" / f"v{REAL_VERSION}.tar.gz"
    if target.exists():
        return target
    apt = CACHE / "apt-source"
    for sub in ("lists/partial", "cache/archives/partial", "download"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text(
        "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main\n"
    )
    options = [
        f"-oDir::Etc::SourceList={apt / 'sources.list'}",
        "-oDir::Etc::SourceParts=/dev/null",
        f"-oDir::State::Lists={apt / 'lists'}",
        f"-oDir::Cache={apt / 'cache'}",
        "-oAPT::Sandbox::User=root",
    ]
    subprocess.run(["apt-get", *options, "-q", "update"], check=True, capture_output=True)
    subprocess.run(
        ["apt-get", *options, "source", "--download-only", DEBIAN_SOURCE],
        check=True,
        capture_output=True,
        cwd=apt / "download",
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    (apt / "download" / f"pgvector_{REAL_VERSION}.orig.tar.gz").rename(target)
    return target


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def synthetic_release(version: str) -> Path:
    """The real 0.8.0 source renamed as ``version``: its control file says ``version`` and it
    carries an empty upgrade script from 0.8.0, so the real build and ``ALTER EXTENSION
    UPDATE`` paths can be exercised without a second real release. Not a real pgvector."""
    target = CACHE / "tarballs" / f"v{version}.tar.gz"
    if target.exists():
        return target
    old_prefix, new_prefix = f"pgvector-{REAL_VERSION}/", f"pgvector-{version}/"
    buffer = io.BytesIO()
    with tarfile.open(real_tarball()) as source, tarfile.open(fileobj=buffer, mode="w:gz") as out:
        for member in source.getmembers():
            data = source.extractfile(member).read() if member.isfile() else None
            member.name = new_prefix + member.name[len(old_prefix):] if member.name.startswith(old_prefix) else member.name
            if member.name == new_prefix + "vector.control":
                data = data.replace(f"default_version = '{REAL_VERSION}'".encode(), f"default_version = '{version}'".encode())
            if member.name == new_prefix + "Makefile":
                data = data.replace(f"EXTVERSION = {REAL_VERSION}".encode(), f"EXTVERSION = {version}".encode())
            if data is not None:
                member.size = len(data)
            out.addfile(member, io.BytesIO(data) if data is not None else None)
        upgrade = f"-- synthetic test release: no catalog changes from {REAL_VERSION}\n".encode()
        info = tarfile.TarInfo(f"{new_prefix}sql/vector--{REAL_VERSION}--{version}.sql")
        info.size = len(upgrade)
        info.mode = 0o644
        out.addfile(info, io.BytesIO(upgrade))
    target.write_bytes(buffer.getvalue())
    return target
