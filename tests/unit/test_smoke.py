"""The vector smoke suite (pgvector_deploy.smoke): its script, its parser, its report.

The script is also run for real here, against a fake ``psql``/``pg_config``/``runuser`` that
keep the scratch database as files: that proves the shell's own logic (a leftover is
dropped only with the comment, a failing check never stops the others, cleanup always runs,
the app role's password kind is reported and the password itself is never there) without a
PostgreSQL server. app_over_tcp, run from the control machine, is tested in test_tunnel.py. The fake
psql runs a script statement by statement as psql does (ON_ERROR_STOP, BEGIN/COMMIT,
``\\echo``) and logs each statement with its session.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import textwrap
import typing
from datetime import datetime, timezone

import pytest

from pgvector_deploy import smoke
from pgvector_deploy.loading import load_settings
from pgvector_deploy.preflight import make_plan
from pgvector_deploy.shell import SAFE_PATH
from pgvector_deploy.smoke import (
    CHECKS,
    HOST_CHECKS,
    SCRATCH_COMMENT,
    SCRATCH_DATABASE,
    CheckResult,
    HostChecks,
    SmokeApp,
    SmokeChecks,
    SmokeStdin,
    format_table,
    merge,
    parse_host_checks,
    parse_smoke,
    redact,
    report_path,
    smoke_script,
    write_report,
)

from .conftest import sh_syntax_error

PASSWORD = "s3cret:pa$$w0rd'\\with\"quotes"
APP = SmokeApp(user="app", password=PASSWORD, database="appdb", address="172.17.0.1")


def all_pass_results():
    return [CheckResult(name, "pass", "fine") for name in CHECKS]


def all_pass_lines():
    """What the script prints when everything passes: its nine checks and the app role's kind."""
    return [f"check={name}|pass|fine" for name in HOST_CHECKS] + ["app_role|scram|"]


# --- SmokeApp --------------------------------------------------------------------------------


def test_smoke_app_repr_and_str_hide_the_password():
    for text in (repr(APP), str(APP), f"{APP}", str([APP])):
        assert PASSWORD not in text
        assert "password=<hidden>" in text and "'app'" in text and "172.17.0.1" in text


@pytest.mark.parametrize(
    "fields",
    [
        dict(user="", password="x", database="d", address=None),
        dict(user="u", password="", database="d", address=None),
        dict(user="u", password="a\nb", database="d", address=None),
        dict(user="u", password="x", database="d", address=""),
    ],
)
def test_smoke_app_refuses_empty_or_multiline_fields(fields):
    with pytest.raises(ValueError):
        SmokeApp(**fields)


# --- smoke_script: syntax, secrets, guards ---------------------------------------------------


@pytest.mark.parametrize("app_user", [None, "app", "o'neil $x"], ids=["no-app", "app", "odd-name"])
def test_script_is_valid_posix_sh(debian12, app_user):
    assert sh_syntax_error(smoke_script(debian12, 5432, "0.8.0", app_user)) == ""


# Where the template may put a value: a NAME={{ value }} line of its parameter block or a
# comment (text, shell-quoted, one line), or anywhere for these (whole numbers, ShellCode).
ANYWHERE = {"as_postgres", "major", "port", "rows", "ivfflat_lists"}


def test_every_value_in_the_template_is_a_quoted_word_a_number_or_shell_code(debian12, monkeypatch):
    template = (smoke.TEMPLATES / smoke.SCRIPT_TEMPLATE).read_text()
    seen = set()
    for line in template.splitlines():
        for name in re.findall(r"\{\{\s*(\w+)\s*\}\}", line):
            seen.add(name)
            if name in ANYWHERE:
                continue
            assert re.fullmatch(rf"[A-Z_0-9]+=\{{\{{ {name} \}}\}}", line) or line.startswith("#"), line
    assert "{%" not in template.replace("{% if stored_sql is not none %}", "").replace("{% else %}", "").replace("{% endif %}", "")
    given = {}
    monkeypatch.setattr(smoke, "render_script", lambda values: given.update(values) or "")
    smoke_script(debian12, 5432, "0.8.0", "app")
    assert seen == set(given)
    for name in ANYWHERE:
        assert type(given[name]) in (int, smoke.ShellCode), name


HOSTILE = ["it's", 'a "b" $HOME `id` $(id) \\ \\\'', "-n", "", " lead; trail ", "*", "~root", "é ü"]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_value_reaches_the_script_exactly_as_given(debian12, value):
    names = ["scratch", "version", "pg_config", "comment_sql", "basics_sql", "casts_sql", "casts_want",
             "casts_detail", "distances_sql", "hnsw_options", "ivfflat_options", "stored_sql"]  # fmt: skip
    values = {name: value for name in names}
    values.update(script_path="/x", host_lock="/y", safe_path=SAFE_PATH, as_postgres=smoke.ShellCode("psql"),
                  major=15, port=5432, rows=500, ivfflat_lists=10)  # fmt: skip
    script = smoke.render_script(values)
    assert sh_syntax_error(script) == ""
    got = parameters(script)
    assert set(got.values()) == {value} and len(got) == len(names)


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\0b", None, 1.5, True, ["x"]])
def test_the_template_refuses_a_line_break_nul_or_anything_but_text_numbers_and_shell_code(value):
    with pytest.raises((ValueError, TypeError)):
        smoke.shell_word(value)
    assert smoke.shell_word(smoke.ShellCode("a b")) == "a b" and smoke.shell_word(7) == "7"


def test_script_is_pure(debian12):
    assert smoke_script(debian12, 5432, "0.8.0", "app") == smoke_script(debian12, 5432, "0.8.0", "app")


def test_script_runs_every_check_once_and_cleanup_last(debian12):
    script = smoke_script(debian12, 5432, "0.8.0", None)
    calls = re.findall(r"^  (?:beside \w+ )?(check_\w+)(?: (\w+))?", script.split("main() {", 1)[1], re.M)
    names = [arg if fn == "check_index" else fn[len("check_"):] for fn, arg in calls]
    assert sorted(names) == sorted([*HOST_CHECKS, "app_role"])  # app_over_tcp runs on the control machine
    assert names[-1] == "cleanup"
    main = script.split("main() {", 1)[1]
    assert main.index("  collect\n") < main.index("  check_cleanup")  # nothing runs beside the cleanup


