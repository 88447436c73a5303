"""Alembic environment for durable's tables.

From code (``durable.backends.sql.migrate``) a connection is passed in ``config.attributes``.
From the command line, ``alembic -c alembic.ini upgrade head`` reads the database URL from
``DURABLE_DATABASE_URL`` (e.g. ``sqlite:///app.db`` or ``postgresql://user@host/db``).
"""

from __future__ import annotations

import os
from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context

from durable.backends.sql import migrate
from durable.backends.sql.dialects import create_engine, normalize_url
from durable.backends.sql.schema import UTCDateTime, metadata


def render_item(kind: str, obj: object, autogen_context: object) -> str | bool:
    """Revisions are frozen history: they spell out plain SQLAlchemy types, never durable's."""
    if kind == "type" and isinstance(obj, UTCDateTime):
        # microseconds on MySQL / MariaDB (their DATETIME keeps whole seconds by default)
        autogen_context.imports.add("from sqlalchemy.dialects import mysql")  # type: ignore[attr-defined]
        return 'sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")'
    return False


def run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        render_item=render_item,
        **migrate.CONTEXT_OPTIONS,
    )
    with context.begin_transaction():
        context.run_migrations()


def command_line_engine() -> sa.Engine:
    """A synchronous engine on the database the ``alembic`` command works on, set up as durable
    sets up its own (on SQLite: ``BEGIN IMMEDIATE``, so the migration is one atomic write)."""
    url = os.environ.get("DURABLE_DATABASE_URL") or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set DURABLE_DATABASE_URL to the database to migrate")
    parsed = normalize_url(url)  # postgresql:// means psycopg 3, as everywhere in durable
    if parsed.get_backend_name() == "mysql":  # PyMySQL: the sync driver aiomysql is built on
        return sa.create_engine(
            parsed.set(drivername="mysql+pymysql"), connect_args={"charset": "utf8mb4"}
        )
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(parsed)
    engine = create_engine(parsed.set(drivername="sqlite"))  # aiosqlite needs an event loop
    assert isinstance(engine, sa.Engine)
    return engine


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    if context.config.config_file_name is not None:
        fileConfig(context.config.config_file_name, disable_existing_loggers=False)
    engine = command_line_engine()

    def locked_run(conn: sa.Connection) -> None:
        migrate.lock(conn)  # a backend starting meanwhile waits for this migration
        run(conn)

    try:
        with engine.connect() as conn:  # on SQLite, foreign keys off: see in_transaction
            migrate.in_transaction(conn, locked_run)
    finally:
        engine.dispose()
