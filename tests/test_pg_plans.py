"""The plans PostgreSQL runs for the direct path's statements (durable/backends/sql/direct.py).

A worker's statements must reach rows through their keys however large the tables are and
whatever statistics PostgreSQL has of them. The case that went wrong: right after a bulk
enqueue, the tasks table has no statistics yet; the planner guessed that a claim would match one
task and scanned and sorted the whole table for every claim, so that a drain cost time
quadratic in its backlog. And a claim was planned anew at every execution.

Observed through ``auto_explain`` on the worker's own connections: every statement they run
logs its plan (as JSON) to the client, which collects it through a connect event.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

import durable
from durable.backends import SQLAlchemyBackend

pytestmark = pytest.mark.postgres

WAIT = 120.0  # an upper bound, never reached when green
REG = durable.Registry()
BACKLOG = 3000
#: The tables that grow with the work; a scan of a whole one per statement is the fault.
GROWING = {"durable_tasks", "durable_workflows", "durable_steps"}
AUTO_EXPLAIN = (
    "-c session_preload_libraries=auto_explain -c auto_explain.log_min_duration=0 "
    "-c auto_explain.log_format=json -c client_min_messages=log"
)


@durable.step(name="plans.touch")
async def touch(i: int) -> int:
    return i


@durable.workflow(name="plans.job", registry=REG)
async def job(i: int) -> int:
    return await touch(i)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _plans(notices: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(statement text, plan) of every auto_explain message."""
    out = []
    for message in notices:
        if not message.startswith("duration:"):
            continue
        document = json.loads(message.split("plan:", 1)[1])
        out.append((document["Query Text"], document))
    return out


def plans_of(
    notices: list[str], keep: Callable[[str], bool], least: int
) -> list[tuple[str, dict[str, Any]]]:
    """The (text, plan) of the statements ``keep`` picks by their text; at least ``least``."""
    found = [(text, plan) for text, plan in _plans(notices) if keep(text.lstrip())]
    assert len(found) >= least, f"{len(found)} such plans seen among {len(notices)} messages"
    return found


def explained(pg_url: str) -> tuple[SQLAlchemyBackend, list[str]]:
    """A backend whose connections log every plan they run to the client, and the list that
    collects those messages."""
    backend = durable.connect(pg_url, engine_options={"connect_args": {"options": AUTO_EXPLAIN}})
    assert isinstance(backend, SQLAlchemyBackend)
    notices: list[str] = []

    @sa.event.listens_for(backend.engine.sync_engine, "connect")
    def collect(dbapi_connection: Any, record: Any) -> None:
        conn = dbapi_connection.driver_connection
        assert isinstance(conn, psycopg.AsyncConnection)
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))

    return backend, notices


