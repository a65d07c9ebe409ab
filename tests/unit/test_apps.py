"""The app's role and database (pgvector_deploy.apps) and the AppState fact.

The SCRAM verifier is checked against two independent oracles: the RFC 7677 example
exchange, and libpq's own ``PQencryptPasswordConn`` (through psycopg, no server needed: it
computes the verifier locally when the algorithm is given).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import shlex
import subprocess

import psycopg
import pytest

from pgvector_deploy import apps
from pgvector_deploy.apps import password_matches, scram_verifier
from pgvector_deploy.facts import AppState, parse_app_state
from pgvector_deploy.loading import load_settings
from pgvector_deploy.plan import Plan
from pgvector_deploy.shell import SAFE_PATH, SUPERUSER_OPTIONS, dbname_conninfo

from .conftest import FactHost, run_operation, sh_syntax_error

PASSWORD = "s3cret-Pässword"
SALT = bytes(range(16))
PSQL = f"PGOPTIONS={shlex.quote(SUPERUSER_OPTIONS)} runuser -u postgres -- /usr/lib/postgresql/15/bin/psql -X -A -t -q -v ON_ERROR_STOP=1 -h /var/run/postgresql -p 5432"
VERIFIER = re.compile(r"^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/]+={0,2})\$([A-Za-z0-9+/]+={0,2}):([A-Za-z0-9+/]+={0,2})$")


def libpq_verifier(password: str) -> str:
    """libpq's SCRAM-SHA-256 verifier for ``password`` (random salt), computed locally."""
    conn = psycopg.pq.PGconn.connect(b"host=/nonexistent-pgvector-deploy-test port=5432 connect_timeout=1")
    try:
        return conn.encrypt_password(password.encode(), b"app", b"scram-sha-256").decode()
    finally:
        conn.finish()


def salt_of(verifier: str) -> bytes:
    return base64.b64decode(VERIFIER.match(verifier).group(2))


# --- scram_verifier / password_matches -----------------------------------------------------------


def test_verifier_format():
    verifier = scram_verifier(PASSWORD, SALT)
    match = VERIFIER.match(verifier)
    assert match, verifier
    iterations, salt, stored_key, server_key = match.groups()
    assert iterations == "4096"
    assert base64.b64decode(salt) == SALT
    assert len(base64.b64decode(stored_key)) == len(base64.b64decode(server_key)) == 32


def test_verifier_is_deterministic_for_a_salt():
    assert scram_verifier(PASSWORD, SALT) == scram_verifier(PASSWORD, SALT)
    assert scram_verifier(PASSWORD, SALT) != scram_verifier(PASSWORD, bytes(16))
    assert scram_verifier(PASSWORD, SALT) != scram_verifier(PASSWORD + "x", SALT)
    assert scram_verifier(PASSWORD, SALT, 10000).startswith("SCRAM-SHA-256$10000:")


