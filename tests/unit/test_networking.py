"""Who reaches PostgreSQL: listen_addresses and pg_hba.conf (pgvector_deploy.networking), and
the facts they read (Bridge, parse_bridges, ServerConfig).

Recorded files used here (``recorded/``):

* ``debian12-x86_64-stock.server-config.txt``: ``ServerConfig``'s real command, run by hand on
  a Debian 12 machine with the stock postgresql-15 15.20-0+deb12u1 cluster 15/main running
  (no Docker there; ``pgvt0`` is an unrelated test interface).
* ``debian12-x86_64-stock.pg_hba.conf``: that machine's /etc/postgresql/15/main/pg_hba.conf,
  as pg_createcluster (postgresql-common 248+deb12u1) wrote it.
* ``debian12-x86_64-docker.server-config.txt``: reconstructed, not captured: a Debian 12 host
  with docker0 and one Compose bridge after a deploy (nonlocal bind on, PostgreSQL listening
  on localhost and the docker0 gateway). The managed files' ``file=`` lines are added by the tests (base64 of what
  should be on disk), as the host would report them.

Expected values are written out from the templates' contract and PostgreSQL's rules, not
taken from the functions under test.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import shlex
import shutil
import subprocess
from ipaddress import IPv4Interface, IPv4Network

import pytest

from pgvector_deploy import networking
from pgvector_deploy.facts import SYSCTL_FILE, Bridge, ServerConfig, parse_bridges, parse_host_profile, parse_server_config
from pgvector_deploy.networking import (
    USER_BEGIN,
    USER_END,
    app_address,
    client_rules,
    listen_addresses,
    render_hba,
    render_settings,
    trust_over_tcp,
    user_rules,
)
from pgvector_deploy.managed_files import BACKUP_DIR
from pgvector_deploy.platforms import PLATFORMS
from pgvector_deploy.plan import Plan
from pgvector_deploy.loading import load_settings
from pgvector_deploy.shell import SAFE_PATH, SUPERUSER_OPTIONS, dbname_conninfo

from .conftest import RECORDED, FactHost, recorded_lines, run_operation, sh_syntax_error, with_changes

HBA = "/etc/postgresql/15/main/pg_hba.conf"
IDENT = "/etc/postgresql/15/main/pg_ident.conf"
SETTINGS_FILE = "/etc/postgresql/15/main/conf.d/90-pgvector-deploy.conf"
MAIN_CONF = "/etc/postgresql/15/main/postgresql.conf"
PSQL = f"PGOPTIONS={shlex.quote(SUPERUSER_OPTIONS)} runuser -u postgres -- /usr/lib/postgresql/15/bin/psql -X -A -t -q -v ON_ERROR_STOP=1 -h /var/run/postgresql -p 5432"
RELOAD = f"PATH={SAFE_PATH}; {PSQL} -d {shlex.quote(dbname_conninfo('postgres'))} -c 'SELECT pg_catalog.pg_reload_conf()' >/dev/null"
MARKER = "PGVECTOR_DEPLOY_EOF"

IP_ADDR_LINES = [
    r"1: lo    inet 127.0.0.1/8 scope host lo\       valid_lft forever preferred_lft forever",
    r"2: eth0    inet 10.0.1.10/24 metric 100 brd 10.0.1.255 scope global dynamic eth0\       valid_lft 3205sec preferred_lft 3205sec",
    r"3: docker0    inet 172.17.0.1/16 brd 172.17.255.255 scope global docker0\       valid_lft forever preferred_lft forever",
    r"4: br-3f2a1b4c5d6e    inet 172.18.0.1/16 brd 172.18.255.255 scope global br-3f2a1b4c5d6e\       valid_lft forever preferred_lft forever",
    # a container's veth has no IPv4 (shown here as `ip -o addr` would show its inet6)
    r"7: veth1c2d3e4@if6    inet6 fe80::a8b4:5ff:fe6e:1a2b/64 scope link \       valid_lft forever preferred_lft forever",
    r"9: lab-other    inet 10.200.0.1/24 brd 10.200.0.255 scope global lab-other\       valid_lft forever preferred_lft forever",
    r"10: br-lan    inet 192.168.50.1/24 brd 192.168.50.255 scope global br-lan\       valid_lft forever preferred_lft forever",
]
BR = Bridge("br-3f2a1b4c5d6e", IPv4Interface("172.18.0.1/16"))
DOCKER0 = Bridge("docker0", IPv4Interface("172.17.0.1/16"))
NEW_BR = r"address=11: br-9d8c7b6a5f4e    inet 172.19.0.1/16 brd 172.19.255.255 scope global br-9d8c7b6a5f4e\       valid_lft forever preferred_lft forever"

STOCK_CARRIED = (
    "# Carried over from the pg_hba.conf found before pgvector-deploy managed it:\n"
    "host    replication     all             127.0.0.1/32            scram-sha-256\n"
    "host    replication     all             ::1/128                 scram-sha-256"
)
SYSCTL_CMD_END = f"> {SYSCTL_FILE} && sysctl -q -w net.ipv4.ip_nonlocal_bind=1"


def rules_of(text: str) -> list[list[str]]:
    """pg_hba.conf records as PostgreSQL reads them: comments and blank lines dropped."""
    return [line.split("#", 1)[0].split() for line in text.splitlines() if line.split("#", 1)[0].strip()]


def file_line(path: str, text: str) -> str:
    return f"file={path}|{base64.b64encode(text.encode()).decode()}"


def heredoc_body(script: str) -> str:
    """The file content a replace_file_script writes."""
    return script.split(f"<<'{MARKER}'\n", 1)[1].split(f"{MARKER}\n", 1)[0]


# --- facts: Bridge, parse_bridges, ServerConfig ---------------------------------------------------


def test_parse_bridges_keeps_docker0_and_compose_bridges_only():
    assert parse_bridges(IP_ADDR_LINES) == [BR, DOCKER0]  # sorted by name
    assert (BR.gateway, BR.subnet) == ("172.18.0.1", IPv4Network("172.18.0.0/16"))
    assert (DOCKER0.gateway, DOCKER0.subnet) == ("172.17.0.1", IPv4Network("172.17.0.0/16"))


def test_parse_bridges_of_a_host_without_docker_is_empty():
    assert parse_bridges(IP_ADDR_LINES[:2] + IP_ADDR_LINES[4:]) == []
    assert parse_bridges([]) == []


def test_host_profile_reports_the_bridges():
    lines = recorded_lines("provisioned", "host-profile") + [f"address={line}" for line in IP_ADDR_LINES]
    assert parse_host_profile(lines)["bridges"] == [BR, DOCKER0]


def test_parse_server_config_reads_files_as_bytes_and_every_key():
    hba = "local all postgres peer\n# ünïcode comment\n"
    lines = [
        file_line(HBA, hba),
        file_line(SYSCTL_FILE, networking.SYSCTL_TEXT),
        "running_listen=localhost,172.17.0.1",
        "max_connections=250",
        "running_shared_buffers_mb=6144",
        f"listen_source={SETTINGS_FILE}",
        f"pending_restart={SETTINGS_FILE}|listen_addresses",
        'hba_error=14|invalid authentication method "scram-sha265"',
        'hba_error=15|invalid IP mask "172.20.0.0/33": Name or service not known',
        f"settings_error={SETTINGS_FILE}:9 listen_addresses: invalid value",
        "includes_conf_d=yes",
        "nonlocal_bind=1",
        *(f"address={line}" for line in IP_ADDR_LINES),
    ]
    assert parse_server_config(lines) == {
        "files": {HBA: hba.encode(), SYSCTL_FILE: networking.SYSCTL_TEXT.encode()},
        "running_listen": "localhost,172.17.0.1",
        "max_connections": 250,
        "running_shared_buffers_mb": 6144,
        "listen_source": SETTINGS_FILE,
        "pending_restart": [f"{SETTINGS_FILE}|listen_addresses"],
        "hba_errors": ['14|invalid authentication method "scram-sha265"', '15|invalid IP mask "172.20.0.0/33": Name or service not known'],
        "settings_errors": [f"{SETTINGS_FILE}:9 listen_addresses: invalid value"],
        "nonlocal_bind": True,
        "includes_conf_d": True,
        "bridges": [BR, DOCKER0],
    }


def test_parse_server_config_of_a_stopped_server_without_our_files():
    state = parse_server_config(["running_listen=", "nonlocal_bind=0"])
    assert state == {
        "files": {},
        "running_listen": "",
        "max_connections": 100,  # PostgreSQL's default, when the server cannot say
        "running_shared_buffers_mb": None,
        "listen_source": "",
        "pending_restart": [],
        "hba_errors": [],
        "settings_errors": [],
        "nonlocal_bind": False,
        "includes_conf_d": False,
        "bridges": [],
    }


def test_parse_server_config_of_an_empty_file():
    assert parse_server_config([f"file={HBA}|", "nonlocal_bind="])["files"] == {HBA: b""}


def test_stock_debian_capture_is_parsed():
    state = parse_server_config(recorded_lines("stock", "server-config"))
    assert state["files"] == {HBA: (RECORDED / "debian12-x86_64-stock.pg_hba.conf").read_bytes()}
    assert state["running_listen"] == "localhost"
    assert (state["nonlocal_bind"], state["includes_conf_d"]) == (False, True)
    assert (state["hba_errors"], state["settings_errors"]) == ([], [])
    assert state["bridges"] == []  # lo, eth0 and pgvt0 are no Docker bridges


def test_server_config_command_is_valid_sh_and_reads_the_managed_files(debian12):
    command = ServerConfig().command(platform=debian12, port=5432)
    assert sh_syntax_error(command) == ""
    for path in (HBA, SETTINGS_FILE, SYSCTL_FILE):
        assert path in command
    assert "-p 5432" in command and MAIN_CONF in command


def test_server_config_command_finds_include_dir(tmp_path, debian12):
    """The fact's real command, on a postgresql.conf without, then with include_dir (the
    line listen appends); psql and ip fail or find nothing harmlessly here."""
    platform = dataclasses.replace(debian12, config_dir=str(tmp_path), bindir=str(tmp_path / "nobin"))
    conf = tmp_path / "postgresql.conf"
    conf.write_text("#include_dir = '...'\t\t\t# include files ending in '.conf' from\nport = 5432\n")
    command = ServerConfig().command(platform=platform, port=5432)

    def includes() -> bool:
        out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30).stdout
        return parse_server_config(out.splitlines())["includes_conf_d"]

    assert includes() is False
    with conf.open("a") as handle:
        handle.write("include_dir = 'conf.d'  # added by pgvector-deploy\n")
    assert includes() is True


# --- what we want: addresses and rules ------------------------------------------------------------


def test_listen_addresses_are_localhost_the_docker0_gateway_then_extra_without_duplicates():
    """Compose bridges and pg_docker_subnets add pg_hba rules, not listeners: containers on
    every bridge reach the host at docker0's gateway (Docker's host-gateway)."""
    settings = load_settings(
        {
            "pg_docker_subnets": ["172.20.0.0/16", "172.18.0.0/16", "10.10.0.0/24"],
            "pg_listen_addresses": ["10.0.1.10", "172.17.0.1"],
        }
    )
    assert listen_addresses([BR, DOCKER0], settings) == ["localhost", "172.17.0.1", "10.0.1.10"]


def test_listen_addresses_do_not_follow_compose_bridges():
    other = Bridge("br-0a0b0c0d0e0f", IPv4Interface("172.21.0.1/16"))
    settings = load_settings({})
    assert listen_addresses([DOCKER0], settings) == listen_addresses([BR, DOCKER0, other], settings) == ["localhost", "172.17.0.1"]
    # no docker0: the first Compose bridge's gateway, as app_address picks; no bridge: localhost
    assert listen_addresses([BR, other], settings) == ["localhost", "172.18.0.1"]


def test_listen_addresses_without_bridges_or_data_is_localhost_only():
    assert listen_addresses([], load_settings({})) == ["localhost"]


def test_app_address_prefers_docker0():
    assert app_address([BR, DOCKER0]) == "172.17.0.1"
    assert app_address([DOCKER0, BR]) == "172.17.0.1"
    other = Bridge("br-0a0b0c0d0e0f", IPv4Interface("172.21.0.1/16"))
    assert app_address([BR, other]) == "172.18.0.1"  # no docker0: the first Compose bridge
    assert app_address([]) is None


def test_client_rules_admit_the_app_from_bridges_and_with_tls_only_from_other_subnets():
    settings = load_settings({**APP_DATA, "pg_docker_subnets": "172.20.0.0/16, 172.18.0.0/16,10.10.0.0/24"})
    no_bridge = "pg_docker_subnets, no bridge on this host: TLS only"
    assert client_rules([BR, DOCKER0], settings) == [
        {"type": "host", "cidr": "172.18.0.0/16", "comment": "Docker bridge br-3f2a1b4c5d6e (found on this host)", "user": "app"},
        {"type": "host", "cidr": "172.17.0.0/16", "comment": "Docker bridge docker0 (found on this host)", "user": "app"},
        {"type": "hostssl", "cidr": "172.20.0.0/16", "comment": no_bridge, "user": "app"},
        {"type": "hostssl", "cidr": "10.10.0.0/24", "comment": no_bridge, "user": "app"},
    ]
    assert client_rules([], None) == []


def test_without_an_app_role_there_are_no_bridge_rules():
    assert client_rules([BR, DOCKER0], load_settings({"pg_docker_subnets": ["172.20.0.0/16"]})) == []


APP_DATA = {"pg_app_user": "app", "pg_app_password": "not-used-here"}
MANAGED_HEAD = [["local", "all", "postgres", "peer"], ["local", "all", "all", "peer"]]
# with an app role: its peer line (the deploy's own sessions as the app, the pgvector_deploy map)
APP_HEAD = [MANAGED_HEAD[0], ["local", '"app"', '"app"', "peer", "map=pgvector_deploy"], MANAGED_HEAD[1]]
LOOPBACK = [["host", "all", "all", "127.0.0.1/32", "scram-sha-256"], ["host", "all", "all", "::1/128", "scram-sha-256"]]
REPLICATION = [["local", "replication", "all", "peer"]]


def test_render_hba_rules_in_order_one_per_bridge_and_subnet():
    settings = load_settings({**APP_DATA, "pg_docker_subnets": ["172.20.0.0/16", "172.18.0.0/16", "10.10.0.0/24"]})
    text = render_hba([BR, DOCKER0], settings, "")
    assert rules_of(text) == APP_HEAD + LOOPBACK + [
        ["host", "all", "app", "172.18.0.0/16", "scram-sha-256"],
        ["host", "all", "app", "172.17.0.0/16", "scram-sha-256"],
        ["hostssl", "all", "app", "172.20.0.0/16", "scram-sha-256"],
        ["hostssl", "all", "app", "10.10.0.0/24", "scram-sha-256"],
    ] + REPLICATION
    for cidr in ("172.18.0.0/16", "172.17.0.0/16", "172.20.0.0/16", "10.10.0.0/24"):
        assert text.count(f"app             {cidr} ") == 1
    assert text.endswith("peer\n")  # a heredoc needs the final newline


def test_render_hba_has_no_trust_outside_comments():
    text = render_hba([BR, DOCKER0], load_settings({"pg_docker_subnets": ["172.20.0.0/16"]}), "")
    assert not [rule for rule in rules_of(text) if "trust" in rule]
    assert all(rule[-1] in ("peer", "scram-sha-256") for rule in rules_of(text))


def test_render_hba_user_rules_between_markers_before_the_managed_tcp_rules():
    mine = "host    mydb    myuser    10.1.0.0/16    scram-sha-256\nhostssl all all 0.0.0.0/0 reject"
    text = render_hba([DOCKER0], load_settings({}), mine)
    lines = text.splitlines()
    assert lines.count(USER_BEGIN) == 1 and lines.count(USER_END) == 1
    begin, end = lines.index(USER_BEGIN), lines.index(USER_END)
    assert lines.index("host    mydb    myuser    10.1.0.0/16    scram-sha-256") in range(begin, end)
    assert lines.index("hostssl all all 0.0.0.0/0 reject") in range(begin, end)
    assert rules_of(text) == MANAGED_HEAD + [
        ["host", "mydb", "myuser", "10.1.0.0/16", "scram-sha-256"],
        ["hostssl", "all", "all", "0.0.0.0/0", "reject"],
    ] + LOOPBACK + REPLICATION  # no app role: no bridge rules


def test_render_settings_lists_the_addresses_and_scram(debian12):
    text = render_settings(debian12, ["localhost", "172.18.0.1", "172.17.0.1"])
    settings = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert settings == ["listen_addresses = 'localhost,172.18.0.1,172.17.0.1'", "password_encryption = 'scram-sha-256'"]
    assert SYSCTL_FILE in text
    assert text.endswith("\n")


@pytest.mark.parametrize(
    "rules",
    [
        "",
        "host    mydb    myuser    10.1.0.0/16    scram-sha-256",
        "# office VPN\nhost all all 10.8.0.0/16 scram-sha-256\n\nhostssl all all 0.0.0.0/0 reject\nlocal sameuser all md5",
        STOCK_CARRIED,
    ],
    ids=["empty", "one", "several-with-comment", "carried-over"],
)
def test_user_rules_round_trip(rules):
    settings = load_settings({"pg_docker_subnets": ["172.20.0.0/16"]})
    rendered = render_hba([BR, DOCKER0], settings, rules)
    assert user_rules(rendered) == rules
    assert render_hba([BR, DOCKER0], settings, user_rules(rendered)) == rendered  # a second run converges


def test_user_rules_carried_over_from_stock_debian_pg_hba():
    stock = (RECORDED / "debian12-x86_64-stock.pg_hba.conf").read_text()
    assert user_rules(stock) == STOCK_CARRIED  # only the two rules we do not write ourselves


@pytest.mark.parametrize("current", [None, "", "# only comments\n\n#host all all 0.0.0.0/0 trust\n"])
def test_user_rules_of_nothing_is_empty(current):
    assert user_rules(current) == ""


def test_user_rules_of_an_unmanaged_file_with_only_our_rules_is_empty():
    ours = "local all postgres peer\nlocal   all   all   peer\nhost all all 127.0.0.1/32 scram-sha-256\n"
    assert user_rules(ours) == ""


@pytest.mark.parametrize(
    "rules, flagged",
    [
        ("host all all 10.0.0.0/8 trust", ["host all all 10.0.0.0/8 trust"]),
        ("hostssl all all 0.0.0.0/0 trust", ["hostssl all all 0.0.0.0/0 trust"]),
        ("  hostnossl  db  u  10.0.0.0  255.0.0.0  trust  # temporary", ["hostnossl  db  u  10.0.0.0  255.0.0.0  trust  # temporary"]),
        ("local all all trust", []),
        ("# host all all 10.0.0.0/8 trust", []),
        ("host all all 10.0.0.0/8 scram-sha-256 # not trust", []),
        ("host trust trust 10.0.0.0/8 scram-sha-256", []),  # a database and user named trust
        ("local all all trust\nhost all all 10.0.0.0/8 scram-sha-256\nhost all all 10.9.0.0/16 trust",
         ["host all all 10.9.0.0/16 trust"]),
    ],
)  # fmt: skip
def test_trust_over_tcp(rules, flagged):
    assert trust_over_tcp(rules) == flagged


# --- the operations, on recorded states -----------------------------------------------------------

DOCKER_ADDRESSES = ["localhost", "172.17.0.1"]  # the recorded running_listen
DEBIAN12 = next(platform for platform in PLATFORMS if platform.key == "debian-12")


@pytest.fixture
def plan(debian12, provisioned_profile):
    return Plan(load_settings({}), debian12, provisioned_profile)


@pytest.fixture
def app_plan(debian12, provisioned_profile):
    return Plan(load_settings(APP_DATA), debian12, provisioned_profile)


@pytest.fixture
def no_systemd_plan(debian12, provisioned_profile):
    return Plan(load_settings({}), debian12, with_changes(provisioned_profile, systemd=False, pid1="sleep"))


def docker_state(mine: str = "", hba: str | None = None, drop: tuple[str, ...] = (), extra: tuple[str, ...] = (), data: dict | None = None) -> list[str]:
    """The recorded Docker host with the files a converged deploy leaves there (user rules
    ``mine``, or the pg_hba.conf ``hba``; host data ``data``); recorded lines starting with
    ``drop`` left out."""
    if hba is None:
        hba = render_hba([BR, DOCKER0], load_settings(data or {}), mine)
    ident = networking.render_ident(None, load_settings(data or {}))
    recorded = [line for line in recorded_lines("docker", "server-config") if not (drop and line.startswith(drop))]
    return [
        file_line(HBA, hba),
        *([file_line(IDENT, ident)] if ident else []),
        file_line(SETTINGS_FILE, render_settings(DEBIAN12, DOCKER_ADDRESSES)),
        file_line(SYSCTL_FILE, networking.SYSCTL_TEXT),
        *recorded,
        *extra,
    ]


def run_both(plan, lines) -> tuple[list, list, FactHost]:
    host = FactHost({ServerConfig: lines})
    return run_operation(networking.listen, plan, host), run_operation(networking.client_access, plan, host), host


def test_converged_docker_host_yields_nothing(plan):
    listen, access, host = run_both(plan, docker_state())
    assert (listen, access) == ([], [])
    # one round trip: client_access reuses what listen asked (Plan.fact; nothing was yielded)
    assert [kwargs for _, kwargs, _ in host.asked] == [{"platform": plan.platform, "port": 5432}]


def test_converged_docker_host_keeps_user_rules_and_yields_nothing(plan):
    assert run_both(plan, docker_state(mine="host mydb myuser 172.18.0.0/16 scram-sha-256"))[:2] == ([], [])


def test_sysctl_text_sets_nonlocal_bind_as_the_fact_reads_it(plan, tmp_path):
    assert "net.ipv4.ip_nonlocal_bind = 1" in networking.SYSCTL_TEXT.splitlines()
    [command] = run_operation(networking.listen, plan, FactHost({ServerConfig: docker_state(drop=("nonlocal_bind",), extra=("nonlocal_bind=0",))}))
    assert command.startswith(f"PATH={SAFE_PATH}; printf '%s' ") and command.endswith(SYSCTL_CMD_END)
    written = tmp_path / "60-pgvector-deploy.conf"
    subprocess.run(["sh", "-c", command.split(" && ")[0].replace(SYSCTL_FILE, str(written))], check=True, timeout=10)
    assert written.read_text() == networking.SYSCTL_TEXT  # the next run compares equal


def test_a_changed_sysctl_file_is_rewritten(plan):
    lines = [line for line in docker_state() if not line.startswith(f"file={SYSCTL_FILE}|")]
    lines.append(file_line(SYSCTL_FILE, "net.ipv4.ip_nonlocal_bind = 0\n"))
    [command] = run_operation(networking.listen, plan, FactHost({ServerConfig: lines}))
    assert command.endswith(SYSCTL_CMD_END)


def test_without_systemd_no_sysctl(no_systemd_plan):
    lines = [line for line in docker_state(drop=("nonlocal_bind",)) if not line.startswith(f"file={SYSCTL_FILE}|")]
    assert run_operation(networking.listen, no_systemd_plan, FactHost({ServerConfig: lines + ["nonlocal_bind=0"]})) == []


def new_bridge_state(data: dict | None = None) -> list[str]:
    return docker_state(mine="host mydb myuser 172.18.0.0/16 scram-sha-256", extra=(NEW_BR,), data=data)


def test_new_bridge_changes_only_pg_hba_and_never_restarts(app_plan):
    """docker compose up: a new br-<id> bridge gets its pg_hba rule for the app (a reload); the
    listeners stay as they are (its containers reach the docker0 gateway), so no restart."""
    listen, access, _ = run_both(app_plan, new_bridge_state(APP_DATA))
    assert listen == []
    assert [command for command in access if "restart" in command] == [] and len(access) == 2


def test_a_bridge_going_away_changes_only_pg_hba(app_plan):
    lines = [line for line in docker_state(data=APP_DATA) if "br-3f2a1b4c5d6e" not in line]
    listen, access, _ = run_both(app_plan, lines)
    assert listen == [] and len(access) == 2


def docker0_arrives_state(**changes) -> list[str]:
    """A host that had only a Compose bridge (listening on its gateway), now with docker0."""
    return docker_state(drop=("running_listen", f"file={SETTINGS_FILE}|"), extra=(
        "running_listen=localhost,172.18.0.1", file_line(SETTINGS_FILE, render_settings(DEBIAN12, ["localhost", "172.18.0.1"])),
    ))  # fmt: skip


def test_docker0_arriving_rewrites_settings_reloads_and_restarts_with_a_roll_back(plan):
    [script] = run_operation(networking.listen, plan, FactHost({ServerConfig: docker0_arrives_state()}))
    assert script.startswith("set -eu\n") and f"file={SETTINGS_FILE}\n" in script
    assert "listen_addresses = 'localhost,172.17.0.1'" in heredoc_body(script).splitlines()
    assert "pg_file_settings" in script and "chmod 0644 " in script and RELOAD in script
    # the restart waits on PostgreSQL's own word that our file's listen_addresses is pending
    unquoted = script.replace("'\"'\"'", "'")
    assert f"error = 'setting could not be applied' AND sourcefile = '{SETTINGS_FILE}'" in unquoted
    restart = script.index("systemctl restart postgresql@15-main")
    assert script.index(RELOAD) < restart < script.index('cp -p "$backup" "$file.pgvector-new"', restart)  # roll-back
    assert "restart pending" not in script and sh_syntax_error(script) == ""


def test_docker0_arriving_with_pg_restart_report_writes_reloads_and_only_reports(debian12, provisioned_profile, caplog):
    plan = Plan(load_settings({"pg_restart": "report"}), debian12, provisioned_profile)
    [script] = run_operation(networking.listen, plan, FactHost({ServerConfig: docker0_arrives_state()}))
    assert "listen_addresses = 'localhost,172.17.0.1'" in heredoc_body(script).splitlines() and RELOAD in script
    assert "systemctl restart" not in script and 'echo "restart pending: $pending' in script
    assert sh_syntax_error(script) == ""
    assert "[test-host] restart pending: listen_addresses" in caplog.text


def test_docker0_arriving_without_systemd_restarts_with_pg_ctlcluster(no_systemd_plan):
    listen = run_operation(networking.listen, no_systemd_plan, FactHost({ServerConfig: docker0_arrives_state()}))
    assert len(listen) == 1 and f"PATH={SAFE_PATH}; pg_ctlcluster 15 main restart" in listen[0]
    assert not [command for command in listen if "sysctl" in command.split("<<")[0]]


def test_new_bridge_rewrites_pg_hba_keeping_user_rules(app_plan):
    access = run_operation(networking.client_access, app_plan, FactHost({ServerConfig: new_bridge_state(APP_DATA)}))
    assert len(access) == 2
    script, reload = access
    assert f"file={HBA}\n" in script and "pg_hba_file_rules" in script and "chmod 0640 " in script
    assert sh_syntax_error(script) == ""
    assert rules_of(heredoc_body(script)) == APP_HEAD + [["host", "mydb", "myuser", "172.18.0.0/16", "scram-sha-256"]] + LOOPBACK + [
        ["host", "all", "app", "172.18.0.0/16", "scram-sha-256"],
        ["host", "all", "app", "172.19.0.0/16", "scram-sha-256"],
        ["host", "all", "app", "172.17.0.0/16", "scram-sha-256"],
    ] + REPLICATION
    assert reload == RELOAD


def test_a_listen_change_alone_restarts_without_rewriting(plan):
    lines = docker_state(drop=("running_listen",), extra=("running_listen=localhost",))
    [command] = run_operation(networking.listen, plan, FactHost({ServerConfig: lines}))
    assert "<<" not in command and "systemctl restart postgresql@15-main" in command
    assert f"AND sourcefile = '{SETTINGS_FILE}'" in command.replace("'\"'\"'", "'")  # if still pending
    assert f"file={SETTINGS_FILE}\n" in command and sh_syntax_error(command) == ""  # what a failed restart sets aside


def test_a_listen_change_alone_with_pg_restart_report_is_reported_every_run(debian12, provisioned_profile, caplog):
    plan = Plan(load_settings({"pg_restart": "report"}), debian12, provisioned_profile)
    lines = docker_state(drop=("running_listen",), extra=("running_listen=localhost",))
    [command] = run_operation(networking.listen, plan, FactHost({ServerConfig: lines}))
    # the host says again whether it is still pending; if so, the command prints it
    assert f"AND sourcefile = '{SETTINGS_FILE}'" in command.replace("'\"'\"'", "'")
    assert 'echo "restart pending: $pending' in command and "systemctl" not in command
    assert sh_syntax_error(command) == ""
    assert "[test-host] restart pending: listen_addresses" in caplog.text


def test_listen_addresses_set_with_alter_system_fails_naming_the_fix_and_changes_nothing(plan):
    auto_conf = "/var/lib/postgresql/15/main/postgresql.auto.conf"
    lines = docker_state(drop=("running_listen", "nonlocal_bind"), extra=("running_listen=*", f"listen_source={auto_conf}", "nonlocal_bind=0"))
    listen, access, _ = run_both(plan, lines)
    [command] = listen  # not even the sysctl: nothing changes
    result = run_fail(command)
    assert result.returncode == 1
    assert "ALTER SYSTEM RESET listen_addresses" in result.stderr and auto_conf in result.stderr
    assert "Nothing was changed" in result.stderr and "running: '*'" in result.stderr
    assert access == []  # pg_hba is still ours to keep


def test_listen_addresses_from_our_file_is_fine(plan):
    assert run_operation(networking.listen, plan, FactHost({ServerConfig: docker_state(extra=(f"listen_source={SETTINGS_FILE}",))})) == []


def test_the_listen_restart_is_skipped_when_the_server_already_listens_there(tmp_path, plan):
    """Another run restarted it while this one waited for the lock: asked again, on the host
    (pg_file_settings: is our file's listen_addresses still pending?)."""
    lines = docker_state(drop=("running_listen",), extra=("running_listen=localhost",))
    [command] = run_operation(networking.listen, plan, FactHost({ServerConfig: lines}))
    fake_runuser = tmp_path / "runuser"
    fake_runuser.write_text('#!/bin/sh\ncat "$FAKE_PSQL_OUTPUT"\n')
    fake_runuser.chmod(0o755)
    faked = command.replace("runuser -u postgres --", str(fake_runuser)).replace("systemctl restart", "echo restarted")
    for pending, restarted in (("", False), ("listen_addresses", True)):
        (tmp_path / "psql-output").write_text(pending + "\n" if pending else "")
        env = dict(os.environ, FAKE_PSQL_OUTPUT=str(tmp_path / "psql-output"))
        result = subprocess.run(["sh", "-c", faked], capture_output=True, text=True, env=env, timeout=30)
        assert result.returncode == 0, result.stderr
        assert ("restarted" in result.stdout) == restarted, pending


def run_fail(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=10)


def test_trust_user_rule_is_refused_and_nothing_else(plan):
    access = run_operation(networking.client_access, plan, FactHost({ServerConfig: docker_state(mine="host all all 10.0.0.0/8 trust", extra=(NEW_BR,))}))
    assert len(access) == 1
    result = run_fail(access[0])
    assert result.returncode == 1
    assert f"refusing {HBA}" in result.stderr and "host all all 10.0.0.0/8 trust" in result.stderr
    assert "Nothing was changed" in result.stderr and "Fix:" in result.stderr


def test_trust_carried_from_an_unmanaged_file_is_refused(plan):
    stock = (RECORDED / "debian12-x86_64-stock.pg_hba.conf").read_text() + "hostssl all all 0.0.0.0/0 trust\n"
    access = run_operation(networking.client_access, plan, FactHost({ServerConfig: docker_state(hba=stock)}))
    assert len(access) == 1
    assert "hostssl all all 0.0.0.0/0 trust" in run_fail(access[0]).stderr


def test_errors_in_the_converged_file_fail_naming_the_line(plan):
    bad = "host    all    all    172.17.0.0/16    scram-sha265"
    hba = render_hba([BR, DOCKER0], load_settings({}), bad)
    line_number = hba.splitlines().index(bad) + 1
    lines = docker_state(hba=hba, extra=(f'hba_error={line_number}|invalid authentication method "scram-sha265"',))
    access = run_operation(networking.client_access, plan, FactHost({ServerConfig: lines}))
    assert len(access) == 1
    result = run_fail(access[0])
    assert result.returncode == 1
    assert f'{line_number}|invalid authentication method "scram-sha265"' in result.stderr
    assert HBA in result.stderr and "nothing was reloaded" in result.stderr and "Fix:" in result.stderr


def test_missing_include_dir_is_appended_after_a_backup(plan, debian12, tmp_path):
    [command] = run_operation(networking.listen, plan, FactHost({ServerConfig: docker_state(drop=("includes_conf_d",))}))
    assert f"file={MAIN_CONF}\n" in command and f"copies={BACKUP_DIR}/etc/postgresql/15/main\n" in command
    assert command.index('cp -p "$file" "$backup"') < command.index('>> "$file"')
    # run it on a copy: the backup holds the old file, the conf gains exactly the include line
    conf = tmp_path / "postgresql.conf"
    conf.write_text("data_directory = '/var/lib/pgsql/data'\n")
    local = command.replace(MAIN_CONF, str(conf)).replace(f"{BACKUP_DIR}/etc/postgresql/15/main", str(tmp_path / "copies"))
    local = local.replace(BACKUP_DIR, str(tmp_path))
    assert run_fail(local).returncode == 0, run_fail(local).stderr
    assert conf.read_text() == "data_directory = '/var/lib/pgsql/data'\ninclude_dir = 'conf.d'  # added by pgvector-deploy\n"
    [backup] = [path for path in (tmp_path / "copies").iterdir() if path.name.startswith("postgresql.conf.bak-")]
    assert backup.read_text() == "data_directory = '/var/lib/pgsql/data'\n"
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith("postgresql.conf")] == ["postgresql.conf"]


