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

The packaged deploy pgvector_deploy.restore_backup, called as a project of yours can call it.
"""

from pgvector_deploy import restore_backup

restore_backup()