def test_verifier_agrees_with_the_rfc_7677_example():
    """RFC 7677 section 3: user "user", password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==,
    4096 iterations. The client's proof and the server's signature of that exchange must
    follow from our StoredKey and ServerKey."""
    verifier = scram_verifier("pencil", base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="))
    _, _, stored_b64, server_b64 = VERIFIER.match(verifier).groups()
    stored_key, server_key = base64.b64decode(stored_b64), base64.b64decode(server_b64)
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth_message = (
        f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r={nonce}"
    ).encode()
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client_signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
    client_key = bytes(a ^ b for a, b in zip(proof, client_signature))
    assert hashlib.sha256(client_key).digest() == stored_key  # the server would accept this proof
    server_signature = hmac.new(server_key, auth_message, hashlib.sha256).digest()
    assert base64.b64encode(server_signature).decode() == "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


@pytest.mark.parametrize(
    "password",
    ["pencil", PASSWORD, "with space and 'quote' and $dollar", "ｆｕｌｌｗｉｄｔｈ", "non\u00a0breaking", "ﬁne ligature", "x" * 200],
)
def test_verifier_agrees_with_libpq(password):
    expected = libpq_verifier(password)
    assert scram_verifier(password, salt_of(expected)) == expected


@pytest.mark.parametrize("password", ["pass\u00adword", "\u200bpässword"])
def test_verifier_agrees_with_libpq_saslprep_mapping(password):
    expected = libpq_verifier(password)
    assert scram_verifier(password, salt_of(expected)) == expected


def stored(verifier: str) -> tuple[str, str]:
    """What AppState reports of a stored verifier: its iterations:salt part and its sha256."""
    return verifier.split("$")[1], hashlib.sha256(verifier.encode()).hexdigest()


def test_password_matches_the_verifier_it_came_from():
    assert password_matches(PASSWORD, *stored(scram_verifier(PASSWORD, SALT))) is True
    assert password_matches(PASSWORD, *stored(libpq_verifier(PASSWORD))) is True


@pytest.mark.parametrize(
    "salt_part, digest",
    [
        stored(scram_verifier("another password", SALT)),
        stored(scram_verifier(PASSWORD + " ", SALT)),
        (stored(scram_verifier(PASSWORD, SALT))[0], "0" * 64),
        ("", hashlib.sha256(b"md5" + b"0" * 32).hexdigest()),  # an md5 password has no '$'
        ("", ""),  # no password
        ("4096:not base64!", "0" * 64),
        ("many:c2FsdA==", "0" * 64),
    ],
)
def test_password_matches_is_false_otherwise(salt_part, digest):
    assert password_matches(PASSWORD, salt_part, digest) is False


# --- the AppState fact -----------------------------------------------------------------------------

HEX = hashlib.sha256(b"SCRAM-SHA-256$4096:c2FsdA==$a:b").hexdigest()


def test_parse_app_state_of_an_existing_role_and_database():
    state = parse_app_state([f"role=true|false|4096:c2FsdA==|{HEX}", "database_owner=app", "database_vector=0.8.0"])
    assert state == {
        "role_exists": True,
        "can_login": True,
        "createdb": False,
        "salt_part": "4096:c2FsdA==",
        "stored_digest": HEX,
        "database_owner": "app",
        "database_vector": "0.8.0",
    }


def test_parse_app_state_accepts_t_and_f():
    state = parse_app_state([f"role=f|t|4096:c2FsdA==|{HEX}", "database_owner=app", "database_vector="])
    assert (state["can_login"], state["createdb"], state["database_vector"]) == (False, True, None)


def test_parse_app_state_without_role_or_database():
    assert parse_app_state(["database_owner="]) == {
        "role_exists": False,
        "can_login": False,
        "createdb": False,
        "salt_part": "",
        "stored_digest": "",
        "database_owner": None,
        "database_vector": None,
    }


def test_parse_app_state_of_a_role_without_password():
    state = parse_app_state(["role=true|false||", "database_owner=postgres"])
    assert (state["role_exists"], state["salt_part"], state["stored_digest"]) == (True, "", "")
    assert state["database_owner"] == "postgres"


def test_app_state_command_is_valid_sh(debian12):
    command = AppState().command(platform=debian12, port=5432, user="my_app", database="my_db")
    assert sh_syntax_error(command) == ""
    words = " ".join(word for line in command.splitlines() if "runuser" in line for word in shlex.split(line))
    assert "WHERE rolname = 'my_app'" in words and "WHERE datname = 'my_db'" in words
    assert "-d 'dbname='\"'\"'my_db'\"'\"''" in command  # vector is looked up in the app's database


# --- the operations ------------------------------------------------------------------------------


def app_plan(debian12, profile, **data) -> Plan:
    return Plan(load_settings({"pg_app_user": "app", "pg_app_password": PASSWORD, **data}), debian12, profile)


def state_lines(role: str | None, owner: str | None = "app", vector: str | None = "0.8.0") -> list[str]:
    lines = [f"role={role}"] if role is not None else []
    lines.append(f"database_owner={owner or ''}")
    if owner:
        lines.append(f"database_vector={vector or ''}")
    return lines


def role_row(password: str, login: str = "true", createdb: str = "false") -> str:
    salt_part, digest = stored(scram_verifier(password, SALT))
    return f"{login}|{createdb}|{salt_part}|{digest}"


def run_app(operation, plan, lines) -> tuple[list, FactHost]:
    host = FactHost({AppState: lines})
    return run_operation(operation, plan, host), host


def check_sql_command(command, database: str) -> str:
    """The command is psql with SQL on stdin only; returns that SQL."""
    assert str(command) == f"PATH={SAFE_PATH}; {PSQL} -d {shlex.quote(dbname_conninfo(database))}"
    assert set(command.connector_arguments) == {"_stdin"}
    return command.connector_arguments["_stdin"]


def verifier_in(sql: str) -> str:
    [verifier] = re.findall(r"PASSWORD '([^']*)'", sql)
    assert VERIFIER.match(verifier), verifier
    return verifier


def test_new_role_sends_the_verifier_on_stdin_only(debian12, provisioned_profile):
    commands, host = run_app(apps.role, app_plan(debian12, provisioned_profile), state_lines(None, owner=None))
    [command] = commands
    sql = check_sql_command(command, "postgres")
    verifier = verifier_in(sql)
    assert sql == (
        "\\set SHOW_CONTEXT never\nDO $pgvector_deploy$ BEGIN IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles "
        f"WHERE rolname = 'app') THEN CREATE ROLE app WITH LOGIN NOCREATEDB PASSWORD '{verifier}'; END IF; "
        "END $pgvector_deploy$;\n"
    )
    assert password_matches(PASSWORD, *stored(verifier))
    text = command.get_raw_value()
    assert PASSWORD not in text and verifier not in text and "SCRAM" not in text
    assert PASSWORD not in sql
    [(_, kwargs, _)] = host.asked
    assert kwargs == {"platform": debian12, "port": 5432, "user": "app", "database": "app"}


def test_new_role_with_createdb(debian12, provisioned_profile):
    [command] = run_app(apps.role, app_plan(debian12, provisioned_profile, pg_app_createdb=True), state_lines(None))[0]
    assert "THEN CREATE ROLE app WITH LOGIN CREATEDB PASSWORD 'SCRAM-SHA-256$4096:" in command.connector_arguments["_stdin"]


def test_new_salt_every_time(debian12, provisioned_profile):
    plan = app_plan(debian12, provisioned_profile)
    first, second = (verifier_in(run_app(apps.role, plan, state_lines(None))[0][0].connector_arguments["_stdin"]) for _ in range(2))
    assert salt_of(first) != salt_of(second) and len(salt_of(first)) == 16


def test_unchanged_password_yields_nothing(debian12, provisioned_profile):
    assert run_app(apps.role, app_plan(debian12, provisioned_profile), state_lines(role_row(PASSWORD)))[0] == []


def test_changed_password_alters_the_role(debian12, provisioned_profile):
    [command] = run_app(apps.role, app_plan(debian12, provisioned_profile), state_lines(role_row("the old password")))[0]
    sql = check_sql_command(command, "postgres")
    verifier = verifier_in(sql)
    assert sql == f"ALTER ROLE app WITH PASSWORD '{verifier}';\n"
    assert password_matches(PASSWORD, *stored(verifier))
    assert verifier not in command.get_raw_value()


def test_md5_password_is_replaced(debian12, provisioned_profile):
    md5_row = f"true|false||{hashlib.sha256(b'md5' + b'0' * 32).hexdigest()}"
    [command] = run_app(apps.role, app_plan(debian12, provisioned_profile), state_lines(md5_row))[0]
    assert command.connector_arguments["_stdin"].startswith("ALTER ROLE app WITH PASSWORD 'SCRAM-SHA-256$4096:")


def test_createdb_difference_alters_the_role_only(debian12, provisioned_profile):
    plan = app_plan(debian12, provisioned_profile, pg_app_createdb="yes")
    [command] = run_app(apps.role, plan, state_lines(role_row(PASSWORD, createdb="false")))[0]
    assert check_sql_command(command, "postgres") == "ALTER ROLE app WITH LOGIN CREATEDB;\n"
    [command] = run_app(apps.role, app_plan(debian12, provisioned_profile), state_lines(role_row(PASSWORD, createdb="true")))[0]
    assert check_sql_command(command, "postgres") == "ALTER ROLE app WITH LOGIN NOCREATEDB;\n"


def test_role_that_cannot_log_in_and_has_another_password(debian12, provisioned_profile):
    commands = run_app(apps.role, app_plan(debian12, provisioned_profile), state_lines(role_row("old", login="false")))[0]
    assert [command.connector_arguments["_stdin"].split(" PASSWORD ")[0] for command in commands] == [
        "ALTER ROLE app WITH LOGIN NOCREATEDB;\n",
        "ALTER ROLE app WITH",
    ]


def test_missing_database_is_created_owned_by_the_app(debian12, provisioned_profile):
    plan = app_plan(debian12, provisioned_profile, pg_app_database="vectors")
    [command], host = run_app(apps.database, plan, state_lines(role_row(PASSWORD), owner=None))
    # SQL on stdin only; psql again while template1 is busy (tested on a real server below).
    assert str(command) == apps.create_database_script(plan, "vectors")
    assert f"| {PSQL} -d {shlex.quote(dbname_conninfo('postgres'))} 2>&1)" in str(command)
    assert command.connector_arguments == {"_stdin": (
        "SELECT 'CREATE DATABASE vectors OWNER app' WHERE NOT EXISTS "
        "(SELECT FROM pg_catalog.pg_database WHERE datname = 'vectors') \\gexec\n"
    )}  # fmt: skip
    assert sh_syntax_error(str(command)) == ""
    assert host.asked[0][1]["database"] == "vectors"


def test_database_with_the_wrong_owner_gets_the_app(debian12, provisioned_profile):
    [command] = run_app(apps.database, app_plan(debian12, provisioned_profile), state_lines(role_row(PASSWORD), owner="postgres"))[0]
    assert check_sql_command(command, "postgres") == "ALTER DATABASE app OWNER TO app;\n"


def test_database_without_vector_gets_it_in_that_database(debian12, provisioned_profile):
    [command] = run_app(apps.database, app_plan(debian12, provisioned_profile), state_lines(role_row(PASSWORD), vector=None))[0]
    assert check_sql_command(command, "app") == "CREATE EXTENSION IF NOT EXISTS vector SCHEMA public;\n"


def test_database_wrong_owner_and_no_vector(debian12, provisioned_profile):
    commands = run_app(apps.database, app_plan(debian12, provisioned_profile), state_lines(role_row(PASSWORD), owner="other", vector=None))[0]
    assert [check_sql_command(command, database) for command, database in zip(commands, ("postgres", "app"))] == [
        "ALTER DATABASE app OWNER TO app;\n",
        "CREATE EXTENSION IF NOT EXISTS vector SCHEMA public;\n",
    ]
    assert len(commands) == 2


def test_converged_database_yields_nothing(debian12, provisioned_profile):
    assert run_app(apps.database, app_plan(debian12, provisioned_profile), state_lines(role_row(PASSWORD)))[0] == []


def test_creating_the_role_and_database_twice_succeeds_and_changes_nothing_the_second_time(debian12, provisioned_profile):
    """A run that waited for the host lock while another created them sends the same SQL on
    stale facts: on a real server the second time is a no-op, not an "already exists" error,
    and the first password stays."""
    import subprocess

    from .conftest import AS_POSTGRES, PG_BINDIR, throwaway_server

    plan = app_plan(debian12, provisioned_profile, pg_app_createdb=True)
    role_sql = run_app(apps.role, plan, state_lines(None, owner=None))[0][0].connector_arguments["_stdin"]
    database_sql = run_app(apps.database, plan, state_lines(role_row(PASSWORD), owner=None))[0][0].connector_arguments["_stdin"]
    again_sql = run_app(apps.role, plan, state_lines(None, owner=None))[0][0].connector_arguments["_stdin"]
    with throwaway_server("pgvd-apps-") as base:
        psql = [*AS_POSTGRES, f"{PG_BINDIR}/psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(base), "-d", "postgres"]

        def run(sql):
            return subprocess.run(psql, input=sql, text=True, capture_output=True, timeout=30)

        for sql in (role_sql, database_sql):
            first = run(sql)
            assert first.returncode == 0, first.stderr
        verifier = run("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'").stdout
        for sql in (again_sql, database_sql):
            second = run(sql)
            assert second.returncode == 0 and second.stderr == "", second.stderr
        assert run("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'").stdout == verifier
        assert run("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'").stdout == "app\n"


# --- a new password and the env file: one command, so they never disagree ----------------------------

ENV_FILE = "/etc/pgvector-deploy/app.env"


def combined_parts(command) -> tuple[str, str, str]:
    """(digest, SQL line, env file content) from the standard input of the combined command."""
    assert set(command.connector_arguments) == {"_stdin"}
    digest, sql, content = command.connector_arguments["_stdin"].split("\n", 2)
    return digest, sql, content


@pytest.mark.parametrize("row", [None, "old"])
def test_with_an_env_file_a_new_password_and_the_file_go_in_one_command(debian12, provisioned_profile, row):
    """A rotation (or a new role) with pg_app_env_file: the password's SQL and the env file with
    that password are one on-host command; nothing later in the run can come between them."""
    from pgvector_deploy import appenv

    plan = app_plan(debian12, provisioned_profile, pg_app_env_file=ENV_FILE)
    [command] = run_app(apps.role, plan, state_lines(role_row(row) if row else None))[0]
    digest, sql, content = combined_parts(command)
    assert content == appenv.render_env_file(appenv.connection(plan)) and f"PGPASSWORD={PASSWORD}" not in sql
    assert digest == hashlib.sha256(content.encode()).hexdigest()
    assert password_matches(PASSWORD, *stored(verifier_in(sql)))
    assert sql.startswith("DO $pgvector_deploy$" if row is None else "ALTER ROLE app WITH PASSWORD 'SCRAM-SHA-256$")
    text = command.get_raw_value()
    assert text == appenv.with_role_password_script(ENV_FILE, f"{PSQL} -d {shlex.quote(dbname_conninfo('postgres'))} -v SHOW_CONTEXT=never -v VERBOSITY=terse")
    assert PASSWORD not in text and "SCRAM" not in text and sh_syntax_error(text) == ""


def test_with_an_env_file_an_unchanged_password_leaves_the_file_to_its_own_operation(debian12, provisioned_profile):
    plan = app_plan(debian12, provisioned_profile, pg_app_env_file=ENV_FILE, pg_app_createdb=True)
    [command] = run_app(apps.role, plan, state_lines(role_row(PASSWORD)))[0]
    assert check_sql_command(command, "postgres") == "ALTER ROLE app WITH LOGIN CREATEDB;\n"


class _Rotation:
    """The combined command's script run for real, as root, against a throwaway PostgreSQL 15,
    with the env file in a temporary directory."""

    def __init__(self, debian12, provisioned_profile, base, env_file):
        self.debian12, self.profile, self.base, self.env_file = debian12, provisioned_profile, base, env_file
        from .conftest import PG_BINDIR

        self.psql = (
            f"runuser -u postgres -- {PG_BINDIR}/psql -X -A -t -q -v ON_ERROR_STOP=1 -h {base} -d postgres "
            "-v SHOW_CONTEXT=never -v VERBOSITY=terse"
        )

    def command(self, password: str, row: str | None):
        plan = app_plan(self.debian12, self.profile, pg_app_env_file=str(self.env_file), pg_app_password=password)
        [command] = run_app(apps.role, plan, state_lines(row))[0]
        return command

    def run(self, command, stdin: str | None = None):
        from pgvector_deploy import appenv

        script = appenv.with_role_password_script(str(self.env_file), self.psql)
        stdin = command.connector_arguments["_stdin"] if stdin is None else stdin
        return subprocess.run(["sh", "-c", script], input=stdin, capture_output=True, text=True, timeout=60, check=False)


def test_the_combined_command_sets_both_or_puts_the_file_back(debian12, provisioned_profile, tmp_path):
    from .conftest import throwaway_psql, throwaway_server

    env_file = tmp_path / "etc" / "app.env"
    with throwaway_server("pgvd-rotate-") as base:
        psql = throwaway_psql(base)
        rotation = _Rotation(debian12, provisioned_profile, base, env_file)

        def stored_verifier() -> str:
            return psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'")

        # A new role: the file appears with its password, 0600 root:root.
        first = rotation.run(rotation.command(PASSWORD, None))
        assert first.returncode == 0, first.stderr
        assert f"PGPASSWORD='{PASSWORD}'\n" in env_file.read_text()
        assert password_matches(PASSWORD, *stored(stored_verifier()))
        assert oct(env_file.stat().st_mode & 0o777) == "0o600" and (env_file.stat().st_uid, env_file.stat().st_gid) == (0, 0)
        # A rotation: both change.
        second = rotation.run(rotation.command("Rotated-1$pw", role_row(PASSWORD)))
        assert second.returncode == 0, second.stderr
        assert "PGPASSWORD='Rotated-1$pw'\n" in env_file.read_text() and password_matches("Rotated-1$pw", *stored(stored_verifier()))
        # The SQL fails (the role was renamed meanwhile): the previous file is put back, byte for byte.
        before, verifier = env_file.read_bytes(), stored_verifier()
        psql("ALTER ROLE app RENAME TO app_elsewhere")
        failed = rotation.run(rotation.command("Rotated-2$pw", role_row("Rotated-1$pw")))
        assert failed.returncode != 0
        assert "the app role's password could not be set" in failed.stderr and 'role "app" does not exist' in failed.stderr
        assert "SCRAM" not in failed.stderr and "Rotated-2" not in failed.stderr
        assert env_file.read_bytes() == before
        psql("ALTER ROLE app_elsewhere RENAME TO app")
        assert psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'") == verifier
        # The content arrives cut short (the connection dropped): nothing changes, psql never runs.
        command = rotation.command("Rotated-3$pw", role_row("Rotated-1$pw"))
        cut = rotation.run(command, command.connector_arguments["_stdin"][:-20])
        assert cut.returncode != 0 and "did not arrive whole" in cut.stderr
        assert env_file.read_bytes() == before and stored_verifier() == verifier
        assert sorted(path.name for path in env_file.parent.iterdir()) == ["app.env"]  # no temporary file left


def test_the_combined_command_on_a_missing_file_removes_it_again_when_the_sql_fails(debian12, provisioned_profile, tmp_path):
    from .conftest import throwaway_server

    env_file = tmp_path / "app.env"
    with throwaway_server("pgvd-rotate-") as base:
        rotation = _Rotation(debian12, provisioned_profile, base, env_file)
        failed = rotation.run(rotation.command(PASSWORD, role_row("old")))  # ALTER ROLE of a role that is not there
        assert failed.returncode != 0 and "could not be set" in failed.stderr
        assert list(tmp_path.iterdir()) == []


# --- CREATE DATABASE while another session is connected to template1 ---------------------------


def _create_database_on(base, debian12, provisioned_profile, replace: dict | None = None):
    """Run the command apps.database yields for a missing database against the throwaway
    server at ``base`` (the platform's socket directory pointed there); returns the result."""
    import dataclasses
    import subprocess

    platform = dataclasses.replace(debian12, socket_dir=str(base))
    plan = app_plan(platform, provisioned_profile)
    [command] = run_app(apps.database, plan, state_lines(role_row(PASSWORD), owner=None))[0]
    script = str(command)
    for old, new in (replace or {}).items():
        assert old in script, old
        script = script.replace(old, new)
    return subprocess.run(["sh", "-c", script], input=command.connector_arguments.get("_stdin"), text=True,
                          capture_output=True, timeout=120)  # fmt: skip


def _hold_template1(base, seconds: int):
    import subprocess

    from .conftest import AS_POSTGRES, PG_BINDIR

    holder = subprocess.Popen(
        [*AS_POSTGRES, "env", "PGAPPNAME=template1-holder", f"{PG_BINDIR}/psql", "-XAtq", "-h", str(base), "-d", "template1",
         "-c", f"SELECT pg_sleep({seconds})"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    from .conftest import throwaway_psql

    psql = throwaway_psql(base)
    for _ in range(50):
        if psql("SELECT count(*) FROM pg_stat_activity WHERE datname = 'template1'") == "1":
            return holder
        __import__("time").sleep(0.1)
    holder.kill()
    raise AssertionError("the template1 holder never connected")


def test_the_app_database_is_created_though_a_session_held_template1_for_a_while(debian12, provisioned_profile):
    # CREATE DATABASE fails at once ("source database "template1" is being accessed by other
    # users") when a session stays on template1 past the server's own 5 s wait: our template1
    # step's backend still exiting, an app's or a monitor's connection.
    from .conftest import throwaway_psql, throwaway_server

    with throwaway_server("pgvd-apps-") as base:
        psql = throwaway_psql(base)
        psql("CREATE ROLE app LOGIN")
        holder = _hold_template1(base, 9)
        try:
            result = _create_database_on(base, debian12, provisioned_profile)
        finally:
            holder.kill()
        assert (result.returncode, result.stderr) == (0, ""), result.stderr
        assert psql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'") == "app"


def test_a_session_that_stays_on_template1_fails_the_creation_naming_it(debian12, provisioned_profile):
    from .conftest import throwaway_psql, throwaway_server

    with throwaway_server("pgvd-apps-") as base:
        psql = throwaway_psql(base)
        psql("CREATE ROLE app LOGIN")
        holder = _hold_template1(base, 60)
        try:
            result = _create_database_on(base, debian12, provisioned_profile,
                                         {f"-ge {apps.CREATE_DATABASE_TRIES} ": "-ge 2 ", f"sleep {apps.CREATE_DATABASE_PAUSE}": "sleep 0"})  # fmt: skip
        finally:
            holder.kill()
        assert result.returncode == 1
        assert "CREATE DATABASE app could not copy template1: other sessions stayed connected to it" in result.stderr
        assert "(postgres, template1-holder)" in result.stderr, result.stderr
        assert "Nothing was created. Fix: close those connections" in result.stderr
        assert psql("SELECT count(*) FROM pg_database WHERE datname = 'app'") == "0"
