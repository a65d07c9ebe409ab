"""Plans for the newer platform rows (Debian 13, Ubuntu 26.04, EL 10, Amazon Linux 2023's
current release), the base tools, and RHEL's CodeReady Builder on RHUI and registered hosts.

As in test_plans.py, the real ``preflight.look`` and the real operation generators run against
recorded facts (``recorded/README.md`` says which were captured and which reconstructed), and
the expected commands are written out from ``shared/reference/platforms.md``, never derived
from the platform table. The shell the plans yield is also run, against fake ``dnf``,
``subscription-manager`` and ``rpm`` that answer as the recorded hosts do.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

from pgvector_deploy import pgvector, postgres, preflight
from pgvector_deploy.facts import ClusterState, HostProfile, InstalledPackages, PgvectorState, RepositoryChecks
from pgvector_deploy.plan import Plan
from pgvector_deploy.platforms import PACKAGE_MANAGERS, PLATFORMS
from pgvector_deploy.shell import SAFE_PATH

from .conftest import RECORDED, FactHost, recorded_output, run_operation, sh_syntax_error

ARCHES = ("x86_64", "aarch64")
SAFE = f"PATH={SAFE_PATH}; "
FACT_FILES = {
    HostProfile: "host-profile",
    InstalledPackages: "installed-packages",
    RepositoryChecks: "repository-checks",
    ClusterState: "cluster-state",
    PgvectorState: "pgvector-state",
}
REPO = Path(__file__).resolve().parents[2]


def recorded_host(name: str, state: str = "fresh", data: dict | None = None, **replaced) -> FactHost:
    """A fake host answering with ``name``'s recordings in ``state`` (``replaced``: fact file
    name -> the state to read that one fact from, e.g. ``installed_packages="minbase"``)."""
    outputs = {}
    for cls, fact in FACT_FILES.items():
        outputs[cls] = recorded_output(name, replaced.get(fact.replace("-", "_"), state), fact)
    host = FactHost(outputs)
    host.data = data or {}
    return host


def plan_for(host: FactHost) -> Plan:
    plan = preflight.look(host)
    assert isinstance(plan, Plan), plan
    return plan


def planned(operation, name: str, state: str = "fresh", **replaced) -> list:
    host = recorded_host(name, state, **replaced)
    return run_operation(operation, plan_for(host), host)


# --- what the reference says (platforms.md), written out --------------------------------------

APT_TOOLS = "curl ca-certificates openssl tar gzip coreutils findutils sed grep mawk procps util-linux iproute2"
DNF_TOOLS = "curl ca-certificates openssl tar gzip coreutils findutils sed grep gawk procps-ng util-linux iproute"
APT_INSTALL = (
    "export DEBIAN_FRONTEND=noninteractive && apt-get -q -o DPkg::Lock::Timeout=600 update && "
    "apt-get -q -y -o DPkg::Lock::Timeout=600 install --no-install-recommends "
)
PGDG_KEY = (
    "install -d -m 0755 /etc/apt/keyrings && "
    "curl -fsSL --retry 2 -o /etc/apt/keyrings/postgresql.asc.new https://www.postgresql.org/media/keys/ACCC4CF8.asc && "
    "chmod 0644 /etc/apt/keyrings/postgresql.asc.new && "
    "mv -f /etc/apt/keyrings/postgresql.asc.new /etc/apt/keyrings/postgresql.asc"
)


def pgdg_apt(codename: str):
    source = f"deb [signed-by=/etc/apt/keyrings/postgresql.asc] https://apt.postgresql.org/pub/repos/apt {codename}-pgdg main"
    return lambda arch: [PGDG_KEY, f"printf '%s\\n' '{source}' > /etc/apt/sources.list.d/pgdg.list"]


def pgdg_el10(crb):
    # EL 10 has no dnf modules: no "module disable" step.
    return lambda arch: [
        f"dnf -y install https://download.postgresql.org/pub/repos/yum/reporpms/EL-10-{arch}/pgdg-redhat-repo-latest.noarch.rpm",
        crb(arch),
    ]


def rhel_crb_prefix(el_major: int, arch: str) -> str:
    return (
        "rhui=$(dnf -q repolist --all 2>/dev/null | awk '{print $1}' | "
        f"grep -Ex 'codeready-builder-for-rhel-{el_major}-({arch}-)?rhui-rpms' | head -n1); "
    )


ROCKY_ALMA_CRB = "dnf -y install dnf-plugins-core && dnf config-manager --set-enabled crb"
DEBIAN_FAMILY = dict(
    install=APT_INSTALL + "postgresql-15 postgresql-server-dev-15 gcc make libc6-dev",
    bindir="/usr/lib/postgresql/15/bin",
    socket_dir="/var/run/postgresql",
    data_dir="/var/lib/postgresql/15/main",
    create="pg_createcluster 15 main --start-conf=auto",
    service="postgresql@15-main",
    boot_unit="postgresql",
)
EL10 = dict(
    platform="rhel-10",
    install="dnf -y install postgresql15-server postgresql15-devel gcc make redhat-rpm-config",
    bindir="/usr/pgsql-15/bin",
    socket_dir="/run/postgresql",
    data_dir="/var/lib/pgsql/15/data",
    create="/usr/pgsql-15/bin/postgresql-15-setup initdb",
    service="postgresql-15",
    boot_unit="postgresql-15",
)
EXPECTED = {
    "debian13": dict(platform="debian-13", repository=pgdg_apt("trixie"), **DEBIAN_FAMILY),
    "ubuntu2604": dict(platform="ubuntu-26.04", repository=pgdg_apt("resolute"), **DEBIAN_FAMILY),
    "rhel10": dict(repository=pgdg_el10(lambda arch: rhel_crb_prefix(10, arch)), **EL10),
    "rocky10": dict(repository=pgdg_el10(lambda arch: ROCKY_ALMA_CRB), **EL10),
    "almalinux10": dict(repository=pgdg_el10(lambda arch: ROCKY_ALMA_CRB), **EL10),
    "amzn2023.9": dict(
        platform="amzn-2023",
        repository=lambda arch: [],
        # postgresql15 names are unchanged in the current release (16, 17 and 18 were added);
        # the recorded AMI already has amazon-rpm-config.
        install="dnf -y install postgresql15-server postgresql15-server-devel gcc make",
        bindir="/usr/bin",
        socket_dir="/run/postgresql",
        data_dir="/var/lib/pgsql/data",
        create="postgresql-setup --initdb",
        service="postgresql",
        boot_unit="postgresql",
    ),
}
HOSTS = [pytest.param(name, arch, id=f"{name}-{arch}") for name in EXPECTED for arch in ARCHES]


def matches(command: str, expected: str) -> bool:
    """RHEL's CRB step is known by its start (the rest is a long error message)."""
    return command.startswith(expected) if expected.startswith("rhui=") else command == expected


