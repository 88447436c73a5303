"""The behaviour every :class:`~durable.backends.PersistentBackend` must have, as pytest tests.

Subclass :class:`BackendContractTests` in a test module, give it a ``backend`` fixture, and pytest
runs the whole contract against your backend::

    import functools

    import pytest
    import pytest_asyncio

    from durable.testing import BackendContractTests
    from myproject import MyBackend


    class TestMyBackend(BackendContractTests):
        @pytest_asyncio.fixture
        async def backend(self):
            # a started backend over EMPTY storage, closed afterwards
            async with MyBackend("...fresh database...") as backend:
                yield backend

        @pytest.fixture
        def backend_factory(self):
            # optional: a picklable, zero-argument callable returning an UNSTARTED backend on
            # the same storage as ``backend``; it enables the multi-process claim tests
            return functools.partial(MyBackend, "...the same database...")

Requirements:

* The tests need ``pytest-asyncio``. They are marked ``asyncio``, so they run in its strict mode
  as well as in auto mode; in strict mode, declare an async ``backend`` fixture with
  ``@pytest_asyncio.fixture``.
* ``backend`` must be function-scoped and start from empty storage for every test (listing and
  task-finding tests see everything stored).
* Without ``backend_factory`` (the default returns None) the multi-process tests are skipped.
  The factory is pickled into processes started with the ``spawn`` method, so it must be
  importable: a module-level function or a :func:`functools.partial` of one, not a lambda.
* The suite works with any serializer that accepts JSON-like values (dicts with string keys,
  lists, str, int, float, bool, None) and rejects an object whose ``__reduce__`` raises.
* A backend with a ``checked_out_connections()`` method (as
  :class:`~durable.backends.SQLAlchemyBackend` has) is checked after every test to have
  returned all its connections.
* A few tests wait for claims to expire: they use TTLs of a fraction of a second and real sleeps
  (the whole suite takes a few seconds per backend).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Sequence,
)
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from typing import Any, NoReturn, TypeVar, cast

import pytest
import pytest_asyncio

from durable.backends.base import PersistentBackend
from durable.errors import (
    ClaimLostError,
    ConcurrentUpdateError,
    DurableError,
    InvalidArgumentError,
    SerializationError,
    StepAlreadyRecordedError,
    TaskNotFoundError,
    UnknownWorkflowError,
    WorkflowAlreadyExistsError,
    WorkflowNotFoundError,
)
from durable.models import (
    STALE_AFTER_HEARTBEATS,
    WORKFLOW_TASK,
    AvailableTask,
    ErrorInfo,
    RegisteredWorkflow,
    StepRecord,
    StepStatus,
    TaskSpec,
    WorkflowInfo,
    WorkflowSnapshot,
    WorkflowStatus,
)
from durable.testing._concurrency import ProcessClaimers, TaskKey, claim_each, claim_until_empty

T = TypeVar("T")
W = WORKFLOW_TASK
#: A deferred backend call, made inside ``pytest.raises``.
Call = Callable[[], Awaitable[Any]]
#: Long enough never to expire during a test.
LONG = timedelta(seconds=120)
#: Short enough to expire during a test; :data:`EXPIRED` after it, it has.
SHORT = timedelta(seconds=0.3)
EXPIRED = 0.5
#: How far a backend's clock (a database's) may be from this process's.
SLACK = timedelta(seconds=30)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
IST = timezone(timedelta(hours=5, minutes=30))
PST = timezone(timedelta(hours=-8))


class Unserializable:
    """A value no serializer accepts: not JSON, and pickling it fails."""

    def __reduce__(self) -> NoReturn:
        raise TypeError("Unserializable objects cannot be serialized")


#: Values that must come back equal from every backend (JSON-compatible, so any serializer).
VALUES: list[Any] = [
    None,
    0,
    -1,
    2**63 + 1,
    -(2**70),
    0.1,
    -2.5e300,
    True,
    False,
    "",
    "plain",
    "ünïcødé ☃ 😀 中文 עברית \u200b \\ \" ' \n\t\r \x00 \x7f",
    [],
    {},
    [1, "two", 3.0, None, True, [], {}],
    {"nested": {"deep": [{"k": [1, {"x": None}]}]}, "ключ": "значение", "": 0},
    [[[[[[[[[[[["deep"]]]]]]]]]]]],
    "x" * 1_000_000,
    "☃" * 200_000,
    list(range(20_000)),
    {f"key-{i}": {"i": i, "s": str(i) * 3} for i in range(2_000)},
]


def now() -> datetime:
    return datetime.now(UTC)


def assert_aware(*stamps: datetime | None) -> None:
    for stamp in stamps:
        assert stamp is not None, "expected a timestamp, got None"
        assert stamp.tzinfo is not None and stamp.utcoffset() is not None, (
            f"timestamp {stamp!r} is naive"
        )


def assert_between(stamp: datetime | None, before: datetime, after: datetime) -> None:
    """``stamp`` is aware and was taken between ``before`` and ``after`` (give or take SLACK)."""
    assert_aware(stamp)
    assert stamp is not None
    assert before - SLACK <= stamp <= after + SLACK, f"{stamp} not within [{before}, {after}]"


def step(position: int, name: str = "step", **fields: Any) -> StepRecord:
    """A step with explicit timestamps, so that it round-trips unchanged."""
    fields.setdefault("started_at", T0 + timedelta(minutes=position))
    if fields.get("status", StepStatus.SUCCEEDED) is not StepStatus.PENDING:
        fields.setdefault("completed_at", T0 + timedelta(minutes=position, seconds=30))
    return StepRecord(position=position, name=name, **fields)


def keys_of(items: Iterable[Any]) -> list[TaskKey]:
    return [(i.instance_id, i.task_id) for i in items]


def ids_of(items: Iterable[Any]) -> list[str]:
    return [i.instance_id if hasattr(i, "instance_id") else i.id for i in items]


def assert_each_once(results: dict[str, list[TaskKey]], expected: Sequence[TaskKey]) -> None:
    """Every expected task was claimed by exactly one worker, and nothing else was."""
    counts = Counter(key for got in results.values() for key in got)
    duplicates = {key: n for key, n in counts.items() if n > 1}
    missing = set(expected) - set(counts)
    unexpected = set(counts) - set(expected)
    report = {worker: len(got) for worker, got in results.items()}
    assert not duplicates, f"claimed more than once: {duplicates} (per worker: {report})"
    assert not missing, f"never claimed: {sorted(missing)} (per worker: {report})"
    assert not unexpected, f"claimed but never created: {sorted(unexpected)}"
    assert sum(counts.values()) == len(expected)


async def gather_all(coroutines: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run the coroutines concurrently; when one fails, raise its error after all have ended
    (so that none is left running into the test's teardown)."""
    results = await asyncio.gather(*coroutines, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return cast(list[T], results)


async def observe_within(
    ttl: timedelta, what: str, observe: Callable[[int], Awaitable[T]], *, tries: int = 5
) -> T:
    """The first of up to ``tries`` observations that ended within ``ttl`` of its start, for
    checks of a state that lasts ``ttl`` (a live claim, a fresh heartbeat): ``observe(n)``
    (re)starts that state on try ``n`` and reads it. A machine too slow for every try skips the
    test, saying so: a check that could not be made is never passed silently."""
    loop = asyncio.get_running_loop()
    for n in range(tries):
        until = loop.time() + ttl.total_seconds()
        value = await observe(n)
        if loop.time() < until:
            return value
    pytest.skip(
        f"this machine was too slow, {tries} times, to {what} within {ttl.total_seconds():g} s"
    )


def start_executor(
    backend: PersistentBackend,
    executor_id: str,
    incarnation: str,
    *,
    replacing: str | None,
    hostname: str = "h",
    pid: int = 1,
) -> Awaitable[bool]:
    """Start ``executor_id`` as ``incarnation`` with a heartbeat interval of a minute."""
    return backend.start_executor(
        executor_id,
        hostname=hostname,
        pid=pid,
        incarnation=incarnation,
        heartbeat_interval=60.0,
        replacing=replacing,
    )


async def create(
    backend: PersistentBackend,
    instance_id: str,
    *,
    name: str = "wf",
    task: bool = True,
    queue: str = "default",
    priority: int = 0,
    run_after: datetime | None = None,
    **fields: Any,
) -> WorkflowInfo:
    """Create a workflow (and, unless ``task=False``, its workflow task); it must be new."""
    spec = None
    if task:
        spec = TaskSpec(
            instance_id=instance_id,
            name=name,
            queue=queue,
            priority=priority,
            run_after=run_after,
        )
    snapshot = WorkflowSnapshot(id=instance_id, name=name, queue=queue, priority=priority, **fields)
    info, created = await backend.create_workflow(snapshot, task=spec)
    assert created, f"workflow {instance_id!r} already existed"
    return info


async def running(
    backend: PersistentBackend, instance_id: str, worker_id: str, **fields: Any
) -> WorkflowSnapshot:
    """Create a workflow, claim its task as ``worker_id`` and begin executing it."""
    await create(backend, instance_id, **fields)
    claim = await backend.claim_task(instance_id, W, worker_id, LONG)
    assert claim is not None
    return await backend.begin_execution(instance_id, worker_id)


@pytest.mark.asyncio
class BackendContractTests:
    """The contract suite. Subclass it and define a ``backend`` fixture (see the module's
    docstring); optionally a ``backend_factory`` fixture for the multi-process tests."""

    # -- fixtures the subclass provides ---------------------------------------------------------

    @pytest.fixture
    def backend(self) -> PersistentBackend:
        """Override: an async fixture yielding a started backend over empty storage."""
        raise NotImplementedError(
            f"{type(self).__name__} must define a `backend` fixture: an async fixture that "
            "yields a started PersistentBackend over empty storage"
        )

    @pytest.fixture
    def backend_factory(self) -> Callable[[], PersistentBackend] | None:
        """Override: a picklable zero-argument callable that builds an unstarted backend on the
        same storage as ``backend``. None (the default) skips the multi-process tests."""
        return None

    @pytest.fixture(scope="class")
    @classmethod
    def _contract_processes(cls) -> Iterator[ProcessClaimers]:
        """Four claiming processes, started on first use and shared by the class's tests."""
        claimers = ProcessClaimers(workers=4)
        yield claimers
        claimers.close()

    @pytest_asyncio.fixture(autouse=True)
    async def _contract_no_leaked_connections(
        self, backend: PersistentBackend
    ) -> AsyncIterator[None]:
        yield
        count = getattr(backend, "checked_out_connections", None)
        if callable(count):
            assert count() == 0, f"{count()} connection(s) still checked out after the test"

    # -- lifecycle --------------------------------------------------------------------------

    async def test_start_is_idempotent(self, backend: PersistentBackend) -> None:
        info = await create(backend, "wf")
        await backend.start()
        assert await backend.get_workflow("wf") == info

    # -- round trips ------------------------------------------------------------------------

    async def test_create_workflow_round_trips_every_field(
        self, backend: PersistentBackend
    ) -> None:
        created_at = datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=IST)
        started_at = datetime(2024, 3, 1, 1, 2, 3, 654321, tzinfo=PST)
        completed_at = datetime(2024, 3, 1, 12, 0, 0, 1, tzinfo=UTC)
        error = ErrorInfo(
            type="builtins.ValueError",
            message="bad ☃ value\nsecond line",
            traceback='Traceback (most recent call last):\n  File "x.py", line 1\nValueError\n',
            args=("bad ☃", 1, 2.5, None, [2, 3], {"k": [None]}),
        )
        steps = (
            StepRecord(
                position=0,
                name="fetch ☃",
                status=StepStatus.SUCCEEDED,
                input={"args": [1, "ü"], "kwargs": {"limit": None}},
                output={"rows": [1, 2, 3], "ok": True},
                attempts=2,
                executor_id="worker-ü",
                started_at=started_at,
                completed_at=completed_at,
            ),
            StepRecord(
                position=1,
                name="boom",
                status=StepStatus.FAILED,
                error=error,
                attempts=3,
                executor_id="worker-2",
                started_at=created_at,
                completed_at=completed_at,
            ),
            StepRecord(
                position=2,
                name="child",
                status=StepStatus.PENDING,
                input=["fan-out", 3],
                child_workflow_id="child-😀",
                started_at=started_at,
            ),
            StepRecord(position=7, name="after a gap", output=0, completed_at=completed_at),
        )
        snapshot = WorkflowSnapshot(
            id="wf-ünï-☃-😀",
            name="orders.process ☃",
            status=WorkflowStatus.RUNNING,
            input={"order": 17, "items": ["a", "ü"], "total": 12.5, "gift": False},
            output=["partial", 1],
            error=error,
            parent_id="parent-😀",
            executor_id="worker-ü",
            queue="queue-é",
            priority=-7,
            idempotency_key="key-✓",
            attempts=3,
            max_attempts=5,
            created_at=created_at,
            started_at=started_at,
            completed_at=completed_at,
            steps=steps,
        )
        before = now()
        info, created = await backend.create_workflow(snapshot)
        after = now()
        assert created is True
        assert type(info) is WorkflowInfo
        assert_between(info.updated_at, before, after)
        expected = dataclasses.replace(snapshot.header(), version=1, updated_at=info.updated_at)
        assert info == expected
        assert await backend.get_workflow(snapshot.id) == expected
        loaded = await backend.load_snapshot(snapshot.id)
        assert loaded.header() == expected
        assert loaded.steps == steps
        assert await backend.list_steps(snapshot.id) == list(steps)
        assert_aware(loaded.created_at, loaded.updated_at, loaded.started_at, loaded.completed_at)
        assert_aware(*(t for s in loaded.steps for t in (s.started_at, s.completed_at) if t))
        assert loaded.status is WorkflowStatus.RUNNING
        assert [s.status for s in loaded.steps] == [
            StepStatus.SUCCEEDED,
            StepStatus.FAILED,
            StepStatus.PENDING,
            StepStatus.SUCCEEDED,
        ]

    async def test_create_workflow_defaults_and_nones(self, backend: PersistentBackend) -> None:
        before = now()
        info, created = await backend.create_workflow(WorkflowSnapshot(id="plain", name="wf"))
        after = now()
        assert created is True
        assert info.id == "plain" and info.name == "wf"
        assert info.status is WorkflowStatus.PENDING
        assert info.input is None and info.output is None and info.error is None
        assert info.parent_id is None and info.executor_id is None
        assert info.idempotency_key is None and info.max_attempts is None
        assert info.started_at is None and info.completed_at is None
        assert (info.queue, info.priority, info.attempts, info.version) == ("default", 0, 0, 1)
        assert_between(info.created_at, before, after)
        assert_between(info.updated_at, before, after)
        loaded = await backend.load_snapshot("plain")
        assert loaded.steps == ()
        assert loaded.header() == info
        assert await backend.list_steps("plain") == []

    async def test_values_round_trip(self, backend: PersistentBackend) -> None:
        for i, value in enumerate(VALUES):
            instance_id = f"value-{i:02d}"
            await backend.create_workflow(
                WorkflowSnapshot(
                    id=instance_id,
                    name="values",
                    input=value,
                    output=value,
                    steps=(step(0, input=value, output=value),),
                ),
                task=TaskSpec(instance_id=instance_id, name="values"),
            )
            info = await backend.get_workflow(instance_id)
            assert info.input == value and info.output == value, f"value #{i} changed"
            assert type(info.input) is type(value)
            [stored] = await backend.list_steps(instance_id)
            assert stored.output == value and type(stored.output) is type(value)
            assert stored.input == value and type(stored.input) is type(value)

            assert await backend.claim_task(instance_id, W, "w1", LONG) is not None
            await backend.begin_execution(instance_id, "w1")
            await backend.record_step(instance_id, step(1, output=value), worker_id="w1")
            finished = await backend.finish_workflow(
                instance_id, worker_id="w1", status=WorkflowStatus.SUCCEEDED, output=value
            )
            assert finished.output == value and type(finished.output) is type(value)
            loaded = await backend.load_snapshot(instance_id)
            assert loaded.input == value and loaded.output == value
            assert [s.output for s in loaded.steps] == [value, value]

    async def test_error_info_round_trips(self, backend: PersistentBackend) -> None:
        try:
            raise KeyError("missing ☃", 3)
        except KeyError as exc:
            from_exception = ErrorInfo.from_exception(exc)
        errors = [
            ErrorInfo(type="builtins.RuntimeError", message=""),
            ErrorInfo(type="m.E", message="with empty args", args=()),
            ErrorInfo(type="m.E", message="only a traceback", traceback="tb ☃\n" * 200),
            ErrorInfo(type="m.E", message="unicode ✓ 😀\n\tmulti-line", args=("ü", [1, {}])),
            from_exception,
        ]
        assert from_exception.args == ("missing ☃", 3) and from_exception.traceback
        for i, error in enumerate(errors):
            instance_id = f"err-{i}"
            await running(backend, instance_id, "w1", error=error)
            assert (await backend.get_workflow(instance_id)).error == error
            await backend.record_step(
                instance_id, step(0, status=StepStatus.FAILED, error=error), worker_id="w1"
            )
            [stored] = await backend.list_steps(instance_id)
            assert stored.error == error and stored.output is None
            info = await backend.finish_workflow(
                instance_id, worker_id="w1", status=WorkflowStatus.FAILED, error=error
            )
            assert info.error == error and info.output is None
            assert (await backend.get_workflow(instance_id)).error == error

    # -- reading and deleting -------------------------------------------------------------------

    async def test_not_found_errors(self, backend: PersistentBackend) -> None:
        await create(backend, "wf")
        calls: list[Call] = [
            lambda: backend.load_snapshot("ghost"),
            lambda: backend.get_workflow("ghost"),
            lambda: backend.list_steps("ghost"),
            lambda: backend.begin_execution("ghost", "w1"),
            lambda: backend.cancel_workflow("ghost"),
            lambda: backend.add_task(TaskSpec(instance_id="ghost", task_id="t", name="n")),
        ]
        for call in calls:
            with pytest.raises(WorkflowNotFoundError) as exc_info:
                await call()
            assert exc_info.value.workflow_id == "ghost"
        for instance_id, task_id in (("ghost", W), ("wf", "no-such-task")):
            task_calls: list[Call] = [
                partial(backend.claim_task, instance_id, task_id, "w1", LONG),
                partial(backend.extend_task_claim, instance_id, task_id, "w1", LONG),
                partial(backend.release_task_claim, instance_id, task_id, "w1"),
            ]
            for call in task_calls:
                with pytest.raises(TaskNotFoundError) as task_info:
                    await call()
                assert (task_info.value.instance_id, task_info.value.task_id) == (
                    instance_id,
                    task_id,
                )
        # nothing was created by the failed calls
        assert ids_of((await backend.list_snapshots()).items) == ["wf"]
        assert keys_of(await backend.find_available_tasks("w1", 10)) == [("wf", W)]

    async def test_delete_is_idempotent_and_cascades(self, backend: PersistentBackend) -> None:
        await running(backend, "wf", "w1", idempotency_key="key-1", steps=(step(0),))
        await backend.record_step("wf", step(1), worker_id="w1")
        assert await backend.add_task(TaskSpec(instance_id="wf", task_id="side", name="side"))
        other = await create(backend, "other", steps=(step(0),))

        assert await backend.delete_snapshot("wf") is True
        reads: list[Call] = [
            lambda: backend.get_workflow("wf"),
            lambda: backend.load_snapshot("wf"),
            lambda: backend.list_steps("wf"),
        ]
        for call in reads:
            with pytest.raises(WorkflowNotFoundError):
                await call()
        for task_id in (W, "side"):
            with pytest.raises(TaskNotFoundError):
                await backend.claim_task("wf", task_id, "w2", LONG)
        with pytest.raises(ClaimLostError):
            await backend.record_step("wf", step(2), worker_id="w1")
        assert await backend.delete_snapshot("wf") is False
        assert await backend.delete_snapshot("never-existed") is False

        # the other workflow is untouched
        assert await backend.get_workflow("other") == other
        assert len(await backend.list_steps("other")) == 1
        assert keys_of(await backend.find_available_tasks("w2", 10)) == [("other", W)]
        assert ids_of((await backend.list_snapshots()).items) == ["other"]

        # the id and the idempotency key are free again, with nothing left over
        info, created = await backend.create_workflow(
            WorkflowSnapshot(id="wf", name="again", idempotency_key="key-1")
        )
        assert created is True and info.version == 1 and info.name == "again"
        assert await backend.list_steps("wf") == []
        assert await backend.add_task(TaskSpec(instance_id="wf", task_id="side", name="s"))
        claim = await backend.claim_task("wf", "side", "w2", LONG)
        assert claim is not None and claim.attempts == 1

    # -- listing ----------------------------------------------------------------------------

    async def test_list_snapshots_newest_first_with_filters(
        self, backend: PersistentBackend
    ) -> None:
        rows = [
            ("a0", "alpha", WorkflowStatus.PENDING, None, 0),
            ("a1", "alpha", WorkflowStatus.RUNNING, "p1", 1),
            ("b2", "beta", WorkflowStatus.SUCCEEDED, "p1", 2),
            ("b3", "beta", WorkflowStatus.FAILED, "p2", 3),
            ("a4", "alpha", WorkflowStatus.SUCCEEDED, "p2", 4),
            ("c5", "gamma", WorkflowStatus.CANCELLED, None, 5),
            ("c6", "gamma", WorkflowStatus.DEAD_LETTER, None, 6),
            ("tie-a", "tie", WorkflowStatus.PENDING, None, 7),
            ("tie-b", "tie", WorkflowStatus.PENDING, None, 7),
        ]
        # created out of order, with creation times in several time zones
        for instance_id, name, status, parent, minutes in reversed(rows):
            zone = (UTC, IST, PST)[minutes % 3]
            created_at = (T0 + timedelta(minutes=minutes)).astimezone(zone)
            await create(
                backend,
                instance_id,
                name=name,
                task=False,
                status=status,
                parent_id=parent,
                created_at=created_at,
            )

        async def listed(**filters: Any) -> list[str]:
            page = await backend.list_snapshots(**filters)
            assert page.next_cursor is None
            assert all(type(item) is WorkflowInfo for item in page.items)
            return [item.id for item in page]

        assert await listed() == [
            "tie-b",
            "tie-a",
            "c6",
            "c5",
            "a4",
            "b3",
            "b2",
            "a1",
            "a0",
        ]
        assert await listed(status="succeeded") == ["a4", "b2"]
        assert await listed(status=WorkflowStatus.SUCCEEDED) == ["a4", "b2"]
        assert await listed(status=["failed", WorkflowStatus.CANCELLED]) == ["c5", "b3"]
        assert await listed(status=(WorkflowStatus.PENDING,)) == ["tie-b", "tie-a", "a0"]
        assert await listed(status=[s for s in WorkflowStatus if s.is_terminal]) == [
            "c6",
            "c5",
            "a4",
            "b3",
            "b2",
        ]
        assert await listed(name="alpha") == ["a4", "a1", "a0"]
        assert await listed(parent_id="p1") == ["b2", "a1"]
        assert await listed(name="alpha", status="succeeded") == ["a4"]
        assert await listed(name="beta", parent_id="p2") == ["b3"]
        assert await listed(name="alpha", status=["running", "pending"], parent_id="p1") == ["a1"]
        assert await listed(name="nope") == []
        assert await listed(parent_id="nope") == []
        assert await listed(name="gamma", status="running") == []
        infos = (await backend.list_snapshots(name="beta")).items
        assert infos == [await backend.get_workflow("b3"), await backend.get_workflow("b2")]

    async def test_list_snapshots_keyset_pagination(self, backend: PersistentBackend) -> None:
        count = 25
        for i in range(count):
            await create(
                backend,
                f"wf-{i:02d}",
                task=False,
                # groups of three share a creation time: ties are broken by id
                created_at=T0 + timedelta(seconds=i // 3),
                status=WorkflowStatus.SUCCEEDED if i % 3 == 0 else WorkflowStatus.PENDING,
            )
        everything = [f"wf-{i:02d}" for i in reversed(range(count))]

        async def paginate(limit: int, **filters: Any) -> list[list[str]]:
            pages: list[list[str]] = []
            cursor: str | None = None
            while True:
                page = await backend.list_snapshots(limit=limit, cursor=cursor, **filters)
                pages.append([item.id for item in page])
                assert len(page) <= limit
                if page.next_cursor is None:
                    return pages
                assert len(page) == limit, "a page before the last one must be full"
                cursor = page.next_cursor
                assert len(pages) <= count + 1, "pagination does not end"

        for limit in (1, 4, 5, 24, 25, 26, 100):
            pages = await paginate(limit)
            flat = [i for page in pages for i in page]
            assert flat == everything, f"limit={limit}"
            assert len(pages) == max(1, -(-count // limit)), f"limit={limit}: {pages}"

        succeeded = [i for i in everything if int(i[3:]) % 3 == 0]
        pages = await paginate(2, status="succeeded")
        assert [i for page in pages for i in page] == succeeded
        assert len(pages) == 5

        # pages are stable under concurrent inserts
        first = await backend.list_snapshots(limit=10)
        assert [i.id for i in first] == everything[:10]
        await create(backend, "newest", task=False, created_at=T0 + timedelta(days=1))
        await create(backend, "oldest", task=False, created_at=T0 - timedelta(days=1))
        rest: list[str] = []
        cursor = first.next_cursor
        while cursor is not None:
            page = await backend.list_snapshots(limit=10, cursor=cursor)
            rest.extend(item.id for item in page)
            cursor = page.next_cursor
        assert rest == [*everything[10:], "oldest"]

    async def test_list_snapshots_invalid_arguments(self, backend: PersistentBackend) -> None:
        await create(backend, "wf", task=False)
        for kwargs in (
            {"limit": 0},
            {"limit": -5},
            {"status": "bogus"},
            {"status": ["pending", "bogus"]},
            {"cursor": "not a cursor!"},
            {"cursor": "%%%"},
            {"cursor": ""},
            {"cursor": "AAAA"},
        ):
            with pytest.raises(InvalidArgumentError):
                await backend.list_snapshots(**kwargs)
        with pytest.raises(ValueError, match="bogus"):
            await backend.list_snapshots(status="bogus")

    # -- creating and saving ------------------------------------------------------------------

    async def test_create_workflow_is_idempotent_by_id(self, backend: PersistentBackend) -> None:
        first, created = await backend.create_workflow(
            WorkflowSnapshot(id="wf", name="first", input=1),
            task=TaskSpec(instance_id="wf", name="first"),
        )
        assert created is True
        second, created = await backend.create_workflow(
            WorkflowSnapshot(
                id="wf",
                name="second",
                input=2,
                status=WorkflowStatus.RUNNING,
                idempotency_key="new-key",
                steps=(step(0),),
            ),
            task=TaskSpec(instance_id="wf", task_id="other", name="second"),
        )
        assert created is False
        assert second == first
        loaded = await backend.load_snapshot("wf")
        assert loaded.header() == first and loaded.steps == ()
        assert keys_of(await backend.find_available_tasks("w", 10)) == [("wf", W)]
        assert [i.id for i in await backend.list_snapshots()] == ["wf"]
        # the key of the refused snapshot was not recorded either
        _, created = await backend.create_workflow(
            WorkflowSnapshot(id="wf-2", name="x", idempotency_key="new-key")
        )
        assert created is True

    async def test_create_workflow_is_idempotent_by_key(self, backend: PersistentBackend) -> None:
        first = await create(backend, "a", idempotency_key="order-1", input={"n": 1})
        again, created = await backend.create_workflow(
            WorkflowSnapshot(id="b", name="other", idempotency_key="order-1", input={"n": 2}),
            task=TaskSpec(instance_id="b", name="other"),
        )
        assert created is False
        assert again == first
        with pytest.raises(WorkflowNotFoundError):
            await backend.get_workflow("b")
        assert [i.id for i in await backend.list_snapshots()] == ["a"]
        assert keys_of(await backend.find_available_tasks("w", 10)) == [("a", W)]
        # another key, and no key at all, do not collide
        await create(backend, "c", idempotency_key="order-2")
        await create(backend, "n1")
        await create(backend, "n2")
        assert sorted(i.id for i in await backend.list_snapshots()) == ["a", "c", "n1", "n2"]

    async def test_save_snapshot_inserts_and_updates(self, backend: PersistentBackend) -> None:
        original = WorkflowSnapshot(
            id="wf",
            name="wf",
            input={"a": 1},
            idempotency_key="k1",
            steps=(step(0, output="zero"), step(1, status=StepStatus.PENDING)),
        )
        before = now()
        saved = await backend.save_snapshot(original)
        after = now()
        assert saved.version == 1
        assert saved.steps == original.steps
        assert_between(saved.created_at, before, after)
        assert_between(saved.updated_at, before, after)
        expected = dataclasses.replace(
            original, version=1, created_at=saved.created_at, updated_at=saved.updated_at
        )
        assert saved == expected
        assert await backend.load_snapshot("wf") == saved

        changed = dataclasses.replace(
            saved,
            status=WorkflowStatus.RUNNING,
            input={"a": 2},
            output="out",
            executor_id="w1",
            attempts=1,
            idempotency_key="k2",
            steps=(
                step(0, output="replaced"),  # save_snapshot overwrites any position
                step(2, output="two"),
            ),
        )
        saved2 = await backend.save_snapshot(changed)
        assert saved2.version == 2
        assert saved2.created_at == saved.created_at
        assert saved2.updated_at is not None and saved.updated_at is not None
        assert saved2.updated_at >= saved.updated_at
        assert saved2.header() == dataclasses.replace(
            changed.header(), version=2, updated_at=saved2.updated_at
        )
        # upserted by position; position 1 was not listed and is kept
        assert saved2.steps == (
            step(0, output="replaced"),
            original.steps[1],
            step(2, output="two"),
        )
        assert await backend.load_snapshot("wf") == saved2
        assert await backend.get_workflow("wf") == saved2.header()
        # the old idempotency key was given up, the new one is taken
        _, created = await backend.create_workflow(
            WorkflowSnapshot(id="x", name="x", idempotency_key="k2")
        )
        assert created is False
        _, created = await backend.create_workflow(
            WorkflowSnapshot(id="y", name="y", idempotency_key="k1")
        )
        assert created is True

    async def test_save_snapshot_conflicts_leave_data_intact(
        self, backend: PersistentBackend
    ) -> None:
        await create(backend, "other-1", task=False)
        await create(backend, "other-2", task=False)
        await create(backend, "keyed", task=False, idempotency_key="taken")
        saved = await backend.save_snapshot(
            WorkflowSnapshot(id="wf", name="wf", input=1, steps=(step(0, output="kept"),))
        )
        stored = await backend.load_snapshot("wf")

        # version 0 for an existing id
        with pytest.raises(WorkflowAlreadyExistsError) as exists:
            await backend.save_snapshot(
                WorkflowSnapshot(id="wf", name="x", input=2, steps=(step(0, output="x"), step(5)))
            )
        assert exists.value.workflow_id == "wf"
        assert await backend.load_snapshot("wf") == stored

        # a stale version
        moved = await backend.save_snapshot(dataclasses.replace(saved, input=3, steps=()))
        assert moved.version == 2
        stored = await backend.load_snapshot("wf")
        with pytest.raises(ConcurrentUpdateError) as conflict:
            await backend.save_snapshot(
                dataclasses.replace(saved, input=4, steps=(step(0, output="lost"), step(1)))
            )
        assert conflict.value.workflow_id == "wf"
        assert conflict.value.expected_version == 1
        assert conflict.value.actual_version == 2
        assert await backend.load_snapshot("wf") == stored
        assert stored.input == 3 and stored.steps == (step(0, output="kept"),)

        # a version from the future
        with pytest.raises(ConcurrentUpdateError):
            await backend.save_snapshot(dataclasses.replace(stored, version=99))
        assert await backend.load_snapshot("wf") == stored

        # an update of a workflow that does not exist creates nothing
        with pytest.raises(WorkflowNotFoundError) as missing:
            await backend.save_snapshot(
                WorkflowSnapshot(id="ghost", name="g", version=3, steps=(step(0),))
            )
        assert missing.value.workflow_id == "ghost"
        with pytest.raises(WorkflowNotFoundError):
            await backend.get_workflow("ghost")

        # an idempotency key that another workflow holds
        with pytest.raises(WorkflowAlreadyExistsError):
            await backend.save_snapshot(
                WorkflowSnapshot(id="new", name="n", idempotency_key="taken")
            )
        with pytest.raises(WorkflowNotFoundError):
            await backend.get_workflow("new")
        with pytest.raises(WorkflowAlreadyExistsError):
            await backend.save_snapshot(dataclasses.replace(stored, idempotency_key="taken"))
        assert await backend.load_snapshot("wf") == stored
        assert (await backend.get_workflow("keyed")).idempotency_key == "taken"
        assert sorted(i.id for i in await backend.list_snapshots()) == [
            "keyed",
            "other-1",
            "other-2",
            "wf",
        ]

    async def test_concurrent_saves_of_one_version(self, backend: PersistentBackend) -> None:
        saved = await backend.save_snapshot(WorkflowSnapshot(id="wf", name="wf", input=0))
        outcomes = await asyncio.gather(
            *(
                backend.save_snapshot(dataclasses.replace(saved, input=i, steps=(step(i),)))
                for i in range(1, 9)
            ),
            return_exceptions=True,
        )
        winners = [o for o in outcomes if isinstance(o, WorkflowSnapshot)]
        losers = [o for o in outcomes if isinstance(o, ConcurrentUpdateError)]
        assert len(winners) == 1 and len(losers) == 7, outcomes
        [winner] = winners
        stored = await backend.load_snapshot("wf")
        assert stored == winner and stored.version == 2
        assert [s.position for s in stored.steps] == [winner.input]

    # -- execution --------------------------------------------------------------------------

    async def test_begin_execution(self, backend: PersistentBackend) -> None:
        original = await create(backend, "wf", input={"x": 1}, steps=(step(0),))
        with pytest.raises(ClaimLostError) as lost:
            await backend.begin_execution("wf", "w1")
        assert lost.value.holder is None and lost.value.worker_id == "w1"
        assert await backend.get_workflow("wf") == original

        assert await backend.claim_task("wf", W, "w1", LONG) is not None
        before = now()
        snap = await backend.begin_execution("wf", "w1")
        after = now()
        assert snap.status is WorkflowStatus.RUNNING
        assert snap.executor_id == "w1"
        assert (snap.attempts, snap.interruptions, snap.version) == (1, 0, 2)
        assert_between(snap.started_at, before, after)
        assert snap.input == {"x": 1} and snap.steps == (step(0),)
        assert snap.created_at == original.created_at
        assert await backend.load_snapshot("wf") == snap

        with pytest.raises(ClaimLostError) as lost:
            await backend.begin_execution("wf", "w2")
        assert lost.value.holder == "w1" and lost.value.worker_id == "w2"
        assert await backend.load_snapshot("wf") == snap

        # begun while still running: the attempt was interrupted (its executor died, here the
        # same one restarted); it is resumed, counted in interruptions, not in attempts
        again = await backend.begin_execution("wf", "w1")
        assert (again.attempts, again.interruptions, again.version) == (1, 1, 3)
        assert again.started_at == snap.started_at

        # begin under the claim of another task of the workflow
        assert await backend.add_task(TaskSpec(instance_id="wf", task_id="resume", name="wf"))
        assert await backend.claim_task("wf", "resume", "w3", LONG) is not None
        third = await backend.begin_execution("wf", "w3", task_id="resume")
        assert third.executor_id == "w3"
        assert (third.attempts, third.interruptions) == (1, 2)

    async def test_record_step_appends_and_overwrites_pending(
        self, backend: PersistentBackend
    ) -> None:
        await running(backend, "wf", "w1")
        failure = ErrorInfo(type="m.Boom", message="boom", args=(1,))
        await backend.record_step("wf", step(0, output={"x": 1}), worker_id="w1")
        before = now()
        await backend.record_step(
            "wf", StepRecord(position=1, name="auto", output="done"), worker_id="w1"
        )
        after = now()
        await backend.record_step(
            "wf",
            step(3, status=StepStatus.PENDING, child_workflow_id="child"),
            worker_id="w1",
        )
        await backend.record_step(
            "wf", step(2, status=StepStatus.FAILED, error=failure), worker_id="w1"
        )
        steps = await backend.list_steps("wf")
        assert [s.position for s in steps] == [0, 1, 2, 3]
        assert steps[0] == step(0, output={"x": 1})
        assert steps[1].started_at is None
        assert_between(steps[1].completed_at, before, after)  # set by the backend
        assert steps[2] == step(2, status=StepStatus.FAILED, error=failure)
        assert steps[3].status is StepStatus.PENDING and steps[3].completed_at is None

        # a pending row may be overwritten, by a pending or a final outcome
        await backend.record_step(
            "wf",
            step(3, status=StepStatus.PENDING, child_workflow_id="child", attempts=2),
            worker_id="w1",
        )
        final = step(3, output=42, child_workflow_id="child", attempts=3, executor_id="w1")
        await backend.record_step("wf", final, worker_id="w1")
        steps = await backend.list_steps("wf")
        assert steps[3] == final

        # a final row never changes
        for position in (0, 1, 2, 3):
            with pytest.raises(StepAlreadyRecordedError) as recorded:
                await backend.record_step(
                    "wf", step(position, name="again", output="changed"), worker_id="w1"
                )
            assert recorded.value.position == position
            assert recorded.value.workflow_id == "wf"
        assert await backend.list_steps("wf") == steps
        assert (await backend.load_snapshot("wf")).steps == tuple(steps)

    async def test_record_step_blocking_keeps_the_contract(
        self, backend: PersistentBackend
    ) -> None:
        """``record_step_blocking``, where supported, is ``record_step`` from another thread:
        it appends, overwrites only pending rows, is fenced, and writes nothing it cannot
        serialize."""
        if not backend.records_steps_blocking:
            with pytest.raises(NotImplementedError):
                backend.record_step_blocking("wf", step(0), worker_id="w1")
            pytest.skip(f"{type(backend).__name__} records steps on its event loop only")

        def record(instance_id: str, record: StepRecord, worker_id: str) -> Awaitable[None]:
            return asyncio.to_thread(
                backend.record_step_blocking, instance_id, record, worker_id=worker_id
            )

        await running(backend, "wf", "w1")
        await record("wf", step(0, output={"x": 1}), "w1")
        await record("wf", step(1, status=StepStatus.PENDING, child_workflow_id="c"), "w1")
        final = step(1, output=2, child_workflow_id="c", attempts=2)
        await record("wf", final, "w1")
        assert await backend.list_steps("wf") == [step(0, output={"x": 1}), final]
        with pytest.raises(StepAlreadyRecordedError) as recorded:
            await record("wf", step(0, output="changed"), "w1")
        assert recorded.value.position == 0
        with pytest.raises(ClaimLostError) as lost:
            await record("wf", step(2), "w2")
        assert (lost.value.worker_id, lost.value.holder) == ("w2", "w1")
        with pytest.raises(SerializationError, match="Unserializable"):
            await record("wf", step(2, output=Unserializable()), "w1")
        assert len(await backend.list_steps("wf")) == 2
        # many threads at once
        await asyncio.gather(*(record("wf", step(p), "w1") for p in range(2, 22)))
        assert [s.position for s in await backend.list_steps("wf")] == list(range(22))

    async def test_record_step_is_fenced(self, backend: PersistentBackend) -> None:
        await create(backend, "wf")
        with pytest.raises(ClaimLostError) as lost:
            await backend.record_step("wf", step(0), worker_id="w1")
        assert (lost.value.instance_id, lost.value.task_id) == ("wf", W)
        assert lost.value.worker_id == "w1" and lost.value.holder is None
        assert await backend.list_steps("wf") == []

        assert await backend.claim_task("wf", W, "w2", LONG) is not None
        with pytest.raises(ClaimLostError) as lost:
            await backend.record_step("wf", step(0), worker_id="w1")
        assert lost.value.holder == "w2"
        assert await backend.list_steps("wf") == []

        await backend.record_step("wf", step(0, output="w2"), worker_id="w2")
        # fencing comes first: a non-holder hears ClaimLostError even for a final position
        with pytest.raises(ClaimLostError):
            await backend.record_step("wf", step(0, output="w1"), worker_id="w1")
        with pytest.raises(ClaimLostError):
            await backend.record_step("wf", step(1, status=StepStatus.PENDING), worker_id="w1")

        # a step task's claim fences writes made under it
        assert await backend.add_task(TaskSpec(instance_id="wf", task_id="step-1", name="send"))
        assert await backend.claim_task("wf", "step-1", "w3", LONG) is not None
        await backend.record_step("wf", step(1, output="w3"), worker_id="w3", task_id="step-1")
        with pytest.raises(ClaimLostError) as lost:
            await backend.record_step("wf", step(2), worker_id="w3")
        assert lost.value.holder == "w2" and lost.value.task_id == W
        with pytest.raises(ClaimLostError) as lost:
            await backend.record_step("wf", step(2), worker_id="w2", task_id="step-1")
        assert lost.value.holder == "w3" and lost.value.task_id == "step-1"

        # a released claim fences too
        await backend.release_task_claim("wf", W, "w2")
        with pytest.raises(ClaimLostError) as lost:
            await backend.record_step("wf", step(2), worker_id="w2")
        assert lost.value.holder is None
        with pytest.raises(ClaimLostError):
            await backend.record_step("ghost", step(0), worker_id="w2")

        assert await backend.list_steps("wf") == [step(0, output="w2"), step(1, output="w3")]

    async def test_finish_workflow(self, backend: PersistentBackend) -> None:
        failure = ErrorInfo(type="m.Failure", message="it failed", traceback="tb")
        outcomes: list[tuple[WorkflowStatus, Any, ErrorInfo | None]] = [
            (WorkflowStatus.SUCCEEDED, {"result": [1, 2]}, None),
            (WorkflowStatus.FAILED, None, failure),
            (WorkflowStatus.CANCELLED, None, None),
            (WorkflowStatus.DEAD_LETTER, None, failure),
        ]
        for status, output, error in outcomes:
            instance_id = f"wf-{status.value}"
            started = await running(backend, instance_id, "w1", input="in")
            await backend.record_step(instance_id, step(0), worker_id="w1")
            before = now()
            info = await backend.finish_workflow(
                instance_id, worker_id="w1", status=status, output=output, error=error
            )
            after = now()
            assert info.status is status
            assert info.output == output and info.error == error
            assert info.version == started.version + 1
            assert info.input == "in" and info.started_at == started.started_at
            assert info.attempts == started.attempts and info.executor_id == "w1"
            assert_between(info.completed_at, before, after)
            assert await backend.get_workflow(instance_id) == info
            assert await backend.list_steps(instance_id) == [step(0)]
            # the workflow task is gone
            with pytest.raises(TaskNotFoundError):
                await backend.claim_task(instance_id, W, "w2", LONG)
            with pytest.raises(ClaimLostError):
                await backend.finish_workflow(
                    instance_id, worker_id="w1", status=WorkflowStatus.SUCCEEDED
                )
            assert await backend.get_workflow(instance_id) == info
        assert await backend.find_available_tasks("w2", 10) == []

        stored = await running(backend, "wf", "w1")
        for not_final in (WorkflowStatus.PENDING, WorkflowStatus.RUNNING):
            with pytest.raises(InvalidArgumentError):
                await backend.finish_workflow("wf", worker_id="w1", status=not_final)
        with pytest.raises(ClaimLostError) as lost:
            await backend.finish_workflow("wf", worker_id="w2", status=WorkflowStatus.SUCCEEDED)
        assert lost.value.holder == "w1"
        assert await backend.load_snapshot("wf") == stored
        assert await backend.claim_task("wf", W, "w2", LONG) is None  # still held by w1

    async def test_reschedule_workflow(self, backend: PersistentBackend) -> None:
        started = await running(backend, "wf", "w1", input=[1])
        await backend.record_step("wf", step(0), worker_id="w1")
        error = ErrorInfo(type="m.Transient", message="try again", args=("later",))
        info = await backend.reschedule_workflow(
            "wf", worker_id="w1", run_after=timedelta(hours=1), error=error
        )
        assert info.status is WorkflowStatus.PENDING
        assert info.error == error and info.input == [1]
        assert info.version == started.version + 1
        assert info.attempts == started.attempts
        assert await backend.get_workflow("wf") == info
        assert await backend.list_steps("wf") == [step(0)]
        # the claim is released and the task is not due for an hour
        for worker in ("w1", "w2"):
            assert await backend.find_available_tasks(worker, 10) == []
            assert await backend.claim_available_tasks(worker, 10, LONG) == []
        with pytest.raises(ClaimLostError) as lost:
            await backend.record_step("wf", step(1), worker_id="w1")
        assert lost.value.holder is None
        with pytest.raises(ClaimLostError):
            await backend.reschedule_workflow("wf", worker_id="w1", run_after=timedelta(0))

        # an explicit claim may run it early; the claim counts as a new attempt
        claim = await backend.claim_task("wf", W, "w2", LONG)
        assert claim is not None and claim.attempts == 2
        again = await backend.begin_execution("wf", "w2")
        assert again.attempts == 2 and again.steps == (step(0),)
        info = await backend.reschedule_workflow("wf", worker_id="w2", run_after=timedelta(0))
        assert info.status is WorkflowStatus.PENDING and info.error is None
        available = await backend.find_available_tasks("w3", 10)
        assert keys_of(available) == [("wf", W)]
        assert available[0].claimed_by is None and available[0].attempts == 2

        assert await backend.claim_task("wf", W, "w3", LONG) is not None
        before = await backend.get_workflow("wf")
        with pytest.raises(ClaimLostError) as lost:
            await backend.reschedule_workflow("wf", worker_id="w2", run_after=timedelta(0))
        assert lost.value.holder == "w3"
        assert await backend.get_workflow("wf") == before

    async def test_cancel_workflow(self, backend: PersistentBackend) -> None:
        started = await running(backend, "wf", "w1")
        await backend.record_step("wf", step(0), worker_id="w1")
        assert await backend.add_task(TaskSpec(instance_id="wf", task_id="side", name="side"))
        assert await backend.claim_task("wf", "side", "w2", LONG) is not None
        before = now()
        info = await backend.cancel_workflow("wf")
        after = now()
        assert info.status is WorkflowStatus.CANCELLED
        assert info.version == started.version + 1
        assert_between(info.completed_at, before, after)
        assert await backend.get_workflow("wf") == info
        assert await backend.list_steps("wf") == [step(0)]
        # every task is gone, whoever held it; the holders find out at their next write
        for task_id in (W, "side"):
            with pytest.raises(TaskNotFoundError):
                await backend.claim_task("wf", task_id, "w3", LONG)
        assert await backend.find_available_tasks("w1", 10) == []
        with pytest.raises(ClaimLostError):
            await backend.record_step("wf", step(1), worker_id="w1")
        with pytest.raises(ClaimLostError):
            await backend.finish_workflow("wf", worker_id="w1", status=WorkflowStatus.SUCCEEDED)
        with pytest.raises(ClaimLostError):
            await backend.complete_task("wf", "side", "w2")
        assert await backend.get_workflow("wf") == info
        assert await backend.list_steps("wf") == [step(0)]
        # idempotent
        assert await backend.cancel_workflow("wf") == info

        # a pending workflow nobody claimed
        await create(backend, "pending")
        cancelled = await backend.cancel_workflow("pending")
        assert cancelled.status is WorkflowStatus.CANCELLED and cancelled.version == 2
        assert await backend.find_available_tasks("w1", 10) == []

        # a finished workflow is returned unchanged
        await running(backend, "done", "w1")
        done = await backend.finish_workflow(
            "done", worker_id="w1", status=WorkflowStatus.SUCCEEDED, output=1
        )
        assert await backend.cancel_workflow("done") == done
        assert await backend.get_workflow("done") == done

    # -- tasks and claims ---------------------------------------------------------------------

    async def test_add_task(self, backend: PersistentBackend) -> None:
        await create(backend, "wf", task=False)
        await create(backend, "wf-2", task=False)
        assert await backend.find_available_tasks("w", 10) == []
        before = now()
        assert await backend.add_task(
            TaskSpec(instance_id="wf", task_id="t1", name="send", queue="io", priority=3)
        )
        after = now()
        assert not await backend.add_task(
            TaskSpec(instance_id="wf", task_id="t1", name="other", queue="cpu", priority=-1)
        )
        [task] = await backend.find_available_tasks("w", 10)
        assert (task.instance_id, task.task_id, task.name) == ("wf", "t1", "send")
        assert (task.queue, task.priority, task.attempts) == ("io", 3, 0)
        assert task.claimed_by is None and task.claim_expires_at is None
        assert_between(task.run_after, before, after)
        # the key is (instance id, task id)
        assert await backend.add_task(TaskSpec(instance_id="wf-2", task_id="t1", name="send"))
        assert await backend.add_task(TaskSpec(instance_id="wf", name="wf"))
        later = now() + timedelta(hours=1)
        assert await backend.add_task(
            TaskSpec(instance_id="wf", task_id="later", name="later", run_after=later)
        )
        assert sorted(keys_of(await backend.find_available_tasks("w", 10))) == [
            ("wf", "t1"),
            ("wf", W),
            ("wf-2", "t1"),
        ]
        claim = await backend.claim_task("wf", "later", "w", LONG)
        assert claim is not None and claim.name == "later"

    async def test_claim_task(self, backend: PersistentBackend) -> None:
        await create(backend, "wf", name="job")
        before = now()
        claim = await backend.claim_task("wf", W, "w1", timedelta(seconds=30))
        after = now()
        assert claim is not None
        assert (claim.instance_id, claim.task_id, claim.worker_id) == ("wf", W, "w1")
        assert claim.attempts == 1 and claim.name == "job"
        assert_between(
            claim.expires_at, before + timedelta(seconds=30), after + timedelta(seconds=30)
        )

        # re-entrant for the holder: renewed, not counted again
        renewed = await backend.claim_task("wf", W, "w1", timedelta(seconds=90))
        assert renewed is not None
        assert renewed.attempts == 1 and renewed.worker_id == "w1"
        assert renewed.expires_at > claim.expires_at

        # refused to others while live, without disturbing the holder
        assert await backend.claim_task("wf", W, "w2", LONG) is None
        assert await backend.find_available_tasks("w2", 10) == []
        [mine] = await backend.find_available_tasks("w1", 10)
        assert mine.claimed_by == "w1" and mine.claim_expires_at == renewed.expires_at
        assert mine.attempts == 1
        await backend.record_step("wf", step(0), worker_id="w1")

        # run_after is not checked by an explicit claim
        await create(backend, "later", run_after=now() + timedelta(hours=1))
        assert await backend.find_available_tasks("w2", 10) == []
        early = await backend.claim_task("later", W, "w2", LONG)
        assert early is not None and early.attempts == 1

    async def test_extend_and_release_by_the_holder_only(self, backend: PersistentBackend) -> None:
        await create(backend, "wf")
        claim = await backend.claim_task("wf", W, "w1", timedelta(seconds=5))
        assert claim is not None
        extended = await backend.extend_task_claim("wf", W, "w1", LONG)
        assert extended.worker_id == "w1" and extended.attempts == 1
        assert extended.expires_at > claim.expires_at
        assert_aware(extended.expires_at)

        with pytest.raises(ClaimLostError) as lost:
            await backend.extend_task_claim("wf", W, "w2", LONG)
        assert lost.value.holder == "w1" and lost.value.worker_id == "w2"
        with pytest.raises(ClaimLostError) as lost:
            await backend.release_task_claim("wf", W, "w2")
        assert lost.value.holder == "w1" and lost.value.worker_id == "w2"
        assert await backend.claim_task("wf", W, "w2", LONG) is None
        [task] = await backend.find_available_tasks("w1", 10)
        assert task.claimed_by == "w1" and task.claim_expires_at == extended.expires_at

        await backend.release_task_claim("wf", W, "w1")
        [task] = await backend.find_available_tasks("w2", 10)
        assert task.claimed_by is None and task.claim_expires_at is None
        with pytest.raises(ClaimLostError) as lost:
            await backend.extend_task_claim("wf", W, "w1", LONG)
        assert lost.value.holder is None
        with pytest.raises(ClaimLostError) as lost:
            await backend.release_task_claim("wf", W, "w1")
        assert lost.value.holder is None
        with pytest.raises(ClaimLostError):
            await backend.record_step("wf", step(0), worker_id="w1")

        taken = await backend.claim_task("wf", W, "w2", LONG)
        assert taken is not None and taken.attempts == 2 and taken.worker_id == "w2"
        with pytest.raises(ClaimLostError) as lost:
            await backend.extend_task_claim("wf", W, "w1", LONG)
        assert lost.value.holder == "w2"

    async def test_complete_task(self, backend: PersistentBackend) -> None:
        await create(backend, "wf")
        assert await backend.add_task(TaskSpec(instance_id="wf", task_id="s1", name="send"))
        with pytest.raises(ClaimLostError) as lost:
            await backend.complete_task("wf", "s1", "w1")
        assert lost.value.holder is None
        assert await backend.claim_task("wf", "s1", "w1", LONG) is not None
        with pytest.raises(ClaimLostError) as lost:
            await backend.complete_task("wf", "s1", "w2")
        assert lost.value.holder == "w1" and lost.value.worker_id == "w2"
        assert ("wf", "s1") in keys_of(await backend.find_available_tasks("w1", 10))

        await backend.complete_task("wf", "s1", "w1")
        with pytest.raises(TaskNotFoundError):
            await backend.claim_task("wf", "s1", "w1", LONG)
        with pytest.raises(ClaimLostError):
            await backend.complete_task("wf", "s1", "w1")
        assert keys_of(await backend.find_available_tasks("w1", 10)) == [("wf", W)]
        assert (await backend.get_workflow("wf")).status is WorkflowStatus.PENDING

    async def test_claims_expire_and_can_be_taken_over(self, backend: PersistentBackend) -> None:
        await running(backend, "expiring", "w1")
        await create(backend, "finish")
        await create(backend, "complete")
        await create(backend, "kept")
        stored = await backend.load_snapshot("expiring")
        assert await backend.claim_task("kept", W, "w1", LONG) is not None
        await create(backend, "not-due", run_after=now() + LONG)  # never offered in this test
        due_soon = asyncio.get_running_loop().time() + SHORT.total_seconds()

        async def claim_briefly(n: int) -> list[AvailableTask]:
            if n == 0:
                assert await backend.claim_task("finish", W, "w1", SHORT) is not None
                assert await backend.claim_task("complete", W, "w1", SHORT) is not None
                await create(backend, "due-soon", run_after=now() + SHORT)
            else:  # the last try was too slow: the same claims, renewed (nobody took them)
                await backend.extend_task_claim("finish", W, "w1", SHORT)
                await backend.extend_task_claim("complete", W, "w1", SHORT)
            await backend.extend_task_claim("expiring", W, "w1", SHORT)
            return await backend.find_available_tasks("w2", 10)  # (it changes nothing)

        before_expiry = keys_of(
            await observe_within(SHORT, "look for tasks while claims live", claim_briefly)
        )
        if ("due-soon", W) in before_expiry and asyncio.get_running_loop().time() >= due_soon:
            before_expiry.remove(("due-soon", W))  # due by now (a retry): "not-due" checks that
        assert before_expiry == [], "live claims, or a task not due yet, were offered"
        await asyncio.sleep(EXPIRED)

        available = await backend.find_available_tasks("w2", 10)
        assert sorted(keys_of(available)) == [
            ("complete", W),
            ("due-soon", W),
            ("expiring", W),
            ("finish", W),
        ]
        assert all(t.claimed_by is None and t.claim_expires_at is None for t in available)
        # an expired claim fences like a lost one, even before anyone takes the task
        with pytest.raises(ClaimLostError) as lost:
            await backend.record_step("expiring", step(0), worker_id="w1")
        assert lost.value.holder is None
        with pytest.raises(ClaimLostError):
            await backend.finish_workflow("finish", worker_id="w1", status=WorkflowStatus.SUCCEEDED)
        with pytest.raises(ClaimLostError):
            await backend.complete_task("complete", W, "w1")
        with pytest.raises(ClaimLostError):
            await backend.begin_execution("finish", "w1")
        with pytest.raises(ClaimLostError):
            await backend.reschedule_workflow("finish", worker_id="w1", run_after=timedelta(0))
        assert (await backend.get_workflow("finish")).status is WorkflowStatus.PENDING
        assert await backend.load_snapshot("expiring") == stored

        # another worker takes the expired claim over; the old holder is shut out
        taken = await backend.claim_task("expiring", W, "w2", LONG)
        assert taken is not None and taken.worker_id == "w2" and taken.attempts == 2
        fenced: list[Call] = [
            lambda: backend.record_step("expiring", step(0), worker_id="w1"),
            lambda: backend.extend_task_claim("expiring", W, "w1", LONG),
            lambda: backend.release_task_claim("expiring", W, "w1"),
            lambda: backend.complete_task("expiring", W, "w1"),
            lambda: backend.begin_execution("expiring", "w1"),
        ]
        for call in fenced:
            with pytest.raises(ClaimLostError) as lost:
                await call()
            assert lost.value.holder == "w2" and lost.value.worker_id == "w1"
        assert await backend.claim_task("expiring", W, "w1", LONG) is None
        assert await backend.load_snapshot("expiring") == stored
        resumed = await backend.begin_execution("expiring", "w2")
        assert resumed.executor_id == "w2"
        # w1's attempt was interrupted: w2 resumes it, which is not another attempt
        assert (resumed.attempts, resumed.interruptions) == (1, 1)
        await backend.record_step("expiring", step(0), worker_id="w2")

        claims = await backend.claim_available_tasks("w3", 10, LONG)
        assert sorted(keys_of(claims)) == [("complete", W), ("due-soon", W), ("finish", W)]
        assert {c.attempts for c in claims if c.instance_id != "due-soon"} == {2}
        assert keys_of(await backend.find_available_tasks("w1", 10)) == [("kept", W)]

    async def test_find_available_tasks_order(self, backend: PersistentBackend) -> None:
        t0 = now() - timedelta(hours=2)
        specs = [
            ("p5", 5, t0),
            ("a", 0, t0 + timedelta(minutes=10)),
            ("b", 0, t0),
            ("c", 0, t0 + timedelta(minutes=10)),  # ties with "a", created after it
            ("neg", -1, t0 + timedelta(minutes=30)),
            ("future", -10, now() + timedelta(hours=1)),
        ]
        for instance_id, priority, run_after in specs:
            await create(
                backend,
                instance_id,
                name=f"job-{instance_id}",
                queue="q",
                priority=priority,
                run_after=run_after,
            )
        expected = ["neg", "b", "a", "c", "p5"]
        found = await backend.find_available_tasks("w", 10)
        assert ids_of(found) == expected
        first = found[0]
        assert (first.task_id, first.name, first.queue, first.priority) == (W, "job-neg", "q", -1)
        assert first.run_after == t0 + timedelta(minutes=30)
        assert_aware(first.run_after)
        assert first.claimed_by is None and first.claim_expires_at is None
        assert first.attempts == 0
        assert ids_of(await backend.find_available_tasks("w", 2)) == expected[:2]
        assert ids_of(await backend.find_available_tasks("w", 5)) == expected
        # finding does not claim
        assert ids_of(await backend.find_available_tasks("other", 10)) == expected
        for bad in (0, -1):
            with pytest.raises(InvalidArgumentError):
                await backend.find_available_tasks("w", bad)
            with pytest.raises(InvalidArgumentError):
                await backend.claim_available_tasks("w", bad, LONG)

        claims = await backend.claim_available_tasks("w1", 3, LONG)
        assert ids_of(claims) == expected[:3]
        for claim, instance_id in zip(claims, expected, strict=False):
            assert claim.worker_id == "w1" and claim.task_id == W
            assert claim.attempts == 1 and claim.name == f"job-{instance_id}"
            assert_aware(claim.expires_at)
        assert ids_of(await backend.claim_available_tasks("w2", 10, LONG)) == expected[3:]
        assert await backend.claim_available_tasks("w3", 10, LONG) == []
        assert await backend.find_available_tasks("w3", 10) == []
        # a worker sees, and may claim again, its own live claims
        mine = await backend.find_available_tasks("w1", 10)
        assert ids_of(mine) == expected[:3]
        assert {t.claimed_by for t in mine} == {"w1"}
        again = await backend.claim_available_tasks("w1", 10, LONG)
        assert ids_of(again) == expected[:3]
        assert {c.attempts for c in again} == {1}

    async def test_find_available_tasks_filters(self, backend: PersistentBackend) -> None:
        for instance_id, name, queue in (
            ("m1", "mail", "io"),
            ("m2", "mail", "cpu"),
            ("r1", "report", "io"),
            ("r2", "report", "cpu"),
        ):
            await create(backend, instance_id, name=name, queue=queue)

        async def found(worker: str = "w", **filters: Any) -> list[str]:
            return ids_of(await backend.find_available_tasks(worker, 10, **filters))

        assert await found() == ["m1", "m2", "r1", "r2"]
        assert await found(names=["mail"]) == ["m1", "m2"]
        assert await found(queues=["io"]) == ["m1", "r1"]
        assert await found(names=["report"], queues=["cpu"]) == ["r2"]
        assert await found(names=["mail", "report"], queues=("io", "cpu")) == [
            "m1",
            "m2",
            "r1",
            "r2",
        ]
        assert await found(names=["nope"]) == []
        assert await found(queues=["nope"]) == []

        claimed = await backend.claim_available_tasks("w1", 10, LONG, names=["report"])
        assert ids_of(claimed) == ["r1", "r2"]
        assert await found("w2") == ["m1", "m2"]
        assert await found("w1") == ["m1", "m2", "r1", "r2"]
        assert ids_of(await backend.claim_available_tasks("w2", 10, LONG, queues=["cpu"])) == ["m2"]
        assert ids_of(
            await backend.claim_available_tasks("w2", 10, LONG, names=["mail"], queues=["io"])
        ) == ["m1"]
        assert await found("w3") == []

    async def test_claims_skip_disabled_names(self, backend: PersistentBackend) -> None:
        await backend.register_workflows(
            [RegisteredWorkflow(name="mail"), RegisteredWorkflow(name="report")]
        )
        for instance_id, name in (("m1", "mail"), ("r1", "report"), ("s1", "unregistered")):
            await create(backend, instance_id, name=name)
        await backend.set_workflow_enabled("mail", False)
        # the very next claim skips it, whoever asks, with or without a name filter
        assert await backend.claim_available_tasks("w1", 10, LONG, names=["mail"]) == []
        assert ids_of(await backend.claim_available_tasks("w1", 10, LONG)) == ["r1", "s1"]
        # it is still listed, and an explicit claim by id still takes it
        assert ids_of(await backend.find_available_tasks("w2", 10)) == ["m1"]
        await backend.set_workflow_enabled("mail", True)
        assert ids_of(await backend.claim_available_tasks("w2", 10, LONG)) == ["m1"]
        await backend.set_workflow_enabled("report", False)
        assert await backend.claim_task("r1", W, "w1", LONG) is not None

    async def test_own_claims_can_be_left_out_and_claims_can_wait_until_due(
        self, backend: PersistentBackend
    ) -> None:
        await create(backend, "a")
        await create(backend, "b")
        await create(backend, "later", run_after=now() + timedelta(hours=1))
        assert await backend.claim_task("a", W, "w1", LONG) is not None
        assert ids_of(await backend.find_available_tasks("w1", 10)) == ["a", "b"]
        assert ids_of(await backend.find_available_tasks("w1", 10, include_own=False)) == ["b"]
        claims = await backend.claim_available_tasks("w1", 10, LONG, include_own=False)
        assert ids_of(claims) == ["b"] and claims[0].attempts == 1
        assert await backend.claim_available_tasks("w1", 10, LONG, include_own=False) == []
        assert await backend.find_available_tasks("w1", 10, include_own=False) == []
        assert ids_of(await backend.claim_available_tasks("w1", 10, LONG)) == ["a", "b"]

        assert await backend.claim_task("later", W, "w2", LONG, due_only=True) is None
        assert await backend.find_available_tasks("w2", 10) == []
        early = await backend.claim_task("later", W, "w2", LONG)
        assert early is not None and early.attempts == 1
        again = await backend.claim_task("a", W, "w1", LONG, due_only=True)
        assert again is not None and again.attempts == 1
        assert await backend.claim_task("a", W, "w2", LONG, due_only=True) is None

    async def test_reschedule_drops_trailing_failed_steps(self, backend: PersistentBackend) -> None:
        failure = ErrorInfo(type="m.Failure", message="failed")
        started = await running(backend, "wf", "w1")
        for recorded in (
            step(0),
            step(1, status=StepStatus.FAILED, error=failure),
            step(2, status=StepStatus.PENDING),
            step(3, status=StepStatus.FAILED, error=failure),
            step(4, status=StepStatus.FAILED, error=failure),
        ):
            await backend.record_step("wf", recorded, worker_id="w1")
        info = await backend.reschedule_workflow(
            "wf", worker_id="w1", run_after=timedelta(0), error=failure
        )
        assert info.attempts == started.attempts == 1
        # failed steps after the last one that did not fail are run again; the others are kept
        assert [s.position for s in await backend.list_steps("wf")] == [0, 1, 2]

        # the failed steps listed in rerun are run again too, wherever they are; steps that
        # did not fail are kept even if listed
        assert await backend.claim_task("wf", W, "w1", LONG) is not None
        assert (await backend.begin_execution("wf", "w1")).attempts == 2
        await backend.record_step("wf", step(3), worker_id="w1")
        await backend.reschedule_workflow(
            "wf", worker_id="w1", run_after=timedelta(0), error=failure, rerun=[0, 1, 2, 9]
        )
        assert [s.position for s in await backend.list_steps("wf")] == [0, 2, 3]

        assert await backend.claim_task("wf", W, "w1", LONG) is not None
        assert (await backend.begin_execution("wf", "w1")).attempts == 3
        await backend.record_step(
            "wf", step(1, status=StepStatus.FAILED, error=failure), worker_id="w1"
        )
        # an attempt handed back (a shutdown, an outage) does not count, and keeps every step
        info = await backend.reschedule_workflow(
            "wf", worker_id="w1", run_after=timedelta(0), consume_attempt=False, rerun=[1]
        )
        assert info.attempts == 2 and info.status is WorkflowStatus.PENDING
        assert [s.position for s in await backend.list_steps("wf")] == [0, 1, 2, 3]
        assert keys_of(await backend.find_available_tasks("w2", 10)) == [("wf", W)]

    async def test_requeue_workflow(self, backend: PersistentBackend) -> None:
        failure = ErrorInfo(type="m.Failure", message="failed", args=(1,))
        for status in (
            WorkflowStatus.FAILED,
            WorkflowStatus.DEAD_LETTER,
            WorkflowStatus.CANCELLED,
        ):
            instance_id = f"wf-{status.value}"
            await running(backend, instance_id, "w1", input={"n": 1}, queue="q", priority=4)
            await backend.record_step(instance_id, step(0), worker_id="w1")
            await backend.record_step(
                instance_id, step(1, status=StepStatus.FAILED, error=failure), worker_id="w1"
            )
            if status is WorkflowStatus.CANCELLED:
                await backend.cancel_workflow(instance_id)
            else:
                await backend.finish_workflow(
                    instance_id, worker_id="w1", status=status, error=failure
                )
            before = await backend.get_workflow(instance_id)
            info = await backend.requeue_workflow(instance_id)
            assert info.status is WorkflowStatus.PENDING
            assert info.error is None and info.attempts == 0
            assert info.version == before.version + 1
            assert info.input == {"n": 1} and info.created_at == before.created_at
            assert await backend.get_workflow(instance_id) == info
            assert await backend.list_steps(instance_id) == [step(0)]
            # its workflow task exists again, unclaimed: the old holder is shut out
            [task] = [
                t
                for t in await backend.find_available_tasks("w2", 10)
                if t.instance_id == instance_id
            ]
            assert (task.task_id, task.name, task.queue, task.priority) == (W, "wf", "q", 4)
            assert task.claimed_by is None
            with pytest.raises(ClaimLostError):
                await backend.record_step(instance_id, step(1), worker_id="w1")
            assert await backend.claim_task(instance_id, W, "w2", LONG) is not None
            again = await backend.begin_execution(instance_id, "w2")
            assert again.attempts == 1 and again.steps == (step(0),)

        await create(backend, "pending")
        await running(backend, "running", "w1")
        await running(backend, "done", "w1")
        await backend.finish_workflow("done", worker_id="w1", status=WorkflowStatus.SUCCEEDED)
        for instance_id in ("pending", "running", "done"):
            before = await backend.get_workflow(instance_id)
            with pytest.raises(InvalidArgumentError):
                await backend.requeue_workflow(instance_id)
            assert await backend.get_workflow(instance_id) == before
        with pytest.raises(WorkflowNotFoundError):
            await backend.requeue_workflow("ghost")

    async def test_a_final_failure_marks_the_steps_a_redrive_runs_again(
        self, backend: PersistentBackend
    ) -> None:
        failure = ErrorInfo(type="m.Failure", message="failed")
        await running(backend, "wf", "w1")
        for recorded in (
            step(0, status=StepStatus.FAILED, error=failure),  # ended the attempt
            step(1),  # started beside it, recorded
            step(2, status=StepStatus.FAILED, error=failure),  # handled by the workflow
            step(3),  # the workflow went on
            step(4, status=StepStatus.PENDING, child_workflow_id="c"),
            step(5, status=StepStatus.FAILED, error=failure),  # ended the attempt too
            step(6),
        ):
            await backend.record_step("wf", recorded, worker_id="w1")
        info = await backend.finish_workflow(
            "wf",
            worker_id="w1",
            status=WorkflowStatus.DEAD_LETTER,
            error=failure,
            rerun=[0, 1, 4, 5, 8],
        )
        assert info.status is WorkflowStatus.DEAD_LETTER and info.error == failure
        # the steps stay visible; only the failed ones listed are marked
        steps = await backend.list_steps("wf")
        assert [(s.position, s.rerun) for s in steps] == [
            (0, True),
            (1, False),
            (2, False),
            (3, False),
            (4, False),
            (5, True),
            (6, False),
        ]
        assert steps[0] == step(0, status=StepStatus.FAILED, error=failure, rerun=True)
        # a redrive deletes the marked ones, which run again; the handled failure is kept
        await backend.requeue_workflow("wf")
        assert [s.position for s in await backend.list_steps("wf")] == [1, 2, 3, 4, 6]
        assert await backend.claim_task("wf", W, "w2", LONG) is not None
        again = await backend.begin_execution("wf", "w2")
        assert [s.position for s in again.steps] == [1, 2, 3, 4, 6]
        assert not any(s.rerun for s in again.steps)
        await backend.record_step("wf", step(0), worker_id="w2")
        await backend.record_step("wf", step(5), worker_id="w2")
        # a success marks nothing
        await backend.finish_workflow(
            "wf", worker_id="w2", status=WorkflowStatus.SUCCEEDED, output=1
        )
        assert not any(s.rerun for s in await backend.list_steps("wf"))

    async def test_interruptions_are_counted_apart_and_cleared_by_a_redrive(
        self, backend: PersistentBackend
    ) -> None:
        await running(backend, "wf", "w1", max_attempts=3)
        for n, worker in enumerate(("w2", "w3"), start=1):
            # the holder dies (its claim expires); another worker takes the attempt over
            await backend.release_task_claim("wf", W, ["w1", "w2"][n - 1])
            assert await backend.claim_task("wf", W, worker, LONG) is not None
            resumed = await backend.begin_execution("wf", worker)
            assert (resumed.attempts, resumed.interruptions) == (1, n)
        # a failed attempt counts in attempts, not in interruptions
        await backend.reschedule_workflow("wf", worker_id="w3", run_after=timedelta(0))
        assert await backend.claim_task("wf", W, "w1", LONG) is not None
        retried = await backend.begin_execution("wf", "w1")
        assert (retried.attempts, retried.interruptions) == (2, 2)
        # an attempt handed back and resumed is not counted at all
        await backend.reschedule_workflow(
            "wf", worker_id="w1", run_after=timedelta(0), consume_attempt=False
        )
        assert await backend.claim_task("wf", W, "w1", LONG) is not None
        resumed = await backend.begin_execution("wf", "w1")
        assert (resumed.attempts, resumed.interruptions) == (2, 2)
        await backend.finish_workflow("wf", worker_id="w1", status=WorkflowStatus.DEAD_LETTER)
        info = await backend.requeue_workflow("wf")
        assert (info.attempts, info.interruptions) == (0, 0)
        assert await backend.get_workflow("wf") == info

    async def test_suspend_and_complete_step_tasks(self, backend: PersistentBackend) -> None:
        started = await running(backend, "wf", "w1")
        await backend.record_step("wf", step(0, output="zero"), worker_id="w1")
        waiting = [
            step(0, status=StepStatus.PENDING, name="ignored"),  # final rows are left alone
            step(1, name="fan", status=StepStatus.PENDING, input={"i": 1}),
            step(2, name="fan", status=StepStatus.PENDING, input={"i": 2}),
        ]
        specs = [
            TaskSpec(instance_id="wf", task_id="step-1", name="fan", queue="q"),
            TaskSpec(instance_id="wf", task_id="step-2", name="fan", queue="q"),
        ]
        with pytest.raises(ClaimLostError) as lost:
            await backend.suspend_workflow("wf", worker_id="w2", steps=waiting, tasks=specs)
        assert lost.value.holder == "w1"
        assert await backend.list_steps("wf") == [step(0, output="zero")]
        assert await backend.find_available_tasks("w2", 10) == []

        await backend.suspend_workflow("wf", worker_id="w1", steps=waiting, tasks=specs)
        info = await backend.get_workflow("wf")
        assert info.status is WorkflowStatus.PENDING and info.version > started.version
        assert await backend.list_steps("wf") == [step(0, output="zero"), *waiting[1:]]
        # the workflow waits, unclaimed and not due, for its step tasks
        assert keys_of(await backend.find_available_tasks("w2", 10)) == [
            ("wf", "step-1"),
            ("wf", "step-2"),
        ]
        assert await backend.claim_task("wf", W, "w2", LONG, due_only=True) is None
        with pytest.raises(ClaimLostError):
            await backend.record_step("wf", step(3), worker_id="w1")

        with pytest.raises(ClaimLostError):
            await backend.complete_step_task(
                "wf", "step-1", worker_id="w2", step=step(1, name="fan", output="one")
            )
        assert await backend.claim_task("wf", "step-1", "w2", LONG) is not None
        with pytest.raises(StepAlreadyRecordedError):
            await backend.complete_step_task(
                "wf", "step-1", worker_id="w2", step=step(0, output="overwritten")
            )
        done_1 = step(1, name="fan", input={"i": 1}, output="one")
        await backend.complete_step_task("wf", "step-1", worker_id="w2", step=done_1)
        with pytest.raises(TaskNotFoundError):
            await backend.claim_task("wf", "step-1", "w2", LONG)
        assert keys_of(await backend.find_available_tasks("w3", 10)) == [("wf", "step-2")]

        assert await backend.claim_task("wf", "step-2", "w3", LONG) is not None
        done_2 = step(2, name="fan", input={"i": 2}, output="two")
        await backend.complete_step_task("wf", "step-2", worker_id="w3", step=done_2)
        # the last one wakes the workflow
        assert keys_of(await backend.find_available_tasks("w4", 10)) == [("wf", W)]
        claim = await backend.claim_task("wf", W, "w4", LONG, due_only=True)
        assert claim is not None
        resumed = await backend.begin_execution("wf", "w4")
        assert resumed.steps == (step(0, output="zero"), done_1, done_2)
        # the suspended attempt goes on: neither another attempt nor an interruption
        assert (resumed.attempts, resumed.interruptions) == (started.attempts, 0)

        # suspending with no step task left: due at once
        await running(backend, "solo", "w1")
        await backend.suspend_workflow("solo", worker_id="w1", steps=[], tasks=[])
        assert ("solo", W) in keys_of(await backend.find_available_tasks("w5", 10))

    # -- registry, executors, wake-ups --------------------------------------------------------

    async def test_workflow_registry(self, backend: PersistentBackend) -> None:
        assert await backend.list_registered_workflows() == []
        before = now()
        await backend.register_workflows(
            [
                RegisteredWorkflow(name="beta", description="Beta ☃"),
                RegisteredWorkflow(name="alpha", enabled=False),
                RegisteredWorkflow(name="zz-ünïcødé", description="z"),
            ]
        )
        after = now()
        registered = await backend.list_registered_workflows()
        assert [(r.name, r.enabled, r.description) for r in registered] == [
            ("alpha", False, None),
            ("beta", True, "Beta ☃"),
            ("zz-ünïcødé", True, "z"),
        ]
        for entry in registered:
            assert_between(entry.updated_at, before, after)

        # known names: the description follows the code, ``enabled`` stays the operator's choice
        await backend.register_workflows(
            [
                RegisteredWorkflow(name="alpha", enabled=True, description="now described"),
                RegisteredWorkflow(name="beta", enabled=False),
            ]
        )
        await backend.register_workflows([])
        assert [
            (r.name, r.enabled, r.description) for r in await backend.list_registered_workflows()
        ] == [("alpha", False, "now described"), ("beta", True, None), ("zz-ünïcødé", True, "z")]

        enabled = await backend.set_workflow_enabled("alpha", True)
        assert (enabled.name, enabled.enabled, enabled.description) == (
            "alpha",
            True,
            "now described",
        )
        disabled = await backend.set_workflow_enabled("beta", False)
        assert disabled.enabled is False
        await backend.register_workflows([RegisteredWorkflow(name="alpha", enabled=False)])
        states = {r.name: r.enabled for r in await backend.list_registered_workflows()}
        assert states == {"alpha": True, "beta": False, "zz-ünïcødé": True}
        with pytest.raises(UnknownWorkflowError):
            await backend.set_workflow_enabled("never-registered", True)
        assert len(await backend.list_registered_workflows()) == 3

    async def test_executor_heartbeats(self, backend: PersistentBackend) -> None:
        hour = 3600.0
        tiny = SHORT.total_seconds() / STALE_AFTER_HEARTBEATS  # stale SHORT after a heartbeat
        assert await backend.list_executors() == []
        assert await backend.get_executor("e1") is None
        before = now()
        assert await backend.start_executor(
            "e1",
            hostname="host-a",
            pid=101,
            incarnation="i1",
            heartbeat_interval=hour,
            replacing=None,
        )
        await asyncio.sleep(0.01)
        assert await backend.start_executor(
            "e2",
            hostname="hôst-ü",
            pid=202,
            incarnation="i2",
            heartbeat_interval=tiny,
            replacing=None,
        )
        after = now()
        e2, e1 = await backend.list_executors()
        assert (e1.id, e1.hostname, e1.pid, e1.incarnation) == ("e1", "host-a", 101, "i1")
        assert (e2.id, e2.hostname, e2.pid, e2.incarnation) == ("e2", "hôst-ü", 202, "i2")
        assert (e1.heartbeat_interval, e2.heartbeat_interval) == (hour, tiny)
        for e in (e1, e2):
            assert_between(e.started_at, before, after)
            assert_between(e.heartbeat_at, before, after)
            assert e.stopped_at is None
        assert e1.stale is False  # an hour's interval: fresh for the whole test
        assert await backend.get_executor("e1") == e1

        # staleness: by each executor's own interval, unless the caller gives a threshold
        await asyncio.sleep(EXPIRED)
        assert {e.id: e.stale for e in await backend.list_executors()} == {
            "e1": False,
            "e2": True,
        }
        found = await backend.get_executor("e2")
        assert found is not None and found.stale is True
        assert {e.id: e.stale for e in await backend.list_executors(stale_after=SHORT)} == {
            "e1": True,
            "e2": True,
        }
        assert await backend.record_executor_heartbeat("e1", incarnation="i1") is True
        first, second = await backend.list_executors()
        assert (first.id, first.stale, second.id, second.stale) == ("e1", False, "e2", True)
        assert first.started_at == e1.started_at and first.heartbeat_at > e1.heartbeat_at

        # heartbeats and stops are fenced by the incarnation
        assert await backend.record_executor_heartbeat("e1", incarnation="i2") is False
        assert await backend.record_executor_heartbeat("never-seen", incarnation="i1") is False
        await backend.mark_executor_stopped("e2", incarnation="not-i2")
        await backend.mark_executor_stopped("never-seen", incarnation="i1")
        assert (await backend.get_executor("e2")) == dataclasses.replace(e2, stale=True)
        await backend.mark_executor_stopped("e2", incarnation="i2")
        stopped = await backend.get_executor("e2")
        assert stopped is not None and stopped.stale is False
        assert_aware(stopped.stopped_at)
        assert await backend.record_executor_heartbeat("e2", incarnation="i2") is False
        assert (await backend.list_executors(stale_after=SHORT))[1] == stopped

        # a start replaces the record it was judged on, and nothing else
        restart = partial(start_executor, backend, "e2", "j", hostname="host-b", pid=303)
        assert not await restart(replacing=None)
        assert not await restart(replacing="i1")
        assert await backend.get_executor("e2") == stopped
        assert await restart(replacing="i2")
        restarted = await backend.get_executor("e2")
        assert restarted is not None
        assert (restarted.pid, restarted.incarnation, restarted.stopped_at) == (303, "j", None)
        assert restarted.started_at > e2.started_at and restarted.stale is False
        assert await backend.record_executor_heartbeat("e2", incarnation="i2") is False
        assert await backend.record_executor_heartbeat("e2", incarnation="j") is True
        for bad in (timedelta(0), timedelta(seconds=-1)):
            with pytest.raises(InvalidArgumentError):
                await backend.list_executors(stale_after=bad)
        for interval in (0.0, -1.0):
            with pytest.raises(InvalidArgumentError):
                await backend.start_executor(
                    "e3",
                    incarnation="k",
                    replacing=None,
                    hostname="h",
                    pid=1,
                    heartbeat_interval=interval,
                )
        assert await backend.get_executor("e3") is None

    async def test_one_start_wins_an_executor_id(self, backend: PersistentBackend) -> None:
        """Concurrent starts under one id, from nothing or from one judged record: one wins."""
        firsts = await asyncio.gather(
            *(start_executor(backend, "e", f"a{i}", replacing=None) for i in range(8))
        )
        assert firsts.count(True) == 1
        winner = f"a{firsts.index(True)}"
        known = await backend.get_executor("e")
        assert known is not None and known.incarnation == winner
        takeovers = await asyncio.gather(
            *(start_executor(backend, "e", f"b{i}", replacing=winner) for i in range(8))
        )
        assert takeovers.count(True) == 1
        known = await backend.get_executor("e")
        assert known is not None and known.incarnation == f"b{takeovers.index(True)}"

    async def test_get_task(self, backend: PersistentBackend) -> None:
        await create(backend, "wf")
        with pytest.raises(TaskNotFoundError):
            await backend.get_task("wf", "step:9")
        with pytest.raises(TaskNotFoundError):
            await backend.get_task("nope", W)
        free = await backend.get_task("wf", W)
        assert (free.instance_id, free.task_id, free.name) == ("wf", W, "wf")
        assert (free.claimed_by, free.claim_expires_at, free.attempts) == (None, None, 0)
        before = now()
        claim = await backend.claim_task("wf", W, "w1", SHORT)
        assert claim is not None
        held = await backend.get_task("wf", W)
        assert (held.claimed_by, held.attempts) == ("w1", 1)
        assert_between(held.claim_expires_at, before + SHORT, now() + SHORT)
        await asyncio.sleep(EXPIRED)
        lapsed = await backend.get_task("wf", W)  # expired, not taken over: still recorded
        assert (lapsed.claimed_by, lapsed.claim_expires_at) == ("w1", held.claim_expires_at)

    async def test_wait_for_work(self, backend: PersistentBackend) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await backend.wait_for_work(0.1)  # nothing to do: returns by the timeout
        assert loop.time() - started < 10

        await create(backend, "wf", task=False)
        wakers: list[tuple[str, Call]] = [
            ("add_task", lambda: backend.add_task(TaskSpec(instance_id="wf", name="wf"))),
            ("release_task_claim", lambda: backend.release_task_claim("wf", W, "w1")),
            (
                "create_workflow",
                lambda: backend.create_workflow(
                    WorkflowSnapshot(id="wf-2", name="wf"),
                    task=TaskSpec(instance_id="wf-2", name="wf"),
                ),
            ),
        ]
        for what, wake in wakers:
            if what == "release_task_claim":
                assert await backend.claim_task("wf", W, "w1", LONG) is not None
            waiter = asyncio.create_task(backend.wait_for_work(60))
            await asyncio.sleep(0.05)  # let it start waiting
            await wake()
            try:
                await asyncio.wait_for(waiter, 10)
            except TimeoutError:
                pytest.fail(f"{what} did not wake a coroutine waiting for work")

    # -- serialization ----------------------------------------------------------------------

    async def test_serialization_errors_write_nothing(self, backend: PersistentBackend) -> None:
        bad = Unserializable()
        with pytest.raises(SerializationError, match="Unserializable"):
            await backend.create_workflow(
                WorkflowSnapshot(id="wf", name="wf", input=bad),
                task=TaskSpec(instance_id="wf", name="wf"),
            )
        with pytest.raises(SerializationError):
            await backend.create_workflow(
                WorkflowSnapshot(id="wf", name="wf", steps=(step(0, output={"k": bad}),)),
                task=TaskSpec(instance_id="wf", name="wf"),
            )
        with pytest.raises(SerializationError, match="Unserializable"):
            await backend.save_snapshot(WorkflowSnapshot(id="wf", name="wf", output=bad))
        with pytest.raises(WorkflowNotFoundError):
            await backend.get_workflow("wf")
        assert (await backend.list_snapshots()).items == []
        assert await backend.find_available_tasks("w", 10) == []

        await running(backend, "ok", "w1", input="fine", steps=(step(0),))
        stored = await backend.load_snapshot("ok")
        for changed in (
            dataclasses.replace(stored, input=bad),
            dataclasses.replace(stored, output=[1, bad]),
            dataclasses.replace(stored, steps=(step(0, output="new"), step(1, output=bad))),
        ):
            with pytest.raises(SerializationError):
                await backend.save_snapshot(changed)
        with pytest.raises(SerializationError, match="Unserializable"):
            await backend.record_step("ok", step(1, output=bad), worker_id="w1")
        with pytest.raises(SerializationError, match="Unserializable"):
            await backend.finish_workflow(
                "ok", worker_id="w1", status=WorkflowStatus.SUCCEEDED, output=bad
            )
        assert await backend.load_snapshot("ok") == stored
        # the claim survived: the holder can still finish
        info = await backend.finish_workflow(
            "ok", worker_id="w1", status=WorkflowStatus.SUCCEEDED, output="fine"
        )
        assert info.output == "fine" and info.version == stored.version + 1

    async def test_naive_timestamps_are_refused(self, backend: PersistentBackend) -> None:
        naive = datetime(2024, 1, 1, 12, 0)
        for snapshot, spec in (
            (WorkflowSnapshot(id="wf", name="wf", created_at=naive), None),
            (WorkflowSnapshot(id="wf", name="wf", steps=(step(0, completed_at=naive),)), None),
            (
                WorkflowSnapshot(id="wf", name="wf"),
                TaskSpec(instance_id="wf", name="wf", run_after=naive),
            ),
        ):
            with pytest.raises(InvalidArgumentError, match="naive"):
                await backend.create_workflow(snapshot, task=spec)
        with pytest.raises(InvalidArgumentError):
            await backend.save_snapshot(WorkflowSnapshot(id="wf", name="wf", started_at=naive))
        with pytest.raises(WorkflowNotFoundError):
            await backend.get_workflow("wf")
        assert await backend.find_available_tasks("w", 10) == []

        await running(backend, "ok", "w1")
        stored = await backend.load_snapshot("ok")
        with pytest.raises(InvalidArgumentError):
            await backend.save_snapshot(dataclasses.replace(stored, completed_at=naive))
        with pytest.raises(InvalidArgumentError):
            await backend.record_step("ok", step(0, started_at=naive), worker_id="w1")
        with pytest.raises(InvalidArgumentError):
            await backend.add_task(
                TaskSpec(instance_id="ok", task_id="t", name="t", run_after=naive)
            )
        assert await backend.load_snapshot("ok") == stored
        assert await backend.find_available_tasks("w2", 10) == []
        assert [i.id for i in await backend.list_snapshots()] == ["ok"]

    # -- resources --------------------------------------------------------------------------

    async def test_no_connections_leaked(self, backend: PersistentBackend) -> None:
        checked_out = getattr(backend, "checked_out_connections", None)
        if not callable(checked_out):
            pytest.skip(f"{type(backend).__name__} has no checked_out_connections()")
        await running(backend, "wf", "w1")
        await backend.record_step("wf", step(0), worker_id="w1")
        failing: list[Call] = [
            lambda: backend.get_workflow("ghost"),
            lambda: backend.load_snapshot("ghost"),
            lambda: backend.list_steps("ghost"),
            lambda: backend.save_snapshot(WorkflowSnapshot(id="wf", name="wf")),
            lambda: backend.save_snapshot(WorkflowSnapshot(id="wf", name="wf", version=99)),
            lambda: backend.record_step("wf", step(0), worker_id="w1"),
            lambda: backend.record_step("wf", step(1), worker_id="w2"),
            lambda: backend.record_step("wf", step(1, output=Unserializable()), worker_id="w1"),
            lambda: backend.claim_task("ghost", W, "w1", LONG),
            lambda: backend.extend_task_claim("wf", W, "w2", LONG),
            lambda: backend.release_task_claim("wf", W, "w2"),
            lambda: backend.complete_task("wf", W, "w2"),
            lambda: backend.finish_workflow("wf", worker_id="w2", status=WorkflowStatus.SUCCEEDED),
            lambda: backend.list_snapshots(cursor="not a cursor!"),
            lambda: backend.find_available_tasks("w1", 0),
        ]
        for call in failing:
            with pytest.raises(DurableError):
                await call()
            assert checked_out() == 0
        await asyncio.gather(*(backend.get_workflow("wf") for _ in range(20)))
        await asyncio.gather(
            *(backend.get_workflow("ghost") for _ in range(20)), return_exceptions=True
        )
        assert checked_out() == 0

    # -- claim atomicity under concurrency ------------------------------------------------------

    async def _create_tasks(self, backend: PersistentBackend, count: int) -> list[TaskKey]:
        keys: list[TaskKey] = []
        for i in range(count):
            instance_id = f"job-{i:04d}"
            await create(backend, instance_id, name="job", priority=i % 3)
            keys.append((instance_id, W))
        return keys

    async def test_concurrent_batch_claims_in_one_process(self, backend: PersistentBackend) -> None:
        keys = await self._create_tasks(backend, 150)
        workers = [f"task-{i}" for i in range(12)]
        got = await gather_all(claim_until_empty(backend, w, batch=7, ttl=LONG) for w in workers)
        assert_each_once(dict(zip(workers, got, strict=True)), keys)
        assert await backend.find_available_tasks("anyone", 10) == []

    async def test_concurrent_single_claims_in_one_process(
        self, backend: PersistentBackend
    ) -> None:
        keys = await self._create_tasks(backend, 40)
        workers = [f"task-{i}" for i in range(8)]
        orders = [random.Random(i).sample(keys, len(keys)) for i in range(len(workers))]
        got = await gather_all(
            claim_each(backend, w, order, ttl=LONG)
            for w, order in zip(workers, orders, strict=True)
        )
        assert_each_once(dict(zip(workers, got, strict=True)), keys)
        for instance_id, task_id in keys:
            assert await backend.claim_task(instance_id, task_id, "late", LONG) is None

    async def test_concurrent_batch_claims_across_processes(
        self,
        backend: PersistentBackend,
        backend_factory: Callable[[], PersistentBackend] | None,
        _contract_processes: ProcessClaimers,
    ) -> None:
        if backend_factory is None:
            pytest.skip("no backend_factory fixture: the backend cannot be shared by processes")
        keys = await self._create_tasks(backend, 200)
        got = await asyncio.to_thread(
            _contract_processes.run, backend_factory, mode="batch", batch=5
        )
        assert_each_once(got, keys)
        assert await backend.find_available_tasks("anyone", 10) == []

    async def test_concurrent_single_claims_across_processes(
        self,
        backend: PersistentBackend,
        backend_factory: Callable[[], PersistentBackend] | None,
        _contract_processes: ProcessClaimers,
    ) -> None:
        if backend_factory is None:
            pytest.skip("no backend_factory fixture: the backend cannot be shared by processes")
        keys = await self._create_tasks(backend, 100)
        got = await asyncio.to_thread(
            _contract_processes.run, backend_factory, mode="single", keys=keys
        )
        assert_each_once(got, keys)
        assert await backend.find_available_tasks("anyone", 10) == []
