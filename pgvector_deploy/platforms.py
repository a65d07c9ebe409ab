"""The platform table: every per-distribution difference lives here, as data.

A ``Platform`` says where a PostgreSQL major comes from on a distribution, which packages a
pgvector build needs, where ``pg_config`` is, how the cluster is created and started, and
where its files are. Code elsewhere reads these fields and never branches on a distribution
name. Adding a distribution is one entry in ``PLATFORM_TEMPLATES`` plus recorded facts for
its tests.

The major is a parameter of the data: a template's paths, packages and services say
``{major}``, and ``majors`` says which majors the distribution offers and from where (its
own repositories, or PGDG's). ``for_major`` fills one in; ``PLATFORMS`` holds every
platform for the default major, 15 (host data ``pg_major`` picks another).

The values come from ``shared/reference/platforms.md``. Only Debian 12 (its own 15) and
Debian 13 (its own 17) are proved on real hosts; entries marked "not verified here" are the
best public knowledge, pinned by plan tests (tests/unit/test_plans.py, test_platform_plans.py,
test_majors.py).

Example::

    >>> detect_platform({"ID": "debian", "VERSION_ID": "12"}, "x86_64").key
    'debian-12'
    >>> detect_platform({"ID": "rocky", "VERSION_ID": "9.4"}, "aarch64").key
    'rhel-9'
    >>> detect_platform({"ID": "debian", "VERSION_ID": "13"}, "aarch64").key
    'debian-13'
    >>> detect_platform({"ID": "debian", "VERSION_ID": "13"}, "x86_64").for_major(17).bindir
    '/usr/lib/postgresql/17/bin'
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from os.path import dirname

from .errors import fail
from .paths import STATE_DIR

POSTGRES_MAJOR = 15  # the default major (host data pg_major)
KNOWN_MAJORS = (15, 16, 17, 18)  # the majors the toolkit knows how to install
# Where a platform's major comes from: the distribution's own repositories, or PGDG's.
DISTRIBUTION = "distribution"
PGDG = "PGDG"
SUPPORTED_ARCHES = ("x86_64", "aarch64")


@dataclass(frozen=True)
class PackageManager:
    name: str
    tool: str  # the command the host profile must find (HostProfile's package_tools)
    # Shell that installs the packages given as {packages}; non-interactive, waits for a held lock.
    install: str
    # Shell that prints "<name> installed" for each installed package of {packages}.
    query_installed: str
    # The package database's own tool (HostProfile asks it only where it exists).
    database_tool: str = ""
    # Shell that prints which package owns {file}, in the tool's own words (facts.parse_pgvector_owners
    # reads both); prints nothing for a file no package owns.
    query_owner: str = ""
    # What the user runs to remove {packages} (named in refusals, never run by the toolkit).
    remove: str = ""


PACKAGE_MANAGERS = {
    "apt": PackageManager(
        name="apt",
        tool="apt-get",
        install=(
            "export DEBIAN_FRONTEND=noninteractive && "
            "apt-get -q -o DPkg::Lock::Timeout=600 update && "
            "apt-get -q -y -o DPkg::Lock::Timeout=600 install --no-install-recommends {packages}"
        ),
        query_installed="dpkg-query -W -f='${{Package}} ${{db:Status-Status}}\\n' {packages} 2>/dev/null || true",
        database_tool="dpkg-query",
        # "<package>[, <package>...]: <file>" (and "diversion by ..." lines for a diverted file).
        query_owner="dpkg-query -S {file} 2>/dev/null",
        remove="apt-get remove {packages}",
    ),
    "dnf": PackageManager(
        name="dnf",
        tool="dnf",
        # dnf waits for another dnf holding its lock by itself.
        install="dnf -y install {packages}",
        # By what a package provides, not its name: EL 9 and Amazon Linux 2023 images ship
        # curl-minimal and coreutils-single, which provide (and conflict with) curl and
        # coreutils; asking for the names would install the conflicting full packages.
        query_installed=(
            'for name in {packages}; do rpm -q --quiet --whatprovides "$name" 2>/dev/null && echo "$name installed"; done; true'
        ),
        database_tool="rpm",
        # One package name a line; rpm prints "file ... is not owned by any package" (exit 1)
        # on standard output for a file no package owns, so only a success counts.
        query_owner="owners=$(rpm -qf --qf '%{{NAME}}\\n' {file} 2>/dev/null) && printf '%s\\n' \"$owners\"",
        remove="dnf remove {packages}",
    ),
}


# The base tools the run's shell uses on a host, by the package that provides them: curl and
# ca-certificates (the tarball download, PGDG's key), openssl (the TLS certificate: made and
# checked on the host), tar and gzip (unpacking the tarball),
# coreutils (mktemp, sha256sum, nproc, base64, ...), findutils, sed, grep, awk, procps
# (sysctl, pkill), util-linux (flock for the host lock, runuser), iproute2 (ip, ss).
# Minimal images may lack some (a Debian minbase has no curl, procps or iproute2), so they
# are installed when missing instead of assumed; sudo and a POSIX sh must already be there.
TOOL_PACKAGES = {
    "apt": (
        "curl", "ca-certificates", "openssl", "tar", "gzip", "coreutils", "findutils", "sed", "grep", "mawk",
        "procps", "util-linux", "iproute2",
    ),
    # Asked by what they provide (PackageManager "dnf"): curl-minimal and coreutils-single count.
    "dnf": (
        "curl", "ca-certificates", "openssl", "tar", "gzip", "coreutils", "findutils", "sed", "grep", "gawk",
        "procps-ng", "util-linux", "iproute",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class RepositoryStep:
    """One step of making a PostgreSQL major installable: a repository, a key, a module switch.

    ``check`` is a shell test that succeeds when the step is already done, so a converged
    host yields nothing; ``setup`` does the step. Both may say ``{arch}`` (``uname -m``).
    ``os_ids`` limits the step to some os-release IDs of its platform (empty: all of them).
    """

    check: str
    setup: str
    os_ids: tuple[str, ...] = ()

    def for_host(self, arch: str) -> RepositoryStep:
        # replace, not str.format: shell is full of braces ({ ...; }, ${var}).
        return RepositoryStep(self.check.replace("{arch}", arch), self.setup.replace("{arch}", arch), self.os_ids)

    def for_major(self, major: int) -> RepositoryStep:
        return RepositoryStep(_fill(self.check, major), _fill(self.setup, major), self.os_ids)


def _fill(text: str, major: int) -> str:
    return text.replace("{major}", str(major))


@dataclass(frozen=True)
class Platform:
    """One distribution for one major (``major``), or its template (``major`` 0: the string
    fields say ``{major}``; ``for_major`` fills them in)."""

    key: str
    label: str
    os_ids: tuple[str, ...]  # os-release ID values
    versions: tuple[str, ...]  # os-release VERSION_ID values (or their major part)
    package_manager: PackageManager
    server_packages: tuple[str, ...]
    build_packages: tuple[str, ...]  # PGXS headers and the compiler
    # The target major's own binaries (pg_config, psql, pg_ctl). Never a /usr/bin that picks
    # the newest installed major; /usr/bin only where the packages allow one major at a time.
    bindir: str
    data_dir: str
    config_dir: str
    socket_dir: str
    create_cluster: str  # initialises a *new* cluster; only run when data_dir has no PG_VERSION
    start_without_systemd: str  # starts the cluster on hosts without systemd
    restart_without_systemd: str  # restarts it there (a listen_addresses change needs one)
    service: str  # systemd unit of the cluster
    boot_unit: str  # systemd unit enabled so the cluster starts at boot
    proof: str  # "e2e": proved on real hosts in CI; "plan": plan-tested from recorded facts
    # The majors the distribution offers, each with where it comes from (DISTRIBUTION or PGDG).
    majors: tuple[tuple[int, str], ...]
    # Set-up before a PGDG major's packages can be installed (PGDG's repository, modules, CRB).
    pgdg_repository: tuple[RepositoryStep, ...] = ()
    # Set-up before this major's packages can be installed (for_major: PGDG's steps or none).
    repository: tuple[RepositoryStep, ...] = ()
    # Base tools the run's shell uses on the host, from the distribution's own repositories
    # (installed first when missing: postgres.tools).
    tool_packages: tuple[str, ...] = ()
    # Packages that ship pgvector for the major (``{major}`` filled in like the others): the
    # build would overwrite their files, so the preflight refuses a host that has one
    # (preflight.check_packaged_pgvector). A package by another name is caught by owning the
    # files (HostProfile asks the package database who owns vector.so and vector.control).
    pgvector_packages: tuple[str, ...] = ()
    major: int = 0  # the major this entry is for; 0: a template
    # Major-specific proof where it differs from ``proof`` (Debian 13's own 17 is proved e2e).
    proof_by_major: tuple[tuple[int, str], ...] = ()

    def for_major(self, major: int) -> Platform:
        """This distribution for ``major``: paths, packages and services filled in, and the
        repository steps its source needs. Raises UnsupportedHost naming what it offers."""
        template = TEMPLATES_BY_KEY.get(self.key, self) if self.major else self
        source = dict(template.majors).get(major)
        if source is None:
            raise UnsupportedHost(
                f"pg_major {major}: {template.label} has no PostgreSQL {major} this toolkit installs; it offers "
                f"{template.offers()}. "
                f"Nothing was changed. Fix: set pg_major to one of {', '.join(str(m) for m, _ in template.majors)}, "
                "or use another host."
            )
        filled = {}
        for spec in dataclasses.fields(template):
            value = getattr(template, spec.name)
            if isinstance(value, str):
                filled[spec.name] = _fill(value, major)
            elif isinstance(value, tuple) and value and all(isinstance(item, str) for item in value):
                filled[spec.name] = tuple(_fill(item, major) for item in value)  # package names
        filled.pop("proof")
        steps = tuple(step.for_major(major) for step in template.pgdg_repository) if source == PGDG else ()
        return dataclasses.replace(
            template,
            **filled,
            repository=steps,
            major=major,
            proof=dict(template.proof_by_major).get(major, template.proof),
        )

    @property
    def source(self) -> str:
        """Where this entry's major comes from: DISTRIBUTION or PGDG."""
        return dict(self.majors)[self.major]

    def offers(self) -> str:
        """``PostgreSQL 17 (the distribution); 15, 16, 18 (PGDG)``: the majors, by where they come from."""
        parts = []
        for source in (DISTRIBUTION, PGDG):
            found = [str(major) for major, where in self.majors if where == source]
            if found:
                parts.append(f"{', '.join(found)} ({'the distribution' if source == DISTRIBUTION else source})")
        return "PostgreSQL " + "; ".join(parts)

    @property
    def build_stamp(self) -> str:
        """The build stamp of pgvector for this major: 15 keeps the path it always had."""
        return f"{STATE_DIR}/build.json" if self.major == POSTGRES_MAJOR else f"{STATE_DIR}/build-pg{self.major}.json"
    backup_packages: tuple[str, ...] = ()
    # Where backup_packages is empty: why no repository the toolkit sets up has pgBackRest here
    # (backups.packages refuses such a host, naming it).
    backup_unavailable: str = ""

    def repository_steps(self, os_id: str, arch: str) -> tuple[RepositoryStep, ...]:
        """The repository steps for one host, in order, with its ``{arch}`` filled in."""
        return tuple(step.for_host(arch) for step in self.repository if not step.os_ids or os_id in step.os_ids)

    @property
    def postgres_packages(self) -> tuple[str, ...]:
        """The server, the PGXS headers and the compiler (postgres.packages installs them)."""
        return self.server_packages + self.build_packages

    @property
    def packages(self) -> tuple[str, ...]:
        """Every package the run needs, tools first (InstalledPackages asks about all of them;
        backup_packages are asked by facts.BackupState, only on hosts with backups)."""
        return self.tool_packages + self.postgres_packages

    @property
    def pg_config(self) -> str:
        return f"{self.bindir}/pg_config"

    @property
    def psql(self) -> str:
        return f"{self.bindir}/psql"