# --- the new rows, fresh, on both architectures ---------------------------------------------------


@pytest.mark.parametrize("name, arch", HOSTS)
def test_new_platform_is_planned_from_its_recorded_host(name, arch):
    plan = plan_for(recorded_host(f"{name}-{arch}"))
    expected = EXPECTED[name]
    assert (plan.platform.key, plan.platform.proof, plan.arch) == (expected["platform"], "plan", arch)
    assert (plan.platform.data_dir, plan.platform.pg_config) == (expected["data_dir"], expected["bindir"] + "/pg_config")


@pytest.mark.parametrize("name, arch", HOSTS)
def test_new_platform_sets_up_its_repositories(name, arch):
    host = recorded_host(f"{name}-{arch}")
    plan = plan_for(host)
    commands = run_operation(postgres.repository, plan, host)
    expected = EXPECTED[name]["repository"](arch)
    steps = plan.platform.repository_steps(plan.os_id, arch)
    assert len(commands) == len(steps) == len(expected)
    for command, step, wanted in zip(commands, steps, expected):
        # Each setup runs only if its check fails again on the host (postgres.repository).
        guard = f"{SAFE}if ( {step.check} ) >/dev/null 2>&1; then :; else "
        assert command.startswith(guard) and command.endswith("; fi")
        assert matches(command[len(guard) : -len("; fi")], wanted), command