def test_checks_run_beside_the_chain_only_when_they_need_no_scratch_database(debian12):
    main = smoke_script(debian12, 5432, "0.8.0", None).split("main() {", 1)[1]
    beside = re.findall(r"^  beside (\w+) check_", main, re.M)
    assert beside == ["extension_files", "app_role", "hnsw_index"]
    # The HNSW check starts only once vector exists in the scratch database, and nothing runs
    # beside CREATE DATABASE (it waits while other sessions start).
    assert main.index("  check_create_extension") < main.index("  beside hnsw_index")
    assert main.index("  check_template1_has_vector") < main.index("  beside ")


def test_the_script_never_holds_the_password_nor_logs_in_as_the_app(debian12):
    assert list(inspect.signature(smoke_script).parameters) == ["platform", "port", "version", "app_user"]
    script = smoke_script(debian12, 5432, "0.8.0", APP.user)
    assert "s3cret" not in script and PASSWORD not in script
    assert "PGPASSFILE=" not in script and "pgpass" not in script and "PGPASSWORD=" not in script
    assert "-U " not in script and "-h 172.17.0.1" not in script  # no TCP login on the host
    assert script.count("mktemp") == 1 and "results=$(mktemp -d)" in script  # the only temporary


def test_the_script_names_the_role_and_reports_how_its_password_is_stored(debian12):
    script = smoke_script(debian12, 5432, "0.8.0", "o'neil")
    role = function(script, "check_app_role")
    sql = (
        "SELECT coalesce((SELECT CASE WHEN rolpassword IS NULL THEN 'none' "
        "WHEN rolpassword LIKE 'SCRAM-SHA-256$%' THEN 'scram' ELSE 'other' END "
        "FROM pg_catalog.pg_authid WHERE rolname = 'o''neil'), 'absent')"
    )
    assert f"\nSTORED_SQL={shlex.quote(sql)}\n" in script  # an SQL literal, shell-quoted
    assert parameters(script)["STORED_SQL"] == sql
    assert 'stored=$(sql postgres "$STORED_SQL") ||' in role
    assert "printf 'app_role|%s|\\n' \"$stored\"" in role


def test_script_is_private_and_removes_its_results(debian12):
    script = smoke_script(debian12, 5432, "0.8.0", APP.user)
    head = script.split("report() {", 1)[0]
    assert "umask 077" in head
    assert "trap '[ -z \"$results\" ] || rm -rf \"$results\"' EXIT" in head
    assert not re.search(r"^\s*set -\w*e", script, re.M)


def test_without_an_app_role_the_script_looks_up_none(debian12):
    script = smoke_script(debian12, 5432, "0.8.0", None)
    assert "rolpassword" not in script and "pg_authid" not in script
    assert function(script, "check_app_role") == "  :"


def function(script, name):
    return script.split(f"\n{name}() {{\n", 1)[1].split("\n}\n", 1)[0]


def parameters(script):
    """The script's parameter block (NAME=<quoted value> lines at its top), as sh reads it."""
    block = script.split("\n# The parameters", 1)[1].split("\n", 1)[1].split("\nscratch=\n", 1)[0]
    names = re.findall(r"^([A-Z_0-9]+)=", block, re.M)
    show = "".join(f'printf "%s\\0" "${name}"\n' for name in names)
    done = subprocess.run(["sh", "-c", block + "\n" + show], capture_output=True, text=True, timeout=10, check=True)
    return dict(zip(names, done.stdout.split("\0")))


def test_every_drop_is_guarded_by_the_comment_or_this_runs_creation(debian12):
    script = smoke_script(debian12, 5432, "0.8.0", None)
    assert script.count("DROP DATABASE IF EXISTS $SCRATCH WITH (FORCE)") == 2
    assert script.count("DROP DATABASE") == 2 + script.count("DROP DATABASE $SCRATCH failed")
    # In make_scratch the only DROP is in the "ours" branch (the comment matched).
    make = function(script, "make_scratch")
    assert re.search(r"ours\)\n\s+out=\$\(sql postgres \"DROP DATABASE IF EXISTS \$SCRATCH", make)
    assert "shobj_description(oid, 'pg_database') = $COMMENT_SQL" in function(script, "scratch_state")
    assert parameters(script)["COMMENT_SQL"] == f"'{SCRATCH_COMMENT}'"
    # In cleanup: state is "ours" only when this run created it or the lookup found the
    # comment; absent and foreign return before the DROP.
    cleanup = function(script, "check_cleanup")
    assert cleanup.index('if [ -n "$created" ]; then\n    state=ours\n  elif ! scratch_state; then') < cleanup.index("DROP")
    foreign = cleanup.index("    foreign)\n")
    assert cleanup.index("return ;;", foreign) < cleanup.index("DROP")
    assert "created=1" in make and script.count("created=1") == 1


def test_the_scratch_database_is_made_from_template1_and_commented_right_after_creation(debian12):
    script = smoke_script(debian12, 5432, "0.8.0", None)
    make = function(script, "make_scratch")
    # One psql session (ON_ERROR_STOP): nothing runs between CREATE and COMMENT.
    assert (
        "sql_stdin postgres <<SQL\n"
        "CREATE DATABASE $SCRATCH TEMPLATE template1;\n"
        "\\echo scratch_created\n"
        "COMMENT ON DATABASE $SCRATCH IS $COMMENT_SQL;\n"
        "SQL\n"
    ) in make
    assert script.count("CREATE DATABASE $SCRATCH TEMPLATE template1;") == 1
    assert len(re.findall(r"^CREATE DATABASE", script, re.M)) == 1
    assert f"SCRATCH={SCRATCH_DATABASE}\n" in script
    assert "template0" not in script and "_t1" not in script and "SCRATCH_T1" not in script


