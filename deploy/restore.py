"""Restore a backup onto a host: the latest state, or the one at ``restore_target_time``.

    pyinfra inventories/example.py deploy/restore.py --data pg_backup_s3_prefix=db-1
    pyinfra inventories/example.py deploy/restore.py --data restore_target_time=2026-12-01T12:00:00+00:00

Same inventory and host data as deploy/postgres.py. PostgreSQL 15 and pgvector are first
provisioned by the same recipe (pgvector_deploy/recipe.py); then pgBackRest reads the
repository at pg_backup_s3_bucket / pg_backup_s3_prefix (the source host's prefix: its name,
by default), the cluster is stopped, its data directory kept aside, the backup restored (and
the WAL replayed to the target), PostgreSQL started; then the app's role gets its password
and the smoke suite proves the result. Refused, nothing changed: a cluster that holds
databases of its own (unless restore_over_existing=True), a repository without a backup, a
target before the first backup.

This host does not archive into the source's repository: archiving and schedules are left
to a later deploy/postgres.py run, with this host's own pg_backup_s3_prefix.
"""

from pyinfra import config, host

from pgvector_deploy import backups, preflight, recipe

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
    recipe.server(plan)  # stages 1-5, exactly as deploy/postgres.py
    backups.packages(plan, name="pgBackRest is installed (backups to S3)")
    backups.repository(plan, create_stanza=False, name="pgBackRest reads the repository in S3")
    backups.restore(plan, name="The backup is restored")
    recipe.app(plan)  # the app's role and password (its database came back with the backup)
    recipe.proof(plan)
