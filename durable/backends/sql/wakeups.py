"""Wake-ups: telling workers, in this process and (on PostgreSQL) in every other, that work has
become available, so that they claim it now rather than at their next poll.

Part of :class:`~durable.backends.sql.backend.SQLAlchemyBackend` (see :mod:`.core`). On
PostgreSQL a transaction that makes work available sends a notification on
:data:`WORK_CHANNEL`, delivered when (and only if) it commits; each backend listens on a
connection of its own once a worker waits for work.
"""

from __future__ import annotations

import asyncio
import logging

import sqlalchemy as sa

from durable.backends.sql.core import SQLCore, first_line

# the backend's logger, as before the backend was split by area
log = logging.getLogger("durable.backends.sql.backend")

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
        listener = self._listener
        if (
            self.dialect.name == "postgresql"
            and self._started
            and (listener is None or listener.done())  # never started, or died: (re)start it
        ):
            self._listener = asyncio.get_running_loop().create_task(
                self._listen(), name="durable-listen"
            )
        await super().wait_for_work(timeout)

    async def _listen(self) -> None:
        """Turn PostgreSQL notifications on the work channel into local wake-ups, reconnecting
        after the server goes away (quickly at first, then once a second; callers of
        :meth:`wait_for_work` poll meanwhile)."""
        import psycopg

        conninfo = self.engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        failures = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {WORK_CHANNEL}")
                    if failures:
                        log.info(
                            "listening for work again after %d failed attempt(s)",
                            failures,
                            extra={"action": "listen.resumed"},
                        )
                    failures = 0
                    self.notify_work()  # anything committed while we were not listening
                    async for _ in conn.notifies():
                        self.notify_work()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the server went away: polling covers us meanwhile
                failures += 1
                delay = min(0.05 * 2**failures, 1.0)
                log.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "listening for work failed, retrying in %.1fs: %s",
                    delay,
                    first_line(exc),
                    extra={"action": "listen.error"},
                )
                await asyncio.sleep(delay)
