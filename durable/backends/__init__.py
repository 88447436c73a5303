"""Storage backends: the :class:`PersistentBackend` interface and its implementations."""

from durable.backends.base import PersistentBackend
from durable.backends.memory import InMemoryBackend
from durable.backends.sql import SQLAlchemyBackend

__all__ = ["InMemoryBackend", "PersistentBackend", "SQLAlchemyBackend"]
