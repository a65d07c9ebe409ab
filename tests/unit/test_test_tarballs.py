"""tests/hosts/tarballs.py: the real release tarballs the tests build, from the shared
directory, used only with their pinned digest."""

from __future__ import annotations

import os
import shutil

import pytest

from pgvector_deploy.releases import NEWEST_RELEASE, RELEASES
from tests.hosts import tarballs
from tests.hosts.tarballs import TarballMismatch, TarballMissing, release_tarball, sha256


@pytest.fixture(autouse=True)
def fresh_cache():
    release_tarball.cache_clear()
    yield
    release_tarball.cache_clear()


def test_the_default_is_the_products_default():
    assert tarballs.DEFAULT_VERSION == NEWEST_RELEASE


def test_the_directory_is_beside_the_project_root_unless_overridden(monkeypatch, tmp_path):
    monkeypatch.delenv(tarballs.TARBALLS_ENV, raising=False)
    assert tarballs.tarball_dir() == tarballs.REPO.parent / "shared" / "pgvector-tarballs"
    monkeypatch.setenv(tarballs.TARBALLS_ENV, str(tmp_path))
    assert tarballs.tarball_dir() == tmp_path


def test_every_shared_tarball_has_its_pinned_digest():
    if not tarballs.tarball_dir().is_dir():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the shared tarballs are not at {tarballs.tarball_dir()}")
        pytest.skip(f"the shared tarballs are not at {tarballs.tarball_dir()}")
    for version, release in RELEASES.items():
        assert sha256(release_tarball(version)) == release.sha256, version


def test_a_missing_directory_is_named_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv(tarballs.TARBALLS_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(TarballMissing, match=f"not at {tmp_path / 'nowhere'}. Fix: .*PGV_TEST_TARBALLS"):
        release_tarball()


def test_a_missing_release_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv(tarballs.TARBALLS_ENV, str(tmp_path))
    with pytest.raises(TarballMissing, match=r"v0\.8\.6\.tar\.gz is missing \(pgvector 0\.8\.6\)"):
        release_tarball("0.8.6")


def test_a_file_without_the_pinned_digest_is_never_used(monkeypatch, tmp_path):
    (tmp_path / "v0.8.6.tar.gz").write_bytes(b"not pgvector")
    monkeypatch.setenv(tarballs.TARBALLS_ENV, str(tmp_path))
    with pytest.raises(TarballMismatch, match=f"not pgvector 0.8.6's pin {RELEASES['0.8.6'].sha256}"):
        release_tarball("0.8.6")


def test_a_pinned_file_is_used_where_it_lies(monkeypatch, tmp_path):
    source = tarballs.tarball_dir() / "v0.8.6.tar.gz"
    if not source.is_file():
        pytest.skip(f"{source} is not here")
    shutil.copy(source, tmp_path / "v0.8.6.tar.gz")
    monkeypatch.setenv(tarballs.TARBALLS_ENV, str(tmp_path))
    assert release_tarball() == tmp_path / "v0.8.6.tar.gz"