def test_stock_debian_host_gets_its_files_and_keeps_the_replication_rules(plan):
    """The real capture: no Docker, stock pg_hba.conf, PostgreSQL on localhost only."""
    listen, access, _ = run_both(plan, recorded_lines("stock", "server-config"))
    sysctl, settings_script = listen  # restart only if pending: localhost was already all it listened on
    assert sysctl.endswith(SYSCTL_CMD_END)
    assert "listen_addresses = 'localhost'" in heredoc_body(settings_script).splitlines()
    assert RELOAD in settings_script
    hba_script, reload = access
    body = heredoc_body(hba_script)
    assert user_rules(body) == STOCK_CARRIED
    assert rules_of(body) == MANAGED_HEAD + [
        ["host", "replication", "all", "127.0.0.1/32", "scram-sha-256"],
        ["host", "replication", "all", "::1/128", "scram-sha-256"],
    ] + LOOPBACK + REPLICATION
    assert reload == RELOAD
    for script in (sysctl, settings_script, hba_script):
        assert sh_syntax_error(script) == ""


def test_sysctl_printf_argument_is_exactly_the_text(plan):
    [command] = run_operation(networking.listen, plan, FactHost({ServerConfig: docker_state(drop=("nonlocal_bind",))}))
    argument = shlex.split(command.split("; ", 1)[1].split(" > ")[0])[2]
    assert argument == networking.SYSCTL_TEXT