# Templates: {major} is filled in by Platform.for_major. Each major has its own bindir,
# cluster {major}/main, configuration and service (postgresql-common keeps majors apart).
DEBIAN_FAMILY_PATHS = dict(
    bindir="/usr/lib/postgresql/{major}/bin",
    data_dir="/var/lib/postgresql/{major}/main",
    config_dir="/etc/postgresql/{major}/main",
    socket_dir="/var/run/postgresql",
    create_cluster="pg_createcluster {major} main --start-conf=auto",
    start_without_systemd="pg_ctlcluster {major} main start",
    restart_without_systemd="pg_ctlcluster {major} main restart",
    service="postgresql@{major}-main",
    boot_unit="postgresql",
)
DEBIAN_FAMILY_PACKAGES = dict(
    tool_packages=TOOL_PACKAGES["apt"],
    server_packages=("postgresql-{major}",),
    build_packages=("postgresql-server-dev-{major}", "gcc", "make", "libc6-dev"),
    # Debian's own (trixie on; bookworm has none) and PGDG's apt package have this name.
    pgvector_packages=("postgresql-{major}-pgvector",),
    # Debian 12 ships pgBackRest 2.45; Debian 13 and Ubuntu have it too (and PGDG newer ones).
    backup_packages=("pgbackrest",),
)


