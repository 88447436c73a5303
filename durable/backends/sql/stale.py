"""Connections the server closed while they sat idle, found before a statement is sent on one.

A server ends idle sessions of its own accord: PostgreSQL's ``idle_session_timeout``, a
pooler's idle timeout in front of it, ``pg_terminate_backend``, a restart that is already over,
MariaDB's ``wait_timeout``. It then writes its goodbye and closes the socket. A client that
sends its next statement on such a connection gets the goodbye as that statement's error, and
its caller a ``BackendUnavailableError``, though the database answers. An idle connection has
nothing to say: a socket of one that is readable, or hung up, was closed by the server (or
holds something the server sent unasked, a notice), so it is discarded before use, and a new
connection (or another idle one) serves the statement. Nothing was sent on it, so nothing can
have run twice. A connection a firewall dropped without a word is not found this way (its
socket stays quiet): its statement fails as before.

Used by the direct path (:mod:`.direct`) when it takes an idle connection, and by the engines'
pools at checkout (:func:`discard_stale_at_checkout`): psycopg's connections, aiomysql's and
asyncmy's (whose sockets an event loop's transport reads), and PyMySQL's (sync transactional
steps on MariaDB).
"""

from __future__ import annotations

import select
from typing import Any

import sqlalchemy as sa


def said_something(fileno: int) -> bool:
    """Whether the socket ``fileno`` can be read without waiting, or was hung up."""
    if hasattr(select, "poll"):
        poll = select.poll()
        poll.register(fileno, select.POLLIN | select.POLLPRI)
        return bool(poll.poll(0))  # POLLHUP and POLLERR are reported unasked
    readable, _, failed = select.select([fileno], [], [fileno], 0)
    return bool(readable or failed)


def psycopg_closed_while_idle(conn: Any) -> bool:
    """Whether the idle psycopg connection ``conn`` was closed by the server (see the module)."""
    if conn.closed or conn.broken:
        return True
    try:
        fileno = conn.pgconn.socket
    except Exception:  # no socket any more
        return True
    return said_something(fileno)


def streams_closed_while_idle(conn: Any) -> bool:
    """Whether the idle connection ``conn`` of a driver on asyncio streams (aiomysql, asyncmy:
    a ``_reader`` and a ``_writer``) was closed by the server. The event loop's transport reads
    its socket as data comes: what the server said (its goodbye, the end of the stream) is in
    the reader already, and the transport closed at the end of the stream; what came since the
    loop last ran is still on the socket."""
    reader, writer = getattr(conn, "_reader", None), getattr(conn, "_writer", None)
    if reader is None or writer is None:  # closed
        return True
    transport = writer.transport
    if transport is None or transport.is_closing():
        return True
    if getattr(reader, "_buffer", None) or getattr(reader, "_eof", False):
        return True  # said something, or ended, and the loop has read it
    if reader.exception() is not None:
        return True
    sock = transport.get_extra_info("socket")
    try:
        return sock is None or said_something(sock.fileno())
    except (OSError, ValueError):  # no socket any more
        return True


def socket_closed_while_idle(conn: Any) -> bool:
    """Whether the idle PyMySQL connection ``conn`` (a blocking socket, ``_sock``) was closed
    by the server."""
    sock = getattr(conn, "_sock", None)
    try:
        return sock is None or said_something(sock.fileno())
    except (OSError, ValueError):
        return True


def _driver_closed_while_idle(dbapi_connection: Any) -> bool:
    conn = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    if hasattr(conn, "pgconn"):  # psycopg
        return psycopg_closed_while_idle(conn)
    if hasattr(conn, "_reader") and hasattr(conn, "_writer"):  # aiomysql, asyncmy
        return streams_closed_while_idle(conn)
    if hasattr(conn, "_sock") and hasattr(conn, "_rfile"):  # PyMySQL
        return socket_closed_while_idle(conn)
    return False  # unknown drivers


def discard_stale_at_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """The engine pool's ``checkout`` hook: a connection the server closed while it sat in the
    pool is discarded, and SQLAlchemy checks out another one (or opens one)."""
    if _driver_closed_while_idle(dbapi_connection):
        raise sa.exc.DisconnectionError("the server closed this connection while it was idle")
