"""A program that tests/test_exactly_once_crash.py kills with SIGKILL at chosen points of
exactly-once work, and starts again.

It places order ``o-1`` (the order row and its checkout workflow enqueued with
``durable.enqueue_in`` in one transaction, unless the order exists: an application retrying its
request), then runs the checkout to completion (``runtime.run`` of the enqueued id: resumed from
its history after a crash). The checkout has two transactional steps, each writing one line to
the application's ``app_ledger`` table (``debit o-1``, ``credit o-1``); the second also marks the
order paid::

    python txcrashprog.py --url sqlite:///app.db --mode sync --events events.log --pause POINT

``--mode sync``: a sync workflow of ``def`` transactional steps, the order placed on a sync
``Connection``; ``async``: an async workflow of ``async def`` steps (``AsyncConnection``), the
order placed on an ``AsyncConnection`` (SQLite through aiosqlite).

Pause points (the program writes ``PAUSED <point>`` to ``--events``, fsynced, and waits to be
killed): ``enqueue_before_commit`` (the order and its workflow written, not committed),
``enqueue_after_commit`` (committed), ``tx_before_commit`` (the first step's body wrote its
ledger line, not committed), ``tx_after_commit`` (the first step's transaction committed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

import durable
from durable.backends.sql import SQLAlchemyBackend

META = sa.MetaData()
ORDERS = sa.Table(
    "app_orders",
    META,
    sa.Column("id", sa.String(50), primary_key=True),
    sa.Column("status", sa.String(20), nullable=False),
)
LEDGER = sa.Table(
    "app_ledger",
    META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("entry", sa.String(100), nullable=False),
)
WORKFLOW_ID = "checkout-o-1"


class Config:
    events: Path
    pause: str


CONFIG = Config()


def pausing(point: str) -> bool:
    if CONFIG.pause != point:
        return False
    with CONFIG.events.open("a", encoding="utf-8") as f:
        f.write(f"PAUSED {point} {os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())
    return True


def pause_here(point: str) -> None:
    if pausing(point):
        time.sleep(3600)


async def pause_here_async(point: str) -> None:
    if pausing(point):
        await asyncio.sleep(3600)


class Hooked(SQLAlchemyBackend):
    """Pauses just after the first transactional step committed."""

    async def run_transactional_step(self, *args: Any, **kwargs: Any) -> Any:
        made = await super().run_transactional_step(*args, **kwargs)
        if made.position == 0:
            await pause_here_async("tx_after_commit")
        return made

    def run_transactional_step_blocking(self, *args: Any, **kwargs: Any) -> Any:
        made = super().run_transactional_step_blocking(*args, **kwargs)
        if made is not None and made.position == 0:
            pause_here("tx_after_commit")
        return made


# -- sync ---------------------------------------------------------------------------------------


@durable.transaction(name="txcrash.debit")
def debit(conn: sa.Connection, order_id: str) -> str:
    conn.execute(LEDGER.insert().values(entry=f"debit {order_id}"))
    pause_here("tx_before_commit")
    return "debited"


@durable.transaction(name="txcrash.credit")
def credit(conn: sa.Connection, order_id: str) -> str:
    conn.execute(LEDGER.insert().values(entry=f"credit {order_id}"))
    conn.execute(ORDERS.update().where(ORDERS.c.id == order_id).values(status="paid"))
    return "credited"


@durable.workflow(name="txcrash.checkout.sync.v1")
def checkout_sync(order_id: str) -> list[str]:
    return [debit(order_id), credit(order_id)]


# -- async --------------------------------------------------------------------------------------


@durable.transaction(name="txcrash.debit_async")
async def debit_async(conn: AsyncConnection, order_id: str) -> str:
    await conn.execute(LEDGER.insert().values(entry=f"debit {order_id}"))
    await pause_here_async("tx_before_commit")
    return "debited"


@durable.transaction(name="txcrash.credit_async")
async def credit_async(conn: AsyncConnection, order_id: str) -> str:
    await conn.execute(LEDGER.insert().values(entry=f"credit {order_id}"))
    await conn.execute(ORDERS.update().where(ORDERS.c.id == order_id).values(status="paid"))
    return "credited"


@durable.workflow(name="txcrash.checkout.async.v1")
async def checkout_async(order_id: str) -> list[str]:
    return [await debit_async(order_id), await credit_async(order_id)]


# -- the application ------------------------------------------------------------------------------


def place_order_sync(url: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            if conn.execute(sa.select(ORDERS.c.id).where(ORDERS.c.id == "o-1")).first():
                return  # placed before the crash: the application's retry does nothing
            conn.execute(ORDERS.insert().values(id="o-1", status="new"))
            durable.enqueue_in(conn, checkout_sync, "o-1", workflow_id=WORKFLOW_ID)
            pause_here("enqueue_before_commit")
        pause_here("enqueue_after_commit")
    finally:
        engine.dispose()


async def place_order_async(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            found = await conn.execute(sa.select(ORDERS.c.id).where(ORDERS.c.id == "o-1"))
            if found.first():
                return
            await conn.execute(ORDERS.insert().values(id="o-1", status="new"))
            await durable.enqueue_in(conn, checkout_async, "o-1", workflow_id=WORKFLOW_ID)
            await pause_here_async("enqueue_before_commit")
        await pause_here_async("enqueue_after_commit")
    finally:
        await engine.dispose()


async def main_async(url: str) -> None:
    async with durable.Runtime(Hooked(url), executor_id="txcrash", recover=False) as rt:
        await place_order_async(url)
        print(await rt.run(checkout_async, "o-1", workflow_id=WORKFLOW_ID))


def main_sync(url: str) -> None:
    with durable.Runtime(Hooked(url), executor_id="txcrash", recover=False) as rt:
        place_order_sync(url)
        print(rt.run_sync(checkout_sync, "o-1", workflow_id=WORKFLOW_ID))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--mode", choices=["sync", "async"], required=True)
    parser.add_argument("--events", type=Path, required=True)
    parser.add_argument("--pause", default="none")
    args = parser.parse_args()
    CONFIG.events, CONFIG.pause = args.events, args.pause
    url: str = args.url
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1]
        url = f"sqlite+aiosqlite:///{path}" if args.mode == "async" else f"sqlite:///{path}"
    engine = sa.create_engine(url.replace("+aiosqlite", ""))
    META.create_all(engine)
    engine.dispose()
    if args.mode == "async":
        asyncio.run(main_async(url))
    else:
        main_sync(url)


if __name__ == "__main__":
    main()
