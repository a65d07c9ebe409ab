"""Reusable parts of the PostgreSQL 15 + pgvector toolkit.

Modules: ``settings`` (every host data key), ``releases`` (pgvector pins and version policy),
``platforms`` (the per-distribution table), ``facts`` (what a host looks like),
``preflight`` (look before touching), ``postgres`` and ``pgvector`` (the operations).
The recipe that strings them together is ``recipe``; its packaged deploys (pyinfra's
``@deploy``) are ``postgres_with_pgvector`` and ``restore_backup``, which deploy/postgres.py
and deploy/restore.py call.
"""

from .recipe import postgres_with_pgvector, restore_backup

__all__ = ["postgres_with_pgvector", "restore_backup"]