# --- a hand-edited file in another encoding (bytes that are not UTF-8) ----------------------------


def raw_file_line(path: str, raw: bytes) -> str:
    return f"file={path}|{base64.b64encode(raw).decode()}"


def test_a_latin1_byte_outside_the_user_rules_is_a_difference_replaced_with_a_copy_kept(plan):
    converged = render_hba([BR, DOCKER0], load_settings({}), "host mydb myuser 127.0.0.1/32 scram-sha-256").encode()
    edited = converged + b"# edited by Ren\xe9\n"  # after END USER RULES: ours, so rewritten
    lines = [raw_file_line(HBA, edited), *docker_state()[1:]]
    script, reload = run_operation(networking.client_access, plan, FactHost({ServerConfig: lines}))
    assert 'cp -p "$file" "$backup"' in script  # the edited copy is kept (managed_files.keep_copy)
    assert heredoc_body(script).encode() == converged  # the user's rule kept, the stray byte gone
    assert reload == RELOAD
    # and the rewritten file is converged: the next run yields nothing
    plan.forget_facts()
    assert run_operation(networking.client_access, plan, FactHost({ServerConfig: docker_state(mine="host mydb myuser 127.0.0.1/32 scram-sha-256")})) == []


def test_a_latin1_byte_in_the_user_rules_fails_the_host_naming_the_line_and_changes_nothing(plan):
    hba = render_hba([BR, DOCKER0], load_settings({}), "# caf\udce9 rules\nhost mydb myuser 10.1.0.0/16 scram-sha-256")
    raw = hba.encode("utf-8", errors="surrogateescape")
    assert b"# caf\xe9 rules\n" in raw
    lines = [raw_file_line(HBA, raw), *docker_state(extra=(NEW_BR,))[1:]]
    [command] = run_operation(networking.client_access, plan, FactHost({ServerConfig: lines}))
    result = run_fail(command)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1  # one line
    assert f"refusing {HBA}: these USER RULES lines are not UTF-8 text" in result.stderr
    assert "# caf\\xe9 rules" in result.stderr and "Nothing was changed" in result.stderr and "Fix:" in result.stderr


