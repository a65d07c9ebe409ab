"""Plans for every platform x arch: the real operations, run against recorded facts.

Each test builds the plan with the real ``preflight.look`` from a host's recorded
``HostProfile``, then runs the real operation generators (``_inner``) with ``FakeHost`` as
pyinfra's current host. The expected commands below are written out from
``shared/reference/platforms.md``, never derived from the platform table under test.
Only Debian 12 facts were captured on real hosts; the rest are reconstructed
(``recorded/README.md``).
"""

from __future__ import annotations

import shlex
import base64
import hashlib
import subprocess
from dataclasses import dataclass
from ipaddress import IPv4Interface
from typing import Callable

import pytest

from pgvector_deploy import appenv, apps, backups, facts, migrations, networking, pgvector, postgres, preflight, tuning
from pgvector_deploy.appenv import connection, render_env_file
from pgvector_deploy.apps import scram_verifier
from pgvector_deploy.facts import (
    SYSCTL_FILE,
    AppState,
    Bridge,
    ClusterState,
    EnvFileState,
    HostProfile,
    InstalledPackages,
    MigrationLedger,
    PgvectorState,
    RepositoryChecks,
    ServerConfig,
    TlsFiles,
    certificate_paths,
    hba_path,
    ident_path,
    settings_path,
    tuning_path,
)
from pgvector_deploy.managed_files import sha256_text
from pgvector_deploy.plan import Plan
from pgvector_deploy.shell import SAFE_PATH

from .conftest import run_operation

from .conftest import recorded_output, sh_syntax_error

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
        lines = self.outputs[cls] if cls in self.outputs else recorded_output(self.recorded, self.state, FACT_FILES[cls])
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
    # RHUI's CRB first (pay-as-you-go EC2), subscription-manager only on a registered host;
    # run against fake hosts in test_platform_plans.py.
    return StartsWith(
        "rhui=$(dnf -q repolist --all 2>/dev/null | awk '{print $1}' | "
        f"grep -Ex 'codeready-builder-for-rhel-9-({arch}-)?rhui-rpms' | head -n1); "
    )


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
    assert [shlex.split(command.split(" -d ")[1])[0] for command in creates] == ["dbname='template1'", "dbname='postgres'"]
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


def setup_of(command: str) -> str:
    """The setup a repository command runs when its check fails again on the host."""
    assert command.startswith(SAFE + "if ( ") and command.endswith("; fi"), command
    return command.split(" ) >/dev/null 2>&1; then :; else ", 1)[1].removesuffix("; fi")


def test_crb_is_enabled_differently_on_rhel_than_on_rocky_and_alma():
    crb = {name: setup_of(run_fresh(postgres.repository, f"{name}-aarch64")[-1]) for name in ("rhel9", "rocky9", "almalinux9")}
    assert crb["rocky9"] == crb["almalinux9"] == rocky_alma_crb("aarch64")
    assert crb["rhel9"] == rhel_crb("aarch64")


def test_rhel_crb_failure_names_the_rhui_fix():
    crb = setup_of(run_fresh(postgres.repository, "rhel9-x86_64")[-1])
    failure = crb.split("else ", 1)[1].rsplit("; fi", 1)[0]
    result = subprocess.run(["sh", "-c", failure], capture_output=True, text=True, timeout=10)
    assert result.returncode == 1
    assert "dnf config-manager --set-enabled codeready-builder-for-rhel-9-rhui-rpms" in result.stderr
    assert "Fix:" in result.stderr


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
    assert "codeready-builder-for-rhel-9-(aarch64-)?rhui-rpms|codeready-builder-for-rhel-9-aarch64-rpms" in asked["checks"][2]


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


# --- a no-op run asks each fact once (Plan.fact) -------------------------------------------------