@pytest.mark.parametrize("name, arch", HOSTS)
def test_new_platform_installs_postgresql_15_headers_and_compiler(name, arch):
    assert planned(postgres.packages, f"{name}-{arch}") == [SAFE + EXPECTED[name]["install"]]


@pytest.mark.parametrize("name, arch", HOSTS)
def test_new_platform_creates_and_starts_its_cluster(name, arch):
    expected = EXPECTED[name]
    assert planned(postgres.cluster, f"{name}-{arch}") == [f"{SAFE}[ -s {expected['data_dir']}/PG_VERSION ] || {expected['create']}"]
    assert planned(postgres.running, f"{name}-{arch}") == [
        f"systemctl enable {expected['boot_unit']}",
        f"systemctl start {expected['service']}",
    ]


@pytest.mark.parametrize("name, arch", HOSTS)
def test_new_platform_builds_with_its_own_pg_config_and_valid_sh(name, arch):
    host = recorded_host(f"{name}-{arch}")
    plan = plan_for(host)
    expected = EXPECTED[name]
    [script] = run_operation(pgvector.build, plan, host)
    assert script.count(f"PG_CONFIG={expected['bindir']}/pg_config ") == 2
    assert f'cflags=$(kept_flags "$({expected["bindir"]}/pg_config --cflags)")' in script
    assert f"-h {expected['socket_dir']} -p 5432" in script
    commands = [
        command
        for operation in (postgres.tools, postgres.repository, postgres.packages, postgres.cluster, postgres.running)
        for command in run_operation(operation, plan, host)
    ]
    for text in [script, *commands, *(command for _, _, command in host.asked if command.strip())]:
        assert sh_syntax_error(text) == "", text


def test_debian_13_converged_host_yields_no_commands():
    # Reconstructed from the Debian 12 capture and the trixie chroot (recorded/README.md).
    host = recorded_host("debian13-x86_64", "provisioned")
    plan = plan_for(host)
    recipe = (postgres.tools, postgres.repository, postgres.packages, postgres.cluster, postgres.running,
              pgvector.build, pgvector.extension)  # fmt: skip
    assert {op.__name__: run_operation(op, plan, host) for op in recipe} == {op.__name__: [] for op in recipe}
    assert len(host.noops) == len(recipe)


# --- base tools: installed when missing, on every platform -------------------------------------


@pytest.mark.parametrize(
    "key, tools",
    [
        ("debian-12", APT_TOOLS),
        ("debian-13", APT_TOOLS),
        ("ubuntu-22.04", APT_TOOLS),
        ("ubuntu-24.04", APT_TOOLS),
        ("ubuntu-26.04", APT_TOOLS),
        ("amzn-2023", DNF_TOOLS),
        ("rhel-9", DNF_TOOLS),
        ("rhel-10", DNF_TOOLS),
    ],
)
def test_every_platform_names_the_packages_of_the_tools_the_run_uses(key, tools):
    platform = next(p for p in PLATFORMS if p.key == key)
    assert " ".join(platform.tool_packages) == tools
    # The installed-packages fact asks about them too, so one round trip answers both operations.
    assert platform.packages[: len(platform.tool_packages)] == platform.tool_packages


def test_every_platform_row_is_covered_above():
    assert {p.key for p in PLATFORMS} == {
        "debian-12", "debian-13", "ubuntu-22.04", "ubuntu-24.04", "ubuntu-26.04", "amzn-2023", "rhel-9", "rhel-10",
    }  # fmt: skip


def test_a_minimal_debian_13_gets_the_missing_tools_before_anything_else():
    # Captured: a debootstrap --variant=minbase trixie has no curl, ca-certificates, procps
    # or iproute2 (recorded/README.md); openssl was not asked then (the recording has no line
    # for it): it is not in a minbase (priority optional; ca-certificates pulls it in).
    assert planned(postgres.tools, "debian13-x86_64", installed_packages="minbase") == [
        SAFE + APT_INSTALL + "curl ca-certificates openssl procps iproute2"
    ]


@pytest.mark.parametrize("name", ["debian12-x86_64", "debian12-aarch64", "debian13-x86_64", "ubuntu2604-aarch64",
                                  "rhel10-x86_64", "rocky10-aarch64", "almalinux10-x86_64", "amzn2023.9-aarch64"])  # fmt: skip
