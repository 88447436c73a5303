"""Bad input fails at the API, before anything is written, the same way on every backend.

Every case passes a bad argument to a public API and expects a :class:`durable.DurableError`
subclass (:class:`~durable.InvalidArgumentError`, or :class:`~durable.ConfigurationError` for
``durable.connect``) whose message names the argument, and then checks that the database holds
exactly what it held before (every table, read back row by row). Also: ids derived from a long
parent id still fit, an idempotency key reused by another workflow is named in the error, and a
reused workflow id returns the first run's result (the documented idempotency contract).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

import durable
from durable.backends.sql.schema import executors, metadata
from durable.context import current
from durable.validation import MAX_ID_LENGTH, derived_id
from durable.worker import serve

REG = durable.Registry()  # this module's workflows; the runtimes here serve only these
LONG = "x" * (MAX_ID_LENGTH + 1)
#: bad ids and names, each with the words the error must contain
BAD_IDS: list[tuple[Any, str]] = [
    ("", "must not be empty"),
    (LONG, "must be at most 255 characters, got 256"),
    ("a\x00b", "must not contain NUL"),
    ("caf\ud800", "must be valid Unicode"),
    (5, "must be a str, got int"),
    (b"bytes", "must be a str, got bytes"),
]


@durable.step(name="tests.bad_input.echo")
async def echo(value: Any) -> Any:
    return value


@durable.workflow(name="tests.bad_input.flow.v1", registry=REG)
async def flow(value: Any = None) -> Any:
    return await echo(value)


@durable.workflow(name="tests.bad_input.other.v1", registry=REG)
async def other(value: Any = None) -> Any:
    return value


@durable.workflow(name="tests.bad_input.parent.v1", registry=REG)
async def parent(value: Any = None) -> dict[str, str]:
    ctx = current()
    assert ctx is not None
    await flow(value)  # a child workflow at position 0
    queued = await ctx.runtime.enqueue(other, value)  # a queued one at position 1
    return {"queued": queued}


LONG_NAME = "tests.bad_input." + "n" * (MAX_ID_LENGTH - len("tests.bad_input."))


@durable.workflow(name=LONG_NAME, registry=REG)
async def long_named(value: Any = None) -> Any:
    return value


@durable.workflow(name="tests.bad_input.enqueue_long.v1", registry=REG)
async def enqueue_long(value: Any = None) -> str:
    ctx = current()
    assert ctx is not None
    return await ctx.runtime.enqueue(long_named, value)


def runtime(url: str, **options: Any) -> durable.Runtime:
    # a long lease: no heartbeat writes anything while a test compares the database's contents
    options.setdefault("claim_ttl", 600)
    return durable.Runtime(durable.connect(url), recover=False, registry=REG, **options)


async def stored(backend: durable.PersistentBackend) -> Any:
    """Everything the backend holds (but executors' heartbeats), to compare before and after."""
    if isinstance(backend, durable.InMemoryBackend):
        with backend._lock:
            return repr(
                (
                    backend._workflows,
                    backend._steps,
                    backend._tasks,
                    backend._idempotency,
                    backend._registry,
                )
            )
    assert isinstance(backend, durable.SQLAlchemyBackend)

    def dump(conn: sa.Connection) -> dict[str, list[str]]:
        return {
            table.name: sorted(repr(tuple(row)) for row in conn.execute(sa.select(table)))
            for table in metadata.sorted_tables
            if table is not executors
        }

    return await backend._run(dump)


Call = Callable[[durable.Runtime], Coroutine[Any, Any, Any]]


async def refused_without_writing(
    rt: durable.Runtime,
    cases: list[tuple[str, Call, str]],
    error: type[Exception] = durable.InvalidArgumentError,
) -> None:
    """Run every case; each must raise ``error`` matching its words and leave the database as
    it was. Every failing case is reported (not only the first)."""
    failures = []
    for label, call, words in cases:
        before = await stored(rt.backend)
        try:
            await call(rt)
        except error as exc:
            if words not in str(exc):
                failures.append(f"{label}: message {str(exc)!r} lacks {words!r}")
        except BaseException as exc:
            failures.append(f"{label}: raised {type(exc).__qualname__}: {exc}")
        else:
            failures.append(f"{label}: accepted")
        if await stored(rt.backend) != before:
            failures.append(f"{label}: the database changed")
    assert not failures, "\n".join(failures)


def enqueue(**options: Any) -> Call:
    return lambda rt: rt.enqueue(flow, 1, **options)


# -- item 14: numbers ---------------------------------------------------------------------------


async def test_enqueue_refuses_bad_numbers(backend_url: str) -> None:
    naive = datetime(2030, 1, 1)
    cases: list[tuple[str, Call, str]] = [
        ("max_attempts=0", enqueue(max_attempts=0), "max_attempts must be at least 1, got 0"),
        ("max_attempts=-3", enqueue(max_attempts=-3), "max_attempts must be at least 1"),
        ("max_attempts=True", enqueue(max_attempts=True), "max_attempts must be an int"),
        ("max_attempts=2.5", enqueue(max_attempts=2.5), "max_attempts must be an int"),
        ("max_attempts=2**31", enqueue(max_attempts=2**31), "max_attempts must be at most"),
        ("priority='high'", enqueue(priority="high"), "priority must be an int, got str 'high'"),
        ("priority=1.5", enqueue(priority=1.5), "priority must be an int"),
        ("priority=True", enqueue(priority=True), "priority must be an int"),
        ("priority=2**31", enqueue(priority=2**31), "priority must be at most 2147483647"),
        ("priority=-2**31-1", enqueue(priority=-(2**31) - 1), "priority must be at least"),
        ("priority=2**70", enqueue(priority=2**70), "priority must be at most 2147483647"),
        ("delay=nan", enqueue(delay=math.nan), "delay must be finite, got nan"),
        ("delay=inf", enqueue(delay=math.inf), "delay must be finite, got inf"),
        ("delay=-inf", enqueue(delay=-math.inf), "delay must be finite"),
        ("delay=1e300", enqueue(delay=1e300), "delay must be at most"),
        ("delay=-1e300", enqueue(delay=-1e300), "at least -3153600000 seconds (100 years back)"),
        ("delay=2**1100", enqueue(delay=2**1100), "delay is too large"),
        ("delay=timedelta.max", enqueue(delay=timedelta.max), "delay must be at most"),
        ("delay='5'", enqueue(delay="5"), "delay must be a number, got str"),
        ("run_after=str", enqueue(run_after="tomorrow"), "run_after must be a timezone-aware"),
        ("run_after=naive", enqueue(run_after=naive), "run_after must be timezone-aware"),
        (
            "run_after=max",
            enqueue(run_after=datetime.max.replace(tzinfo=UTC)),
            "run_after must be before 9999-01-01",
        ),
        (
            "run_after and delay",
            enqueue(run_after=datetime.now(UTC), delay=1),
            "give run_after or delay, not both",
        ),
        ("served_elsewhere=1", enqueue(served_elsewhere=1), "served_elsewhere must be True"),
    ]
    async with runtime(backend_url) as rt:
        await rt.enqueue(flow, "there is something to keep", idempotency_key="k")
        await refused_without_writing(rt, cases)


async def test_result_refuses_timeouts_that_are_not_finite(backend_url: str) -> None:
    async with runtime(backend_url) as rt:
        await rt.run(flow, 1, workflow_id="done")
        await refused_without_writing(
            rt,
            [
                ("nan", lambda rt: rt.result("done", timeout=math.nan), "timeout must be finite"),
                ("inf", lambda rt: rt.result("done", timeout=math.inf), "timeout must be finite"),
                ("-1", lambda rt: rt.result("done", timeout=-1), "timeout must not be negative"),
                ("'1'", lambda rt: rt.result("done", timeout="1"), "timeout must be a number"),
            ],
        )
        assert await rt.result("done", timeout=30) == 1


RUNTIME_OPTIONS: list[tuple[dict[str, Any], str]] = [
    ({"claim_ttl": 0}, "claim_ttl must be positive, got 0"),
    ({"claim_ttl": -5}, "claim_ttl must be positive"),
    ({"claim_ttl": math.nan}, "claim_ttl must be finite, got nan"),
    ({"claim_ttl": math.inf}, "claim_ttl must be finite, got inf"),
    ({"claim_ttl": 1e300}, "claim_ttl must be at most"),
    ({"claim_ttl": "30"}, "claim_ttl must be a number, got str"),
    ({"claim_ttl": True}, "claim_ttl must be a number, got bool"),
    ({"heartbeat_interval": 0}, "heartbeat_interval must be positive, got 0"),
    ({"heartbeat_interval": -1}, "heartbeat_interval must be positive"),
    ({"heartbeat_interval": math.nan}, "heartbeat_interval must be finite"),
    ({"claim_ttl": 10, "heartbeat_interval": 10}, "heartbeat_interval must be below claim_ttl"),
    ({"claim_ttl": 10, "heartbeat_interval": 60}, "heartbeat_interval must be below claim_ttl"),
    ({"poll_interval": 0}, "poll_interval must be positive, got 0"),
    ({"poll_interval": -0.5}, "poll_interval must be positive"),
    ({"poll_interval": math.inf}, "poll_interval must be finite"),
    ({"executor_id": ""}, "executor_id must not be empty"),
    ({"executor_id": LONG}, "executor_id must be at most 255 characters"),
    ({"executor_id": "a\x00b"}, "executor_id must not contain NUL"),
    ({"executor_id": "\udc80"}, "executor_id must be valid Unicode"),
    ({"executor_id": 7}, "executor_id must be a str"),
    ({"max_threads": 0}, "max_threads must be at least 1"),
    ({"max_threads": 2.0}, "max_threads must be an int"),
    ({"recover": "yes"}, "recover must be True or False"),
    ({"registry": {}}, "registry must be a durable.Registry"),
]


@pytest.mark.parametrize(("options", "words"), RUNTIME_OPTIONS, ids=lambda v: repr(v)[:40])
def test_runtime_refuses_bad_options(backend_url: str, options: dict[str, Any], words: str) -> None:
    backend = durable.connect(backend_url)
    with pytest.raises(durable.InvalidArgumentError) as caught:
        durable.Runtime(backend, **options)
    assert words in str(caught.value)


async def test_a_heartbeat_below_the_lease_is_accepted(backend_url: str) -> None:
    async with runtime(backend_url, claim_ttl=3, heartbeat_interval=2.5, poll_interval=0.01) as rt:
        assert rt.heartbeat_interval == 2.5
        assert await rt.run(flow, 2) == 2


async def test_workers_refuse_bad_options(backend_url: str) -> None:
    def worker(**options: Any) -> Call:
        return lambda rt: rt.start_worker(**options)

    cases: list[tuple[str, Call, str]] = [
        ("concurrency=0", worker(concurrency=0), "concurrency must be at least 1, got 0"),
        ("concurrency=-1", worker(concurrency=-1), "concurrency must be at least 1"),
        ("concurrency=True", worker(concurrency=True), "concurrency must be an int, got bool"),
        ("concurrency=2.5", worker(concurrency=2.5), "concurrency must be an int, got float"),
        ("concurrency='4'", worker(concurrency="4"), "concurrency must be an int, got str"),
        ("poll_interval=0", worker(poll_interval=0), "poll_interval must be positive"),
        ("poll_interval=-1", worker(poll_interval=-1), "poll_interval must be positive"),
        ("poll_interval=nan", worker(poll_interval=math.nan), "poll_interval must be finite"),
        ("queues='default'", worker(queues="default"), "queues must be a list of names"),
        ("queues=['']", worker(queues=[""]), "each of queues must not be empty"),
        ("names=[LONG]", worker(names=[LONG]), "each of names must be at most 255"),
    ]
    async with runtime(backend_url) as rt:
        await refused_without_writing(rt, cases)
        assert rt._workers == []
    with pytest.raises(durable.InvalidArgumentError, match="grace must be finite"):
        await serve(runtime(backend_url), grace=math.nan)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"max_attempts": 0}, "max_attempts must be at least 1, got 0"),
        ({"max_attempts": 2.0}, "max_attempts must be an int"),
        ({"max_attempts": True}, "max_attempts must be an int"),
        ({"initial_delay": -1}, "initial_delay must not be negative"),
        ({"initial_delay": math.nan}, "initial_delay must be finite"),
        ({"initial_delay": math.inf}, "initial_delay must be finite"),
        ({"backoff_rate": 0.5}, "backoff_rate must be at least 1, got 0.5"),
        ({"backoff_rate": math.nan}, "backoff_rate must be finite"),
        ({"backoff_rate": math.inf}, "backoff_rate must be finite"),
        ({"max_delay": math.inf}, "max_delay must be finite"),
        ({"max_delay": math.nan}, "max_delay must be finite"),
        ({"max_delay": 1e300}, "max_delay must be at most"),
        ({"max_delay": -1}, "max_delay must not be negative"),
        ({"retry_on": ValueError}, "retry_on must be a tuple of exception classes"),
        ({"non_retryable": ("x",)}, "non_retryable must be a tuple of exception classes"),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_retry_options_are_checked_everywhere(options: dict[str, Any], words: str) -> None:
    """RetryPolicy, and the step decorator's separate options (even with one attempt, where a
    policy used not to be built)."""
    with pytest.raises(durable.InvalidArgumentError) as caught:
        durable.RetryPolicy(**options)
    assert words in str(caught.value)

    registered = durable.default_registry.step_names()
    with pytest.raises(durable.InvalidArgumentError) as caught:

        @durable.step(name="tests.bad_input.never", **options)
        async def never() -> None: ...

    assert words in str(caught.value)
    assert durable.default_registry.step_names() == registered  # nothing registered