def test_valid_utf8_in_the_user_rules_is_kept_as_it_is(plan):
    mine = "# café, naïve\nhost mydb myuser 127.0.0.1/32 scram-sha-256"
    assert run_both(plan, docker_state(mine=mine))[:2] == ([], [])


# --- TLS for connections from beyond the host ------------------------------------------------------

from pgvector_deploy.facts import TlsFiles, parse_tls_files  # noqa: E402
from pgvector_deploy.networking import (  # noqa: E402
    hba_fields,
    plaintext_beyond_host,
    self_signed_script,
    tls_check_script,
    tls_wanted,
)

import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from .conftest import skip_or_fail, throwaway_server_missing  # noqa: E402

SELF_CERT = "/etc/postgresql/15/main/pgvector-deploy-server.crt"
SELF_KEY = "/etc/postgresql/15/main/pgvector-deploy-server.key"
VPC_DATA = {**APP_DATA, "pg_listen_addresses": ["10.0.1.10"]}


@pytest.mark.parametrize(
    "line, fields",
    [
        ("host all all 10.0.0.0/8 trust", ["host", "all", "all", "10.0.0.0/8", "trust"]),
        ('host all all 10.0.0.0/8 "trust"', ["host", "all", "all", "10.0.0.0/8", "trust"]),
        ('host "my db" "a#b" 10.0.0.0/8 md5 # comment "x"', ["host", "my db", "a#b", "10.0.0.0/8", "md5"]),
        ("  # host all all 0.0.0.0/0 trust", []),
        ("host\tall\tall\t::1/128\tscram-sha-256#x", ["host", "all", "all", "::1/128", "scram-sha-256"]),
    ],
)
def test_hba_fields_read_quotes_and_comments_as_postgresql_does(line, fields):
    assert hba_fields(line) == fields


