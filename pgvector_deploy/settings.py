"""Every ``host.data`` key the toolkit reads, declared once with its default and meaning.

``SETTINGS`` is the single list; the README's table of data keys is checked against it by a
test. ``load_settings`` reads a host's data, validates every value and returns a ``Settings``;
a bad value raises ``SettingsError`` naming the key, the problem and the fix, before anything
runs on the host.

Example::

    >>> s = load_settings({"pgvector_version": "0.8.6"})
    >>> s.release.version, s.optflags
    ('0.8.6', '')
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from .releases import NEWEST_RELEASE, Release, ReleaseError, SECURITY_FLOOR, choose_release


class SettingsError(ValueError):
    """A host data value we cannot use; the message names the key and the fix."""


@dataclass(frozen=True)
class Setting:
    key: str
    default: Any
    meaning: str


SETTINGS: tuple[Setting, ...] = (
    Setting("pgvector_version", NEWEST_RELEASE, "pgvector release to compile on the host (X.Y.Z)."),
    Setting(
        "pgvector_sha256",
        None,
        "sha256 of the tarball; default: the pinned digest for pgvector_version. Required for a version with no pin.",
    ),
    Setting(
        "pgvector_url",
        None,
        "where the host downloads the tarball; default: the upstream GitHub tag tarball of pgvector_version.",
    ),
    Setting(
        "pgvector_tarball",
        None,
        "path on the control machine to the tarball; uploaded instead of downloaded (hosts without egress).",
    ),
    Setting(
        "pgvector_allow_insecure",
        False,
        f"allow versions below {SECURITY_FLOOR} (CVE-2026-3172); refused otherwise.",
    ),
    Setting(
        "pgvector_portable",
        True,
        'build with OPTFLAGS="" so the binary runs on any CPU of the architecture; False builds with -march=native.',
    ),
)

DEFAULTS = {setting.key: setting.default for setting in SETTINGS}


@dataclass(frozen=True)
class Settings:
    release: Release
    url: str
    tarball: Path | None
    allow_insecure: bool
    portable: bool

    @property
    def version(self) -> str:
        return self.release.version

    @property
    def optflags(self) -> str:
        # Upstream's Makefile defaults to -march=native on x86_64/aarch64, which can die with
        # "Illegal instruction" on another CPU model; empty OPTFLAGS builds portably.
        return "" if self.portable else "-march=native"


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{key}: {value!r} is not true or false. Fix: set {key} to True or False.")


def _optional_text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_settings(data: Mapping[str, Any] | Callable[[str], Any]) -> Settings:
    """Validate a host's data (a mapping, or pyinfra's ``host.data``) into ``Settings``."""
    get = data.get if hasattr(data, "get") else data  # type: ignore[union-attr]

    def value(key: str) -> Any:
        found = get(key)  # type: ignore[operator]
        return DEFAULTS[key] if found is None else found

    allow_insecure = _as_bool("pgvector_allow_insecure", value("pgvector_allow_insecure"))
    portable = _as_bool("pgvector_portable", value("pgvector_portable"))
    try:
        release = choose_release(
            str(value("pgvector_version")),
            _optional_text(value("pgvector_sha256")),
            allow_insecure,
        )
    except ReleaseError as error:
        raise SettingsError(str(error)) from None

    url = _optional_text(value("pgvector_url")) or release.url
    if not url.startswith(("http://", "https://")):
        raise SettingsError(
            f"pgvector_url {url!r} is not an http(s) URL. Fix: give a full http:// or https:// URL, "
            "or set pgvector_tarball to upload a file from the control machine."
        )

    tarball = _optional_text(value("pgvector_tarball"))
    tarball_path = None
    if tarball is not None:
        tarball_path = Path(tarball).expanduser()
        if not tarball_path.is_file():
            raise SettingsError(
                f"pgvector_tarball {tarball!r} does not exist on the control machine. Fix: point it at the "
                f"downloaded v{release.version}.tar.gz, or unset it to download from pgvector_url."
            )
        actual = sha256_of_file(tarball_path)
        if actual != release.sha256:
            raise SettingsError(
                f"pgvector_tarball {tarball!r} has sha256 {actual}, expected {release.sha256} "
                f"for pgvector {release.version}. Fix: use the genuine tarball, or correct pgvector_sha256."
            )

    return Settings(
        release=release,
        url=url,
        tarball=tarball_path,
        allow_insecure=allow_insecure,
        portable=portable,
    )
