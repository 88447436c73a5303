"""Steps defined as methods: ``@durable.step`` (and ``@durable.transaction``) in a class body
bind to the instance they are looked up on, as methods do. Before, ``await service.charge(5)``
failed with ``TypeError: missing 1 required positional argument`` (the instance was never
passed). And a generator function, which cannot be recorded as one result, is refused where it
is decorated, not at its first call with an unrelated message."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

import durable

REG = durable.Registry()


class Payments:
    """A service object whose methods are steps: its state is the instance's, not recorded."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.calls: list[str] = []

    @durable.step
    async def charge(self, amount: int) -> int:
        self.calls.append(f"charge {amount}")
        return amount * self.rate

    @durable.step(max_attempts=1)
    def receipt(self, total: int) -> str:
        self.calls.append(f"receipt {total}")
        if FAIL_RECEIPT:
            FAIL_RECEIPT.pop()
            raise RuntimeError("the printer jammed")
        return f"paid {total}"


FAIL_RECEIPT: list[bool] = []
PAYMENTS = Payments(rate=3)


@durable.workflow(
    name="tests.methods.checkout.v1",
    registry=REG,
    retry=durable.RetryPolicy(max_attempts=2, initial_delay=0.05),
)
async def checkout(amount: int) -> str:
    total = await PAYMENTS.charge(amount)
    return await PAYMENTS.receipt.aio(total)


@durable.workflow(name="tests.methods.checkout_sync.v1", registry=REG)
def checkout_sync(amount: int) -> str:
    return PAYMENTS.receipt(amount)


def test_a_step_looked_up_on_the_class_is_the_step() -> None:
    step = Payments.__dict__["charge"]
    assert Payments.charge is step
    assert step.name == f"{__name__}:Payments.charge"
    assert PAYMENTS.charge.name == step.name
    assert "bound to" in repr(PAYMENTS.charge)


async def test_method_steps_get_their_instance_and_are_recorded(backend_url: str) -> None:
    PAYMENTS.calls.clear()
    FAIL_RECEIPT[:] = [True]  # the first attempt fails after its first step was recorded
    backend = durable.connect(backend_url)
    async with durable.Runtime(backend, registry=REG, poll_interval=0.05) as rt:
        await rt.start_worker(poll_interval=0.05)
        order = await rt.enqueue(checkout, 5, workflow_id="order-1")
        assert await rt.result(order, timeout=30) == "paid 15"
        # the retry replayed the recorded charge: it ran once; the receipt ran twice
        assert PAYMENTS.calls == ["charge 5", "receipt 15", "receipt 15"]
        steps = await rt.list_steps("order-1")
        assert [s.name for s in steps] == [
            f"{__name__}:Payments.charge",
            f"{__name__}:Payments.receipt",
        ]
        # a finished execution returns its stored result without calling anything
        assert await rt.run(checkout, 5, workflow_id="order-1") == "paid 15"
        assert await rt.run(checkout_sync, 7, workflow_id="order-2") == "paid 7"
        assert PAYMENTS.calls[-1] == "receipt 7"
        assert len(PAYMENTS.calls) == 4


LEDGER = sa.Table(
    "methods_ledger",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("entry", sa.String(100), nullable=False),
)


class Ledger:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    @durable.transaction
    def book(self, conn: sa.Connection, entry: str) -> int:
        conn.execute(LEDGER.insert().values(entry=f"{self.prefix}{entry}"))
        return int(conn.execute(sa.select(sa.func.count()).select_from(LEDGER)).scalar_one())


BOOKS = Ledger("acme:")


@durable.workflow(name="tests.methods.book.v1", registry=REG)
def book_twice(entry: str) -> list[int]:
    return [BOOKS.book(entry), BOOKS.book(entry + "-2")]


def test_a_transaction_step_method_gets_its_instance_before_the_connection(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    engine = sa.create_engine(url)
    LEDGER.metadata.create_all(engine)
    with durable.Runtime(durable.connect(url), registry=REG) as rt:
        assert rt.run_sync(book_twice, "x", workflow_id="b-1") == [1, 2]
        assert rt.run_sync(book_twice, "x", workflow_id="b-1") == [1, 2]  # recorded
    with engine.connect() as conn:
        assert [r[0] for r in conn.execute(sa.select(LEDGER.c.entry))] == ["acme:x", "acme:x-2"]
    engine.dispose()


@durable.workflow(name="tests.methods.mapped.v1", registry=REG)
async def mapped(n: int) -> list[int]:
    return await durable.map(PAYMENTS.charge, range(n))


async def test_map_refuses_a_bound_step_and_says_why() -> None:
    async with durable.Runtime(durable.connect("memory://"), registry=REG) as rt:
        with pytest.raises(durable.InvalidArgumentError, match="other workers run its calls"):
            await rt.run(mapped, 2)


def test_generator_functions_are_refused_where_they_are_decorated() -> None:
    def numbers() -> object:
        yield 1

    async def tokens() -> object:
        yield "a"

    for decorate in (durable.step, durable.workflow, durable.transaction):
        with pytest.raises(durable.InvalidArgumentError, match=r"a generator function '.*numbers'"):
            decorate(numbers)
        with pytest.raises(durable.InvalidArgumentError, match="async generator function"):
            decorate(tokens)
