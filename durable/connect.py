"""``durable.connect(url)``: the backend for a URL."""

from __future__ import annotations

from typing import Any

from durable.backends.base import PersistentBackend
from durable.backends.memory import InMemoryBackend
from durable.errors import ConfigurationError
from durable.serialization import Serializer


def connect(
    url: str, *, serializer: str | Serializer | None = None, **options: Any
) -> PersistentBackend:
    """Return the backend for ``url``; it connects (and migrates) when started.

    * ``memory://``: an :class:`~durable.backends.InMemoryBackend`;
    * ``sqlite:///path/app.db`` (standard-library driver, fastest), ``sqlite+aiosqlite:///...``,
      ``sqlite:///:memory:``;
    * ``postgresql://user@host/db`` or ``postgresql+psycopg://...`` (psycopg 3).

    ``options`` go to :class:`~durable.backends.SQLAlchemyBackend` (``auto_migrate``,
    ``sqlite_synchronous``, ``engine_options``).

    :raises ConfigurationError: an unknown scheme, or options for the in-memory backend.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"expected a database URL such as sqlite:///app.db, memory:// or "
            f"postgresql://user@host/db, got {url!r}"
        )
    if url.split("://", 1)[0] == "memory":
        if options:
            raise ConfigurationError(
                f"memory:// takes no options besides serializer, got {sorted(options)}"
            )
        return InMemoryBackend(serializer=serializer)
    # Imported here: SQLAlchemy's asyncio extension and the drivers are not needed for memory://.
    from durable.backends.sql.backend import SQLAlchemyBackend

    return SQLAlchemyBackend(url, serializer=serializer, **options)
