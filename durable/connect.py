"""``durable.connect(url)``: the backend for a URL."""

from __future__ import annotations

from typing import Any

from durable.backends.base import PersistentBackend
from durable.backends.memory import InMemoryBackend
from durable.errors import ConfigurationError
from durable.serialization import Serializer

#: The options :func:`connect` passes to :class:`~durable.backends.SQLAlchemyBackend`, with the
#: types they take.
SQL_OPTIONS: dict[str, type | tuple[type, ...]] = {
    "auto_migrate": bool,
    "sqlite_synchronous": str,
    "engine_options": (dict, type(None)),
}


def connect(
    url: str, *, serializer: str | Serializer | None = None, **options: Any
) -> PersistentBackend:
    """Return the backend for ``url``; it connects (and migrates) when started.

    * ``memory://``: an :class:`~durable.backends.InMemoryBackend`;
    * ``sqlite:///path/app.db`` (standard-library driver, fastest), ``sqlite+aiosqlite:///...``,
      ``sqlite:///:memory:``; three slashes before a relative path, four before an absolute one
      (``sqlite://app.db`` is refused: it names a host);
    * ``postgresql://user@host/db``, ``postgres://...`` or ``postgresql+psycopg://...``
      (psycopg 3);
    * ``mysql://user@host/db`` or ``mariadb://...`` (MariaDB 10.6+, through aiomysql: the
      ``mysql`` extra), ``mysql+pymysql://...`` and ``mysql+aiomysql://...`` alike, or
      ``mysql+asyncmy://...`` (asyncmy, installed separately).

    ``options`` go to :class:`~durable.backends.SQLAlchemyBackend` (``auto_migrate``,
    ``sqlite_synchronous``, ``engine_options``).

    :raises ConfigurationError: a malformed URL, an unknown scheme, an unknown option or one of
        the wrong type, or options for the in-memory backend.
    """
    _require_url(url)
    if url.split("://", 1)[0] == "memory":
        if options:
            raise ConfigurationError(
                f"memory:// takes no options besides serializer, got {sorted(options)}"
            )
        return InMemoryBackend(serializer=serializer)
    for key, value in options.items():
        kind = SQL_OPTIONS.get(key)
        if kind is None:
            raise ConfigurationError(
                f"unknown option {key!r} for durable.connect(): it takes serializer, "
                f"{', '.join(SQL_OPTIONS)} (engine options go in engine_options={{...}})"
            )
        if not isinstance(value, kind):
            raise ConfigurationError(
                f"option {key}= must be {_kind_name(kind)}, got {type(value).__qualname__} "
                f"{value!r}"
            )
    # Imported here: SQLAlchemy's asyncio extension and the drivers are not needed for memory://.
    from durable.backends.sql.backend import SQLAlchemyBackend

    return SQLAlchemyBackend(url, serializer=serializer, **options)


def check_url(url: object) -> str:
    """``url`` if :func:`connect` takes it (a scheme and driver durable runs on, well formed),
    checked without connecting or importing a driver: for settings read at a framework's start.

    :raises ConfigurationError: what :func:`connect` would refuse in the URL, said as it would.
    """
    url = _require_url(url)
    if url.split("://", 1)[0] != "memory":
        from durable.backends.sql.dialects import normalize_url

        normalize_url(url)
    return url


def _require_url(url: object) -> str:
    """``url`` if it is a str with a scheme.

    :raises ConfigurationError: it is not.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"expected a database URL such as sqlite:///app.db, memory:// or "
            f"postgresql://user@host/db, got {url!r}"
        )
    return url


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