def offered(distribution: tuple[int, ...] = (), pgdg: tuple[int, ...] = ()) -> tuple[tuple[int, str], ...]:
    """The ``majors`` of a platform: those its distribution ships, then those PGDG adds."""
    return tuple(sorted([(m, DISTRIBUTION) for m in distribution] + [(m, PGDG) for m in pgdg]))

PGDG_APT_KEY_URL = "https://www.postgresql.org/media/keys/ACCC4CF8.asc"
PGDG_APT_KEYRING = "/etc/apt/keyrings/postgresql.asc"
PGDG_APT_LIST = "/etc/apt/sources.list.d/pgdg.list"


def pgdg_apt(codename: str) -> tuple[RepositoryStep, ...]:
    """The PGDG apt repository: its key, then its source line (apt-get update runs at install)."""
    source = shlex.quote(
        f"deb [signed-by={PGDG_APT_KEYRING}] https://apt.postgresql.org/pub/repos/apt {codename}-pgdg main"
    )
    return (
        RepositoryStep(
            check=f"[ -s {PGDG_APT_KEYRING} ]",
            # Written beside the keyring and renamed, so a failed download leaves no empty key.
            setup=(
                f"install -d -m 0755 {dirname(PGDG_APT_KEYRING)} && "
                f"curl -fsSL --retry 2 -o {PGDG_APT_KEYRING}.new {PGDG_APT_KEY_URL} && "
                f"chmod 0644 {PGDG_APT_KEYRING}.new && mv -f {PGDG_APT_KEYRING}.new {PGDG_APT_KEYRING}"
            ),
        ),
        RepositoryStep(
            check=f"grep -qsxF {source} {PGDG_APT_LIST}",
            setup=f"printf '%s\\n' {source} > {PGDG_APT_LIST}",
        ),
    )