@pytest.mark.parametrize(
    "rules, flagged",
    [
        ('host all all 10.0.0.0/8 "trust"', ['host all all 10.0.0.0/8 "trust"']),
        ('hostssl all all 10.0.0.0 255.0.0.0 "trust"', ['hostssl all all 10.0.0.0 255.0.0.0 "trust"']),
        ('host "db#1" all 10.0.0.0/8 trust', ['host "db#1" all 10.0.0.0/8 trust']),  # a # inside quotes is no comment
        ("host all all 10.0.0.0/8 ident", ["host all all 10.0.0.0/8 ident"]),  # the client's machine answers ident
        ("host all all samenet ident", ["host all all samenet ident"]),
        ("host all all 127.0.0.1/32 ident", []),  # the stock RHEL rule: this host's own identd
        ("host all all ::1/128 ident", []),
        ("host all all all trust", ["host all all all trust"]),
        ('local all all "trust"', []),
    ],
)  # fmt: skip
def test_trust_over_tcp_quoted_and_ident(rules, flagged):
    assert trust_over_tcp(rules) == flagged


@pytest.mark.parametrize(
    "rule, refused",
    [
        ("host app app 10.231.0.0/16 scram-sha-256", True),
        ("host app app 10.231.0.0 255.255.0.0 scram-sha-256", True),
        ("hostnossl all all 10.0.0.0/8 md5", True),
        ("host all all all scram-sha-256", True),
        ("host all all samenet scram-sha-256", True),
        ("host all all db.example.com scram-sha-256", True),
        ("host all all 172.16.0.0/12 scram-sha-256", True),  # wider than any bridge here
        ("host all all 172.18.5.0/24 scram-sha-256", False),  # inside br-3f2a1b4c5d6e
        ("host mydb myuser 172.17.0.0/16 scram-sha-256", False),  # docker0
        ("host all all 127.0.0.1/32 scram-sha-256", False),
        ("host all all ::1/128 scram-sha-256", False),
        ("host all all samehost scram-sha-256", False),
        ("host all all 0.0.0.0/0 reject", False),  # keeps people out
        ("hostssl app app 10.231.0.0/16 scram-sha-256", False),
        ("hostgssenc all all 10.0.0.0/8 gss", False),
        ("local all all peer", False),
        ("# host all all 0.0.0.0/0 md5", False),
    ],
)  # fmt: skip
def test_plaintext_rules_for_clients_beyond_the_host(rule, refused):
    assert plaintext_beyond_host(rule, [BR, DOCKER0]) == ([rule] if refused else [])


