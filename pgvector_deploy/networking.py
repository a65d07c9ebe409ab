"""Who can reach PostgreSQL: listen_addresses and pg_hba.conf, for apps in Docker containers.

Apps in containers reach the host at their bridge's gateway (docker0 172.17.0.1, Compose
networks on br-<id> bridges). So PostgreSQL listens on localhost plus those gateways (plus
``pg_listen_addresses``), and pg_hba.conf lets the bridges' subnets (plus
``pg_docker_subnets``) in with scram-sha-256. Nothing else gets in over TCP.

Boot order: at boot, docker0 may come up after PostgreSQL, which then only warns and skips
that address. We set ``net.ipv4.ip_nonlocal_bind = 1`` (persisted in /etc/sysctl.d) so the
bind succeeds before the address exists and starts receiving once docker0 appears, whatever
order units start in, and without a dependency on Docker's unit names.

Safety: a new file is checked by PostgreSQL itself before it is used (``pg_file_settings``,
``pg_hba_file_rules`` read the files on disk without loading them). On an error the previous
file is put back, the running server is never touched, and the run fails naming the line.
A reload applies pg_hba changes; a restart happens only when listen_addresses changed.

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
from .platforms import Platform
from .preflight import Plan
from .shell import SAFE_PATH, Var, as_postgres, fail, fails_host_on_error, host_locked

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
SYSCTL_TEXT = "# Managed by pgvector-deploy: lets PostgreSQL bind Docker bridge gateways before the bridges exist.\nnet.ipv4.ip_nonlocal_bind = 1\n"
HEREDOC_MARKER = "PGVECTOR_DEPLOY_EOF"
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
    """localhost, every bridge gateway, the first address of each extra Docker subnet (where
    Docker puts the gateway), then pg_listen_addresses; no duplicates, stable order."""
    wanted = ["localhost"]
    wanted += [bridge.gateway for bridge in bridges]
    wanted += [str(next(subnet.hosts())) for subnet in settings.docker_subnets]
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


def replace_file_script(path: str, content: str, mode: str, check_sql: str, platform: Platform, port: int, what: str) -> str:
    """Shell: keep a copy, write the new file, let PostgreSQL check it; on an error put the
    previous file back and fail naming the error (the running server is not touched)."""
    quoted = shlex.quote(path)
    marker = HEREDOC_MARKER
    assert marker not in content  # client_access refuses user rules that contain it
    check = as_postgres(platform, port, "postgres", check_sql)
    rejected = fail(
        f"PostgreSQL rejected the new {what} ({path}): ", Var("errors"),
        ". The previous file was put back and the running server was not touched. "
        "Fix: correct that line (in pg_hba.conf, only the USER RULES section is yours).",
    )  # fmt: skip
    unchecked = fail(
        f"PostgreSQL could not check the new {what} ({path}); the previous file was put back. "
        "Fix: make sure the server is running, then run again."
    )
    return f"""set -eu
PATH={SAFE_PATH}
file={quoted}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
# Create conf.d if missing, but never touch an existing directory's mode: on Amazon Linux and
# the RHEL family the configuration lives in the data directory, which must stay 0700.
[ -d "$(dirname "$file")" ] || install -d -o postgres -g postgres -m 0755 "$(dirname "$file")"
cat > "$file.pgvector-new" <<'{marker}'
{content}{marker}
if cmp -s "$file.pgvector-new" "$file"; then rm -f "$file.pgvector-new"; exit 0; fi  # already so (another run wrote it)
if [ -f "$file" ]; then cp -p "$file" "$file.bak-$stamp"; fi
chown postgres:postgres "$file.pgvector-new"
chmod {mode} "$file.pgvector-new"
mv -f "$file.pgvector-new" "$file"
restore() {{ if [ -f "$file.bak-$stamp" ]; then mv -f "$file.bak-$stamp" "$file"; else rm -f "$file"; fi; }}
if ! errors=$({check}); then
  restore
  {unchecked}
fi
errors=$(printf '%s' "$errors" | tr '\\n' ';')
if [ -n "$errors" ]; then
  restore
  {rejected}
fi
"""


def restart_command(plan: Plan) -> str:
    platform = plan.platform
    if plan.profile["systemd"]:
        return f"systemctl restart {platform.service}"
    return f"PATH={SAFE_PATH}; {platform.restart_without_systemd}"


def reload_command(plan: Plan) -> str:
    return f"PATH={SAFE_PATH}; {as_postgres(plan.platform, plan.port, 'postgres', 'SELECT pg_catalog.pg_reload_conf()')} >/dev/null"


@operation()
@host_locked
@fails_host_on_error
def listen(plan: Plan):
    """Write the settings include file (listen_addresses, scram-sha-256) and, on hosts with
    systemd, the nonlocal-bind sysctl; restart only if listen_addresses changed.

    .. code:: python

        networking.listen(plan)
    """
    state = plan.fact(ServerConfig, platform=plan.platform, port=plan.port)
    addresses = listen_addresses(state["bridges"], plan.settings)
    # Boot order matters only where an init system starts things at boot; containers
    # without systemd often cannot write /proc/sys anyway.
    if plan.profile["systemd"] and (not state["nonlocal_bind"] or state["files"].get(SYSCTL_FILE) != SYSCTL_TEXT.encode()):
        yield f"PATH={SAFE_PATH}; printf '%s' {shlex.quote(SYSCTL_TEXT)} > {SYSCTL_FILE} && sysctl -q -w net.ipv4.ip_nonlocal_bind=1"
    if not state["includes_conf_d"]:
        # initdb's postgresql.conf (Amazon Linux, RHEL family) does not read conf.d/ yet.
        conf = shlex.quote(main_conf(plan.platform))
        yield (
            f"grep -Eqs {shlex.quote(INCLUDES_CONF_D)} {conf} || {{ "
            f"cp -p {conf} {conf}.bak-$(date -u +%Y%m%dT%H%M%SZ) && "
            f"printf '%s\\n' \"include_dir = 'conf.d'  # added by pgvector-deploy\" >> {conf}; }}"
        )
    path = settings_path(plan.platform)
    wanted = render_settings(plan.platform, addresses)
    if state["files"].get(path) != wanted.encode():
        yield replace_file_script(path, wanted, "0644", SETTINGS_ERRORS_SQL, plan.platform, plan.port, "server settings")
        yield reload_command(plan)
    if state["running_listen"] != ",".join(addresses):
        yield restart_unless_listening(plan, addresses)


def restart_unless_listening(plan: Plan, addresses: list[str]) -> str:
    """Shell: restart, unless the running server already listens on ``addresses`` (asked now,
    under the lock: another run may have restarted it while this one waited)."""
    running = as_postgres(plan.platform, plan.port, "postgres", "SELECT pg_catalog.current_setting('listen_addresses')")
    wanted = shlex.quote(",".join(addresses))
    return f'PATH={SAFE_PATH}; [ "$({running} 2>/dev/null)" = {wanted} ] || {{ {restart_command(plan)}; }}'


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
