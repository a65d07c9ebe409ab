"""Look before touching: validate host data and inspect the host, then plan or refuse.

``look`` gathers facts only (nothing on the host changes) and returns a ``Plan`` for the
rest of the recipe, or a ``Refusal`` whose message names what was found and the fix. A
refused host gets exactly one operation, ``refuse``, which fails that host alone; other
hosts in the same run carry on.

Example::

    plan = preflight.start(host, config)
    if isinstance(plan, preflight.Refusal):
        preflight.refuse(plan, name=preflight.REFUSAL)
"""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra.api import operation

from .backups import expected_facts as backup_facts
from .errors import fail, unexpected_error
from .facts import (
    AppState,
    ClusterState,
    EnvFileState,
    HostProfile,
    InstalledPackages,
    LoginAccess,
    MigrationLedger,
    PgvectorState,
    RepositoryChecks,
    ServerConfig,
    TlsFiles,
    certificate_paths,
)
from .plan import POSTGRES_PORT, Plan, tarball_path
from .platforms import POSTGRES_MAJOR, Platform, UnsupportedHost, detect_platform
from .loading import load
from .settings import Settings, SettingsError, validate_settings
from .shell import fails_host_on_error
from .tuning import check_overrides

# The name of the one operation a refused host gets (the nightly report reads it).
REFUSAL = "Refuse this host (nothing changed)"


@dataclass(frozen=True)
class Refusal:
    message: str

    def __repr__(self) -> str:
        return "Refusal"


def check_port(profile: dict, platform: Platform, port: int) -> None:
    """Refuse when something other than our cluster (of pg_major) owns (or will own) the port."""
    major = platform.major
    for cluster in profile["clusters"]:
        if cluster["major"] == major and cluster["name"] == "main" and cluster["port"] != port:
            raise UnsupportedHost(
                f"PostgreSQL {major} cluster {major}/main listens on port {cluster['port']}, "
                f"but this toolkit manages it on port {port}. Fix: move that cluster to port {port} "
                f"(port = {port} in {platform.config_dir}/postgresql.conf, then restart it)."
            )
        if cluster["major"] != major and cluster["port"] == port:
            raise UnsupportedHost(
                f"port {port} belongs to PostgreSQL {cluster['major']} (cluster {cluster['major']}/{cluster['name']}, "
                f"{cluster['status']}). Fix: move or remove that cluster, so PostgreSQL {major} can use port {port}."
            )
    if any(
        cluster["major"] == major and cluster["port"] == port and cluster["status"] == "online"
        for cluster in profile["clusters"]
    ):
        return  # the distribution's cluster tool says our own cluster serves the port
    ours = f"{platform.bindir}/postgres"
    for listener in profile["listeners"]:
        exe = listener["exe"]
        if exe == ours:
            # Our own PostgreSQL already serves the port. The server binary itself, not
            # anything in the bindir: Amazon Linux 2023's is /usr/bin, docker-proxy's too.
            continue
        owner = exe or listener["process"] or "an unknown process"
        if "postgres" in exe or listener["process"] == "postgres":
            raise UnsupportedHost(
                f"port {port} is taken by another PostgreSQL ({owner}), not PostgreSQL {major} "
                f"from {platform.bindir}. Fix: stop it or move it to another port."
            )
        raise UnsupportedHost(
            f"port {port} is taken by {owner} ({listener['line']}). Fix: stop that service "
            f"(a docker-proxy here is a container publishing {port}) or free port {port} for PostgreSQL."
        )


def check_binaries(profile: dict, platform: Platform) -> None:
    """Refuse when another major's server sits where the platform installs pg_major.

    Only possible where the bindir is shared (Amazon Linux 2023's /usr/bin): its
    postgresql15 packages conflict with that major's, and the port check would take that
    server for ours.
    """
    ours = f"{platform.bindir}/postgres"
    for binary in profile["postgres_binaries"]:
        if binary["path"] == ours and binary["major"] not in (None, platform.major):
            raise UnsupportedHost(
                f"{ours} is PostgreSQL {binary['major']} ({binary['version']}), where {platform.label} puts "
                f"PostgreSQL {platform.major}. Fix: remove PostgreSQL {binary['major']}'s packages, or use "
                f"another host."
            )


