"""Migration files (pgvector_deploy.migration_files): reading the folder, and what the deploy
refuses inside a file, before anything runs on a host."""

from __future__ import annotations

import hashlib

import pytest

from pgvector_deploy.migration_files import MigrationError, parse_migration, read_folder, sql_problems

from .conftest import write


def test_folder_is_read_in_name_order_with_checksums_of_the_bytes(tmp_path):
    write(tmp_path, {"0002_b.sql": "SELECT 2;\n", "0010_c.sql": "SELECT 10;\n", "0001_a.sql": "SELECT 1;\n"})
    found = read_folder(tmp_path)
    assert [m.name for m in found] == ["0001_a.sql", "0002_b.sql", "0010_c.sql"]
    assert found[0].sha256 == hashlib.sha256(b"SELECT 1;\n").hexdigest()
    assert found[0].sql == "SELECT 1;\n"


def test_name_order_is_plain_string_order(tmp_path):
    """Not numeric: 10_ sorts before 9_, which is why names should be zero-padded."""
    write(tmp_path, {"9_a.sql": "SELECT 9;", "10_b.sql": "SELECT 10;"})
    assert [m.name for m in read_folder(tmp_path)] == ["10_b.sql", "9_a.sql"]


def test_other_files_hidden_files_and_subfolders_are_ignored(tmp_path):
    write(tmp_path, {"0001_a.sql": "SELECT 1;", "README.md": "# notes", ".0002_swap.sql": "junk", "0003.sql.orig": "x"})
    write(tmp_path / "example", {"0002_in_subfolder.sql": "SELECT 2;"})
    assert [m.name for m in read_folder(tmp_path)] == ["0001_a.sql"]


@pytest.mark.parametrize("name", ["0001 add table.sql", "0001_ä.sql", "-0001.sql", "0001;rm.sql", "x" * 130 + ".sql"])
def test_names_outside_the_plain_set_are_refused(tmp_path, name):
    write(tmp_path, {name: "SELECT 1;"})
    with pytest.raises(MigrationError, match="Fix: rename it"):
        read_folder(tmp_path)


def test_a_file_that_is_not_utf8_is_refused(tmp_path):
    (tmp_path / "0001_latin1.sql").write_bytes("SELECT 'é';".encode("latin-1"))
    with pytest.raises(MigrationError, match=r"0001_latin1.sql: not UTF-8 .*Fix: save the file as UTF-8"):
        read_folder(tmp_path)


def test_a_bom_is_left_out_of_the_sql_but_counted_in_the_checksum():
    raw = "\ufeffSELECT 1;\n".encode()
    found = parse_migration("0001_bom.sql", raw)
    assert found.sql == "SELECT 1;\n"
    assert found.sha256 == hashlib.sha256(raw).hexdigest()


def test_a_problem_names_the_file_and_line():
    with pytest.raises(MigrationError) as error:
        parse_migration("0004_x.sql", b"CREATE TABLE t (id int);\n\nCOMMIT;\n")
    assert str(error.value).startswith("0004_x.sql line 3: COMMIT starts or ends a transaction")
    assert "Fix:" in str(error.value)


