"""Tuning (pgvector_deploy.tuning): the sizes it picks from host facts, the overrides it refuses,
the commands it yields, that memory noise changes nothing, and when it restarts or reports a
restart pending. (The restart-or-roll-back shell itself: test_managed_files.py.)"""

from __future__ import annotations

import dataclasses
import subprocess
import tempfile
from pathlib import Path

import pytest

from pgvector_deploy import tuning
from pgvector_deploy.facts import tuning_path
from pgvector_deploy.loading import load_settings
from pgvector_deploy.managed_files import BACKUP_DIR
from pgvector_deploy.platforms import UnsupportedHost
from pgvector_deploy.preflight import make_plan
from pgvector_deploy.settings import SettingsError, TuningSettings

from .conftest import (
    AS_POSTGRES,
    PG_BINDIR,
    FactHost,
    run_operation,
    sh_syntax_error,
    skip_or_fail,
    throwaway_server_missing,
    with_changes,
)

BASE = {"pgvector_version": "0.8.6"}


def values(settings: list[tuning.Tuned]) -> dict[str, str]:
    return {tuned.name: tuned.value for tuned in settings}


def lab_host(**changes) -> dict:
    """The recorded Debian 12 test host: 24105MB, 2 CPUs, 2410MB /dev/shm."""
    profile = {"memory_mb": 24105, "cpus": 2, "shm_mb": 2410}
    profile.update(changes)
    return profile


# --- sizes --------------------------------------------------------------------------------------


def test_graph_estimate_is_linear_and_grows_with_dimensions():
    one = tuning.hnsw_graph_bytes(1, 768)
    assert tuning.hnsw_graph_bytes(100_000, 768) == 100_000 * one
    assert 4 * 768 < one < 4 * 768 + 1024  # the vector itself dominates
    assert tuning.hnsw_graph_bytes(1, 1536) - one == 4 * 768


def test_auto_sizes_on_the_recorded_debian_host(provisioned_profile):
    assert (provisioned_profile["memory_mb"], provisioned_profile["cpus"], provisioned_profile["shm_mb"]) == (24105, 2, 2410)
    chosen = values(tuning.plan_tuning(TuningSettings(hnsw_vectors=100_000, hnsw_dimensions=768), provisioned_profile))
    assert chosen == {
        "shared_buffers": "6144MB",  # 25% (6026MB), to 5 significant binary digits (steps of 256MB here)
        "effective_cache_size": "18432MB",  # 75% (18078MB), in steps of 1024MB
        "maintenance_work_mem": "448MB",  # 100k x 768 graph ~365MB, +10% +8MB, rounded up to 64MB
        "max_parallel_maintenance_workers": "1",  # 2 CPUs: the leader and one worker
        "work_mem": "44MB",  # (24105 - 6144) / 400 = 44.9, rounded down in steps of 2MB
    }


def test_expected_graph_bigger_than_shm_is_capped_and_says_what_spills():
    chosen = tuning.plan_tuning(TuningSettings(), lab_host())  # 1M x 1536 needs ~6.6GB
    mwm = next(tuned for tuned in chosen if tuned.name == "maintenance_work_mem")
    assert mwm.value == "1920MB"  # 80% of 2410MB is 1928MB: caps round down (steps of 64MB)
    assert "/dev/shm" in mwm.reason and "spill to disk" in mwm.reason


def test_serial_builds_are_not_capped_by_shm_but_by_memory():
    chosen = values(tuning.plan_tuning(TuningSettings(max_parallel_maintenance_workers=0), lab_host()))
    assert chosen["max_parallel_maintenance_workers"] == "0"
    assert chosen["maintenance_work_mem"] == "5888MB"  # 25% of 24105MB is 6026MB: caps round down (steps of 256MB)


def test_small_host_gets_floors():
    chosen = values(tuning.plan_tuning(TuningSettings(hnsw_vectors=1000, hnsw_dimensions=3), lab_host(memory_mb=400, cpus=1, shm_mb=200)))
    assert chosen["shared_buffers"] == "128MB"
    assert chosen["maintenance_work_mem"] == "64MB"
    assert chosen["max_parallel_maintenance_workers"] == "0"
    assert chosen["work_mem"] == "4MB"


def test_many_cpus_stop_at_the_default_worker_pool():
    assert values(tuning.plan_tuning(TuningSettings(), lab_host(cpus=64)))["max_parallel_maintenance_workers"] == "8"


