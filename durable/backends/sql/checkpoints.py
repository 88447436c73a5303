"""SQLite: the write-ahead log checkpointed on a thread of its own, not by the writers.

In WAL mode a commit appends to the ``-wal`` file; a *checkpoint* copies those pages back into
the database file (and, with ``synchronous=NORMAL``, syncs both files). By default SQLite runs
it inside the commit that takes the log past 1,000 pages, so every few hundred commits one
writer pays for copying and syncing them all: about 5 us a step, a tenth of a lone step's
time, spent waiting on the disk by the thread that is running a workflow.

:class:`WalCheckpointer` takes that work off the writers: a daemon thread with its own
connection runs ``PRAGMA wal_checkpoint(PASSIVE)`` every :data:`BUSY_INTERVAL` while the log
grows (backing off to :data:`IDLE_INTERVAL` while it does not), and the writers' connections
checkpoint themselves only past :data:`WRITER_AUTOCHECKPOINT` pages (set by the engine's
connect event, :mod:`.dialects`): the safety net for a checkpointer that falls behind or is
not running (another process's engine, a forked child). What a checkpoint guarantees is
SQLite's either way: a passive checkpoint waits for no reader or writer, copies what no reader
still needs, and a crash in the middle of one loses nothing (the log stays authoritative until
it is reset). Several processes on one file each run one; SQLite lets one checkpoint at a
time, and a passive checkpoint that meets another simply skips its turn.

The checkpointer's connection opens the file in ``mode=rw``: a file deleted under a running
backend is never created again, empty, by the checkpointer. Errors are logged (debug) and the
connection reopened on the next turn: checkpointing is never a reason for a writer to fail.

Each turn it also checks that the path still names the file it started on (device and inode):
SQLite goes on writing to a file deleted (or replaced by another) under its open connections,
and everything written then is lost with it. Once the path names no file or another one, it
calls ``on_lost`` (the backend then refuses every operation, saying why) and stops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable

log = logging.getLogger("durable.backends.sql")

#: Seconds between checkpoints while the log grows.
BUSY_INTERVAL = 0.05
#: The longest pause between checkpoints while nothing is written (the pause doubles from
#: :data:`BUSY_INTERVAL` up to this).
IDLE_INTERVAL = 1.0
#: ``PRAGMA wal_autocheckpoint`` of the writers' connections: pages of log past which a commit
#: checkpoints by itself (SQLite's default is 1,000: reached every few hundred steps). At
#: 4 KiB a page, 40 MiB of log at most between checkpoints.
WRITER_AUTOCHECKPOINT = 10_000


class WalCheckpointer:
    """Checkpoints the write-ahead log of the SQLite database file at ``path`` from a daemon
    thread, from :meth:`start` to :meth:`stop`."""

    def __init__(
        self,
        path: str,
        *,
        busy_interval: float = BUSY_INTERVAL,
        idle_interval: float = IDLE_INTERVAL,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        self.on_lost = on_lost
        """Called (from the thread) with how the file was lost: ``deleted`` or ``replaced``."""
        self.busy_interval = busy_interval
        self.idle_interval = idle_interval
        #: checkpoints that copied pages into the database file (tests and benchmarks read it)
        self.checkpoints = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (once; a stopped checkpointer does not start again)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, name=f"durable-wal-checkpoint:{self.path}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait up to ``timeout`` seconds for its checkpoint in progress;
        it closes its connection as it ends. In a forked child (where the parent's thread does
        not run) this returns at once and leaves the parent's connection alone."""
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        """Whether the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def _identity(self) -> tuple[int, int] | None:
        """The device and inode the path names now (None: no file there)."""
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            return None
        return found.st_dev, found.st_ino

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        pause = self.busy_interval
        last: tuple[int, int] | None = None
        started_on = self._identity()
        try:
            while not self._stopping.wait(pause):
                if started_on is not None and (now_on := self._identity()) != started_on:
                    if self.on_lost is not None:
                        self.on_lost("deleted" if now_on is None else "replaced by another file")
                    return
                try:
                    if conn is None:
                        conn = self._connect()
                    busy, logged, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:
                    log.debug("checkpointing %s failed (retried): %s", self.path, exc)
                    if conn is not None:
                        with contextlib.suppress(sqlite3.Error):
                            conn.close()
                        conn = None
                    pause = self.idle_interval
                    continue
                now = (logged, copied)
                if busy == 0 and copied > 0 and now != last:
                    self.checkpoints += 1
                # written since the last turn: checkpoint again soon; otherwise back off
                pause = self.busy_interval if now != last else min(pause * 2, self.idle_interval)
                last = now
        finally:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    def _connect(self) -> sqlite3.Connection:
        """The thread's connection: the existing file only, autocommit, no waiting for locks
        (a passive checkpoint takes none it would wait for)."""
        uri = f"file:{urllib.parse.quote(self.path)}?mode=rw"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=0")
        return conn