@pytest.mark.parametrize(
    "sql, line, start",
    [
        ("BEGIN;\nCREATE TABLE t (id int);\nCOMMIT;", 1, "BEGIN starts or ends a transaction"),
        ("CREATE TABLE t (id int);\ncommit", 2, "COMMIT starts or ends"),
        ("START TRANSACTION;", 1, "START starts or ends"),
        ("SELECT 1;\n  END;", 2, "END starts or ends"),
        ("rollback;", 1, "ROLLBACK starts or ends"),
        ("ABORT;", 1, "ABORT starts or ends"),
        ("PREPARE TRANSACTION 'x';", 1, "PREPARE TRANSACTION ends"),
        ("SET ROLE postgres;", 1, "SET ROLE changes who runs the migration"),
        ("set session authorization postgres;", 1, "SET SESSION AUTHORIZATION changes who"),
        ("SET LOCAL ROLE postgres;", 1, "SET LOCAL ROLE changes who"),
        ("RESET ROLE;", 1, "RESET ROLE changes who"),
        ("RESET ALL;", 1, "RESET ALL changes who"),
        ("COPY items (id) FROM stdin;\n1\n", 1, "COPY ... FROM STDIN reads data"),
        ("SELECT 1;\n\\c postgres\n", 2, "a backslash outside quotes is a psql command"),
        ("\\i /etc/passwd", 1, "a backslash outside quotes"),
        ("SELECT 1 \\gexec", 1, "a backslash outside quotes"),
        ("SELECT 'open;\nSELECT 2;", 1, "a quoted string is never closed"),
        ('SELECT "open', 1, 'a quoted name (") is never closed'),
        ("SELECT 1;\n/* open\n", 2, "a /* comment is never closed"),
        ("DO $x$ BEGIN\nEND $y$;", 1, "a $x$ quoted string is never closed"),
        ("CREATE TABLE t (\n  id int;\n", 1, "the last statement never ends"),
    ],
)
def test_refused_sql(sql, line, start):
    problems = sql_problems(sql)
    assert problems, sql
    assert problems[0][0] == line
    assert problems[0][1].startswith(start), problems[0][1]
    assert "Fix:" in problems[0][1]


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TABLE documents (id bigserial PRIMARY KEY, embedding vector(3));",
        "CREATE INDEX ON documents USING hnsw (embedding vector_l2_ops);",
        "DO $$ BEGIN RAISE NOTICE 'x'; COMMIT; END $$;",  # inside a dollar quote
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$\nBEGIN\n  RETURN 1;\nEND;\n$body$;",
        "CREATE FUNCTION g() RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT 1;\nEND;",  # psql's rule
        "SELECT CASE WHEN true THEN 'begin' ELSE 'commit' END;",
        "SELECT 'it''s; COMMIT;';",
        "SELECT E'it\\'s \\\\ fine; COMMIT';",
        'CREATE TABLE "commit" ("begin" int);',
        "-- COMMIT; in a comment\nSELECT 1; /* ROLLBACK; /* nested */ still comment */",
        "PREPARE q(int) AS SELECT $1; EXECUTE q(1);",
        "SET LOCAL lock_timeout = '5s'; SET search_path TO public;",
        "COPY items TO '/dev/null';",  # refused by the server (needs pg_write_server_files), not by us
        "SELECT 1",  # no final semicolon: the deploy ends the statement
        "",
        "-- only a comment",
    ],
)
def test_accepted_sql(sql):
    assert sql_problems(sql) == []


def test_every_problem_is_reported_in_line_order():
    problems = sql_problems("SET ROLE x;\nSELECT 1;\nCOMMIT;\n\\q\n")
    assert [line for line, _ in problems] == [1, 3, 4]


def test_a_begin_column_is_not_refused():
    """psql counts BEGIN only in CREATE [OR REPLACE] FUNCTION|PROCEDURE bodies: a column named
    begin is ordinary SQL (refused as 'never ends' before)."""
    assert sql_problems("CREATE TABLE shifts (id int, begin timestamptz);\nSELECT 1;\n") == []
    assert sql_problems("SELECT CASE WHEN true THEN 1 END AS begin;") == []


def test_an_end_after_a_begin_column_is_refused_naming_its_line():
    problems = sql_problems("CREATE TABLE spans (id int, begin int);\nEND;\nCREATE TABLE after_end (x int);\n")
    assert problems and problems[0][0] == 2 and problems[0][1].startswith("END starts or ends a transaction"), problems


def test_concurrently_in_a_string_a_comment_or_refresh_is_not_refused():
    assert sql_problems("SELECT 'CREATE INDEX CONCURRENTLY x'; -- VACUUM\nREFRESH MATERIALIZED VIEW CONCURRENTLY v;") == []
    assert sql_problems('CREATE TABLE vacuum_log ("vacuum" int);') == []


def test_a_notx_file_accepts_them_but_no_backslash_at_all():
    assert parse_migration("0003_i.notx.sql", b"CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (x);\n").name == "0003_i.notx.sql"
    with pytest.raises(MigrationError, match=r"0003_i.notx.sql line 1: .*backslash"):
        parse_migration("0003_i.notx.sql", b"SELECT E'\\\\';\n")


@pytest.mark.parametrize("sql", ["SAVEPOINT s;", "RELEASE SAVEPOINT s;", "RELEASE s;", "ROLLBACK TO SAVEPOINT s;", "COPY items TO STDOUT;"])
def test_statements_the_wrapper_refuses_are_refused_before_anything_runs(sql):
    problems = sql_problems(f"SELECT 1;\n{sql}\n")
    assert problems and problems[0][0] == 2 and "Fix:" in problems[0][1], problems