def test_template1_is_read_before_create_extension_runs(debian12):
    script = smoke_script(debian12, 5432, "0.8.0", None)
    template1 = function(script, "check_template1_has_vector")
    assert re.findall(r"\$\(sql\w* [^\n]*", template1) == [
        '$(sql "$SCRATCH" "SELECT extversion FROM pg_extension WHERE extname = \'vector\'") || {'
    ]
    create = function(script, "check_create_extension")
    assert "BEGIN;\nDROP EXTENSION IF EXISTS vector CASCADE;\nCREATE EXTENSION vector;\nCOMMIT;\n" in create
    assert list(CHECKS).index("template1_has_vector") < list(CHECKS).index("create_extension")


def test_index_checks_are_small_and_name_their_build_parameters(debian12):
    script = smoke_script(debian12, 5432, "0.8.0", None)
    assert smoke.INDEX_ROWS <= 500 and smoke.INDEX_ROWS >= smoke.IVFFLAT_LISTS
    assert 'check_index hnsw_index hnsw "$HNSW_OPTIONS"\n' in script
    assert 'check_index ivfflat_index ivfflat "$IVFFLAT_OPTIONS"\n' in script
    assert parameters(script)["HNSW_OPTIONS"] == "WITH (m = 8, ef_construction = 32)"
    assert parameters(script)["IVFFLAT_OPTIONS"] == f"WITH (lists = {smoke.IVFFLAT_LISTS})"
    assert f"SET ivfflat.probes = {smoke.IVFFLAT_LISTS};" in script
    assert f"generate_series(1, {smoke.INDEX_ROWS})" in script
    assert "CREATE TEMPORARY TABLE $table" in script


def test_script_uses_the_platform_binaries_and_port(debian12):
    script = smoke_script(debian12, 5433, "0.8.6", APP.user)
    assert "runuser -u postgres -- /usr/lib/postgresql/15/bin/psql" in script
    assert "-h /var/run/postgresql -p 5433" in script
    assert '"$PG_CONFIG" --sharedir' in script
    assert parameters(script)["PG_CONFIG"] == "/usr/lib/postgresql/15/bin/pg_config"
    assert "WANT=0.8.6\n" in script


def test_every_function_runs_with_stdin_from_dev_null(debian12):
    # The script arrives on sh's stdin: a command reading stdin would eat the rest of it.
    script = smoke_script(debian12, 5432, "0.8.0", APP.user)
    assert script.rstrip().endswith("main </dev/null\nexit 0")


# --- the script run against a fake PostgreSQL -------------------------------------------------

FAKE_PSQL = r'''
import os, sys
state = os.environ["FAKE_PG"]
args = sys.argv[1:]
db = args[args.index("-d") + 1] if "-d" in args else ""
if "-c" in args:  # one query string: several statements in it are one transaction
    commands = [args[args.index("-c") + 1]]
else:  # a script: backslash commands on their own line, SQL up to a line ending in ";"
    commands, pending = [], []
    for line in sys.stdin.read().splitlines():
        if not pending and line.startswith("\\"):
            commands.append(line)
            continue
        pending.append(line)
        if line.rstrip().endswith(";"):
            commands.append(" ".join(" ".join(pending).split()).rstrip(";"))
            pending = []
log = open(os.path.join(state, "log"), "a")
def path(kind, name): return os.path.join(state, f"{kind}_{name}")
def read(kind, name, default=""):
    return open(path(kind, name)).read() if os.path.exists(path(kind, name)) else default
def error(text):
    print(f"ERROR:  {text}\nLINE 1: ...", file=sys.stderr); sys.exit(3)  # ON_ERROR_STOP
def fail_if(key):
    if os.path.exists(path("fail", key)): error(f"fake failure of {key}")
if "-U" in args:  # nothing on the host logs in as the app
    print("fake psql: a TCP login on the host", file=sys.stderr); sys.exit(2)
extension = read("ext", db, None)  # this database's vector version; None: not created
in_transaction = False
index = None
for sql in commands:
    log.write(f"{os.getpid()}\t{db}\t{sql}\n"); log.flush()
    words = sql.split()
    if ("DATABASE" in words[:2]) and ("-c" in args and ";" in sql.rstrip(";") or in_transaction):
        error(f"{' '.join(words[:2])} cannot run inside a transaction block")
    if sql.startswith("\\echo "): print(sql[len("\\echo "):])
    elif sql == "BEGIN": in_transaction = True
    elif sql == "COMMIT":
        in_transaction = False
        if extension is None:
            if os.path.exists(path("ext", db)): os.remove(path("ext", db))
        else: open(path("ext", db), "w").write(extension)
    elif sql.startswith("SET "): pass
    elif sql.startswith("SHOW server_version_num"): print("150020")
    elif "FROM pg_database WHERE datname = '" in sql and "CASE WHEN" in sql:
        name = sql.split("datname = '")[1].split("'")[0]
        if os.path.exists(path("db", name)): print(read("db", name))
    elif sql.startswith("DROP DATABASE"):
        fail_if("drop")
        for kind in ("db", "ext"):
            if os.path.exists(path(kind, words[4])): os.remove(path(kind, words[4]))
    elif sql.startswith("CREATE DATABASE"):
        fail_if("create_database")
        if os.path.exists(path("db", words[2])): error(f'database "{words[2]}" already exists')
        assert words[3:] == ["TEMPLATE", "template1"], words
        open(path("db", words[2]), "w").write("foreign")  # no comment yet
        template1 = read("ext", "template1", None)
        if template1 is not None: open(path("ext", words[2]), "w").write(template1)
    elif sql.startswith("COMMENT ON DATABASE"):
        fail_if("comment"); open(path("db", words[3]), "w").write("ours")
    elif sql == "DROP EXTENSION IF EXISTS vector CASCADE": extension = None
    elif sql == "CREATE EXTENSION vector":
        fail_if("create_extension")
        if extension is not None: error('extension "vector" already exists')
        extension = read("control", "default_version")
    elif sql.startswith("SELECT 'basics', "):
        fail_if("casts")
        print(f"basics|{extension}|[1,2,3] [1,2,3] {{1:1,3:2}}/3|5|1|-32|t")
    elif sql == "SELECT extversion FROM pg_extension WHERE extname = 'vector'":
        if extension is not None: print(extension)
    elif "::sparsevec" in sql: fail_if("casts"); print("[1,2,3] [1,2,3] {1:1,3:2}/3")
    elif "<#>" in sql: print("5|1|-32|t")
    elif sql.startswith(("CREATE TEMPORARY TABLE", "INSERT INTO", "ANALYZE")): pass
    elif sql.startswith("CREATE INDEX"):
        index, method = words[2], words[6]
        fail_if(method)
    elif sql.startswith("EXPLAIN"):
        print(f"Limit\n  ->  Index Scan using {index} on x\n        Order By: (embedding <-> '[10,20,30]'::vector)")
    elif sql.startswith("SELECT 'rows='"): print("rows=5")
    elif "rolpassword" in sql: fail_if("role"); print(read("role", "kind", "scram"))
    elif sql.startswith("SELECT count(*) FROM pg_database"):
        name = sql.split("datname = '")[1].split("'")[0]
        print(1 if read("db", name) == "ours" else 0)
    else:
        print(f"fake psql: unexpected SQL {sql!r}", file=sys.stderr); sys.exit(3)
'''


