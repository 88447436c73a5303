"""Sessions the server ends while they are idle (``idle_session_timeout``; a pooler's idle
timeout or a restart do the same to a client's connections): a producer and a worker idle past
it go on without an error, and the worker's LISTEN connection, idle by design, is not ended."""

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