def test_tls_is_wanted_for_listeners_beyond_the_host_and_for_hostssl_rules():
    assert tls_wanted(load_settings({}), "host mydb myuser 172.17.0.0/16 scram-sha-256") is False
    assert tls_wanted(load_settings({"pg_listen_addresses": ["10.0.1.10"]}), "") is True
    assert tls_wanted(load_settings({"pg_docker_subnets": ["172.20.0.0/16"]}), "") is True
    # PostgreSQL rejects a hostssl record while ssl is off (pg_hba_file_rules: "hostssl record cannot match")
    assert tls_wanted(load_settings({}), "# mine\nhostssl all all 10.0.0.0/8 reject") is True
    assert tls_wanted(load_settings({}), "# hostssl all all 10.0.0.0/8 reject") is False


def settings_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_render_settings_with_tls(debian12):
    text = render_settings(debian12, ["localhost", "10.0.1.10"], (SELF_CERT, SELF_KEY))
    assert settings_lines(text) == [
        "listen_addresses = 'localhost,10.0.1.10'",
        "password_encryption = 'scram-sha-256'",
        "ssl = on",
        f"ssl_cert_file = '{SELF_CERT}'",
        f"ssl_key_file = '{SELF_KEY}'",
        "ssl_min_protocol_version = 'TLSv1.2'",
    ]
    assert "ssl" not in " ".join(settings_lines(render_settings(debian12, ["localhost"])))  # Debian's own ssl stays


def tls_lines(usable: bool = True, mode: str = "600", owner: str = "postgres:postgres", covers: bool = True) -> list[str]:
    return ["openssl=yes", *(["usable=yes"] if usable else []), *(["covers=yes"] if covers else []), f"key={mode}|{owner}"]