def test_a_retry_delay_past_the_float_range_is_capped() -> None:
    policy = durable.RetryPolicy(
        max_attempts=5000, initial_delay=1.0, backoff_rate=10.0, max_delay=60
    )
    assert policy.delay(4000) == 60.0


# -- item 15: ids and names ---------------------------------------------------------------------


async def test_ids_keys_names_and_queues_follow_one_rule(backend_url: str) -> None:
    cases: list[tuple[str, Call, str]] = []
    for bad, words in BAD_IDS:
        cases += [
            (f"run(workflow_id={bad!r:.30})", _run(workflow_id=bad), f"workflow_id {words}"),
            (f"enqueue(workflow_id={bad!r:.30})", enqueue(workflow_id=bad), f"workflow_id {words}"),
            (
                f"enqueue(idempotency_key={bad!r:.30})",
                enqueue(idempotency_key=bad),
                f"idempotency_key {words}",
            ),
            (f"enqueue(queue={bad!r:.30})", enqueue(queue=bad), f"queue {words}"),
            (
                f"enqueue({bad!r:.30}, served_elsewhere=True)",
                lambda rt, b=bad: rt.enqueue(b, served_elsewhere=True),
                f"the workflow name {words}"
                if isinstance(bad, str)
                else "is not a durable workflow",
            ),
            (f"get_workflow({bad!r:.30})", lambda rt, b=bad: rt.get_workflow(b), words),
            (f"list_steps({bad!r:.30})", lambda rt, b=bad: rt.list_steps(b), words),
            (f"cancel({bad!r:.30})", lambda rt, b=bad: rt.cancel(b), words),
            (f"retry({bad!r:.30})", lambda rt, b=bad: rt.retry(b), words),
            (f"result({bad!r:.30})", lambda rt, b=bad: rt.result(b, timeout=1), words),
            (
                f"set_workflow_enabled({bad!r:.30})",
                lambda rt, b=bad: rt.set_workflow_enabled(b, False),
                f"name {words}",
            ),
        ]
    async with runtime(backend_url) as rt:
        await rt.run(flow, "kept", workflow_id="kept")
        await refused_without_writing(rt, cases)


