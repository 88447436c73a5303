"""A complete backend that keeps everything in this process's memory.

It follows the same contract as the SQL backends (it runs the same contract suite), so a test
suite can swap it in for PostgreSQL. Values are stored serialized, exactly as a database would
hold them: a value the serializer rejects fails the same way, and a stored value cannot be changed
by mutating the object that was saved. Nothing survives the process.

The backend is one class, :class:`InMemoryBackend` (:mod:`.backend`), assembled from one class
per area of the domain, each in its own module: :mod:`.workflows` (records), :mod:`.execution`
(an execution and the steps it hands to other workers), :mod:`.claims` (tasks and claims),
:mod:`.executors` (the workflow registry and executors), on the shared base :mod:`.core`.
"""

from __future__ import annotations

from durable.backends.memory.backend import InMemoryBackend
from durable.backends.memory.core import utcnow

__all__ = ["InMemoryBackend", "utcnow"]