def other_clusters(profile: dict, platform: Platform) -> list[tuple[int, str]]:
    """Clusters of another major than pg_major on the host, as (major, description): those
    pg_lsclusters lists (Debian's layout), and other majors' data directories holding a
    PG_VERSION (PGDG's EL layout, where each major has its own)."""
    found = [
        (c["major"], f"{c['major']}/{c['name']} on port {c['port']}, {c['status']}")
        for c in profile["clusters"]
        if c["major"] != platform.major
    ]
    listed = {c["data_dir"].rstrip("/") for c in profile["clusters"]}
    initialised = profile.get("initialised_data_dirs") or []
    for major, _ in platform.majors:
        data_dir = platform.for_major(major).data_dir
        if major != platform.major and data_dir != platform.data_dir and data_dir not in listed and data_dir in initialised:
            found.append((major, f"PostgreSQL {major} in {data_dir}"))
    return found


def check_second_major(profile: dict, platform: Platform, allowed: bool) -> None:
    """Refuse to install pg_major beside a cluster of another major, unless host data allows it
    (pg_allow_second_major). Allowed, that cluster is never touched: every path, service and
    stamp a run uses is pg_major's own; it must not have our port (refused here, naming the key)."""
    found = other_clusters(profile, platform)
    if not found:
        return
    if allowed:
        for cluster in profile["clusters"]:
            if cluster["major"] != platform.major and cluster["port"] == POSTGRES_PORT:
                raise UnsupportedHost(
                    f"pg_allow_second_major lets PostgreSQL {platform.major} in beside cluster {cluster['major']}/"
                    f"{cluster['name']} ({cluster['status']}), but that cluster has port {POSTGRES_PORT}, where this "
                    f"toolkit runs PostgreSQL {platform.major}. Nothing was changed. Fix: move that cluster to another "
                    f"port (its port setting, such as port = 5433, then restart it), or set pg_major to {cluster['major']}."
                )
        return  # that cluster is left as it is; a PostgreSQL listening on our port is check_port's
    majors = sorted({major for major, _ in found})
    manage = f"set pg_major to {majors[0]} to manage that cluster instead, or " if len(majors) == 1 else ""
    raise UnsupportedHost(
        f"this host already has a cluster of another PostgreSQL major ({'; '.join(text for _, text in found)}), and "
        f"pg_major is {platform.major}. Nothing was changed. Fix: {manage}set pg_allow_second_major: True to install "
        f"PostgreSQL {platform.major} beside it (that cluster is left as it is, and must not use port {POSTGRES_PORT})."
    )


def check_packaged_pgvector(profile: dict, platform: Platform) -> None:
    """Refuse a host whose pgvector for the target major comes from a package.

    The build installs vector.so, vector.control and the SQL scripts where the package put
    them: the package manager's files overwritten under it (its next upgrade or removal
    takes our build away, or puts its own older one back), and its LLVM bitcode (bitcode/
    vector*, which our build, without LLVM, does not replace) left for the JIT to inline
    code of another version. Found by the package's name in the package database, or by a
    package of any name that owns the target's vector.so or vector.control.
    """
    manager = platform.package_manager
    names = [
        found["name"]
        for found in profile.get("pgvector_packages", [])
        if found["manager"] == manager.name and found["name"] in platform.pgvector_packages
    ]
    files = []
    for owner in profile.get("pgvector_owners", []):
        if owner["manager"] == manager.name and owner["pg_config"] == platform.pg_config:
            files.append(f"{owner['file']} belongs to {', '.join(owner['packages'])}")
            names += [name for name in owner["packages"] if name not in names]
    if not names:
        return
    packages = " ".join(names)
    owned = f" ({'; '.join(files)})" if files else ""
    raise UnsupportedHost(
        f"pgvector for PostgreSQL {platform.major} is installed from the package {packages}{owned}: building it here "
        "would overwrite files that package owns and leave its LLVM bitcode behind. Nothing was changed. Fix: "
        f"remove the package ({manager.remove.format(packages=packages)}), then run again; the run then builds "
        "pgvector and updates the vector extension in every database. Removing the package does not drop the "
        "extension from any database, but until the run has built pgvector, queries that use vector fail."
    )


def _under(path: str, mount_point: str) -> bool:
    """Is ``path`` the directory ``mount_point`` or inside it?"""
    return mount_point == "/" or path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


