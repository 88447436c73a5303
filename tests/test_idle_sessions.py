"""Sessions the server ends while they are idle (``idle_session_timeout``; a pooler's idle
timeout or a restart do the same to a client's connections): a producer and a worker idle past
it go on without an error, and the worker's LISTEN connection, idle by design, is not ended
(and is opened with the engine's connect arguments, as the others are)."""

from __future__ import annotations

import asyncio
import logging

import psycopg
import pytest
import sqlalchemy as sa
from support import pg_conninfo

import durable

pytestmark = pytest.mark.postgres

IDLE_LIMIT = 0.3


@durable.step
async def one(n: int) -> int:
    return n


@durable.workflow
async def one_step(n: int) -> int:
    return await one(n) + 1


async def test_a_runtime_idle_past_the_servers_idle_session_timeout_goes_on(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    database = sa.make_url(pg_url).database
    async with await psycopg.AsyncConnection.connect(pg_conninfo(pg_url), autocommit=True) as c:
        await c.execute(f"ALTER DATABASE \"{database}\" SET idle_session_timeout = '300ms'")
    caplog.set_level(logging.INFO, logger="durable")
    async with durable.Runtime(durable.connect(pg_url)) as runtime:
        await runtime.start_worker()
        for n in range(3):
            wid = await runtime.enqueue(one_step, n)  # after an idle spell: no error
            assert await runtime.result(wid, timeout=10) == n + 1
            assert (await runtime.get_workflow(wid)).attempts == 1
            await asyncio.sleep(IDLE_LIMIT * 3)
    listening = [r.getMessage() for r in caplog.records if "listening on" in r.getMessage()]
    assert listening == []


async def test_the_workers_listener_connects_with_the_engines_connect_arguments(
    pg_url: str,
) -> None:
    """The LISTEN connection is opened like the others (through the engine: its connect
    arguments and events), not from the URL alone: a password, an SSL setting or a token
    given in ``connect_args`` reaches it too."""
    options = {"connect_args": {"application_name": "durable-listener-args"}}
    async with durable.Runtime(durable.connect(pg_url, engine_options=options)) as runtime:
        await runtime.start_worker()
        wid = await runtime.enqueue(one_step, 1)  # a worker listens for work
        assert await runtime.result(wid, timeout=10) == 2
        async with await psycopg.AsyncConnection.connect(pg_conninfo(pg_url)) as admin:
            for _ in range(100):
                cursor = await admin.execute(
                    "SELECT query FROM pg_stat_activity WHERE application_name = %s",
                    ("durable-listener-args",),
                )
                queries = [str(row[0]) for row in await cursor.fetchall()]
                if any(q.startswith("LISTEN") for q in queries):
                    break
                await asyncio.sleep(0.05)
        assert any(q.startswith("LISTEN") for q in queries), queries
