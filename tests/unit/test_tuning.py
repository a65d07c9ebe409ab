"""Tuning (pgvector_deploy.tuning): the sizes it picks from host facts, the overrides it refuses,
the commands it yields, and its restart-or-roll-back shell run for real against a fake systemctl."""

from __future__ import annotations

import dataclasses
import os
import subprocess

import pytest

from pgvector_deploy import tuning
from pgvector_deploy.facts import tuning_path
from pgvector_deploy.platforms import UnsupportedHost
from pgvector_deploy.preflight import make_plan
from pgvector_deploy.settings import SettingsError, TuningSettings, load_settings

from .conftest import FactHost, run_operation, sh_syntax_error, with_changes

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
        "shared_buffers": "6026MB",  # 25%
        "effective_cache_size": "18078MB",  # 75%
        "maintenance_work_mem": "448MB",  # 100k x 768 graph ~365MB, +10% +8MB, rounded up to 64MB
        "max_parallel_maintenance_workers": "1",  # 2 CPUs: the leader and one worker
        "work_mem": "45MB",  # (24105 - 6026) / 400
    }


def test_expected_graph_bigger_than_shm_is_capped_and_says_what_spills():
    chosen = tuning.plan_tuning(TuningSettings(), lab_host())  # 1M x 1536 needs ~6.6GB
    mwm = next(tuned for tuned in chosen if tuned.name == "maintenance_work_mem")
    assert mwm.value == f"{2410 * 4 // 5}MB"
    assert "/dev/shm" in mwm.reason and "spill to disk" in mwm.reason


def test_serial_builds_are_not_capped_by_shm_but_by_memory():
    chosen = values(tuning.plan_tuning(TuningSettings(max_parallel_maintenance_workers=0), lab_host()))
    assert chosen["max_parallel_maintenance_workers"] == "0"
    assert chosen["maintenance_work_mem"] == f"{24105 // 4}MB"


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


def server_config(files: dict | None = None, pending: list[str] | None = None) -> dict:
    files = {path: text.encode() for path, text in (files or {}).items()}  # ServerConfig's files are bytes
    return {"files": files, "max_connections": 100, "pending_restart": pending or []}


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
    assert f'mv -f {path} "{path}.bak-$stamp"' in script
    assert "AND name = 'shared_buffers'" in script.replace("'\"'\"'", "'") and sh_syntax_error(script) == ""


# --- restart or roll back, run for real -------------------------------------------------------------


@pytest.fixture
def fake_server(tmp_path, plan):
    """A conf.d in tmp_path and a fake systemctl that fails while the tuning file says BAD."""
    bindir, confd = tmp_path / "bin", tmp_path / "conf.d"
    bindir.mkdir()
    confd.mkdir()
    platform = dataclasses.replace(plan.platform, config_dir=str(tmp_path))
    path = tuning_path(platform)
    (bindir / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/restarts\n! grep -qs BAD {path}\n')
    (bindir / "systemctl").chmod(0o755)
    test_plan = dataclasses.replace(plan, platform=platform)

    def run(previous: str | None, new: str) -> subprocess.CompletedProcess:
        if previous is not None:
            (confd / os.path.basename(path)).write_text(previous)
        stamp = "20261121T000000Z"
        if previous is not None:
            (confd / f"{os.path.basename(path)}.bak-{stamp}").write_text(previous)  # as replace_file_script keeps it
        (confd / os.path.basename(path)).write_text(new)
        script = f"stamp={stamp}\n" + tuning.restart_or_roll_back(test_plan, path)
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env={"PATH": f"{bindir}:/usr/bin:/bin"})

    return run, confd, path, tmp_path


def test_restart_that_works_keeps_the_new_file(fake_server):
    run, confd, path, tmp = fake_server
    done = run("shared_buffers = '128MB'\n", "shared_buffers = '1GB'\n")
    assert done.returncode == 0, done.stderr
    assert open(path).read() == "shared_buffers = '1GB'\n"
    assert (tmp / "restarts").read_text().count("restart") == 1


def test_restart_that_fails_puts_the_previous_file_back_and_restarts_again(fake_server):
    run, confd, path, tmp = fake_server
    done = run("shared_buffers = '128MB'\n", "shared_buffers = 'BAD'\n")
    assert done.returncode == 1
    assert "did not start with the new" in done.stderr and "Fix:" in done.stderr
    assert open(path).read() == "shared_buffers = '128MB'\n"
    assert (tmp / "restarts").read_text().count("restart") == 2


def test_restart_that_fails_without_a_previous_file_sets_ours_aside(fake_server):
    run, confd, path, tmp = fake_server
    done = run(None, "shared_buffers = 'BAD'\n")
    assert done.returncode == 1
    assert not os.path.exists(path)
    assert [name.name for name in confd.iterdir()] == [f"{os.path.basename(path)}.bak-20261121T000000Z"]
