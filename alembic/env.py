"""Alembic environment for durable's tables.

From code (``durable.backends.sql.migrate``) a connection is passed in ``config.attributes``.
From the command line, ``alembic -c alembic.ini upgrade head`` reads the database URL from
``DURABLE_DATABASE_URL`` (e.g. ``sqlite:///app.db`` or ``postgresql+psycopg://...``).
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context

from durable.backends.sql.migrate import VERSION_TABLE
from durable.backends.sql.schema import UTCDateTime, metadata


def render_item(kind: str, obj: object, autogen_context: object) -> str | bool:
    """Revisions are frozen history: they spell out plain SQLAlchemy types, never durable's."""
    if kind == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    url = os.environ.get("DURABLE_DATABASE_URL") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("set DURABLE_DATABASE_URL to the database to migrate")
    engine = sa.create_engine(url.replace("+aiosqlite", ""))
    with engine.begin() as conn:
        run(conn)
    engine.dispose()
