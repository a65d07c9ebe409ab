"""Backups to S3 with pgBackRest, continuous WAL archiving, schedules, restore and the drill.

With ``pg_backup_s3_bucket`` set, the deploy:

1. installs pgBackRest from the distribution (``Platform.backup_packages``; ``packages``);
2. writes ``/etc/pgbackrest/pgbackrest.conf`` (0600 postgres: it holds the repository's
   passphrase, which reaches the host on standard input only), after pgBackRest has reached
   the bucket with the new file (a missing bucket or no credentials fail here, nothing
   changed), then creates the stanza (``repository``);
3. turns archiving on in ``conf.d/70-pgvector-backups.conf`` (archive_mode needs one restart,
   done or reported as ``pg_restart`` decides, like every restart; ``archiving``);
4. installs the scripts (``files/backups/``), their settings file and the systemd timers, or a
   cron file without systemd (``schedules``);
5. takes the first full backup when the repository has none (``first_backup``).

Credentials: pgBackRest's ``repo1-s3-key-type=auto``: the instance role, through IMDSv2. No
static key is written on the host.

``restore`` (deploy/restore.py) brings a backup back onto a fresh host, refusing (nothing
changed) a cluster that holds databases unless ``restore_over_existing``.

Example::

    backups.packages(plan, name="pgBackRest is installed")
    backups.repository(plan, name="pgBackRest repository in S3 is configured")
"""

from __future__ import annotations

import json
import shlex
from datetime import datetime, timezone
from pathlib import Path

from pyinfra import host, logger
from pyinfra.api import StringCommand, operation

from .errors import Var, fail
from .facts import PGBR, PGBR_CONFIG, SETTINGS_ERRORS_SQL, STANZA, BackupReport, BackupState
from .managed_files import (
    AUTO_CONF,
    apply_restart,
    install_from_stdin,
    locate,
    reload_command,
    replace_file_script,
    restart_decision,
    restart_if_pending,
    set_aside,
    sha256_text,
)
from .paths import DRILL_DIR
from .plan import Plan
from .platforms import Platform
from .settings import WEEKDAYS, Schedule
from .shell import SAFE_PATH, as_postgres, fails_host_on_error, host_locked

ENV_FILE = "/etc/pgvector-deploy/backup.env"
LIBDIR = "/usr/local/lib/pgvector-deploy"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"  # node_exporter's textfile collector (Debian's default)
ARCHIVE_FILE_NAME = "70-pgvector-backups.conf"
CRON_FILE = "/etc/cron.d/pgvector-deploy-backups"
UNIT_DIR = "/etc/systemd/system"
SCRIPTS_DIR = Path(__file__).resolve().parent / "files" / "backups"  # in the wheel; files links to ../files
SCRIPTS = ("pgvector-backup", "pgvector-backup-status", "pgvector-restore-drill")
# Every transaction is in S3 within a minute: a WAL segment is switched at least this often
# when anything was written.
ARCHIVE_TIMEOUT_S = 60
# A restore of the latest state over a cluster waits this long for its WAL backlog to reach S3.
DRAIN_WAIT_S = 300
RESTORE_COMMAND = f'pgbackrest --config={PGBR_CONFIG} --stanza={STANZA} archive-get %f "%p"'
# What pgBackRest's restore writes into postgresql.auto.conf for recovery (reset after it).
RECOVERY_SETTINGS = (
    "restore_command", "recovery_target", "recovery_target_time", "recovery_target_xid", "recovery_target_name",
    "recovery_target_lsn", "recovery_target_action", "recovery_target_inclusive", "recovery_target_timeline",
)  # fmt: skip
ARCHIVE_RESTART_FIX = (
    "look at PostgreSQL's log; archive_mode and archive_command in conf.d/70-pgvector-backups.conf need "
    "pgBackRest installed and /etc/pgbackrest/pgbackrest.conf readable by postgres."
)
# pgBackRest's first error line and, from an S3 error body, its code and message.
REASON = (
    "reason=$(printf '%s\\n' \"$out\" | grep -m1 -E 'ERROR|WARN' || printf '%s\\n' \"$out\" | tail -n1); "
    "s3=$(printf '%s' \"$out\" | sed -n 's:.*<Code>\\([A-Za-z]*\\)</Code><Message>\\([^<]*\\)</Message>.*:\\1, \\2:p' | head -n1); "
    "reason=$(printf '%s%s' \"$reason\" \"${s3:+ ($s3)}\" | tr '\\n' ' ')"
)


ARCHIVE_OFF_PENDING_SQL = (
    "SELECT pg_catalog.string_agg(name, ', ') FROM pg_catalog.pg_settings WHERE pending_restart AND name = 'archive_mode'"
)


def archive_path(platform: Platform) -> str:
    return f"{platform.config_dir}/conf.d/{ARCHIVE_FILE_NAME}"


# -- what we want --------------------------------------------------------------------------------


