"""PostgreSQL sized for vector work, from the host's memory and CPU count.

The packaged postgresql.conf is sized for a 1990s machine: 128MB of shared_buffers and 64MB of
maintenance_work_mem, which holds the HNSW graph of only ~17,000 vectors of 768 dimensions;
past that pgvector says "hnsw graph no longer fits into maintenance_work_mem" and the build
goes on several times slower. So we write our own include file, ``conf.d/80-pgvector-tuning.conf``
(never edits to postgresql.conf), with five settings, each computed by ``plan_tuning`` from the
host profile (memory, cgroup limit, CPUs, /dev/shm) and overridable by a host data key. The file
says, next to each value, why it has that value.

Memory noise changes nothing: sizes are rounded (5 significant binary digits), and a file on
the host whose auto values are within ``TOLERANCE`` of the wanted ones (overrides: exactly) is
kept as it is, header included. A kernel update that moves MemTotal by a few MB neither
rewrites the file nor restarts PostgreSQL.

Safety: the file changes through ``managed_files`` (checked by PostgreSQL first, the previous
copy kept under /var/lib/pgvector-deploy/backups); shared_buffers needs a restart, done only if
``pg_restart`` allows it (else reported as pending), and if PostgreSQL does not come back with
the new file, the previous one is put back and PostgreSQL restarted with it.

Example::

    tuning.server_settings(plan, name="PostgreSQL is sized for this host's memory and CPUs")
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pyinfra import host, logger
from pyinfra.api import operation

from .facts import SETTINGS_ERRORS_SQL, ServerConfig, tuning_path
from .managed_files import (
    BACKUP_DIR,
    apply_restart,
    locate,
    pg_string,
    reload_command,
    replace_file_script,
    restart_decision,
    set_aside,
)
from .plan import Plan
from .platforms import UnsupportedHost
from .settings import PG_MAX_MB, TuningSettings
from .shell import SAFE_PATH, fails_host_on_error, host_locked

HNSW_M = 16  # pgvector's default m; the graph estimate assumes it
STOCK_MAINTENANCE_WORK_MEM_MB = 64
MAX_AUTO_WORKERS = 8  # the default max_worker_processes and max_parallel_workers: no restart needed
SHM_SHARE = 0.8  # of /dev/shm, the most a parallel build's graph may take (room for its other segments)
TOLERANCE = 0.10  # an auto value on the host this close to the wanted one is kept
RESTART_ONLY = ("shared_buffers",)  # of the settings we write, the ones PostgreSQL applies only at start
RESTART_FIX = "lower pg_shared_buffers (or check the server log), then run again."
OVERRIDE_REASON = "set in host data"
_SETTING_LINE = re.compile(r"^([a-z_]+) = '([^']*)'$")


@dataclass(frozen=True)
class Tuned:
    name: str
    value: str  # as written in the file: '6144MB', '1'
    reason: str
    override: bool = False  # from host data: kept only if exactly equal


def steady_mb(mb: float, down: bool = False) -> int:
    """``mb`` rounded to 5 significant binary digits (a step of 1/32 to 1/16 of the value;
    rounded down for caps), so a few MB more or less memory gives the same size, and one step
    (at most 6.25%) leaves room within ``TOLERANCE`` for a few percent of noise.

    >>> steady_mb(6026), steady_mb(18078), steady_mb(45), steady_mb(1928, down=True)
    (6144, 18432, 46, 1920)
    """
    mb = int(mb)
    if mb < 32:
        return mb
    step = 1 << (mb.bit_length() - 5)
    return (mb // step if down else (mb + step // 2) // step) * step


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


def shm_too_small(tuning: TuningSettings, profile: dict) -> str | None:
    """Why index builds must not run in parallel here, or None: 80% of /dev/shm (where a
    parallel build allocates its graph) is below the 64MB floor of maintenance_work_mem, so a
    parallel build would fail with 'could not resize shared memory segment ... No space left on
    device'. Only for auto workers; workers set in host data get a maintenance_work_mem sized
    within /dev/shm instead."""
    shm = profile.get("shm_mb")
    if tuning.max_parallel_maintenance_workers is not None or not shm:
        return None
    if profile.get("cpus") is not None and min(max(profile["cpus"] - 1, 0), MAX_AUTO_WORKERS) == 0:
        return None  # one CPU: serial anyway
    if steady_mb(shm * SHM_SHARE, down=True) >= STOCK_MAINTENANCE_WORK_MEM_MB:
        return None
    return (
        f"/dev/shm ({shm}MB) is too small for a parallel index build (it needs {STOCK_MAINTENANCE_WORK_MEM_MB}MB "
        f"of maintenance_work_mem within {SHM_SHARE:.0%} of it): index builds run serially "
        "(max_parallel_maintenance_workers = 0). Fix, for parallel builds: grow /dev/shm (docker run --shm-size=1g)."
    )


def _within_postgres(name: str, mb: int) -> tuple[int, str]:
    """``mb`` clamped to the most PostgreSQL accepts for ``name``, and what to add to the reason."""
    most = PG_MAX_MB[name]
    return (most, f", clamped to {most}MB, the most PostgreSQL accepts") if mb > most else (mb, "")


def plan_tuning(tuning: TuningSettings, profile: dict, max_connections: int = 100) -> list[Tuned]:
    """The settings to write, each with its reason. Overrides win; unknown memory or CPUs
    leave those auto settings out (PostgreSQL keeps its defaults). Every auto value is within
    what PostgreSQL accepts (``PG_MAX_MB``), on any host size."""
    memory = profile.get("memory_mb")
    cpus = profile.get("cpus")
    shm = profile.get("shm_mb")
    settings: list[Tuned] = []

    def add(name: str, override, auto, reason: str, unit: str = "MB") -> None:
        if override is not None:
            settings.append(Tuned(name, f"{override}{unit}", OVERRIDE_REASON, override=True))
        elif auto is not None:
            clamped, note = _within_postgres(name, int(auto)) if unit == "MB" else (int(auto), "")
            settings.append(Tuned(name, f"{clamped}{unit}", reason + note))

    shared_buffers = tuning.shared_buffers_mb or (
        min(max(128, steady_mb(memory / 4)), PG_MAX_MB["shared_buffers"]) if memory else None
    )
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
        steady_mb(memory * 3 / 4) if memory else None,
        f"75% of {memory}MB memory: what shared_buffers and the page cache together hold; a planner "
        "estimate only (allocates nothing), so HNSW index scans are costed as mostly cached",
    )

    serial_reason = shm_too_small(tuning, profile)
    workers = tuning.max_parallel_maintenance_workers
    if serial_reason:
        workers = 0
    elif workers is None and cpus:
        workers = min(max(cpus - 1, 0), MAX_AUTO_WORKERS)
    parallel = workers != 0  # None: PostgreSQL's default (2) stays
    graph_mb = hnsw_graph_bytes(tuning.hnsw_vectors, tuning.hnsw_dimensions) / (1 << 20)
    # 10% headroom, plus the ~4MB a parallel build keeps back from its shared area.
    wanted = _round_up(graph_mb * 1.1 + 8, 64)
    caps = {}
    if memory:
        caps[f"25% of {memory}MB memory"] = steady_mb(memory / 4, down=True)
    floor = STOCK_MAINTENANCE_WORK_MEM_MB
    if shm and parallel:
        # A parallel build puts the whole graph in one dynamic shared memory segment (/dev/shm).
        shm_cap = max(1, steady_mb(shm * SHM_SHARE, down=True))
        caps[f"{SHM_SHARE:.0%} of the {shm}MB /dev/shm a parallel build allocates it in"] = shm_cap
        floor = min(floor, shm_cap)  # workers set in host data: sized within /dev/shm, below the floor
    limit_reason, limit = min(caps.items(), key=lambda item: item[1]) if caps else ("", None)
    mwm = max(floor, min(wanted, limit)) if limit is not None else wanted
    mwm = min(mwm, PG_MAX_MB["maintenance_work_mem"])
    expected = f"{tuning.hnsw_vectors:,} x {tuning.hnsw_dimensions} HNSW graph (m={HNSW_M}) needs ~{math.ceil(graph_mb)}MB"
    if (limit is not None and wanted > limit) or mwm < wanted:
        if limit is None or limit > PG_MAX_MB["maintenance_work_mem"]:
            limit_reason = f"{PG_MAX_MB['maintenance_work_mem']}MB, the most PostgreSQL accepts"
        fits = int(mwm * (1 << 20) / hnsw_graph_bytes(1, tuning.hnsw_dimensions))
        reason = f"{expected}, capped at {limit_reason}: builds beyond ~{fits:,} vectors spill to disk (slower)"
    else:
        reason = f"{expected} (+10%): index builds of the expected size stay in memory"
    if serial_reason:
        reason += "; serial builds (see max_parallel_maintenance_workers), so /dev/shm does not cap it"
    add("maintenance_work_mem", tuning.maintenance_work_mem_mb, mwm, reason)
    add(
        "max_parallel_maintenance_workers",
        tuning.max_parallel_maintenance_workers,
        workers,
        serial_reason
        or f"{cpus} CPUs minus the leader, which builds too: one process per CPU, never more "
        f"(at most {MAX_AUTO_WORKERS}, the default worker pool)",
        unit="",
    )
    work_mem = None
    if memory and shared_buffers:
        work_mem = min(256, max(4, steady_mb((memory - shared_buffers) / (4 * max_connections), down=True)))
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
    parallel = tuning.max_parallel_maintenance_workers != 0 and not shm_too_small(tuning, profile)  # too small: serial
    if shm and parallel and tuning.maintenance_work_mem_mb and tuning.maintenance_work_mem_mb > shm:
        raise UnsupportedHost(
            f"pg_maintenance_work_mem {tuning.maintenance_work_mem_mb}MB is more than /dev/shm ({shm}MB): a parallel "
            "HNSW build would fail with 'could not resize shared memory segment'. Fix: lower it, grow /dev/shm, "
            "or set pg_max_parallel_maintenance_workers to 0."
        )


HEADER = (
    "# Managed by pgvector-deploy: rewritten when a value must change (an auto value by more than 10%,",
    f"# so memory noise changes nothing); the previous copy is kept in {BACKUP_DIR}. Each value: auto",
    "# (sized from this host) unless set in host data (pg_shared_buffers, ...); pg_tuning = False removes this file.",
)


def render(settings: list[Tuned], profile: dict) -> str:
    lines = [
        *HEADER,
        f"# Sized for: {profile.get('memory_mb')}MB memory, {profile.get('cpus')} CPUs, /dev/shm {profile.get('shm_mb')}MB.",
    ]
    for tuned in settings:
        lines += ["", f"# {' '.join(tuned.reason.split())}", f"{tuned.name} = {pg_string(tuned.value)}"]  # one comment line
    return "\n".join(lines) + "\n"


def written(text: str) -> dict[str, tuple[str, bool]]:
    """The settings a tuning file of ours holds: name -> (value, set in host data)."""
    found = {}
    previous = ""
    for line in text.splitlines():
        match = _SETTING_LINE.match(line)
        if match:
            found[match.group(1)] = (match.group(2), previous == f"# {OVERRIDE_REASON}")
        previous = line
    return found


def _number(value: str) -> int | None:
    match = re.fullmatch(r"(\d+)(MB)?", value)
    return int(match.group(1)) if match else None


def still_fits(current: str | None, wanted: list[Tuned]) -> bool:
    """Whether the file on the host can stay: our header, the same settings, each override
    exactly as wanted, each auto value within ``TOLERANCE`` of the wanted one."""
    if current is None or tuple(current.splitlines()[: len(HEADER)]) != HEADER:
        return False
    found = written(current)
    if set(found) != {tuned.name for tuned in wanted}:
        return False
    for tuned in wanted:
        value, override = found[tuned.name]
        if override != tuned.override:
            return False
        if value == tuned.value:
            continue
        have, want = _number(value), _number(tuned.value)
        if tuned.override or have is None or want is None:
            return False
        # Sizes get 1MB more slack: a small work_mem (4MB or 5MB) moves by 25% in one MB.
        if abs(have - want) > TOLERANCE * want + (1 if tuned.value.endswith("MB") else 0):
            return False
    return True


# -- applying it -------------------------------------------------------------------------------


def restart_needed(wanted: list[Tuned], state: dict) -> list[str]:
    """The restart-only settings the wanted file sets to a value the running server lacks."""
    running = {"shared_buffers": state.get("running_shared_buffers_mb")}
    needed = []
    for tuned in wanted:
        if tuned.name in RESTART_ONLY and running.get(tuned.name) is not None and _number(tuned.value) != running[tuned.name]:
            needed.append(tuned.name)
    return needed


@operation()
@host_locked
@fails_host_on_error
def server_settings(plan: Plan):
    """Write the tuning include file (checked by PostgreSQL first) when a value must change,
    reload, and restart when a restart-only setting (shared_buffers) changed and ``pg_restart``
    allows it (else report it pending); ``pg_tuning = False`` sets the file aside.

    .. code:: python

        tuning.server_settings(plan)
    """
    state = plan.fact(ServerConfig, platform=plan.platform, port=plan.port)
    path = tuning_path(plan.platform)
    found = state["files"].get(path)  # bytes: a hand edit in another encoding just does not fit
    current = None if found is None else found.decode("utf-8", errors="replace")
    ours = f"sourcefile = '{path}'"
    if not plan.settings.tuning.enabled:
        if current is not None:
            # Restart only if shared_buffers (the one restart-only setting we write) now differs.
            value = written(current).get("shared_buffers", ("", False))[0]
            in_effect = value and _number(value) == state.get("running_shared_buffers_mb")
            restart_decision(plan, ["shared_buffers"] if in_effect else [])
            restart = apply_restart(plan, "name = 'shared_buffers'", RESTART_FIX)
            yield f"set -eu\nPATH={SAFE_PATH}\n{locate(path)}\n{set_aside()}\n{reload_command(plan)}\n{restart}"
        return
    serial = shm_too_small(plan.settings.tuning, plan.profile)
    if serial and not getattr(getattr(host, "state", None), "is_executing", False):
        logger.warning(f"{host.print_prefix}{serial}")  # once a run, while it plans (also with --dry)
    settings = plan_tuning(plan.settings.tuning, plan.profile, state["max_connections"])
    pending = [entry.split("|", 1)[1] for entry in state["pending_restart"] if entry.startswith(f"{path}|")]
    if not still_fits(current, settings):
        restart_decision(plan, restart_needed(settings, state))
        # Not files.template: PostgreSQL checks the file before it replaces ours, and a copy is kept.
        write = replace_file_script(path, render(settings, plan.profile), "0644", SETTINGS_ERRORS_SQL, plan.platform, plan.port, "tuning settings")
        yield f"{write}{reload_command(plan)}\n{apply_restart(plan, ours, RESTART_FIX)}"
    elif pending:
        # Written by an earlier run that did not restart (pg_restart = report, killed, or PostgreSQL was
        # down); still pending is asked again under the lock (another run may have restarted since).
        restart_decision(plan, pending)
        yield f"set -eu\nPATH={SAFE_PATH}\n{locate(path)}\n{apply_restart(plan, ours, RESTART_FIX)}"
