"""Who can reach PostgreSQL: listen_addresses and pg_hba.conf, for apps in Docker containers.

Apps in containers reach the host at the docker0 gateway (172.17.0.1): Docker's
``host-gateway`` is that address, and a container on any bridge (Compose networks on
br-<id> bridges too) reaches it through its own bridge. So PostgreSQL listens on localhost,
the docker0 gateway (on a host without docker0, the first Compose bridge's) and
``pg_listen_addresses``: listeners that do not change when ``docker compose up/down`` adds
or removes a bridge, so no restart. Only pg_hba.conf follows the bridges: their subnets (plus
``pg_docker_subnets``) get in with scram-sha-256, applied by a reload. Nothing else gets in
over TCP.

Boot order: at boot, docker0 may come up after PostgreSQL, which then only warns and skips
that address. We set ``net.ipv4.ip_nonlocal_bind = 1`` (persisted in /etc/sysctl.d) so the
bind succeeds before the address exists and starts receiving once docker0 appears, whatever
order units start in, and without a dependency on Docker's unit names.

Safety: files change through ``managed_files`` (a copy kept, PostgreSQL checks the new file,
the copy put back on an error). A restart happens only when listen_addresses changed, only
if ``pg_restart`` allows it (else: "restart pending: listen_addresses"), and with a
roll-back. A listen_addresses set with ALTER SYSTEM fails the operation, naming the fix.

Example::

    networking.listen(plan, name="PostgreSQL listens on localhost and the Docker bridges")
    networking.client_access(plan, name="pg_hba.conf lets the Docker bridges in")
"""

from __future__ import annotations

import shlex
from pathlib import Path

import jinja2
from pyinfra import host
from pyinfra.api import operation

from .facts import (
    INCLUDES_CONF_D,
    SETTINGS_ERRORS_SQL,
    SETTINGS_FILE_NAME,
    SYSCTL_FILE,
    Bridge,
    ServerConfig,
    hba_path,
    main_conf,
    settings_path,
)
from .managed_files import (
    HEREDOC_MARKER,
    apply_restart,
    keep_copy,
    locate,
    reload_command,
    replace_file_script,
    restart_decision,
)
from .platforms import Platform
from .preflight import Plan
from .shell import SAFE_PATH, fail, fails_host_on_error, host_locked

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
SYSCTL_TEXT = "# Managed by pgvector-deploy: lets PostgreSQL bind Docker bridge gateways before the bridges exist.\nnet.ipv4.ip_nonlocal_bind = 1\n"
USER_BEGIN = "# BEGIN USER RULES (kept across runs)"
USER_END = "# END USER RULES"
# -- what we want ------------------------------------------------------------------------------


def app_address(bridges: list[Bridge]) -> str | None:
    """The address a containerised app uses for the host: docker0's gateway, else the first
    Compose bridge's."""
    for bridge in sorted(bridges, key=lambda bridge: bridge.name != "docker0"):
        return bridge.gateway
    return None


def listen_addresses(bridges: list[Bridge], settings) -> list[str]:
    """localhost, the app address (docker0's gateway, which containers on every bridge reach),
    then pg_listen_addresses; no duplicates. Compose bridges and pg_docker_subnets add pg_hba
    rules, not listeners: they come and go without a restart."""
    wanted = ["localhost"]
    address = app_address(bridges)
    if address:
        wanted.append(address)
    wanted += list(settings.listen_addresses)
    return list(dict.fromkeys(wanted))


def client_rules(bridges: list[Bridge], settings) -> list[dict]:
    rules = {}
    for bridge in bridges:
        rules.setdefault(str(bridge.subnet), f"Docker bridge {bridge.name} (found on this host)")
    for subnet in settings.docker_subnets if settings else ():
        rules.setdefault(str(subnet), "pg_docker_subnets")
    return [{"cidr": cidr, "comment": comment} for cidr, comment in rules.items()]


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), keep_trailing_newline=True, undefined=jinja2.StrictUndefined
    )


def render_settings(platform: Platform, addresses: list[str]) -> str:
    return _environment().get_template("postgresql.pgvector-deploy.conf.j2").render(
        filename=SETTINGS_FILE_NAME, sysctl_file=SYSCTL_FILE, listen_addresses=addresses
    )


def user_rules(current: str | None) -> str:
    """The USER RULES section of the current pg_hba.conf; for a file we do not manage yet, its
    rules (comments dropped) are carried over there, so nothing that worked stops working."""
    if not current:
        return ""
    lines = current.splitlines()
    if USER_BEGIN in lines and USER_END in lines:
        start, end = lines.index(USER_BEGIN), lines.index(USER_END)
        kept = [line for line in lines[start + 1 : end] if not line.startswith("# Your own rules") and not line.startswith("# wins. TCP")]
        return "\n".join(kept).strip("\n")
    ours = {tuple(line.split()) for line in render_hba([], None, "").splitlines()}
    carried = [
        line for line in lines
        if line.strip() and not line.lstrip().startswith("#") and tuple(line.split()) not in ours
    ]  # fmt: skip
    if not carried:
        return ""
    return "\n".join(["# Carried over from the pg_hba.conf found before pgvector-deploy managed it:", *carried])


def trust_over_tcp(rules: str) -> list[str]:
    """User rules that would let TCP clients in without a password."""
    bad = []
    for line in rules.splitlines():
        fields = line.split("#", 1)[0].split()
        if fields and fields[0].startswith("host") and "trust" in fields[3:]:
            bad.append(line.strip())
    return bad


def render_hba(bridges: list[Bridge], settings, rules: str) -> str:
    return _environment().get_template("pg_hba.conf.j2").render(
        managed_note="rules for Docker bridges are generated from this host's interfaces and host data",
        user_begin=USER_BEGIN,
        user_end=USER_END,
        user_rules=rules,
        client_rules=client_rules(bridges, settings),
    )


