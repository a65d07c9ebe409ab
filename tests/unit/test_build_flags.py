"""The pgvector build never breaks on a pg_config flag that names a missing file.

Amazon Linux 2023's ``pg_config --ldflags`` can carry ``-Wl,-dT,/builddir/.../.package_note-*.ld``,
a linker script that exists only in the package's build root (amazon-linux-2023 issue 529),
and rpm-config ``-specs=`` files; PGXS bakes the same flags into its Makefile.global. These
tests run the compile part of the real build script (``pgvector.build_script``): once with a
fake ``pg_config`` and ``make`` to see the flags it passes, once as a real build of the real
pgvector tarball against this machine's PostgreSQL 15, whose PGXS is given such a flag.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import tarfile
from pathlib import Path


from pgvector_deploy.loading import load_settings
from pgvector_deploy.pgvector import build_script, desired_stamp
from pgvector_deploy.platforms import PLATFORMS

from .conftest import skip_or_fail

VERSION = "0.8.6"
# The pinned releases beside the checkout (../shared), as CI has them.
TARBALLS = Path(__file__).resolve().parents[2].parent / "shared" / "pgvector-tarballs"
REAL_PG_CONFIG = "/usr/lib/postgresql/15/bin/pg_config"
PACKAGE_NOTE = "-Wl,-dT,/builddir/build/BUILD/postgresql-15.0/.package_note-postgresql15-15.0-1.amzn2023.0.1.x86_64.ld"


def compile_part(platform) -> str:
    """The build script's lines after the tarball is unpacked (``src=``) and before the staged
    files are placed (``cd "$work/stage"``): the flags and the two make runs."""
    settings = load_settings({"pgvector_portable": True})
    script = build_script(platform, settings, f"/var/cache/pgvector-deploy/pgvector-{VERSION}.tar.gz",
                          desired_stamp(settings, "x86_64", "PostgreSQL 15"), 5432)  # fmt: skip
    lines = script.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("src="))
    end = next(i for i, line in enumerate(lines) if line == 'cd "$work/stage"')
    return "\n".join(lines[start + 1 : end]) + "\n"


def platform_with_pg_config_in(key: str, bindir: Path):
    return dataclasses.replace(next(p for p in PLATFORMS if p.key == key), bindir=str(bindir))


def run_part(part: str, work: Path, path: str) -> subprocess.CompletedProcess:
    prologue = f'set -eu\nwork={work}\nsrc="$work/pgvector-{VERSION}"\n'
    return subprocess.run(["sh", "-c", prologue + part], capture_output=True, text=True, timeout=600,
                          env={"PATH": path, "LC_ALL": "C"})  # fmt: skip


FAKE_PG_CONFIG = """#!/bin/sh
case "$1" in
  --cflags) echo "-O2 -g -specs={present} -specs=/usr/lib/rpm/redhat/redhat-hardened-cc1 -fPIC" ;;
  --ldflags) echo "-Wl,-z,relro -Wl,--as-needed -specs=/usr/lib/rpm/redhat/redhat-hardened-ld -Wl,-T,{present} {note}" ;;
  --ldflags_sl) echo "-Wl,--script=/nonexistent/shlib.ld" ;;
  --libdir) echo /usr/lib64 ;;
  *) echo "fake pg_config: $*" >&2; exit 2 ;;
