"""Alembic's environment: the database URL comes from DATABASE_URL, the tables from models.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from alembic import context
from sqlalchemy import create_engine, pool

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # models.py, wherever alembic runs from

import pgvector.sqlalchemy  # noqa: F401  the vector types, for reflection and autogenerate
from models import Base

target_metadata = Base.metadata


def database_url() -> str:
    """DATABASE_URL (postgresql://user:password@host:port/db, password percent-encoded), for
    SQLAlchemy's psycopg 3 driver. Passed to create_engine directly, never through alembic.ini,
    whose interpolation would choke on the % of an encoded password."""
    url = os.environ.get("DATABASE_URL")
    if not url:
        sys.exit("DATABASE_URL is not set: e.g. postgresql://app:<password>@172.17.0.1:5432/app")
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def include_object(object_, name, type_, reflected, compare_to):
    """Only this app's models: tables that exist in the database but not in models.py (made by
    pgvector-deploy's SQL migrations, say) are left alone instead of being dropped."""
    return not (type_ == "table" and reflected and compare_to is None)


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        include_object=include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, include_object=include_object)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