def _shown(line: str) -> str:
    """``line`` with each byte that was not UTF-8 (kept by surrogateescape) shown as ``\\xNN``."""
    return line.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="backslashreplace")


# -- applying it -------------------------------------------------------------------------------


AUTO_CONF = "postgresql.auto.conf"
LISTEN_RESTART_FIX = "check the server log (an address in pg_listen_addresses this host does not have?), then run again."


@operation()
@host_locked
@fails_host_on_error
def listen(plan: Plan):
    """Write the settings include file (listen_addresses, scram-sha-256) and, on hosts with
    systemd, the nonlocal-bind sysctl; restart only if listen_addresses changed and
    ``pg_restart`` allows it (else report it pending).

    .. code:: python

        networking.listen(plan)
    """
    state = plan.fact(ServerConfig, platform=plan.platform, port=plan.port)
    addresses = listen_addresses(state["bridges"], plan.settings)
    path = settings_path(plan.platform)
    if state["listen_source"].endswith(f"/{AUTO_CONF}"):
        # ALTER SYSTEM wins over every conf.d file: restarting would change nothing, every run.
        yield fail(
            f"listen_addresses is set with ALTER SYSTEM ({state['listen_source']}, running: "
            f"'{state['running_listen']}'), which wins over {path}: the toolkit cannot choose where PostgreSQL "
            "listens. Nothing was changed. Fix: run ALTER SYSTEM RESET listen_addresses as postgres (the next run "
            "restarts PostgreSQL once if pg_restart allows), or put the addresses in pg_listen_addresses."
        )
        return
    # Boot order matters only where an init system starts things at boot; containers
    # without systemd often cannot write /proc/sys anyway.
    if plan.profile["systemd"] and (not state["nonlocal_bind"] or state["files"].get(SYSCTL_FILE) != SYSCTL_TEXT.encode()):
        yield f"PATH={SAFE_PATH}; printf '%s' {shlex.quote(SYSCTL_TEXT)} > {SYSCTL_FILE} && sysctl -q -w net.ipv4.ip_nonlocal_bind=1"
    if not state["includes_conf_d"]:
        # initdb's postgresql.conf (Amazon Linux, RHEL family) does not read conf.d/ yet.
        conf = main_conf(plan.platform)
        yield (
            f"set -eu\nPATH={SAFE_PATH}\n{locate(conf)}\n"
            # Only if still missing: another run may have added it while this one waited.
            f"if ! grep -Eqs {shlex.quote(INCLUDES_CONF_D)} \"$file\"; then\n{keep_copy()}\n"
            f"printf '%s\\n' \"include_dir = 'conf.d'  # added by pgvector-deploy\" >> \"$file\"\nfi"
        )
    wanted = render_settings(plan.platform, addresses)
    pending = state["running_listen"] != ",".join(addresses)
    restart_decision(plan, ["listen_addresses"] if pending else [])
    if state["files"].get(path) != wanted.encode():
        write = replace_file_script(path, wanted, "0644", SETTINGS_ERRORS_SQL, plan.platform, plan.port, "server settings")
        restart = apply_restart(plan, f"sourcefile = '{path}'", LISTEN_RESTART_FIX)
        yield f"{write}{reload_command(plan)}\n{restart}"
    elif pending:
        # Written by an earlier run that did not restart (pg_restart = report, or killed); the
        # host says again whether it is still pending (the server may have started since).
        restart = apply_restart(plan, f"sourcefile = '{path}'", LISTEN_RESTART_FIX)
        yield f"set -eu\nPATH={SAFE_PATH}\n{locate(path)}\n{restart}"


@operation()
@host_locked
@fails_host_on_error
def client_access(plan: Plan):
    """Render pg_hba.conf (keeping the USER RULES section), check it, then reload.

    .. code:: python

        networking.client_access(plan)
    """
    state = plan.fact(ServerConfig, platform=plan.platform, port=plan.port)
    path = hba_path(plan.platform)
    current = state["files"].get(path)
    # Bytes that are not UTF-8 (a Latin-1 edit) stay as they are, so that they can be named.
    rules = user_rules(None if current is None else current.decode("utf-8", errors="surrogateescape"))
    not_utf8 = [_shown(line) for line in rules.splitlines() if _shown(line) != line]
    if not_utf8:
        yield fail(
            f"refusing {path}: these USER RULES lines are not UTF-8 text, and are kept only as UTF-8: "
            f"{'; '.join(not_utf8)}. Nothing was changed. Fix: convert them to UTF-8 on the host "
            "(iconv -f latin1 -t utf-8), or remove those characters, then run again."
        )
        return
    unsafe = trust_over_tcp(rules) + [line for line in rules.splitlines() if HEREDOC_MARKER in line]
    if unsafe:
        yield fail(
            f"refusing {path}: these USER RULES lines would let anyone in without a password, or cannot be "
            f"written safely: {'; '.join(unsafe)}. Nothing was changed. Fix: use scram-sha-256 in the USER RULES section."
        )
        return
    wanted = render_hba(state["bridges"], plan.settings, rules)
    if current == wanted.encode():
        if state["hba_errors"]:
            yield fail(
                f"{path} on disk has errors PostgreSQL would reject: {'; '.join(state['hba_errors'])} "
                "(line|error). The running server keeps its previous rules; nothing was reloaded. "
                "Fix: correct that line in the USER RULES section."
            )
        return
    check_sql = "SELECT 'line ' || line_number || ': ' || error FROM pg_catalog.pg_hba_file_rules WHERE error IS NOT NULL"
    yield replace_file_script(path, wanted, "0640", check_sql, plan.platform, plan.port, "pg_hba.conf")
    yield reload_command(plan)
