"""The vector smoke suite (pgvector_deploy.smoke): its script, its parser, its report.

The script is also run for real here, against a fake ``psql``/``pg_config``/``runuser`` that
keep the scratch databases as files: that proves the shell's own logic (a leftover is
dropped only with the comment, a failing check never stops the others, cleanup always runs,
the password reaches psql only through a PGPASSFILE) without a PostgreSQL server.
"""

from __future__ import annotations

import dataclasses
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
from pathlib import Path

import pytest

from pgvector_deploy import smoke
from pgvector_deploy.preflight import make_plan
from pgvector_deploy.settings import load_settings
from pgvector_deploy.shell import SAFE_PATH
from pgvector_deploy.smoke import (
    CHECKS,
    SCRATCH_COMMENT,
    SCRATCH_DATABASE,
    SCRATCH_DATABASE_T1,
    CheckResult,
    SmokeApp,
    SmokeChecks,
    SmokeStdin,
    format_table,
    parse_smoke,
    pgpass_line,
    redact,
    report_path,
    smoke_script,
    write_report,
)

from .conftest import sh_syntax_error

PASSWORD = "s3cret:pa$$w0rd'\\with\"quotes"
APP = SmokeApp(user="app", password=PASSWORD, database="appdb", address="172.17.0.1")


def all_pass_lines():
    return [f"check={name}|pass|fine" for name in CHECKS]


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


def test_pgpass_line_escapes_colons_and_backslashes():
    app = SmokeApp("a:b", "p\\w:d", "db", "fe80::1")
    assert pgpass_line(app, 5432) == "fe80\\:\\:1:5432:db:a\\:b:p\\\\w\\:d"


# --- smoke_script: syntax, secrets, guards ---------------------------------------------------


@pytest.mark.parametrize("app", [None, APP, dataclasses.replace(APP, address=None)], ids=["no-app", "app", "no-address"])
def test_script_is_valid_posix_sh(debian12, app):
    assert sh_syntax_error(smoke_script(debian12, 5432, "0.8.0", app)) == ""


def test_script_is_pure(debian12):
    assert smoke_script(debian12, 5432, "0.8.0", APP) == smoke_script(debian12, 5432, "0.8.0", APP)


def test_script_reports_every_check_in_order(debian12):
    script = smoke_script(debian12, 5432, "0.8.0", None)
    calls = re.findall(r"^  (check_\w+)(?: (\w+))?", script.split("main() {", 1)[1], re.M)
    names = [arg if fn == "check_index" else fn[len("check_"):] for fn, arg in calls]
    assert names == list(CHECKS)


def test_password_appears_once_only_in_the_pgpassfile_line(debian12):
    script = smoke_script(debian12, 5432, "0.8.0", APP)
    quoted = shlex.quote(pgpass_line(APP, 5432))
    assert script.count(quoted) == 1
    assert script.count("s3cret") == 1  # no other copy of it, quoted or not
    (line,) = [line for line in script.splitlines() if "s3cret" in line]
    # A shell builtin writes it into the mktemp file: never a command's argument (ps).
    assert line.strip() == f"printf '%s\\n' {quoted} > \"$pgpass\""
    assert shlex.split(line)[2] == pgpass_line(APP, 5432)
    before = script[: script.index(line)]
    assert before.rstrip().endswith('pgpass=$(mktemp) || { report app_over_tcp fail "mktemp failed"; return; }')


def test_pgpassfile_is_private_and_removed(debian12):
    script = smoke_script(debian12, 5432, "0.8.0", APP)
    head = script.split("report() {", 1)[0]
    assert "umask 077" in head
    assert "trap '[ -z \"$pgpass\" ] || rm -f \"$pgpass\"' EXIT" in head
    assert 'pgpass=$(mktemp)' in script
    assert 'PGPASSFILE="$pgpass"' in script
    assert not re.search(r"^\s*set -\w*e", script, re.M)


@pytest.mark.parametrize("app", [None, dataclasses.replace(APP, address=None)])
def test_without_app_or_address_the_password_is_absent_and_the_check_skips(debian12, app):
    script = smoke_script(debian12, 5432, "0.8.0", app)
    assert PASSWORD not in script
    assert "mktemp" not in script and "PGPASSFILE=" not in script
    assert re.search(r"report app_over_tcp skip '[^']+'", script)