def render_config(plan: Plan) -> str:
    """pgbackrest.conf: the S3 repository (encrypted), retention, and the cluster."""
    backup = plan.settings.backup
    platform = plan.platform
    lines = [
        "# Managed by pgvector-deploy (pg_backup_* host data); readable by postgres alone: it holds the",
        "# repository's passphrase. Credentials: the instance role (IMDSv2) unless host data gives a static key.",
        "[global]",
        "repo1-type=s3",
        f"repo1-path=/{backup.prefix}",
        f"repo1-s3-bucket={backup.bucket}",
        f"repo1-s3-endpoint={backup.host}",
        f"repo1-s3-region={backup.region}",
        f"repo1-s3-uri-style={backup.uri_style}",
    ]
    if backup.access_key is None:
        lines.append("repo1-s3-key-type=auto")  # the instance role, through IMDSv2
    else:  # given explicitly in host data: in this 0600 file only
        lines += ["repo1-s3-key-type=shared", f"repo1-s3-key={backup.access_key[0]}", f"repo1-s3-key-secret={backup.access_key[1]}"]
    if backup.port is not None:
        lines.append(f"repo1-storage-port={backup.port}")
    if backup.ca_file:
        lines.append(f"repo1-storage-ca-file={backup.ca_file}")
    if backup.retention_days is not None:
        lines += ["repo1-retention-full-type=time", f"repo1-retention-full={backup.retention_days}"]
    else:
        lines += ["repo1-retention-full-type=count", f"repo1-retention-full={backup.retention_full}"]
    lines += [
        "repo1-cipher-type=aes-256-cbc",
        f"repo1-cipher-pass={backup.cipher_pass}",
        # Small files go to S3 together (fewer requests); zstd is fast and in Debian's build.
        "repo1-bundle=y",
        "compress-type=zst",
        "compress-level=3",
        f"process-max={max(1, min(4, int(plan.profile.get('cpus') or 1)))}",
        "start-fast=y",
        "log-level-console=warn",
        "log-level-file=info",
        "",
        f"[{STANZA}]",
        f"pg1-path={platform.data_dir}",
        f"pg1-port={int(plan.port)}",
        f"pg1-socket-path={platform.socket_dir}",
    ]
    return "\n".join(lines) + "\n"


def render_archive_settings() -> str:
    return (
        "# Managed by pgvector-deploy: continuous WAL archiving to S3 with pgBackRest (pg_backup_s3_bucket).\n"
        "# archive_mode needs a restart (pg_restart decides); archive_timeout: a written transaction\n"
        f"# reaches S3 within {ARCHIVE_TIMEOUT_S} seconds.\n"
        "archive_mode = on\n"
        f"archive_command = 'pgbackrest --config={PGBR_CONFIG} --stanza={STANZA} archive-push %p'\n"
        f"archive_timeout = {ARCHIVE_TIMEOUT_S}\n"
    )


def render_archive_ending_settings() -> str:
    """Our file once the bucket is unset while the restart that ends archiving must wait
    (pg_restart = report): archive_mode stays on until then, so WAL is let go, not kept."""
    return (
        "# Managed by pgvector-deploy: pg_backup_s3_bucket was unset; WAL archiving ends at the next restart\n"
        "# (pg_restart = report). Until then each WAL segment is let go (/bin/true), not kept on disk.\n"
        "archive_mode = off\n"
        "archive_command = '/bin/true'\n"
    )


def render_env(plan: Plan) -> str:
    """/etc/pgvector-deploy/backup.env, read by the scripts (no secret in it)."""
    backup = plan.settings.backup
    platform = plan.platform
    values = {
        "PGBR_CONFIG": PGBR_CONFIG,
        "PGBR_STANZA": STANZA,
        "PGV_LIBDIR": LIBDIR,
        "PGV_BINDIR": platform.bindir,
        "PGV_DATA_DIR": platform.data_dir,
        "PGV_SOCKET_DIR": platform.socket_dir,
        "PGV_PORT": str(int(plan.port)),
        "PGV_DRILL_PORT": str(backup.drill_port),
        "PGV_DRILL_DIR": DRILL_DIR,
        "PGV_DRILL_MAX_BACKUP_AGE_S": str(max_backup_age(backup.full)),
        "PGV_TEXTFILE_DIR": TEXTFILE_DIR,
    }
    return "# Managed by pgvector-deploy: settings of the backup scripts in " + LIBDIR + "\n" + "".join(
        f"{key}={shlex.quote(value)}\n" for key, value in values.items()
    )


def max_backup_age(full: Schedule) -> int:
    """Seconds the newest backup may be old when the drill runs: the full schedule's longest gap
    between two runs, and a day (a slow or retried backup) more; older fails the drill."""
    days = sorted(WEEKDAYS.index(day) for day in full.days) or list(range(7))
    gaps = [(later - earlier) % 7 or 7 for earlier, later in zip(days, days[1:] + days[:1])]
    return (max(gaps) + 1) * 86400


def jobs(plan: Plan) -> list[tuple[str, str, object]]:
    """(unit name, command, schedule) for each scheduled job; a schedule of None: none."""
    backup = plan.settings.backup
    wanted = [
        ("pgvector-backup-full", f"{LIBDIR}/pgvector-backup full", backup.full),
        ("pgvector-backup-diff", f"{LIBDIR}/pgvector-backup diff", backup.diff),
        ("pgvector-restore-drill", f"{LIBDIR}/pgvector-restore-drill", backup.drill),
    ]
    return [job for job in wanted if job[2] is not None]


def render_service(name: str, command: str) -> str:
    what = {"pgvector-backup-full": "full backup", "pgvector-backup-diff": "differential backup"}.get(name, "job")
    if name == "pgvector-restore-drill":
        what = "restore drill (latest backup into a scratch copy, checked, removed)"
    return (
        f"# Managed by pgvector-deploy.\n[Unit]\nDescription=pgvector-deploy: pgBackRest {what}\n"
        "After=network-online.target postgresql.service\nWants=network-online.target\n\n"
        f"[Service]\nType=oneshot\nExecStart={command}\nNice=10\nIOSchedulingClass=best-effort\nIOSchedulingPriority=7\n"
    )


def render_timer(name: str, on_calendar: str) -> str:
    return (
        f"# Managed by pgvector-deploy.\n[Unit]\nDescription=pgvector-deploy: {name} schedule\n\n"
        f"[Timer]\nOnCalendar={on_calendar}\nPersistent=true\nRandomizedDelaySec=300\n\n"
        "[Install]\nWantedBy=timers.target\n"
    )


STATUS_UNIT = "pgvector-backup-status"  # refreshes the monitoring file every 5 minutes