def test_work_mem_follows_max_connections():
    assert values(tuning.plan_tuning(TuningSettings(), lab_host(), max_connections=1000))["work_mem"] == "4MB"


def test_overrides_win_and_say_so():
    settings = load_settings({**BASE, "pg_shared_buffers": "2GB", "pg_work_mem": 64, "pg_max_parallel_maintenance_workers": "3"})
    chosen = tuning.plan_tuning(settings.tuning, lab_host())
    assert values(chosen)["shared_buffers"] == "2048MB"
    assert values(chosen)["work_mem"] == "64MB"
    assert values(chosen)["max_parallel_maintenance_workers"] == "3"
    assert {tuned.reason for tuned in chosen if tuned.name in ("shared_buffers", "work_mem")} == {"set in host data"}


def test_unknown_memory_and_cpus_write_only_overrides():
    settings = load_settings({**BASE, "pg_maintenance_work_mem": "1GB"})
    assert values(tuning.plan_tuning(settings.tuning, {"memory_mb": None, "cpus": None, "shm_mb": None})) == {
        "maintenance_work_mem": "1024MB"
    }


def test_rendered_file_gives_every_value_a_reason():
    text = tuning.render(tuning.plan_tuning(TuningSettings(), lab_host()), lab_host())
    lines = text.splitlines()
    settings = [index for index, line in enumerate(lines) if line and not line.startswith("#")]
    assert len(settings) == 5
    for index in settings:
        assert lines[index - 1].startswith("# ") and len(lines[index - 1]) > 20
    assert "Sized for: 24105MB memory, 2 CPUs, /dev/shm 2410MB." in text


# --- host data ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, key",
    [
        ({"pg_shared_buffers": "lots"}, "pg_shared_buffers"),
        ({"pg_work_mem": "2gb"}, "pg_work_mem"),  # PostgreSQL's units are case-sensitive
        ({"pg_maintenance_work_mem": "0MB"}, "pg_maintenance_work_mem"),
        ({"pg_max_parallel_maintenance_workers": "-1"}, "pg_max_parallel_maintenance_workers"),
        ({"pg_hnsw_expected_vectors": "auto"}, "pg_hnsw_expected_vectors"),
        ({"pg_hnsw_expected_dimensions": 20000}, "pg_hnsw_expected_dimensions"),
        ({"pg_tuning": "maybe"}, "pg_tuning"),
    ],
)
def test_bad_tuning_data_names_the_key_and_the_fix(data, key):
    with pytest.raises(SettingsError, match=key) as raised:
        load_settings({**BASE, **data})
    assert "Fix:" in str(raised.value)


@pytest.mark.parametrize(
    "data, found",
    [
        ({"pg_shared_buffers": "16GB"}, "more than half"),
        ({"pg_maintenance_work_mem": "13GB"}, "more than half"),
        ({"pg_maintenance_work_mem": "3GB"}, "could not resize shared memory segment"),
    ],
)
def test_overrides_that_could_break_the_server_are_refused_before_anything_runs(provisioned_profile, data, found):
    with pytest.raises(UnsupportedHost, match=found):
        make_plan(load_settings({**BASE, **data}), provisioned_profile)


def test_a_big_maintenance_work_mem_is_fine_for_serial_builds(provisioned_profile):
    data = {**BASE, "pg_maintenance_work_mem": "3GB", "pg_max_parallel_maintenance_workers": 0}
    assert make_plan(load_settings(data), provisioned_profile)


# --- the operation --------------------------------------------------------------------------------


def server_config(files: dict | None = None, pending: list[str] | None = None, shared_buffers_mb: int | None = None) -> dict:
    files = {path: text.encode() for path, text in (files or {}).items()}  # ServerConfig's files are bytes
    return {"files": files, "max_connections": 100, "pending_restart": pending or [], "running_shared_buffers_mb": shared_buffers_mb}


@pytest.fixture
def plan(provisioned_profile):
    return make_plan(load_settings(BASE), provisioned_profile)


def commands(plan, state) -> list[str]:
    plan.forget_facts()  # each call is another run against another host state
    return run_operation(tuning.server_settings, plan, _host(state))


def _host(state):
    host = FactHost({})
    host.get_fact = lambda cls, **kwargs: state  # the parsed fact, as the operation sees it
    return host


def wanted_text(plan) -> str:
    return tuning.render(tuning.plan_tuning(plan.settings.tuning, plan.profile), plan.profile)


