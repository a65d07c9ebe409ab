"""The recipe's stages, shared by deploy/postgres.py (provision) and deploy/restore.py
(provision, then restore a backup): one list of operations, so a restored host is set up by
exactly the recipe that set up its source.

Example::

    plan = preflight.start(host, config, prefetch=True)
    recipe.server(plan)
    recipe.app(plan)
    recipe.backups(plan)
    recipe.proof(plan)

The packaged deploys (pyinfra's ``@deploy``) put them together for a pyinfra project of
another team, after ``pip install pgvector-deploy``::

    from pgvector_deploy import postgres_with_pgvector

    postgres_with_pgvector()
"""

from __future__ import annotations

import functools

from pyinfra import config, context, host
from pyinfra.api.deploy import deploy

from . import appenv, apps, backups as backup_ops, migrations, networking, pgvector, postgres, preflight, smoke, tuning
from .plan import Plan
from .settings import DEFAULTS

# Every declared host data key with its default (settings.SETTINGS): pyinfra reads these last,
# after the inventory's host and group data and --data, so any of those overrides them.
DATA_DEFAULTS = dict(DEFAULTS)


def _nameless(wrapped):
    """pyinfra prefixes each operation's name with its deploy's name ("deploy | operation");
    ours keep their own names (the nightly report, the README and the tests know them), as
    the operations of pyinfra's own nameless ``host.when`` groups do. The decorator has no
    argument for that (an empty name falls back to the function's), so the name is cleared
    where pyinfra reads it, at each call."""
    wrapped._inner.deploy_name = ""
    return wrapped


def _within_the_caller(wrapped):
    """The packaged deploy as a good guest of the caller's deploy file:

    - pyinfra *replaces* the deploy data of an enclosing ``local.include(..., data=)`` or
      ``@deploy(data_defaults=)`` with ours, so a bucket set there would read as unset (and
      the host's backups be turned off): theirs win over our defaults, for this call;
    - the sudo the look chooses for our operations (pyinfra's config) is put back afterwards,
      so the caller's later operations ask for sudo themselves, as before our call."""
    inner = wrapped._inner

    @functools.wraps(inner)
    def call(*args, **kwargs):
        enclosing = context.host.current_deploy_data or {}
        sudo = config.SUDO
        inner.deploy_data = {**DATA_DEFAULTS, **enclosing}
        try:
            return wrapped(*args, **kwargs)
        finally:
            inner.deploy_data = DATA_DEFAULTS
            config.SUDO = sudo

    call._inner = inner
    return call


@_within_the_caller
@_nameless
@deploy(data_defaults=DATA_DEFAULTS)
def postgres_with_pgvector() -> None:
    """PostgreSQL (pg_major, 15 by default) with pgvector compiled on the host: the whole
    recipe (deploy/postgres.py). Host data: settings.SETTINGS. A refused host gets one failing
    operation (nothing changed); the other hosts carry on."""
    # Stage 0, look: the login can become root, the host data is valid, the host is one we
    # provision (two round trips of facts), then the facts every stage below asks (one more
    # round trip, side by side on the host). Nothing changes yet; a refused host (also one
    # whose files or facts cannot be read) gets one failing operation and the others carry on.
    plan = preflight.start(host, config, prefetch=True)
    if isinstance(plan, preflight.Refusal):
        preflight.refuse(plan, name=preflight.REFUSAL)
        return
    server(plan)  # stages 1-5: tools, tarball, PostgreSQL 15, pgvector, access, sizing
    app(plan)  # stage 6: the app's role, database, migrations, connection details
    backups(plan)  # stage 6b: pgBackRest to S3, WAL archiving, timers, first backup
    proof(plan)  # stage 7: the vector smoke suite


@_within_the_caller
@_nameless
@deploy(data_defaults=DATA_DEFAULTS)
def restore_backup() -> None:
    """Restore a backup (deploy/restore.py): PostgreSQL and pgvector by the same stages as
    ``postgres_with_pgvector``, then pgBackRest restores the latest state of the repository at
    pg_backup_s3_bucket / pg_backup_s3_prefix, or the one at restore_target_time."""
    plan = preflight.start(host, config, prefetch=True)
    if isinstance(plan, preflight.Refusal):
        preflight.refuse(plan, name=preflight.REFUSAL)
    elif plan.settings.backup is None:
        preflight.refuse(
            preflight.Refusal(
                "deploy/restore.py needs pg_backup_s3_bucket (and the source's pg_backup_s3_prefix and passphrase) to "
                "know where the backups are. Fix: set them as for the source host."
            ),
            name=preflight.REFUSAL,
        )
    else:
        server(plan)  # stages 1-5, exactly as postgres_with_pgvector
        backup_ops.packages(plan, name="pgBackRest is installed (backups to S3)")
        backup_ops.repository(plan, create_stanza=False, name="pgBackRest reads the repository in S3")
        backup_ops.restore(plan, name="The backup is restored")
        app(plan)  # the app's role and password (its database came back with the backup)
        proof(plan)