def wanted_files(plan: Plan) -> dict[str, tuple[str, str, str]]:
    """path -> (content, mode, owner) of every file ``schedules`` keeps (no secret among them)."""
    files = {ENV_FILE: (render_env(plan), "644", "root:root")}
    for script in SCRIPTS:
        files[f"{LIBDIR}/{script}"] = ((SCRIPTS_DIR / script).read_text(), "755", "root:root")
    if plan.profile["systemd"]:
        for name, command, schedule in jobs(plan):
            files[f"{UNIT_DIR}/{name}.service"] = (render_service(name, command), "644", "root:root")
            files[f"{UNIT_DIR}/{name}.timer"] = (render_timer(name, schedule.on_calendar), "644", "root:root")
        files[f"{UNIT_DIR}/{STATUS_UNIT}.service"] = (render_service(STATUS_UNIT, f"{LIBDIR}/pgvector-backup-status"), "644", "root:root")
        files[f"{UNIT_DIR}/{STATUS_UNIT}.timer"] = (render_timer(STATUS_UNIT, "*:0/5"), "644", "root:root")
    else:
        lines = [f"{schedule.cron} root {command} >/dev/null 2>&1" for _, command, schedule in jobs(plan)]
        lines.append(f"*/5 * * * * root {LIBDIR}/pgvector-backup-status >/dev/null 2>&1")
        files[CRON_FILE] = (
            "# Managed by pgvector-deploy: backups, the restore drill and the monitoring file (no systemd here).\n"
            "SHELL=/bin/sh\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n" + "\n".join(lines) + "\n",
            "644",
            "root:root",
        )
    return files


def timers(plan: Plan) -> list[str]:
    return [f"{name}.timer" for name, _, _ in jobs(plan)] + [f"{STATUS_UNIT}.timer"]


UNITS = ("pgvector-backup-full", "pgvector-backup-diff", "pgvector-restore-drill", STATUS_UNIT)
# The monitoring files the scripts and the smoke suite keep while backups are on; without a
# bucket nothing refreshes them, and a stale "success 1" would mislead.
MONITORING_FILES = tuple(f"{TEXTFILE_DIR}/{name}.prom" for name in ("pgvector_backup", "pgvector_drill", "pgvector_smoke"))


def installable_files() -> tuple[str, ...]:
    """Every file ``schedules`` may ever have installed, whatever host data says now: the ones
    no longer wanted (a bucket unset, a schedule set to none) are removed."""
    units = tuple(f"{UNIT_DIR}/{name}.{kind}" for name in UNITS for kind in ("timer", "service"))
    return (ENV_FILE, *(f"{LIBDIR}/{script}" for script in SCRIPTS), *units, CRON_FILE)


def removal_script(paths: list[str]) -> str:
    """Shell: our timers among ``paths`` stopped and disabled, then the files removed (each
    asked again on the host), systemd told. Backups in S3 are never touched."""
    timer_names = [Path(path).name for path in paths if path.startswith(f"{UNIT_DIR}/") and path.endswith(".timer")]
    quoted = " ".join(shlex.quote(path) for path in paths)
    lines = [f"set -eu\nPATH={SAFE_PATH}"]
    for name in timer_names:
        lines.append(f"if [ -f {UNIT_DIR}/{name} ]; then systemctl disable --now {name} >/dev/null 2>&1 || true; fi")
    lines.append(f"rm -f -- {quoted}")
    if any(path.startswith(f"{UNIT_DIR}/") for path in paths):
        lines.append("if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi")
    return "\n".join(lines) + "\n"


# -- what the host has ---------------------------------------------------------------------------


def paths(plan: Plan) -> tuple[str, ...]:
    wanted = [PGBR_CONFIG, archive_path(plan.platform), *installable_files()]
    if plan.settings.backup is None:
        wanted += MONITORING_FILES
    return tuple(wanted)


def backup_state(plan: Plan) -> dict:
    timer_names = tuple(timers(plan)) if plan.settings.backup is not None and plan.profile["systemd"] else ()
    return plan.fact(BackupState, platform=plan.platform, port=plan.port, paths=paths(plan), timer_names=timer_names)


def expected_facts(plan: Plan) -> list[tuple[type, dict]]:
    """For preflight's prefetch: the one fact these operations ask."""
    timer_names = tuple(timers(plan)) if plan.settings.backup is not None and plan.profile["systemd"] else ()
    return [(BackupState, {"platform": plan.platform, "port": plan.port, "paths": paths(plan), "timer_names": timer_names})]


# -- changing it ---------------------------------------------------------------------------------