def vpc_state(settings_tls: bool = True, mine: str = "") -> list[str]:
    """The recorded Docker host, converged for VPC_DATA (ssl on unless ``settings_tls`` is False)."""
    addresses = DOCKER_ADDRESSES + ["10.0.1.10"]
    settings = render_settings(DEBIAN12, addresses, (SELF_CERT, SELF_KEY) if settings_tls else None)
    lines = docker_state(mine=mine, data=VPC_DATA, drop=("running_listen",), extra=(f"running_listen={','.join(addresses)}",))
    return [file_line(SETTINGS_FILE, settings) if line.startswith(f"file={SETTINGS_FILE}|") else line for line in lines]


@pytest.fixture
def vpc_plan(debian12, provisioned_profile):
    return Plan(load_settings(VPC_DATA), debian12, provisioned_profile)


def test_converged_vpc_host_yields_nothing(vpc_plan):
    host = FactHost({ServerConfig: vpc_state(), TlsFiles: tls_lines()})
    for operation in (networking.server_certificate, networking.listen, networking.client_access):
        assert run_operation(operation, vpc_plan, host) == []
    assert host.noops == [f"{SELF_CERT} (self-signed, made on this host) is kept"]


def test_without_listeners_beyond_the_host_no_certificate_is_asked_for(plan):
    host = FactHost({ServerConfig: docker_state()})
    assert run_operation(networking.server_certificate, plan, host) == []
    assert [cls for cls, _, _ in host.asked] == [ServerConfig]


@pytest.mark.parametrize(
    "lines",
    [[], tls_lines(usable=False), tls_lines(mode="644"), tls_lines(owner="root:root", mode="640"), tls_lines(covers=False)],
    ids=["missing", "unusable", "loose-key", "root-key", "without-the-listen-address"],
)
def test_a_missing_loose_or_outdated_self_signed_pair_is_made_or_repaired(vpc_plan, lines):
    host = FactHost({ServerConfig: vpc_state(), TlsFiles: lines})
    [script] = run_operation(networking.server_certificate, vpc_plan, host)
    assert script == self_signed_script(SELF_CERT, SELF_KEY, DOCKER_ADDRESSES + ["10.0.1.10"], ("10.0.1.10",))
    assert sh_syntax_error(script) == ""
    assert host.asked[-1][1] == {"cert": SELF_CERT, "key": SELF_KEY, "addresses": ("10.0.1.10",)}


@pytest.mark.parametrize("openssl", [True, False])
def test_an_unusable_certificate_from_host_data_is_refused_and_never_touched(debian12, provisioned_profile, openssl):
    data = {**VPC_DATA, "pg_ssl_cert_file": "/etc/ssl/db/server.pem", "pg_ssl_key_file": "/etc/ssl/db/server.key"}
    plan = Plan(load_settings(data), debian12, provisioned_profile)
    lines = ["key=644|postgres:postgres"] + (["openssl=yes"] if openssl else [])
    [command] = run_operation(networking.server_certificate, plan, FactHost({ServerConfig: vpc_state(), TlsFiles: lines}))
    result = run_fail(command)
    assert result.returncode == 1
    assert "pg_ssl_cert_file /etc/ssl/db/server.pem and pg_ssl_key_file /etc/ssl/db/server.key cannot be used" in result.stderr
    assert ("openssl, which checks them, is not installed" in result.stderr) is not openssl
    assert "Nothing was changed" in result.stderr and "Fix:" in result.stderr
    usable = FactHost({ServerConfig: vpc_state(), TlsFiles: tls_lines(mode="640", owner="root:ssl-cert")})
    assert run_operation(networking.server_certificate, Plan(load_settings(data), debian12, provisioned_profile), usable) == []


def test_listen_checks_the_certificate_before_writing_ssl_on(vpc_plan):
    [script] = run_operation(networking.listen, vpc_plan, FactHost({ServerConfig: vpc_state(settings_tls=False)}))
    check = tls_check_script(SELF_CERT, SELF_KEY, SETTINGS_FILE)
    assert script.startswith(check) and sh_syntax_error(script) == ""  # checked first, in the same script
    assert settings_lines(heredoc_body(script))[2:] == [
        "ssl = on", f"ssl_cert_file = '{SELF_CERT}'", f"ssl_key_file = '{SELF_KEY}'", "ssl_min_protocol_version = 'TLSv1.2'"
    ]  # fmt: skip
    assert RELOAD + "; for i in $(seq 50); do" in script and "SHOW ssl" in script


def test_a_hostssl_user_rule_turns_ssl_on(plan):
    mine = "hostssl mydb myuser 10.1.0.0/16 scram-sha-256"
    listen = run_operation(networking.listen, plan, FactHost({ServerConfig: docker_state(mine=mine)}))
    assert listen[0].startswith(tls_check_script(SELF_CERT, SELF_KEY, SETTINGS_FILE))
    assert "ssl = on" in heredoc_body(listen[0]).splitlines()


def test_a_plaintext_user_rule_beyond_the_host_is_refused_and_nothing_else(plan):
    mine = "host app app 10.231.0.0/16 scram-sha-256"
    access = run_operation(networking.client_access, plan, FactHost({ServerConfig: docker_state(mine=mine, extra=(NEW_BR,))}))
    assert len(access) == 1
    result = run_fail(access[0])
    assert result.returncode == 1
    assert f"refusing {HBA}: these USER RULES lines admit clients beyond this host" in result.stderr
    assert f"without TLS: {mine}. Nothing was changed. Fix: write them as hostssl" in result.stderr


def test_a_quoted_trust_user_rule_is_refused(plan):
    mine = 'hostssl all all 10.0.0.0/8 "trust"'
    [command] = run_operation(networking.client_access, plan, FactHost({ServerConfig: docker_state(mine=mine)}))
    assert mine in run_fail(command).stderr and "without a password" in run_fail(command).stderr


# --- the certificate scripts and fact, run for real (root and the postgres OS user) ------------------


@pytest.fixture
def tls_dir():
    """A directory postgres owns and can reach (pytest's tmp_path sits in a root-only one)."""
    missing = throwaway_server_missing()
    if missing:
        skip_or_fail(f"the TLS scripts run openssl as postgres: {missing}")
    base = Path(tempfile.mkdtemp(prefix="pgvector-deploy-tls-"))
    base.chmod(0o755)
    shutil.chown(base, "postgres", "postgres")
    yield base
    shutil.rmtree(base, ignore_errors=True)


def run_sh(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)


def tls_fact(cert, key, addresses: tuple[str, ...] = ("10.0.1.10",)) -> dict:
    return parse_tls_files(run_sh(TlsFiles().command(cert=str(cert), key=str(key), addresses=addresses)).stdout.splitlines())


def test_the_self_signed_pair_is_made_once_private_to_postgres_and_kept(tls_dir):
    cert, key = tls_dir / "server.crt", tls_dir / "server.key"
    script = self_signed_script(str(cert), str(key), ["localhost", "172.17.0.1", "10.0.1.10"])
    assert tls_fact(cert, key) == {"openssl": True, "usable": False, "covers": False, "key_mode": None, "key_owner": None}
    assert run_sh(script).returncode == 0
    assert tls_fact(cert, key) == {"openssl": True, "usable": True, "covers": True, "key_mode": "600", "key_owner": "postgres:postgres"}
    names = run_sh(f"openssl x509 -in {cert} -noout -ext subjectAltName").stdout
    assert "DNS:localhost" in names and "IP Address:172.17.0.1" in names and "IP Address:10.0.1.10" in names
    made = (cert.read_bytes(), key.read_bytes())
    assert run_sh(script).returncode == 0
    assert (cert.read_bytes(), key.read_bytes()) == made  # kept
    assert sorted(path.name for path in tls_dir.iterdir()) == ["server.crt", "server.key"]  # nothing left behind
    key.chmod(0o644)  # loosened by hand: PostgreSQL would refuse it; the script tightens it, keeping the pair
    assert tls_fact(cert, key)["usable"] is False
    assert run_sh(script).returncode == 0
    assert (cert.read_bytes(), key.read_bytes()) == made and tls_fact(cert, key)["key_mode"] == "600"