def check_data_directory(profile: dict, platform: Platform, data_mount: str | None) -> None:
    """Refuse to create (or adopt) a cluster where one is expected but its data is not there.

    A data volume that failed to mount (an EBS volume not attached, a typo in /etc/fstab)
    leaves an empty directory on the root disk; a cluster made there would be a second,
    empty database the app then writes to. So: ``pg_data_mount`` must be mounted and hold the
    data directory; a mount in /etc/fstab at the data directory or above it must be mounted;
    and a cluster that something still expects (pg_lsclusters, its configuration directory,
    our build stamp) must have its PG_VERSION.
    """
    data_dir = platform.data_dir
    # Where it really is: /var/lib/postgresql may be a symlink onto the volume (/data/...).
    real = profile.get("resolved_data_dirs", {}).get(data_dir, data_dir)
    really = f" (really {real}: a symlink leads there)" if real != data_dir else ""
    mounts = set(profile.get("mounts", []))
    if data_mount is not None:
        if not (_under(data_dir, data_mount) or _under(real, data_mount)):
            raise UnsupportedHost(
                f"pg_data_mount is {data_mount}, but {platform.label} keeps the cluster in {data_dir}, which is not "
                f"under it. Nothing was changed. Fix: set pg_data_mount to the mount point of the volume that holds "
                f"{data_dir} (such as {'/'.join(data_dir.split('/')[:4])}), or unset it."
            )
        if data_mount not in mounts:
            raise UnsupportedHost(
                f"pg_data_mount {data_mount} is not mounted: the volume that holds the cluster ({data_dir}) is "
                "missing, and a run now would create a new, empty cluster on the disk underneath. Nothing was "
                f"changed. Fix: attach the volume and mount it at {data_mount} (mount {data_mount}; check "
                "/etc/fstab), then run again."
            )
    for entry in profile.get("fstab", []):
        point = entry["mount_point"]
        if point != "/" and (_under(data_dir, point) or _under(real, point)) and point not in mounts:
            # noauto: nothing mounts it at boot (nofail alone only hides a failure).
            noauto = (
                f" Its /etc/fstab options say noauto ({entry['options']}): nothing mounts it at boot, which is "
                "likely why it is not mounted; drop noauto from that line so the next boot mounts it."
                if "noauto" in entry["options"].split(",")
                else ""
            )
            raise UnsupportedHost(
                f"/etc/fstab mounts {entry['source']} at {point}, which holds the cluster's data directory "
                f"{data_dir}{really}, but nothing is mounted there: a run now would create a new, empty cluster on "
                f"the disk underneath. Nothing was changed. Fix: mount it (mount {point}; an EBS volume must be "
                "attached first), then run again; if that volume is gone for good, remove its line from /etc/fstab."
                f"{noauto}"
            )
    initialised = profile.get("initialised_data_dirs")
    if initialised is None or data_dir in initialised:
        return  # not looked at (an old recording), or the cluster's data is there
    expected, undo = [], []
    for cluster in profile["clusters"]:
        if cluster["data_dir"].rstrip("/") == data_dir:
            expected.append(f"pg_lsclusters lists cluster {cluster['major']}/{cluster['name']} there")
            undo.append(f"pg_dropcluster {cluster['major']} {cluster['name']}")
    if platform.config_dir != data_dir and platform.config_dir in profile.get("config_dirs", []):
        if not undo:
            expected.append(f"its configuration directory {platform.config_dir} exists")
            undo.append(f"remove {platform.config_dir}")
    if platform.major == POSTGRES_MAJOR:
        stamped = profile.get("build_stamp")  # build.json, the path 15's stamp always had
    else:
        stamped = platform.major in profile.get("build_stamp_majors", [])
    if stamped:
        expected.append(f"pgvector-deploy's build stamp {platform.build_stamp} says it provisioned this host")
        undo.append(f"rm {platform.build_stamp}")
    if expected:
        raise UnsupportedHost(
            f"a PostgreSQL {platform.major} cluster is expected in {data_dir} ({'; '.join(expected)}), but it has no "
            "PG_VERSION: its volume may not be mounted, or the directory was emptied. A run now would initialise a "
            "new, empty cluster there. Nothing was changed. Fix: mount the volume that holds the cluster's data at "
            f"its place, then run again; only if that data is gone for good and a new empty cluster is wanted, "
            f"first: {'; '.join(undo)}."
        )


