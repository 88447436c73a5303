"""Shared by the areas of the contract suite: constants, record builders, assertions, and
the base class holding the fixtures. Private: import the area classes from
:mod:`durable.testing.contract`."""

from __future__ import annotations

import asyncio
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
from typing import Any, NoReturn, TypeVar, cast

import pytest
import pytest_asyncio

from durable.backends.base import PersistentBackend
from durable.models import (
    WORKFLOW_TASK,
    StepRecord,
    StepStatus,
    TaskSpec,
    WorkflowInfo,
    WorkflowSnapshot,
)
from durable.testing._concurrency import ProcessClaimers, TaskKey

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
class ContractBase:
    """What every area of the contract needs: the ``backend`` fixture a subclass provides (see
    :mod:`durable.testing.contract`), the optional ``backend_factory``, and the check, after
    every test, that the backend returned its connections. Every area class derives from it, so
    each runs on its own with the same one fixture."""

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
