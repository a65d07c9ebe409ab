"""pgvector compiled on the host itself, so the binary always matches the host.

Stages: ``fetch`` (download or upload the tarball, verify its sha256 before anything else
touches it), ``build`` (compile with the target major's ``pg_config``, install atomically,
verify, write the build stamp), ``extension`` (``ALTER EXTENSION vector UPDATE`` where a
database is behind, ``CREATE EXTENSION`` in template1 and postgres).

The build stamp records every input of a build. When it matches, nothing is downloaded or
compiled; when any input changes (version, checksum, flags, PostgreSQL version, arch) the
build runs again.

Example::

    pgvector.fetch(plan, name="pgvector tarball is on the host, verified")
    pgvector.build(plan, name="pgvector is compiled and installed")
    pgvector.extension(plan, name="vector extension is enabled and current")
"""

from __future__ import annotations

import json
import shlex

from pyinfra import host
from pyinfra.api import FileUploadCommand, operation

from .errors import Var, fail
from .facts import PgvectorState
from .paths import BUILD_LOG, CACHE_DIR, STATE_DIR
from .plan import Plan
from .platforms import Platform
from .releases import parse_version
from .settings import Settings
from .shell import SAFE_PATH, as_postgres, fails_host_on_error, host_locked

# Databases that get the extension: template1 so every new database (ORM shadow databases
# included) is born with it, and postgres.
EXTENSION_DATABASES = ("template1", "postgres")

# A missing clang must never break the build: PGXS compiles LLVM bitcode when pg_config
# says with_llvm=yes, which needs the exact clang the server was built with. Without it we
# lose only JIT inlining of pgvector's functions.
WITH_LLVM = "no"

# pg_config's compile and link flags, minus any that names a file missing on this host: on
# Amazon Linux 2023 `pg_config --ldflags` can carry -Wl,-dT,/builddir/.../.package_note-*.ld,
# a linker script from the package's own build root ("cannot open linker script file",
# amazon-linux-2023 issue 529), and -specs= files of an rpm-config package. PGXS links with
# $(CC) $(CFLAGS) ... $(LDFLAGS) $(LDFLAGS_SL), all baked from these values at configure time,
# so the build passes the kept flags as those make variables (LDFLAGS keeps PGXS's -L libdir).
KEPT_FLAGS = r"""kept_flags() {
  set -f
  for flag in $1; do
    case $flag in
      -Wl,-dT,*|-Wl,-T,*|-Wl,--script=*) file=${flag##*[,=]} ;;
      -specs=*|--specs=*) file=${flag#*=} ;;
      *) file= ;;
    esac
    if [ -n "$file" ] && [ ! -e "$file" ]; then
      echo "pgvector build: dropping $flag from pg_config's flags: $file does not exist on this host" >&2
    else
      printf '%s ' "$flag"
    fi
  done
  set +f
}"""


def desired_stamp(settings: Settings, arch: str, pg_version: str | None) -> dict:
    """Every input of a build; a build is redone when any of them differs."""
    return {
        "version": settings.version,
        "sha256": settings.release.sha256,
        "arch": arch,
        "pg_version": pg_version,
        "optflags": settings.optflags,
        "with_llvm": WITH_LLVM,
    }


def verify_and_store_script(candidate: str, dest: str, expected: str, source: str, version: str | None = None) -> str:
    """Shell: check ``candidate``'s sha256 (and, given ``version``, that it unpacks to
    ``pgvector-<version>/vector.control``), then move it to ``dest``; otherwise remove it.
    Both checks come before anything is installed, so bad input changes nothing."""
    layout = ""
    if version is not None:
        top = f"pgvector-{version}/vector.control"
        wrong = fail(
            f"the tarball from {source} has the right sha256 but is not pgvector {version} (no {top} in it). "
            "Nothing was built or installed. Fix: point pgvector_url or pgvector_tarball at the tag tarball "
            f"v{version}.tar.gz, and pgvector_sha256 at its digest."
        )
        layout = f"tar -tzf {candidate} 2>/dev/null | grep -qx {shlex.quote(top)} || {{ rm -f {candidate}; {wrong}; }}"
    mismatch = fail(
        f"pgvector tarball from {source} has sha256 ", Var("actual"), f", expected {expected}. "
        "Nothing was built or installed. Fix: use the genuine tarball, or correct pgvector_sha256 "
        "if the expected digest is wrong."
    )
    return f"""
actual=$(sha256sum {candidate} | cut -d' ' -f1)
if [ "$actual" != {expected} ]; then
  rm -f {candidate}
  {mismatch}
fi
{layout}
mkdir -p -m 0755 {CACHE_DIR}
chmod 0644 {candidate}
mv -f {candidate} {shlex.quote(dest)}
"""


