"""PostgreSQL 15 itself: packages, the cluster, running now and at boot.

Each operation asks a fact first and yields commands only when the host differs from what
is wanted, so a converged host reports no change. A cluster that exists (its data directory
has ``PG_VERSION``) is adopted: it is never initialised again.

Example::

    postgres.packages(plan, name="Install PostgreSQL 15 and build tools")
    postgres.cluster(plan, name="PostgreSQL 15 cluster exists")
    postgres.running(plan, name="PostgreSQL 15 is running and starts at boot")
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import operation

from .facts import ClusterState, InstalledPackages
from .preflight import Plan
from .shell import SAFE_PATH


@operation()
def packages(plan: Plan):
    """Install the server, PGXS headers and compiler, only those missing.

    .. code:: python

        postgres.packages(plan)
    """
    platform = plan.platform
    installed = host.get_fact(InstalledPackages, platform=platform)
    missing = [name for name in platform.packages if name not in installed]
    if not missing:
        host.noop(f"{', '.join(platform.packages)} already installed")
        return
    yield f"PATH={SAFE_PATH}; " + platform.package_manager.install.format(packages=" ".join(missing))


@operation()
def cluster(plan: Plan):
    """Create the cluster only when its data directory holds none (never re-initialise).

    .. code:: python

        postgres.cluster(plan)
    """
    state = host.get_fact(ClusterState, platform=plan.platform, port=plan.port)
    if state["initialised"]:
        host.noop(f"cluster in {plan.platform.data_dir} exists, adopted")
        return
    yield f"PATH={SAFE_PATH}; {plan.platform.create_cluster}"


@operation()
def running(plan: Plan):
    """Start the cluster if it is down, and enable it at boot where systemd is the init.

    Without systemd (containers, minimal images) the distribution's cluster tool starts it;
    starting at boot is then the job of whatever starts the container.

    .. code:: python

        postgres.running(plan)
    """
    platform = plan.platform
    state = host.get_fact(ClusterState, platform=platform, port=plan.port)
    systemd = plan.profile["systemd"]
    if systemd and not state["enabled_at_boot"]:
        yield f"systemctl enable {platform.boot_unit}"
    if not state["running"]:
        if systemd:
            yield f"systemctl start {platform.service}"
        else:
            yield f"PATH={SAFE_PATH}; {platform.start_without_systemd}"
    if state["running"] and (state["enabled_at_boot"] or not systemd):
        host.noop("PostgreSQL is running")