@pytest.fixture
def fake_host(tmp_path, debian12):
    """A platform whose binaries are fakes in tmp_path, and a runner for the script."""
    bindir = tmp_path / "bin"
    share, lib, state = tmp_path / "share", tmp_path / "lib", tmp_path / "state"
    for directory in (bindir, share / "extension", lib, state):
        directory.mkdir(parents=True)
    (state / "ext_template1").write_text("0.8.0")  # what template1 gives a new database
    (state / "control_default_version").write_text("0.8.0")  # what CREATE EXTENSION gives
    (share / "extension" / "vector.control").write_text("default_version = '0.8.0'\n")
    (lib / "vector.so").write_text("")
    scripts = {
        "psql": f"#!{sys.executable}\n{FAKE_PSQL}",
        "pg_config": textwrap.dedent(f"""\
            #!/bin/sh
            case $1 in
              --version) echo 'PostgreSQL 15.20' ;;
              --sharedir) echo {share} ;;
              --pkglibdir) echo {lib} ;;
            esac
            """),
        # runuser -u postgres -- CMD...: run CMD as ourselves
        "runuser": '#!/bin/sh\n[ "$1" = -u ] && shift 3\nexec "$@"\n',
    }
    for name, text in scripts.items():
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    platform = dataclasses.replace(debian12, bindir=str(bindir))

    class Host:
        def __init__(self):
            self.state = state

        def database(self, name, comment):
            (state / f"db_{name}").write_text(comment)

        def extension(self, database, version):
            """vector at this version in the database (None: not created there)."""
            if version is None:
                (state / f"ext_{database}").unlink()
            else:
                (state / f"ext_{database}").write_text(version)

        def databases(self):
            return {p.name[3:]: p.read_text() for p in state.glob("db_*")}

        def fail(self, what):
            (state / f"fail_{what}").write_text("")

        def log(self):
            """(session, database, statement) per statement the fake psql ran."""
            path = state / "log"
            return [tuple(line.split("\t", 2)) for line in path.read_text().splitlines()] if path.exists() else []

        def statements(self):
            return [sql for _session, _db, sql in self.log()]

        def run(self, app_user=None, version="0.8.0"):
            """(results of the nine checks by name, the script's process); ``app_role`` and
            ``app_role_error`` hold what it said of the app role."""
            script = smoke_script(platform, 5432, version, app_user)
            script = script.replace(f"PATH={SAFE_PATH}\n", f"PATH={bindir}:{SAFE_PATH}\n", 1)
            env = {"FAKE_PG": str(state), "PATH": os.environ["PATH"], "TMPDIR": str(tmp_path)}
            done = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True, env=env, timeout=60)
            assert done.returncode == 0, done.stderr
            checked = parse_host_checks(done.stdout.splitlines())
            self.app_role, self.app_role_error = checked.app_role, checked.app_role_error
            return {r.name: r for r in checked.results}, done

    return Host()


DEPENDENT = ("extversion", "casts", "distances", "hnsw_index", "ivfflat_index")
CREATE = f"CREATE DATABASE {SCRATCH_DATABASE} TEMPLATE template1"
COMMENT = f"COMMENT ON DATABASE {SCRATCH_DATABASE} IS '{SCRATCH_COMMENT}'"
DROP = f"DROP DATABASE IF EXISTS {SCRATCH_DATABASE} WITH (FORCE)"
READ_EXTVERSION = "SELECT extversion FROM pg_extension WHERE extname = 'vector'"


def statuses(results):
    return {name: r.status for name, r in results.items()}


