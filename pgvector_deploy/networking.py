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

import re
import shlex
from functools import lru_cache
from ipaddress import ip_address, ip_network
from pathlib import Path

import jinja2
from pyinfra import host
from pyinfra.api import operation

from .errors import Failure, Var, fail
from .facts import (
    INCLUDES_CONF_D,
    SETTINGS_ERRORS_SQL,
    SETTINGS_FILE_NAME,
    SYSCTL_FILE,
    TLS_USABLE_SH,
    Bridge,
    ServerConfig,
    TlsFiles,
    certificate_paths,
    hba_path,
    ident_path,
    main_conf,
    settings_path,
)
from .managed_files import (
    AUTO_CONF,
    HEREDOC_MARKER,
    apply_restart,
    keep_copy,
    locate,
    pg_string,
    reload_command,
    replace_file_script,
    restart_decision,
)
from .plan import Plan
from .platforms import Platform
from .shell import SAFE_PATH, as_postgres, fails_host_on_error, host_locked

TEMPLATES = Path(__file__).resolve().parent / "templates"  # in the wheel; a link to ../templates in a checkout
SYSCTL_TEXT = "# Managed by pgvector-deploy: lets PostgreSQL bind Docker bridge gateways before the bridges exist.\nnet.ipv4.ip_nonlocal_bind = 1\n"
USER_BEGIN = "# BEGIN USER RULES (kept across runs)"
USER_END = "# END USER RULES"
# The template's own comment lines inside the USER RULES section (not kept as user rules).
TEMPLATE_NOTES = ("# Your own rules", "# wins. TCP", "# Clients beyond this host")
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
    """The app role's rules: ``host`` for the bridges found on this host (their traffic never
    leaves it), ``hostssl`` for pg_docker_subnets that are no bridge here (they may be VPC
    ranges). No app role: no rules (other roles need USER RULES)."""
    if settings is None or settings.app is None:
        return []
    rules = {}
    for bridge in bridges:
        rules.setdefault(str(bridge.subnet), ("host", f"Docker bridge {bridge.name} (found on this host)"))
    for subnet in settings.docker_subnets:
        rules.setdefault(str(subnet), ("hostssl", "pg_docker_subnets, no bridge on this host: TLS only"))
    return [
        {"type": kind, "cidr": cidr, "comment": comment, "user": settings.app.user}
        for cidr, (kind, comment) in rules.items()
    ]


_HBA_PLAIN = re.compile(r"^[A-Za-z0-9_.:/-]+\Z")
HBA_KEYWORDS = ("all", "sameuser", "samerole", "samegroup", "replication", "samehost", "samenet")


def hba_token(value: object) -> str:
    """``value`` as one pg_hba.conf token meaning just itself: as is when plain, else in
    double quotes (a keyword such as ``all``, a ``+group`` or ``@file``, a comma, space or
    ``#``); a double quote or control character, which no token can hold, raises.

    >>> hba_token("app"), hba_token("all"), hba_token("172.17.0.0/16")
    ('app', '"all"', '172.17.0.0/16')
    """
    text = str(value)
    if _HBA_PLAIN.match(text) and text not in HBA_KEYWORDS:
        return text
    if not text or '"' in text or any(ord(char) < 32 or ord(char) == 127 for char in text):
        raise ValueError(f"{text!r} cannot be written as a pg_hba.conf token")
    return f'"{text}"'


@lru_cache(maxsize=None)
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), keep_trailing_newline=True, undefined=jinja2.StrictUndefined
    )
    environment.filters.update(pg_string=pg_string, hba_token=hba_token)
    return environment


def render_settings(platform: Platform, addresses: list[str], tls: tuple[str, str] | None = None) -> str:
    """The settings include file; ``tls``: (certificate, key) for ssl = on."""
    return _environment().get_template("postgresql.pgvector-deploy.conf.j2").render(
        filename=SETTINGS_FILE_NAME, sysctl_file=SYSCTL_FILE, listen_addresses=addresses, tls=tls
    )