def test_an_image_with_every_tool_installs_none(name):
    host = recorded_host(name)
    assert run_operation(postgres.tools, plan_for(host), host) == []
    assert host.noops and host.noops[-1].endswith("already installed")


@pytest.mark.parametrize("name", ["rhel9-x86_64", "amzn2023-aarch64"])
def test_a_dnf_host_without_the_tools_gets_them_from_dnf(name):
    # These older recordings list no tool package as installed.
    assert planned(postgres.tools, name) == [SAFE + "dnf -y install " + DNF_TOOLS]


def test_the_tools_come_first_in_the_recipe():
    # The fetch downloads with curl and the PGDG key step uses curl: the tools go before both.
    tree = ast.parse((REPO / "pgvector_deploy" / "recipe.py").read_text())  # deploy/postgres.py runs its stages
    calls = [
        f"{node.func.value.id}.{node.func.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
    ]
    order = [call for call in calls if call in ("postgres.tools", "pgvector.fetch", "postgres.repository", "postgres.packages")]
    assert order == ["postgres.tools", "pgvector.fetch", "postgres.repository", "postgres.packages"]


FAKE_RPM_WITH_PROVIDES = """#!/bin/sh
# rpm -q --quiet --whatprovides NAME: an installed package provides NAME. $PROVIDES lines:
# "<package> <capability>..." (every package provides its own name).
[ "$1 $2 $3" = "-q --quiet --whatprovides" ] || { echo "unexpected: $*" >&2; exit 2; }
while read -r package capabilities; do
  for capability in $package $capabilities; do [ "$capability" = "$4" ] && exit 0; done
done < "$PROVIDES"
exit 1
"""


def test_dnf_counts_curl_minimal_and_coreutils_single_as_the_tools(tmp_path):
    # EL 9/10 and Amazon Linux 2023 images ship curl-minimal and coreutils-single, which
    # provide curl and coreutils and conflict with the full packages: asking for the names
    # would install the conflicting packages and fail.
    (tmp_path / "rpm").write_text(FAKE_RPM_WITH_PROVIDES)
    (tmp_path / "rpm").chmod(0o755)
    (tmp_path / "provides").write_text("curl-minimal curl\ncoreutils-single coreutils\ntar\ngcc\n")
    query = PACKAGE_MANAGERS["dnf"].query_installed.format(packages="curl coreutils tar procps-ng gcc make")
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "PROVIDES": str(tmp_path / "provides")}
    result = subprocess.run(["sh", "-c", query], capture_output=True, text=True, env=env, timeout=10)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == ["curl installed", "coreutils installed", "tar installed", "gcc installed"]


# --- RHEL's CodeReady Builder: RHUI first, subscription-manager only when registered ---------

FAKE_DNF = """#!/bin/sh
echo "dnf $*" >> "$LOG"
case "$*" in
  "-q repolist --all") cat "$REPOLIST" ;;
  "-q repolist --enabled") grep ' enabled$' "$REPOLIST" ;;
  "-y install dnf-plugins-core") ;;
  "config-manager --set-enabled "*) id=${*##* }; grep -q "^$id " "$REPOLIST" && sed -i "s/^\\($id .*\\) disabled$/\\1 enabled/" "$REPOLIST" ;;
  *) echo "fake dnf: unexpected $*" >&2; exit 2 ;;
esac
"""
FAKE_SUBSCRIPTION_MANAGER = """#!/bin/sh
echo "subscription-manager $*" >> "$LOG"
if [ "$REGISTERED" != yes ]; then
  echo "This system is not yet registered. Try 'subscription-manager register --help' for more information." >&2
  exit 1
fi
"""
# What `dnf repolist --all` lists on a RHEL host registered with subscription-manager.
REGISTERED_REPOLIST = """repo id                                       repo name                                                        status
codeready-builder-for-rhel-{major}-{arch}-rpms      Red Hat CodeReady Linux Builder for RHEL {major} {arch} (RPMs)            disabled
rhel-{major}-for-{arch}-appstream-rpms              Red Hat Enterprise Linux {major} for {arch} - AppStream (RPMs)            enabled
rhel-{major}-for-{arch}-baseos-rpms                 Red Hat Enterprise Linux {major} for {arch} - BaseOS (RPMs)               enabled
"""