def pg_ctl_start(bindir: str, data_dir: str, socket_dir: str, action: str = "start") -> str:
    """Start a cluster with its own major's pg_ctl, for distributions without pg_ctlcluster.

    Without systemd nothing creates the socket directory at boot (systemd-tmpfiles does), so
    it is made first; the log goes beside the data directory, in the postgres user's home.
    """
    return (
        f"install -d -m 2775 -o postgres -g postgres {socket_dir} && "
        f"runuser -u postgres -- {bindir}/pg_ctl -D {data_dir} -l {dirname(data_dir)}/pg_ctl.log {action} -w"
    )


def ubuntu(version: str, codename: str, shipped: tuple[int, ...]) -> Platform:
    """Ubuntu LTS: PostgreSQL 15 from PGDG (22.04 ships 14, 24.04 ships 16, 26.04 ships 18),
    Debian's layout. ``shipped``: the known majors the distribution has itself."""
    return Platform(
        key=f"ubuntu-{version}",
        label=f"Ubuntu {version} ({codename})",
        os_ids=("ubuntu",),
        versions=(version,),
        package_manager=PACKAGE_MANAGERS["apt"],
        proof="plan",
        majors=offered(shipped, tuple(m for m in KNOWN_MAJORS if m not in shipped)),
        pgdg_repository=pgdg_apt(codename),
        **DEBIAN_FAMILY_PACKAGES,
        **DEBIAN_FAMILY_PATHS,
    )