# --- EC2 architecture (inventories/prod.py) ---------------------------------------------------

# EC2's architecture names, and what `uname -m` says on such an instance.
EC2_TO_UNAME = {"x86_64": "x86_64", "arm64": "aarch64"}


def check_ec2_architecture(ec2_architecture: str | None, arch: str) -> None:
    """Refuse when EC2's architecture for the instance is not the host's ``uname -m``.

    The EC2 inventory keeps the instance's architecture as host data. A host that reports
    another one is not that instance: an address reused by a newer instance, a wrong
    address, or an inventory older than the fleet. No value (a static inventory): no check.

    >>> check_ec2_architecture("arm64", "aarch64")  # the same machine: nothing to say
    >>> check_ec2_architecture(None, "x86_64")  # not from EC2: nothing to compare
    """
    if ec2_architecture is None or EC2_TO_UNAME.get(ec2_architecture) == arch:
        return
    raise UnsupportedHost(
        f"EC2 says {ec2_architecture} but the host reports {arch}: wrong address or stale inventory. "
        "Fix: check the address this host was reached at (ssh_hostname) against the instance, and run "
        "again with a fresh inventory."
    )


# --- end of EC2 architecture -------------------------------------------------------------------


def make_plan(settings: Settings, profile: dict, *, ec2_architecture: str | None = None) -> Plan:
    """Pure planning from validated settings and the host profile; raises UnsupportedHost.

    ``ec2_architecture`` is what the EC2 inventory says the instance is (host data), if any.
    """
    # First: on a host that is not the instance EC2 described, every other finding is moot.
    check_ec2_architecture(ec2_architecture, profile["arch"])
    # The distribution, then pg_major on it: one it does not offer is refused, naming those it does.
    platform = detect_platform(profile["os_release"], profile["arch"]).for_major(settings.major)
    tool = platform.package_manager.tool
    if tool not in profile["package_tools"]:
        raise UnsupportedHost(f"{platform.label} without {tool}: found {profile['package_tools'] or 'no package tool'}.")
    check_binaries(profile, platform)
    check_second_major(profile, platform, settings.allow_second_major)
    check_packaged_pgvector(profile, platform)
    # Before anything is installed: on Debian, installing postgresql-15 itself creates a cluster.
    check_data_directory(profile, platform, settings.data_mount)
    check_port(profile, platform, POSTGRES_PORT)
    check_disk_space(profile, platform)
    check_overrides(settings.tuning, profile)
    return Plan(settings=settings, platform=platform, profile=profile)


# Free space a run may need: a pgvector build in /var/tmp, and (on a host without pg_major
# yet) the server, headers and compiler under /usr, with apt/dnf's downloads.
BUILD_SPACE_MB = 200
INSTALL_SPACE_MB = 1500


def check_disk_space(profile: dict, platform: Platform) -> None:
    """Refuse a host too full to build or install, before anything is written."""
    needs = {"/var/tmp": BUILD_SPACE_MB}
    if not any(binary["path"].startswith(platform.bindir + "/") for binary in profile["postgres_binaries"]):
        needs["/usr"] = INSTALL_SPACE_MB
    for path, wanted in needs.items():
        free = profile.get("free_mb", {}).get(path)
        if free is not None and free < wanted:
            what = "a pgvector build" if path == "/var/tmp" else f"installing PostgreSQL {platform.major}, its headers and a compiler"
            raise UnsupportedHost(
                f"only {free} MB free on the file system of {path}; {what} needs {wanted} MB. "
                f"Fix: free space there (or grow the volume), then run again."
            )


def start(host, config, *, prefetch: bool = False) -> Plan | Refusal:
    """How every recipe begins: check the login can become root, then ``look``; with
    ``prefetch``, also gather the facts the recipe's operations ask (``expected_facts``).

    Sets ``config.SUDO`` for this host (pyinfra's config is per host while a deploy file
    loads): sudo when the login user is not root. Sudo asked for on pyinfra's command line
    (``--sudo``) stays on: under it the login looks like root. A login that cannot sudo
    without a password is refused without sudo, so that the refusal itself can run.

    Any error while looking (a file or a fact output the toolkit cannot read, an unreadable
    file named in host data) is a refusal too: this host gets one failing operation naming
    it, the other hosts carry on, and nothing was changed.
    """
    try:
        return _start(host, config, prefetch)
    except Exception as error:  # noqa: BLE001 - one host's surprise must not end the whole run
        return Refusal(unexpected_error(error, "looking at the host"))


