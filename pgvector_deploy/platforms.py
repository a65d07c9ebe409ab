"""The platform table: every per-distribution difference lives here, as data.

A ``Platform`` says where PostgreSQL 15 comes from on a distribution, which packages a
pgvector build needs, where ``pg_config`` is, how the cluster is created and started, and
where its files are. Code elsewhere reads these fields and never branches on a distribution
name. Adding a distribution is one entry in ``PLATFORMS`` plus recorded facts for its tests.

Example::

    >>> detect_platform({"ID": "debian", "VERSION_ID": "12"}, "x86_64").key
    'debian-12'
"""

from __future__ import annotations

from dataclasses import dataclass

POSTGRES_MAJOR = 15
SUPPORTED_ARCHES = ("x86_64", "aarch64")


@dataclass(frozen=True)
class PackageManager:
    name: str
    # Shell that installs the packages given as {packages}; non-interactive, waits for a held lock.
    install: str
    # Shell that prints "<name> installed" for each installed package of {packages}.
    query_installed: str


PACKAGE_MANAGERS = {
    "apt": PackageManager(
        name="apt",
        install=(
            "export DEBIAN_FRONTEND=noninteractive && "
            "apt-get -q -o DPkg::Lock::Timeout=600 update && "
            "apt-get -q -y -o DPkg::Lock::Timeout=600 install --no-install-recommends {packages}"
        ),
        query_installed="dpkg-query -W -f='${{Package}} ${{db:Status-Status}}\\n' {packages} 2>/dev/null || true",
    ),
}


@dataclass(frozen=True)
class Platform:
    key: str
    label: str
    os_ids: tuple[str, ...]  # os-release ID values
    versions: tuple[str, ...]  # os-release VERSION_ID values (or their major part)
    package_manager: PackageManager
    server_packages: tuple[str, ...]
    build_packages: tuple[str, ...]  # PGXS headers and the compiler
    bindir: str  # the target major's own binaries; pg_config is here, never /usr/bin's
    data_dir: str
    config_dir: str
    socket_dir: str
    create_cluster: str  # initialises a *new* cluster; only run when data_dir has no PG_VERSION
    start_without_systemd: str  # the distribution's cluster tool, for hosts without systemd
    service: str  # systemd unit of the cluster
    boot_unit: str  # systemd unit enabled so the cluster starts at boot
    proof: str  # "e2e": proved on real hosts in CI; "plan": plan-tested from recorded facts

    @property
    def packages(self) -> tuple[str, ...]:
        return self.server_packages + self.build_packages

    @property
    def pg_config(self) -> str:
        return f"{self.bindir}/pg_config"

    @property
    def psql(self) -> str:
        return f"{self.bindir}/psql"


DEBIAN_FAMILY_PATHS = dict(
    bindir=f"/usr/lib/postgresql/{POSTGRES_MAJOR}/bin",
    data_dir=f"/var/lib/postgresql/{POSTGRES_MAJOR}/main",
    config_dir=f"/etc/postgresql/{POSTGRES_MAJOR}/main",
    socket_dir="/var/run/postgresql",
    create_cluster=f"pg_createcluster {POSTGRES_MAJOR} main --start-conf=auto",
    start_without_systemd=f"pg_ctlcluster {POSTGRES_MAJOR} main start",
    service=f"postgresql@{POSTGRES_MAJOR}-main",
    boot_unit="postgresql",
)

PLATFORMS: tuple[Platform, ...] = (
    Platform(
        key="debian-12",
        label="Debian 12 (bookworm)",
        os_ids=("debian",),
        versions=("12",),
        package_manager=PACKAGE_MANAGERS["apt"],
        server_packages=(f"postgresql-{POSTGRES_MAJOR}",),
        build_packages=(f"postgresql-server-dev-{POSTGRES_MAJOR}", "gcc", "make", "libc6-dev"),
        proof="e2e",
        **DEBIAN_FAMILY_PATHS,
    ),
)

# Distributions we recognise and refuse, with the reason a user should read.
REFUSED = {
    ("amzn", "2"): "Amazon Linux 2 reached end of life on 2026-06-30 and has no PostgreSQL 15",
    ("centos", "7"): "CentOS 7 is end of life and has no supported PostgreSQL 15 packages",
}


class UnsupportedHost(Exception):
    """The host is not one we provision; the message says what was found and what is supported."""


def supported_summary() -> str:
    names = ", ".join(p.label for p in PLATFORMS)
    return f"supported: {names}, on {' or '.join(SUPPORTED_ARCHES)}"


def detect_platform(os_release: dict[str, str], arch: str) -> Platform:
    """Pick the platform entry for an ``/etc/os-release`` mapping and ``uname -m``."""
    os_id = os_release.get("ID", "").lower()
    version = os_release.get("VERSION_ID", "")
    found = f"{os_release.get('PRETTY_NAME') or (os_id + ' ' + version).strip() or 'no /etc/os-release'} on {arch or 'unknown arch'}"

    for (refused_id, refused_version), reason in REFUSED.items():
        if os_id == refused_id and version.split(".")[0] == refused_version:
            raise UnsupportedHost(f"unsupported host: found {found}: {reason}. {supported_summary()}.")
    if arch not in SUPPORTED_ARCHES:
        raise UnsupportedHost(
            f"unsupported host: found {found}: architecture {arch!r} is not supported "
            f"(32-bit and other architectures are refused). {supported_summary()}."
        )
    for platform in PLATFORMS:
        if os_id in platform.os_ids and (version in platform.versions or version.split(".")[0] in platform.versions):
            return platform
    raise UnsupportedHost(f"unsupported host: found {found}. {supported_summary()}.")


def parse_os_release(text: str) -> dict[str, str]:
    """Parse ``/etc/os-release`` (shell-style KEY=value lines, values maybe quoted)."""
    result = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        result[key.strip()] = value
    return result
