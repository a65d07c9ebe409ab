"""Facts: what a host looks like, each gathered in one round trip and parsed in one place.

Every fact's command prints ``key=value`` lines; ``parse_key_values`` turns them into a
dict of lists and each ``process`` picks what it needs. The parsers are plain functions so
unit tests can feed them output recorded on real systems.

Example::

    profile = host.get_fact(HostProfile, port=5432, cached_tarball="/var/cache/...")
    profile["arch"]  # 'aarch64'
"""

from __future__ import annotations

import base64
import json
import re
import shlex
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone
from ipaddress import IPv4Interface, IPv4Network

from pyinfra.api import FactBase

from .paths import BUILD_STAMP, DRILL_DIR, STATE_DIR
from .platforms import KNOWN_MAJORS, PACKAGE_MANAGERS, PLATFORM_TEMPLATES, POSTGRES_MAJOR, Platform, parse_os_release
from .shell import SAFE_PATH, as_app, as_postgres

# Configuration files it manages (beside the packaged ones, never instead of them).
SETTINGS_FILE_NAME = "90-pgvector-deploy.conf"
TUNING_FILE_NAME = "80-pgvector-tuning.conf"
SYSCTL_FILE = "/etc/sysctl.d/60-pgvector-deploy.conf"
# A postgresql.conf line that reads conf.d/ (grep -E).
INCLUDES_CONF_D = "^[[:space:]]*include_dir[[:space:]]*=[[:space:]]*'conf[.]d'"
_BRIDGE = re.compile(r"^(docker0|br-[0-9a-f]+)$")
# What pg_file_settings says of a file's restart-only setting (listen_addresses,
# shared_buffers) whose value the running server does not have yet: a restart is needed.
PENDING_RESTART = "setting could not be applied"
# Errors PostgreSQL finds in the configuration files on disk; a pending restart is not one.
SETTINGS_ERRORS_SQL = (
    "SELECT sourcefile || ':' || sourceline || ' ' || coalesce(name, '') || ': ' || error "
    f"FROM pg_catalog.pg_file_settings WHERE error IS NOT NULL AND error <> '{PENDING_RESTART}'"
)


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


class LoginAccess(FactBase):
    """The uid we log in as, and, when it is not root, whether passwordless sudo works.

    .. code:: python

        host.get_fact(LoginAccess)  # {"uid": 1000, "sudo": True}
    """

    def command(self):
        return 'id -u; if [ "$(id -u)" != 0 ]; then sudo -n true >/dev/null 2>&1 && echo sudo=yes || echo sudo=no; fi'

    def process(self, output):
        return {"uid": int(output[0].strip()), "sudo": output[0].strip() == "0" or "sudo=yes" in output[1:]}


# Where each platform keeps a cluster of each major (its data directory, and its configuration
# where that is elsewhere): the preflight, which runs before the platform is known, looks at all.
_ALL = [template.for_major(major) for template in PLATFORM_TEMPLATES for major, _ in template.majors]
_DATA_DIRS = " ".join(sorted({platform.data_dir for platform in _ALL}))
_CONFIG_DIRS = " ".join(sorted({p.config_dir for p in _ALL if p.config_dir != p.data_dir}))
# Traces of a cluster that is expected on the host, and what is (to be) mounted: which data
# directories hold a cluster (PG_VERSION), which configuration directories exist, the build
# stamp, /etc/fstab's entries (source|mount point|type|options) and the mount points in use;
# and where each data directory really is (a symlink above it may lead onto another volume).
_CLUSTER_TRACES = f"""echo data_dirs_checked=yes
for dir in {_DATA_DIRS}; do [ -s "$dir/PG_VERSION" ] && echo "pg_version_file=$dir"; done
for dir in {_DATA_DIRS}; do echo "data_dir_real=$dir|$(realpath -m "$dir" 2>/dev/null)"; done
for dir in {_CONFIG_DIRS}; do [ -d "$dir" ] && echo "config_dir=$dir"; done
[ -e {BUILD_STAMP} ] && echo build_stamp=yes
for major in {" ".join(str(m) for m in KNOWN_MAJORS if m != POSTGRES_MAJOR)}; do [ -e {STATE_DIR}/build-pg$major.json ] && echo "build_stamp_major=$major"; done
[ -r /etc/fstab ] && awk '$1 !~ /^#/ && NF >= 3 {{print "fstab=" $1 "|" $2 "|" $3 "|" $4}}' /etc/fstab
awk '{{print "mounted=" $5}}' /proc/self/mountinfo 2>/dev/null"""


def _packaged_pgvector_lines() -> str:
    """Shell: pgvector from a package, asked of every package database on the host (each only
    where its tool exists): every platform's and major's pgvector packages by name
    (``pgvector_package=<manager>|<name> installed``), and who owns the vector.so and
    vector.control of each such ``pg_config`` (``pgvector_owner=<manager>|<pg_config>|<file>|
    <the tool's line>``), so that a package by another name is caught too. The preflight
    keeps what concerns the host's own platform and major (preflight.check_packaged_pgvector)."""
    lines = []
    for manager in PACKAGE_MANAGERS.values():
        if not manager.database_tool:
            continue
        # Only the names of this manager's platforms (pgvector_15 means nothing to dpkg).
        names = sorted({n for p in _ALL if p.package_manager == manager for n in p.pgvector_packages})
        query = manager.query_installed.format(packages=" ".join(names)) if names else "true"
        owner = manager.query_owner.format(file='"$file"')
        lines.append(
            f"""if command -v {manager.database_tool} >/dev/null 2>&1; then
  {{ {query}; }} | sed -e 's/^/pgvector_package={manager.name}|/'
  for found in $pgvector_files; do
    file=${{found#*|}}
    {owner} | while IFS= read -r line; do echo "pgvector_owner={manager.name}|$found|$line"; done
  done
fi"""
        )
    pg_configs = " ".join(sorted({platform.pg_config for platform in _ALL}))
    return f"""pgvector_files=
for pg_config in {pg_configs}; do
  [ -x "$pg_config" ] || continue
  dirs=$("$pg_config" --pkglibdir --sharedir 2>/dev/null) || continue
  for file in "$(echo "$dirs" | sed -n 1p)/vector.so" "$(echo "$dirs" | sed -n 2p)/extension/vector.control"; do
    [ -e "$file" ] && pgvector_files="$pgvector_files $pg_config|$file"
  done
done
""" + "\n".join(lines)


