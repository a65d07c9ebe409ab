"""Reusable parts of the PostgreSQL 15 + pgvector toolkit.

Modules: ``settings`` (every host data key), ``releases`` (pgvector pins and version policy),
``platforms`` (the per-distribution table), ``facts`` (what a host looks like),
``preflight`` (look before touching), ``postgres`` and ``pgvector`` (the operations).
The recipe that strings them together is ``deploy/postgres.py``.
"""
