"""PostgreSQL itself (15, or host data pg_major): where it comes from, packages, the cluster, running now and at boot.

Each operation asks a fact first and yields commands only when the host differs from what
is wanted, so a converged host reports no change. A cluster that exists (its data directory
has ``PG_VERSION``) is adopted: it is never initialised again.

Example::

    postgres.tools(plan, name="Base tools the run uses are installed")
    postgres.repository(plan, name="PostgreSQL 15 can be installed (repositories)")
    postgres.packages(plan, name="Install PostgreSQL 15 and build tools")
    postgres.cluster(plan, name="PostgreSQL 15 cluster exists")
    postgres.running(plan, name="PostgreSQL 15 is running and starts at boot")
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import operation

from .facts import ClusterState, InstalledPackages, RepositoryChecks
from .plan import Plan
from .shell import SAFE_PATH, fails_host_on_error, host_locked


def _install_missing(plan: Plan, names: tuple[str, ...]):
    """The install command for those of ``names`` the package manager does not have (one fact,
    InstalledPackages, answers for every package of the platform); nothing when all are there.
    Installing an installed package is a no-op for apt and dnf, so a stale fact costs nothing."""
    # Not apt.packages / dnf.packages: each asks its own package fact, one more round trip per
    # operation in every no-op run; InstalledPackages is in the prefetched bundle, for every manager.
    installed = plan.fact(InstalledPackages, platform=plan.platform)
    missing = [name for name in names if name not in installed]
    if not missing:
        host.noop(f"{', '.join(names)} already installed")
        return
    yield f"PATH={SAFE_PATH}; " + plan.platform.package_manager.install.format(packages=" ".join(missing))


@operation()
@host_locked
@fails_host_on_error
def tools(plan: Plan):
    """Install the base tools the run's shell uses (curl, tar, procps, ...), only those
    missing, from the distribution's own repositories.

    .. code:: python

        postgres.tools(plan)
    """
    yield from _install_missing(plan, plan.platform.tool_packages)


@operation()
@host_locked
@fails_host_on_error
def repository(plan: Plan):
    """Set up where the PostgreSQL major comes from (PGDG repository, modules, CRB), only the steps
    not done yet. One fact runs every step's check; a platform without steps asks nothing.

    .. code:: python

        postgres.repository(plan)
    """
    platform = plan.platform
    steps = platform.repository_steps(plan.os_id, plan.arch)
    if not steps:
        host.noop(f"{platform.label} ships PostgreSQL {platform.major} in its own repositories")
        return
    done = plan.fact(RepositoryChecks, checks=tuple(step.check for step in steps))
    if len(done) == len(steps):
        host.noop(f"PostgreSQL {platform.major} repositories already set up")
        return
    # Not apt.key / apt.repo / dnf.repo: a step here is platform data with the check that says it
    # is done (PGDG key and list, a dnf module, CRB), and every check is asked in one fact.
    for index, step in enumerate(steps):
        if index not in done:
            # Checked again under the lock: a run that waited for another must not redo its step.
            yield f"PATH={SAFE_PATH}; if ( {step.check} ) >/dev/null 2>&1; then :; else {step.setup}; fi"


@operation()
@host_locked
@fails_host_on_error
def packages(plan: Plan):
    """Install the server, PGXS headers and compiler, only those missing.

    .. code:: python

        postgres.packages(plan)
    """
    yield from _install_missing(plan, plan.platform.postgres_packages)


@operation()
@host_locked
@fails_host_on_error
def cluster(plan: Plan):
    """Create the cluster only when its data directory holds none (never re-initialise).

    .. code:: python

        postgres.cluster(plan)
    """
    platform = plan.platform
    state = plan.fact(ClusterState, platform=platform, port=plan.port)
    if state["initialised"]:
        host.noop(f"cluster in {platform.data_dir} exists, adopted")
        return
    # PG_VERSION is looked at again under the lock: another run may have made the cluster since.
    yield f"PATH={SAFE_PATH}; [ -s {platform.data_dir}/PG_VERSION ] || {platform.create_cluster}"


@operation()
@host_locked
@fails_host_on_error
def running(plan: Plan):
    """Start the cluster if it is down, and enable it at boot where systemd is the init.

    Without systemd (containers, minimal images) the platform's own start command runs it
    (pg_ctlcluster, or the major's pg_ctl as postgres); starting at boot is then the job of
    whatever starts the container.

    .. code:: python

        postgres.running(plan)
    """
    platform = plan.platform
    state = plan.fact(ClusterState, platform=platform, port=plan.port)
    systemd = plan.profile["systemd"]
    # Not systemd.service: it asks systemctl as facts of its own (round trips in every no-op run,
    # where ClusterState already says), and without systemd as init there is no unit to ask.
    if systemd and not state["enabled_at_boot"]:
        yield f"systemctl enable {platform.boot_unit}"
    if not state["running"]:
        if systemd:
            yield f"systemctl start {platform.service}"
        else:
            # pg_ctlcluster and pg_ctl fail on a server another run started meanwhile: ask first.
            ready = f"{platform.bindir}/pg_isready -q -h {platform.socket_dir} -p {int(plan.port)}"
            yield f"PATH={SAFE_PATH}; {ready} || {platform.start_without_systemd}"
    if state["running"] and (state["enabled_at_boot"] or not systemd):
        host.noop("PostgreSQL is running")