def test_fake_run_all_checks_pass_and_scratch_is_gone(fake_host):
    results, done = fake_host.run(APP.user)
    assert statuses(results) == {name: "pass" for name in HOST_CHECKS}
    assert fake_host.app_role == "scram"
    assert done.stderr == ""
    assert fake_host.databases() == {}
    assert "Index Scan using smoke_hnsw_idx" in results["hnsw_index"].detail
    assert "Index Scan using smoke_ivfflat_idx" in results["ivfflat_index"].detail
    assert results["distances"].detail == "<-> 5, <=> 1, <#> -32"
    assert results["extversion"].detail == "vector 0.8.0"
    assert results["template1_has_vector"].detail == f"vector 0.8.0 in {SCRATCH_DATABASE} (from template1) without CREATE EXTENSION"
    assert results["cleanup"].detail == f"{SCRATCH_DATABASE} is gone"
    log = fake_host.log()
    statements = fake_host.statements()
    # One scratch database, made from template1, commented in the same session right after.
    assert [sql for sql in statements if sql.startswith("CREATE DATABASE")] == [CREATE]
    create = statements.index(CREATE)
    assert statements[create + 1 : create + 3] == ["\\echo scratch_created", COMMENT]
    assert log[create][0] == log[create + 2][0]
    # template1's extversion is read before CREATE EXTENSION, which follows DROP EXTENSION
    # in one transaction in the scratch database.
    extension = statements.index("CREATE EXTENSION vector")
    assert statements.index(READ_EXTVERSION) < extension
    assert statements[extension - 3 : extension + 2] == [
        "SET client_min_messages = warning", "BEGIN", "DROP EXTENSION IF EXISTS vector CASCADE",
        "CREATE EXTENSION vector", "COMMIT",
    ]
    assert log[extension][1] == SCRATCH_DATABASE
    # extversion, casts and distances came from one query in that same session.
    (basics,) = [i for i, sql in enumerate(statements) if sql.startswith("SELECT 'basics'")]
    assert log[basics][0] == log[extension][0]
    assert statements.count(READ_EXTVERSION) == 1 and not [sql for sql in statements if sql.startswith("SELECT '[1,2,3]'")]
    # Cleanup dropped it (this run made it: no lookup first) and checked it was gone.
    assert statements[-2:] == [DROP, f"SELECT count(*) FROM pg_database WHERE datname = '{SCRATCH_DATABASE}' "
                               f"AND shobj_description(oid, 'pg_database') = '{SCRATCH_COMMENT}'"]


def test_fake_run_costs_eight_psql_sessions_without_the_app_and_nine_with_it(fake_host):
    fake_host.run()
    assert fake_host.app_role is None
    assert len({session for session, _db, _sql in fake_host.log()}) == 8
    (fake_host.state / "log").unlink()
    fake_host.run(APP.user)
    assert len({session for session, _db, _sql in fake_host.log()}) == 9


@pytest.mark.parametrize("kind", ["scram", "none", "other", "absent"])
def test_fake_run_reports_how_the_app_roles_password_is_stored(fake_host, tmp_path, kind):
    (fake_host.state / "role_kind").write_text(kind)
    results, _ = fake_host.run(APP.user)
    assert fake_host.app_role == kind
    assert statuses(results) == {name: "pass" for name in HOST_CHECKS}
    assert list(tmp_path.glob("tmp.*")) == []  # no temporary left behind


def test_fake_run_a_failed_role_lookup_is_reported_and_the_rest_runs(fake_host):
    fake_host.fail("role")
    results, _ = fake_host.run(APP.user)
    assert fake_host.app_role == "error"
    assert fake_host.app_role_error.startswith("ERROR: fake failure of role")
    assert statuses(results) == {name: "pass" for name in HOST_CHECKS}


def test_fake_run_drops_a_leftover_that_carries_the_comment(fake_host):
    fake_host.database(SCRATCH_DATABASE, "ours")
    fake_host.extension(SCRATCH_DATABASE, "0.7.0")
    results, _ = fake_host.run()
    assert statuses(results) == {name: "pass" for name in HOST_CHECKS}
    statements = fake_host.statements()
    assert statements.index(DROP) < statements.index(CREATE)
    assert statements.count(DROP) == 2  # the leftover, then cleanup
    assert fake_host.databases() == {}


def test_fake_run_never_drops_a_database_without_the_comment(fake_host):
    fake_host.database(SCRATCH_DATABASE, "foreign")
    results, _ = fake_host.run(APP.user)
    assert not [sql for sql in fake_host.statements() if "DROP DATABASE" in sql or "CREATE DATABASE" in sql]
    assert not [db for _session, db, _sql in fake_host.log() if db == SCRATCH_DATABASE]  # never even connected
    assert fake_host.databases() == {SCRATCH_DATABASE: "foreign"}
    for name in ("template1_has_vector", "create_extension"):
        assert results[name].status == "fail"
        assert "not this suite's scratch database" in results[name].detail
        assert "left untouched" in results[name].detail
    for name in DEPENDENT:
        assert results[name].status == "skip"
        assert "create_extension failed" in results[name].detail
    # The other checks still ran.
    assert results["extension_files"].status == "pass"
    assert fake_host.app_role == "scram"
    assert results["cleanup"].status == "pass"
    assert "left untouched" in results["cleanup"].detail


def test_fake_run_a_failing_check_does_not_stop_the_others_and_cleanup_runs(fake_host):
    fake_host.fail("create_extension")
    results, _ = fake_host.run(APP.user)
    assert results["create_extension"].status == "fail"
    assert "fake failure of create_extension" in results["create_extension"].detail
    assert results["template1_has_vector"].status == "pass"
    assert all(results[name].status == "skip" for name in DEPENDENT)
    assert fake_host.app_role == "scram"
    assert results["cleanup"].status == "pass"
    assert fake_host.databases() == {}


def test_fake_run_a_failing_index_check_does_not_stop_the_next(fake_host):
    fake_host.fail("hnsw")
    results, _ = fake_host.run()
    assert results["hnsw_index"].status == "fail"
    assert "fake failure of hnsw" in results["hnsw_index"].detail
    assert results["ivfflat_index"].status == "pass"
    assert results["cleanup"].status == "pass"
    assert fake_host.databases() == {}


def test_fake_run_when_the_shared_query_fails_each_check_runs_its_own(fake_host):
    fake_host.fail("casts")  # a cast error fails the shared query too
    results, _ = fake_host.run()
    assert results["create_extension"].status == "pass"
    assert results["extversion"].status == "pass" and results["extversion"].detail == "vector 0.8.0"
    assert results["casts"].status == "fail"
    assert "fake failure of casts" in results["casts"].detail
    assert results["distances"].status == "pass" and results["distances"].detail == "<-> 5, <=> 1, <#> -32"
    assert results["hnsw_index"].status == "pass"
    statements = fake_host.statements()
    assert statements.count(READ_EXTVERSION) == 2  # template1_has_vector's and extversion's own


