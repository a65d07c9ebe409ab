"""The configuration files the toolkit manages, and the one way it changes them.

Every managed file (pg_hba.conf, pg_ident.conf, conf.d/90-pgvector-deploy.conf,
conf.d/80-pgvector-tuning.conf, the include line in postgresql.conf) is changed the same way, in one shell command:

1. write the new file beside the old one; if it is the same (another run wrote it while this
   one waited for the host lock), leave both alone; else keep a copy of the current file under
   ``/var/lib/pgvector-deploy/backups/<its path>.bak-<time>`` (never next to it: on the RHEL
   family and Amazon Linux the configuration directory is the data directory), and keep only
   the newest ``KEEP_COPIES`` copies of each file;
2. move the new file into place;
3. let PostgreSQL check it (``pg_file_settings``, ``pg_hba_file_rules`` read the files on disk
   without loading them); on an error put the copy back and fail naming the error;
4. reload; and when PostgreSQL says a restart-only setting of that file is pending, restart if
   the run may (``pg_restart = allowed``), else print ``restart pending: <setting>`` and leave
   the server running. A restart that fails puts the copy back (or sets a new file aside) and
   restarts again with that, so a file we wrote never keeps PostgreSQL down.

Files PostgreSQL does not read (pgBackRest's, the backup scripts and units, the app's env
file) come from standard input instead (``install_from_stdin``: nothing of their content on a
command line): written private beside the old one, left alone when already so, a copy of the
old one kept (not of a file that holds a secret: ``keep_copy=False``), moved into place in one
rename. ``sha256_text`` is the digest the facts report for a file, to compare with the wanted
content.

Example::

    yield replace_file_script(path, text, "0644", SETTINGS_ERRORS_SQL, plan.platform, plan.port, "server settings")
    yield StringCommand(install_from_stdin(path, "0644", "root:root"), _stdin=text)
"""

from __future__ import annotations

import hashlib
import os
import shlex

from pyinfra import host, logger

from .errors import Var, fail
from .facts import PENDING_RESTART
from .paths import STATE_DIR
from .plan import Plan
from .platforms import Platform
from .shell import SAFE_PATH, as_postgres

BACKUP_DIR = f"{STATE_DIR}/backups"
AUTO_CONF = "postgresql.auto.conf"  # ALTER SYSTEM's file in the data directory, read last
KEEP_COPIES = 5
HEREDOC_MARKER = "PGVECTOR_DEPLOY_EOF"
RESTART_PENDING = "restart pending: "


def copies_dir(path: str, backups: str = BACKUP_DIR) -> str:
    """Where the copies of ``path`` go: its own path under the backup directory."""
    return f"{backups}{os.path.dirname(path)}"


def locate(path: str, backups: str = BACKUP_DIR) -> str:
    """Shell: the variables every snippet below uses (``file``, ``copies``, ``stamp``, ``backup``)."""
    return f"""file={shlex.quote(path)}
copies={shlex.quote(copies_dir(path, backups))}
backups={shlex.quote(backups)}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
backup="\""""


def keep_copy() -> str:
    """Shell: copy ``$file`` (if any) to ``$backup``, then prune; copies left next to the file by
    earlier versions move there too."""
    return f"""install -d -m 0700 "$backups"
install -d -m 0700 "$copies"
if [ -f "$file" ]; then backup="$copies/$(basename "$file").bak-$stamp"; cp -p "$file" "$backup"; fi
for old in "$file".bak-*; do
  if [ -f "$old" ]; then mv -f "$old" "$copies/"; fi
done
ls -1d "$copies/$(basename "$file")".bak-* 2>/dev/null | sort -r | tail -n +{KEEP_COPIES + 1} | xargs -r rm -f --"""


def set_aside() -> str:
    """Shell: move ``$file`` to ``$backup`` (the copy a failed restart puts back)."""
    return f"""{keep_copy()}
if [ -n "$backup" ]; then rm -f "$file"; fi"""


