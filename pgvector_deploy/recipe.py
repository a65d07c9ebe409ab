"""The recipe's stages, shared by deploy/postgres.py (provision) and deploy/restore.py
(provision, then restore a backup): one list of operations, so a restored host is set up by
exactly the recipe that set up its source.

Example::

    plan = preflight.start(host, config, prefetch=True)
    recipe.server(plan)
    recipe.app(plan)
    recipe.backups(plan)
    recipe.proof(plan)
"""

from __future__ import annotations

from . import appenv, apps, backups as backup_ops, migrations, networking, pgvector, postgres, smoke, tuning
from .preflight import Plan


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


def proof(plan: Plan) -> None:
    """Stage 7, proof: the vector smoke suite (a fact: it reports no change when it passes)."""
    smoke.verify(
        plan,
        app=smoke.app_login(plan),
        report_dir=str(plan.settings.smoke_report_dir),
        name="Vector smoke suite",
    )