@durable.workflow(name="tests.bad_input.send.v1", registry=REG)
async def send(to: str, timeout: int = 30, *, queue: str = "smtp-main") -> str:
    return f"{to} {timeout} {queue}"


async def test_arguments_a_workflow_cannot_take_are_refused_at_enqueue(backend_url: str) -> None:
    """``enqueue(add, 1)`` of a decorated ``add(a, b)`` was recorded, and each attempt then
    failed with TypeError, retried for minutes before it was dead-lettered; and a keyword
    argument named like an enqueue option (``timeout=5`` for a workflow's own ``timeout``)
    was taken as the option, the workflow run with its default. Both are refused now, before
    anything is written; the options still work for workflows without such parameters."""
    async with runtime(backend_url) as rt:
        await refused_without_writing(
            rt,
            [
                ("too few", lambda rt: rt.enqueue(send), "missing a required argument: 'to'"),
                ("too many", lambda rt: rt.enqueue(send, "a", 1, 2), "too many positional"),
                ("unknown", lambda rt: rt.enqueue(send, "a", cc="b"), "unexpected keyword"),
                ("run", lambda rt: rt.run(send), "cannot take these arguments"),
                (
                    "client",
                    lambda rt: rt.client.enqueue(send, "a", nope=1),
                    "workflow 'tests.bad_input.send.v1' cannot take these arguments",
                ),
                (
                    "many",
                    lambda rt: rt.enqueue_many(send, [("a",), ("a", 1, 2, 3)]),
                    "inputs[1]: workflow 'tests.bad_input.send.v1' cannot take",
                ),
                (
                    "many, Enqueue",
                    lambda rt: rt.enqueue_many(
                        None, [durable.Enqueue(fn=send, args=("a",), kwargs={"x": 1})]
                    ),
                    "inputs[0]: workflow 'tests.bad_input.send.v1' cannot take these arguments: "
                    "got an unexpected keyword argument 'x'",
                ),
                (
                    "timeout clash",
                    lambda rt: rt.enqueue(send, "a", timeout=5),
                    "timeout: workflow 'tests.bad_input.send.v1' has a parameter of that name",
                ),
                (
                    "queue clash",
                    lambda rt: rt.client.enqueue(send, "a", queue="smtp-backup"),
                    "queue: workflow 'tests.bad_input.send.v1' has a parameter of that name",
                ),
            ],
        )
        ids = [
            await rt.enqueue(send, "ada", 5),  # positionally: the workflow's argument
            (
                await rt.enqueue_many(
                    None, [durable.Enqueue(fn=send, args=("b",), kwargs={"queue": "q"})]
                )
            )[0],
            await rt.enqueue(flow, 1, timeout=60, queue="other"),  # flow has no such parameter
        ]
        inputs = [(await rt.get_workflow(i)).input for i in ids]
        assert inputs[:2] == [
            {"args": ["ada", 5], "kwargs": {}},
            {"args": ["b"], "kwargs": {"queue": "q"}},
        ]
        assert (await rt.get_workflow(ids[2])).queue == "other"
        # a run of an execution that exists drives it, whatever the arguments given
        assert await rt.run(send, workflow_id=ids[0]) == "ada 5 smtp-main"