def _start(host, config, prefetch: bool) -> Plan | Refusal:
    deploy_arguments = getattr(host, "current_deploy_kwargs", None)
    asked_sudo = bool(config.SUDO or (deploy_arguments or {}).get("_sudo"))
    access = host.get_fact(LoginAccess)
    if access is None:  # id -u failed: with --sudo, sudo itself refused
        _use_sudo(host, config, False)
        return Refusal(
            f"could not run a command on the host{' with sudo (pyinfra --sudo)' if asked_sudo else ''}. Fix: connect "
            "as a user with passwordless sudo (EC2 images: admin, ubuntu, ec2-user), or as root; the toolkit uses "
            "sudo by itself when the login is not root, so --sudo is not needed."
        )
    _use_sudo(host, config, asked_sudo or access["uid"] != 0)
    if not access["sudo"]:
        _use_sudo(host, config, False)
        return Refusal(
            f"the login user (uid {access['uid']}) cannot run sudo without a password. Fix: connect as a user "
            "with passwordless sudo (EC2 images: admin, ubuntu, ec2-user), or as root."
        )
    plan = look(host)
    if prefetch and isinstance(plan, Plan):
        plan.prefetch(*expected_facts(plan))
    return plan


def _use_sudo(host, config, sudo: bool) -> None:
    """Sudo for the facts and operations from here on: pyinfra's config, and, inside a packaged
    deploy (recipe.postgres_with_pgvector), that @deploy's global arguments, which pyinfra
    fixed when it was called (before this choice) and which win over the config."""
    config.SUDO = sudo
    deploy_arguments = getattr(host, "current_deploy_kwargs", None)
    if deploy_arguments is not None:
        deploy_arguments["_sudo"] = sudo


def expected_facts(plan: Plan) -> list[tuple[type, dict]]:
    """The facts the recipe's operations ask, with the very arguments they ask them with (a
    mismatch costs only a round trip: the operation then asks alone)."""
    platform, port, settings = plan.platform, plan.port, plan.settings
    facts: list[tuple[type, dict]] = []
    steps = platform.repository_steps(plan.os_id, plan.arch)
    if steps:
        facts.append((RepositoryChecks, {"checks": tuple(step.check for step in steps)}))
    facts += [
        (InstalledPackages, {"platform": platform}),
        (ClusterState, {"platform": platform, "port": port}),
        (PgvectorState, {"platform": platform, "port": port}),
        (ServerConfig, {"platform": platform, "port": port}),
    ]
    if settings.wants_tls:
        cert, key = certificate_paths(platform, settings.tls.cert_file, settings.tls.key_file)
        facts.append((TlsFiles, {"cert": cert, "key": key, "addresses": settings.listen_addresses}))
    app = settings.app
    if app is not None:
        facts.append((AppState, {"platform": platform, "port": port, "user": app.user, "database": app.database}))
        if settings.migrations:
            facts.append((MigrationLedger, {"platform": platform, "port": port, "database": app.database, "user": app.user}))
        if app.env_file is not None:
            facts.append((EnvFileState, {"path": app.env_file}))
    facts += backup_facts(plan)
    return facts


def look(host) -> Plan | Refusal:
    """Validate the host's data, gather the host profile (one round trip) and plan."""
    try:
        # Validation (pure), then the loading step (tarball digest, SSM, migration folder).
        settings = load(validate_settings(host.data, host_name=getattr(host, "name", None)))
    except SettingsError as error:
        return Refusal(f"bad host data: {error}")
    profile = host.get_fact(HostProfile, port=POSTGRES_PORT, cached_tarball=tarball_path(settings.version))
    try:
        return make_plan(settings, profile, ec2_architecture=host.data.get("ec2_architecture") or None)
    except UnsupportedHost as error:
        return Refusal(str(error))


@operation()
@fails_host_on_error
def refuse(refusal: Refusal):
    """Fail this host with the refusal's message; nothing else runs on it.

    .. code:: python

        preflight.refuse(Refusal("unsupported host: ..."), name="Refuse host")
    """
    yield fail(f"REFUSED, nothing was changed on this host: {refusal.message}")
