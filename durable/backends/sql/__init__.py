"""SQLite and PostgreSQL storage on SQLAlchemy 2: schema, dialect differences, migrations.

:class:`SQLAlchemyBackend` is imported on first use (module ``__getattr__``): SQLAlchemy's asyncio
extension, psycopg and Alembic take most of a second to import, which a program that never opens
a database (or only imports :mod:`durable.backends.sql.schema`) should not pay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from durable.backends.sql.backend import SQLAlchemyBackend

__all__ = ["SQLAlchemyBackend"]


def __getattr__(name: str) -> Any:
    if name == "SQLAlchemyBackend":
        from durable.backends.sql.backend import SQLAlchemyBackend

        return SQLAlchemyBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