def user_rules(current: str | None) -> str:
    """The USER RULES section of the current pg_hba.conf; for a file we do not manage yet, its
    rules (comments dropped) are carried over there, so nothing that worked stops working."""
    if not current:
        return ""
    lines = current.splitlines()
    if USER_BEGIN in lines and USER_END in lines:
        start, end = lines.index(USER_BEGIN), lines.index(USER_END)
        kept = [line for line in lines[start + 1 : end] if not line.startswith(TEMPLATE_NOTES)]
        return "\n".join(kept).strip("\n")
    ours = {tuple(line.split()) for line in render_hba([], None, "").splitlines()}
    carried = [
        line for line in lines
        if line.strip() and not line.lstrip().startswith("#") and tuple(line.split()) not in ours
    ]  # fmt: skip
    if not carried:
        return ""
    return "\n".join(["# Carried over from the pg_hba.conf found before pgvector-deploy managed it:", *carried])


def hba_fields(line: str) -> list[str]:
    """A pg_hba.conf line's fields as PostgreSQL reads them: double quotes group and are
    dropped (a quoted ``"trust"`` is trust), ``#`` outside them starts a comment.

    >>> hba_fields('host "my db" all 10.0.0.0/8 "trust" # "x"')
    ['host', 'my db', 'all', '10.0.0.0/8', 'trust']
    """
    fields: list[str] = []
    field, quoted, started = "", False, False
    for char in line:
        if char == '"':
            quoted, started = not quoted, True
        elif quoted or not (char.isspace() or char == "#"):
            field, started = field + char, True
        elif started:
            fields.append(field)
            field, started = "", False
        if char == "#" and not quoted:
            break
    return fields + [field] if started else fields


def host_record(line: str) -> tuple[str, str, str | None, str] | None:
    """(type, address, mask, method) of a TCP record (host, hostssl, hostnossl, ...); None
    for anything else. An IP address without /prefix takes its mask from the next field."""
    fields = hba_fields(line)
    if len(fields) < 5 or not fields[0].startswith("host"):
        return None
    address = fields[3]
    if "/" not in address and _is_ip(address):
        return (fields[0], address, fields[4], fields[5]) if len(fields) > 5 else None
    return fields[0], address, None, fields[4]


def _is_ip(text: str) -> bool:
    try:
        ip_address(text)
    except ValueError:
        return False
    return True


LOOPBACK_NETWORKS = (ip_network("127.0.0.0/8"), ip_network("::1/128"))


def on_this_host(address: str, mask: str | None, bridges: list[Bridge]) -> bool:
    """Whether every client a record's address matches is on this host: loopback,
    ``samehost``, or inside one of ``bridges`` (Docker bridges found here). ``all``,
    ``samenet``, host names and anything else may be beyond it."""
    if address == "samehost":
        return True
    try:
        network = ip_network(address if mask is None else f"{address}/{mask}", strict=False)
    except ValueError:
        return False
    inside = [*LOOPBACK_NETWORKS, *(bridge.subnet for bridge in bridges)]
    return any(network.version == other.version and network.subnet_of(other) for other in inside)


def trust_over_tcp(rules: str) -> list[str]:
    """User rules that would let TCP clients in without a password: ``trust``, quoted or not,
    and ``ident`` beyond loopback (there the client's own machine answers the ident query)."""
    bad = []
    for line in rules.splitlines():
        fields, record = hba_fields(line), host_record(line)
        if record is None:
            # a malformed TCP record: judge every field where a method could be
            flagged = bool(fields) and fields[0].startswith("host") and "trust" in fields[3:]
        else:
            _, address, mask, method = record
            flagged = method == "trust" or (method == "ident" and not on_this_host(address, mask, bridges=[]))
        if flagged:
            bad.append(line.strip())
    return bad


PLAINTEXT_TYPES = ("host", "hostnossl", "hostnogssenc")  # records a connection without TLS can match


def plaintext_beyond_host(rules: str, bridges: list[Bridge]) -> list[str]:
    """User rules that admit clients beyond this host (not loopback, not a Docker bridge found
    here) over a connection without TLS; ``reject`` rules keep people out and are fine."""
    bad = []
    for line in rules.splitlines():
        record = host_record(line)
        if record and record[0] in PLAINTEXT_TYPES and record[3] != "reject" and not on_this_host(record[1], record[2], bridges):
            bad.append(line.strip())
    return bad


def tls_wanted(settings, rules: str) -> bool:
    """ssl = on: host data opens PostgreSQL beyond the host (Settings.wants_tls), or a USER
    RULE is hostssl (PostgreSQL rejects a hostssl record while ssl is off). Host data and
    your rules decide, not the bridges of the moment, so ssl never flaps with Compose."""
    return settings.wants_tls or any(hba_fields(line)[:1] == ["hostssl"] for line in rules.splitlines())