APP_PASSWORD = "s3cret-Pässword"
APP_ENV_FILE = "/etc/pgvector-deploy/app.env"
MIGRATIONS = {"0001_documents.sql": "CREATE TABLE documents (id int, embedding vector(3));", "0002_more.sql": "SELECT 2;"}
WHOLE_RECIPE = (
    *RECIPE,
    networking.server_certificate,
    networking.listen,
    networking.client_access,
    tuning.server_settings,
    apps.role,
    apps.database,
    migrations.apply,
    appenv.env_file,
    backups.packages,
    backups.repository,
    backups.archiving,
    backups.schedules,
    backups.first_backup,
)


def converged_outputs(plan: Plan) -> dict:
    """What the facts the recorded host has no recording of print once the whole recipe ran:
    the managed files as rendered, the app role with its password, every migration applied,
    the env file current (one Docker bridge, docker0)."""
    settings, platform = plan.settings, plan.platform
    docker0 = Bridge("docker0", IPv4Interface("172.17.0.1/16"))
    addresses = networking.listen_addresses([docker0], settings)
    encoded = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
    verifier = scram_verifier(APP_PASSWORD, bytes(range(16)))
    tls = certificate_paths(platform, settings.tls.cert_file, settings.tls.key_file) if settings.wants_tls else None
    return {
        TlsFiles: ["openssl=yes", "usable=yes", "covers=yes", "key=600|postgres:postgres"],
        ServerConfig: [
            f"file={hba_path(platform)}|{encoded(networking.render_hba([docker0], settings, ''))}",
            *([f"file={ident_path(platform)}|{encoded(networking.render_ident(None, settings))}"] if settings.app else []),
            f"file={settings_path(platform)}|{encoded(networking.render_settings(platform, addresses, tls))}",
            f"file={SYSCTL_FILE}|{encoded(networking.SYSCTL_TEXT)}",
            f"file={tuning_path(platform)}|{encoded(tuning.render(tuning.plan_tuning(settings.tuning, plan.profile), plan.profile))}",
            f"running_listen={','.join(addresses)}",
            "includes_conf_d=yes",
            "nonlocal_bind=1",
            "address=5: docker0    inet 172.17.0.1/16 brd 172.17.255.255 scope global docker0\\       valid_lft forever",
        ],
        AppState: [
            f"role=true|false|{verifier.split('$')[1]}|{hashlib.sha256(verifier.encode()).hexdigest()}",
            "database_owner=app",
            f"database_vector={settings.version}",
        ],
        MigrationLedger: ["database=yes", "ledger=yes", *(f"applied={m.name}|{m.sha256}" for m in settings.migrations)],
        EnvFileState: [f"sha256={sha256_text(render_env_file(connection(plan)))}", "mode=600", "owner=root:root"],
        # No pg_backup_s3_bucket: no file of ours, archiving as packaged.
        facts.BackupState: ["archive_mode=off", "backlog=0", "data_dir=yes", "user_databases=1"],
    }


def whole_recipe_data(tmp_path, data: dict) -> dict:
    folder = tmp_path / "migrations"
    folder.mkdir()
    for name, sql in MIGRATIONS.items():
        (folder / name).write_text(sql)
    return {
        **data,
        "pg_app_user": "app",
        "pg_app_password": APP_PASSWORD,
        "pg_migrations_dir": str(folder),
        "pg_app_env_file": APP_ENV_FILE,
    }


def run_as_pyinfra_does(operation, plan: Plan, host, planning: bool) -> list:
    """The operation's generator as pyinfra runs it, host lock (``host_locked``) included:
    while planning only up to the first command (``check_for_changes``), else to the end."""
    from pyinfra.context import ctx_host

    previous = ctx_host.get()
    ctx_host.set(host)
    try:
        commands = []
        for command in operation._inner(plan):
            commands.append(command)
            if planning:
                break
        return commands
    finally:
        ctx_host.set(previous)


