"""SQLite and PostgreSQL storage on SQLAlchemy 2: schema, dialect differences, migrations."""

from durable.backends.sql.backend import SQLAlchemyBackend

__all__ = ["SQLAlchemyBackend"]