def config_script(where: str = "the repository", cluster: Platform | None = None) -> str:
    """Shell: the new pgbackrest.conf from standard input is tried first, as postgres, from a
    private directory: ``pgbackrest info`` with it must reach S3 and decrypt the repository's
    info files (a wrong passphrase is named), and a stanza already there must be this
    cluster's (``cluster``: its system-id from pg_controldata; not for a restore, whose
    source is another cluster). Only then does it replace the current file (0600 postgres)."""
    unchanged = f" Nothing was changed ({PGBR_CONFIG} and archiving are as they were)."
    unreachable = fail(
        "pgBackRest cannot reach the S3 repository with the new settings: ", _var("reason"),
        f"{unchanged} Fix: check that the bucket "
        "exists in pg_backup_s3_region, that the instance role (IMDSv2) allows s3:ListBucket, GetObject, "
        "PutObject and DeleteObject on it, and pg_backup_s3_endpoint / pg_backup_s3_ca_file; then run again.",
    )  # fmt: skip
    undecryptable = fail(
        f"pgBackRest cannot decrypt {where} with the new settings' passphrase (its info files fail to load: a "
        f"wrong or rotated passphrase).{unchanged} Fix: give the passphrase the repository was made with "
        "(pg_backup_cipher_pass_ssm / pg_backup_cipher_pass_env / pg_backup_cipher_pass); a repository keeps its "
        "passphrase for life: for a new one, use a new pg_backup_s3_prefix.",
    )  # fmt: skip
    other = fail(
        f"{where} answers with an error status ", _var("code"), ": ", _var("reason"), f".{unchanged} "
        "Fix: correct what pgBackRest names (pgbackrest info), then run again.",
    )  # fmt: skip
    check = ""
    if cluster is not None:
        foreign = fail(
            f"{where} holds the stanza of another cluster (system-id ", _var("theirs"), "; this cluster's is ",
            _var("ours"), f").{unchanged} Fix: give this host its own pg_backup_s3_prefix; that repository belongs "
            "to the cluster that made it.",
        )  # fmt: skip
        controldata = f"runuser -u postgres -- {cluster.bindir}/pg_controldata -D {shlex.quote(cluster.data_dir)}"
        check = f"""# A stanza already there must be this cluster's: archive-push would fail on every segment.
if [ "$code" != 1 ]; then
  ours=$({controldata} 2>/dev/null | sed -n 's/^Database system identifier: *//p' || true)
  if [ -n "$ours" ] && ! printf '%s' "$out" | grep -q "\\"system-id\\":${{ours}}[,}}]"; then
    theirs=$(printf '%s' "$out" | grep -o '"system-id":[0-9]*' | tail -n1 | cut -d: -f2 || true)
    {foreign}
  fi
fi
"""
    return f"""set -eu
PATH={SAFE_PATH}
{locate(PGBR_CONFIG)}
install -d -m 0755 -o root -g root /etc/pgbackrest
umask 077
probe=$(mktemp -d /etc/pgbackrest/.pgvector-deploy-probe.XXXXXX)
trap 'rm -rf "$probe"' EXIT
chown postgres:postgres "$probe"
cat > "$probe/pgbackrest.conf"
chown postgres:postgres "$probe/pgbackrest.conf"
# info, not repo-ls: it decrypts backup.info and archive.info, so a wrong passphrase fails here.
if ! out=$(runuser -u postgres -- timeout 120 pgbackrest --config="$probe/pgbackrest.conf" --stanza={STANZA} \\
    --output=json --log-level-console=off --log-level-stderr=error info 2>&1); then
  {REASON}
  {unreachable}
fi
# The stanza's status (the last one in the JSON; keys are sorted): 0 ok, 1 none yet, 2 no backup yet.
code=$(printf '%s' "$out" | grep -o '"status":{{"code":[0-9]*' | tail -n1 | grep -o '[0-9]*$' || true)
case $code in
  0|1|2) ;;
  *)
    if printf '%s' "$out" | grep -q -e CryptoError -e 'FormatError: key/value found outside of section'; then {undecryptable}; fi
    s3=$(printf '%s' "$out" | sed -n 's:.*<Code>\\([A-Za-z]*\\)</Code><Message>\\([^<]*\\)</Message>.*:\\1, \\2:p' | head -n1)
    reason=$(printf '%s' "${{s3:-$out}}" | LC_ALL=C tr -cd '[:print:]' | cut -c1-400)
    # S3 answered with an error (no such bucket, access denied): the repository is not reachable.
    if [ -n "$s3" ] || printf '%s' "$out" | grep -q 'HTTP request failed'; then {unreachable}; fi
    {other};;
esac
{check}# Already so (another run wrote it while this one waited for the lock): leave it alone.
if cmp -s "$probe/pgbackrest.conf" "$file" && [ "$(stat -c %a:%U:%G "$file")" = 600:postgres:postgres ]; then exit 0; fi
if [ -f "$file" ]; then
  install -d -m 0700 "$backups" "$copies"
  backup="$copies/$(basename "$file").bak-$stamp"; cp -p "$file" "$backup"
  # It holds the passphrase (and any static key): the newest copy only, 0600 like the file.
  find "$copies" -maxdepth 1 -name "$(basename "$file").bak-*" | sort -r | tail -n +2 | xargs -r rm -f --
fi
mv -f "$probe/pgbackrest.conf" "$file"
"""


def _var(name: str):
    return Var(name)


def stanza_script() -> str:
    failed = fail(
        "pgBackRest could not create its stanza in the repository: ", _var("reason"),
        " Fix: a repository made by another cluster under this prefix belongs to that cluster: give this host "
        "its own pg_backup_s3_prefix; otherwise correct what pgBackRest names and run again.",
    )  # fmt: skip
    return f"""PATH={SAFE_PATH}
if ! out=$({PGBR} --log-level-console=warn stanza-create 2>&1); then
  {REASON}
  {failed}
fi"""


def _configured(plan: Plan, state: dict) -> bool:
    return state["files"].get(PGBR_CONFIG) == (sha256_text(render_config(plan)), "600", "postgres:postgres")


@operation()
@host_locked
@fails_host_on_error
def packages(plan: Plan):
    """Install pgBackRest from the platform's repositories when backups are asked for.

    .. code:: python

        backups.packages(plan)
    """
    if plan.settings.backup is None:
        host.noop("no backups (pg_backup_s3_bucket is not set)")
        return
    state = backup_state(plan)
    if state["pgbackrest"]:
        host.noop("pgBackRest is installed")
        return
    if not plan.platform.backup_packages:
        why = plan.platform.backup_unavailable or f"no repository this toolkit sets up on {plan.platform.label} has it"
        yield fail(
            f"backups need pgBackRest, and on {plan.platform.label} it cannot be installed from a maintained package: "
            f"{why}. No backup setting was changed. Fix: unset pg_backup_s3_bucket for this host, install pgBackRest yourself "
            "(a pgbackrest command in /usr/bin) and run again, or run the database on Debian, Ubuntu or "
            "RHEL / Rocky / AlmaLinux, where pgBackRest is packaged."
        )
        return
    names = " ".join(plan.platform.backup_packages)
    # Not apt.packages / dnf.packages, for postgres.tools' reason: a package fact per operation.
    yield f"PATH={SAFE_PATH}; command -v pgbackrest >/dev/null 2>&1 || {{ {plan.platform.package_manager.install.format(packages=names)}; }}"