def test_first_run_writes_checks_reloads_and_restarts_only_if_pending(plan):
    (script,) = commands(plan, server_config())
    path = tuning_path(plan.platform)
    assert f"file={path}\n" in script
    assert wanted_text(plan) in script
    assert "pg_file_settings" in script and "pg_reload_conf()" in script
    # The restart waits on PostgreSQL's own word that our file sets a restart-only value.
    unquoted = script.replace("'\"'\"'", "'")
    assert f"error = 'setting could not be applied' AND sourcefile = '{path}'" in unquoted
    assert "systemctl restart postgresql@15-main" in script
    assert sh_syntax_error(script) == ""


def test_converged_host_gets_no_command(plan):
    assert commands(plan, server_config({tuning_path(plan.platform): wanted_text(plan)})) == []


def test_someone_elses_pending_restart_is_not_ours_to_apply(plan):
    path = tuning_path(plan.platform)
    state = server_config({path: wanted_text(plan)}, ["/etc/postgresql/15/main/postgresql.conf|shared_preload_libraries"])
    assert commands(plan, state) == []


def test_our_file_written_but_never_restarted_is_restarted(plan):
    path = tuning_path(plan.platform)
    (script,) = commands(plan, server_config({path: wanted_text(plan)}, [f"{path}|shared_buffers"]))
    assert "systemctl restart postgresql@15-main" in script and sh_syntax_error(script) == ""


def test_disabled_sets_our_file_aside_and_restarts_only_for_shared_buffers(provisioned_profile):
    plan = make_plan(load_settings({**BASE, "pg_tuning": False}), provisioned_profile)
    path = tuning_path(plan.platform)
    assert commands(plan, server_config()) == []
    (script,) = commands(plan, server_config({path: "shared_buffers = '1GB'\n"}))
    assert f"file={path}\ncopies={BACKUP_DIR}/etc/postgresql/15/main/conf.d\n" in script
    assert script.index('cp -p "$file" "$backup"') < script.index('rm -f "$file"') < script.index("pg_reload_conf()")
    assert "AND name = 'shared_buffers'" in script.replace("'\"'\"'", "'") and sh_syntax_error(script) == ""


# --- memory noise changes nothing ------------------------------------------------------------------


def noisy(plan, factor: float):
    """The same host with its memory reading ``factor`` times as big."""
    profile = with_changes(plan.profile, memory_mb=int(plan.profile["memory_mb"] * factor))
    return dataclasses.replace(plan, profile=profile)


@pytest.mark.parametrize("factor", [0.97, 0.98, 0.99, 0.999, 1.001, 1.01, 1.02, 1.03])
def test_memory_noise_of_a_few_percent_keeps_the_file_and_restarts_nothing(plan, factor):
    """A kernel update moves MemTotal a little: no rewrite (so no new header), no reload, no
    restart, also when the rounded values moved a step."""
    path = tuning_path(plan.platform)
    assert commands(noisy(plan, factor), server_config({path: wanted_text(plan)}, shared_buffers_mb=6144)) == []