AMAZON_LINUX_2023_DATA_DIR = "/var/lib/pgsql/data"
AMAZON_LINUX_2023_SOCKET_DIR = "/run/postgresql"  # not verified here (Fedora's packaging)

PGDG_EL_BINDIR = "/usr/pgsql-{major}/bin"
PGDG_EL_DATA_DIR = "/var/lib/pgsql/{major}/data"
PGDG_EL_SOCKET_DIR = "/run/postgresql"  # not verified here (PGDG's packaging)
# PGDG's yum package of pgvector (pgvector_15).
PGDG_EL_PGVECTOR = ("pgvector_{major}",)
# dnf keeps a module's state in this file; reading it needs no repository metadata.
POSTGRESQL_MODULE_DISABLED = "grep -qs '^state=disabled' /etc/dnf/modules.d/postgresql.module"


def pgdg_yum_repo_rpm(el_major: int) -> str:
    """PGDG's repository RPM for one EL major (``{arch}`` is filled in per host)."""
    return (
        f"https://download.postgresql.org/pub/repos/yum/reporpms/EL-{el_major}-{{arch}}/pgdg-redhat-repo-latest.noarch.rpm"
    )


def repo_enabled(repo_id_pattern: str) -> str:
    """Shell test: an enabled repository's id matches the extended regex (whole id)."""
    return f"dnf -q repolist --enabled 2>/dev/null | grep -Eq '^({repo_id_pattern})[[:space:]]'"


def rhel_crb(el_major: int) -> RepositoryStep:
    """CodeReady Builder on RHEL (postgresql15-devel needs its perl(IPC::Run)).

    Pay-as-you-go RHEL on EC2 is not registered with subscription-manager: its repositories
    come from RHUI, where CRB is ``codeready-builder-for-rhel-<major>-rhui-rpms`` (listed,
    disabled) and is enabled with dnf config-manager, as AWS ParallelCluster's cookbook does.
    subscription-manager is only for hosts registered with it (not verified here).
    """
    rhui = f"codeready-builder-for-rhel-{el_major}-({{arch}}-)?rhui-rpms"
    subscribed = f"codeready-builder-for-rhel-{el_major}-{{arch}}-rpms"
    neither = fail(
        f"CodeReady Builder cannot be enabled: dnf lists no RHUI repository codeready-builder-for-rhel-{el_major}-rhui-rpms "
        f"and the host is not registered with subscription-manager. postgresql{{major}}-devel needs it, so "
        "PostgreSQL was not installed. Fix: on a pay-as-you-go EC2 image (RHUI), make sure its RHUI client "
        f"repositories are present and run dnf config-manager --set-enabled codeready-builder-for-rhel-{el_major}-rhui-rpms; "
        f"on a subscribed host, register it (subscription-manager register) and run subscription-manager repos "
        f"--enable {subscribed}; then run again."
    )
    refused = fail(
        f"subscription-manager could not enable {subscribed} (see above); postgresql{{major}}-devel "
        "needs it, so PostgreSQL was not installed. Fix: attach a subscription that includes CodeReady "
        "Builder, then run again."
    )
    return RepositoryStep(
        check=repo_enabled(f"{rhui}|{subscribed}"),
        setup=(
            f"rhui=$(dnf -q repolist --all 2>/dev/null | awk '{{print $1}}' | grep -Ex '{rhui}' | head -n1); "
            'if [ -n "$rhui" ]; then dnf -y install dnf-plugins-core && dnf config-manager --set-enabled "$rhui"; '
            f"elif subscription-manager identity >/dev/null 2>&1; then subscription-manager repos --enable {subscribed} || {refused}; "
            f"else {neither}; fi"
        ),
        os_ids=("rhel",),
    )


