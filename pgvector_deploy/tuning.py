"""PostgreSQL sized for vector work, from the host's memory and CPU count.

The packaged postgresql.conf is sized for a 1990s machine: 128MB of shared_buffers and 64MB of
maintenance_work_mem, which holds the HNSW graph of only ~17,000 vectors of 768 dimensions;
past that pgvector says "hnsw graph no longer fits into maintenance_work_mem" and the build
goes on several times slower. So we write our own include file, ``conf.d/80-pgvector-tuning.conf``
(never edits to postgresql.conf), with five settings, each computed by ``plan_tuning`` from the
host profile (memory, cgroup limit, CPUs, /dev/shm) and overridable by a host data key. The file
says, next to each value, why it has that value.

Safety: the new file is checked by PostgreSQL (pg_file_settings) before it is used, the previous
one is kept as ``.bak-<time>``; shared_buffers needs a restart, and if PostgreSQL does not come
back with the new file, the previous one is put back and PostgreSQL restarted with it.

Example::

    tuning.server_settings(plan, name="PostgreSQL is sized for this host's memory and CPUs")
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass

from pyinfra.api import operation

from .facts import PENDING_RESTART, SETTINGS_ERRORS_SQL, TUNING_FILE_NAME, ServerConfig, tuning_path
from .networking import reload_command, replace_file_script, restart_command
from .platforms import UnsupportedHost
from .preflight import Plan
from .settings import TuningSettings
from .shell import SAFE_PATH, as_postgres, fail, fails_host_on_error, host_locked

HNSW_M = 16  # pgvector's default m; the graph estimate assumes it
STOCK_MAINTENANCE_WORK_MEM_MB = 64
MAX_AUTO_WORKERS = 8  # the default max_worker_processes and max_parallel_workers: no restart needed


@dataclass(frozen=True)
class Tuned:
    name: str
    value: str  # as written in the file: '6144MB', '1'
    reason: str


def hnsw_graph_bytes(vectors: int, dimensions: int, m: int = HNSW_M) -> int:
    """What pgvector 0.8's in-memory HNSW build holds per vector, times the vectors.

    Per vector: the value (4 bytes a dimension + 8), the element (128), its level-0 neighbour
    array (2m candidates of 16 bytes + 8), the pointer list (8), upper levels on average
    (1 in m-1 vectors has another m-neighbour level) and the allocator's chunk headers (3 x 24).
    Checked against pgvector's own notice by tests/benchmarks/vectors.py.
    """
    per_vector = (4 * dimensions + 8) + 128 + (2 * m * 16 + 8) + 8 + math.ceil((m * 16 + 16) / (m - 1)) + 72
    return vectors * per_vector


def _round_up(mb: float, step: int) -> int:
    return int(math.ceil(mb / step) * step)


def plan_tuning(tuning: TuningSettings, profile: dict, max_connections: int = 100) -> list[Tuned]:
    """The settings to write, each with its reason. Overrides win; unknown memory or CPUs
    leave those auto settings out (PostgreSQL keeps its defaults)."""
    memory = profile.get("memory_mb")
    cpus = profile.get("cpus")
    shm = profile.get("shm_mb")
    settings: list[Tuned] = []

    def add(name: str, override, auto, reason: str, unit: str = "MB") -> None:
        if override is not None:
            settings.append(Tuned(name, f"{override}{unit}", "set in host data"))
        elif auto is not None:
            settings.append(Tuned(name, f"{int(auto)}{unit}", reason))

    shared_buffers = tuning.shared_buffers_mb or (max(128, memory // 4) if memory else None)
    add(
        "shared_buffers",
        tuning.shared_buffers_mb,
        shared_buffers,
        f"25% of {memory}MB memory: PostgreSQL's own cache; the rest stays with the kernel's page cache, "
        "which PostgreSQL also reads through (more would cache the same pages twice)",
    )
    add(
        "effective_cache_size",
        tuning.effective_cache_size_mb,
        memory * 3 // 4 if memory else None,
        f"75% of {memory}MB memory: what shared_buffers and the page cache together hold; a planner "
        "estimate only (allocates nothing), so HNSW index scans are costed as mostly cached",
    )

    workers = tuning.max_parallel_maintenance_workers
    if workers is None and cpus:
        workers = min(max(cpus - 1, 0), MAX_AUTO_WORKERS)
    graph_mb = hnsw_graph_bytes(tuning.hnsw_vectors, tuning.hnsw_dimensions) / (1 << 20)
    # 10% headroom, plus the ~4MB a parallel build keeps back from its shared area.
    wanted = _round_up(graph_mb * 1.1 + 8, 64)
    caps = {}
    if memory:
        caps[f"25% of {memory}MB memory"] = memory // 4
    if shm and workers:
        # A parallel build puts the whole graph in one dynamic shared memory segment (/dev/shm).
        caps[f"80% of the {shm}MB /dev/shm a parallel build allocates it in"] = shm * 4 // 5
    limit_reason, limit = min(caps.items(), key=lambda item: item[1]) if caps else ("", None)
    mwm = max(STOCK_MAINTENANCE_WORK_MEM_MB, min(wanted, limit)) if limit is not None else wanted
    expected = f"{tuning.hnsw_vectors:,} x {tuning.hnsw_dimensions} HNSW graph (m={HNSW_M}) needs ~{math.ceil(graph_mb)}MB"
    if limit is not None and wanted > limit:
        fits = int(mwm * (1 << 20) / hnsw_graph_bytes(1, tuning.hnsw_dimensions))
        reason = f"{expected}, capped at {limit_reason}: builds beyond ~{fits:,} vectors spill to disk (slower)"
    else:
        reason = f"{expected} (+10%): index builds of the expected size stay in memory"
    add("maintenance_work_mem", tuning.maintenance_work_mem_mb, mwm, reason)
    add(
        "max_parallel_maintenance_workers",
        tuning.max_parallel_maintenance_workers,
        workers,
        f"{cpus} CPUs minus the leader, which builds too: one process per CPU, never more "
        f"(at most {MAX_AUTO_WORKERS}, the default worker pool)",
        unit="",
    )
    work_mem = None
    if memory and shared_buffers:
        work_mem = min(256, max(4, (memory - shared_buffers) // (4 * max_connections)))
    add(
        "work_mem",
        tuning.work_mem_mb,
        work_mem,
        f"(memory - shared_buffers) / (4 x {max_connections} max_connections), within 4MB..256MB: a query may "
        "run several sorts or hashes at once; all connections doing so still fit beside shared_buffers",
    )
    return settings


def check_overrides(tuning: TuningSettings, profile: dict) -> None:
    """Refuse overrides that would keep PostgreSQL from starting or an index build from running,
    before anything changes (the host profile has the memory and /dev/shm sizes)."""
    if not tuning.enabled:
        return
    memory, shm = profile.get("memory_mb"), profile.get("shm_mb")
    if memory and tuning.shared_buffers_mb and tuning.shared_buffers_mb > memory // 2:
        raise UnsupportedHost(
            f"pg_shared_buffers {tuning.shared_buffers_mb}MB is more than half of this host's {memory}MB memory: "
            "PostgreSQL might not start, or starve the apps. Fix: lower it, or set it to 'auto' (25%)."
        )
    if memory and tuning.maintenance_work_mem_mb and tuning.maintenance_work_mem_mb > memory // 2:
        raise UnsupportedHost(
            f"pg_maintenance_work_mem {tuning.maintenance_work_mem_mb}MB is more than half of this host's "
            f"{memory}MB memory. Fix: lower it, or set it to 'auto'."
        )
    parallel = tuning.max_parallel_maintenance_workers != 0
    if shm and parallel and tuning.maintenance_work_mem_mb and tuning.maintenance_work_mem_mb > shm:
        raise UnsupportedHost(
            f"pg_maintenance_work_mem {tuning.maintenance_work_mem_mb}MB is more than /dev/shm ({shm}MB): a parallel "
            "HNSW build would fail with 'could not resize shared memory segment'. Fix: lower it, grow /dev/shm, "
            "or set pg_max_parallel_maintenance_workers to 0."
        )


def render(settings: list[Tuned], profile: dict) -> str:
    lines = [
        "# Managed by pgvector-deploy: rewritten by every run; the previous copy is kept next to it",
        f"# ({TUNING_FILE_NAME}.bak-<time>) whenever it changes. Each value: auto (sized from this host)",
        "# unless set in host data (pg_shared_buffers, ...); pg_tuning = False removes this file.",
        f"# Sized for: {profile.get('memory_mb')}MB memory, {profile.get('cpus')} CPUs, /dev/shm {profile.get('shm_mb')}MB.",
    ]
    for tuned in settings:
        lines += ["", f"# {tuned.reason}", f"{tuned.name} = '{tuned.value}'"]
    return "\n".join(lines) + "\n"


# -- applying it -------------------------------------------------------------------------------


def restart_or_roll_back(plan: Plan, path: str) -> str:
    """Shell: restart PostgreSQL; if it does not come back, put the previous tuning file back
    (``$stamp``'s copy, or set ours aside), restart with that, and fail naming the fix."""
    quoted = shlex.quote(path)
    restart = restart_command(plan)
    back = fail(
        f"PostgreSQL did not start with the new {path}; the previous file was put back and PostgreSQL "
        "restarted with it. Fix: lower pg_shared_buffers (or check the server log), then run again."
    )
    return f"""file={quoted}
: "${{stamp:=$(date -u +%Y%m%dT%H%M%SZ)}}"
if ! ( {restart} ); then
  if [ -f "$file.bak-$stamp" ]; then mv -f "$file.bak-$stamp" "$file"; else mv -f "$file" "$file.bak-$stamp"; fi
  ( {restart} ) || true
  {back}
fi"""


@operation()
@host_locked
@fails_host_on_error
def server_settings(plan: Plan):
    """Write the tuning include file (checked by PostgreSQL first), reload, and restart when a
    restart-only setting (shared_buffers) changed; ``pg_tuning = False`` sets the file aside.

    .. code:: python

        tuning.server_settings(plan)
    """
    state = plan.fact(ServerConfig, platform=plan.platform, port=plan.port)
    path = tuning_path(plan.platform)
    current = state["files"].get(path)
    if not plan.settings.tuning.enabled:
        if current is not None:
            # Only if still there: another run may have set it aside while this one waited.
            set_aside = f'stamp=$(date -u +%Y%m%dT%H%M%SZ)\n[ ! -f {shlex.quote(path)} ] || mv -f {shlex.quote(path)} "{path}.bak-$stamp"'
            # Restart only if shared_buffers (the one restart-only setting we write) now differs.
            pending = "name = 'shared_buffers'"
            yield f"set -eu\nPATH={SAFE_PATH}\n{set_aside}\n{reload_command(plan)}\n{_restart_if_pending(plan, path, pending)}"
        return
    wanted = render(plan_tuning(plan.settings.tuning, plan.profile, state["max_connections"]), plan.profile)
    ours = f"sourcefile = '{path}'"
    if current != wanted.encode():
        write = replace_file_script(path, wanted, "0644", SETTINGS_ERRORS_SQL, plan.platform, plan.port, "tuning settings")
        yield f"{write}\n{reload_command(plan)}\n{_restart_if_pending(plan, path, ours)}"
    elif any(entry.startswith(f"{path}|") for entry in state["pending_restart"]):
        # Written by an earlier run that did not get to restart (killed, or PostgreSQL was down);
        # still pending is asked again under the lock (another run may have restarted since).
        yield f"set -eu\nPATH={SAFE_PATH}\n{_restart_if_pending(plan, path, ours)}"


def _restart_if_pending(plan: Plan, path: str, where: str) -> str:
    """Shell: restart (or roll back) when the files on disk set a restart-only setting, matching
    ``where``, to a value the running server does not have."""
    pending_sql = f"SELECT count(*) FROM pg_file_settings WHERE error = '{PENDING_RESTART}' AND {where}"
    return f"""pending=$({as_postgres(plan.platform, plan.port, 'postgres', pending_sql)})
if [ "$pending" != 0 ]; then
{restart_or_roll_back(plan, path)}
fi"""