class HostProfile(FactBase):
    """Everything the preflight needs, before any change: architecture, os-release, package
    tools, init system, PostgreSQL binaries and clusters already there, what owns the port,
    the Docker bridges, free disk space, and the checksum of a tarball already cached.
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
    echo "listener=$(readlink "/proc/$pid/exe" 2>/dev/null)|$line|argv=$(tr '\\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | cut -c1-300)"
  done
else
  # No ss (minimal images): find the listening socket's inode, then the process holding it.
  for inode in $(awk '$2 ~ /:{int(port):04X}$/ && $4 == "0A" {{print $10}}' /proc/net/tcp /proc/net/tcp6 2>/dev/null); do
    pid=$(find /proc/[0-9]*/fd -lname "socket:\\[$inode\\]" 2>/dev/null | head -n1 | cut -d/ -f3)
    echo "listener=$(readlink "/proc/$pid/exe" 2>/dev/null)|pid $pid, found without ss|argv=$(tr '\\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | cut -c1-300)"
  done
fi
ip -o -4 addr show 2>/dev/null | sed -e 's/^/address=/'
for dir in /var/tmp /usr; do echo "free_kb=$dir|$(df -Pk "$dir" 2>/dev/null | awk 'NR==2 {{print $4}}')"; done
echo "mem_total_kb=$(awk '/^MemTotal:/ {{print $2}}' /proc/meminfo 2>/dev/null)"
for limit in /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes; do
  [ -r "$limit" ] && echo "cgroup_memory_bytes=$(cat "$limit")"
done
echo "cpus=$(nproc 2>/dev/null)"
echo "shm_kb=$(df -Pk /dev/shm 2>/dev/null | awk 'NR==2 {{print $2}}')"
[ -f {shlex.quote(cached_tarball)} ] && echo "cached_tarball_sha256=$(sha256sum {shlex.quote(cached_tarball)} | cut -d' ' -f1)"
{_CLUSTER_TRACES}
{_packaged_pgvector_lines()}
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
        line, _, argv = line.partition("|argv=")
        if "qemu" in exe:
            # Under qemu-user emulation /proc/PID/exe is the emulator (and binfmt's wrapper may
            # lead argv): the program is the first argument that is not the emulator.
            exe = next((arg for arg in argv.split() if "qemu" not in arg), exe)
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
        # None: not looked at (a profile recorded before these lines existed).
        "initialised_data_dirs": values.get("pg_version_file", []) if "data_dirs_checked" in values else None,
        "config_dirs": values.get("config_dir", []),
        "build_stamp": _first(values, "build_stamp") == "yes",  # PostgreSQL 15's, build.json
        "build_stamp_majors": [int(major) for major in values.get("build_stamp_major", []) if major.isdigit()],
        "fstab": parse_fstab(values.get("fstab", [])),
        "mounts": [_unescape_mount(point) for point in values.get("mounted", [])],
        # Data directories that a symlink leads elsewhere: path -> where it really is.
        "resolved_data_dirs": {
            path: real
            for path, _, real in (entry.partition("|") for entry in values.get("data_dir_real", []))
            if real and real != path
        },
        "bridges": parse_bridges(values.get("address", [])),
        "pgvector_packages": parse_pgvector_packages(values.get("pgvector_package", [])),
        "pgvector_owners": parse_pgvector_owners(values.get("pgvector_owner", [])),
        "memory_mb": _memory_mb(values),
        "cpus": _int_or_none(_first(values, "cpus")),
        "shm_mb": _kb_to_mb(_first(values, "shm_kb")),
        "free_mb": {
            path: int(kb) // 1024
            for path, _, kb in (entry.partition("|") for entry in values.get("free_kb", []))
            if kb.isdigit()
        },
    }


def parse_pgvector_packages(entries: list[str]) -> list[dict]:
    """``apt|postgresql-15-pgvector installed`` -> ``{"manager": "apt", "name": "postgresql-15-pgvector"}``
    (the package manager's ``query_installed`` words; a package in any other state is not there)."""
    found = []
    for entry in entries:
        manager, _, line = entry.partition("|")
        fields = line.split()
        if len(fields) == 2 and fields[1] == "installed":
            found.append({"manager": manager, "name": fields[0]})
    return found


def parse_pgvector_owners(entries: list[str]) -> list[dict]:
    """``<manager>|<pg_config>|<file>|<line>`` -> who owns the file, one dict per file and
    package database: ``{"manager", "pg_config", "file", "packages": [...]}``.

    The line is the tool's own: dpkg-query -S says ``pkg[, pkg...]: <file>`` (and, for a
    diverted file, ``diversion by <pkg> from|to: <file>``, which names no owner); rpm -qf
    with ``%{NAME}`` says the package's name alone.
    """
    owners: dict[tuple[str, str, str], list[str]] = {}
    for entry in entries:
        manager, pg_config, file, line = (entry.split("|", 3) + ["", "", ""])[:4]
        line = line.strip()
        if not line or line.startswith("diversion by ") or " is not owned " in line:
            continue
        if manager == "apt":
            packages, sep, _ = line.rpartition(": ")
            names = [name.strip() for name in packages.split(",")] if sep else []
        else:
            names = [line]
        owned = owners.setdefault((manager, pg_config, file), [])
        owned += [name for name in names if name and name not in owned]
    return [
        {"manager": manager, "pg_config": pg_config, "file": file, "packages": packages}
        for (manager, pg_config, file), packages in owners.items()
        if packages
    ]


def _unescape_mount(text: str) -> str:
    r"""fstab and mountinfo write a space in a path as ``\040`` (octal escapes): ``/mnt/a\040b`` -> ``/mnt/a b``."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), text)


def parse_fstab(entries: list[str]) -> list[dict]:
    """``source|mount point|type|options`` lines -> dicts; swap and ``none`` entries left out
    (they mount nothing a data directory could be under)."""
    parsed = []
    for entry in entries:
        source, point, kind, options = (entry.split("|") + ["", "", "", ""])[:4]
        point = _unescape_mount(point).rstrip("/") or "/"
        if kind == "swap" or not point.startswith("/"):
            continue
        parsed.append({"source": _unescape_mount(source), "mount_point": point, "type": kind, "options": options})
    return parsed


def _int_or_none(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None


def _kb_to_mb(text: str) -> int | None:
    kb = _int_or_none(text)
    return None if kb is None else kb // 1024


def _memory_mb(values: dict[str, list[str]]) -> int | None:
    """MemTotal, or a container's cgroup memory limit when that is lower (``max`` or
    cgroup v1's huge number mean no limit)."""
    memory = _kb_to_mb(_first(values, "mem_total_kb"))
    for limit in values.get("cgroup_memory_bytes", []):
        limit_bytes = _int_or_none(limit)
        if limit_bytes is not None and memory is not None and limit_bytes // (1 << 20) < memory:
            memory = limit_bytes // (1 << 20)
    return memory


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
    library, the server's ``pg_config --version``, and ``extversion`` in every database.

    Every database's ``extversion`` costs two psql processes, however many databases there
    are: the first prints a psql script (per database a ``\\connect`` and one query, the name
    quoted by the server itself), the second runs it. psql ends at the first database it
    cannot connect to (a pg_hba.conf ``reject``, a database dropped meanwhile): then each
    database is asked on its own, one psql each, as before. A name holding a line break cannot
    be one ``database=`` line, so such a database is left out.
    """

    # The databases to read: those that take connections, with a name on one line.
    DATABASES = (
        "FROM pg_catalog.pg_database WHERE datallowconn AND pg_catalog.strpos(datname, pg_catalog.chr(10)) = 0 "
        "AND pg_catalog.strpos(datname, pg_catalog.chr(13)) = 0"
    )
    EXTVERSION = "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'vector'"

    @staticmethod
    def _psql_word(sql: str) -> str:
        """SQL for the text ``sql`` as one single-quoted psql meta-command argument (quotes
        doubled, backslashes escaped): psql interpolates nothing in it (``:name``, backquotes)."""
        return f"'''' || pg_catalog.replace(pg_catalog.replace({sql}, pg_catalog.chr(92), pg_catalog.chr(92) || pg_catalog.chr(92)), '''', '''''') || ''''"

    @staticmethod
    def _conninfo_value(sql: str) -> str:
        """SQL for the text ``sql`` as a single-quoted libpq connection-string value."""
        return f"'''' || pg_catalog.replace(pg_catalog.replace({sql}, pg_catalog.chr(92), pg_catalog.chr(92) || pg_catalog.chr(92)), '''', pg_catalog.chr(92) || '''') || ''''"

    @classmethod
    def script_sql(cls, platform: Platform, port: int) -> str:
        """SQL printing, per database, the psql lines that print ``database=<name>|<extversion>``.

        The connection string names the socket and port (nothing is reused from the previous
        connection, and a name with ``=`` stays a name); the ``\\echo`` prints the quoted
        ``database=<name>|`` joined to ``:v``, the version the query set (empty: no vector).
        """
        socket_dir = "'" + platform.socket_dir.replace("'", "''") + "'"
        conninfo = (
            f"'host=' || {cls._conninfo_value(socket_dir)} || ' port={int(port)} dbname=' || "
            f"{cls._conninfo_value('datname')}"
        )
        echo_word = cls._psql_word("'database=' || datname || '|'")
        lines = [
            r"$q$\set v ''$q$",
            rf"$q$\connect $q$ || {cls._psql_word(conninfo)}",
            rf"$q$SELECT coalesce(({cls.EXTVERSION}), '') AS v \gset$q$",
            rf"$q$\echo $q$ || {echo_word} || ':v'",
        ]
        return f"SELECT {' || pg_catalog.chr(10) || '.join(lines)} {cls.DATABASES} ORDER BY datname"

    def command(self, platform: Platform, port: int):
        script = as_postgres(platform, port, "postgres", self.script_sql(platform, port))
        run_script = as_postgres(platform, port, "postgres")  # ON_ERROR_STOP: any error means the fallback
        list_dbs = as_postgres(platform, port, "postgres", f"SELECT datname {self.DATABASES} ORDER BY 1")
        ext_version = as_postgres(platform, port, None, self.EXTVERSION)
        return f"""
PATH={SAFE_PATH}
if [ -x {platform.pg_config} ]; then
  # One call for the three answers, one per line in the order asked.
  answers=$({platform.pg_config} --version --pkglibdir --sharedir)
  nl='
'
  echo "pg_version=${{answers%%"$nl"*}}"
  rest=${{answers#*"$nl"}}; lib=${{rest%%"$nl"*}}; share=${{rest#*"$nl"}}
  [ -f "$lib/vector.so" ] && echo "library=$lib/vector.so"
  [ -f "$share/extension/vector.control" ] && \
    echo "control_version=$(sed -n "s/^default_version *= *'\\(.*\\)'/\\1/p" "$share/extension/vector.control")"
fi
[ -f {platform.build_stamp} ] && echo "stamp=$(tr -d '\\n' < {platform.build_stamp})"
if [ -x {platform.bindir}/pg_isready ] && {platform.bindir}/pg_isready -q -h {platform.socket_dir} -p {int(port)}; then
  if versions=$({script} 2>/dev/null | {run_script} 2>/dev/null); then
    [ -z "$versions" ] || printf '%s\\n' "$versions"
  else
    {list_dbs} 2>/dev/null | while IFS= read -r db; do
      printf 'database=%s|%s\\n' "$db" "$(PGDATABASE="$db" {ext_version} 2>/dev/null)"
    done
  fi
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


class FactBundle(FactBase):
    """Several facts' commands in one round trip, run side by side on the host (each in its own
    subshell, reading nothing); per fact, a marker line with its index and exit status, then
    its output. ``parse_bundle`` splits it; ``Plan.prefetch`` hands each part to its fact.

    .. code:: python

        host.get_fact(FactBundle, commands=("echo a=1", "echo b=2"))  # [(0, ["a=1"]), (0, ["b=2"])]
    """

    MARKER = "@@pgvector-deploy-fact"

    def command(self, commands: tuple[str, ...]):
        started = "\n".join(
            f'( {command}\n) >"$dir/{index}" 2>/dev/null </dev/null &\npid{index}=$!' for index, command in enumerate(commands)
        )
        # In order: the marker with the exit status, the output, a line end if it lacked one.
        collected = "\n".join(
            f'wait $pid{index}; echo "{self.MARKER} {index} $?"; cat "$dir/{index}"; '
            f'[ -z "$(tail -c1 "$dir/{index}")" ] || echo'
            for index in range(len(commands))
        )
        return f"""PATH={SAFE_PATH}
dir=$(mktemp -d) || exit 1
trap 'rm -rf "$dir"' EXIT
{started}
{collected}
"""

    def process(self, output):
        return parse_bundle(output)


def parse_bundle(lines: list[str]) -> list[tuple[int, list[str]]]:
    """Marker-separated output -> ``[(exit status, lines), ...]`` in the order the commands were given."""
    parts: list[tuple[int, list[str]]] = []
    for line in lines:
        if line.startswith(FactBundle.MARKER + " "):
            _, _, status = line.split(" ")
            parts.append((int(status), []))
        elif parts:
            parts[-1][1].append(line)
    return parts


# -- networking and the app ----------------------------------------------------------


@dataclass(frozen=True)
class Bridge:
    name: str
    interface: IPv4Interface  # gateway address with the bridge's prefix

    @property
    def gateway(self) -> str:
        return str(self.interface.ip)

    @property
    def subnet(self) -> IPv4Network:
        return self.interface.network


def parse_bridges(lines: list[str]) -> list[Bridge]:
    """Docker bridges from ``ip -o -4 addr show`` lines (docker0 and br-<id> only)."""
    bridges = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "inet" and _BRIDGE.match(fields[1]):
            bridges.append(Bridge(fields[1], IPv4Interface(fields[3])))
    return sorted(bridges, key=lambda bridge: bridge.name)


def settings_path(platform: Platform) -> str:
    return f"{platform.config_dir}/conf.d/{SETTINGS_FILE_NAME}"


def tuning_path(platform: Platform) -> str:
    return f"{platform.config_dir}/conf.d/{TUNING_FILE_NAME}"


def main_conf(platform: Platform) -> str:
    return f"{platform.config_dir}/postgresql.conf"


def certificate_paths(platform: Platform, cert_file: str | None, key_file: str | None) -> tuple[str, str]:
    """The server certificate and key: those host data names, else our self-signed pair in
    the configuration directory."""
    if cert_file and key_file:
        return cert_file, key_file
    return f"{platform.config_dir}/pgvector-deploy-server.crt", f"{platform.config_dir}/pgvector-deploy-server.key"


def hba_path(platform: Platform) -> str:
    return f"{platform.config_dir}/pg_hba.conf"


def ident_path(platform: Platform) -> str:
    return f"{platform.config_dir}/pg_ident.conf"


class ServerConfig(FactBase):
    """The managed files as they are (bytes: a hand edit in another encoding simply differs),
    the running listen_addresses and shared_buffers, the file listen_addresses comes from,
    errors PostgreSQL finds in the files on disk, the nonlocal-bind sysctl and the host's
    IPv4 addresses."""

    def command(self, platform: Platform, port: int):
        managed = (hba_path(platform), ident_path(platform), settings_path(platform), tuning_path(platform), SYSCTL_FILE)
        files = " ".join(shlex.quote(path) for path in managed)
        # One psql, one query per -c, each printing its own key= lines (a stopped server: none).
        queries = (
            "SELECT 'running_listen=' || pg_catalog.current_setting('listen_addresses')",
            "SELECT 'max_connections=' || pg_catalog.current_setting('max_connections')",
            "SELECT 'running_shared_buffers_mb=' || pg_catalog.pg_size_bytes(pg_catalog.current_setting('shared_buffers')) / 1048576",
            # The file whose listen_addresses wins (the last one read): postgresql.auto.conf
            # after ALTER SYSTEM, which no file of ours can override.
            "SELECT 'listen_source=' || sourcefile FROM pg_catalog.pg_file_settings WHERE name = 'listen_addresses' "
            "ORDER BY seqno DESC LIMIT 1",
            # Settings in the files on disk that only a restart applies (shared_buffers, listen_addresses).
            "SELECT 'pending_restart=' || sourcefile || '|' || name FROM pg_catalog.pg_file_settings "
            f"WHERE error = '{PENDING_RESTART}'",
            "SELECT 'hba_error=' || line_number || '|' || error FROM pg_catalog.pg_hba_file_rules WHERE error IS NOT NULL",
            f"SELECT 'settings_error=' || found FROM ({SETTINGS_ERRORS_SQL}) AS errors(found)",
        )
        server = " ".join([as_postgres(platform, port, "postgres"), *(f"-c {shlex.quote(sql)}" for sql in queries)])
        return f"""
PATH={SAFE_PATH}
for file in {files}; do [ -f "$file" ] && echo "file=$file|$(base64 -w0 < "$file")"; done
{server} </dev/null 2>/dev/null
grep -Eqs {shlex.quote(INCLUDES_CONF_D)} {shlex.quote(main_conf(platform))} && echo includes_conf_d=yes
echo "nonlocal_bind=$(cat /proc/sys/net/ipv4/ip_nonlocal_bind 2>/dev/null)"
ip -o -4 addr show 2>/dev/null | sed -e 's/^/address=/'
true
"""

    def process(self, output):
        return parse_server_config(output)


def parse_server_config(lines: list[str]) -> dict:
    values = parse_key_values(lines)
    files = {}
    for entry in values.get("file", []):
        path, _, encoded = entry.partition("|")
        files[path] = base64.b64decode(encoded)
    return {
        "files": files,
        "running_listen": values.get("running_listen", [""])[0],
        "max_connections": _int_or_none(_first(values, "max_connections")) or 100,
        "running_shared_buffers_mb": _int_or_none(_first(values, "running_shared_buffers_mb")),
        "listen_source": _first(values, "listen_source"),
        "pending_restart": values.get("pending_restart", []),
        "hba_errors": values.get("hba_error", []),
        "settings_errors": values.get("settings_error", []),
        "nonlocal_bind": values.get("nonlocal_bind", [""])[0] == "1",
        "includes_conf_d": values.get("includes_conf_d", [""])[0] == "yes",
        "bridges": parse_bridges(values.get("address", [])),
    }


class AppState(FactBase):
    """The app role (login, createdb, verifier salt and digest) and its database (owner, vector)."""

    def command(self, platform: Platform, port: int, user: str, database: str):
        role_sql = (
            "SELECT rolcanlogin || '|' || rolcreatedb || '|' || coalesce(pg_catalog.split_part(rolpassword, '$', 2), '') "
            "|| '|' || coalesce(pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(rolpassword, 'UTF8')), 'hex'), '') "
            f"FROM pg_catalog.pg_authid WHERE rolname = '{user}'"
        )
        owner_sql = f"SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_catalog.pg_database WHERE datname = '{database}'"
        vector_sql = PgvectorState.EXTVERSION
        return f"""
PATH={SAFE_PATH}
{as_postgres(platform, port, 'postgres', role_sql)} | sed -e 's/^/role=/'
owner=$({as_postgres(platform, port, 'postgres', owner_sql)})
echo "database_owner=$owner"
[ -n "$owner" ] && echo "database_vector=$({as_postgres(platform, port, database, vector_sql)})"
true
"""

    def process(self, output):
        return parse_app_state(output)


def parse_app_state(lines: list[str]) -> dict:
    values = parse_key_values(lines)
    role = values.get("role", [""])[0].split("|")
    exists = len(role) == 4
    return {
        "role_exists": exists,
        "can_login": exists and role[0] in ("t", "true"),  # bool || text gives 'true'
        "createdb": exists and role[1] in ("t", "true"),
        "salt_part": role[2] if exists else "",
        "stored_digest": role[3] if exists else "",
        "database_owner": values.get("database_owner", [""])[0] or None,
        "database_vector": values.get("database_vector", [""])[0] or None,
    }


# Shell function: does PostgreSQL accept this certificate and key? Both readable by postgres,
# the key matching the certificate and owned and protected as PostgreSQL demands (owner
# postgres and 0600 or less, or owner root and 0640 or less); else it refuses to start with
# ssl = on. Shared by TlsFiles and the scripts that write or point at the files.
TLS_USABLE_SH = r"""tls_usable() {
  cert_public=$(runuser -u postgres -- openssl x509 -noout -pubkey -in "$1" </dev/null 2>/dev/null) || return 1
  key_public=$(runuser -u postgres -- openssl pkey -pubout -passin pass: -in "$2" </dev/null 2>/dev/null) || return 1
  [ -n "$cert_public" ] && [ "$cert_public" = "$key_public" ] || return 1
  key_mode=$(stat -L -c %a "$2") && key_owner=$(stat -L -c %U "$2") || return 1
  case $key_owner in
    postgres) [ $((0$key_mode & 077)) -eq 0 ] ;;
    root) [ $((0$key_mode & 037)) -eq 0 ] ;;
    *) return 1 ;;
  esac
}
# $1 a certificate, then addresses: is every address among its names (openssl -checkip
# compares addresses, not spellings: fd00::2 matches FD00:0:0:0:0:0:0:2)?
cert_names_cover() {
  names_cert=$1
  shift
  for names_address in "$@"; do
    openssl x509 -noout -in "$names_cert" -checkip "$names_address" 2>/dev/null | grep -q ' does match ' || return 1
  done
}"""


class TlsFiles(FactBase):
    """The server certificate and key: whether PostgreSQL can use them (``TLS_USABLE_SH``),
    whether the certificate names every one of ``addresses``, the key's mode and owner, and
    whether openssl is installed.

    .. code:: python

        host.get_fact(TlsFiles, cert="/etc/.../server.crt", key="/etc/.../server.key", addresses=("10.0.1.10",))
        # {"openssl": True, "usable": True, "covers": True, "key_mode": "600", "key_owner": "postgres:postgres"}
    """

    def command(self, cert: str, key: str, addresses: tuple[str, ...] = ()):
        return f"""
PATH={SAFE_PATH}
{TLS_USABLE_SH}
command -v openssl >/dev/null && echo openssl=yes
tls_usable {shlex.quote(cert)} {shlex.quote(key)} && echo usable=yes
cert_names_cover {" ".join(shlex.quote(part) for part in (cert, *addresses))} && echo covers=yes
[ -e {shlex.quote(key)} ] && echo "key=$(stat -L -c '%a|%U:%G' {shlex.quote(key)})"
true
"""

    @staticmethod
    def default():
        return parse_tls_files([])

    def process(self, output):
        return parse_tls_files(output)


def parse_tls_files(lines: list[str]) -> dict:
    values = parse_key_values(lines)
    mode, _, owner = _first(values, "key").partition("|")
    return {
        "openssl": _first(values, "openssl") == "yes",
        "usable": _first(values, "usable") == "yes",
        "covers": _first(values, "covers") == "yes",
        "key_mode": mode or None,
        "key_owner": owner or None,
    }


LEDGER_SCHEMA = "pgvector_deploy"


LEDGER = f"{LEDGER_SCHEMA}.schema_migrations"


# What the ledger is, from pg_catalog alone: "none", "table" (the plain heap table we made,
# name and sha256 of type pg_catalog.text), or what else it is. The rows are read in the app's
# own session, so nothing the app put there runs with more than its rights; the shape is still
# checked (as superuser, reading the catalog only), so that a ledger replaced by a view or a
# table of other types is refused, named, rather than read.
LEDGER_SHAPE_SQL = (
    "SELECT CASE WHEN c.oid IS NULL THEN 'none' "
    "WHEN c.relkind <> 'r' THEN 'relkind ' || c.relkind::pg_catalog.text "
    "WHEN c.relam IS DISTINCT FROM (SELECT oid FROM pg_catalog.pg_am WHERE amname = 'heap') THEN 'a table access method' "
    "WHEN (SELECT pg_catalog.count(*) FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid AND NOT a.attisdropped "
    "AND a.attname IN ('name', 'sha256') AND a.atttypid = 'pg_catalog.text'::pg_catalog.regtype) <> 2 "
    "THEN 'columns name, sha256 not both of type pg_catalog.text' ELSE 'table' END "
    "FROM (SELECT) AS one LEFT JOIN pg_catalog.pg_class c ON c.relname = 'schema_migrations' "
    f"AND c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = '{LEDGER_SCHEMA}')"
)


LEDGER_ROWS_SQL = f"SELECT 'applied=' || l.name || '|' || l.sha256 FROM ONLY {LEDGER} AS l"


APP_LOGIN_TRIES = 20  # x 0.25 s: a pg_hba.conf/pg_ident.conf reload just sent may not be in force yet


class MigrationLedger(FactBase):
    """The app database's ledger: whether the database and the ledger table exist, each
    applied migration's name and sha256 (read in the app role's own session, ``as_app``), what
    refuses it (``LEDGER_SHAPE_SQL``), and whether the app could log in at all (``app_login``:
    no on a host whose pg_hba.conf has not the app's peer line yet, or without the role).
    """

    def command(self, platform: Platform, port: int, database: str, user: str):
        exists_sql = f"SELECT 1 FROM pg_catalog.pg_database WHERE datname = '{database}'"
        read = " ".join([as_app(platform, port, database, user), *(f"-c {shlex.quote(sql)}" for sql in ("BEGIN READ ONLY", LEDGER_ROWS_SQL, "COMMIT"))])
        return f"""
PATH={SAFE_PATH}
if [ "$({as_postgres(platform, port, 'postgres', exists_sql)} 2>/dev/null)" = 1 ]; then
  echo database=yes
  shape=$({as_postgres(platform, port, database, LEDGER_SHAPE_SQL)} 2>/dev/null)
  case $shape in
    table)
      echo ledger=yes
      tries=0
      until rows=$({read} </dev/null 2>/dev/null); do
        tries=$((tries + 1)); [ $tries -lt {APP_LOGIN_TRIES} ] || break; sleep 0.25
      done
      if [ $tries -lt {APP_LOGIN_TRIES} ]; then
        [ -z "$rows" ] || printf '%s\\n' "$rows" | grep '^applied='
      else
        echo app_login=no
      fi ;;
    none) ;;
    *) echo "ledger_refused=${{shape:-unreadable}}" ;;
  esac
fi
true
"""

    @staticmethod
    def default():
        return parse_ledger([])

    def process(self, output):
        return parse_ledger(output)


def parse_ledger(lines: list[str]) -> dict:
    values = parse_key_values(lines)
    applied = {}
    for entry in values.get("applied", []):
        name, _, digest = entry.rpartition("|")
        if name:
            applied[name] = digest
    refused = values.get("ledger_refused", [""])[0] or None
    return {
        "database": values.get("database", [""])[0] == "yes",
        "ledger": values.get("ledger", [""])[0] == "yes" or refused is not None,
        "applied": {} if refused else applied,
        "refused": refused,
        "app_login": values.get("app_login", [""])[0] != "no",
    }


class EnvFileState(FactBase):
    """The env file's sha256, mode and owner (never its content); nothing when it is missing."""

    def command(self, path: str):
        return f"""
PATH={SAFE_PATH}
file={shlex.quote(path)}
if [ -f "$file" ]; then
  echo "sha256=$(sha256sum < "$file" | cut -d' ' -f1)"
  echo "mode=$(stat -c %a "$file")"
  echo "owner=$(stat -c %U:%G "$file")"
fi
true
"""

    @staticmethod
    def default():
        return parse_env_file_state([])

    def process(self, output):
        return parse_env_file_state(output)


def parse_env_file_state(lines: list[str]) -> dict:
    values = parse_key_values(lines)
    digest = values.get("sha256", [""])[0]
    return {
        "sha256": digest or None,
        "mode": values.get("mode", [""])[0] or None,
        "owner": values.get("owner", [""])[0] or None,
    }


STANZA = "pgvector"


PGBR_CONFIG = "/etc/pgbackrest/pgbackrest.conf"


PGBR = f"runuser -u postgres -- pgbackrest --config={PGBR_CONFIG} --stanza={STANZA}"


# archive_mode as the server runs it, and the archiver's statistics (BackupState, BackupReport).
ARCHIVE_MODE_QUERY = "SELECT 'archive_mode=' || pg_catalog.current_setting('archive_mode')"
ARCHIVER_QUERY = (
    "SELECT 'archiver=' || archived_count || '|' || failed_count || '|' || "
    "coalesce(pg_catalog.date_part('epoch', last_archived_time)::bigint::text, '') || '|' || "
    "coalesce(pg_catalog.date_part('epoch', last_failed_time)::bigint::text, '') || '|' || coalesce(last_failed_wal, '') "
    "FROM pg_catalog.pg_stat_archiver"
)


class BackupState(FactBase):
    """The backup side of the host: pgBackRest installed, the managed files (sha256, mode, owner;
    never their content), archiving as the server runs it, the archiver's statistics, the WAL
    backlog, the timers, and ``pgbackrest info`` (when its configuration exists)."""

    def command(self, platform: Platform, port: int, paths: tuple[str, ...], timer_names: tuple[str, ...] = ()):
        files = " ".join(shlex.quote(path) for path in paths)
        queries = (
            ARCHIVE_MODE_QUERY,
            ARCHIVER_QUERY,
            "SELECT 'pending_restart=' || sourcefile || '|' || name FROM pg_catalog.pg_file_settings "
            f"WHERE error = '{PENDING_RESTART}'",
            "SELECT 'user_databases=' || pg_catalog.count(*) FROM pg_catalog.pg_database "
            "WHERE datname NOT IN ('postgres', 'template0', 'template1')",
            # archive_mode's own restart still pending (pg_file_settings has no row for a
            # setting whose file was set aside: its value just waits for the restart).
            ARCHIVE_MODE_PENDING_SQL,
            # Every file that sets archive_mode, in the order PostgreSQL reads them (the last applied wins).
            "SELECT 'archive_mode_file=' || sourcefile || '|' || coalesce(setting, '') || '|' || "
            "CASE WHEN applied THEN 't' ELSE 'f' END FROM pg_catalog.pg_file_settings WHERE name = 'archive_mode' ORDER BY seqno",
        )
        server = " ".join([as_postgres(platform, port, "postgres"), *(f"-c {shlex.quote(sql)}" for sql in queries)])
        timer_lines = "".join(
            f'echo "timer={name}|$(systemctl is-enabled {name} 2>/dev/null)|$(systemctl is-active {name} 2>/dev/null)"\n'
            for name in timer_names
        )
        return f"""
PATH={SAFE_PATH}
for file in {files}; do
  [ -f "$file" ] && echo "file=$file|$(sha256sum < "$file" | cut -d' ' -f1)|$(stat -c %a "$file")|$(stat -c %U:%G "$file")"
done
command -v pgbackrest >/dev/null 2>&1 && echo pgbackrest=yes
{server} </dev/null 2>/dev/null
echo "backlog=$(find {shlex.quote(platform.data_dir)}/pg_wal/archive_status -name '*.ready' 2>/dev/null | wc -l)"
[ -s {shlex.quote(platform.data_dir)}/PG_VERSION ] && echo data_dir=yes
{timer_lines}if [ -f {PGBR_CONFIG} ] && command -v pgbackrest >/dev/null 2>&1; then
  # The JSON alone on stdout; pgBackRest's warnings and errors (stderr) apart.
  err=$(mktemp)
  if out=$({PGBR} --output=json --log-level-console=off --log-level-stderr=warn info 2>"$err"); then
    echo "info=$(printf '%s' "$out" | tr -d '\\n')"
  fi
  [ ! -s "$err" ] || echo "info_error=$(grep -m1 -E 'ERROR|WARN' "$err" || head -n1 "$err")"
  rm -f "$err"
fi
true
"""

    def process(self, output):
        return parse_backup_state(output)


def parse_backup_state(lines: list[str]) -> dict:
    values = parse_key_values(lines)
    files = {}
    for entry in values.get("file", []):
        path, digest, mode, owner = entry.rsplit("|", 3)
        files[path] = (digest, mode, owner)
    archiver = (values.get("archiver", [""])[0].split("|") + ["", "", "", "", ""])[:5]
    info = None
    if values.get("info"):
        try:
            info = json.loads(values["info"][0])
        except ValueError:  # never a crash on output we did not expect: unreadable, as an error
            values.setdefault("info_error", [f"unreadable pgbackrest info output: {values['info'][0][:200]}"])
    stanza = info[0] if isinstance(info, list) and info and isinstance(info[0], dict) else {}
    status = stanza.get("status", {}) if stanza else {}
    return {
        "files": files,
        "pgbackrest": values.get("pgbackrest", [""])[0] == "yes",
        "archive_mode": values.get("archive_mode", [""])[0],
        "archived_count": int(archiver[0] or 0),
        "failed_count": int(archiver[1] or 0),
        "last_archived": int(archiver[2]) if archiver[2] else None,
        "last_failed": int(archiver[3]) if archiver[3] else None,
        "last_failed_wal": archiver[4],
        "pending_restart": values.get("pending_restart", []),
        "archive_mode_pending": values.get("archive_mode_pending", [""])[0] == "true",
        # (file, value, applied) of each archive_mode line, in PostgreSQL's reading order.
        "archive_mode_files": [tuple(entry.rsplit("|", 2)) for entry in values.get("archive_mode_file", [])],
        # None: not answered (PostgreSQL down, or a query failed): a restore refuses then.
        "user_databases": int(values["user_databases"][0]) if values.get("user_databases") else None,
        "backlog": int((values.get("backlog") or ["0"])[0] or 0),
        "data_dir": values.get("data_dir", [""])[0] == "yes",
        "timers": {entry.split("|")[0]: tuple(entry.split("|")[1:3]) for entry in values.get("timer", [])},
        "stanza_code": status.get("code") if stanza else None,  # 0 ok, 1 missing stanza path, 2 no backup
        "stanza_message": (status.get("message", "") if stanza else "") or values.get("info_error", [""])[0],
        "backups": [
            {"label": b["label"], "type": b["type"], "start": b["timestamp"]["start"], "stop": b["timestamp"]["stop"]}
            for b in stanza.get("backup", [])
        ]
        if stanza
        else [],
    }


ARCHIVE_MODE_PENDING_SQL = (
    "SELECT 'archive_mode_pending=' || pending_restart FROM pg_catalog.pg_settings WHERE name = 'archive_mode'"
)


ARCHIVE_PUSH_LOG = f"/var/log/pgbackrest/{STANZA}-archive-push.log"  # pgBackRest's log-path default


class BackupReport(FactBase):
    """What the backups look like now, at the end of the run: ``pgbackrest info``, the
    archiver's statistics, the WAL waiting on disk, pgBackRest's last archive-push error and
    the drill's last reports. Read only."""

    def command(self, platform: Platform, port: int):
        queries = (
            ARCHIVE_MODE_QUERY,
            ARCHIVER_QUERY,
        )
        server = " ".join([as_postgres(platform, port, "postgres"), *(f"-c {shlex.quote(sql)}" for sql in queries)])
        status = shlex.quote(f"{platform.data_dir}/pg_wal/archive_status")
        return f"""
PATH={SAFE_PATH}
echo "now=$(date +%s)"
{server} </dev/null 2>/dev/null
echo "backlog=$(find {status} -name '*.ready' 2>/dev/null | wc -l)"
echo "oldest_ready=$(find {status} -name '*.ready' -printf '%T@\\n' 2>/dev/null | sort -n | head -n1 | cut -d. -f1)"
if [ -f {PGBR_CONFIG} ] && command -v pgbackrest >/dev/null 2>&1; then
  err=$(mktemp)
  if out=$({PGBR} --output=json --log-level-console=off --log-level-stderr=warn info 2>"$err"); then
    echo "info=$(printf '%s' "$out" | tr -d '\\n')"
  fi
  [ ! -s "$err" ] || echo "info_error=$(grep -m1 -E 'ERROR|WARN' "$err" || head -n1 "$err")"
  rm -f "$err"
fi
[ ! -f {ARCHIVE_PUSH_LOG} ] || echo "push_error=$(grep -E ' ERROR: ' {ARCHIVE_PUSH_LOG} | tail -n1 | cut -c1-600)"
for report in last last-good; do
  [ ! -f {DRILL_DIR}/$report.json ] || echo "drill_$report=$(head -c 20000 {DRILL_DIR}/$report.json | tr -d '\\n')"
done
true
"""

    def process(self, output):
        return backup_report(output)


def _moment(seconds: int | None, now: int) -> dict | None:
    if seconds is None:
        return None
    return {"at": datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "age_seconds": max(0, now - seconds)}


def _drill(text: str | None) -> dict | None:
    if not text:
        return None
    try:
        report = json.loads(text)
    except ValueError:
        return {"result": "unreadable", "error": f"{DRILL_DIR} holds a report that is not JSON"}
    if not isinstance(report, dict):
        return {"result": "unreadable", "error": f"{DRILL_DIR} holds a report that is not a JSON object"}
    return {key: report.get(key) for key in ("result", "started_at", "seconds", "backup", "recovery_point", "error")}


def backup_report(lines: list[str]) -> dict:
    """The fact's lines as the nightly report's ``backups`` entry of a host."""
    values = parse_key_values(lines)
    state = parse_backup_state(lines)
    now = int((values.get("now") or ["0"])[0] or 0)
    newest = {}
    for kind, types in (("last_full", ("full",)), ("last_diff", ("diff", "incr")), ("last", ("full", "diff", "incr"))):
        found = [b for b in state["backups"] if b["type"] in types]
        newest[kind] = {"label": found[-1]["label"], "type": found[-1]["type"], **_moment(found[-1]["stop"], now)} if found else None
    last_archived, last_failed = state["last_archived"], state["last_failed"]
    if state["archive_mode"] != "on":
        archive_status = state["archive_mode"] or "unknown (PostgreSQL did not answer)"
    elif last_failed is not None and last_failed > (last_archived or 0):
        archive_status = "failing"
    else:
        archive_status = "ok" if last_archived is not None else "nothing archived yet"
    oldest = (values.get("oldest_ready") or [""])[0]
    push_error = (values.get("push_error") or [""])[0]
    wal = {
        "status": archive_status,
        "archive_mode": state["archive_mode"],
        "last_archived": _moment(last_archived, now),
        "archived_count": state["archived_count"],
        "failed_count": state["failed_count"],
        "last_failed": _moment(last_failed, now),
        "last_failed_wal": state["last_failed_wal"] or None,
        # The archive lag: how long the oldest segment not yet in S3 has waited (0: none waits).
        "backlog_files": state["backlog"],
        "lag_seconds": max(0, now - int(oldest)) if oldest.isdigit() else 0,
    }
    if archive_status == "failing":
        reason = push_error.split(" ERROR: ", 1)[-1].strip() if push_error else ""
        wal["reason"] = reason or f"see PostgreSQL's log ({ARCHIVE_PUSH_LOG} has no error line)"
    drill = _drill((values.get("drill_last") or [None])[0])
    good = _drill((values.get("drill_last-good") or [None])[0])
    return {
        "repository": "ok" if state["stanza_code"] == 0 else (state["stanza_message"] or "not configured or not readable"),
        "backup_count": len(state["backups"]),
        **newest,
        "wal_archive": wal,
        "drill": None if drill is None else {**drill, "last_good_started_at": (good or {}).get("started_at")},
    }