def test_every_drop_is_guarded_by_the_comment_or_this_runs_creation(debian12):
    script = smoke_script(debian12, 5432, "0.8.0", None)
    drops = [line for line in script.splitlines() if 'sql postgres "DROP DATABASE' in line]
    assert len(drops) == 2
    make = script.split("make_scratch() {", 1)[1].split("\n}\n", 1)[0]
    # In make_scratch the only DROP is in the "ours" branch (the comment matched).
    assert re.search(r"ours\)\n\s+out=\$\(sql postgres \"DROP DATABASE", make)
    assert f"shobj_description(oid, 'pg_database') = '{SCRATCH_COMMENT}'" in script
    drop = script.split("drop_scratch() {", 1)[1].split("\n}\n", 1)[0]
    assert re.search(r'foreign\)\n\s+if \[ -z "\$2" \]; then\n\s+kept=', drop)


def test_scratch_databases_are_commented_right_after_creation(debian12):
    script = smoke_script(debian12, 5432, "0.8.0", None)
    make = script.split("make_scratch() {", 1)[1].split("\n}\n", 1)[0]
    create = make.index('CREATE DATABASE $1 TEMPLATE $2')
    comment = make.index(f"COMMENT ON DATABASE $1 IS '{SCRATCH_COMMENT}'")
    assert create < comment
    assert make[create:comment].count("$(sql ") == 1  # nothing runs in between
    assert f"SCRATCH={SCRATCH_DATABASE}\n" in script and f"SCRATCH_T1={SCRATCH_DATABASE_T1}\n" in script


def test_script_uses_the_platform_binaries_and_port(debian12):
    script = smoke_script(debian12, 5433, "0.8.6", APP)
    assert "runuser -u postgres -- /usr/lib/postgresql/15/bin/psql" in script
    assert "-h /var/run/postgresql -p 5433" in script
    assert "/usr/lib/postgresql/15/bin/pg_config --sharedir" in script
    assert "/usr/lib/postgresql/15/bin/psql -X -A -t -w -v ON_ERROR_STOP=1 -h 172.17.0.1 -p 5433 -U app -d appdb" in script
    assert "WANT=0.8.6\n" in script


def test_every_function_runs_with_stdin_from_dev_null(debian12):
    # The script arrives on sh's stdin: a command reading stdin would eat the rest of it.
    script = smoke_script(debian12, 5432, "0.8.0", APP)
    assert script.rstrip().endswith("main </dev/null\nexit 0")


# --- the script run against a fake PostgreSQL -------------------------------------------------