def rhui_repolist(major: int, arch: str) -> str:
    """The recorded RHUI listing of a pay-as-you-go RHEL 9 (EL 10's: the same ids for 10)."""
    text = (RECORDED / f"rhel9-{arch}-rhui.dnf-repolist-all.txt").read_text()
    return text if major == 9 else text.replace("rhel-9", f"rhel-{major}").replace("RHEL 9", f"RHEL {major}")


def run_crb_step(tmp_path, name: str, repolist: str, registered: bool):
    """Run the CRB step the plan yields for recorded ``name`` against fake dnf and
    subscription-manager; returns (result, log lines, the step's check after it ran)."""
    [*_, crb] = planned(postgres.repository, name)
    assert crb.startswith(SAFE)
    for tool, text in (("dnf", FAKE_DNF), ("subscription-manager", FAKE_SUBSCRIPTION_MANAGER)):
        (tmp_path / tool).write_text(text)
        (tmp_path / tool).chmod(0o755)
    (tmp_path / "repolist").write_text(repolist)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "LOG": str(tmp_path / "log"), "REPOLIST": str(tmp_path / "repolist"),
           "REGISTERED": "yes" if registered else "no"}  # fmt: skip
    result = subprocess.run(["sh", "-c", crb[len(SAFE):]], capture_output=True, text=True, env=env, timeout=20)
    log = (tmp_path / "log").read_text().splitlines() if (tmp_path / "log").exists() else []
    host = recorded_host(name)
    [check] = [step.check for step in plan_for(host).platform.repository_steps("rhel", name.split("-")[1])][-1:]
    checked = subprocess.run(["sh", "-c", check], env=env, capture_output=True, timeout=20).returncode
    return result, log, checked


RHEL_HOSTS = [pytest.param(f"rhel{major}-{arch}", major, arch, id=f"rhel{major}-{arch}") for major in (9, 10) for arch in ARCHES]


@pytest.mark.parametrize("name, major, arch", RHEL_HOSTS)
def test_pay_as_you_go_rhel_enables_the_rhui_crb_with_config_manager(tmp_path, name, major, arch):
    result, log, checked = run_crb_step(tmp_path, name, rhui_repolist(major, arch), registered=False)
    assert (result.returncode, result.stderr) == (0, "")
    assert f"dnf config-manager --set-enabled codeready-builder-for-rhel-{major}-rhui-rpms" in log
    assert log.index("dnf -y install dnf-plugins-core") < log.index(
        f"dnf config-manager --set-enabled codeready-builder-for-rhel-{major}-rhui-rpms"
    )
    assert not [line for line in log if line.startswith("subscription-manager")]
    assert checked == 0  # the step's own check now passes: a second run does nothing


@pytest.mark.parametrize("name, major, arch", RHEL_HOSTS)
def test_registered_rhel_enables_crb_with_subscription_manager(tmp_path, name, major, arch):
    repolist = REGISTERED_REPOLIST.format(major=major, arch=arch)
    result, log, _ = run_crb_step(tmp_path, name, repolist, registered=True)
    assert (result.returncode, result.stderr) == (0, "")
    assert log[-1] == f"subscription-manager repos --enable codeready-builder-for-rhel-{major}-{arch}-rpms"
    assert not [line for line in log if "config-manager" in line]


@pytest.mark.parametrize("name, major, arch", RHEL_HOSTS)
def test_rhel_with_neither_rhui_nor_registration_fails_naming_both_fixes(tmp_path, name, major, arch):
    repolist = REGISTERED_REPOLIST.format(major=major, arch=arch).replace("codeready", "x-codeready")
    result, log, checked = run_crb_step(tmp_path, name, repolist, registered=False)
    assert result.returncode == 1
    assert "PostgreSQL was not installed" in result.stderr
    assert f"dnf config-manager --set-enabled codeready-builder-for-rhel-{major}-rhui-rpms" in result.stderr
    assert "subscription-manager register" in result.stderr
    assert f"subscription-manager repos --enable codeready-builder-for-rhel-{major}-{arch}-rpms" in result.stderr
    assert not [line for line in log if "config-manager" in line or " repos " in line]
    assert checked == 1