def _cached_guard(dest: str, expected: str) -> str:
    """Shell: stop here (success) when ``dest`` already has the ``expected`` sha256 (another
    run stored it while this one waited for the lock)."""
    quoted = shlex.quote(dest)
    return f'[ -f {quoted} ] && [ "$(sha256sum < {quoted} | cut -d" " -f1)" = {expected} ] && exit 0'


def download_script(url: str, dest: str, expected: str, version: str | None = None) -> str:
    """Shell: download ``url`` to a temporary file, verify, then store it at ``dest``."""
    quoted_url = shlex.quote(url)
    cannot = fail(
        f"could not download the pgvector tarball from {url} (see the error above). Nothing was changed. "
        "Fix: check pgvector_url and that this host can reach it, or set pgvector_tarball to upload "
        "the tarball from the control machine."
    )
    return f"""set -eu
PATH={SAFE_PATH}
{_cached_guard(dest, expected)}
tmp=$(mktemp /var/tmp/pgvector-download.XXXXXX)
trap 'rm -f "$tmp"' EXIT
if command -v curl >/dev/null 2>&1; then
  curl -fsSL --retry 2 --connect-timeout 15 --max-time 600 -o "$tmp" {quoted_url} || {cannot}
elif command -v wget >/dev/null 2>&1; then
  wget -q -T 15 -O "$tmp" {quoted_url} || {cannot}
elif command -v python3 >/dev/null 2>&1; then
  python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' {quoted_url} "$tmp" || {cannot}
else
  {fail("no curl, wget or python3 on this host to download pgvector. Fix: install curl, or set pgvector_tarball to upload the tarball.")}
fi
{verify_and_store_script('"$tmp"', dest, expected, url, version)}"""


def build_script(platform: Platform, settings: Settings, tarball: str, stamp: dict, port: int) -> str:
    """Shell: compile, install atomically, verify, then write the stamp.

    Files are built into a staging directory (``make install DESTDIR=``) and each is renamed
    into place, the library first and ``vector.control`` last: a run killed half-way leaves
    the previous control file in charge, never a half-written file.
    """
    version = settings.version
    make_vars = (
        f"PG_CONFIG={platform.pg_config} OPTFLAGS={shlex.quote(settings.optflags)} with_llvm={WITH_LLVM} "
        'CFLAGS="$cflags" LDFLAGS="$ldflags" LDFLAGS_SL="$ldflags_sl"'
    )
    verify_sql = (
        "BEGIN; CREATE EXTENSION IF NOT EXISTS vector SCHEMA public; "
        "SELECT '[1,2,3]'::public.vector OPERATOR(public.<->) '[1,2,5]'::public.vector; ROLLBACK;"
    )
    stamp_json = json.dumps(stamp, sort_keys=True)
    return f"""set -eu
PATH={SAFE_PATH}
# Another run may have made this very build while this one waited for the lock: the stamp on
# disk, the library and the control file say so, read now.
sharedir=$({platform.pg_config} --sharedir)
if [ "$(cat {platform.build_stamp} 2>/dev/null)" = {shlex.quote(stamp_json)} ] && [ -f "$({platform.pg_config} --pkglibdir)/vector.so" ] \\
   && [ "$(sed -n "s/^default_version *= *'\\(.*\\)'/\\1/p" "$sharedir/extension/vector.control" 2>/dev/null)" = {version} ]; then
  echo "pgvector {version} is already built for $({platform.pg_config} --version) (build stamp {platform.build_stamp}); nothing to do"
  exit 0
fi
tarball={shlex.quote(tarball)}
[ -f "$tarball" ] || {fail(f"{tarball} is missing; the fetch step must run first.")}
actual=$(sha256sum "$tarball" | cut -d' ' -f1)
[ "$actual" = {settings.release.sha256} ] || {fail(f"{tarball} does not have sha256 {settings.release.sha256}; not building.")}
rm -rf /var/tmp/pgvector-build.*  # left by a run killed mid-build (we hold the host lock)
work=$(mktemp -d /var/tmp/pgvector-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
tar -xzf "$tarball" -C "$work"
src="$work/pgvector-{version}"
[ -f "$src/vector.control" ] || {fail(f"the tarball does not unpack to pgvector-{version}/ with a vector.control; is it pgvector {version}?")}
{KEPT_FLAGS}
cflags=$(kept_flags "$({platform.pg_config} --cflags)")
ldflags="-L$({platform.pg_config} --libdir) $(kept_flags "$({platform.pg_config} --ldflags)")"
ldflags_sl=$(kept_flags "$({platform.pg_config} --ldflags_sl)")
make -C "$src" -j"$(nproc)" {make_vars}
make -C "$src" install {make_vars} DESTDIR="$work/stage"
cd "$work/stage"
place() {{ mkdir -p "$(dirname "/$1")" && cp -p "$1" "/$1.pgvector-new" && mv -f "/$1.pgvector-new" "/$1"; }}
find . -type f ! -name vector.control | sort | while IFS= read -r file; do place "${{file#./}}"; done
control=$(find . -type f -name vector.control)
[ -n "$control" ] || {fail("make install produced no vector.control")}
place "${{control#./}}"
installed=$(sed -n "s/^default_version *= *'\\(.*\\)'/\\1/p" "$({platform.pg_config} --sharedir)/extension/vector.control")
[ "$installed" = {version} ] || {fail("installed vector.control says default_version ", Var("installed"), f", expected {version}")}
{as_postgres(platform, port, "postgres", verify_sql)} >/dev/null
mkdir -p -m 0755 {STATE_DIR}
printf '%s\\n' {shlex.quote(stamp_json)} > {platform.build_stamp}.new
mv -f {platform.build_stamp}.new {platform.build_stamp}
built="pgvector {version} built and installed for $({platform.pg_config} --version)"
printf '%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$built" >> {BUILD_LOG}
echo "$built"
"""