PUT_BACK = """put_back() {
  if [ -n "$backup" ]; then cp -p "$backup" "$file.pgvector-new" && mv -f "$file.pgvector-new" "$file"; rm -f "$backup"
  else rm -f "$file"; fi
}"""


def replace_file_script(
    path: str, content: str, mode: str, check_sql: str, platform: Platform, port: int, what: str, backups: str = BACKUP_DIR
) -> str:
    """Shell: keep a copy, write the new file, let PostgreSQL check it; on an error put the
    previous file back and fail naming the error (the running server is not touched)."""
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
{locate(path, backups)}
# Create conf.d if missing, but never touch an existing directory's mode: on Amazon Linux and
# the RHEL family the configuration lives in the data directory, which must stay 0700.
[ -d "$(dirname "$file")" ] || install -d -o postgres -g postgres -m 0755 "$(dirname "$file")"
cat > "$file.pgvector-new" <<'{marker}'
{content}{marker}
if cmp -s "$file.pgvector-new" "$file"; then
  rm -f "$file.pgvector-new"  # already so (another run wrote it while this one waited)
else
{keep_copy()}
chown postgres:postgres "$file.pgvector-new"
chmod {mode} "$file.pgvector-new"
mv -f "$file.pgvector-new" "$file"
{PUT_BACK}
if ! errors=$({check}); then
  put_back
  {unchecked}
fi
errors=$(printf '%s' "$errors" | tr '\\n' ';')
if [ -n "$errors" ]; then
  put_back
  {rejected}
fi
fi
"""


def sha256_text(text: str) -> str:
    """The sha256 of a file holding ``text`` (UTF-8), as the facts report a file's digest."""
    return hashlib.sha256(text.encode()).hexdigest()


def stdin_file_preamble(path: str, directory_fix: str | None = None, backups: str = BACKUP_DIR) -> str:
    """Shell that begins every writer of a file from standard input: ``locate``'s variables
    and ``$dir`` set, a path that is a directory refused (when ``directory_fix`` says what to
    do instead: ``mv`` would put the file inside it), the directory made (root's, 0755) if
    missing, and every file created from here on private (umask 077)."""
    refuse = f"\n[ ! -d \"$file\" ] || {fail(f'{path} is a directory. Fix: {directory_fix}')}" if directory_fix else ""
    return f"""set -eu
PATH={SAFE_PATH}
{locate(path, backups)}
dir=$(dirname "$file"){refuse}
[ -d "$dir" ] || install -d -m 0755 -o root -g root "$dir"
umask 077"""


def install_from_stdin(
    path: str,
    mode: str,
    owner: str,
    *,
    keep_copy: bool = True,
    directory_fix: str | None = None,
    temp_name: str = ".pgvector-deploy",
    backups: str = BACKUP_DIR,
) -> str:
    """Shell: standard input into ``path`` (mode, owner), replaced in one rename, a copy of the
    old file kept (``keep_copy``: not for a file holding a secret); left alone when already so
    (another run wrote it while this one waited for the lock). The temporary file, beside the
    file, is private from its creation and removed on any failure."""
    copy = (
        """if [ -f "$file" ]; then
  install -d -m 0700 "$backups" "$copies"
  backup="$copies/$(basename "$file").bak-$stamp"; cp -p "$file" "$backup"
fi
"""
        if keep_copy
        else ""
    )
    return f"""{stdin_file_preamble(path, directory_fix, backups)}
tmp=$(mktemp "$dir/{temp_name}.XXXXXX")
trap 'rm -f "$tmp"' EXIT
cat > "$tmp"
# Already so (another run wrote it while this one waited for the lock): leave it alone.
if cmp -s "$tmp" "$file" && [ "$(stat -c %a:%U:%G "$file")" = {mode}:{owner} ]; then exit 0; fi
{copy}chown {owner} "$tmp"
chmod {mode} "$tmp"
mv -f "$tmp" "$file"
trap - EXIT
"""