FAKE_PSQL = r'''
import os, sys
state = os.environ["FAKE_PG"]
args = sys.argv[1:]
log = open(os.path.join(state, "log"), "a")
sql = args[args.index("-c") + 1] if "-c" in args else sys.stdin.read()
db = args[args.index("-d") + 1] if "-d" in args else ""
log.write(f"{db}\t{' '.join(sql.split())}\n")
def path(name): return os.path.join(state, "db_" + name)
def fail_if(key):
    if os.path.exists(os.path.join(state, "fail_" + key)):
        print(f"ERROR:  fake failure of {key}\nLINE 1: ...", file=sys.stderr); sys.exit(1)
if "-U" in args:  # the app, over TCP
    pgpass = os.environ.get("PGPASSFILE", "")
    if not os.path.exists(pgpass):
        print("psql: error: fe_sendauth: no password supplied", file=sys.stderr); sys.exit(2)
    mode = oct(os.stat(pgpass).st_mode & 0o777)
    open(os.path.join(state, "pgpass_seen"), "w").write(f"{pgpass}\n{mode}\n{open(pgpass).read()}")
    print("172.17.0.1|t"); sys.exit(0)
words = sql.split()
if sql.startswith("SHOW server_version_num"): print("150020")
elif "FROM pg_database WHERE datname = '" in sql:
    name = sql.split("datname = '")[1].split("'")[0]
    if os.path.exists(path(name)): print(open(path(name)).read())
elif sql.startswith("DROP DATABASE"):
    fail_if("drop"); os.remove(path(words[4]))
elif sql.startswith("CREATE DATABASE"):
    open(path(words[2]), "w").write("foreign")
elif sql.startswith("COMMENT ON DATABASE"):
    fail_if("comment"); open(path(words[3]), "w").write("ours")
elif sql == "CREATE EXTENSION vector": fail_if("create_extension")
elif "extversion" in sql: print("0.8.0")
elif "::sparsevec" in sql: print("[1,2,3] [1,2,3] {1:1,3:2}/3")
elif "<#>" in sql: print("5|1|-32|t")
elif "CREATE INDEX" in sql:
    index = sql.split("CREATE INDEX ")[1].split()[0]
    print(f"Limit\n  ->  Index Scan using {index} on x\n        Order By: (embedding <-> '[10,20,30]'::vector)\nrows=5")
elif "rolpassword" in sql: print("scram")
elif "string_agg" in sql:
    print(", ".join(sorted(n[3:] for n in os.listdir(state) if n.startswith("db_") and open(os.path.join(state, n)).read() == "ours")))
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

        def databases(self):
            return {p.name[3:]: p.read_text() for p in state.glob("db_*")}

        def fail(self, what):
            (state / f"fail_{what}").write_text("")

        def log(self):
            path = state / "log"
            return path.read_text().splitlines() if path.exists() else []

        def run(self, app=None, version="0.8.0"):
            script = smoke_script(platform, 5432, version, app)
            script = script.replace(f"PATH={SAFE_PATH}\n", f"PATH={bindir}:{SAFE_PATH}\n", 1)
            env = {"FAKE_PG": str(state), "PATH": os.environ["PATH"], "TMPDIR": str(tmp_path)}
            done = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True, env=env, timeout=60)
            assert done.returncode == 0, done.stderr
            return {r.name: r for r in parse_smoke(done.stdout.splitlines())}, done

    return Host()


def test_fake_run_all_checks_pass_and_scratch_is_gone(fake_host):
    results, done = fake_host.run(APP)
    assert {name: r.status for name, r in results.items()} == {name: "pass" for name in CHECKS}
    assert done.stderr == ""
    assert fake_host.databases() == {}
    assert "Index Scan using smoke_hnsw_idx" in results["hnsw_index"].detail
    assert "Index Scan using smoke_ivfflat_idx" in results["ivfflat_index"].detail
    assert results["distances"].detail == "<-> 5, <=> 1, <#> -32"
    # Each scratch database was commented right after it was created.
    log = [line.split("\t", 1)[1] for line in fake_host.log()]
    for name, template in ((SCRATCH_DATABASE, "template0"), (SCRATCH_DATABASE_T1, "template1")):
        create = log.index(f"CREATE DATABASE {name} TEMPLATE {template}")
        assert log[create + 1] == f"COMMENT ON DATABASE {name} IS '{SCRATCH_COMMENT}'"


def test_fake_run_the_password_reaches_psql_only_through_a_private_pgpassfile(fake_host, tmp_path):
    results, _ = fake_host.run(APP)
    assert results["app_over_tcp"].status == "pass"
    pgpass, mode, content = (fake_host.state / "pgpass_seen").read_text().split("\n", 2)
    assert mode == "0o600"
    assert content == pgpass_line(APP, 5432) + "\n"
    assert not Path(pgpass).exists()  # removed after use
    assert PASSWORD not in "\n".join(fake_host.log())
    assert list(tmp_path.glob("tmp.*")) == []


def test_fake_run_drops_a_leftover_that_carries_the_comment(fake_host):
    fake_host.database(SCRATCH_DATABASE, "ours")
    results, _ = fake_host.run()
    assert results["create_extension"].status == "pass"
    log = [line.split("\t", 1)[1] for line in fake_host.log()]
    assert log.index(f"DROP DATABASE IF EXISTS {SCRATCH_DATABASE} WITH (FORCE)") < log.index(
        f"CREATE DATABASE {SCRATCH_DATABASE} TEMPLATE template0"
    )
    assert fake_host.databases() == {}


def test_fake_run_never_drops_a_database_without_the_comment(fake_host):
    fake_host.database(SCRATCH_DATABASE, "foreign")
    fake_host.database(SCRATCH_DATABASE_T1, "foreign")
    results, _ = fake_host.run(APP)
    assert not [line for line in fake_host.log() if "DROP DATABASE" in line]
    assert fake_host.databases() == {SCRATCH_DATABASE: "foreign", SCRATCH_DATABASE_T1: "foreign"}
    for name in ("create_extension", "template1_has_vector"):
        assert results[name].status == "fail"
        assert "not this suite's scratch database" in results[name].detail
        assert "left untouched" in results[name].detail
    for name in ("extversion", "casts", "distances", "hnsw_index", "ivfflat_index"):
        assert results[name].status == "skip"
    # The other checks still ran.
    assert results["extension_files"].status == "pass"
    assert results["app_over_tcp"].status == "pass"
    assert results["cleanup"].status == "pass"
    assert "left untouched" in results["cleanup"].detail


def test_fake_run_a_failing_check_does_not_stop_the_others_and_cleanup_runs(fake_host):
    fake_host.fail("create_extension")
    results, _ = fake_host.run()
    assert results["create_extension"].status == "fail"
    assert "fake failure of create_extension" in results["create_extension"].detail
    assert results["template1_has_vector"].status == "pass"
    assert results["cleanup"].status == "pass"
    assert fake_host.databases() == {}


def test_fake_run_cleanup_drops_what_it_created_even_when_the_comment_failed(fake_host):
    fake_host.fail("comment")
    results, _ = fake_host.run()
    assert results["create_extension"].status == "fail"
    assert results["cleanup"].status == "pass"
    assert fake_host.databases() == {}


def test_fake_run_reports_a_cleanup_failure(fake_host):
    fake_host.fail("drop")
    results, _ = fake_host.run()
    assert results["cleanup"].status == "fail"
    assert "fake failure of drop" in results["cleanup"].detail


def test_fake_run_wrong_version_fails_extversion(fake_host):
    results, _ = fake_host.run(version="0.8.6")
    assert results["extversion"].status == "fail"
    assert "requested 0.8.6" in results["extversion"].detail
    assert results["template1_has_vector"].status == "fail"


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


def test_fact_runs_sh_s_and_parses():
    fact = SmokeChecks()
    command = fact.command()
    assert "flock" in command and command.split("sh -c ", 1)[1].startswith("'sh -s'")
    assert fact.process(all_pass_lines())[0] == CheckResult("extension_files", "pass", "fine")
    assert [r.status for r in SmokeChecks.default()] == ["fail"] * len(CHECKS)


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
    results = parse_smoke(all_pass_lines())
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
    write_report(tmp_path, "h", "0.8.0", parse_smoke(all_pass_lines()), now=NOW)
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
    return make_plan(load_settings({"pgvector_version": "0.8.0", "pgvector_allow_insecure": True}), fresh_profile)


def run_verify(monkeypatch, stub, plan, tmp_path, app=None):
    monkeypatch.setattr(smoke, "host", stub)
    return list(smoke.verify._inner(plan, app=app, report_dir=str(tmp_path / "reports")))


def test_verify_all_pass_yields_nothing_and_writes_the_report(monkeypatch, plan, tmp_path, caplog):
    stub = StubHost(all_pass_lines())
    with caplog.at_level("INFO", logger="pyinfra"):
        assert run_verify(monkeypatch, stub, plan, tmp_path, app=APP) == []
    ((fact, kwargs),) = stub.asked
    assert fact is SmokeChecks and set(kwargs) == {"_stdin"}
    assert kwargs["_stdin"].readlines() == smoke_script(plan.platform, 5432, "0.8.0", APP).splitlines(keepends=True)
    report = json.loads((tmp_path / "reports" / "smoke-db1.json").read_text())
    assert report["passed"] is True and report["pgvector_version"] == "0.8.0"
    assert PASSWORD not in caplog.text
    assert "10 passed, 0 failed, 0 skipped" in caplog.text
    assert "[db1]   hnsw_index" in caplog.text


def test_verify_skips_count_as_success(monkeypatch, plan, tmp_path):
    lines = [line.replace("|pass|", "|skip|") if "app_over_tcp" in line else line for line in all_pass_lines()]
    assert run_verify(monkeypatch, StubHost(lines), plan, tmp_path) == []


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