def is_current(state: dict, stamp: dict) -> bool:
    return (
        state["stamp"] == stamp
        and state["library"] is not None
        and state["control_version"] == stamp["version"]
    )


@operation()
@host_locked
@fails_host_on_error
def fetch(plan: Plan):
    """Put the verified tarball in the host's cache: uploaded from the control machine when
    ``pgvector_tarball`` is set, else downloaded by the host. Skipped when it is already there.

    .. code:: python

        pgvector.fetch(plan)
    """
    settings = plan.settings
    expected = settings.release.sha256
    if plan.profile["cached_tarball_sha256"] == expected:
        host.noop(f"{plan.cached_tarball} already verified")
        return
    # Not files.put / files.download: both put the file in place before its sha256 is checked (a
    # bad tarball would stay in the cache) and ask File and checksum facts in every run.
    if settings.tarball is not None:
        upload = f"/var/tmp/pgvector-upload-{expected[:16]}.tar.gz"
        yield FileUploadCommand(str(settings.tarball), upload)
        yield f"set -eu; PATH={SAFE_PATH}\n" + verify_and_store_script(
            upload, plan.cached_tarball, expected, f"the control machine ({settings.tarball})", settings.version
        )
    else:
        yield download_script(settings.url, plan.cached_tarball, expected, settings.version)


@operation()
@host_locked
@fails_host_on_error
def build(plan: Plan):
    """Compile and install pgvector unless the build stamp says this exact build is in place.

    .. code:: python

        pgvector.build(plan)
    """
    state = plan.fact(PgvectorState, platform=plan.platform, port=plan.port)
    stamp = desired_stamp(plan.settings, plan.profile["arch"], state["pg_version"])
    if is_current(state, stamp):
        host.noop(f"pgvector {plan.settings.version} already built for {state['pg_version']}")
        return
    wanted = parse_version(plan.settings.version)
    newer = {db: v for db, v in state["databases"].items() if v and _newer_than(v, wanted)}
    if newer:
        listing = ", ".join(f"{db} has {v}" for db, v in sorted(newer.items()))
        yield fail(
            f"refusing to install pgvector {plan.settings.version}: {listing}, and pgvector has no "
            f"downgrade path. Nothing was changed. Fix: set pgvector_version to at least the newest of those."
        )
        return
    yield build_script(plan.platform, plan.settings, plan.cached_tarball, stamp, plan.port)


def _newer_than(version: str, wanted: tuple[int, int, int]) -> bool:
    try:
        return parse_version(version) > wanted
    except ValueError:
        return False


@operation()
@host_locked
@fails_host_on_error
def extension(plan: Plan):
    """Bring every database's ``vector`` up to the built version, and create the extension in
    template1 and postgres.

    .. code:: python

        pgvector.extension(plan)
    """
    state = plan.fact(PgvectorState, platform=plan.platform, port=plan.port)
    version = plan.settings.version
    changed = False
    for database, installed in sorted(state["databases"].items()):
        if installed and installed != version:
            changed = True
            sql = f"ALTER EXTENSION vector UPDATE TO '{version}'"
            yield f"PATH={SAFE_PATH}; {as_postgres(plan.platform, plan.port, database, sql)}"
    for database in EXTENSION_DATABASES:
        if not state["databases"].get(database):
            changed = True
            yield f"PATH={SAFE_PATH}; {as_postgres(plan.platform, plan.port, database, 'CREATE EXTENSION IF NOT EXISTS vector SCHEMA public')}"
    if not changed:
        host.noop(f"vector {version} in every database that has it, and in {', '.join(EXTENSION_DATABASES)}")
