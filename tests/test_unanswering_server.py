"""A PostgreSQL server that does not answer: a host that accepts connections and never speaks
(a hung server, a load balancer with no backend behind it) held a client's start, and every
reconnect, for good; and a peer that vanishes without a word was left to the operating
system's hours. durable's connections give up on an attempt after 10 s and probe a silent
peer with TCP keepalives, unless the URL or ``connect_args`` say otherwise."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

import durable

pytestmark = pytest.mark.postgres


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port on which connections are accepted and never answered."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)  # kept open, never written to

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    server.close()
    for conn in held:
        conn.close()


async def _start_fails(url: str, **options: object) -> float:
    """Seconds until starting a client on ``url`` fails as unavailable (within a minute)."""
    started = time.monotonic()
    with pytest.raises(durable.BackendUnavailableError, match="timeout"):
        async with durable.Client(url, **options):  # type: ignore[arg-type]
            pass
    return time.monotonic() - started


async def test_a_server_that_never_answers_fails_the_start_after_10_s(silent_port: int) -> None:
    url = f"postgresql://postgres@127.0.0.1:{silent_port}/test"
    took = await asyncio.wait_for(_start_fails(url), 60)
    assert 9 <= took < 30, took


async def test_the_urls_or_the_callers_connect_timeout_wins(silent_port: int) -> None:
    url = f"postgresql://postgres@127.0.0.1:{silent_port}/test"
    took = await asyncio.wait_for(_start_fails(url + "?connect_timeout=2"), 60)
    assert took < 8, took
    options = {"engine_options": {"connect_args": {"connect_timeout": 2}}}
    took = await asyncio.wait_for(_start_fails(url, **options), 60)
    assert took < 8, took


def _keepalive_idle(fileno: int) -> int:
    sock = socket.socket(fileno=os.dup(fileno))
    try:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
    finally:
        sock.close()


async def test_connections_probe_a_silent_peer_with_keepalives(pg_url: str) -> None:
    async with durable.Client(pg_url) as client:
        backend = client.backend
        assert isinstance(backend, durable.SQLAlchemyBackend)
        async with backend.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            assert _keepalive_idle(raw.driver_connection.pgconn.socket) == 30
    options = {"connect_args": {"keepalives_idle": 5}}
    async with durable.Client(pg_url, engine_options=options) as client:
        backend = client.backend
        assert isinstance(backend, durable.SQLAlchemyBackend)
        async with backend.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            assert _keepalive_idle(raw.driver_connection.pgconn.socket) == 5
