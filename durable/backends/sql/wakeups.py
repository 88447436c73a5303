"""Wake-ups: telling workers, in this process and (on PostgreSQL) in every other, that work has
become available, so that they claim it now rather than at their next poll.

Part of :class:`~durable.backends.sql.backend.SQLAlchemyBackend` (see :mod:`.core`). On
PostgreSQL a transaction that makes work available sends a notification on
:data:`WORK_CHANNEL`, delivered when (and only if) it commits; each backend listens on a
connection of its own once a worker waits for work.
"""

from __future__ import annotations

import asyncio

import sqlalchemy as sa

from durable.backends.sql.core import SQLCore

#: The PostgreSQL channel on which commits that make work available are announced.
WORK_CHANNEL = "durable_work"


class WakeUps(SQLCore):
    """Announcing available work, and listening for other processes' announcements."""

    _listener: asyncio.Task[None] | None

    def _build_wakeup_statements(self) -> None:
        self._notify = sa.select(sa.func.pg_notify(WORK_CHANNEL, ""))

    def _announce_work(self, conn: sa.Connection) -> None:
        """Inside a transaction that makes work available: tell every listening process (on
        PostgreSQL the notification is delivered when, and only if, the transaction commits)."""
        if self.dialect.name == "postgresql":
            conn.execute(self._notify)

    async def wait_for_work(self, timeout: float) -> None:
        self._listener = self._keep_listening(
            self._listener, WORK_CHANNEL, self.notify_work, lambda _payload: self.notify_work()
        )
        await super().wait_for_work(timeout)
