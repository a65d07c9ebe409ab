"""The real pgvector release tarballs for tests, read from the project's shared directory.

``<project root>/../shared/pgvector-tarballs/`` holds every pinned release as the exact
GitHub tag tarball (``v<VERSION>.tar.gz``, made from the upstream git tags, byte for byte).
``PGV_TEST_TARBALLS`` points elsewhere (a worktree whose ``../shared`` does not exist).
Nothing is ever fetched from the network: a file is used only if its sha256 is the pin in
``pgvector_deploy/releases.py``.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

from pgvector_deploy.releases import NEWEST_RELEASE, RELEASES

REPO = Path(__file__).resolve().parents[2]
TARBALLS_ENV = "PGV_TEST_TARBALLS"
# The product's default: what every test builds unless it is about another version.
DEFAULT_VERSION = NEWEST_RELEASE


class TarballMissing(LookupError):
    """The shared tarball directory, or one release in it, is not on this machine."""


class TarballMismatch(ValueError):
    """A shared tarball whose sha256 is not the pin: never used."""


def tarball_dir() -> Path:
    return Path(os.environ.get(TARBALLS_ENV) or REPO.parent / "shared" / "pgvector-tarballs")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@lru_cache(maxsize=None)
def release_tarball(version: str = DEFAULT_VERSION) -> Path:
    """``v<version>.tar.gz`` from the shared directory, checked against its pinned sha256."""
    pinned = RELEASES[version].sha256
    folder = tarball_dir()
    path = folder / f"v{version}.tar.gz"
    if not folder.is_dir():
        raise TarballMissing(
            f"the pgvector release tarballs are not at {folder}. Fix: put the shared directory "
            f"there (every pinned release as v<VERSION>.tar.gz), or set {TARBALLS_ENV} to it."
        )
    if not path.is_file():
        raise TarballMissing(f"{path} is missing (pgvector {version}). Fix: copy v{version}.tar.gz into {folder}.")
    found = sha256(path)
    if found != pinned:
        raise TarballMismatch(
            f"{path} has sha256 {found}, not pgvector {version}'s pin {pinned} (pgvector_deploy/releases.py). "
            f"Fix: replace it with the GitHub tag tarball v{version}.tar.gz."
        )
    return path


if __name__ == "__main__":  # tests/bootstrap.sh: print the checked path of one release
    import sys

    try:
        print(release_tarball(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_VERSION))
    except (TarballMissing, TarballMismatch) as error:
        sys.exit(f"tests/hosts/tarballs.py: {error}")
