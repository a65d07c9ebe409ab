"""pgvector_deploy/postgres.py: the repository, packages, cluster and running operations, on the
recorded hosts of every platform x arch (test_plans.py holds the recorded hosts and what the
reference says each platform must do), and a setup step re-checked on the host under the lock."""

from __future__ import annotations

import subprocess

import pytest

from pgvector_deploy import postgres
from pgvector_deploy.facts import ClusterState, RepositoryChecks
from pgvector_deploy.plan import Plan

from .conftest import with_changes
from .test_plans import EXPECTED, HOSTS, SAFE, FakeHost, plan_for, rocky_alma_crb, run, run_fresh, setup_of


@pytest.mark.parametrize("name, arch", HOSTS)
def test_repository_setup_on_a_fresh_host(name, arch):
    host = FakeHost(f"{name}-{arch}")
    plan = plan_for(host)
    commands = run(postgres.repository, plan, host)
    expected = EXPECTED[name].repository(arch)
    # Each setup runs only if its check fails again on the host, under the lock.
    steps = plan.platform.repository_steps(plan.os_id, arch)
    assert len(commands) == len(steps) == len(expected)
    for command, step, setup in zip(commands, steps, expected):
        guard = f"{SAFE}if ( {step.check} ) >/dev/null 2>&1; then :; else "
        assert command.startswith(guard) and command.endswith("; fi")
        assert command[len(guard) : -len("; fi")] == setup
    checks = host.facts_asked(RepositoryChecks)
    if expected:
        assert len(checks) == 1 and len(checks[0]["checks"]) == len(expected)  # one round trip
    else:
        assert checks == [] and host.noops  # nothing to set up, nothing asked


@pytest.mark.parametrize("name, arch", HOSTS)
def test_packages_on_a_fresh_host(name, arch):
    assert run_fresh(postgres.packages, f"{name}-{arch}") == [SAFE + EXPECTED[name].install]


@pytest.mark.parametrize("name, arch", HOSTS)
def test_cluster_is_created_on_a_fresh_host(name, arch):
    host = FakeHost(f"{name}-{arch}")
    expected = EXPECTED[name]
    assert run(postgres.cluster, plan_for(host), host) == [f"{SAFE}[ -s {expected.data_dir}/PG_VERSION ] || {expected.create}"]
    [(_, _, command)] = [asked for asked in host.asked if asked[0] is ClusterState]
    assert f"[ -s {EXPECTED[name].data_dir}/PG_VERSION ]" in command


@pytest.mark.parametrize("name, arch", HOSTS)
def test_cluster_is_enabled_and_started_with_systemd(name, arch):
    host = FakeHost(f"{name}-{arch}")
    expected = EXPECTED[name]
    assert run(postgres.running, plan_for(host), host) == [
        f"systemctl enable {expected.boot_unit}",
        f"systemctl start {expected.service}",
    ]
    [(_, _, command)] = [asked for asked in host.asked if asked[0] is ClusterState]
    assert f"{expected.bindir}/pg_isready -q -h {expected.socket_dir} -p 5432" in command


@pytest.mark.parametrize("name, arch", HOSTS)
def test_cluster_is_started_without_systemd(name, arch):
    host = FakeHost(f"{name}-{arch}")
    plan = plan_for(host)
    no_init = Plan(plan.settings, plan.platform, with_changes(plan.profile, systemd=False, pid1="sleep"))
    expected = EXPECTED[name]
    ready = f"{expected.bindir}/pg_isready -q -h {expected.socket_dir} -p 5432"
    assert run(postgres.running, no_init, host) == [f"{SAFE}{ready} || {expected.start_without_systemd}"]


def test_only_the_repository_steps_not_done_yet_run():
    # The PGDG repo RPM is installed (check 0 passes); the module and CRB are not done yet.
    commands = run_fresh(postgres.repository, "rocky9-x86_64", outputs={RepositoryChecks: ["passed=0"]})
    assert [setup_of(command) for command in commands] == [
        "dnf -qy module disable postgresql",
        rocky_alma_crb("x86_64"),
    ]


def test_a_repository_step_done_meanwhile_is_not_done_again(tmp_path):
    """The fact said the step was missing, but another run did it while this one waited for
    the lock: the check runs again on the host and the setup does not."""
    [first, _] = run_fresh(postgres.repository, "ubuntu2204-x86_64")
    keyring = tmp_path / "postgresql.asc"
    keyring.write_text("key")
    command = first.replace("/etc/apt/keyrings/postgresql.asc", str(keyring)).replace("curl ", "echo downloaded; false ")
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0 and "downloaded" not in result.stdout, result.stderr
    keyring.unlink()
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=10)
    assert "downloaded" in result.stdout
