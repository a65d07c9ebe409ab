"""PostgreSQL 15 (or host data pg_major) + pgvector, compiled on each host. The recipe, stage by stage.

    pyinfra @local deploy/postgres.py -y
    pyinfra inventories/prod.py deploy/postgres.py

Host data keys and their defaults: pgvector_deploy/settings.py (and the README).
"""

from pyinfra import config, host

from pgvector_deploy import appenv, apps, backups, migrations, networking, pgvector, postgres, preflight, smoke, tuning

# Stage 0, look: the login can become root, the host data is valid, the host is one we
# provision (two round trips of facts), then the facts every stage below asks (one more
# round trip, side by side on the host). Nothing changes yet; a refused host (also one
# whose files or facts cannot be read) gets one failing operation and the others carry on.
plan = preflight.start(host, config, prefetch=True)

if isinstance(plan, preflight.Refusal):
    preflight.refuse(plan, name=preflight.REFUSAL)
else:
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

    # Stage 6, the app: its login role and its own database (born with vector).
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

    # Stage 6b, backups (pg_backup_s3_bucket): pgBackRest, its S3 repository (reached with the
    # new settings before they replace the old), WAL archiving (one restart, as pg_restart
    # decides), the timers, and the first full backup. Without a bucket: nothing (archiving of
    # ours is turned off again).
    backups.packages(plan, name="pgBackRest is installed (backups to S3)")
    backups.repository(plan, name="pgBackRest repository in S3 is configured")
    backups.archiving(plan, name="WAL is archived to S3 continuously")
    backups.schedules(plan, name="Backup and restore drill schedules are in place")
    backups.first_backup(plan, name="A full backup exists")

    # Stage 7, proof: the vector smoke suite (a fact: it reports no change when it passes).
    smoke.verify(
        plan,
        app=smoke.app_login(plan),
        report_dir=str(plan.settings.smoke_report_dir),
        name="Vector smoke suite",
    )