def _run(**options: Any) -> Call:
    return lambda rt: rt.run(flow, 1, **options)


async def test_an_empty_workflow_id_is_an_error_not_a_random_id(backend_url: str) -> None:
    async with runtime(backend_url) as rt:
        await refused_without_writing(
            rt,
            [
                ("run", _run(workflow_id=""), "workflow_id must not be empty"),
                ("enqueue", enqueue(workflow_id=""), "workflow_id must not be empty"),
            ],
        )
        assert (await rt.list_workflows()).items == []


def test_a_workflow_takes_its_queue_as_a_queue_object_as_enqueue_does() -> None:
    """``enqueue(queue=durable.Queue(...))`` was accepted, ``@durable.workflow(queue=...)``
    refused the same object ("queue must be a str")."""
    emails = durable.Queue("emails", concurrency=2)

    @durable.workflow(queue=emails, registry=durable.Registry())
    async def send() -> None: ...

    assert send.queue == "emails"


@pytest.mark.parametrize(("bad", "words"), BAD_IDS, ids=lambda v: repr(v)[:20])
async def test_decorators_refuse_bad_names_and_queues(bad: Any, words: str) -> None:
    registry = durable.Registry()

    async def fn() -> None: ...

    with pytest.raises(durable.InvalidArgumentError, match=f"^name {words}"):
        durable.workflow(name=bad, registry=registry)(fn)
    with pytest.raises(durable.InvalidArgumentError, match=f"^queue {words}"):
        durable.workflow(queue=bad, registry=registry)(fn)

    with pytest.raises(durable.InvalidArgumentError, match=f"^name {words}"):
        durable.step(name=bad)(fn)
    assert registry.names() == []
    with pytest.raises(durable.InvalidArgumentError, match=f"^queue {words}"):
        await durable.map(echo, [1], queue=bad)
    with pytest.raises(durable.InvalidArgumentError, match=f"^the step name {words}"):
        await durable.run_step(bad, str.upper, "q")
    with pytest.raises(durable.InvalidArgumentError, match=f"^the step name {words}"):
        durable.step_guard(bad)