def render_hba(bridges: list[Bridge], settings, rules: str) -> str:
    app = None if settings is None else settings.app
    return _environment().get_template("pg_hba.conf.j2").render(
        managed_note="rules for Docker bridges are generated from this host's interfaces and host data",
        user_begin=USER_BEGIN,
        user_end=USER_END,
        user_rules=rules,
        client_rules=client_rules(bridges, settings),
        app_peer=None if app is None else {"database": app.database, "user": app.user},
    )


# pg_ident.conf: our block (the map the app's peer line in pg_hba.conf names), everything else
# in the file kept as it is. The map lets the OS user postgres (the deploy's sessions, as
# shell.as_app) and an OS user named like the app (as `local all all peer` did) in as the app.
IDENT_MAP = "pgvector_deploy"
IDENT_BEGIN = "# BEGIN pgvector-deploy (rewritten by every run: the app role's peer map for the deploy's own sessions)"
IDENT_END = "# END pgvector-deploy"


def render_ident(current: str | None, settings) -> str | None:
    """The pg_ident.conf we want: ``current`` without our block (nor other lines of our map),
    then our block for the app role; None when there is nothing to write (no app role, and no
    file or none of ours in it)."""
    lines = [] if current is None else current.splitlines()
    kept, ours = [], False
    for line in lines:
        if line == IDENT_BEGIN:
            ours = True
        elif line == IDENT_END:
            ours = False
        elif not ours and (line.split() or [""])[0] != IDENT_MAP:
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    app = None if settings is None else settings.app
    if app is None:
        if current is None or len(kept) == len(lines):
            return None
        return "\n".join(kept) + "\n"
    block = [IDENT_BEGIN, f"{IDENT_MAP}  postgres  \"{app.user}\"", f"{IDENT_MAP}  {app.user}  \"{app.user}\"", IDENT_END]
    return "\n".join([*kept, *([""] if kept else []), *block]) + "\n"


IDENT_CHECK_SQL = (
    "SELECT 'line ' || line_number || ': ' || error FROM pg_catalog.pg_ident_file_mappings WHERE error IS NOT NULL"
)


def _shown(line: str) -> str:
    """``line`` with each byte that was not UTF-8 (kept by surrogateescape) shown as ``\\xNN``."""
    return line.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="backslashreplace")


# -- applying it -------------------------------------------------------------------------------


LISTEN_RESTART_FIX = "check the server log (an address in pg_listen_addresses this host does not have?), then run again."


def self_signed_script(cert: str, key: str, addresses: list[str], required: tuple[str, ...] = ()) -> str:
    """Shell: make sure a self-signed certificate and key that PostgreSQL can use, naming
    every ``required`` address (pg_listen_addresses), are at ``cert`` and ``key`` (key 0600
    postgres), made here with openssl for ``addresses``. A pair that is usable and names them
    is kept; another is moved aside (``.bak-<time>``) and replaced. The key is created
    private (umask 077) and renamed into place before the certificate."""
    names = ["DNS:localhost" if address == "localhost" else f"IP:{address}" for address in addresses]
    no_openssl = fail(
        "openssl is not installed on this host, so no self-signed certificate can be made for connections from beyond "
        "it. Nothing was changed. Fix: install openssl, or set pg_ssl_cert_file and pg_ssl_key_file to your certificate."
    )
    failed = fail(
        f"openssl could not make a self-signed certificate at {cert}: ", Var("error"),
        ". Nothing was changed. Fix: repair openssl, or set pg_ssl_cert_file and pg_ssl_key_file to your certificate.",
    )  # fmt: skip
    unusable = fail(f"the self-signed certificate {cert} and key {key} are still not usable by postgres. Fix: check the directory's owner and mode.")
    return f"""set -eu
PATH={SAFE_PATH}
{TLS_USABLE_SH}
cert={shlex.quote(cert)}
key={shlex.quote(key)}
[ ! -f "$key" ] || {{ chown postgres:postgres "$key"; chmod 0600 "$key"; }}
if ! tls_usable "$cert" "$key" || ! cert_names_cover "$cert" {" ".join(shlex.quote(address) for address in required)}; then
  command -v openssl >/dev/null || {no_openssl}
  trap 'rm -f "$key.pgvector-new" "$cert.pgvector-new"' EXIT
  umask 077
  if ! error=$(openssl req -x509 -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -sha256 -days 3650 \\
      -subj "/CN=$(uname -n)" -addext {shlex.quote("subjectAltName=" + ",".join([*names, "DNS:"]))}"$(uname -n)" \\
      -keyout "$key.pgvector-new" -out "$cert.pgvector-new" </dev/null 2>&1); then
    error=$(printf '%s' "$error" | tr '\\n' ';')
    {failed}
  fi
  chown postgres:postgres "$key.pgvector-new" "$cert.pgvector-new"
  chmod 0600 "$key.pgvector-new"
  chmod 0644 "$cert.pgvector-new"
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  for file in "$key" "$cert"; do [ ! -e "$file" ] || mv -f "$file" "$file.bak-$stamp"; done
  mv -f "$key.pgvector-new" "$key"
  mv -f "$cert.pgvector-new" "$cert"
  trap - EXIT
fi
tls_usable "$cert" "$key" || {unusable}
"""