def test_fake_run_template1_without_vector_fails_only_that_check(fake_host):
    fake_host.extension("template1", None)
    results, _ = fake_host.run()
    assert results["template1_has_vector"].status == "fail"
    assert "has no vector extension" in results["template1_has_vector"].detail
    assert all(results[name].status == "pass" for name in ("create_extension", *DEPENDENT, "cleanup"))


def test_fake_run_cleanup_drops_what_it_created_even_when_the_comment_failed(fake_host):
    fake_host.fail("comment")
    results, _ = fake_host.run()
    assert results["template1_has_vector"].status == "fail"
    assert results["template1_has_vector"].detail.startswith(f"COMMENT ON DATABASE {SCRATCH_DATABASE} failed: ERROR:")
    assert results["create_extension"].status == "fail"
    assert all(results[name].status == "skip" for name in DEPENDENT)
    assert results["cleanup"].status == "pass"
    assert DROP in fake_host.statements()
    assert fake_host.databases() == {}


def test_fake_run_when_create_database_fails_nothing_is_dropped(fake_host):
    fake_host.fail("create_database")
    results, _ = fake_host.run()
    assert results["template1_has_vector"].detail.startswith(f"{CREATE} failed: ERROR: fake failure")
    assert "scratch_created" not in results["template1_has_vector"].detail
    assert results["create_extension"].status == "fail"
    assert results["cleanup"].status == "pass"
    assert not [sql for sql in fake_host.statements() if "DROP DATABASE" in sql]


def test_fake_run_reports_a_cleanup_failure(fake_host):
    fake_host.fail("drop")
    results, _ = fake_host.run()
    assert results["cleanup"].status == "fail"
    assert "fake failure of drop" in results["cleanup"].detail
    assert fake_host.databases() == {SCRATCH_DATABASE: "ours"}


def test_fake_run_a_leftover_that_cannot_be_dropped_fails_the_scratch_checks(fake_host):
    fake_host.database(SCRATCH_DATABASE, "ours")
    fake_host.fail("drop")
    results, _ = fake_host.run()
    assert "could not drop the leftover scratch database" in results["template1_has_vector"].detail
    assert results["create_extension"].status == "fail"
    assert results["cleanup"].status == "fail"  # it tried again
    assert fake_host.statements().count(DROP) == 2
    assert CREATE not in fake_host.statements()


def test_fake_run_wrong_version_fails_extversion(fake_host):
    results, _ = fake_host.run(version="0.8.6")
    assert results["extversion"].status == "fail"
    assert "requested 0.8.6" in results["extversion"].detail
    assert results["template1_has_vector"].status == "fail"
    assert "requested 0.8.6" in results["template1_has_vector"].detail
    assert results["create_extension"].status == "pass"


def test_fake_run_missing_library_fails_extension_files(fake_host, tmp_path):
    (tmp_path / "lib" / "vector.so").unlink()
    results, _ = fake_host.run()
    assert results["extension_files"].status == "fail"
    assert f"{tmp_path}/lib/vector.so" in results["extension_files"].detail


# --- parse_smoke -------------------------------------------------------------------------------


def test_parse_smoke_keeps_suite_order_and_details():
    lines = list(reversed(all_pass_lines()))
    lines[0] = "check=cleanup|fail|DROP failed: a|b|c"
    results = parse_smoke(["noise", *lines, ""])
    assert [r.name for r in results] == list(CHECKS)
    assert results[-1] == CheckResult("cleanup", "fail", "DROP failed: a|b|c")


def test_parse_smoke_turns_a_missing_check_into_a_failure():
    results = parse_smoke(all_pass_lines()[:3])
    assert [r.status for r in results[:3]] == ["pass"] * 3
    assert all(r.status == "fail" and "stopped before this check" in r.detail for r in results[3:])
    assert [r.status for r in parse_smoke([])] == ["fail"] * len(CHECKS)


def test_parse_smoke_unknown_status_fails_and_first_line_wins():
    lines = ["check=casts|maybe|hmm", "check=casts|pass|later", "check=extra|skip|why", "check=|pass|x"]
    results = parse_smoke(lines)
    by_name = {r.name: r for r in results}
    assert by_name["casts"] == CheckResult("casts", "fail", "unknown status 'maybe': hmm")
    assert results[-1] == CheckResult("extra", "skip", "why")
    assert len(results) == len(CHECKS) + 1


def test_parse_smoke_skip_keeps_its_reason():
    (result,) = [r for r in parse_smoke(["check=app_over_tcp|skip|no app role given\r"]) if r.name == "app_over_tcp"]
    assert result == CheckResult("app_over_tcp", "skip", "no app role given")


def test_fact_keeps_the_script_runs_it_under_the_host_lock_and_parses():
    fact = SmokeChecks()
    command = fact.command()
    assert "flock" in command and command.split("sh -c ", 1)[1].startswith(shlex.quote(smoke.save_and_run()))
    assert smoke.save_and_run().endswith(f"\nsh {smoke.SMOKE_SCRIPT} </dev/null")  # the way the README gives
    checked = fact.process(all_pass_lines())
    assert checked == HostChecks([CheckResult(name, "pass", "fine") for name in HOST_CHECKS], "scram", "")
    assert [r.status for r in SmokeChecks.default().results] == ["fail"] * len(HOST_CHECKS)
    assert SmokeChecks.default().app_role is None


def test_the_script_is_kept_private_on_the_host_and_run_from_there(tmp_path):
    path = tmp_path / "state" / "smoke.sh"
    script = "echo check=casts|pass|ran from $0\n"  # what a script reads of its own standard input: nothing
    for attempt in ("first", "second"):  # the second replaces the first
        body = script.replace("ran", f"{attempt} ran").replace("|", "\\|")
        done = subprocess.run(["sh", "-c", smoke.save_and_run(str(path))], input=body, capture_output=True, text=True, timeout=10)
        assert (done.returncode, done.stderr) == (0, "")
        assert done.stdout == f"check=casts|pass|{attempt} ran from {path}\n"
        assert path.read_text() == body
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert sorted(p.name for p in path.parent.iterdir()) == ["smoke.sh"]  # no temporary left
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    os.utime(path, ns=(1, 1))
    done = subprocess.run(["sh", "-c", smoke.save_and_run(str(path))], input=body, capture_output=True, text=True, timeout=10)
    assert done.stdout == f"check=casts|pass|second ran from {path}\n"
    assert path.stat().st_mtime_ns == 1  # the same script: the file left as it was
    assert sorted(p.name for p in path.parent.iterdir()) == ["smoke.sh"]