def test_rhui_crb_check_is_not_fooled_by_debug_or_source_repositories(tmp_path):
    # Only the binary RPM repository counts, enabled: its debug and source siblings do not.
    repolist = "\n".join(
        line.replace(" disabled", " enabled") if "rhui-debug-rpms" in line or "rhui-source-rpms" in line else line
        for line in rhui_repolist(9, "x86_64").splitlines()
    )
    (tmp_path / "dnf").write_text(FAKE_DNF)
    (tmp_path / "dnf").chmod(0o755)
    (tmp_path / "repolist").write_text(repolist + "\n")
    host = recorded_host("rhel9-x86_64")
    check = plan_for(host).platform.repository_steps("rhel", "x86_64")[-1].check
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "LOG": str(tmp_path / "log"), "REPOLIST": str(tmp_path / "repolist")}
    assert subprocess.run(["sh", "-c", check], env=env, timeout=20).returncode == 1


# --- pgvector already installed from a package: refused on every platform ------------------------

# One recorded host per platform row, and the recording whose pgvector package lines (the
# HostProfile's pgvector_package=/pgvector_owner= lines) that platform's hosts would print:
# Debian's are captured (apt), EL's come from a real rpm database, Amazon Linux's are
# reconstructed (recorded/README.md).
PACKAGED = {
    "debian12-x86_64": "debian12-x86_64",
    "debian13-aarch64": "debian12-x86_64",
    "ubuntu2204-x86_64": "debian12-x86_64",
    "ubuntu2404-aarch64": "debian12-x86_64",
    "ubuntu2604-x86_64": "debian12-x86_64",
    "amzn2023.9-x86_64": "amzn2023.9-x86_64",
    "rhel9-x86_64": "rhel9-x86_64",
    "rocky10-aarch64": "rhel9-x86_64",
}
# Per platform: the package named, and the fix, written out from platforms.md and PGDG's names.
PACKAGED_REFUSAL = {
    "debian-12": ("postgresql-15-pgvector", "/usr/lib/postgresql/15/lib/vector.so", "apt-get remove postgresql-15-pgvector"),
    "debian-13": ("postgresql-15-pgvector", "/usr/lib/postgresql/15/lib/vector.so", "apt-get remove postgresql-15-pgvector"),
    "ubuntu-22.04": ("postgresql-15-pgvector", "/usr/lib/postgresql/15/lib/vector.so", "apt-get remove postgresql-15-pgvector"),
    "ubuntu-24.04": ("postgresql-15-pgvector", "/usr/lib/postgresql/15/lib/vector.so", "apt-get remove postgresql-15-pgvector"),
    "ubuntu-26.04": ("postgresql-15-pgvector", "/usr/lib/postgresql/15/lib/vector.so", "apt-get remove postgresql-15-pgvector"),
    "amzn-2023": ("postgresql15-pgvector", "/usr/lib64/pgsql/vector.so", "dnf remove postgresql15-pgvector"),
    "rhel-9": ("pgvector_15", "/usr/pgsql-15/lib/vector.so", "dnf remove pgvector_15"),
    "rhel-10": ("pgvector_15", "/usr/pgsql-15/lib/vector.so", "dnf remove pgvector_15"),
}


def packaged_host(name: str) -> FactHost:
    """``name``'s fresh recordings, its host profile with the pgvector package lines of
    ``PACKAGED[name]``'s recording added."""
    host = recorded_host(name)
    lines = recorded_output(PACKAGED[name], "pgvector-package", "host-profile")
    host.outputs[HostProfile] = host.outputs[HostProfile] + [line for line in lines if line.startswith("pgvector_")]
    return host


def test_every_platform_row_has_a_packaged_pgvector_case():
    assert {plan_for(recorded_host(name)).platform.key for name in PACKAGED} == set(PACKAGED_REFUSAL) == {p.key for p in PLATFORMS}