@pytest.mark.parametrize("memory_mb", [1000, 4000, 16000, 24105, 64000, 250000])
def test_memory_noise_keeps_the_file_on_any_host_size(provisioned_profile, memory_mb):
    plan = make_plan(load_settings(BASE), with_changes(provisioned_profile, memory_mb=memory_mb, shm_mb=memory_mb // 10))
    path = tuning_path(plan.platform)
    for factor in (0.97, 0.99, 1.01, 1.03):
        assert commands(noisy(plan, factor), server_config({path: wanted_text(plan)})) == [], (memory_mb, factor)


def test_noise_up_to_3_percent_never_rewrites_on_any_memory_size_from_1gb_to_1tb(plan):
    """Every host size (in steps of 0.5%), every noise of -3%..+3%: the file written for one
    reading still fits the other, including across a rounding step."""
    tuning_settings, shm = plan.settings.tuning, None
    memory, checked = 1024, 0
    while memory < 1 << 20:
        written = tuning.render(tuning.plan_tuning(tuning_settings, lab_host(memory_mb=memory, shm_mb=shm)), lab_host(memory_mb=memory))
        for percent in (-3, -2, -1, 1, 2, 3):
            noisy_memory = int(memory * (1 + percent / 100))
            wanted = tuning.plan_tuning(tuning_settings, lab_host(memory_mb=noisy_memory, shm_mb=shm))
            assert tuning.still_fits(written, wanted), (memory, percent)
            checked += 1
        memory = int(memory * 1.005) + 1
    assert checked > 5000


@pytest.mark.parametrize("factor", [0.5, 0.85, 1.15, 2])
def test_a_real_memory_change_rewrites_the_file(plan, factor):
    path = tuning_path(plan.platform)
    bigger = noisy(plan, factor)
    (script,) = commands(bigger, server_config({path: wanted_text(plan)}))
    assert wanted_text(bigger) in script and wanted_text(plan) not in script


def test_rounded_sizes_do_not_follow_a_few_mb():
    assert {tuning.steady_mb(mb / 4) for mb in range(24100, 24400)} == {6144}
    assert tuning.steady_mb(6026) == 6144 and tuning.steady_mb(1928, down=True) == 1920
    assert tuning.steady_mb(31) == 31 and tuning.steady_mb(100) == 100 and tuning.steady_mb(4607, down=True) == 4352


def file_with(plan, **values) -> str:
    """The file rendered for ``plan`` with some values edited by hand."""
    text = wanted_text(plan)
    for name, value in values.items():
        text = "\n".join(f"{name} = '{value}'" if line.startswith(f"{name} = ") else line for line in text.splitlines()) + "\n"
    return text


def test_an_auto_value_beyond_the_tolerance_is_rewritten(plan):
    path = tuning_path(plan.platform)
    assert commands(plan, server_config({path: file_with(plan, shared_buffers="5600MB")})) == []  # 9% off: kept
    assert len(commands(plan, server_config({path: file_with(plan, shared_buffers="5500MB")}))) == 1  # 10.5% off


def test_overrides_must_match_exactly(provisioned_profile):
    two_gb = make_plan(load_settings({**BASE, "pg_shared_buffers": "2GB"}), provisioned_profile)
    path = tuning_path(two_gb.platform)
    assert commands(two_gb, server_config({path: wanted_text(two_gb)})) == []
    close = make_plan(load_settings({**BASE, "pg_shared_buffers": "2100MB"}), provisioned_profile)
    (script,) = commands(close, server_config({path: wanted_text(two_gb)}))
    assert "shared_buffers = '2100MB'" in script


def test_an_override_removed_is_rewritten_even_when_the_value_is_close(plan, provisioned_profile):
    """The file must not say "set in host data" for a value that is auto now."""
    overridden = make_plan(load_settings({**BASE, "pg_shared_buffers": "6144MB"}), provisioned_profile)
    path = tuning_path(plan.platform)
    (script,) = commands(plan, server_config({path: wanted_text(overridden)}))
    assert wanted_text(plan) in script


def test_a_file_with_another_header_or_other_settings_is_rewritten(plan):
    path = tuning_path(plan.platform)
    old_header = wanted_text(plan).replace("rewritten when a value must change", "rewritten by every run", 1)
    assert len(commands(plan, server_config({path: old_header}))) == 1
    assert len(commands(plan, server_config({path: wanted_text(plan) + "random_page_cost = '1.1'\n"}))) == 1


# --- restarts: allowed, or only reported -------------------------------------------------------------


def report_plan(provisioned_profile, **data):
    return make_plan(load_settings({**BASE, "pg_restart": "report", **data}), provisioned_profile)


def test_a_new_shared_buffers_with_pg_restart_report_is_written_and_reported_not_restarted(provisioned_profile, caplog):
    plan = report_plan(provisioned_profile)
    (script,) = commands(plan, server_config(shared_buffers_mb=128))
    assert wanted_text(plan) in script and "pg_reload_conf()" in script
    assert "systemctl restart" not in script and 'echo "restart pending: $pending' in script
    assert sh_syntax_error(script) == ""
    assert "[test-host] restart pending: shared_buffers" in caplog.text


def test_a_new_file_that_keeps_shared_buffers_reports_nothing(provisioned_profile, caplog):
    plan = report_plan(provisioned_profile)
    commands(plan, server_config(shared_buffers_mb=6144))
    assert "restart pending" not in caplog.text


def test_a_restart_left_pending_is_reported_every_run_with_report(provisioned_profile, caplog):
    plan = report_plan(provisioned_profile)
    path = tuning_path(plan.platform)
    (command,) = commands(plan, server_config({path: wanted_text(plan)}, [f"{path}|shared_buffers"]))
    # the host says again whether it is still pending; if so, the command prints it
    assert f"AND sourcefile = '{path}'" in command.replace("'\"'\"'", "'")
    assert 'echo "restart pending: $pending' in command and "systemctl" not in command
    assert sh_syntax_error(command) == ""
    assert "[test-host] restart pending: shared_buffers" in caplog.text


def test_disabled_with_report_sets_the_file_aside_without_restarting(provisioned_profile, caplog):
    plan = report_plan(provisioned_profile, pg_tuning=False)
    path = tuning_path(plan.platform)
    (script,) = commands(plan, server_config({path: "shared_buffers = '1024MB'\n"}, shared_buffers_mb=1024))
    assert "systemctl restart" not in script and 'echo "restart pending: $pending' in script
    assert "[test-host] restart pending: shared_buffers" in caplog.text


# --- small /dev/shm, huge memory: always what PostgreSQL accepts ------------------------------------

# PostgreSQL 15's range of each setting we write, in MB (sizes) or processes; the numbers are
# checked against the real server's own by test_the_ranges_are_postgresqls_own.
PG_RANGE = {
    "shared_buffers": (1, 1073741823 * 8 // 1024),  # 8kB pages, up to INT_MAX / 2
    "effective_cache_size": (1, 2147483647 * 8 // 1024),  # 8kB pages, up to INT_MAX
    "maintenance_work_mem": (1, 2147483647 // 1024),  # kB, up to INT_MAX (MAX_KILOBYTES)
    "work_mem": (1, 2147483647 // 1024),
    "max_parallel_maintenance_workers": (0, 1024),  # MAX_PARALLEL_WORKER_LIMIT
}


def number(value: str) -> int:
    return int(value.removesuffix("MB"))


@pytest.mark.parametrize("shm_mb", [32, 64, 79])
def test_a_small_dev_shm_builds_serially_and_says_so(shm_mb, provisioned_profile, caplog):
    """80% of /dev/shm below the 64MB floor of maintenance_work_mem: a parallel build would fail
    with 'could not resize shared memory segment', so builds run serially (in the leader's own
    memory, capped by memory only) and the file and the run say why."""
    profile = lab_host(shm_mb=shm_mb)
    chosen = tuning.plan_tuning(TuningSettings(), profile)
    assert values(chosen)["max_parallel_maintenance_workers"] == "0"
    assert values(chosen)["maintenance_work_mem"] == "5888MB"  # 25% of memory, as for a serial build
    text = tuning.render(chosen, profile)
    assert f"# /dev/shm ({shm_mb}MB) is too small for a parallel index build" in text
    plan = make_plan(load_settings(BASE), with_changes(provisioned_profile, shm_mb=shm_mb))
    commands(plan, server_config())
    assert f"[test-host] /dev/shm ({shm_mb}MB) is too small for a parallel index build" in caplog.text


def test_a_dev_shm_that_holds_the_floor_keeps_parallel_builds():
    chosen = values(tuning.plan_tuning(TuningSettings(), lab_host(shm_mb=80)))  # 80% is 64MB
    assert chosen["max_parallel_maintenance_workers"] == "1" and chosen["maintenance_work_mem"] == "64MB"


def test_parallel_workers_set_in_host_data_size_maintenance_work_mem_within_a_small_dev_shm():
    chosen = tuning.plan_tuning(TuningSettings(max_parallel_maintenance_workers=2), lab_host(shm_mb=32))
    assert values(chosen)["max_parallel_maintenance_workers"] == "2"
    mwm = next(tuned for tuned in chosen if tuned.name == "maintenance_work_mem")
    assert mwm.value == "25MB" and "/dev/shm" in mwm.reason  # 80% of 32MB, below the 64MB floor


def test_a_24_tib_host_gets_effective_cache_size_postgresql_accepts():
    chosen = tuning.plan_tuning(TuningSettings(), lab_host(memory_mb=24 << 20, cpus=448, shm_mb=12 << 20))
    ecs = next(tuned for tuned in chosen if tuned.name == "effective_cache_size")
    assert number(ecs.value) == PG_RANGE["effective_cache_size"][1] and "most PostgreSQL accepts" in ecs.reason


def _sweep():
    """Memory from 0.5GB to 24TiB (log-spaced, ~3% steps), with several CPU counts, /dev/shm
    sizes and expected graphs."""
    memory = 512.0
    while memory <= 24 << 20:
        for cpus in (None, 1, 2, 16, 448):
            for shm in (None, 1, 32, 64, int(memory) // 10, int(memory) // 2):
                yield int(memory), cpus, shm
        memory *= 1.03
    yield 24 << 20, 448, 24 << 20


GRAPHS = [TuningSettings(), TuningSettings(hnsw_vectors=1, hnsw_dimensions=1), TuningSettings(hnsw_vectors=10**10, hnsw_dimensions=16000)]


def test_every_value_is_in_postgresqls_range_on_every_host_from_half_a_gb_to_24_tib():
    checked = 0
    for memory, cpus, shm in _sweep():
        for settings in GRAPHS:
            profile = {"memory_mb": memory, "cpus": cpus, "shm_mb": shm}
            chosen = values(tuning.plan_tuning(settings, profile))
            for name, value in chosen.items():
                low, high = PG_RANGE[name]
                assert low <= number(value) <= high, (profile, name, value)
            if shm and chosen.get("max_parallel_maintenance_workers") != "0":
                # a parallel build's graph fits the /dev/shm it is allocated in
                assert number(chosen["maintenance_work_mem"]) <= shm * 0.8, (profile, chosen)
            checked += 1
    assert checked > 5000


def _postgres_says(text: str, name: str) -> str:
    """What the real postgres reads for ``name`` from a postgresql.conf holding ``text``."""
    with tempfile.TemporaryDirectory(prefix="pgvd-tuning-") as folder:
        Path(folder).chmod(0o755)  # postgres -C reads the folder as the postgres user
        Path(folder, "postgresql.conf").write_text(text)
        result = subprocess.run([*AS_POSTGRES, f"{PG_BINDIR}/postgres", "-D", folder, "-C", name], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _need_postgres():
    missing = throwaway_server_missing()
    if missing:
        skip_or_fail(f"no PostgreSQL 15 server binary: {missing}")


@pytest.mark.parametrize("memory_mb, cpus, shm_mb", [(512, 1, 32), (24 << 20, 448, 12 << 20), (24 << 20, 448, None)])
def test_the_real_postgres_reads_the_file_for_the_smallest_and_biggest_hosts(memory_mb, cpus, shm_mb):
    _need_postgres()
    profile = {"memory_mb": memory_mb, "cpus": cpus, "shm_mb": shm_mb}
    big = TuningSettings(hnsw_vectors=10**10, hnsw_dimensions=16000)
    chosen = tuning.plan_tuning(big, profile)
    text = tuning.render(chosen, profile)
    for tuned in chosen:
        units = {"shared_buffers": 8, "effective_cache_size": 8}.get(tuned.name, 1)  # postgres -C prints 8kB pages or kB
        expected = number(tuned.value) * 1024 // units if tuned.value.endswith("MB") else int(tuned.value)
        assert _postgres_says(text, tuned.name) == str(expected), tuned


def test_the_ranges_are_postgresqls_own():
    _need_postgres()
    described = subprocess.run([*AS_POSTGRES, f"{PG_BINDIR}/postgres", "--describe-config"], capture_output=True, text=True, check=True)
    ranges = {fields[0]: (int(fields[5]), int(fields[6])) for fields in (line.split("\t") for line in described.stdout.splitlines())
              if fields[0] in PG_RANGE}  # fmt: skip
    units_kb = {"shared_buffers": 8, "effective_cache_size": 8, "maintenance_work_mem": 1, "work_mem": 1}
    for name, (low, high) in ranges.items():
        unit = units_kb.get(name)
        assert PG_RANGE[name][1] == (high * unit // 1024 if unit else high), name
        assert PG_RANGE[name][0] >= (-(-low * unit // 1024) if unit else low), name
    assert set(ranges) == set(PG_RANGE)


@pytest.mark.parametrize(
    "key, value",
    [
        ("pg_effective_cache_size", "17TB"),
        ("pg_shared_buffers", "9TB"),
        ("pg_maintenance_work_mem", "3TB"),
        ("pg_work_mem", "2097152MB"),
    ],
)
def test_overrides_beyond_what_postgresql_accepts_are_refused(key, value):
    with pytest.raises(SettingsError, match=f"{key}: {value!r} is more than PostgreSQL accepts") as raised:
        load_settings({**BASE, key: value})
    assert "Fix:" in str(raised.value)


def test_the_largest_overrides_postgresql_accepts_are_kept():
    settings = load_settings({**BASE, "pg_effective_cache_size": "16777215MB", "pg_work_mem": "2097151MB"})
    assert (settings.tuning.effective_cache_size_mb, settings.tuning.work_mem_mb) == (16777215, 2097151)