@operation()
@host_locked
@fails_host_on_error
def repository(plan: Plan, create_stanza: bool = True):
    """Write pgbackrest.conf (tried against S3 first; the passphrase on standard input), then
    create the stanza if the repository has none (``create_stanza``; a restore only reads).

    .. code:: python

        backups.repository(plan)
    """
    if plan.settings.backup is None:
        host.noop("no backups (pg_backup_s3_bucket is not set)")
        return
    state = backup_state(plan)
    configured = _configured(plan, state)
    if not configured:
        where = f"the repository s3://{plan.settings.backup.bucket}/{plan.settings.backup.prefix}"
        yield StringCommand(config_script(where, plan.platform if create_stanza else None), _stdin=render_config(plan))
    elif state["stanza_code"] is None or state["stanza_code"] not in (0, 1, 2):
        # The file is current, but pgBackRest cannot read the repository (the bucket was
        # deleted, the role lost its rights or has no credentials): a clear failure, not a
        # stanza-create that would fail with a misleading message.
        backup = plan.settings.backup
        yield fail(
            f"pgBackRest cannot read the repository s3://{backup.bucket}/{backup.prefix}: "
            f"{' '.join((state['stanza_message'] or 'no answer').split())[:600]}. Nothing was changed; WAL archiving "
            "fails until this is fixed, and the WAL waits on this host's disk. Fix: check that the bucket exists, "
            "that the instance role (IMDSv2) has credentials and S3 rights, then run again."
        )
        return
    if create_stanza and (not configured or state["stanza_code"] not in (0, 2)):
        # stanza-create is idempotent in pgBackRest: a stanza that exists for this cluster is kept.
        yield stanza_script()
    elif configured and (not create_stanza or state["stanza_code"] in (0, 2)):
        host.noop(f"pgBackRest repository s3://{plan.settings.backup.bucket}/{plan.settings.backup.prefix} is configured")


def archive_off_restart(plan: Plan) -> str:
    """Shell, after our archive file was set aside and PostgreSQL reloaded: the restart that
    turns archive_mode off (or, with pg_restart = report, the line saying it is pending).
    pg_file_settings has no row for a setting whose file is gone, so apply_restart's question
    would find nothing: pg_settings.pending_restart is asked instead."""
    meanwhile = "archive_mode stays on and PostgreSQL keeps its WAL on this disk until the restart"
    return restart_if_pending(plan, ARCHIVE_OFF_PENDING_SQL, ARCHIVE_RESTART_FIX, meanwhile)


def archive_mode_overrides(state: dict, path: str) -> list[tuple[str, str]]:
    """(file, value) of each archive_mode line PostgreSQL reads after ours (``path``), which
    therefore outranks it; postgresql.auto.conf (ALTER SYSTEM) always comes last. After a
    restore, pgBackRest's archive_mode = 'off' is there (``--archive-mode=off``)."""
    rows = state.get("archive_mode_files", [])
    files = [row[0] for row in rows]
    after = rows[files.index(path) + 1 :] if path in files else [row for row in rows if row[0].endswith("/" + AUTO_CONF)]
    return [(file, value) for file, value, _ in after if file != path]


@operation()
@host_locked
@fails_host_on_error
def archiving(plan: Plan):
    """Continuous WAL archiving (conf.d/70-pgvector-backups.conf): archive_mode's restart is
    done or reported as ``pg_restart`` decides; without a bucket, a file of ours is set aside.

    .. code:: python

        backups.archiving(plan)
    """
    path = archive_path(plan.platform)
    state = backup_state(plan)
    ours = f"sourcefile = '{path}'"
    if plan.settings.backup is None:
        present = path in state["files"]
        # archive_mode still on from our file, or from one set aside by a run that could not
        # restart (pg_file_settings has no row for it then: pg_settings says it is pending).
        live = state["archive_mode"] == "on" and (present or state["archive_mode_pending"])
        if not present and not live:
            host.noop("no archiving (pg_backup_s3_bucket is not set)")
        elif plan.settings.restart_allowed or not live:
            restart_decision(plan, ["archive_mode"] if live else [])
            aside = f"{set_aside()}\n{reload_command(plan)}\n" if present else ""
            yield f"set -eu\nPATH={SAFE_PATH}\n{locate(path)}\n{aside}{archive_off_restart(plan)}"
        else:
            # archive_mode stays on until a restart this run may not do: without our file its
            # archive_command would be '' and PostgreSQL would keep every WAL segment.
            restart_decision(plan, ["archive_mode"])
            ending = render_archive_ending_settings()
            if present and state["files"][path][0] == sha256_text(ending):
                host.noop("WAL archiving ends at the pending restart (archive_command = /bin/true until then)")
                return
            write = replace_file_script(path, ending, "0644", SETTINGS_ERRORS_SQL, plan.platform, plan.port, "archive settings")
            yield f"{write}{reload_command(plan)}\n{apply_restart(plan, ours, ARCHIVE_RESTART_FIX)}"
        return
    wanted = render_archive_settings()
    pending = [entry.split("|", 1)[1] for entry in state["pending_restart"] if entry.startswith(f"{path}|")]
    overrides = archive_mode_overrides(state, path)
    others = [f"{file} (archive_mode = {value})" for file, value in overrides if not file.endswith("/" + AUTO_CONF)]
    if others:
        yield fail(
            f"archive_mode in {path} is overridden by {', '.join(others)}, read after it: WAL would never be archived. "
            "Nothing was changed. Fix: remove archive_mode from that file (backups set it), then run again."
        )
        return
    # pgBackRest's restore wrote archive_mode = 'off' into postgresql.auto.conf (or someone ran
    # ALTER SYSTEM): it outranks our file, so without this the restart would never come.
    reset = ""
    if overrides:
        logger.info(f"{host.print_prefix}resetting archive_mode in {AUTO_CONF} (ALTER SYSTEM RESET; left by a restore)")
        reset = as_postgres(plan.platform, plan.port, "postgres", "ALTER SYSTEM RESET archive_mode") + " >/dev/null\n"
    if state["files"].get(path, ("",))[0] != sha256_text(wanted):
        restart_decision(plan, ["archive_mode"] if state["archive_mode"] != "on" else [])
        write = replace_file_script(path, wanted, "0644", SETTINGS_ERRORS_SQL, plan.platform, plan.port, "archive settings")
        yield f"{write}{reset}{reload_command(plan)}\n{apply_restart(plan, ours, ARCHIVE_RESTART_FIX)}"
    elif pending or overrides or state["archive_mode"] != "on":
        restart_decision(plan, pending or ["archive_mode"])
        yield f"set -eu\nPATH={SAFE_PATH}\n{locate(path)}\n{reset}{reload_command(plan)}\n{apply_restart(plan, ours, ARCHIVE_RESTART_FIX)}"
    else:
        host.noop("WAL archiving to S3 is on")