@pytest.mark.parametrize(
    "recorded, data",
    [
        ("debian12-x86_64", {"pgvector_version": "0.8.0", "pgvector_allow_insecure": True}),
        ("rocky9-aarch64", {}),  # has repository steps: RepositoryChecks too
        ("debian12-x86_64", {"pgvector_version": "0.8.0", "pgvector_allow_insecure": True, "pg_listen_addresses": ["10.0.1.10"]}),
    ],
)
def test_a_no_op_run_of_the_whole_recipe_asks_each_fact_once(recorded, data, tmp_path, monkeypatch):
    monkeypatch.setattr(appenv, "_executing", lambda: False)  # FakeHost.state is the recording's
    host = FakeHost(recorded, state="provisioned", data=whole_recipe_data(tmp_path, data))
    plan = plan_for(host)
    host.outputs.update(converged_outputs(plan))
    host.asked.clear()  # the host profile (preflight) is not an operation's fact
    for planning in (True, False):  # pyinfra plans every operation, then executes them all
        for operation in WHOLE_RECIPE:
            assert run_as_pyinfra_does(operation, plan, host, planning) == [], operation.__name__
    asked = [(cls.__name__, repr(sorted(kwargs.items()))) for cls, kwargs, _ in host.asked]
    assert len(asked) == len(set(asked)), asked  # nothing asked twice
    expected = {"InstalledPackages", "ClusterState", "PgvectorState", "ServerConfig", "AppState", "MigrationLedger", "EnvFileState", "BackupState"}
    if plan.platform.repository_steps(plan.os_id, plan.arch):
        expected.add("RepositoryChecks")
    if plan.settings.wants_tls:
        expected.add("TlsFiles")
    assert {name for name, _ in asked} == expected


def test_a_fact_is_asked_again_after_an_operation_yielded_a_command():
    """A fresh host: ``cluster`` yields pg_createcluster, so ``running`` asks ClusterState anew."""
    host = FakeHost("debian12-x86_64")
    plan = plan_for(host)
    host.asked.clear()
    for planning in (True, False):
        for operation in (postgres.cluster, postgres.running):
            assert run_as_pyinfra_does(operation, plan, host, planning)
    assert [cls for cls, _, _ in host.asked] == [ClusterState] * 4  # never from before a command


@pytest.mark.parametrize(
    "recorded, data",
    [
        ("debian12-x86_64", {"pgvector_version": "0.8.0", "pgvector_allow_insecure": True}),
        ("rocky9-aarch64", {}),  # has repository steps: RepositoryChecks too
        ("debian12-x86_64", {"pgvector_version": "0.8.0", "pgvector_allow_insecure": True, "pg_listen_addresses": ["10.0.1.10"]}),
    ],
)
def test_after_the_prefetch_a_no_op_run_asks_the_host_nothing_more(recorded, data, tmp_path, monkeypatch):
    """``preflight.start`` prefetches ``expected_facts`` in one bundle: each with the very
    arguments its operation asks it with, so the whole recipe is then served from the plan."""
    from pyinfra.context import ctx_host

    from pgvector_deploy.facts import FactBundle

    monkeypatch.setattr(appenv, "_executing", lambda: False)
    host = FakeHost(recorded, state="provisioned", data=whole_recipe_data(tmp_path, data))
    plan = plan_for(host)
    host.outputs.update(converged_outputs(plan))
    wanted = preflight.expected_facts(plan)
    answers = {cls: host.outputs.get(cls) or recorded_output(recorded, "provisioned", FACT_FILES[cls]) for cls, _ in wanted}
    bundle_asks = []

    def get_fact(cls, **kwargs):
        if cls is FactBundle:  # the bundle's own command is sh; here each part is the recording
            bundle_asks.append(kwargs["commands"])
            return [(0, answers[fact]) for fact, _ in wanted]
        return FakeHost.get_fact(host, cls, **kwargs)

    host.get_fact = get_fact
    host.asked.clear()
    previous = ctx_host.get()
    ctx_host.set(host)
    try:
        plan.prefetch(*wanted)
    finally:
        ctx_host.set(previous)
    assert len(bundle_asks) == 1 and len(bundle_asks[0]) == len(wanted)
    for planning in (True, False):
        for operation in WHOLE_RECIPE:
            assert run_as_pyinfra_does(operation, plan, host, planning) == [], operation.__name__
    assert host.asked == []  # every operation's fact came from the bundle