def test_a_self_signed_certificate_without_a_new_listen_address_is_made_anew(tls_dir):
    """A host that had TLS for a hostssl rule, then gets pg_listen_addresses: its clients may
    verify the names, so the kept certificate must name that address."""
    cert, key = tls_dir / "server.crt", tls_dir / "server.key"
    assert run_sh(self_signed_script(str(cert), str(key), ["localhost", "172.17.0.1"])).returncode == 0
    assert tls_fact(cert, key, ("fd00::2",))["covers"] is False
    assert tls_fact(cert, key, ())["covers"] is True  # nothing required
    old = cert.read_bytes()
    script = self_signed_script(str(cert), str(key), ["localhost", "172.17.0.1", "fd00::2"], ("fd00::2",))
    assert run_sh(script).returncode == 0
    assert cert.read_bytes() != old and tls_fact(cert, key, ("fd00:0::2",))["covers"] is True  # addresses, not spellings
    assert len([path for path in tls_dir.iterdir() if ".bak-" in path.name]) == 2
    made = cert.read_bytes()
    assert run_sh(script).returncode == 0 and cert.read_bytes() == made  # then kept


def test_a_mismatched_self_signed_pair_is_set_aside_and_replaced(tls_dir):
    cert, key = tls_dir / "server.crt", tls_dir / "server.key"
    assert run_sh(self_signed_script(str(cert), str(key), ["localhost"])).returncode == 0
    other = tls_dir / "other"
    other.mkdir()
    shutil.chown(other, "postgres", "postgres")
    assert run_sh(self_signed_script(str(other / "c"), str(other / "k"), ["localhost"])).returncode == 0
    shutil.copy2(other / "k", key)  # the key of another certificate
    assert tls_fact(cert, key)["usable"] is False
    assert run_sh(self_signed_script(str(cert), str(key), ["localhost"])).returncode == 0
    assert tls_fact(cert, key)["usable"] is True
    assert len([path for path in tls_dir.iterdir() if ".bak-" in path.name]) == 2  # both copies kept


def test_the_check_before_ssl_on_refuses_what_postgresql_would_not_start_with(tls_dir):
    cert, key = tls_dir / "server.crt", tls_dir / "server.key"
    check = tls_check_script(str(cert), str(key), SETTINGS_FILE)
    assert run_sh(check).returncode == 1  # missing
    assert run_sh(self_signed_script(str(cert), str(key), ["localhost"])).returncode == 0
    assert run_sh(check).returncode == 0
    key.chmod(0o640)  # group access, postgres the owner
    result = run_sh(check)
    assert result.returncode == 1 and f"not writing {SETTINGS_FILE} with ssl = on" in result.stderr and "Fix:" in result.stderr
    shutil.chown(key, "root", "root")  # root 0640 is what PostgreSQL accepts, but postgres cannot read it now
    assert run_sh(check).returncode == 1
    key.chmod(0o644)
    assert run_sh(check).returncode == 1  # readable, but PostgreSQL refuses a key with world access
    shutil.chown(key, "root", "postgres")
    key.chmod(0o640)
    assert run_sh(check).returncode == 0  # root-owned, group-readable by postgres: accepted


# --- pg_ident.conf: the app role's peer map for the deploy's own sessions (issue 13) -------------

STOCK_IDENT = "# PostgreSQL User Name Maps\n# MAPNAME       SYSTEM-USERNAME         PG-USERNAME\nmine  alice  bob\n"


def test_render_ident_keeps_other_maps_and_adds_ours_once():
    settings = load_settings(APP_DATA)
    text = networking.render_ident(STOCK_IDENT, settings)
    assert text.startswith(STOCK_IDENT + "\n" + networking.IDENT_BEGIN + "\n")
    assert 'pgvector_deploy  postgres  "app"\npgvector_deploy  app  "app"\n' + networking.IDENT_END + "\n" in text
    assert networking.render_ident(text, settings) == text  # a second run converges


def test_render_ident_drops_stray_lines_of_our_map_and_our_block_without_an_app():
    planted = STOCK_IDENT + "pgvector_deploy  www-data  app\n"
    assert "www-data" not in networking.render_ident(planted, load_settings(APP_DATA))
    ours = networking.render_ident(STOCK_IDENT, load_settings(APP_DATA))
    assert networking.render_ident(ours, load_settings({})) == STOCK_IDENT
    assert networking.render_ident(STOCK_IDENT, load_settings({})) is None  # nothing of ours: left alone
    assert networking.render_ident(None, load_settings({})) is None


def test_an_existing_app_host_gets_the_map_then_the_peer_line_then_a_reload(app_plan):
    """A host provisioned before the app's peer line: pg_ident.conf (Debian's stock file kept)
    first, then pg_hba.conf, then one reload; the next run changes nothing."""
    new_hba = render_hba([BR, DOCKER0], load_settings(APP_DATA), "")
    old_hba = new_hba.replace('local   "app"', '#local   "app"')  # as before: no app peer line
    lines = [line for line in docker_state(data=APP_DATA) if not line.startswith((f"file={HBA}|", f"file={IDENT}|"))]
    lines += [file_line(HBA, old_hba), file_line(IDENT, STOCK_IDENT)]
    ident, hba, reload = run_operation(networking.client_access, app_plan, FactHost({ServerConfig: lines}))
    assert f"file={IDENT}\n" in ident and "pg_ident_file_mappings" in ident and "chmod 0640 " in ident
    assert heredoc_body(ident) == networking.render_ident(STOCK_IDENT, app_plan.settings)
    assert sh_syntax_error(ident) == ""
    assert f"file={HBA}\n" in hba and reload == RELOAD
    fresh = Plan(app_plan.settings, app_plan.platform, app_plan.profile)  # nothing remembered
    assert run_operation(networking.client_access, fresh, FactHost({ServerConfig: docker_state(data=APP_DATA)})) == []


def test_only_the_map_missing_writes_it_and_reloads(app_plan):
    lines = [line for line in docker_state(data=APP_DATA) if not line.startswith(f"file={IDENT}|")]
    ident, reload = run_operation(networking.client_access, app_plan, FactHost({ServerConfig: lines}))
    assert f"file={IDENT}\n" in ident and reload == RELOAD


def test_a_pg_ident_conf_that_is_not_utf8_is_refused_and_nothing_written(app_plan):
    lines = [line for line in docker_state(data=APP_DATA) if not line.startswith(f"file={IDENT}|")]
    latin1 = base64.b64encode("caf\xe9 alice bob\n".encode("latin-1")).decode()
    lines.append(f"file={IDENT}|{latin1}")
    [command] = run_operation(networking.client_access, app_plan, FactHost({ServerConfig: lines}))
    assert "pg_ident.conf: it is not UTF-8" in command and "<<" not in command