esac
"""
FAKE_MAKE = """#!/bin/sh
for arg in "$@"; do printf '%s\\n' "$arg"; done >> "$MAKE_ARGS"
echo --- >> "$MAKE_ARGS"
"""


def test_flags_naming_missing_files_are_dropped_and_the_rest_kept(tmp_path):
    present = tmp_path / "present.specs"
    present.write_text("")
    (tmp_path / "pg_config").write_text(FAKE_PG_CONFIG.format(present=present, note=PACKAGE_NOTE))
    (tmp_path / "make").write_text(FAKE_MAKE.replace("$MAKE_ARGS", str(tmp_path / "make-args")))
    for tool in ("pg_config", "make"):
        (tmp_path / tool).chmod(0o755)
    (tmp_path / f"pgvector-{VERSION}").mkdir()
    (tmp_path / f"pgvector-{VERSION}" / "vector.control").write_text("")
    part = compile_part(platform_with_pg_config_in("amzn-2023", tmp_path))

    result = run_part(part, tmp_path, f"{tmp_path}:/usr/bin:/bin")

    assert result.returncode == 0, result.stderr
    build, install = [run.strip("\n").split("\n") for run in (tmp_path / "make-args").read_text().split("---\n")[:2]]
    for args in (build, install):
        assert f"CFLAGS=-O2 -g -specs={present} -fPIC " in args
        assert f"LDFLAGS=-L/usr/lib64 -Wl,-z,relro -Wl,--as-needed -Wl,-T,{present} " in args
        assert "LDFLAGS_SL=" in args
        assert f"PG_CONFIG={tmp_path}/pg_config" in args
    # Each dropped flag is named on stderr, with the missing file.
    assert f"dropping {PACKAGE_NOTE} " in result.stderr
    assert "dropping -specs=/usr/lib/rpm/redhat/redhat-hardened-cc1 " in result.stderr
    assert "dropping -specs=/usr/lib/rpm/redhat/redhat-hardened-ld " in result.stderr
    assert "dropping -Wl,--script=/nonexistent/shlib.ld " in result.stderr


def test_flags_with_glob_characters_are_not_expanded(tmp_path):
    (tmp_path / "pg_config").write_text(
        "#!/bin/sh\ncase $1 in --libdir) echo /usr/lib ;; *) echo '-DX=* -I/usr/include/[a]' ;; esac\n"
    )
    (tmp_path / "make").write_text(FAKE_MAKE.replace("$MAKE_ARGS", str(tmp_path / "make-args")))
    for tool in ("pg_config", "make"):
        (tmp_path / tool).chmod(0o755)
    (tmp_path / f"pgvector-{VERSION}").mkdir()
    (tmp_path / f"pgvector-{VERSION}" / "vector.control").write_text("")
    (tmp_path / "decoy").write_text("")  # would be matched by an expanded '*'
    result = run_part(compile_part(platform_with_pg_config_in("rhel-9", tmp_path)), tmp_path, f"{tmp_path}:/usr/bin:/bin")
    assert result.returncode == 0, result.stderr
    assert "CFLAGS=-DX=* -I/usr/include/[a] " in (tmp_path / "make-args").read_text().splitlines()


def poisoned_pg_config(tmp_path: Path) -> Path:
    """A pg_config like Amazon Linux 2023's: PGXS's Makefile.global and ``--ldflags`` name a
    linker script from a build root that does not exist here; everything else is this
    machine's PostgreSQL 15."""
    real_pgxs = Path(subprocess.run([REAL_PG_CONFIG, "--pgxs"], capture_output=True, text=True, check=True).stdout.strip())
    pgxs = tmp_path / "pgxs"
    shutil.copytree(real_pgxs.parents[2], pgxs)  # .../lib/pgxs
    makefile_global = pgxs / "src" / "Makefile.global"
    text = makefile_global.read_text()
    assert "\nLDFLAGS = $(LDFLAGS_INTERNAL) " in text
    makefile_global.write_text(text.replace("\nLDFLAGS = $(LDFLAGS_INTERNAL) ", f"\nLDFLAGS = $(LDFLAGS_INTERNAL) {PACKAGE_NOTE} "))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "pg_config").write_text(f"""#!/bin/sh
case "$1" in
  --pgxs) echo {pgxs}/src/makefiles/pgxs.mk ;;
  --ldflags) echo "$({REAL_PG_CONFIG} --ldflags) {PACKAGE_NOTE}" ;;
  *) exec {REAL_PG_CONFIG} "$@" ;;
esac
""")
    (bindir / "pg_config").chmod(0o755)
    return bindir


def test_pgvector_links_although_pg_config_names_a_missing_linker_script(tmp_path):
    tarball = TARBALLS / f"v{VERSION}.tar.gz"
    missing = [what for what, ok in ((REAL_PG_CONFIG, Path(REAL_PG_CONFIG).exists()), (str(tarball), tarball.exists()),
                                     ("gcc", shutil.which("gcc")), ("make", shutil.which("make"))) if not ok]  # fmt: skip
    if missing:
        skip_or_fail(f"a real pgvector build needs {', '.join(missing)}")
    bindir = poisoned_pg_config(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    with tarfile.open(tarball) as archive:
        archive.extractall(work, filter="data")
    src = work / f"pgvector-{VERSION}"
    path = "/usr/local/bin:/usr/bin:/bin"

    # The poison bites: PGXS as it is cannot link (what the build did before).
    plain = subprocess.run(["make", "-C", str(src), "-j2", f"PG_CONFIG={bindir}/pg_config", "OPTFLAGS=", "with_llvm=no"],
                           capture_output=True, text=True, timeout=600, env={"PATH": path, "LC_ALL": "C"})  # fmt: skip
    assert plain.returncode != 0
    assert "cannot open linker script file" in plain.stderr

    # The build script's own compile part links and stages vector.so.
    result = run_part(compile_part(platform_with_pg_config_in("debian-12", bindir)), work, path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"dropping {PACKAGE_NOTE} " in result.stderr
    pkglibdir = subprocess.run([REAL_PG_CONFIG, "--pkglibdir"], capture_output=True, text=True, check=True).stdout.strip()
    library = work / "stage" / pkglibdir.lstrip("/") / "vector.so"
    assert library.is_file()
    assert b"\x7fELF" == library.read_bytes()[:4]
    assert list((work / "stage").rglob("vector.control"))