def test_decorators_refuse_options_of_the_wrong_type() -> None:
    registry = durable.Registry()

    def fn() -> None: ...

    with pytest.raises(durable.InvalidArgumentError, match="max_attempts must be at least 1"):
        durable.workflow(max_attempts=0, registry=registry)(fn)
    with pytest.raises(durable.InvalidArgumentError, match="max_attempts must be an int"):
        durable.workflow(max_attempts=True, registry=registry)(fn)
    with pytest.raises(durable.InvalidArgumentError, match=r"retry must be a durable\.RetryPolicy"):
        durable.workflow(retry=3, registry=registry)(fn)  # type: ignore[arg-type]
    with pytest.raises(durable.InvalidArgumentError, match=r"retry must be a durable\.RetryPolicy"):
        durable.step(retry=3)(fn)  # type: ignore[arg-type]
    with pytest.raises(durable.InvalidArgumentError, match=r"registry must be a durable\.Registry"):
        durable.workflow(registry={})(fn)  # type: ignore[arg-type]
    with pytest.raises(durable.InvalidArgumentError, match=r"write @durable.workflow\(name="):
        durable.workflow("orders.v1")  # type: ignore[call-overload]
    with pytest.raises(durable.InvalidArgumentError, match=r"write @durable.step\(name="):
        durable.step("charge")  # type: ignore[call-overload]

    def deep() -> None: ...

    deep.__qualname__ = "Outer." * 60 + "deep"  # a default name (module:qualname) too long
    with pytest.raises(durable.InvalidArgumentError, match="the workflow name must be at most"):
        durable.workflow(registry=registry)(deep)
    assert registry.names() == []


def test_derived_ids_keep_the_readable_form_when_it_fits_and_are_deterministic() -> None:
    assert derived_id("order-1", "/3") == "order-1/3"
    base = "p" * MAX_ID_LENGTH
    first, again = derived_id(base, "/12"), derived_id(base, "/12")
    assert first == again and len(first) <= MAX_ID_LENGTH
    assert first.startswith("ppp") and first.endswith("/12")
    assert derived_id(base[:-1] + "q", "/12") != first  # another parent, another id
    fits = "f" * (MAX_ID_LENGTH - 2)
    assert derived_id(fits, "/1") == fits + "/1"  # exactly 255: kept as it is
    assert derived_id(fits, "/10") != fits + "/10"


async def test_children_of_a_long_parent_id_get_ids_that_fit(backend_url: str) -> None:
    parent_id = "p" * MAX_ID_LENGTH
    async with runtime(backend_url) as rt:
        result = await rt.run(parent, 7, workflow_id=parent_id)
        steps = await rt.list_steps(parent_id)
        child_id = steps[0].child_workflow_id
        assert child_id == derived_id(parent_id, "/0")
        assert result["queued"] == derived_id(parent_id, "/1")
        for derived in (child_id, result["queued"]):
            assert derived is not None and len(derived) <= MAX_ID_LENGTH
            assert (await rt.get_workflow(derived)).parent_id == parent_id
        assert await rt.result(child_id, timeout=30) == 7

        # a short parent keeps the readable <parent>/<position>
        short = await rt.run(parent, 8, workflow_id="short")
        assert short["queued"] == "short/1"
        assert (await rt.list_steps("short"))[0].child_workflow_id == "short/0"


async def test_enqueueing_a_workflow_with_a_long_name_from_a_workflow(backend_url: str) -> None:
    """The enqueue step's name is ``enqueue:<workflow name>``: made to fit too."""
    async with runtime(backend_url) as rt:
        queued = await rt.run(enqueue_long, 3, workflow_id="el")
        assert queued == "el/0"
        (step,) = await rt.list_steps("el")
        assert len(step.name) <= MAX_ID_LENGTH and step.name.startswith("enqueue:tests.")
        assert (await rt.get_workflow(queued)).name == LONG_NAME


# -- item 16: exceptions that escaped the DurableError tree ---------------------------------------


