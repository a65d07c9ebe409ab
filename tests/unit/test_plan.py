"""The plan (pgvector_deploy.plan): its per-host fact memo (``Plan.fact``) and the memo's
invalidation by ``shell.host_locked``.

pyinfra 3 caches no facts and runs each operation's generator twice (planning, then
executing), so the plan remembers what it asked until a command may have changed the host.
The last tests run the real operations through pyinfra itself (prepare and execute) on its
``@fake`` connector, which records every command it is sent: facts and changes alike.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
from pyinfra.api import Config, FactBase, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.operation import add_op
from pyinfra.api.operations import run_ops
from pyinfra.context import ctx_host

import pgvector_deploy
from pgvector_deploy import postgres, shell
from pgvector_deploy.facts import ClusterState, parse_host_profile
from pgvector_deploy.loading import load_settings
from pgvector_deploy.plan import Plan
from pgvector_deploy.platforms import PLATFORMS

from .conftest import recorded_lines


class Echo(FactBase):
    """A fact whose command names its arguments."""

    def command(self, **kwargs):
        return f"echo {sorted(kwargs.items())!r}"

    def process(self, output):
        return {"lines": list(output)}


class CountingHost:
    """Answers every fact with a fresh dict, and counts the questions."""

    name = "db-1"

    def __init__(self):
        self.asked: list[tuple[type, dict]] = []

    def get_fact(self, cls, **kwargs):
        self.asked.append((cls, kwargs))
        return {"answer": len(self.asked), "kwargs": dict(kwargs)}

    def noop(self, description):
        pass


@pytest.fixture
def host():
    counting = CountingHost()
    previous = ctx_host.get()
    ctx_host.set(counting)
    yield counting
    ctx_host.set(previous)


@pytest.fixture
def plan(debian12, provisioned_profile):
    return Plan(load_settings({}), debian12, provisioned_profile)


def test_the_same_fact_twice_is_asked_once(host, plan):
    first = plan.fact(ClusterState, platform=plan.platform, port=plan.port)
    second = plan.fact(ClusterState, port=plan.port, platform=plan.platform)  # argument order does not matter
    assert first == second == {"answer": 1, "kwargs": {"platform": plan.platform, "port": 5432}}
    assert host.asked == [(ClusterState, {"platform": plan.platform, "port": 5432})]


def test_different_arguments_or_facts_are_separate_entries(host, plan):
    plan.fact(ClusterState, platform=plan.platform, port=5432)
    plan.fact(ClusterState, platform=plan.platform, port=5433)
    plan.fact(Echo, platform=plan.platform, port=5432)
    plan.fact(Echo, platform=plan.platform, port=5432, _sudo=False)
    assert plan.fact(ClusterState, platform=plan.platform, port=5433)["answer"] == 2
    assert [(cls, kwargs.get("port")) for cls, kwargs in host.asked] == [
        (ClusterState, 5432), (ClusterState, 5433), (Echo, 5432), (Echo, 5432),
    ]  # fmt: skip


def test_unhashable_arguments_are_remembered_by_value(host, plan):
    assert plan.fact(Echo, options={"a": [1]})["answer"] == 1
    assert plan.fact(Echo, options={"a": [1]})["answer"] == 1
    assert plan.fact(Echo, options={"a": [2]})["answer"] == 2
    assert plan.fact(Echo, options=[1])["answer"] == 3
    assert len(host.asked) == 3


def test_an_operation_changing_the_result_does_not_change_the_memo(host, plan):
    plan.fact(Echo)["kwargs"]["edited"] = True
    assert plan.fact(Echo) == {"answer": 1, "kwargs": {}}


def test_another_host_is_never_answered_from_the_memo(host, plan):
    plan.fact(Echo)
    other = CountingHost()
    other.name = "db-2"
    ctx_host.set(other)
    assert plan.fact(Echo)["answer"] == 1 and len(other.asked) == 1


def test_a_new_plan_has_its_own_memo_and_equal_plans_still_compare_equal(host, plan):
    plan.fact(Echo)
    again = Plan(plan.settings, plan.platform, plan.profile)
    again.fact(Echo)
    assert len(host.asked) == 2
    assert again == plan and "_facts" not in repr(plan)


# --- host_locked forgets ----------------------------------------------------------------------------


@shell.host_locked
def _asks_yields_asks(plan, commands=("touch /x",)):
    before = plan.fact(Echo)
    for command in commands:
        yield command
    yield f"echo {plan.fact(Echo)['answer']} {before['answer']}"


def test_a_yielded_command_makes_the_next_question_go_to_the_host(host, plan):
    commands = list(_asks_yields_asks(plan))
    assert len(host.asked) == 2  # asked again after "touch /x" was yielded
    assert "echo 2 1" in commands[-1] and all(command.startswith("mkdir -p -m 0700 /run/pgvector-deploy") and "flock" in command for command in commands)
    plan.fact(Echo)
    assert len(host.asked) == 3  # and again after the last command


def test_without_a_command_the_memo_holds(host, plan):
    list(_asks_yields_asks(plan, commands=()))
    assert len(host.asked) == 1


def test_forgotten_before_the_command_leaves_even_when_pyinfra_stops_at_the_first(host, plan):
    """While planning, pyinfra takes one command and closes the generator."""
    generator = _asks_yields_asks(plan)
    next(generator)
    assert plan._facts == {}  # before pyinfra even decides to stop
    generator.close()
    plan.fact(Echo)  # e.g. the next operation, planned next
    assert len(host.asked) == 2


def test_forgotten_again_when_the_generator_resumes_after_the_command_ran(host, plan):
    """pyinfra executes the command between the yield and the resume: forget what was asked
    in between (a callback, another plan's operation) too."""
    generator = _asks_yields_asks(plan)
    next(generator)
    plan.fact(Echo)  # asked before "touch /x" ran
    resumed = next(generator)
    assert resumed.startswith("mkdir -p -m 0700 /run/pgvector-deploy") and "echo 3 1" in resumed
    assert len(host.asked) == 3  # the operation's own question after the command went to the host


def test_host_locked_without_a_plan_still_locks_each_command(host):
    @shell.host_locked
    def operation(path, other=None):
        yield f"touch {path}"

    [command] = list(operation("/x", other=object()))
    assert command.startswith("mkdir -p -m 0700 /run/pgvector-deploy") and "flock" in command and "touch /x" in command


def test_host_locked_forgets_a_plan_given_by_name(host, plan):
    @shell.host_locked
    def operation(*, plan):
        plan.fact(Echo)
        yield "touch /x"
        plan.fact(Echo)

    list(operation(plan=plan))
    assert len(host.asked) == 2


# --- every operation that can change the host is host_locked --------------------------------------

# Fact-only operations: they yield no command of ours (verify gathers the smoke suite as a fact;
# refuse yields only the failure of a refused host, which runs nothing else; backups.report
# only reads the backup state and logs it).
FACT_ONLY = {"pgvector_deploy.smoke.verify", "pgvector_deploy.preflight.refuse", "pgvector_deploy.backups.report"}


def our_operations() -> dict[str, object]:
    found = {}
    for module_info in pkgutil.iter_modules(pgvector_deploy.__path__):
        module = importlib.import_module(f"pgvector_deploy.{module_info.name}")
        for name, value in vars(module).items():
            if callable(value) and hasattr(value, "_inner") and value.__module__ == module.__name__:
                if hasattr(value._inner, "deploy_name"):  # a packaged deploy (recipe), not an operation
                    continue
                found[f"{module.__name__}.{name}"] = value
    return found


def test_every_operation_that_yields_commands_is_host_locked_and_takes_the_plan_first():
    locked_code = shell.host_locked(lambda: iter(())).__code__
    operations = our_operations()
    assert FACT_ONLY <= set(operations)
    assert {"pgvector_deploy.postgres.cluster", "pgvector_deploy.appenv.env_file"} <= set(operations)
    for name, operation in operations.items():
        if name in FACT_ONLY:
            continue
        assert operation._inner.__code__ is locked_code, f"{name} is not @host_locked"
        first = next(iter(inspect.signature(operation._inner.__wrapped__).parameters))
        assert first == "plan", f"{name}: the plan must be the first argument, so host_locked finds it"


# --- pyinfra itself, prepare and execute, on its @fake connector ----------------------------------


def fake_run(plan_lines: dict[str, list[str]], operations) -> list[str]:
    """Add ``operations`` with a plan (pyinfra plans them, as the deploy file does), execute
    them, and return every command the fake host was sent, facts included, in order.
    ``plan_lines`` maps a fact command's marker to what that fact prints."""
    inventory = Inventory((["@fake/db-1"], {"fake_delay": 0, "fake_delay_jitter": 0, "fake_responses": plan_lines}))
    state = State(inventory, Config())
    connect_all(state)
    [fake] = list(inventory)
    platform = next(p for p in PLATFORMS if p.key == "debian-12")
    plan = Plan(load_settings({}), platform, parse_host_profile(recorded_lines("provisioned", "host-profile")))
    for operation in operations:
        add_op(state, operation, plan)
    run_ops(state)
    assert not state.failed_hosts
    return fake.connector.executed_commands


CLUSTER_FACT = "pg_version_file="  # only ClusterState's command prints it
RUNNING = [f"{CLUSTER_FACT}15", "running=yes", "boot=enabled"]
STOPPED = [f"{CLUSTER_FACT}15", "running=no", "boot=enabled"]


def test_pyinfra_no_op_run_gathers_the_fact_once_for_two_operations_and_both_stages():
    sent = fake_run({CLUSTER_FACT: RUNNING}, [postgres.cluster, postgres.running])
    assert [command for command in sent if CLUSTER_FACT in command] == sent
    assert len(sent) == 1  # pyinfra alone: 4 (2 operations x prepare and execute)


def test_pyinfra_after_an_executed_command_the_fact_is_gathered_again():
    """``running`` starts the stopped cluster; ``cluster`` after it must not trust the
    ClusterState from before the start."""
    sent = fake_run({CLUSTER_FACT: STOPPED}, [postgres.running, postgres.cluster])
    kinds = ["fact" if CLUSTER_FACT in command else "start" if "systemctl start" in command else command for command in sent]
    # prepare: running asks, yields start (forget); cluster asks. execute: running uses that
    # (nothing ran yet), the start runs, then cluster asks again.
    assert kinds == ["fact", "fact", "start", "fact"]