def tls_check_script(cert: str, key: str, path: str) -> str:
    """Shell, run right before ``path`` is written with ssl = on: fail, changing nothing,
    unless postgres can use ``cert`` and ``key`` (PostgreSQL would not start otherwise)."""
    refused = fail(
        f"not writing {path} with ssl = on: PostgreSQL could not use {cert} and {key} (missing, not readable by "
        "postgres, not a matching pair, or a key with group or world access), and would not start with them. "
        "Nothing was changed. Fix: correct pg_ssl_cert_file and pg_ssl_key_file or those files (key owned by "
        "postgres and mode 0600, or by root and 0640), or unset both for a self-signed certificate."
    )
    return f"""PATH={SAFE_PATH}
{TLS_USABLE_SH}
tls_usable {shlex.quote(cert)} {shlex.quote(key)} || {refused}
"""


def ssl_on_wait(plan: Plan) -> str:
    """Shell appended to the reload: wait (up to 5 s) until new sessions see ssl = on, so the
    pg_hba.conf check that follows judges hostssl records with ssl on (a reload is async)."""
    show = as_postgres(plan.platform, plan.port, "postgres", "SHOW ssl")
    return f"; for i in $(seq 50); do [ \"$({show})\" = on ] && break; sleep 0.1; done"


def user_rules_on_host(plan: Plan, state: dict) -> str:
    """The USER RULES of the pg_hba.conf on the host (ServerConfig's bytes). Bytes that are not
    UTF-8 (a Latin-1 edit) stay as they are (surrogateescape), so that they can be named."""
    current = state["files"].get(hba_path(plan.platform))
    return user_rules(None if current is None else current.decode("utf-8", errors="surrogateescape"))


def wanted_certificate(plan: Plan, state: dict) -> tuple[str, str] | None:
    """(certificate, key) when the server must have ssl = on (``tls_wanted``), else None."""
    if not tls_wanted(plan.settings, user_rules_on_host(plan, state)):
        return None
    return certificate_paths(plan.platform, plan.settings.tls.cert_file, plan.settings.tls.key_file)


