"""Storage backends: the :class:`PersistentBackend` interface and its implementations.

:class:`SQLAlchemyBackend` is imported on first use (see :mod:`durable.backends.sql`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from durable.backends.base import PersistentBackend
from durable.backends.memory import InMemoryBackend

if TYPE_CHECKING:
    from durable.backends.sql.backend import SQLAlchemyBackend

__all__ = ["InMemoryBackend", "PersistentBackend", "SQLAlchemyBackend"]


def __getattr__(name: str) -> Any:
    if name == "SQLAlchemyBackend":
        from durable.backends.sql.backend import SQLAlchemyBackend

        return SQLAlchemyBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
