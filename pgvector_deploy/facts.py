"""Facts: what a host looks like, each gathered in one round trip and parsed in one place.

Every fact's command prints ``key=value`` lines; ``parse_key_values`` turns them into a
dict of lists and each ``process`` picks what it needs. The parsers are plain functions so
unit tests can feed them output recorded on real systems.

Example::

    profile = host.get_fact(HostProfile, port=5432, cached_tarball="/var/cache/...")
    profile["arch"]  # 'aarch64'
"""

from __future__ import annotations

import json
import re
import shlex
from collections import defaultdict

from pyinfra.api import FactBase

from .platforms import Platform, parse_os_release
from .shell import SAFE_PATH, as_postgres

# Where the toolkit keeps its own state on a host.
CACHE_DIR = "/var/cache/pgvector-deploy"
STATE_DIR = "/var/lib/pgvector-deploy"
BUILD_STAMP = f"{STATE_DIR}/build.json"


def parse_key_values(lines: list[str]) -> dict[str, list[str]]:
    """``["a=1", "a=2", "b=x=y"]`` -> ``{"a": ["1", "2"], "b": ["x=y"]}``."""
    values: dict[str, list[str]] = defaultdict(list)
    for line in lines:
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()].append(value)
    return values


def _first(values: dict[str, list[str]], key: str, default: str = "") -> str:
    return values.get(key, [default])[0]


_VERSION_IN_TEXT = re.compile(r"\b(\d+)\.(\d+)\b")


def parse_postgres_version(text: str) -> tuple[int, int] | None:
    """``"postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)"`` -> ``(15, 20)``."""
    match = _VERSION_IN_TEXT.search(text.split(")", 1)[-1] if "PostgreSQL)" in text else text)
    return (int(match.group(1)), int(match.group(2))) if match else None


class RemoteUid(FactBase):
    """The uid we log in as (``0`` means no sudo is needed)."""

    def command(self):
        return "id -u"

    def process(self, output):
        return int(output[0].strip())


class HostProfile(FactBase):
    """Everything the preflight needs, before any change: architecture, os-release, package
    tools, init system, PostgreSQL binaries and clusters already there, what owns the port,
    and the checksum of a tarball already cached on the host.
    """

    def command(self, port: int, cached_tarball: str):
        return f"""
PATH={SAFE_PATH}
echo "arch=$(uname -m)"
[ -r /etc/os-release ] && sed -e 's/^/os_release=/' /etc/os-release
for tool in apt-get dnf yum zypper apk pacman; do
  command -v "$tool" >/dev/null 2>&1 && echo "package_tool=$tool"
done
if [ -d /run/systemd/system ]; then echo "systemd=yes"; else echo "systemd=no"; fi
echo "pid1=$(cat /proc/1/comm 2>/dev/null)"
for bin in /usr/lib/postgresql/*/bin/postgres /usr/pgsql-*/bin/postgres /usr/bin/postgres; do
  [ -x "$bin" ] && echo "postgres_binary=$bin|$("$bin" --version 2>/dev/null)"
done
command -v pg_lsclusters >/dev/null 2>&1 && pg_lsclusters --no-header 2>/dev/null | sed -e 's/^/cluster=/'
if command -v ss >/dev/null 2>&1; then
  ss -Hltnp 'sport = :{int(port)}' 2>/dev/null | while read -r line; do
    pid=$(echo "$line" | sed -n 's/.*pid=\\([0-9]*\\).*/\\1/p' | head -n1)
    echo "listener=$(readlink "/proc/$pid/exe" 2>/dev/null)|$line"
  done
else
  # No ss (minimal images): find the listening socket's inode, then the process holding it.
  for inode in $(awk '$2 ~ /:{int(port):04X}$/ && $4 == "0A" {{print $10}}' /proc/net/tcp /proc/net/tcp6 2>/dev/null); do
    pid=$(find /proc/[0-9]*/fd -lname "socket:\\[$inode\\]" 2>/dev/null | head -n1 | cut -d/ -f3)
    echo "listener=$(readlink "/proc/$pid/exe" 2>/dev/null)|pid $pid, found without ss"
  done
fi
[ -f {shlex.quote(cached_tarball)} ] && echo "cached_tarball_sha256=$(sha256sum {shlex.quote(cached_tarball)} | cut -d' ' -f1)"
true
"""

    def process(self, output):
        return parse_host_profile(output)