@pytest.mark.parametrize("name", PACKAGED)
def test_pgvector_from_a_package_is_refused_naming_the_package_and_its_removal(name):
    key = plan_for(recorded_host(name)).platform.key
    package, library, removal = PACKAGED_REFUSAL[key]
    result = preflight.look(packaged_host(name))
    assert isinstance(result, preflight.Refusal), result
    assert result.message.startswith(
        f"pgvector for PostgreSQL 15 is installed from the package {package} ({library} belongs to {package}; "
    ), result.message
    assert f"Nothing was changed. Fix: remove the package ({removal}), then run again" in result.message


@pytest.mark.parametrize("name", PACKAGED)
def test_pgvector_from_a_package_is_refused_by_its_name_alone(name):
    # Before any pg_config is installed (no headers yet), only the package database's name.
    key = plan_for(recorded_host(name)).platform.key
    package, _, removal = PACKAGED_REFUSAL[key]
    host = packaged_host(name)
    host.outputs[HostProfile] = [line for line in host.outputs[HostProfile] if not line.startswith("pgvector_owner=")]
    result = preflight.look(host)
    assert isinstance(result, preflight.Refusal) and f"from the package {package}: building" in result.message
    assert f"({removal})" in result.message


@pytest.mark.parametrize("key", sorted(PACKAGED_REFUSAL))
def test_every_platform_names_its_pgvector_package(key):
    platform = next(p for p in PLATFORMS if p.key == key)
    assert PACKAGED_REFUSAL[key][0] in platform.pgvector_packages


@pytest.mark.parametrize("key", sorted(p.key for p in PLATFORMS))
def test_every_platform_installs_openssl_which_the_tls_steps_run_on_the_host(key):
    # The self-signed certificate is made, and every certificate checked, with openssl on the
    # host; minimal images lack it (a Debian minbase has no ca-certificates to pull it in).
    from pgvector_deploy.facts import TLS_USABLE_SH
    from pgvector_deploy.networking import self_signed_script

    assert "openssl req -x509" in self_signed_script("/c.crt", "/c.key", ["10.0.0.1"])
    assert "-- openssl x509" in TLS_USABLE_SH
    assert "openssl" in next(p for p in PLATFORMS if p.key == key).tool_packages


# --- pgBackRest per platform (backups.packages), from the recorded hosts ----------------------------

BACKUP_DATA = {"pg_backup_s3_bucket": "acme-db-backups", "pg_backup_cipher_pass": "a-long-enough-passphrase-0123"}


def planned_backup_packages(name: str, pgbackrest_installed: bool = False) -> tuple[list, FactHost]:
    from pgvector_deploy import backups
    from pgvector_deploy.backups import BackupState

    host = recorded_host(name, data=BACKUP_DATA)
    host.name = "db-1"  # the default prefix in the bucket
    host.outputs[BackupState] = ["archive_mode=off", *(["pgbackrest=yes"] if pgbackrest_installed else [])]
    return run_operation(backups.packages, plan_for(host), host), host


@pytest.mark.parametrize("name", ["rhel9-x86_64", "rocky9-x86_64", "almalinux9-aarch64", "almalinux10-x86_64"])
def test_the_rhel_family_installs_pgbackrest_from_pgdg(name):
    """PGDG's yum repository (set up for PostgreSQL on these hosts: pgdg-redhat-repo) has
    pgbackrest; dnf installs it by that name."""
    if not (RECORDED / f"{name}-fresh.host-profile.txt").exists():
        pytest.skip(f"no recording of {name}")
    (command,), _ = planned_backup_packages(name)
    assert "dnf -y install pgbackrest" in str(command) or "dnf install -y pgbackrest" in str(command), command
    assert any("pgdg-redhat-repo" in str(step.setup) for step in plan_for(recorded_host(name)).platform.repository)


@pytest.mark.parametrize("name", ["amzn2023-x86_64", "amzn2023.9-aarch64"])
def test_amazon_linux_2023_is_refused_for_backups_naming_why_unless_pgbackrest_is_there(name):
    (command,), _ = planned_backup_packages(name)
    assert "yum repository, which has it for RHEL" in str(command) and "does not support Amazon Linux 2023" in str(command)
    assert "Fix: unset pg_backup_s3_bucket" in str(command) and "dnf" not in str(command).split("Fix:")[0]
    commands, host = planned_backup_packages(name, pgbackrest_installed=True)  # installed by hand
    assert commands == [] and host.noops[-1] == "pgBackRest is installed"