@operation()
@host_locked
@fails_host_on_error
def schedules(plan: Plan):
    """The backup scripts, their settings file and the timers (full, differential, drill,
    monitoring file), or a cron file where systemd is not PID 1.

    .. code:: python

        backups.schedules(plan)
    """
    state = backup_state(plan)
    if plan.settings.backup is None:
        # Backups were turned off: our timers, cron file, scripts and monitoring files go; the
        # repository's configuration is kept aside (it holds the passphrase, without which no
        # backup in S3 can be restored); the backups in S3 stay.
        gone = [path for path in (*installable_files(), *MONITORING_FILES) if path in state["files"]]
        if gone:
            yield removal_script(gone)
        if PGBR_CONFIG in state["files"]:
            yield f"set -eu\nPATH={SAFE_PATH}\n{locate(PGBR_CONFIG)}\n[ ! -f \"$file\" ] || {{\n{set_aside()}\n}}"
        if not gone and PGBR_CONFIG not in state["files"]:
            host.noop("no backup schedules (pg_backup_s3_bucket is not set)")
        return
    changed = False
    wanted = wanted_files(plan)
    stale = [path for path in installable_files() if path in state["files"] and path not in wanted]
    if stale:  # a schedule set to none, or systemd replaced by cron: no job of ours left behind
        changed = True
        yield removal_script(stale)
    for path, (content, mode, owner) in wanted.items():
        if state["files"].get(path) != (sha256_text(content), mode, owner):
            changed = True
            # Not files.put: a fact per file every run (BackupState holds them all); the mode set after the move.
            yield StringCommand(install_from_stdin(path, mode, owner), _stdin=content)
    if plan.profile["systemd"]:
        names = timers(plan)
        idle = [name for name in names if state["timers"].get(name) != ("enabled", "active")]
        if changed or idle:
            # Not systemd.service: its facts are a round trip per timer; BackupState already says.
            yield f"PATH={SAFE_PATH}; systemctl daemon-reload && systemctl enable --now {' '.join(names)} >/dev/null 2>&1 && systemctl restart {' '.join(names)}"
            return
    if not changed:
        host.noop("backup schedules are in place")


@operation()
@host_locked
@fails_host_on_error
def first_backup(plan: Plan):
    """The first full backup, right after set-up, when the repository holds none; it waits
    for archiving to be on (a restart ``pg_restart = report`` left pending).

    .. code:: python

        backups.first_backup(plan)
    """
    if plan.settings.backup is None:
        host.noop("no backups (pg_backup_s3_bucket is not set)")
        return
    state = backup_state(plan)
    if state["backups"]:
        host.noop(f"{len(state['backups'])} backup(s) in the repository, the newest {state['backups'][-1]['label']}")
        return
    if state["archive_mode"] != "on":
        logger.warning(f"{host.print_prefix}first full backup waits for the restart that turns WAL archiving on")
        host.noop("first full backup waits for archiving (restart pending)")
        return
    failed = fail(
        "the first full backup failed: ", _var("reason"),
        " Archiving and the schedules are in place; the next run (or the weekly timer) tries again. Fix: correct "
        "what pgBackRest names (its log: /var/log/pgbackrest/), then run again.",
    )  # fmt: skip
    # Under the lock, asked again: another run may have taken it meanwhile.
    yield f"""PATH={SAFE_PATH}
if {PGBR} --output=json --log-level-console=off info 2>/dev/null | grep -q '"backup":\\[{{'; then exit 0; fi
if ! out=$({LIBDIR}/pgvector-backup full 2>&1); then
  {REASON}
  {failed}
fi"""


# -- restore (deploy/restore.py) -----------------------------------------------------------------