@pytest.mark.parametrize(
    ("url", "options", "words"),
    [
        ("sqlite://app.db", {}, "write sqlite:///app.db"),
        ("sqlite+aiosqlite://data/app.db", {}, "write sqlite+aiosqlite:///data/app.db"),
        ("sqlite:///app.db", {"pool_size": 5}, "unknown option 'pool_size'"),
        ("sqlite:///app.db", {"auto_migrate": "no"}, "auto_migrate= must be bool"),
        ("sqlite:///app.db", {"engine_options": {"bogus": 1}}, "cannot create the engine"),
        ("sqlite:///app.db", {"sqlite_synchronous": 2}, "sqlite_synchronous= must be str"),
        ("postgres+nodriver://u@h/db", {}, "unsupported database URL"),
        ("mysql+mysqlconnector://u@h/db", {}, "unsupported database URL"),
        (5, {}, "expected a database URL"),
    ],
    ids=lambda v: repr(v)[:30],
)
def test_connect_refuses_bad_urls_and_options(
    url: Any, options: dict[str, Any], words: str
) -> None:
    with pytest.raises(durable.ConfigurationError) as caught:
        durable.connect(url, **options)
    assert words in str(caught.value)


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "postgres+psycopg"])
async def test_postgres_is_accepted_as_an_alias(pg_url: str, scheme: str) -> None:
    url = scheme + "://" + pg_url.split("://", 1)[1]
    backend = durable.connect(url)
    assert isinstance(backend, durable.SQLAlchemyBackend)
    assert backend.url.drivername == "postgresql+psycopg"
    async with runtime(url) as rt:
        assert await rt.run(flow, scheme) == scheme


async def test_lone_surrogates_and_huge_ints(backend_url: str) -> None:
    """A lone surrogate anywhere is refused before anything is written; a huge int in the
    arguments is stored exactly (JSON text), and as a priority it is refused."""
    cases: list[tuple[str, Call, str]] = [
        ("in an id", _run(workflow_id="\ud800"), "workflow_id must be valid Unicode"),
        ("in a key", enqueue(idempotency_key="k\udfff"), "idempotency_key must be valid Unicode"),
        ("in a queue", enqueue(queue="q\ud800"), "queue must be valid Unicode"),
        ("priority=2**70", enqueue(priority=2**70), "priority must be at most"),
    ]
    async with runtime(backend_url) as rt:
        await refused_without_writing(rt, cases)
        await refused_without_writing(
            rt,
            [("in the arguments", lambda rt: rt.run(flow, "\ud800"), "not valid Unicode")],
            error=durable.SerializationError,
        )
        assert await rt.run(flow, 2**70, workflow_id="huge") == 2**70
        assert (await rt.get_workflow("huge")).input == {"args": [2**70], "kwargs": {}}


class BadMessage(Exception):
    """An exception whose ``__str__`` reads an attribute it never got."""

    def __str__(self) -> str:
        return f"code {self.code}"  # type: ignore[attr-defined]


@durable.step(name="tests.bad_input.raises", max_attempts=1)
async def raises(which: str) -> None:
    if which == "bad message":
        raise BadMessage()
    raise ValueError(f"NUL \x00 and \U0001f600 in {which}")


@durable.workflow(name="tests.bad_input.fails.v1", registry=REG, max_attempts=1)
async def fails(which: str, in_step: bool) -> None:
    if in_step:
        await raises(which)
    if which == "bad message":
        raise BadMessage()
    raise ValueError(f"NUL \x00 and \U0001f600 in {which}")


@pytest.mark.parametrize("in_step", [False, True], ids=["workflow", "step"])
async def test_an_error_that_cannot_say_what_it_is_is_still_recorded(
    backend_url: str, in_step: bool
) -> None:
    """A workflow or step that raises an exception whose ``str()`` raises, or whose message holds
    a NUL, ends recorded as failed. The str() that raised left the execution running, run again
    whenever its lease lapsed."""
    async with runtime(backend_url, poll_interval=0.05) as rt:
        await rt.start_worker(poll_interval=0.05)
        broken = await rt.enqueue(fails, "bad message", in_step)
        odd = await rt.enqueue(fails, "odd text", in_step)
        with pytest.raises(durable.WorkflowDeadLetteredError, match="str\\(\\) of this Bad"):
            await rt.result(broken, timeout=30)
        info = await rt.get_workflow(broken)
        assert info.error is not None and info.error.type.endswith("BadMessage")
        assert info.error.message == (
            "<str() of this BadMessage raised AttributeError: "
            "'BadMessage' object has no attribute 'code'>"
        )
        with pytest.raises(durable.WorkflowDeadLetteredError):
            await rt.result(odd, timeout=30)
        info = await rt.get_workflow(odd)
        assert info.error is not None
        assert info.error.message == "NUL \x00 and \U0001f600 in odd text"


class Abort(BaseException):
    """A library's own BaseException (as pytest's Failed or gevent's Timeout are)."""


STOPPERS: dict[str, BaseException] = {
    "cancelled": asyncio.CancelledError("raised, not a cancellation"),
    "generator exit": GeneratorExit("boom"),
    "async keyboard": KeyboardInterrupt("in an async step"),
    "async exit": SystemExit(3),
    "abort": Abort("a BaseException of its own"),
    "group": BaseExceptionGroup("several", [Abort("one"), KeyboardInterrupt("two")]),
}
STOPPER_CALLS: list[str] = []


@durable.step
async def raises_stopper(which: str) -> None:
    STOPPER_CALLS.append(which)
    raise STOPPERS[which]


@durable.step
def exits_in_thread(which: str) -> None:
    STOPPER_CALLS.append(which)
    if which == "thread abort":
        raise Abort(which)
    if which == "thread generator exit":
        raise GeneratorExit(which)
    if which == "thread cancelled":
        raise asyncio.CancelledError(which)
    raise KeyboardInterrupt(which) if which == "keyboard" else SystemExit(3)


