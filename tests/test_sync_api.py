"""The blocking API from many threads: ``with runtime:`` is reference-counted and thread-safe,
``start_sync``/``close_sync`` start a runtime once per process, and no call ever hangs: a call
after close, or one interrupted by the close, raises ``DurableError``.

Every thread here is a daemon joined with a timeout, so a hang fails the test instead of hanging
the suite.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

import durable

WAIT = 60.0  # a safety net for anything a test waits for, never reached when green

gate = threading.Event()  # blocked() returns once it is set
entered = threading.Event()  # set when blocked() starts


@pytest.fixture(autouse=True)
def _reset() -> None:
    global gate, entered
    gate, entered = threading.Event(), threading.Event()


@durable.step(name="tests.sync_api.double")
def double(x: int) -> int:
    return 2 * x


@durable.workflow(name="tests.sync_api.twice.v1")
def twice(x: int) -> int:
    return double(x) + 1


@durable.step(name="tests.sync_api.blocked")
async def blocked() -> str:
    entered.set()
    # a threading.Event (the test sets it from its own thread), polled so that the wait stays
    # cancellable: the runtime may close while it waits
    while not gate.is_set():  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    return "released"


@durable.workflow(name="tests.sync_api.waits.v1")
async def waits() -> str:
    return await blocked()


RUNTIMES: list[durable.Runtime] = []  # the runtime reenters() uses


@durable.workflow(name="tests.sync_api.reenters.v1")
async def reenters(how: str) -> str:
    rt = RUNTIMES[0]
    if how == "enter":
        with rt:
            return "entered"
    rt.close_sync()
    return "closed"


def in_threads(*targets: Callable[[], Any], timeout: float = WAIT) -> list[Any]:
    """Run each target in its own daemon thread at once; return what each returned or raised.
    A thread still running after ``timeout`` seconds fails the test."""
    outcomes: list[Any] = [None] * len(targets)

    def run(i: int, target: Callable[[], Any]) -> None:
        try:
            outcomes[i] = target()
        except BaseException as exc:
            outcomes[i] = exc

    threads = [
        threading.Thread(target=run, args=(i, t), daemon=True, name=f"caller-{i}")
        for i, t in enumerate(targets)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    hung = [t.name for t in threads if t.is_alive()]
    if hung:
        pytest.fail(f"{hung} did not finish within {timeout} s")
    return outcomes


def not_started(rt: durable.Runtime) -> None:
    with pytest.raises(durable.DurableError, match=r"not started|closed"):
        rt.run_sync(twice, 1)


@durable.workflow(name="tests.sync_api.child.v1")
def child_of_twice(x: int) -> int:
    return double(x)


@durable.workflow(name="tests.sync_api.parent.v1")
def parent_of_two(x: int) -> int:
    return child_of_twice(x) + child_of_twice(x + 10)


def test_as_many_sync_parents_as_threads_run_their_sync_children(sqlite_url: str) -> None:
    """Each sync parent held a thread of the runtime's pool while it waited for its child,
    whose body needed one of the same pool: as many parents as ``max_threads`` at once
    (64 request threads by default, or a worker's concurrency) and none ever finished."""
    rt = durable.Runtime(durable.connect(sqlite_url), max_threads=2, recover=False)
    with rt:
        done = in_threads(
            *(lambda i=i: rt.run_sync(parent_of_two, i, workflow_id=f"p-{i}") for i in range(6)),
            timeout=30,
        )
    assert done == [(2 * i) + (2 * (i + 10)) for i in range(6)]


def test_a_sync_body_refused_a_thread_at_shutdown_is_handed_back_not_failed(
    sqlite_url: str,
) -> None:
    """At interpreter exit (the README's ``atexit.register(runtime.close_sync)``: Python shuts
    thread pools down before it runs ``atexit``), a worker still claiming got "cannot schedule
    new futures after shutdown" for the next sync body, recorded as the workflow's failed
    attempt: dead-lettered with ``max_attempts=1``, though its code never ran."""
    rt = durable.Runtime(durable.connect(sqlite_url), recover=False)
    with rt:
        assert rt._body_threads is not None
        rt._body_threads.shutdown()  # as the interpreter's exit does
        wid = rt.client.enqueue_sync(twice, 1, max_attempts=1)
        rt.start_worker_sync(concurrency=1, poll_interval=0.05)
        deadline = time.monotonic() + WAIT
        while rt.client.get_workflow_sync(wid).started_at is None:  # an attempt began
            assert time.monotonic() < deadline, "the worker never began it"
            time.sleep(0.05)
        time.sleep(0.3)
        info = rt.client.get_workflow_sync(wid)
        steps = rt.client.list_steps_sync(wid)
    assert info.status is durable.WorkflowStatus.PENDING and info.error is None
    assert steps == []  # its body never ran


def test_request_threads_each_entering_the_runtime(backend_url: str) -> None:
    rt = durable.Runtime(durable.connect(backend_url), recover=False)
    inside = threading.Barrier(8, timeout=WAIT)  # all 8 are inside `with` at the same time

    def request(n: int) -> int:
        with rt:
            result = rt.run_sync(twice, n, workflow_id=f"req-{n}")
            inside.wait()
            return result

    outcomes = in_threads(*(lambda n=n: request(n) for n in range(8)))
    assert outcomes == [2 * n + 1 for n in range(8)]
    not_started(rt)  # the last one out closed it


def test_threads_entering_and_leaving_over_and_over(sqlite_url: str) -> None:
    rt = durable.Runtime(durable.connect(sqlite_url), recover=False)

    def requests(n: int) -> list[int]:
        out = []
        for i in range(5):
            with rt:
                out.append(rt.run_sync(twice, n, workflow_id=f"req-{n}-{i}"))
        return out

    outcomes = in_threads(*(lambda n=n: requests(n) for n in range(8)))
    assert outcomes == [[2 * n + 1] * 5 for n in range(8)]
    not_started(rt)


def test_nested_enters_close_on_the_last_exit(sqlite_url: str) -> None:
    rt = durable.Runtime(durable.connect(sqlite_url), recover=False)
    with rt:
        with rt:
            assert rt.run_sync(twice, 1) == 3
        assert rt.run_sync(twice, 2) == 5  # still started after the inner exit
    not_started(rt)
    with rt:  # and it starts again
        assert rt.run_sync(twice, 3) == 7
    not_started(rt)


def test_entering_from_a_thread_while_another_exits(sqlite_url: str) -> None:
    rt = durable.Runtime(durable.connect(sqlite_url), recover=False)
    closing, second_entering = threading.Event(), threading.Event()
    close = rt.close

    async def slow_close() -> None:
        closing.set()
        await asyncio.to_thread(second_entering.wait, WAIT)  # the other thread is on its way in
        await close()

    rt.close = slow_close  # type: ignore[method-assign]

    def first() -> int:
        with rt:
            return rt.run_sync(twice, 1, workflow_id="first")

    def second() -> int:
        closing.wait(WAIT)
        second_entering.set()
        with rt:
            return rt.run_sync(twice, 2, workflow_id="second")

    assert in_threads(first, second) == [3, 5]
    not_started(rt)


def test_calls_after_close_raise_a_clear_error_from_any_thread(sqlite_url: str) -> None:
    rt = durable.Runtime(durable.connect(sqlite_url), recover=False)
    not_started(rt)  # before the first start too
    with rt:
        assert rt.run_sync(twice, 1) == 3
    not_started(rt)
    [error] = in_threads(lambda: rt.run_sync(twice, 1))
    assert isinstance(error, durable.DurableError)
    assert "not started" in str(error)
    rt.close_sync()  # more closes than starts: ignored
    not_started(rt)


def test_start_once_per_process_and_call_from_request_threads(backend_url: str) -> None:
    rt = durable.Runtime(durable.connect(backend_url), recover=False)
    rt.start_sync()  # at app start
    try:
        outcomes = in_threads(*(lambda n=n: rt.run_sync(twice, n) for n in range(8)))
        assert outcomes == [2 * n + 1 for n in range(8)]
        with rt:  # a request that also enters does not close it on exit
            assert rt.run_sync(twice, 10) == 21
        assert rt.run_sync(twice, 11) == 23
    finally:
        rt.close_sync()  # at shutdown
    not_started(rt)


def test_a_sync_app_runs_its_enqueued_work_with_a_worker_started_from_sync_code(
    sqlite_url: str,
) -> None:
    """A Flask- or Django-style process: start the runtime, start a worker, enqueue from request
    threads, and wait for results, all from sync code (there was no start_worker_sync: a sync
    app had to reach for the portal's blocking() to start one)."""
    rt = durable.Runtime(durable.connect(sqlite_url), recover=False)
    rt.start_sync()
    try:
        worker = rt.start_worker_sync(concurrency=4, names=["tests.sync_api.twice.v1"])
        ids = in_threads(*(lambda n=n: rt.client.enqueue_sync(twice, n) for n in range(6)))
        assert [rt.client.result_sync(wid, timeout=WAIT) for wid in ids] == [
            2 * n + 1 for n in range(6)
        ]
        assert worker.names[0] == "tests.sync_api.twice.v1"
        with pytest.raises(durable.InvalidArgumentError, match="concurrency"):
            rt.start_worker_sync(concurrency=0)
    finally:
        rt.close_sync()
    with pytest.raises(durable.DurableError):
        rt.start_worker_sync()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_run_sync_beside_a_worker_of_the_same_runtime_logs_no_lost_lease(
    kind: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    """Request threads call ``run_sync`` while the same runtime's worker claims work: a worker
    claim that took a run's task and started it, whose start the run's drive took and ran to its
    end, was then run by the worker too, refused, and logged as "lost its lease (another executor
    may run it)" though no other executor existed (about one run in twenty)."""
    url = str(request.getfixturevalue("sqlite_url" if kind == "sqlite" else "pg_url"))
    rt = durable.Runtime(durable.connect(url), recover=False)
    rt.start_sync()
    try:
        rt.start_worker_sync(concurrency=8)
        with caplog.at_level(logging.WARNING, logger="durable"):
            outcomes = in_threads(
                *(
                    lambda t=t: [rt.run_sync(twice, 100 * t + n) for n in range(40)]
                    for t in range(16)
                )
            )
    finally:
        rt.close_sync()
    assert outcomes == [[2 * (100 * t + n) + 1 for n in range(40)] for t in range(16)]
    lost = [
        r.getMessage() for r in caplog.records if getattr(r, "action", "") == "worker.lease_lost"
    ]
    assert lost == []


def test_closing_interrupts_calls_still_running_in_other_threads(sqlite_url: str) -> None:
    rt = durable.Runtime(durable.connect(sqlite_url), recover=False)
    rt.start_sync()
    outcome: list[Any] = []
    caller = threading.Thread(
        target=lambda: outcome.append(_raised(lambda: rt.run_sync(waits, workflow_id="w"))),
        daemon=True,
    )
    caller.start()
    assert entered.wait(WAIT)
    rt.close_sync()  # the last close: the call in flight is interrupted, not left hanging
    caller.join(WAIT)
    assert not caller.is_alive(), "the interrupted call hangs"
    [error] = outcome
    assert isinstance(error, durable.DurableError)
    assert "closed while this call was running" in str(error)

    gate.set()
    with rt:  # the interrupted execution was handed back: it resumes and finishes
        info = rt.blocking(rt.get_workflow("w"))
        assert (info.status, info.attempts) == (durable.WorkflowStatus.PENDING, 0)
        assert rt.run_sync(waits, workflow_id="w") == "released"


def test_async_started_runtime_serves_other_threads_and_refuses_with(sqlite_url: str) -> None:
    async def main() -> None:
        async with durable.Runtime(durable.connect(sqlite_url), recover=False) as rt:
            assert await asyncio.to_thread(rt.run_sync, twice, 4) == 9
            error = await asyncio.to_thread(_raised, rt.start_sync)
            assert isinstance(error, durable.DurableError)
            assert "started by async code" in str(error)
            with pytest.raises(durable.DurableError, match="event loop"):
                rt.run_sync(twice, 4)  # on the loop's own thread it would block the loop

    asyncio.run(main())


def test_a_failed_start_leaves_nothing_running(tmp_path: Any) -> None:
    rt = durable.Runtime(durable.connect(f"sqlite:///{tmp_path}/missing-dir/x.db"), recover=False)
    before = threading.active_count()
    with pytest.raises(durable.DurableError):
        rt.start_sync()
    assert threading.active_count() == before  # the portal's thread is gone
    not_started(rt)


def _raised(fn: Callable[[], Any]) -> BaseException | None:
    try:
        fn()
    except BaseException as exc:
        return exc
    return None


APP = """
import atexit, sys
import durable

@durable.workflow(name="app.hello.v1")
def hello(name):
    return f"hello {name}"

runtime = durable.Runtime(durable.connect(sys.argv[1]), executor_id="web-1", recover=False)
runtime.start_sync()                   # at app start
atexit.register(runtime.close_sync)    # at shutdown
print(runtime.run_sync(hello, "you"))
"""


@pytest.mark.slow
def test_start_once_and_close_at_exit_in_a_real_process(sqlite_url: str, tmp_path: Any) -> None:
    script = tmp_path / "app.py"
    script.write_text(APP, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script), sqlite_url],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "hello you\n", "")

    async def executors() -> list[durable.ExecutorInfo]:
        async with durable.connect(sqlite_url) as backend:
            return await backend.list_executors(stale_after=timedelta(minutes=1))

    [web] = asyncio.run(executors())
    assert web.id == "web-1" and web.stopped_at is not None  # closed cleanly at exit


def test_async_code_on_the_runtimes_own_loop_cannot_start_or_close_it(sqlite_url: str) -> None:
    rt = durable.Runtime(durable.connect(sqlite_url), recover=False)
    RUNTIMES[:] = [rt]
    with rt:
        for how in ("enter", "close"):  # either would wait for the loop it runs on
            with pytest.raises(durable.DurableError, match="runtime's own event loop"):
                rt.run_sync(reenters, how)
        assert rt.run_sync(twice, 1) == 3  # still started
    not_started(rt)


def test_every_client_operation_has_a_sync_twin() -> None:
    """What the Client's docstring promises: each public coroutine method has a ``_sync``
    twin (queue_depths had none); an async iterator has none, and says what pages instead."""
    import inspect

    missing = [
        name
        for name, member in inspect.getmembers(durable.Client, inspect.iscoroutinefunction)
        if not name.startswith("_")
        and not name.endswith("_sync")
        # start_sync / close_sync; pause is the waits' own plumbing, not an operation
        and name not in ("start", "close", "pause")
        and not hasattr(durable.Client, f"{name}_sync")
    ]
    assert missing == []
    assert not hasattr(durable.Client, "follow_events_sync")
    assert hasattr(durable.Client, "events_sync")