def restore_refusal(plan: Plan, state: dict, now: datetime | None = None) -> str | None:
    """Why this host must not be restored onto, or None. Decided before anything changes."""
    backup = plan.settings.backup
    restore = plan.settings.restore
    where = f"s3://{backup.bucket}/{backup.prefix}"
    if state["stanza_code"] not in (0, 2) and not state["backups"]:
        return (
            f"no pgBackRest repository at {where} ({state['stanza_message'] or 'not readable'}). Nothing was changed. "
            "Fix: set pg_backup_s3_prefix to the source host's prefix (its name, by default) and check the bucket, "
            "region and passphrase."
        )
    if not state["backups"]:
        return f"the repository at {where} holds no backup yet. Nothing was changed. Fix: back the source host up first."
    if state["user_databases"] is None:
        return (
            "could not ask PostgreSQL which databases this cluster holds (is it running?), so a restore might replace "
            "data. Nothing was changed. Fix: start PostgreSQL (deploy/postgres.py does), then run again."
        )
    if state["user_databases"] and not restore.over_existing:
        return (
            f"this cluster holds {state['user_databases']} database(s) of its own; a restore would replace them. Nothing "
            "was changed. Fix: restore onto a fresh host, or set restore_over_existing=True (the current data directory "
            "is then kept aside, not deleted)."
        )
    if restore.target_time is not None:
        first = min(b["stop"] for b in state["backups"])
        target = restore.target_time.timestamp()
        if target < first:
            when = datetime.fromtimestamp(first, timezone.utc).isoformat()
            return (
                f"restore_target_time {restore.target_time.isoformat()} is before the end of the first backup in {where} "
                f"({when}): no backup can be brought back to that moment. Nothing was changed. Fix: give a time after {when}."
            )
        if target > (now or datetime.now(timezone.utc)).timestamp():
            return f"restore_target_time {restore.target_time.isoformat()} is in the future. Nothing was changed. Fix: give a past time."
    return None


RESTORING_SUFFIX = ".restoring-"  # <data dir>.restoring-<UTC time>: a restore in progress, ours alone


def restore_script(plan: Plan) -> str:
    """Shell: restore into a new sibling directory while the cluster keeps running; then stop
    it, swap the two directories by rename, start, wait for recovery to end. Every step is
    checked; a failure before the swap removes only the new directory (nothing changed), one
    after it (PostgreSQL died in recovery) puts the previous directory back and starts it."""
    platform = plan.platform
    restore = plan.settings.restore
    data = shlex.quote(platform.data_dir)
    parent = shlex.quote(str(Path(platform.data_dir).parent))
    target = ""
    if restore.target_time is not None:
        moment = restore.target_time.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S+00")
        target = f"--type=time {shlex.quote('--target=' + moment)} --target-action=promote"
    if plan.profile["systemd"]:
        stop, start = f"systemctl stop {platform.service}", f"systemctl start {platform.service}"
    else:
        stop = f"runuser -u postgres -- {platform.bindir}/pg_ctl -D {data} -m fast -w stop"
        start = platform.start_without_systemd
    # restore_command named here: pgBackRest's own would carry --pg1-path of the new directory,
    # which is renamed before PostgreSQL starts.
    fetch = shlex.quote(f'--recovery-option=restore_command={RESTORE_COMMAND}')
    ready = f"{platform.bindir}/pg_isready -q -h {platform.socket_dir} -p {int(plan.port)}"
    recovering = as_postgres(platform, plan.port, "postgres", "SELECT pg_catalog.pg_is_in_recovery()")
    switch = as_postgres(platform, plan.port, "postgres", "SELECT pg_catalog.pg_switch_wal()")
    reset = as_postgres(platform, plan.port, "postgres")
    journal = f"journalctl -u {platform.service} --no-pager -n 200 2>/dev/null; " if plan.profile["systemd"] else ""
    nothing = "Nothing was changed (the cluster runs on its own data directory; the restored copy was removed)."
    drain = after_stop = ""
    if restore.target_time is None:
        # The latest state is what the archive holds: WAL still waiting in pg_wal would be lost.
        backlog = fail(
            "restoring the latest state over this cluster would lose the commits in ", _var("left"),
            f" WAL segment(s) still waiting to be archived (pg_wal/archive_status/*.ready, {DRAIN_WAIT_S} s after a WAL switch). "
            f"{nothing} Fix: let WAL archiving catch up (the smoke check wal_archive, pgvector_wal_archive_backlog_files), "
            "or set restore_target_time; then run again.",
        )  # fmt: skip
        # The shutdown switches WAL once more and the archiver gets one last try: what it
        # could not archive stays behind in the directory set aside.
        after_stop = f"""if left=$(backlog) && [ "$left" -gt 0 ]; then rm -rf "$new"; started >/dev/null; {backlog}; fi
"""
        drain = f"""{switch} >/dev/null 2>&1 || true
waited=0
while left=$(backlog) && [ "$left" -gt 0 ]; do
  waited=$((waited + 1)); [ $waited -lt {DRAIN_WAIT_S} ] || {{ rm -rf "$new"; {backlog}; }}; sleep 1
done
"""
    mounted = fail(
        f"the data directory {platform.data_dir} is a mount point: a restore swaps it with the restored copy by rename, "
        f"which a mount point refuses. Nothing was changed. Fix: mount the volume one level up ({Path(platform.data_dir).parent}, "
        "pg_data_mount) so that the data directory is a directory on it, or restore onto a fresh host.",
    )  # fmt: skip
    failed = fail("pgBackRest could not restore: ", _var("reason"), f" {nothing} Fix: correct what pgBackRest names, then run again.")
    still = fail(
        "PostgreSQL is still running after the stop (pg_ctl status: postmaster.pid and its process); the data "
        f"directory was not touched and the restored copy was removed. Fix: stop it ({stop}), then run again."
    )
    unmoved = fail(
        "could not move ", _var("what"), "; the previous data directory is in place again and started, the restored copy "
        "removed. Fix: read the error above, then run again.",
    )  # fmt: skip
    died = fail(
        "PostgreSQL stopped during recovery: ", _var("fatal"), ". The previous data directory was put back and ",
        _var("started"), "; the restored copy was removed. Fix: a restore_target_time after the last archived WAL "
        "cannot be reached (\"recovery ended before configured recovery target was reached\"): give an earlier one; "
        "otherwise read PostgreSQL's log.",
    )  # fmt: skip
    stuck = fail(
        "PostgreSQL did not finish recovery within an hour; the restored data directory is in place (recovering) "
        "and the previous one kept as ", _var("aside"), ". Fix: read PostgreSQL's log.",
    )  # fmt: skip
    reset_sql = "".join(f"ALTER SYSTEM RESET {name};\\n" for name in RECOVERY_SETTINGS) + "SELECT pg_catalog.pg_reload_conf();\\n"
    return f"""set -u
PATH={SAFE_PATH}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
aside={data}.before-restore-$stamp
new={data}{RESTORING_SUFFIX}$stamp
# A partial copy left by a restore that was killed: only a copy from S3, never anyone's data
# (the host lock keeps two restores apart); removed, the restore is done again.
for old in {data}{RESTORING_SUFFIX}*; do
  if [ -d "$old" ]; then rm -rf "$old" || {{ {fail("could not remove the partial copy of a killed restore, ", _var("old"), ". Nothing else was changed. Fix: remove it by hand, then run again.")}; }}; fi
done
# A postmaster runs on the directory: postmaster.pid and its live process (pg_ctl status 0),
# not only "no answer on the socket" (a shutdown in progress does not answer).
running() {{ runuser -u postgres -- {platform.bindir}/pg_ctl status -D "$1" >/dev/null 2>&1; }}
backlog() {{ find {data}/pg_wal/archive_status -name '*.ready' 2>/dev/null | wc -l; }}
started() {{ {start} >/dev/null 2>&1 || true; if running {data}; then echo started; else echo "NOT started (start it by hand)"; fi; }}
[ -d {data} ] || {{ {fail(f"there is no data directory {platform.data_dir}. Nothing was changed. Fix: run deploy/postgres.py first.")}; }}
if mountpoint -q {data} 2>/dev/null || [ "$(stat -c %d {data})" != "$(stat -c %d {parent})" ]; then {mounted}; fi
if [ -e "$aside" ] || [ -e "$new" ]; then {fail("a directory from a restore in this same second exists; nothing was changed. Fix: run again.")}; fi
install -d -m 0700 -o postgres -g postgres "$new" || {{ {fail(f"could not create the restore's directory beside {platform.data_dir}. Nothing was changed. Fix: read the error above.")}; }}
# Into the new directory while the cluster runs: a failure here removes only that directory.
if ! out=$({PGBR} --pg1-path="$new" --log-level-console=warn --archive-mode=off {fetch} {target} restore 2>&1); then
  {REASON}
  rm -rf "$new"
  {failed}
fi
{drain}{stop} >/dev/null 2>&1 || true
if running {data} || {ready}; then rm -rf "$new"; {still}; fi
{after_stop}if ! mv {data} "$aside"; then
  what="the data directory aside"; rm -rf "$new"; started >/dev/null; {unmoved}
fi
if ! mv "$new" {data}; then
  what="the restored copy into place"; mv "$aside" {data} && rm -rf "$new"; started >/dev/null; {unmoved}
fi
{start} >/dev/null 2>&1 || true
waited=0 gone=0
until [ "$({recovering} 2>/dev/null)" = f ]; do
  # Twice in a row, a second apart: a postmaster that was started and is gone ended recovery with a FATAL.
  if running {data}; then gone=0; else gone=$((gone + 1)); fi
  if [ $gone -ge 2 ]; then
    # Not the FATALs our own polling got while it started or stopped ("the database system is ...").
    fatal=$( {{ {journal}tail -n 200 /var/log/postgresql/postgresql-*-main.log {data}/log/* 2>/dev/null; }} | grep -E 'FATAL|PANIC' | grep -v 'the database system is' | tail -n1 | tr -d '\\r')
    [ -n "$fatal" ] || fatal="no FATAL line found in its log"
    mv {data} "$new" && mv "$aside" {data} && rm -rf "$new"
    started=$(started); {died}
  fi
  waited=$((waited + 1)); [ $waited -lt 3600 ] || {{ {stuck}; }}; sleep 1
done
# Recovery is over: pgBackRest's recovery settings go from postgresql.auto.conf. Its
# archive_mode = 'off' stays until deploy/postgres.py turns archiving on with this host's
# own repository (the archiving operation resets it), so this host never archives into the
# source's repository by itself.
printf '{reset_sql}' | {reset} >/dev/null || echo "could not reset pgBackRest's recovery settings (ALTER SYSTEM RESET ...); harmless after recovery"
echo "restored; the previous data directory is kept as $aside"
"""