def parse_host_profile(lines: list[str]) -> dict:
    values = parse_key_values(lines)
    binaries = []
    for entry in values.get("postgres_binary", []):
        path, _, version_text = entry.partition("|")
        version = parse_postgres_version(version_text)
        binaries.append({"path": path, "major": version[0] if version else None, "version": version_text})
    clusters = []
    for entry in values.get("cluster", []):
        # pg_lsclusters: Ver Cluster Port Status Owner Data-directory Log-file
        fields = entry.split()
        if len(fields) >= 6:
            clusters.append(
                {
                    "major": int(fields[0]),
                    "name": fields[1],
                    "port": int(fields[2]),
                    "status": fields[3],
                    "data_dir": fields[5],
                }
            )
    listeners = []
    for entry in values.get("listener", []):
        exe, _, line = entry.partition("|")
        process = re.search(r'users:\(\("([^"]+)"', line)
        listeners.append({"exe": exe, "process": process.group(1) if process else "", "line": line.strip()})
    return {
        "arch": _first(values, "arch"),
        "os_release": parse_os_release("\n".join(values.get("os_release", []))),
        "package_tools": values.get("package_tool", []),
        "systemd": _first(values, "systemd") == "yes",
        "pid1": _first(values, "pid1"),
        "postgres_binaries": binaries,
        "clusters": clusters,
        "listeners": listeners,
        "cached_tarball_sha256": _first(values, "cached_tarball_sha256") or None,
    }


class InstalledPackages(FactBase):
    """Which of the platform's packages are installed, asked of its package manager."""

    default = set

    def command(self, platform: Platform):
        query = platform.package_manager.query_installed.format(packages=" ".join(platform.packages))
        return f"PATH={SAFE_PATH}; {query}"

    def process(self, output):
        return parse_installed(output)


def parse_installed(lines: list[str]) -> set[str]:
    return {line.split()[0] for line in lines if line.strip().endswith(" installed")}


class RepositoryChecks(FactBase):
    """Which repository set-up steps are already done: the indexes of the ``checks`` that pass.

    All checks run in one round trip; each in a subshell, so one cannot end the others.
    """

    default = set

    def command(self, checks: tuple[str, ...]):
        tests = "\n".join(f"if ( {check} ) >/dev/null 2>&1; then echo passed={index}; fi" for index, check in enumerate(checks))
        return f"PATH={SAFE_PATH}\n{tests}\ntrue\n"

    def process(self, output):
        return {int(index) for index in parse_key_values(output).get("passed", [])}


class ClusterState(FactBase):
    """The target cluster: initialised (its PG_VERSION), accepting connections, enabled at boot."""

    def command(self, platform: Platform, port: int):
        return f"""
PATH={SAFE_PATH}
[ -s {platform.data_dir}/PG_VERSION ] && echo "pg_version_file=$(cat {platform.data_dir}/PG_VERSION)"
if [ -x {platform.bindir}/pg_isready ] && {platform.bindir}/pg_isready -q -h {platform.socket_dir} -p {int(port)}; then
  echo running=yes
else
  echo running=no
fi
[ -d /run/systemd/system ] && echo "boot=$(systemctl is-enabled {platform.boot_unit} 2>/dev/null)"
true
"""

    def process(self, output):
        values = parse_key_values(output)
        return {
            "initialised": bool(_first(values, "pg_version_file")),
            "running": _first(values, "running") == "yes",
            "enabled_at_boot": _first(values, "boot") in ("enabled", "enabled-runtime", "static"),
        }


class PgvectorState(FactBase):
    """What pgvector the host has: the build stamp, the installed control file's version, the
    library, the server's ``pg_config --version``, and ``extversion`` in every database."""

    def command(self, platform: Platform, port: int):
        list_dbs = as_postgres(
            platform, port, "postgres", "SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1"
        )
        ext_version = as_postgres(
            platform, port, None, "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        )
        return f"""
PATH={SAFE_PATH}
if [ -x {platform.pg_config} ]; then
  echo "pg_version=$({platform.pg_config} --version)"
  lib=$({platform.pg_config} --pkglibdir); share=$({platform.pg_config} --sharedir)
  [ -f "$lib/vector.so" ] && echo "library=$lib/vector.so"
  [ -f "$share/extension/vector.control" ] && \
    echo "control_version=$(sed -n "s/^default_version *= *'\\(.*\\)'/\\1/p" "$share/extension/vector.control")"
fi
[ -f {BUILD_STAMP} ] && echo "stamp=$(tr -d '\\n' < {BUILD_STAMP})"
if [ -x {platform.bindir}/pg_isready ] && {platform.bindir}/pg_isready -q -h {platform.socket_dir} -p {int(port)}; then
  {list_dbs} 2>/dev/null | while IFS= read -r db; do
    echo "database=$db|$(PGDATABASE="$db" {ext_version} 2>/dev/null)"
  done
fi
true
"""

    @staticmethod
    def default():
        return parse_pgvector_state([])

    def process(self, output):
        return parse_pgvector_state(output)


def parse_pgvector_state(lines: list[str]) -> dict:
    values = parse_key_values(lines)
    stamp_text = _first(values, "stamp")
    try:
        stamp = json.loads(stamp_text) if stamp_text else None
    except ValueError:
        stamp = None  # a damaged stamp means "unknown build": rebuild
    databases = {}
    for entry in values.get("database", []):
        name, _, version = entry.rpartition("|")
        databases[name] = version or None
    return {
        "pg_version": _first(values, "pg_version") or None,
        "library": _first(values, "library") or None,
        "control_version": _first(values, "control_version") or None,
        "stamp": stamp,
        "databases": databases,
    }