def keep_and_run(path, body: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", smoke.save_and_run(str(path))], input=body, capture_output=True, text=True, timeout=10)


def test_a_kept_script_that_others_could_change_is_replaced_though_its_content_is_the_same(tmp_path):
    """Run as root: the same content is not enough to keep the file; it must be root's, 0600,
    and no link (a link or a mode someone widened is replaced by a private file)."""
    path = tmp_path / "state" / "smoke.sh"
    body = "echo check=casts\\|pass\\|ran\n"
    assert keep_and_run(path, body).returncode == 0
    path.chmod(0o666)
    assert keep_and_run(path, body).stdout == "check=casts|pass|ran\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    elsewhere = tmp_path / "elsewhere.sh"
    elsewhere.write_text(body)
    path.unlink()
    path.symlink_to(elsewhere)
    assert keep_and_run(path, body).stdout == "check=casts|pass|ran\n"
    assert not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o600 and elsewhere.read_text() == body


def test_a_state_directory_others_can_write_in_is_refused_and_nothing_runs_from_it(tmp_path):
    path = tmp_path / "state" / "smoke.sh"
    path.parent.mkdir(mode=0o755)
    path.parent.chmod(0o777)
    done = keep_and_run(path, "echo check=casts\\|pass\\|ran\n")
    assert (done.returncode, done.stderr) == (0, "")
    assert "ran" not in done.stdout and not path.exists()
    results = parse_smoke(done.stdout.splitlines(), HOST_CHECKS)
    assert results[-1].name == "smoke_script" and results[-1].status == "fail"
    assert "is not root's alone" in results[-1].detail and "chmod 0755" in results[-1].detail


def test_a_script_that_cannot_be_kept_is_reported_by_a_line_of_its_own(tmp_path):
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "smoke.sh"  # its directory cannot be made: a file is in the way
    done = subprocess.run(["sh", "-c", smoke.save_and_run(str(path))], input="echo check=casts|pass|x\n",
                          capture_output=True, text=True, timeout=10)  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    results = parse_smoke(done.stdout.splitlines(), HOST_CHECKS)
    assert results[-1] == CheckResult("smoke_script", "fail", f"could not write the smoke script to {path} (is its disk full or read-only?)")
    assert all(r.status == "fail" and "stopped before" in r.detail for r in results[:-1])


def test_parse_host_checks_reads_the_role_line_and_only_the_nine_checks():
    checked = parse_host_checks(["check=casts|pass|ok", "app_role|error|ERROR:  no\tsuch  thing\r", "app_role|scram|"])
    assert [r.name for r in checked.results] == list(HOST_CHECKS)
    assert (checked.app_role, checked.app_role_error) == ("error", "ERROR: no such thing")
    assert "app_over_tcp" not in [r.name for r in checked.results]


def test_merge_puts_app_over_tcp_in_suite_order_and_the_host_cannot_forge_it():
    app_result = CheckResult("app_over_tcp", "fail", "from the control machine")
    host_results = parse_smoke([*all_pass_lines(), "check=app_over_tcp|pass|forged", "check=extra|skip|x"], HOST_CHECKS)
    merged = merge(host_results, app_result)
    assert [r.name for r in merged] == [*CHECKS, "extra"]
    assert merged[CHECKS.index("app_over_tcp")] == app_result


def test_stdin_wrapper_hides_the_script_and_feeds_pyinfra():
    from pyinfra.api.arguments import ConnectorArguments
    from pyinfra.api.util import raise_if_bad_type
    from pyinfra.connectors.util import write_stdin

    script = f"echo one\nprintf '%s' {shlex.quote(PASSWORD)}\n"
    wrapped = SmokeStdin(script)
    assert PASSWORD not in str(wrapped) and PASSWORD not in repr(wrapped) and PASSWORD not in f"{wrapped}"
    raise_if_bad_type(wrapped, typing.get_type_hints(ConnectorArguments)["_stdin"], TypeError, "_stdin")
    for _attempt in range(2):  # pyinfra reads it again when it retries with a sudo password
        buffer = io.BytesIO()
        buffer.close = lambda: None
        write_stdin(wrapped, buffer)
        assert buffer.getvalue().decode() == script


# --- report, table, redaction -------------------------------------------------------------------

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_write_report_makes_a_private_dir_and_file(tmp_path):
    results = all_pass_results()
    path = write_report(tmp_path / "reports", "db1.example.com", "0.8.0", results, now=NOW)
    assert path == tmp_path / "reports" / "smoke-db1.example.com.json"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    report = json.loads(path.read_text())
    assert report == {
        "host": "db1.example.com",
        "time": "2026-01-02T03:04:05Z",
        "pgvector_version": "0.8.0",
        "passed": True,
        "checks": [{"name": name, "status": "pass", "detail": "fine"} for name in CHECKS],
    }
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_write_report_replaces_the_previous_one_and_keeps_an_existing_dirs_mode(tmp_path):
    tmp_path.chmod(0o755)
    write_report(tmp_path, "h", "0.8.0", all_pass_results(), now=NOW)
    failing = parse_smoke(["check=casts|fail|bad"])
    path = write_report(tmp_path, "h", "0.8.0", failing, now=NOW)
    report = json.loads(path.read_text())
    assert report["passed"] is False
    assert {"name": "casts", "status": "fail", "detail": "bad"} in report["checks"]
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


def test_report_name_is_safe_for_any_host_name(tmp_path):
    assert report_path(tmp_path, "@local").name == "smoke-@local.json"
    assert report_path(tmp_path, "@docker/abc:1").name == "smoke-@docker_abc_1.json"
    assert report_path(tmp_path, "../../etc/x").parent == tmp_path


def test_redact_hides_a_leaked_password_in_details(tmp_path):
    results = [CheckResult("app_over_tcp", "fail", f"psql said {PASSWORD}!")]
    redacted = redact(results, PASSWORD)
    assert redacted == [CheckResult("app_over_tcp", "fail", "psql said <hidden>!")]
    assert redact(results, None) == results
    path = write_report(tmp_path, "h", "0.8.0", redacted, now=NOW)
    assert PASSWORD not in path.read_text()


def test_format_table_counts_and_aligns():
    results = parse_smoke(["check=extension_files|pass|ok", "check=app_over_tcp|skip|no app", "check=cleanup|pass|gone"])
    lines = format_table(results)
    assert lines[0] == "2 passed, 7 failed, 1 skipped"  # the 7 printed nothing
    assert lines[1].split() == ["check", "status", "detail"]
    assert lines[2] == "  extension_files       PASS    ok"
    assert lines[-2] == "  app_over_tcp          SKIP    no app"


# --- the operation ---------------------------------------------------------------------------


class StubHost:
    def __init__(self, lines, executing=True):
        self.state = type("State", (), {"is_executing": executing})()
        self.name = "db1"
        self.print_prefix = "[db1] "
        self.lines = lines
        self.asked = []
        self.noops = []

    def get_fact(self, fact, **kwargs):
        self.asked.append((fact, kwargs))
        return fact().process(self.lines)

    def noop(self, text):
        self.noops.append(text)


@pytest.fixture
def plan(fresh_profile):
    return make_plan(load_settings({}), fresh_profile)  # the default release


def run_verify(monkeypatch, stub, plan, tmp_path, app=None, app_status="pass"):
    """verify's commands; app_over_tcp (tested in test_tunnel.py) is recorded in
    ``stub.app_checks`` and gives ``app_status``."""
    stub.app_checks = []

    def app_check(target, app, port, checked):
        stub.app_checks.append((target, app, port, checked))
        return CheckResult("app_over_tcp", app_status, f"over the tunnel, {PASSWORD}")

    monkeypatch.setattr(smoke, "host", stub)
    monkeypatch.setattr(smoke, "check_app_over_tcp", app_check)
    return list(smoke.verify._inner(plan, app=app, report_dir=str(tmp_path / "reports")))


def test_verify_all_pass_yields_nothing_and_writes_the_report(monkeypatch, plan, tmp_path, caplog):
    stub = StubHost(all_pass_lines())
    with caplog.at_level("INFO", logger="pyinfra"):
        assert run_verify(monkeypatch, stub, plan, tmp_path, app=APP) == []
    ((fact, kwargs),) = stub.asked
    assert fact is SmokeChecks and set(kwargs) == {"_stdin"}
    assert kwargs["_stdin"].readlines() == smoke_script(plan.platform, 5432, "0.8.6", "app").splitlines(keepends=True)
    assert "".join(kwargs["_stdin"].readlines()).count("s3cret") == 0  # the password stays here
    # app_over_tcp ran here, after the host's checks, with what the host said of the role.
    ((target, app, port, checked),) = stub.app_checks
    assert (target, app, port, checked.app_role) == (stub, APP, 5432, "scram")
    report = json.loads((tmp_path / "reports" / "smoke-db1.json").read_text())
    assert report["passed"] is True and report["pgvector_version"] == "0.8.6"
    assert [check["name"] for check in report["checks"]] == list(CHECKS)
    assert report["checks"][CHECKS.index("app_over_tcp")]["detail"] == "over the tunnel, <hidden>"  # redacted
    assert PASSWORD not in caplog.text and PASSWORD not in json.dumps(report)
    assert "10 passed, 0 failed, 0 skipped" in caplog.text
    assert "[db1]   hnsw_index" in caplog.text


def test_verify_skips_count_as_success(monkeypatch, plan, tmp_path):
    lines = [line.replace("|pass|", "|skip|") if "hnsw_index" in line else line for line in all_pass_lines()]
    assert run_verify(monkeypatch, StubHost(lines), plan, tmp_path, app=APP, app_status="skip") == []


def test_verify_without_an_app_address_names_no_role_on_the_host(monkeypatch, plan, tmp_path):
    stub = StubHost(all_pass_lines())
    run_verify(monkeypatch, stub, plan, tmp_path, app=dataclasses.replace(APP, address=None))
    ((_fact, kwargs),) = stub.asked
    assert "rolpassword" not in "".join(kwargs["_stdin"].readlines())
    assert len(stub.app_checks) == 1  # which reports the skip


def test_verify_a_failing_app_over_tcp_fails_the_host(monkeypatch, plan, tmp_path):
    (command,) = run_verify(monkeypatch, StubHost(all_pass_lines()), plan, tmp_path, app=APP, app_status="fail")
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=10)
    assert done.stderr.startswith("vector smoke suite failed: app_over_tcp.")


def test_verify_failure_yields_one_failing_command_naming_the_checks(monkeypatch, plan, tmp_path):
    lines = [line.replace("|pass|", "|fail|") if line.split("|")[0] in ("check=casts", "check=cleanup") else line
             for line in all_pass_lines()]
    (command,) = run_verify(monkeypatch, StubHost(lines), plan, tmp_path)
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=10)
    assert done.returncode == 1
    assert done.stderr.startswith("vector smoke suite failed: casts, cleanup.")
    assert "smoke-db1.json" in done.stderr


def test_verify_does_nothing_while_pyinfra_detects_changes(monkeypatch, plan, tmp_path):
    stub = StubHost(all_pass_lines(), executing=False)
    assert run_verify(monkeypatch, stub, plan, tmp_path) == []
    assert stub.asked == [] and stub.noops
    assert not (tmp_path / "reports").exists()