@operation()
@host_locked
@fails_host_on_error
def restore(plan: Plan):
    """Bring the latest backup, or the state at ``restore_target_time``, back onto this host.

    .. code:: python

        backups.restore(plan)
    """
    state = backup_state(plan)
    refusal = restore_refusal(plan, state)
    if refusal:
        yield fail(refusal)
        return
    when = plan.settings.restore.target_time
    logger.info(f"{host.print_prefix}restoring {'the latest state' if when is None else when.isoformat()} from s3://{plan.settings.backup.bucket}/{plan.settings.backup.prefix}")
    yield restore_script(plan)


# -- the backup state, for the nightly drift report -------------------------------------------------

# "[db-1] backup state: {...}" in pyinfra's log: one JSON object per host, read by the nightly
# run (nightly.backup_states). Logged, not yielded: reading the state changes nothing.
BACKUP_STATE_MARK = "backup state: "
@operation()
@fails_host_on_error
def report(plan: Plan):
    """Log the host's backup state as one JSON line (``backup state: {...}``), which the
    nightly run puts in its drift report. It reads only: no change, ever.

    .. code:: python

        backups.report(plan, name="Backup state is reported")
    """
    if plan.settings.backup is None:
        host.noop("no backups (pg_backup_s3_bucket is not set)")
        return
    state = host.get_fact(BackupReport, platform=plan.platform, port=plan.port)
    logger.info(f"{host.print_prefix}{BACKUP_STATE_MARK}{json.dumps(state, sort_keys=True)}")
    host.noop(f"backup state reported: last backup {(state['last'] or {}).get('label', 'none')}, WAL archive {state['wal_archive']['status']}")
    yield from ()
