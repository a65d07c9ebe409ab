"""The app's connection details for containers (pgvector_deploy.appenv): the URL and env file,
the script that writes the file, and the operation (the EnvFileState fact: test_facts.py).

Oracles: libpq's own URI parser (psycopg's conninfo_to_dict, no server needed) and
SQLAlchemy's make_url read the password back from DATABASE_URL; a port of Compose's env-file
value parser (compose-go dotenv/parser.go, extractVarValue) reads the env file back.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import subprocess
from types import SimpleNamespace

import pytest
from psycopg.conninfo import conninfo_to_dict

from pgvector_deploy import appenv
from pgvector_deploy.appenv import Connection, connection, env_value, render_env_file, write_script
from pgvector_deploy.facts import Bridge, EnvFileState
from pgvector_deploy.loading import load_settings
from pgvector_deploy.managed_files import sha256_text
from pgvector_deploy.plan import Plan
from pgvector_deploy.settings import SettingsError

from .conftest import FactHost, run_operation, sh_syntax_error

PASSWORD = "c0rrect-Horse:battery$staple"
NASTY = [
    PASSWORD,
    "plain-Password_1.x",
    "p@ss/w:rd?#&=%+ é'\"`\\x",
    "with space",
    "it's",
    "100%",
    "ends with \\",
    "a\\'b",
    "$HOME",
    "#hash",
]
ENV_FILE = "/etc/pgvector-deploy/app.env"


def app_plan(debian12, profile, **data) -> Plan:
    return Plan(load_settings({"pg_app_user": "app", "pg_app_password": PASSWORD, **data}), debian12, profile)


# --- the connection string --------------------------------------------------------------------------


@pytest.mark.parametrize("password", NASTY)
def test_url_password_is_percent_encoded_and_libpq_reads_it_back(password):
    conn = Connection("172.17.0.1", 5432, "app", password, "app")
    url = conn.url()
    assert re.fullmatch(r"postgresql://app:[A-Za-z0-9_.~%-]*@172\.17\.0\.1:5432/app", url), url
    parsed = conninfo_to_dict(url)
    assert parsed == {"host": "172.17.0.1", "port": "5432", "user": "app", "password": password, "dbname": "app"}


@pytest.mark.parametrize("password", NASTY)
def test_sqlalchemy_reads_the_password_back(password):
    from sqlalchemy.engine import make_url

    url = make_url(Connection("host.docker.internal", 5432, "app", password, "vectors").url())
    assert (url.password, url.host, url.database) == (password, "host.docker.internal", "vectors")


def test_the_shown_url_never_has_the_password():
    conn = Connection("172.17.0.1", 5432, "app", PASSWORD, "app")
    assert conn.url("<password>") == "postgresql://app:<password>@172.17.0.1:5432/app"
    assert "battery" not in repr(conn) and "battery" not in str(conn)


def bridges(*pairs) -> list[Bridge]:
    from ipaddress import IPv4Interface

    return [Bridge(name, IPv4Interface(interface)) for name, interface in pairs]


def test_default_host_is_the_docker0_gateway(debian12, provisioned_profile):
    profile = {**provisioned_profile, "bridges": bridges(("br-0a1b2c3d4e5f", "172.18.0.1/16"), ("docker0", "172.17.0.1/16"))}
    assert connection(app_plan(debian12, profile)).host == "172.17.0.1"


def test_default_host_without_docker0_is_the_compose_gateway_then_dockers_default(debian12, provisioned_profile):
    profile = {**provisioned_profile, "bridges": bridges(("br-0a1b2c3d4e5f", "172.18.0.1/16"))}
    assert connection(app_plan(debian12, profile)).host == "172.18.0.1"
    assert connection(app_plan(debian12, {**provisioned_profile, "bridges": []})).host == "172.17.0.1"


def test_pg_app_host_wins(debian12, provisioned_profile):
    plan = app_plan(debian12, provisioned_profile, pg_app_host="host.docker.internal", pg_app_database="vectors")
    conn = connection(plan)
    assert conn == Connection("host.docker.internal", 5432, "app", PASSWORD, "vectors")


@pytest.mark.parametrize("value, expected", [("host.docker.internal", "host.docker.internal"), ("10.0.1.10", "10.0.1.10"), (" db ", "db")])
def test_pg_app_host_accepts_names_and_ipv4(value, expected):
    assert load_settings({"pg_app_user": "app", "pg_app_password": "x", "pg_app_host": value}).app.host == expected


@pytest.mark.parametrize("value", ["host docker", "a_b.example", "::1", "0.0.0.0", "-x.example", "172.17.0.1:5432", "1.2.3", "x" * 64])
def test_pg_app_host_refuses_what_a_url_cannot_carry(value):
    with pytest.raises(SettingsError, match="pg_app_host: .*Fix:"):
        load_settings({"pg_app_user": "app", "pg_app_password": "x", "pg_app_host": value})


@pytest.mark.parametrize("value", ["app.env", "/etc/../etc/app.env", "/etc/app env", "/etc/app.env;rm", "/proc/self/x", "/etc/"])
def test_pg_app_env_file_must_be_a_plain_absolute_path(value):
    with pytest.raises(SettingsError, match="pg_app_env_file: .*Fix:"):
        load_settings({"pg_app_user": "app", "pg_app_password": "x", "pg_app_env_file": value})


def test_pg_app_env_file_default_is_none():
    assert load_settings({"pg_app_user": "app", "pg_app_password": "x"}).app.env_file is None
    assert load_settings({"pg_app_user": "app", "pg_app_password": "x", "pg_app_env_file": ENV_FILE}).app.env_file == ENV_FILE


# --- the env file -------------------------------------------------------------------------------


def compose_value(raw: str) -> str:
    """What Compose's env_file parser makes of the text after ``KEY=`` (a port of compose-go's
    dotenv extractVarValue: quotes, backslash handling, inline comments; interpolation of an
    unquoted or double-quoted ``$`` is reported as an error here rather than expanded)."""
    if raw[:1] not in ("'", '"'):
        value = raw.split("\n", 1)[0].split(" #", 1)[0].rstrip()
        if "$" in value:
            raise ValueError("Compose would interpolate $ here")
        return value
    quote, chars, escaped = raw[0], [], False
    for char in raw[1:]:
        if char != quote:
            if not escaped and char == "\\":
                escaped = True
                continue
            if escaped:
                escaped = False
                chars.append("\\")
            chars.append(char)
            continue
        if escaped:
            escaped = False
            chars.append(char)
            continue
        if quote == '"':
            raise ValueError("not ported: double-quoted escapes and interpolation")
        return "".join(chars)
    raise ValueError("unterminated quoted value")


@pytest.mark.parametrize("password", NASTY)
def test_env_value_reads_back_unchanged_in_compose_or_is_left_out(password):
    written = env_value(password)
    if written is None:
        assert "\\'" in password or password.endswith("\\")
    else:
        assert compose_value(written) == password


def test_plain_values_are_not_quoted_so_docker_run_reads_them_too():
    assert env_value("plain-Password_1.x") == "plain-Password_1.x"
    assert env_value("a:b@c/d?e=f%g+h~i!j*k") == "a:b@c/d?e=f%g+h~i!j*k"
    assert env_value(PASSWORD) == f"'{PASSWORD}'"  # $ would be interpolated by Compose
    assert env_value("it's") == "'it\\'s'"


def test_env_file_content():
    content = render_env_file(Connection("172.17.0.1", 5432, "app", "p@ss word", "vectors"))
    lines = [line for line in content.splitlines() if not line.startswith("#")]
    assert lines == [
        "DATABASE_URL=postgresql://app:p%40ss%20word@172.17.0.1:5432/vectors",
        "PGHOST=172.17.0.1",
        "PGPORT=5432",
        "PGUSER=app",
        "PGPASSWORD='p@ss word'",
        "PGDATABASE=vectors",
    ]
    assert "host-gateway" not in content
    assert content.endswith("\n")


def test_env_file_for_host_docker_internal_says_how_to_run_the_container():
    content = render_env_file(Connection("host.docker.internal", 5432, "app", "pw", "app"))
    assert "DATABASE_URL=postgresql://app:pw@host.docker.internal:5432/app\n" in content
    assert "PGHOST=host.docker.internal\n" in content
    assert "--add-host host.docker.internal:host-gateway" in content
    assert 'extra_hosts: ["host.docker.internal:host-gateway"]' in content


def test_env_file_leaves_out_a_password_compose_cannot_read_back():
    content = render_env_file(Connection("172.17.0.1", 5432, "app", "ends with \\", "app"))
    assert "PGPASSWORD=" not in content
    assert "# PGPASSWORD left out" in content
    assert "DATABASE_URL=postgresql://app:ends%20with%20%5C@" in content


@pytest.mark.parametrize("password", NASTY)
def test_every_variable_of_the_env_file_reads_back_in_compose(password):
    content = render_env_file(Connection("172.17.0.1", 5432, "app", password, "app"))
    values = {}
    for line in content.splitlines():
        if line and not line.startswith("#"):
            key, _, raw = line.partition("=")
            values[key] = compose_value(raw)
    assert conninfo_to_dict(values["DATABASE_URL"])["password"] == password
    assert values.get("PGPASSWORD", password) == password
    assert (values["PGHOST"], values["PGPORT"], values["PGUSER"], values["PGDATABASE"]) == ("172.17.0.1", "5432", "app", "app")


# --- the fact and the writer -------------------------------------------------------------------------


def test_write_script_is_valid_sh_and_carries_no_content():
    script = write_script("/etc/pgvector-deploy/app.env")
    assert sh_syntax_error(script) == ""
    assert "cat > \"$tmp\"" in script and "umask 077" in script and "mktemp" in script


@pytest.mark.skipif(os.geteuid() != 0, reason="chown root:root needs root")
def test_write_script_writes_0600_root_atomically_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "etc" / "pgvector-deploy" / "app.env"
    content = render_env_file(Connection("172.17.0.1", 5432, "app", PASSWORD, "app"))
    result = subprocess.run(["sh", "-c", write_script(str(target))], input=content, check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert target.read_text() == content
    info = target.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600 and (info.st_uid, info.st_gid) == (0, 0)
    assert sorted(p.name for p in target.parent.iterdir()) == ["app.env"]
    # an existing file with a loose mode is replaced by a private one
    target.chmod(0o644)
    assert subprocess.run(["sh", "-c", write_script(str(target))], input="X=1\n", check=False, capture_output=True, text=True).returncode == 0
    assert target.read_text() == "X=1\n" and stat.S_IMODE(target.stat().st_mode) == 0o600
    # the same content again (another run wrote it meanwhile): the file is left as it is
    inode = target.stat().st_ino
    assert subprocess.run(["sh", "-c", write_script(str(target))], input="X=1\n", check=False, capture_output=True, text=True).returncode == 0
    assert target.stat().st_ino == inode and sorted(p.name for p in target.parent.iterdir()) == ["app.env"]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown root:root needs root")
def test_write_script_refuses_a_directory_at_the_path_and_leaves_nothing(tmp_path):
    target = tmp_path / "app.env"
    target.mkdir()  # mv would put the file inside it
    result = subprocess.run(["sh", "-c", write_script(str(target))], input="X=1\n", check=False, capture_output=True, text=True)
    assert result.returncode != 0
    assert f"{target} is a directory. Fix:" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["app.env"] and list(target.iterdir()) == []


# --- the operation ---------------------------------------------------------------------------------


def run_env(plan, lines, executing: bool = False) -> tuple[list, FactHost]:
    host = FactHost({EnvFileState: lines})
    if executing:
        host.state = SimpleNamespace(is_executing=True)
        host.print_prefix = "[db-1] "
    return run_operation(appenv.env_file, plan, host), host


def current_lines(plan) -> list[str]:
    return [f"sha256={sha256_text(render_env_file(connection(plan)))}", "mode=600", "owner=root:root"]


def test_without_an_env_file_nothing_is_asked_or_written(debian12, provisioned_profile):
    commands, host = run_env(app_plan(debian12, provisioned_profile), [])
    assert commands == [] and host.asked == []
    assert host.noops == ["no env file (pg_app_env_file is not set)"]


def test_missing_file_is_written_with_the_content_on_stdin_only(debian12, provisioned_profile):
    plan = app_plan(debian12, provisioned_profile, pg_app_env_file=ENV_FILE)
    [command], host = run_env(plan, [])
    assert command.connector_arguments == {"_stdin": render_env_file(connection(plan))}
    assert str(command) == write_script(ENV_FILE)
    assert PASSWORD not in str(command) and "battery" not in str(command)
    [(fact, kwargs, _)] = host.asked
    assert fact is EnvFileState and kwargs == {"path": ENV_FILE}


def test_current_file_yields_nothing(debian12, provisioned_profile):
    plan = app_plan(debian12, provisioned_profile, pg_app_env_file=ENV_FILE)
    commands, host = run_env(plan, current_lines(plan))
    assert commands == []
    assert host.noops == [f"{ENV_FILE} is current"]


@pytest.mark.parametrize("change", [{"mode": "644"}, {"owner": "admin:admin"}, {"sha256": "0" * 64}])
def test_a_file_that_differs_in_content_mode_or_owner_is_rewritten(debian12, provisioned_profile, change):
    plan = app_plan(debian12, provisioned_profile, pg_app_env_file=ENV_FILE)
    state = dict(line.split("=", 1) for line in current_lines(plan))
    state.update(change)
    [command], _ = run_env(plan, [f"{key}={value}" for key, value in state.items()])
    assert command.connector_arguments["_stdin"] == render_env_file(connection(plan))


def test_a_new_password_rewrites_the_file(debian12, provisioned_profile):
    old = app_plan(debian12, provisioned_profile, pg_app_env_file=ENV_FILE)
    new = app_plan(debian12, provisioned_profile, pg_app_env_file=ENV_FILE, pg_app_password="Rotated-9f2c$pw")
    [command], _ = run_env(new, current_lines(old))
    assert "Rotated-9f2c%24pw" in command.connector_arguments["_stdin"]


def test_the_connection_is_printed_without_the_password_when_the_deploy_runs(debian12, provisioned_profile, caplog):
    plan = app_plan(debian12, provisioned_profile, pg_app_env_file=ENV_FILE)
    with caplog.at_level(logging.INFO, logger="pyinfra"):
        run_env(plan, current_lines(plan), executing=True)
    [message] = [record.getMessage() for record in caplog.records if "connect" in record.getMessage()]
    assert message == (
        "[db-1] App containers connect with postgresql://app:<password>@172.17.0.1:5432/app; "
        f"env file on the host: {ENV_FILE}"
    )
    assert "battery" not in caplog.text


def test_nothing_is_printed_while_pyinfra_only_looks_for_changes(debian12, provisioned_profile, caplog):
    with caplog.at_level(logging.INFO, logger="pyinfra"):
        run_env(app_plan(debian12, provisioned_profile), [])
    assert "connect with" not in caplog.text


# --- TLS for clients beyond the host -----------------------------------------------------------------

DOCKER_HOST = bridges(("docker0", "172.17.0.1/16"), ("br-0a1b2c3d4e5f", "172.18.0.1/16"))


@pytest.mark.parametrize("address", [None, "172.17.0.1", "172.18.0.1", "host.docker.internal"])
def test_a_bridge_connection_has_no_sslmode(debian12, provisioned_profile, address):
    data = {"pg_app_host": address} if address else {}
    conn = connection(app_plan(debian12, {**provisioned_profile, "bridges": DOCKER_HOST}, **data))
    assert (conn.sslmode, conn.sslrootcert) == (None, None)
    assert "sslmode" not in conn.url() and "PGSSLMODE" not in render_env_file(conn)


@pytest.mark.parametrize("address", ["10.0.1.10", "db.internal", "192.168.77.1"])
def test_a_connection_beyond_the_host_requires_tls(debian12, provisioned_profile, address):
    conn = connection(app_plan(debian12, {**provisioned_profile, "bridges": DOCKER_HOST}, pg_app_host=address))
    assert conn.url("<password>") == f"postgresql://app:<password>@{address}:5432/app?sslmode=require"
    assert conninfo_to_dict(conn.url())["sslmode"] == "require"  # libpq reads it
    content = render_env_file(conn)
    assert f"DATABASE_URL={conn.url()}\n" in content and "PGSSLMODE=require\n" in content
    assert "PGSSLROOTCERT" not in content


def test_with_a_ca_the_connection_beyond_the_host_verifies_the_server(debian12, provisioned_profile):
    plan = app_plan(
        debian12, {**provisioned_profile, "bridges": DOCKER_HOST}, pg_app_host="10.0.1.10",
        pg_ssl_cert_file="/etc/ssl/db/server.pem", pg_ssl_key_file="/etc/ssl/db/server.key", pg_ssl_ca_file="/etc/ssl/db/ca.pem",
    )  # fmt: skip
    conn = connection(plan)
    assert conninfo_to_dict(conn.url()) | {"password": None} == {
        "user": "app", "password": None, "host": "10.0.1.10", "port": "5432", "dbname": "app",
        "sslmode": "verify-full", "sslrootcert": "/etc/ssl/db/ca.pem",
    }  # fmt: skip
    content = render_env_file(conn)
    assert "PGSSLMODE=verify-full\n" in content and "PGSSLROOTCERT=/etc/ssl/db/ca.pem\n" in content


def test_the_vpc_connection_string_is_printed_with_sslmode_require(debian12, provisioned_profile, caplog):
    plan = app_plan(debian12, provisioned_profile, pg_listen_addresses=["10.0.1.10"])
    with caplog.at_level(logging.INFO, logger="pyinfra"):
        run_env(plan, [], executing=True)
    messages = [record.getMessage() for record in caplog.records if "connect" in record.getMessage()]
    assert messages == [
        "[db-1] App containers connect with postgresql://app:<password>@172.17.0.1:5432/app",
        "[db-1] Clients beyond this host connect with postgresql://app:<password>@10.0.1.10:5432/app?sslmode=require",
    ]
