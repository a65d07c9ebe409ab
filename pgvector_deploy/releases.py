"""pgvector releases we know, their pinned checksums, and the version policy.

The sha256 values are for the upstream GitHub tag tarball
(``https://github.com/pgvector/pgvector/archive/refs/tags/v<VERSION>.tar.gz``),
verified by the team (see ``../shared/reference/pgvector-releases.md``).
Adding a release is one row in ``RELEASES``.

Example::

    >>> choose_release("0.8.6", sha256=None, allow_insecure=False).sha256[:12]
    '10bf9938906e'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

UPSTREAM_URL = "https://github.com/pgvector/pgvector/archive/refs/tags/v{version}.tar.gz"


@dataclass(frozen=True)
class Release:
    version: str
    sha256: str
    released: str = ""
    commit: str = ""

    @property
    def url(self) -> str:
        return UPSTREAM_URL.format(version=self.version)


RELEASES: dict[str, Release] = {
    r.version: r
    for r in (
        Release("0.8.6", "10bf9938906e5d643bbc4a7eea104b6f57ba4898e5b76b20e60484ea1d5a7f8f", "2026-07-29", "8ee86c96f0fd72390f890aa8a336fda6d3ab4c6c"),
        Release("0.8.5", "6f88a5cbdde31666f4b6c1a6b75c51dcbeffe58f9a7d2b26e502d5a6e5e14d44", "2026-07-08", "159b79aaad5983fb7459c1e3df2897fbb2d11788"),
        Release("0.8.4", "08575cd4a9d612d36dca821aa53e82c014aba8ef34c4c12d6ef6bff9f1093ef2", "2026-06-30", "1d458ad5d73731241e8b912cacc2079beb643d30"),
        Release("0.8.3", "dc080c511a6354a1628eb19f9bc8e77ce880dde16c889744a6814c8c0006e36c", "2026-06-17", "586e7515bafe6912c425164d186d56550657c349"),
        Release("0.8.2", "69f4019389af05dc1c9548deb8628e62878e6e207c03907f2b8af2016472cdaa", "2026-02-25", "cab9da72c04353f143bb06b42ab70a403daac64a"),
        Release("0.8.1", "a9094dfb85ccdde3cbb295f1086d4c71a20db1d26bf1d6c39f07a7d164033eb4", "2025-09-04", "778dacf20c07caf904557a88705142631818d8cb"),
        Release("0.8.0", "867a2c328d4928a5a9d6f052cd3bc78c7d60228a9b914ad32aa3db88e9de27b0", "2024-10-30", "2627c5ff775ae6d7aef0c430121ccf857842d2f2"),
        Release("0.7.4", "0341edf89b1924ae0d552f617e14fb7f8867c0194ed775bcc44fa40288642583", "2024-08-05", "103ac50f1a90b47a72003e8e8628a55ec372f202"),
    )
}

# Upstream supports only the newest release; it is our default.
NEWEST_RELEASE = "0.8.6"

# CVE-2026-3172 (parallel HNSW build overflow) affects 0.6.0 - 0.8.1.
SECURITY_FLOOR = "0.8.2"
SECURITY_FLOOR_REASON = "CVE-2026-3172, a buffer overflow in parallel HNSW index builds fixed in 0.8.2"

_VERSION_RE = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\Z")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")


class ReleaseError(ValueError):
    """A pgvector version/checksum choice we refuse; the message names the fix."""


def parse_version(text: str) -> tuple[int, int, int]:
    """``"0.8.6"`` -> ``(0, 8, 6)``; anything else raises ReleaseError."""
    match = _VERSION_RE.match(str(text).strip())
    if not match:
        raise ReleaseError(
            f"pgvector_version {text!r} is not a version: expected three numbers such as "
            f"{NEWEST_RELEASE!r} (no leading 'v'). Fix: set pgvector_version to a pgvector release, "
            f"or leave it unset for {NEWEST_RELEASE}."
        )
    return tuple(int(part) for part in match.groups())  # type: ignore[return-value]


def choose_release(version: str, sha256: str | None, allow_insecure: bool) -> Release:
    """Apply the version policy and return the release to build.

    - the version must look like X.Y.Z;
    - below the security floor only with ``allow_insecure``;
    - the checksum is the pinned one unless given; a version we have no pin for needs one.
    """
    parsed = parse_version(version)
    version = ".".join(str(part) for part in parsed)
    if parsed < parse_version(SECURITY_FLOOR) and not allow_insecure:
        raise ReleaseError(
            f"pgvector {version} is below the security floor {SECURITY_FLOOR} ({SECURITY_FLOOR_REASON}). "
            f"Fix: use pgvector_version {NEWEST_RELEASE}, or set pgvector_allow_insecure: True to accept the risk."
        )
    pinned = RELEASES.get(version)
    if sha256 is None:
        if pinned is None:
            known = ", ".join(RELEASES)
            raise ReleaseError(
                f"pgvector {version} has no pinned sha256 (pinned: {known}). "
                f"Fix: set pgvector_sha256 to the sha256 of that version's tarball."
            )
        return pinned
    sha256 = str(sha256).strip().lower()
    if not _SHA256_RE.match(sha256):
        raise ReleaseError(
            f"pgvector_sha256 {sha256!r} is not a sha256 digest (64 hexadecimal characters). "
            f"Fix: copy the digest printed by `sha256sum v{version}.tar.gz`."
        )
    if pinned is not None:
        return Release(version, sha256, pinned.released, pinned.commit)
    return Release(version, sha256)