@durable.workflow(name="tests.bad_input.stopper.v1", registry=REG, max_attempts=1)
async def stopper(which: str, in_step: bool) -> None:
    if which.startswith("thread ") or which in ("keyboard", "exit"):
        await exits_in_thread.aio(which)
    elif in_step:
        await raises_stopper(which)
    else:
        STOPPER_CALLS.append(which)
        raise STOPPERS[which]


@pytest.mark.parametrize(
    ("which", "in_step"),
    [
        ("cancelled", True),
        ("cancelled", False),
        ("generator exit", True),
        ("keyboard", True),
        ("exit", True),
        ("thread abort", True),
        ("thread generator exit", True),
        ("thread cancelled", True),
        ("async keyboard", True),
        ("async exit", True),
        ("abort", True),
        ("abort", False),
        ("group", True),
        ("group", False),
    ],
)
async def test_code_that_raises_a_stop_of_its_own_fails_once(
    sqlite_url: str, which: str, in_step: bool
) -> None:
    """A CancelledError that nothing cancelled was taken for a shutdown: the execution was
    handed back and claimed again at once, its step run thousands of times a second; a
    GeneratorExit left it running for good; a KeyboardInterrupt or SystemExit from a step's
    thread stopped the runtime's event loop. Each is now the code's failure. So are, since,
    the same from an async step (they stopped the event loop: ``sys.exit()`` in an async step
    ended every worker process that took the execution over) and any other BaseException
    that is no Exception (the execution was left running, nothing recorded, its step run
    again after each lease until it was dead-lettered for its recoveries)."""
    STOPPER_CALLS.clear()
    async with runtime(sqlite_url, poll_interval=0.05) as rt:
        await rt.start_worker(poll_interval=0.05)
        wid = await rt.enqueue(stopper, which, in_step)
        with pytest.raises(durable.WorkflowDeadLetteredError, match="raised by workflow code"):
            await rt.result(wid, timeout=30)
        info = await rt.get_workflow(wid)
        assert info.error is not None and info.error.type == "durable.errors.RaisedToStopError"
        await asyncio.sleep(0.3)  # a loop would have run it again by now
        assert [which] == STOPPER_CALLS
        assert await rt.run(echo_back, 7) == 7  # the runtime still runs workflows


@durable.step(max_attempts=2)
def first_item(items: list[int]) -> int:
    STOPPER_CALLS.append("first_item")
    return next(iter(items))


@durable.workflow(name="tests.bad_input.first_of.v1", registry=REG, max_attempts=1)
async def first_of(items: list[int]) -> int:
    return await first_item.aio(items)


@durable.workflow(name="tests.bad_input.first_of_sync.v1", registry=REG, max_attempts=1)
def first_of_sync(items: list[int]) -> int:
    return next(iter(items))


@durable.workflow(name="tests.bad_input.stops_sync.v1", registry=REG, max_attempts=1)
def stops_sync(which: str) -> None:
    raise GeneratorExit(which) if which == "generator exit" else asyncio.CancelledError(which)


async def test_stop_iteration_from_sync_code_is_a_failure(sqlite_url: str) -> None:
    """asyncio cannot pass a StopIteration through a future: a sync step or sync workflow
    that raised one (``next()`` of an empty iterator) never ended, holding its worker's slot
    and its lease for good. It is raised as a RuntimeError, as Python does for a coroutine."""
    STOPPER_CALLS.clear()
    async with runtime(sqlite_url) as rt:
        for wf in (first_of, first_of_sync):
            wid = f"{wf.name}-empty"
            with pytest.raises(RuntimeError, match="raised StopIteration"):
                await asyncio.wait_for(rt.run(wf, [], workflow_id=wid), 30)
            info = await rt.get_workflow(wid)
            assert info.error is not None and "raised StopIteration" in info.error.message
        assert STOPPER_CALLS == ["first_item", "first_item"]  # the step's retry ran
        assert await rt.run(first_of, [5]) == 5


@pytest.mark.parametrize("which", ["generator exit", "cancelled"])
async def test_a_sync_workflow_that_raises_a_stop_of_its_own_fails(
    sqlite_url: str, which: str
) -> None:
    """It was recorded as "RuntimeError: no running event loop" (the check for a cancelled
    task ran in the workflow's thread)."""
    async with runtime(sqlite_url) as rt:
        wid = f"stops-{which}"
        with pytest.raises(durable.DurableError, match="raised by workflow code"):
            await asyncio.wait_for(rt.run(stops_sync, which, workflow_id=wid), 30)
        info = await rt.get_workflow(wid)
        assert info.error is not None and info.error.type == "durable.errors.RaisedToStopError"


@durable.workflow(name="tests.bad_input.echo_back.v1", registry=REG)
async def echo_back(x: int) -> int:
    return x


def test_a_value_nested_too_deeply_is_a_serialization_error() -> None:
    from durable.serialization import JSONSerializer

    serializer = JSONSerializer()
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(durable.SerializationError, match="nested deeper"):
        serializer.dumps(deep)
    text = "[" * 900 + "]" * 900  # written near the stack's top, read far below it

    def read_deep_down(n: int) -> Any:
        return serializer.loads(text) if n == 0 else read_deep_down(n - 1)

    assert serializer.loads(text) == read_deep_down(400)