# Rocky Linux and AlmaLinux call CodeReady Builder "crb".
ROCKY_ALMA_CRB = RepositoryStep(
    check=repo_enabled("crb"),
    setup="dnf -y install dnf-plugins-core && dnf config-manager --set-enabled crb",
    os_ids=("rocky", "almalinux"),
)


def enterprise_linux(el_major: int, postgresql_module: bool) -> Platform:
    """RHEL, Rocky and AlmaLinux: every major from PGDG, CRB for the headers' dependencies.

    ``postgresql_module``: AppStream has a postgresql module (EL 9), which would hide PGDG's
    packages, so it is disabled first. EL 10 has no modules.
    """
    modules = (
        (RepositoryStep(check=POSTGRESQL_MODULE_DISABLED, setup="dnf -qy module disable postgresql"),)
        if postgresql_module
        else ()
    )
    return Platform(
        key=f"rhel-{el_major}",
        label=f"RHEL / Rocky / AlmaLinux {el_major}",
        os_ids=("rhel", "rocky", "almalinux"),
        versions=(str(el_major),),
        package_manager=PACKAGE_MANAGERS["dnf"],
        tool_packages=TOOL_PACKAGES["dnf"],
        server_packages=("postgresql{major}-server",),
        build_packages=("postgresql{major}-devel", "gcc", "make", "redhat-rpm-config"),
        pgvector_packages=PGDG_EL_PGVECTOR,
        backup_packages=("pgbackrest",),  # from PGDG, already set up for PostgreSQL (not verified here)
        bindir=PGDG_EL_BINDIR,
        data_dir=PGDG_EL_DATA_DIR,
        config_dir=PGDG_EL_DATA_DIR,
        socket_dir=PGDG_EL_SOCKET_DIR,
        create_cluster=f"{PGDG_EL_BINDIR}/postgresql-{{major}}-setup initdb",
        start_without_systemd=pg_ctl_start(PGDG_EL_BINDIR, PGDG_EL_DATA_DIR, PGDG_EL_SOCKET_DIR),
        restart_without_systemd=pg_ctl_start(PGDG_EL_BINDIR, PGDG_EL_DATA_DIR, PGDG_EL_SOCKET_DIR, "restart"),
        service="postgresql-{major}",
        boot_unit="postgresql-{major}",
        proof="plan",
        # AppStream's own postgresql (EL 9 module, EL 10's 16) is not used: PGDG for every major.
        majors=offered(pgdg=KNOWN_MAJORS),
        pgdg_repository=(
            RepositoryStep(check="rpm -q --quiet pgdg-redhat-repo", setup=f"dnf -y install {pgdg_yum_repo_rpm(el_major)}"),
            *modules,
            # postgresql{major}-devel needs perl(IPC::Run) from CRB, enabled differently per distribution.
            rhel_crb(el_major),
            ROCKY_ALMA_CRB,
        ),
    )