async def test_a_drain_after_a_bulk_enqueue_reaches_rows_by_key(pg_url: str) -> None:
    backend, notices = explained(pg_url)

    async with durable.Runtime(
        backend, executor_id="plans", registry=REG, recover=False, claim_ttl=30
    ) as rt:
        ids = await rt.enqueue_many(job, [(i,) for i in range(BACKLOG)])
        async with backend.engine.connect() as conn:  # no statistics: never analyzed
            analyzed = await conn.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_stat_user_tables WHERE relname = 'durable_tasks' "
                    "AND (last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL)"
                )
            )
        assert analyzed == 0
        worker = await rt.start_worker(concurrency=16, poll_interval=0.05)
        for wid in (ids[0], ids[len(ids) // 2], ids[-1]):
            assert await rt.result(wid, timeout=WAIT) in range(BACKLOG)
        await worker.stop()

    plans = _plans(notices)
    claims = [(text, plan) for text, plan in plans if text.lstrip().startswith("WITH picked")]
    assert len(claims) >= 20, f"{len(claims)} claim plans seen among {len(plans)} plans"
    worker_statements = [
        (text, plan)
        for text, plan in plans
        if "unnest" in text or text.lstrip().startswith(("WITH picked", "WITH taken"))
    ]
    for text, plan in worker_statements:
        nodes = list(_nodes(plan["Plan"]))
        scanned = {n.get("Relation Name") for n in nodes if n["Node Type"] == "Seq Scan"}
        assert not scanned & GROWING, f"a whole-table scan of {scanned & GROWING} in:\n{text}"
        # the costs the planner settings inflate must not buy a JIT compilation per statement
        assert "JIT" not in plan, f"JIT-compiled:\n{text}"
    # the claim takes the first due tasks in the index's order: no sort of the tasks it reads
    for text, plan in claims:
        for node in _nodes(plan["Plan"]):
            if node["Node Type"] == "Sort":
                assert not any("durable_tasks" in key for key in node["Sort Key"]), text


async def test_a_bulk_enqueue_into_a_table_without_statistics_looks_rows_up_by_key(
    pg_url: str,
) -> None:
    """enqueue_many looks up the ids and keys of its rows that exist already (on PostgreSQL,
    those its insert skipped). Against a table with rows but no statistics yet (the minute
    after a bulk enqueue), ``id = ANY(:ids)`` was planned as a scan of every stored workflow,
    page after page: each bulk enqueue was slower than the one before."""
    backend, notices = explained(pg_url)

    async with durable.Client(backend) as client:
        first = await client.enqueue_many(job, [(i,) for i in range(BACKLOG)])
        async with backend.engine.connect() as conn:
            analyzed = await conn.scalar(
                sa.text(
                    "SELECT count(*) FROM pg_stat_user_tables WHERE relname = "
                    "'durable_workflows' AND (last_analyze IS NOT NULL OR "
                    "last_autoanalyze IS NOT NULL)"
                )
            )
        assert analyzed == 0
        notices.clear()
        rows = [durable.Enqueue(args=(i,), idempotency_key=f"k{i}") for i in range(1200)]
        stored = [durable.Enqueue(args=(0,), workflow_id=w) for w in first[:600]]
        again = await client.enqueue_many(job, rows + stored)
        assert again[1200:] == first[:600] and len(set(again)) == 1800  # the stored ids back
        assert await client.enqueue_many(job, rows[:700]) == again[:700]  # by their keys

    # the rows that exist, by pages of 500: 600 of the second batch, 700 of the third
    lookups = plans_of(notices, lambda t: t.startswith("SELECT") and "idempotency_key = " in t, 4)
    for text, plan in lookups:
        scanned = {n.get("Relation Name") for n in _nodes(plan["Plan"]) if "Seq" in n["Node Type"]}
        assert "durable_workflows" not in scanned, f"a whole-table scan in:\n{text}"


async def test_a_limited_queue_drains_a_bulk_backlog_by_key(pg_url: str) -> None:
    """A queue with limits is claimed in a transaction of its own (its lock, its counts, the
    claim), not on the direct path with its planner settings. Right after a bulk enqueue the
    claim there sorted every task of the table, claim after claim."""
    backend, notices = explained(pg_url)

    limited = durable.Queue("plans-limited", concurrency=8, rate_limit=(1_000_000, 1))
    async with durable.Runtime(
        backend, executor_id="plans", registry=REG, recover=False, queues=[limited]
    ) as rt:
        ids = await rt.enqueue_many(job, [(i,) for i in range(BACKLOG)], queue=limited)
        worker = await rt.start_worker(concurrency=8, poll_interval=0.05)
        for wid in (ids[0], ids[len(ids) // 2], ids[-1]):
            assert await rt.result(wid, timeout=WAIT) in range(BACKLOG)
        await worker.stop()
        # the settings were the claims' transactions' own: the pooled connections kept theirs
        async with backend.engine.connect() as conn:
            shown = await conn.execute(sa.text("SELECT current_setting('enable_sort')"))
            assert shown.scalar() == "on"

    claims = plans_of(
        notices, lambda t: t.startswith("WITH picked") and "durable_tasks.queue = $" in t, 20
    )
    for text, plan in claims:
        for node in _nodes(plan["Plan"]):
            assert node.get("Relation Name") != "durable_tasks" or "Seq" not in node["Node Type"]
            if node["Node Type"] == "Sort":
                assert not any("durable_tasks" in key for key in node["Sort Key"]), text
        assert "JIT" not in plan, f"JIT-compiled:\n{text}"