@operation()
@host_locked
@fails_host_on_error
def server_certificate(plan: Plan):
    """When connections may come from beyond the host (``tls_wanted``): a certificate
    PostgreSQL can use. The one host data names is checked and never changed; otherwise a
    self-signed one is made on the host (openssl; key 0600 postgres), once, and kept.

    .. code:: python

        networking.server_certificate(plan)
    """
    state = plan.fact(ServerConfig, platform=plan.platform, port=plan.port)
    paths = wanted_certificate(plan, state)
    if paths is None:
        host.noop("no TLS needed: PostgreSQL is reachable only from this host and its Docker bridges")
        return
    cert, key = paths
    files = plan.fact(TlsFiles, cert=cert, key=key, addresses=plan.settings.listen_addresses)
    if plan.settings.tls.cert_file:
        if files["usable"]:
            host.noop(f"{cert} (pg_ssl_cert_file) is usable by PostgreSQL")
            return
        yield fail(
            f"pg_ssl_cert_file {cert} and pg_ssl_key_file {key} cannot be used by PostgreSQL: missing, not readable by "
            "postgres, not a matching pair, or the key has group or world access"
            + ("" if files["openssl"] else " (or openssl, which checks them, is not installed)")
            + ". Nothing was changed. Fix: make the key owned by postgres with mode 0600 (or by root with 0640) and "
            "both readable by postgres, or unset both keys for a self-signed certificate."
        )
        return
    if files["usable"] and files["covers"] and (files["key_mode"], files["key_owner"]) == ("600", "postgres:postgres"):
        host.noop(f"{cert} (self-signed, made on this host) is kept")
        return
    # made anew only when missing, unusable, or not naming a pg_listen_addresses address
    yield self_signed_script(cert, key, listen_addresses(state["bridges"], plan.settings), plan.settings.listen_addresses)


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
        # Not server.sysctl: it asks `sysctl -a` and the persist file as facts of its own (round
        # trips in every no-op run); ServerConfig already holds both.
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
    tls = wanted_certificate(plan, state)
    wanted = render_settings(plan.platform, addresses, tls)
    pending = state["running_listen"] != ",".join(addresses)
    restart_decision(plan, ["listen_addresses"] if pending else [])
    if state["files"].get(path) != wanted.encode():
        # ssl = on only with a certificate PostgreSQL can use: it would not start otherwise.
        check = tls_check_script(*tls, path) if tls else ""
        # Not files.template: it cannot have PostgreSQL check the file before it replaces it, nor
        # keep a copy to put back (managed_files.replace_file_script does both).
        write = replace_file_script(path, wanted, "0644", SETTINGS_ERRORS_SQL, plan.platform, plan.port, "server settings")
        restart = apply_restart(plan, f"sourcefile = '{path}'", LISTEN_RESTART_FIX)
        yield f"{check}{write}{reload_command(plan)}{ssl_on_wait(plan) if tls else ''}\n{restart}"
    elif pending:
        # Written by an earlier run that did not restart (pg_restart = report, or killed); the
        # host says again whether it is still pending (the server may have started since).
        restart = apply_restart(plan, f"sourcefile = '{path}'", LISTEN_RESTART_FIX)
        yield f"set -eu\nPATH={SAFE_PATH}\n{locate(path)}\n{restart}"


def ident_script(plan: Plan, state: dict) -> str | None:
    """Shell writing pg_ident.conf (``render_ident``) through ``managed_files`` (a copy kept,
    PostgreSQL checks it, put back on an error); None when it is already so; a ``Failure``
    when the file cannot be carried over (not UTF-8, or holding our heredoc marker)."""
    path = ident_path(plan.platform)
    raw = state["files"].get(path)
    try:
        current = None if raw is None else raw.decode("utf-8")
    except UnicodeDecodeError:
        return fail(
            f"refusing {path}: it is not UTF-8 text, and the deploy adds its map to it (for its sessions as the app "
            "role). Nothing was changed. Fix: convert it to UTF-8 on the host (iconv -f latin1 -t utf-8), then run again."
        )
    wanted = render_ident(current, plan.settings)
    if wanted is None or wanted.encode() == raw:
        return None
    if HEREDOC_MARKER in wanted:
        return fail(f"refusing {path}: a line holds {HEREDOC_MARKER}, which cannot be written safely. Fix: remove it.")
    return replace_file_script(path, wanted, "0640", IDENT_CHECK_SQL, plan.platform, plan.port, "pg_ident.conf")


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
    rules = user_rules_on_host(plan, state)
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
    plaintext = plaintext_beyond_host(rules, state["bridges"])
    if plaintext:
        yield fail(
            f"refusing {path}: these USER RULES lines admit clients beyond this host (not loopback, not a Docker "
            f"bridge found on it) without TLS: {'; '.join(plaintext)}. Nothing was changed. Fix: write them as "
            "hostssl instead of host (the server then gets ssl = on), or as reject."
        )
        return
    ident = ident_script(plan, state)
    if isinstance(ident, Failure):
        yield ident
        return
    if ident:
        yield ident  # before pg_hba.conf: the map its app line names is there when that loads
    wanted = render_hba(state["bridges"], plan.settings, rules)
    if current == wanted.encode():
        if state["hba_errors"]:
            yield fail(
                f"{path} on disk has errors PostgreSQL would reject: {'; '.join(state['hba_errors'])} "
                "(line|error). The running server keeps its previous rules; nothing was reloaded. "
                "Fix: correct that line in the USER RULES section."
            )
        elif ident:
            yield reload_command(plan)
        return
    # Not files.template, for the reason listen gives: PostgreSQL checks the file before it is used.
    check_sql = "SELECT 'line ' || line_number || ': ' || error FROM pg_catalog.pg_hba_file_rules WHERE error IS NOT NULL"
    yield replace_file_script(path, wanted, "0640", check_sql, plan.platform, plan.port, "pg_hba.conf")
    yield reload_command(plan)
