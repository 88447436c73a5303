"""Bulk enqueue: ``Client.enqueue_many`` / ``Runtime.enqueue_many`` and the backends'
``create_workflows``, on every backend (memory, SQLite with both drivers, PostgreSQL).

Each batch is one transaction: ids come back in input order, idempotency keys and ids are
honoured per row (against the database and within the batch), a bad row refuses the whole
batch naming the row and writes nothing, and the executions are visible to workers.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from support import pg_conninfo

import durable
from durable.context import current
from durable.models import TaskSpec, WorkflowSnapshot

REG = durable.Registry()
WAIT = 60.0


@durable.workflow(name="tests.many.double.v1", registry=REG, queue="doubles")
async def double(n: int) -> int:
    return 2 * n


@durable.workflow(name="tests.many.greet.v1", registry=REG)
async def greet(name: str, *, punctuation: str = "!") -> str:
    return f"hello {name}{punctuation}"


@durable.workflow(name="tests.many.parent.v1", registry=REG)
async def parent(n: int) -> list[str]:
    ctx = current()
    assert ctx is not None
    return await ctx.runtime.enqueue_many(double, [(i,) for i in range(n)])


@asynccontextmanager
async def opened(url: str) -> AsyncIterator[durable.Client]:
    async with durable.Client(url, poll_interval=0.05) as client:
        yield client


async def count(client: durable.Client) -> int:
    page = await client.list_workflows(limit=20_000)
    return len(page.items)


async def test_ids_in_input_order_with_their_arguments(backend_url: str) -> None:
    async with opened(backend_url) as client:
        ids = await client.enqueue_many(double, [(n,) for n in range(20)])
        assert len(ids) == len(set(ids)) == 20
        for n, workflow_id in enumerate(ids):
            info = await client.get_workflow(workflow_id)
            assert info.name == "tests.many.double.v1"
            assert info.input == {"args": [n], "kwargs": {}}
            assert info.queue == "doubles"  # the workflow's queue
            assert info.status is durable.WorkflowStatus.PENDING
        assert await count(client) == 20


async def test_fresh_ids_are_random_uuids_and_given_ids_are_kept(backend_url: str) -> None:
    async with opened(backend_url) as client:
        rows = [
            durable.Enqueue(args=(n,), workflow_id=f"given-{n}") if n % 3 == 0 else (n,)
            for n in range(300)
        ]
        ids = await client.enqueue_many(double, rows)
    assert len(set(ids)) == 300
    for n, workflow_id in enumerate(ids):
        if n % 3 == 0:
            assert workflow_id == f"given-{n}"
        else:  # as str(uuid.uuid4()) writes them
            parsed = uuid.UUID(workflow_id)
            assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
            assert str(parsed) == workflow_id


async def test_rows_of_several_workflows_with_their_own_options(backend_url: str) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    async with opened(backend_url) as client:
        ids = await client.enqueue_many(
            None,
            [
                durable.Enqueue(fn=double, args=(1,), workflow_id="row-0", priority=5),
                durable.Enqueue(
                    fn="tests.many.greet.v1", args=("ann",), kwargs={"punctuation": "?"}
                ),
                durable.Enqueue(fn=greet, args=["bob"], queue="q2", max_attempts=7),
                durable.Enqueue(fn=double, args=(4,), run_after=later),
            ],
            priority=2,
        )
        assert ids[0] == "row-0"
        first = await client.get_workflow("row-0")
        assert (first.priority, first.max_attempts) == (5, 3)
        second = await client.get_workflow(ids[1])
        assert second.name == "tests.many.greet.v1"
        assert second.input == {"args": ["ann"], "kwargs": {"punctuation": "?"}}
        assert (second.priority, second.queue) == (2, "default")
        third = await client.get_workflow(ids[2])
        assert (third.queue, third.max_attempts, third.priority) == ("q2", 7, 2)
        backend = client.backend
        due = await backend.find_available_tasks("someone", 10)
        assert {t.instance_id for t in due} == set(ids[:3])  # the fourth is not due for an hour


async def test_queues_given_as_declared_queue_objects(backend_url: str) -> None:
    """As for ``enqueue``: a :class:`durable.Queue` names its queue, for the batch and a row."""
    emails, bulk = durable.Queue("emails", concurrency=2), durable.Queue("bulk")
    async with opened(backend_url) as client:
        ids = await client.enqueue_many(
            double, [(1,), durable.Enqueue(args=(2,), queue=bulk)], queue=emails
        )
        assert [(await client.get_workflow(i)).queue for i in ids] == ["emails", "bulk"]
        with pytest.raises(durable.InvalidArgumentError, match=r"inputs\[0\]: queue"):
            await client.enqueue_many(double, [durable.Enqueue(args=(3,), queue=7)])  # type: ignore[arg-type]


async def test_a_batch_stores_what_single_enqueues_store(backend_url: str) -> None:
    """Row by row, a batch's headers and tasks are those of the same enqueues made one at a
    time: values given and values left out (NULL in the database) side by side."""
    deadline = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    later = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    full = {"idempotency_key": "key-full", "deadline": deadline, "run_after": later}
    full |= {"priority": -3, "max_attempts": 9, "queue": "q-full", "labels": {"k": "v"}}
    async with opened(backend_url) as client:
        ids = await client.enqueue_many(
            double,
            [(1,), durable.Enqueue(args=(2,), **full), durable.Enqueue(args=(3,), delay=30)],
        )
        singles = [
            await client.enqueue(double, 1),
            await client.enqueue(double, 2, **{**full, "idempotency_key": "key-single"}),
            await client.enqueue(double, 3, delay=30),
        ]
        ignored = {"id", "idempotency_key", "input", "created_at", "updated_at", "version"}
        for batched, single in zip(ids, singles, strict=True):
            a = await client.get_workflow(batched)
            b = await client.get_workflow(single)
            assert a.input["args"] == b.input["args"]
            fields = set(type(a).__dataclass_fields__) - ignored
            assert {f: getattr(a, f) for f in fields} == {f: getattr(b, f) for f in fields}
            task_a = await client.backend.get_task(batched, "workflow")
            task_b = await client.backend.get_task(single, "workflow")
            assert (task_a.queue, task_a.priority) == (task_b.queue, task_b.priority)
            assert (task_a.run_after == later) == (task_b.run_after == later)
            # due at the same moment give or take the seconds between the two enqueues (by the
            # database's clock on PostgreSQL: now plus the delay)
            assert abs(task_a.run_after - task_b.run_after) < timedelta(seconds=5)
            assert await client.get_labels(batched) == await client.get_labels(single)
        batched_full = await client.get_workflow(ids[1])
        assert (batched_full.idempotency_key, batched_full.deadline) == ("key-full", deadline)
        plain = await client.get_workflow(ids[0])
        assert (plain.idempotency_key, plain.deadline, plain.parent_id) == (None, None, None)
        assert (plain.queue, plain.max_attempts, plain.priority) == ("doubles", 3, 0)


async def test_idempotency_within_one_batch(backend_url: str) -> None:
    async with opened(backend_url) as client:
        ids = await client.enqueue_many(
            double,
            [
                durable.Enqueue(args=(1,), idempotency_key="k-a"),
                durable.Enqueue(args=(2,), workflow_id="same-id"),
                durable.Enqueue(args=(3,), idempotency_key="k-a"),
                durable.Enqueue(args=(4,), workflow_id="same-id"),
                (5,),
            ],
        )
        assert ids[0] == ids[2] and ids[1] == ids[3] == "same-id"
        assert len(set(ids)) == 3
        assert (await client.get_workflow(ids[0])).input == {"args": [1], "kwargs": {}}
        assert (await client.get_workflow("same-id")).input == {"args": [2], "kwargs": {}}
        assert await count(client) == 3
        tasks = await client.backend.find_available_tasks("someone", 10)
        assert len(tasks) == 3  # one task per execution, not per row


async def test_idempotency_across_batches_and_single_enqueues(backend_url: str) -> None:
    async with opened(backend_url) as client:
        single = await client.enqueue(double, 0, idempotency_key="k-0")
        first = await client.enqueue_many(
            double, [durable.Enqueue(args=(n,), idempotency_key=f"k-{n}") for n in range(1, 4)]
        )
        second = await client.enqueue_many(
            double,
            [
                durable.Enqueue(args=(99,), idempotency_key="k-2"),
                durable.Enqueue(args=(99,), idempotency_key="k-0"),
                durable.Enqueue(args=(4,), idempotency_key="k-4"),
                durable.Enqueue(args=(99,), workflow_id=first[0]),
            ],
        )
        assert second[:2] == [first[1], single]
        assert second[2] not in first and second[2] != single
        assert second[3] == first[0]
        assert (await client.get_workflow(first[1])).input == {"args": [2], "kwargs": {}}
        assert await client.enqueue(double, 99, idempotency_key="k-4") == second[2]
        assert await count(client) == 5


async def test_concurrent_batches_with_the_same_keys_in_other_orders(backend_url: str) -> None:
    """Producers enqueueing the same keys at once, each in its own order: every key is one
    execution, and each producer gets its id. On PostgreSQL two such inserts wait for each
    other's keys, and the database breaks the deadlock by rolling one back: that batch runs
    again (it used to fail with "deadlock detected")."""
    keys = list(range(4000))
    orders = [keys, keys[::-1], keys[1::2] + keys[::2]]
    async with opened(backend_url) as client:  # its pool: a connection per producer

        async def produce(order: list[int]) -> dict[int, str]:
            ids: dict[int, str] = {}
            for start in range(0, len(order), 1000):
                part = order[start : start + 1000]
                rows = [durable.Enqueue(args=(n,), idempotency_key=f"c-{n}") for n in part]
                ids.update(zip(part, await client.enqueue_many(double, rows), strict=True))
            return ids

        first, *others = await asyncio.gather(*(produce(order) for order in orders))
        assert all(ids == first for ids in others)
        assert len(set(first.values())) == len(keys)
        assert await count(client) == len(keys)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (durable.Enqueue(args=(1,), priority="high"), "inputs[2]: priority"),  # type: ignore[arg-type]
        (durable.Enqueue(args=(1,), workflow_id=""), "inputs[2]: workflow_id"),
        (durable.Enqueue(args=(1,), idempotency_key="a\x00b"), "inputs[2]: idempotency_key"),
        (durable.Enqueue(args=(1,), max_attempts=0), "inputs[2]: max_attempts"),
        (durable.Enqueue(args=(1,), delay=float("nan")), "inputs[2]: delay"),
        (durable.Enqueue(args=(1,), queue=""), "inputs[2]: queue"),
        (
            durable.Enqueue(args=(1,), delay=5, run_after=datetime(2030, 1, 1, tzinfo=UTC)),
            "inputs[2]: give run_after or delay",
        ),
        (durable.Enqueue(args=(1,), fn=print), "inputs[2]: "),  # type: ignore[arg-type]
        ({"n": 1}, "inputs[2]: a row must be a tuple or list"),
        (7, "inputs[2]: a row must be a tuple or list"),
    ],
)
async def test_a_bad_row_refuses_the_batch_and_writes_nothing(
    backend_url: str, row: object, message: str
) -> None:
    async with opened(backend_url) as client:
        with pytest.raises(durable.InvalidArgumentError) as caught:
            await client.enqueue_many(double, [(1,), (2,), row, (4,)])  # type: ignore[list-item]
        assert message in str(caught.value)
        assert await count(client) == 0


async def test_unserializable_arguments_refuse_the_batch(backend_url: str) -> None:
    async with opened(backend_url) as client:
        with pytest.raises(durable.SerializationError, match=r"inputs\[1\]"):
            await client.enqueue_many(double, [(1,), (object(),), (3,)])
        assert await count(client) == 0


async def test_an_id_or_key_of_another_workflow_refuses_the_batch(backend_url: str) -> None:
    async with opened(backend_url) as client:
        taken = await client.enqueue(greet, "x", idempotency_key="greeting")
        # the key the user gave is named (not the row's generated id)
        key_named = r"inputs\[1\]: idempotency key 'greeting' belongs to workflow .*greet"
        with pytest.raises(durable.InvalidArgumentError, match=key_named):
            await client.enqueue_many(
                double, [(1,), durable.Enqueue(args=(2,), idempotency_key="greeting"), (3,)]
            )
        with pytest.raises(durable.InvalidArgumentError, match=r"inputs\[2\]: workflow id .*greet"):
            await client.enqueue_many(
                double, [(1,), (2,), durable.Enqueue(args=(2,), workflow_id=taken)]
            )
        with pytest.raises(durable.InvalidArgumentError, match=r"inputs\[1\].*inputs\[0\]"):
            await client.enqueue_many(
                None,
                [
                    durable.Enqueue(fn=double, args=(1,), workflow_id="mine"),
                    durable.Enqueue(fn=greet, args=("y",), workflow_id="mine"),
                ],
            )
        assert await count(client) == 1


async def test_batch_level_errors(backend_url: str) -> None:
    async with opened(backend_url) as client:
        assert await client.enqueue_many(double, []) == []
        with pytest.raises(durable.InvalidArgumentError, match="inputs must be an iterable"):
            await client.enqueue_many(double, "abc")  # type: ignore[arg-type]
        with pytest.raises(durable.InvalidArgumentError, match=r"inputs\[0\]: no workflow"):
            await client.enqueue_many(None, [(1,)])
        with pytest.raises(durable.InvalidArgumentError, match="priority"):
            await client.enqueue_many(double, [(1,)], priority=2**40)
        with pytest.raises(durable.InvalidArgumentError, match="not a durable workflow"):
            await client.enqueue_many(print, [(1,)])  # type: ignore[arg-type]
        assert await count(client) == 0


async def test_the_sizes_one_and_ten_thousand(backend_url: str) -> None:
    async with opened(backend_url) as client:
        (only,) = await client.enqueue_many(double, [(7,)])
        assert (await client.get_workflow(only)).input == {"args": [7], "kwargs": {}}
        keyed = [durable.Enqueue(args=(n,), idempotency_key=f"big-{n}") for n in range(10_000)]
        ids = await client.enqueue_many("tests.many.double.v1", keyed)
        assert len(set(ids)) == 10_000
        assert await count(client) == 10_001
        sample = [0, 4_321, 9_999]
        for n in sample:
            assert (await client.get_workflow(ids[n])).input == {"args": [n], "kwargs": {}}
        again = await client.enqueue_many("tests.many.double.v1", keyed[::-1])
        assert again == ids[::-1]
        assert await count(client) == 10_001
        claims = await client.backend.claim_available_tasks(
            "w", 20_000, timedelta(minutes=5), names=["tests.many.double.v1"]
        )
        assert len(claims) == 10_001


async def test_workers_run_what_a_batch_enqueued(backend_url: str) -> None:
    backend = durable.connect(backend_url)
    runtime = durable.Runtime(backend, registry=REG, recover=False, poll_interval=0.05)
    async with runtime:
        await runtime.start_worker(poll_interval=0.05)
        ids = await runtime.enqueue_many(double, [(n,) for n in range(12)])
        named = await runtime.enqueue_many(
            "tests.many.greet.v1", [durable.Enqueue(args=("ann",), kwargs={"punctuation": "."})]
        )
        assert [await runtime.result(i, timeout=WAIT) for i in ids] == [2 * n for n in range(12)]
        assert await runtime.result(named[0], timeout=WAIT) == "hello ann."


async def test_the_runtime_resolves_names(backend_url: str) -> None:
    runtime = durable.Runtime(durable.connect(backend_url), registry=REG, recover=False)
    async with runtime:
        with pytest.raises(durable.UnknownWorkflowError):
            await runtime.enqueue_many("nobody.serves.this.v1", [(1,)])
        (elsewhere,) = await runtime.enqueue_many(
            "nobody.serves.this.v1", [(1,)], served_elsewhere=True
        )
        assert (await runtime.get_workflow(elsewhere)).name == "nobody.serves.this.v1"


async def test_inside_a_workflow_the_batch_is_one_recorded_step(backend_url: str) -> None:
    backend = durable.connect(backend_url)
    durable_runtime = durable.Runtime(backend, registry=REG, recover=False, poll_interval=0.05)
    async with durable_runtime:
        ids = await durable_runtime.run(parent, 3, workflow_id="parent-1")
        assert ids == [f"parent-1/0/{i}" for i in range(3)]
        steps = await durable_runtime.list_steps("parent-1")
        assert [s.output for s in steps] == [ids]
        for workflow_id in ids:
            assert (await durable_runtime.get_workflow(workflow_id)).parent_id == "parent-1"


def test_sync_twin(sqlite_url: str) -> None:
    with durable.Client(sqlite_url) as client:
        ids = client.enqueue_many_sync(double, [(1,), (2,)], priority=3)
        assert [client.get_workflow_sync(i).priority for i in ids] == [3, 3]


async def test_backend_create_workflows_contract(backend_url: str) -> None:
    """The backend operation itself: created flags per row, and rows without a task."""
    backend = durable.connect(backend_url)
    async with backend:

        def row(
            workflow_id: str, key: str | None, task: bool
        ) -> tuple[WorkflowSnapshot, TaskSpec | None]:
            snapshot = WorkflowSnapshot(
                id=workflow_id, name="n.v1", input={"args": [], "kwargs": {}}, idempotency_key=key
            )
            spec = TaskSpec(instance_id=workflow_id, name="n.v1") if task else None
            return snapshot, spec

        results = await backend.create_workflows(
            [
                row("a", "ka", True),
                row("b", None, False),
                row("c", "ka", True),
                row("a", None, True),
            ]
        )
        assert [(info.id, created) for info, created in results] == [
            ("a", True),
            ("b", True),
            ("a", False),
            ("a", False),
        ]
        assert all(info.version == 1 for info, _ in results)
        again = await backend.create_workflows([row("b", None, True), row("d", "ka", True)])
        assert [(info.id, created) for info, created in again] == [("b", False), ("a", False)]
        tasks = await backend.find_available_tasks("w", 10)
        assert sorted(t.instance_id for t in tasks) == ["a"]  # b was created without one
        assert await backend.create_workflows([]) == []


async def test_text_that_copy_rows_escape_is_stored_as_given(backend_url: str) -> None:
    """Tabs, line breaks, carriage returns and backslashes (what PostgreSQL's COPY text rows
    escape, ``\\N`` being their NULL) in an id, a key and the arguments are stored as given,
    and the key still finds its execution."""
    odd = "a\tb\nc\rd\\e\\N"
    async with opened(backend_url) as client:
        ids = await client.enqueue_many(
            greet,
            [
                durable.Enqueue(
                    args=(odd,),
                    kwargs={"punctuation": odd},
                    workflow_id=f"w{odd}",
                    idempotency_key=f"k{odd}",
                )
            ],
        )
        assert ids == [f"w{odd}"]
        info = await client.get_workflow(ids[0])
        assert info.idempotency_key == f"k{odd}"
        assert info.input["args"] == [odd] and info.input["kwargs"] == {"punctuation": odd}
        again = await client.enqueue_many(
            greet, [durable.Enqueue(args=("other",), idempotency_key=f"k{odd}")]
        )
        assert again == ids


@pytest.mark.postgres
async def test_a_session_ended_while_a_batch_is_written_writes_nothing(pg_url: str) -> None:
    """The server ends the session in the middle of a batch's rows (a trigger on the tasks
    table terminates its own backend): the call fails as an outage, not as a driver's error,
    nothing of the batch is stored, and the same call made again stores it all."""
    rows = [(n,) for n in range(300)]
    async with opened(pg_url) as client:
        async with await psycopg.AsyncConnection.connect(
            pg_conninfo(pg_url), autocommit=True
        ) as admin:
            await admin.execute(
                "CREATE FUNCTION hang_up() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$"
            )
            await admin.execute(
                "CREATE TRIGGER hang_up BEFORE INSERT ON durable_tasks "
                "FOR EACH ROW EXECUTE FUNCTION hang_up()"
            )
            with pytest.raises(durable.BackendUnavailableError, match="create 300 workflow"):
                await client.enqueue_many(double, rows)
            assert await count(client) == 0
            await admin.execute("DROP TRIGGER hang_up ON durable_tasks")
        ids = await client.enqueue_many(double, rows)
        assert await count(client) == 300
        assert (await client.get_workflow(ids[-1])).input["args"] == [299]
        assert await client.backend.get_task(ids[-1], "workflow") is not None


@pytest.mark.parametrize(
    "url_fixture", ["sqlite_url", pytest.param("pg_url", marks=pytest.mark.postgres)]
)
async def test_a_value_refused_late_in_a_batch_writes_nothing(
    url_fixture: str, request: pytest.FixtureRequest
) -> None:
    """A row near the end of a batch has a timestamp its column refuses (naive): the batch
    fails naming it, after the rows before it were sent (PostgreSQL's COPY converts each row
    as it sends it), and nothing of it is stored."""
    async with opened(request.getfixturevalue(url_fixture)) as client:
        now = datetime.now(UTC)

        def row(n: int) -> tuple[WorkflowSnapshot, TaskSpec]:
            created = now if n < 900 else now.replace(tzinfo=None)
            snapshot = WorkflowSnapshot(
                id=f"w-{n}", name=double.name, status="pending", input=None, created_at=created
            )
            return snapshot, TaskSpec(instance_id=f"w-{n}", name=double.name)

        with pytest.raises(durable.InvalidArgumentError, match="naive datetime"):
            await client.backend.create_workflows([row(n) for n in range(1000)])
        assert await count(client) == 0
        assert len(await client.enqueue_many(double, [(n,) for n in range(10)])) == 10
