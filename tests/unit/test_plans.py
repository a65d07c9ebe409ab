"""Plans for every platform x arch: the real operations, run against recorded facts.

Each test builds the plan with the real ``preflight.look`` from a host's recorded
``HostProfile``, then runs the real operation generators (``_inner``) with ``FakeHost`` as
pyinfra's current host. The expected commands below are written out from
``shared/reference/platforms.md``, never derived from the platform table under test.
Only Debian 12 facts were captured on real hosts; the rest are reconstructed
(``recorded/README.md``).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Callable

import pytest

from pgvector_deploy import pgvector, postgres, preflight
from pgvector_deploy.facts import ClusterState, HostProfile, InstalledPackages, PgvectorState, RepositoryChecks
from pgvector_deploy.preflight import Plan
from pgvector_deploy.shell import SAFE_PATH

from .conftest import run_operation

from .conftest import recorded_output, sh_syntax_error, with_changes

ARCHES = ("x86_64", "aarch64")
SAFE = f"PATH={SAFE_PATH}; "
FACT_FILES = {
    HostProfile: "host-profile",
    InstalledPackages: "installed-packages",
    RepositoryChecks: "repository-checks",
    ClusterState: "cluster-state",
    PgvectorState: "pgvector-state",
}


# --- a fake pyinfra host, and running an operation on it -------------------------------------


class FakeHost:
    """Just enough of pyinfra's ``Host`` for the operations: ``data``, ``get_fact``, ``noop``.

    A fact's real command is built with the arguments the operation passes (kept in
    ``asked``), and its real ``process`` parses the recorded output; no output gives the fact's
    default, as pyinfra does. ``outputs`` replaces a fact's recorded lines.
    """

    def __init__(self, recorded: str, state: str = "fresh", data: dict | None = None, outputs: dict | None = None):
        self.recorded = recorded
        self.state = state
        self.data = data or {}
        self.outputs = outputs or {}
        self.asked: list[tuple[type, dict, str]] = []
        self.noops: list[str] = []

    def get_fact(self, cls, **kwargs):
        fact = cls()
        self.asked.append((cls, kwargs, fact.command(**kwargs)))
        lines = self.outputs.get(cls, recorded_output(self.recorded, self.state, FACT_FILES[cls]))
        return fact.process(lines) if lines else fact.default()

    def noop(self, description: str) -> None:
        self.noops.append(description)

    def facts_asked(self, cls) -> list[dict]:
        return [kwargs for asked, kwargs, _ in self.asked if asked is cls]


def run(operation, plan: Plan, host: FakeHost) -> list:
    return run_operation(operation, plan, host)


def plan_for(host: FakeHost) -> Plan:
    plan = preflight.look(host)
    assert isinstance(plan, Plan), plan
    return plan


def run_fresh(operation, recorded: str, **host_args) -> list:
    """What ``operation`` yields on the recorded host (fresh unless ``state=`` says otherwise)."""
    host = FakeHost(recorded, **host_args)
    return run(operation, plan_for(host), host)


# --- what the reference says each platform must do -------------------------------------------


class StartsWith(str):
    """An expected command known by its start (the rest is a long error message)."""

    def __eq__(self, other):
        return isinstance(other, str) and other.startswith(str(self))

    def __radd__(self, prefix: str) -> StartsWith:  # SAFE + StartsWith(...) keeps the matcher
        return StartsWith(prefix + str(self))

    __hash__ = str.__hash__


PGDG_KEY = (
    "install -d -m 0755 /etc/apt/keyrings && "
    "curl -fsSL --retry 2 -o /etc/apt/keyrings/postgresql.asc.new https://www.postgresql.org/media/keys/ACCC4CF8.asc && "
    "chmod 0644 /etc/apt/keyrings/postgresql.asc.new && "
    "mv -f /etc/apt/keyrings/postgresql.asc.new /etc/apt/keyrings/postgresql.asc"
)


def pgdg_apt(codename: str) -> Callable[[str], list[str]]:
    source = f"deb [signed-by=/etc/apt/keyrings/postgresql.asc] https://apt.postgresql.org/pub/repos/apt {codename}-pgdg main"
    return lambda arch: [PGDG_KEY, f"printf '%s\\n' '{source}' > /etc/apt/sources.list.d/pgdg.list"]


def pgdg_yum(crb: Callable[[str], str]) -> Callable[[str], list[str]]:
    return lambda arch: [
        f"dnf -y install https://download.postgresql.org/pub/repos/yum/reporpms/EL-9-{arch}/pgdg-redhat-repo-latest.noarch.rpm",
        "dnf -qy module disable postgresql",
        crb(arch),
    ]


def rhel_crb(arch: str) -> str:
    return StartsWith(f"subscription-manager repos --enable codeready-builder-for-rhel-9-{arch}-rpms || ")


def rocky_alma_crb(arch: str) -> str:
    return "dnf -y install dnf-plugins-core && dnf config-manager --set-enabled crb"


def pg_ctl(bindir: str, data_dir: str, log: str) -> str:
    return (
        "install -d -m 2775 -o postgres -g postgres /run/postgresql && "
        f"runuser -u postgres -- {bindir}/pg_ctl -D {data_dir} -l {log} start -w"
    )


@dataclass(frozen=True)
class Expected:
    platform: str
    proof: str
    repository: Callable[[str], list[str]]  # arch -> setup commands on a fresh host
    install: str  # on the recorded fresh host (only what is missing there)
    bindir: str
    socket_dir: str
    data_dir: str
    config_dir: str
    create: str
    service: str
    boot_unit: str
    start_without_systemd: str


DEBIAN_FAMILY = dict(
    install=(
        "export DEBIAN_FRONTEND=noninteractive && apt-get -q -o DPkg::Lock::Timeout=600 update && "
        "apt-get -q -y -o DPkg::Lock::Timeout=600 install --no-install-recommends "
        "postgresql-15 postgresql-server-dev-15 gcc make libc6-dev"
    ),
    bindir="/usr/lib/postgresql/15/bin",
    socket_dir="/var/run/postgresql",
    data_dir="/var/lib/postgresql/15/main",
    config_dir="/etc/postgresql/15/main",
    create="pg_createcluster 15 main --start-conf=auto",
    service="postgresql@15-main",
    boot_unit="postgresql",
    start_without_systemd="pg_ctlcluster 15 main start",
)
EL9 = dict(
    platform="rhel-9",
    proof="plan",
    install="dnf -y install postgresql15-server postgresql15-devel gcc make redhat-rpm-config",
    bindir="/usr/pgsql-15/bin",
    socket_dir="/run/postgresql",
    data_dir="/var/lib/pgsql/15/data",
    config_dir="/var/lib/pgsql/15/data",
    create="/usr/pgsql-15/bin/postgresql-15-setup initdb",
    service="postgresql-15",
    boot_unit="postgresql-15",
    start_without_systemd=pg_ctl("/usr/pgsql-15/bin", "/var/lib/pgsql/15/data", "/var/lib/pgsql/15/pg_ctl.log"),
)
EXPECTED = {
    "debian12": Expected(platform="debian-12", proof="e2e", repository=lambda arch: [], **DEBIAN_FAMILY),
    "ubuntu2204": Expected(platform="ubuntu-22.04", proof="plan", repository=pgdg_apt("jammy"), **DEBIAN_FAMILY),
    "ubuntu2404": Expected(platform="ubuntu-24.04", proof="plan", repository=pgdg_apt("noble"), **DEBIAN_FAMILY),
    "amzn2023": Expected(
        platform="amzn-2023",
        proof="plan",
        repository=lambda arch: [],
        # the recorded AMI already has amazon-rpm-config
        install="dnf -y install postgresql15-server postgresql15-server-devel gcc make",
        bindir="/usr/bin",
        socket_dir="/run/postgresql",
        data_dir="/var/lib/pgsql/data",
        config_dir="/var/lib/pgsql/data",
        create="postgresql-setup --initdb",
        service="postgresql",
        boot_unit="postgresql",
        start_without_systemd=pg_ctl("/usr/bin", "/var/lib/pgsql/data", "/var/lib/pgsql/pg_ctl.log"),
    ),
    "rhel9": Expected(repository=pgdg_yum(rhel_crb), **EL9),
    "rocky9": Expected(repository=pgdg_yum(rocky_alma_crb), **EL9),
    "almalinux9": Expected(repository=pgdg_yum(rocky_alma_crb), **EL9),
}
HOSTS = [pytest.param(name, arch, id=f"{name}-{arch}") for name in EXPECTED for arch in ARCHES]


# --- fresh hosts: what each operation would run ----------------------------------------------


@pytest.mark.parametrize("name, arch", HOSTS)
def test_recorded_host_is_planned_on_its_platform(name, arch):
    plan = plan_for(FakeHost(f"{name}-{arch}"))
    expected = EXPECTED[name]
    assert (plan.platform.key, plan.platform.proof, plan.arch) == (expected.platform, expected.proof, arch)
    assert (plan.platform.data_dir, plan.platform.config_dir) == (expected.data_dir, expected.config_dir)


@pytest.mark.parametrize("name, arch", HOSTS)
def test_repository_setup_on_a_fresh_host(name, arch):
    host = FakeHost(f"{name}-{arch}")
    commands = run(postgres.repository, plan_for(host), host)
    expected = EXPECTED[name].repository(arch)
    assert commands == [SAFE + command for command in expected]
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
    assert run(postgres.cluster, plan_for(host), host) == [SAFE + EXPECTED[name].create]
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
    assert run(postgres.running, no_init, host) == [SAFE + EXPECTED[name].start_without_systemd]


@pytest.mark.parametrize("name, arch", HOSTS)
def test_build_and_extension_use_the_major_s_own_tools(name, arch):
    host = FakeHost(f"{name}-{arch}")
    plan = plan_for(host)
    expected = EXPECTED[name]
    [script] = run(pgvector.build, plan, host)
    assert script.count(f"PG_CONFIG={expected.bindir}/pg_config ") == 2  # make and make install
    assert f"runuser -u postgres -- {expected.bindir}/psql " in script
    assert f"-h {expected.socket_dir} -p 5432" in script
    assert sh_syntax_error(script) == ""
    creates = run(pgvector.extension, plan, host)
    assert [command.split(" -d ")[1].split()[0] for command in creates] == ["template1", "postgres"]
    assert all(f"-- {expected.bindir}/psql " in command for command in creates)


@pytest.mark.parametrize("name, arch", HOSTS)
def test_every_command_and_fact_is_valid_sh(name, arch):
    host = FakeHost(f"{name}-{arch}")
    plan = plan_for(host)
    commands = [
        command
        for operation in (postgres.repository, postgres.packages, postgres.cluster, postgres.running)
        for command in run(operation, plan, host)
    ]
    for script in commands + [command for _, _, command in host.asked if command.strip()]:
        assert sh_syntax_error(script) == "", script


# --- details that differ between hosts of one platform -----------------------------------------


def test_crb_is_enabled_differently_on_rhel_than_on_rocky_and_alma():
    crb = {name: run_fresh(postgres.repository, f"{name}-aarch64")[-1] for name in ("rhel9", "rocky9", "almalinux9")}
    assert crb["rocky9"] == crb["almalinux9"] == SAFE + rocky_alma_crb("aarch64")
    assert crb["rhel9"].startswith(SAFE + "subscription-manager repos --enable codeready-builder-for-rhel-9-aarch64-rpms")


def test_rhel_crb_failure_names_the_rhui_fix():
    crb = run_fresh(postgres.repository, "rhel9-x86_64")[-1]
    failure = crb.split(" || ", 1)[1]
    result = subprocess.run(["sh", "-c", failure], capture_output=True, text=True, timeout=10)
    assert result.returncode == 1
    assert "dnf config-manager --set-enabled codeready-builder-for-rhel-9-rhui-rpms" in result.stderr
    assert "Fix:" in result.stderr


def test_only_the_repository_steps_not_done_yet_run():
    # The PGDG repo RPM is installed (check 0 passes); the module and CRB are not done yet.
    assert run_fresh(postgres.repository, "rocky9-x86_64", outputs={RepositoryChecks: ["passed=0"]}) == [
        SAFE + "dnf -qy module disable postgresql",
        SAFE + rocky_alma_crb("x86_64"),
    ]


def test_repository_checks_name_the_codename_and_arch():
    host = FakeHost("ubuntu2204-aarch64")
    run(postgres.repository, plan_for(host), host)
    [asked] = host.facts_asked(RepositoryChecks)
    assert asked["checks"] == (
        "[ -s /etc/apt/keyrings/postgresql.asc ]",
        "grep -qsxF 'deb [signed-by=/etc/apt/keyrings/postgresql.asc] https://apt.postgresql.org/pub/repos/apt "
        "jammy-pgdg main' /etc/apt/sources.list.d/pgdg.list",
    )
    host = FakeHost("rhel9-aarch64")
    run(postgres.repository, plan_for(host), host)
    [asked] = host.facts_asked(RepositoryChecks)
    assert asked["checks"][0] == "rpm -q --quiet pgdg-redhat-repo"
    assert "codeready-builder-for-rhel-9-(aarch64|rhui)-rpms" in asked["checks"][2]


# --- converged hosts: nothing to do ---------------------------------------------------------

RECIPE = (
    postgres.repository,
    pgvector.fetch,
    postgres.packages,
    postgres.cluster,
    postgres.running,
    pgvector.build,
    pgvector.extension,
)


@pytest.mark.parametrize(
    "recorded, data",
    [
        # the real Debian 12 host was provisioned with pgvector 0.8.0
        ("debian12-x86_64", {"pgvector_version": "0.8.0", "pgvector_allow_insecure": True}),
        ("ubuntu2404-aarch64", {}),
        ("amzn2023-x86_64", {}),
        ("rocky9-aarch64", {}),
        ("rhel9-x86_64", {}),
    ],
)
def test_a_converged_host_yields_no_commands(recorded, data):
    host = FakeHost(recorded, state="provisioned", data=data)
    plan = plan_for(host)
    assert {operation.__name__: run(operation, plan, host) for operation in RECIPE} == {
        operation.__name__: [] for operation in RECIPE
    }
    assert len(host.noops) == len(RECIPE)  # each operation says why it did nothing


def test_a_platform_without_repository_steps_adds_no_round_trip():
    host = FakeHost("debian12-x86_64", state="provisioned")
    plan = plan_for(host)
    asked_before = len(host.asked)
    assert run(postgres.repository, plan, host) == []
    assert len(host.asked) == asked_before
    assert host.noops == ["Debian 12 (bookworm) ships PostgreSQL 15 in its own repositories"]