def server(plan: Plan) -> None:
    """Stages 1 to 5: tools, the tarball, PostgreSQL (pg_major), pgvector, access, sizing."""
    # Stage 1, tools: the base tools the run uses (curl, ca-certificates, tar, gzip, procps,
    # ...) where a minimal image lacks them. First, because the fetch below downloads with
    # curl and the PGDG key comes with curl too; they come from the distribution's own
    # repositories, so a bad tarball can at most leave these tools installed, never PostgreSQL.
    postgres.tools(plan, name="Base tools the run uses are installed (curl, tar, procps, ...)")

    # Stage 1, then fetch: the tarball's checksum is verified before PostgreSQL is installed.
    pgvector.fetch(plan, name="pgvector tarball is on the host, sha256 verified")

    # Stage 2, PostgreSQL (pg_major, 15 by default): its repository where the distribution
    # lacks it, packages, cluster (adopted if it exists), running and at boot.
    major = plan.platform.major
    postgres.repository(plan, name=f"PostgreSQL {major} repositories are set up (PGDG, CRB) where needed")
    postgres.packages(plan, name=f"PostgreSQL {major}, PGXS headers and compiler are installed")
    postgres.cluster(plan, name=f"PostgreSQL {major} cluster exists")
    postgres.running(plan, name=f"PostgreSQL {major} is running and starts at boot")

    # Stage 3, pgvector: compiled here against this host's pg_config, then enabled.
    pgvector.build(plan, name="pgvector is compiled on this host and installed")
    pgvector.extension(plan, name="vector extension is current, and enabled in template1 and postgres")

    # Stage 4, access: listen on localhost and the Docker bridges only; pg_hba lets the app
    # in from the bridges with scram-sha-256. Each file is checked by PostgreSQL before it is used.
    # Connections from beyond the host (pg_listen_addresses, pg_docker_subnets) are TLS only:
    # a certificate PostgreSQL can use (host data's, or self-signed here, once) before ssl = on.
    networking.server_certificate(plan, name="PostgreSQL has a server certificate for connections from beyond the host")
    networking.listen(plan, name="PostgreSQL listens on localhost and the Docker bridge gateways")
    networking.client_access(plan, name="pg_hba.conf admits the Docker bridges with scram-sha-256")

    # Stage 5, size: memory and parallelism for vector work from this host's memory and CPUs
    # (conf.d/80-pgvector-tuning.conf; a restart only when shared_buffers changes).
    tuning.server_settings(plan, name="PostgreSQL is sized for this host's memory and CPUs")


def app(plan: Plan) -> None:
    """Stage 6, the app: its login role and its own database (born with vector)."""
    if plan.settings.app:
        # A new password goes into the role and pg_app_env_file in one command (apps.role), so
        # nothing later in the run can leave the two disagreeing and the containers locked out.
        apps.role(plan, name="App role exists with its password")
        apps.database(plan, name="App database exists, owned by the app, with vector")
        # How its containers connect (printed; pg_app_env_file on the host), current before the
        # migrations, which may fail; then the app's SQL migrations (pg_migrations_dir), each
        # once, in its own transaction, as the app role.
        appenv.env_file(plan, name="App connection details for containers are current")
        migrations.apply(plan, name="App SQL migrations are applied")


def backups(plan: Plan) -> None:
    """Stage 6b, backups (pg_backup_s3_bucket): pgBackRest, its S3 repository (reached with the
    new settings before they replace the old), WAL archiving (one restart, as pg_restart
    decides), the timers, and the first full backup. Without a bucket: nothing (archiving of
    ours is turned off again)."""
    backup_ops.packages(plan, name="pgBackRest is installed (backups to S3)")
    backup_ops.repository(plan, name="pgBackRest repository in S3 is configured")
    backup_ops.archiving(plan, name="WAL is archived to S3 continuously")
    backup_ops.schedules(plan, name="Backup and restore drill schedules are in place")
    backup_ops.first_backup(plan, name="A full backup exists")
    # Read only: the backup state at the end of the stage, one JSON line in the log, which the
    # nightly run puts in its drift report.
    backup_ops.report(plan, name="Backup state is reported")


def proof(plan: Plan) -> None:
    """Stage 7, proof: the vector smoke suite (a fact: it reports no change when it passes)."""
    smoke.verify(
        plan,
        app=smoke.app_login(plan),
        report_dir=str(plan.settings.smoke_report_dir),
        name="Vector smoke suite",
    )