PLATFORM_TEMPLATES: tuple[Platform, ...] = (
    Platform(
        key="debian-12",
        label="Debian 12 (bookworm)",
        os_ids=("debian",),
        versions=("12",),
        package_manager=PACKAGE_MANAGERS["apt"],
        proof="e2e",
        # Only 15 (bookworm's own) is proved on real hosts; PGDG's are plan-tested.
        proof_by_major=((16, "plan"), (17, "plan"), (18, "plan")),
        majors=offered((15,), (16, 17, 18)),
        pgdg_repository=pgdg_apt("bookworm"),
        **DEBIAN_FAMILY_PACKAGES,
        **DEBIAN_FAMILY_PATHS,
    ),
    Platform(
        key="debian-13",
        label="Debian 13 (trixie)",
        os_ids=("debian",),
        versions=("13",),
        package_manager=PACKAGE_MANAGERS["apt"],
        proof="plan",
        # trixie ships PostgreSQL 17 (proved on real trixie hosts); 15, 16 and 18 come from PGDG.
        proof_by_major=((17, "e2e"),),
        majors=offered((17,), (15, 16, 18)),
        pgdg_repository=pgdg_apt("trixie"),
        **DEBIAN_FAMILY_PACKAGES,
        **DEBIAN_FAMILY_PATHS,
    ),
    ubuntu("22.04", "jammy", ()),
    ubuntu("24.04", "noble", (16,)),
    ubuntu("26.04", "resolute", (18,)),
    Platform(
        key="amzn-2023",
        label="Amazon Linux 2023",
        os_ids=("amzn",),
        versions=("2023",),
        package_manager=PACKAGE_MANAGERS["dnf"],
        tool_packages=TOOL_PACKAGES["dnf"],
        server_packages=("postgresql{major}-server",),
        # postgresql15-server-devel, not libpq-devel: they conflict, and libpq-devel's pg_config
        # has no PGXS. amazon-rpm-config provides the -specs= files that `pg_config --ldflags`
        # names (public issue reports; not verified here).
        build_packages=("postgresql{major}-server-devel", "gcc", "make", "amazon-rpm-config"),
        # Not verified here whether Amazon Linux 2023's own repositories carry pgvector, or
        # by which name: postgresql15-pgvector follows its postgresql15-* names (a guess);
        # PGDG's name covers a host that added PGDG's EL-9 repository. A package by any other
        # name is caught by owning vector.so or vector.control.
        pgvector_packages=("postgresql{major}-pgvector", *PGDG_EL_PGVECTOR),
        # postgresql15* conflict with the other majors' packages, so /usr/bin is that major's
        # own: one major per host (preflight.check_binaries refuses another one's server there).
        bindir="/usr/bin",
        data_dir=AMAZON_LINUX_2023_DATA_DIR,
        config_dir=AMAZON_LINUX_2023_DATA_DIR,
        socket_dir=AMAZON_LINUX_2023_SOCKET_DIR,
        create_cluster="postgresql-setup --initdb",
        start_without_systemd=pg_ctl_start("/usr/bin", AMAZON_LINUX_2023_DATA_DIR, AMAZON_LINUX_2023_SOCKET_DIR),
        restart_without_systemd=pg_ctl_start(
            "/usr/bin", AMAZON_LINUX_2023_DATA_DIR, AMAZON_LINUX_2023_SOCKET_DIR, "restart"
        ),
        service="postgresql",
        boot_unit="postgresql",
        proof="plan",
        # No pgBackRest: Amazon Linux 2023's repositories do not ship it, PGDG's yum repository
        # has no Amazon Linux 2023 target (its repository RPMs are for EL and Fedora, and require
        # /etc/redhat-release), and EPEL does not fit AL2023 either.
        backup_unavailable=(
            "Amazon Linux 2023's own repositories have no pgbackrest package, and PGDG's yum repository, which has it "
            "for RHEL, Rocky and AlmaLinux, does not support Amazon Linux 2023 (its repository packages are for EL "
            "and Fedora only)"
        ),
        # The distribution's postgresql15..18 packages (platforms.md; not verified here).
        majors=offered((15, 16, 17, 18)),
    ),
    enterprise_linux(9, postgresql_module=True),
    enterprise_linux(10, postgresql_module=False),
)

TEMPLATES_BY_KEY = {template.key: template for template in PLATFORM_TEMPLATES}
# Every platform for the default major (what a host without pg_major gets).
PLATFORMS: tuple[Platform, ...] = tuple(template.for_major(POSTGRES_MAJOR) for template in PLATFORM_TEMPLATES)

# Distributions we recognise and refuse, with the reason a user should read.
REFUSED = {
    ("amzn", "2"): (
        "Amazon Linux 2 reached end of life on 2026-06-30 and has no PostgreSQL 15. Fix: use Amazon Linux 2023"
    ),
    ("centos", "7"): (
        "CentOS 7 is end of life and has no supported PostgreSQL 15 packages. Fix: use Rocky Linux 9 or AlmaLinux 9"
    ),
}


class UnsupportedHost(Exception):
    """The host is not one we provision; the message says what was found and what is supported."""


def supported_summary() -> str:
    """``supported: A, B and C, each on x86_64 or aarch64`` (for refusal messages)."""
    *others, last = [platform.label for platform in PLATFORMS]
    names = f"{', '.join(others)} and {last}" if others else last
    return f"supported: {names}, each on {' or '.join(SUPPORTED_ARCHES)}"


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