def restart_command(plan: Plan) -> str:
    platform = plan.platform
    if plan.profile["systemd"]:
        return f"systemctl restart {platform.service}"
    return f"PATH={SAFE_PATH}; {platform.restart_without_systemd}"


def reload_command(plan: Plan) -> str:
    return f"PATH={SAFE_PATH}; {as_postgres(plan.platform, plan.port, 'postgres', 'SELECT pg_catalog.pg_reload_conf()')} >/dev/null"


def restart_or_roll_back(plan: Plan, fix: str) -> str:
    """Shell: restart PostgreSQL; if it does not come back, put ``$backup`` back as ``$file``
    (or, for a file that is new, set it aside), restart with that, and fail naming ``fix``."""
    restart = restart_command(plan)
    back = fail(
        "PostgreSQL did not start with the new ", Var("file"), "; the previous file was put back (a new one set "
        f"aside, in {BACKUP_DIR}) and PostgreSQL restarted with it. Fix: {fix}",
    )  # fmt: skip
    return f"""if ! ( {restart} ); then
  if [ -n "${{backup:-}}" ]; then cp -p "$backup" "$file.pgvector-new" && mv -f "$file.pgvector-new" "$file"
  else install -d -m 0700 "$copies" && mv -f "$file" "$copies/$(basename "$file").bak-$stamp"; fi
  ( {restart} ) || true
  {back}
fi"""


def apply_restart(plan: Plan, where: str, fix: str) -> str:
    """Shell, after a reload: when PostgreSQL says a restart-only setting of ``$file`` (matching
    the SQL condition ``where``) is pending, restart (or roll back) if the run may; otherwise
    print ``restart pending: <settings>`` and leave the server running."""
    pending_sql = (
        "SELECT pg_catalog.string_agg(DISTINCT name, ', ') FROM pg_catalog.pg_file_settings "
        f"WHERE error = '{PENDING_RESTART}' AND {where}"
    )
    return restart_if_pending(plan, pending_sql, fix, "PostgreSQL keeps running with the previous value")


def restart_if_pending(plan: Plan, pending_sql: str, fix: str, meanwhile: str) -> str:
    """Shell: when ``pending_sql`` names settings waiting for a restart, restart (or roll back,
    naming ``fix``) if the run may; otherwise print ``restart pending: <settings>`` and what
    happens ``meanwhile``."""
    if plan.settings.restart_allowed:
        act = restart_or_roll_back(plan, fix)
    else:
        act = f'echo "{RESTART_PENDING}$pending (pg_restart = report: {meanwhile})"'
    return f"""pending=$({as_postgres(plan.platform, plan.port, 'postgres', pending_sql)})
if [ -n "$pending" ]; then
{act}
fi"""


def restart_decision(plan: Plan, settings: list[str]) -> None:
    """Say, while the plan is made, what this run restarts PostgreSQL for, or (``pg_restart =
    report``) that a restart is pending: the line the nightly report reads."""
    if not settings:
        return
    names = ", ".join(settings)
    if plan.settings.restart_allowed:
        logger.info(f"{host.print_prefix}restarting PostgreSQL for: {names}")
    else:
        logger.warning(f"{host.print_prefix}{RESTART_PENDING}{names}")


def pg_string(value: object) -> str:
    """``value`` as a quoted string of a PostgreSQL config file: single quotes doubled,
    backslashes doubled (PostgreSQL reads escapes there); a control character (a line break
    would end the setting and start another) raises instead. Host data is validated before;
    this is the template's own guard.

    >>> print(pg_string("10.0.1.10,localhost"), pg_string("it's"))
    '10.0.1.10,localhost' 'it''s'
    """
    text = str(value)
    if any(ord(char) < 32 or ord(char) == 127 for char in text):
        raise ValueError(f"{text!r} has a control character and cannot be written into a PostgreSQL config file")
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"