async def test_wrong_types_to_public_apis_are_invalid_arguments(backend_url: str) -> None:
    cases: list[tuple[str, Call, str]] = [
        ("run(42)", lambda rt: rt.run(42), "is not a durable workflow"),
        ("list_workflows(limit=0)", lambda rt: rt.list_workflows(limit=0), "limit must be"),
        ("list_workflows(limit='5')", lambda rt: rt.list_workflows(limit="5"), "must be an int"),
        ("list_workflows(name='')", lambda rt: rt.list_workflows(name=""), "name must not be"),
        ("list_workflows(cursor=3)", lambda rt: rt.list_workflows(cursor=3), "cursor must be"),
        ("list_workflows(status=5)", lambda rt: rt.list_workflows(status=5), "status must be"),
        ("get_queue(5)", lambda rt: rt.client.get_queue(5), "name must be a str"),
        ("get_queue('')", lambda rt: rt.client.get_queue(""), "name must not be"),
        ("delete_queue(5)", lambda rt: rt.client.delete_queue(5), "name must be a str"),
        ("delete_queue('a\\x00')", lambda rt: rt.client.delete_queue("a\x00"), "NUL"),
        ("delete_queue('x'*300)", lambda rt: rt.client.delete_queue("x" * 300), "at most"),
        (
            "update_queue(rate_limit=(1, 2e9))",
            lambda rt: rt.client.update_queue("q", rate_limit=(1, 2e9)),
            "below 1000000000 (about 31 years)",
        ),
        (
            "update_queue(rate_limit=(1, 10**400))",  # an OverflowError turning it to a float
            lambda rt: rt.client.update_queue("q", rate_limit=(1, 10**400)),
            "below 1000000000 (about 31 years)",
        ),
        ("list_executors(nan)", lambda rt: rt.list_executors(stale_after=math.nan), "finite"),
        ("recover(limit=0)", lambda rt: rt.recover(limit=0), "limit must be at least 1"),
        (
            "set_workflow_enabled(enabled='no')",
            lambda rt: rt.set_workflow_enabled(flow.name, "no"),
            "enabled must be True or False",
        ),
    ]
    async with runtime(backend_url) as rt:
        await refused_without_writing(rt, cases)


# -- item 17: reused ids and idempotency keys -----------------------------------------------------


async def test_an_idempotency_key_of_another_workflow_is_named_in_the_error(
    backend_url: str,
) -> None:
    async with runtime(backend_url) as rt:
        first = await rt.enqueue(flow, 1, idempotency_key="order-42")
        await refused_without_writing(
            rt,
            [
                (
                    "another workflow",
                    lambda rt: rt.enqueue(other, 1, idempotency_key="order-42"),
                    f"idempotency key 'order-42' is already used by an execution of workflow "
                    f"'tests.bad_input.flow.v1' (id {first!r}), not of 'tests.bad_input.other.v1'",
                )
            ],
        )
        # the same workflow: the existing execution, whatever the arguments
        assert await rt.enqueue(flow, 2, idempotency_key="order-42") == first
        assert (await rt.get_workflow(first)).input == {"args": [1], "kwargs": {}}


async def test_a_reused_workflow_id_returns_the_first_result_whatever_the_arguments(
    backend_url: str,
) -> None:
    """The documented idempotency contract: the id identifies the call, its arguments are not
    compared."""
    async with runtime(backend_url) as rt:
        assert await rt.run(flow, "first", workflow_id="once") == "first"
        assert await rt.run(flow, "second", workflow_id="once") == "first"
        assert await rt.enqueue(flow, "third", workflow_id="once") == "once"
        assert (await rt.get_workflow("once")).input == {"args": ["first"], "kwargs": {}}


@pytest.mark.parametrize("kind", ["sqlite_url", pytest.param("pg_url", marks=pytest.mark.postgres)])
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["workflows", "get", "{url}", "\udcff"], "WORKFLOW_ID must be valid Unicode"),
        (["workflows", "steps", "{url}", ""], "WORKFLOW_ID must not be empty"),
        (["workflows", "cancel", "{url}", "a\x00"], "WORKFLOW_ID must not contain NUL"),
        (["workflows", "retry", "{url}", LONG], "WORKFLOW_ID must be at most 255"),
        (["workflows", "list", "{url}", "--name", "\udcff"], "--name must be valid Unicode"),
    ],
    ids=["get", "steps", "cancel", "retry", "list"],
)
def test_the_cli_checks_ids_as_the_api_does(
    request: pytest.FixtureRequest, kind: str, args: list[str], words: str
) -> None:
    """A command-line argument can hold a lone surrogate (undecodable bytes in argv): a usage
    error, not a traceback from the driver."""
    from click.testing import CliRunner

    from durable.cli import main

    url = str(request.getfixturevalue(kind))
    assert CliRunner().invoke(main, ["migrate", url]).exit_code == 0
    result = CliRunner().invoke(main, [a.replace("{url}", url) for a in args])
    assert result.exit_code == 2, result.output
    assert words in result.output
