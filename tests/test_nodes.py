"""The persisted workflow registry and executor heartbeats, on every backend."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from datetime import UTC, datetime, timedelta

import pytest

import durable


@durable.workflow(name="tests.nodes.ping.v1")
async def ping(x: int) -> int:
    return x


async def test_registry_is_shared_and_keeps_the_operators_choice(backend_url: str) -> None:
    backend = durable.connect(backend_url)
    async with durable.Runtime(backend, recover=False) as rt:
        names = {w.name: w for w in await rt.registered_workflows()}
        assert names[ping.name].enabled
        disabled = await rt.set_workflow_enabled(ping.name, False)
        assert not disabled.enabled
        # a runtime starting again re-registers its names but keeps them disabled
        await backend.register_workflows([durable.RegisteredWorkflow(name=ping.name)])
        names = {w.name: w for w in await rt.registered_workflows()}
        assert not names[ping.name].enabled
        with pytest.raises(durable.UnknownWorkflowError):
            await rt.set_workflow_enabled("never.registered.v1", True)


async def test_a_name_disabled_in_the_database_is_not_claimed(backend_url: str) -> None:
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        await rt.set_workflow_enabled(ping.name, False)
        worker = await rt.start_worker(concurrency=2, poll_interval=0.05)
        wid = await rt.enqueue(ping, 7)
        await asyncio.sleep(0.4)
        assert (await rt.get_workflow(wid)).status is durable.WorkflowStatus.PENDING
        await rt.set_workflow_enabled(ping.name, True)
        assert await rt.result(wid, timeout=10) == 7
        await worker.stop()


async def test_a_producer_may_enqueue_names_registered_by_any_runtime(backend_url: str) -> None:
    backend = durable.connect(backend_url)
    async with durable.Runtime(backend, recover=False, registry=durable.Registry()) as producer:
        with pytest.raises(durable.UnknownWorkflowError):
            await producer.enqueue("content.thumbnail.v1", {"id": "c1"})
        await backend.register_workflows([durable.RegisteredWorkflow(name="content.thumbnail.v1")])
        wid = await producer.enqueue("content.thumbnail.v1", {"id": "c1"})
        info = await producer.get_workflow(wid)
        assert info.name == "content.thumbnail.v1"
        assert info.input == {"args": [{"id": "c1"}], "kwargs": {}}
        other = await producer.enqueue("elsewhere.v1", 1, served_elsewhere=True)
        assert (await producer.get_workflow(other)).status is durable.WorkflowStatus.PENDING


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def test_executors_record_heartbeats_and_stale_ones_are_detected(backend_url: str) -> None:
    """Each executor is judged by its own heartbeat interval. Time passes on a fake clock in
    memory, for real (waited for, never bounded) on SQL backends; nothing here fails when the
    machine is slow: the runtime beats every 10 s, so it is fresh for 30 s after a heartbeat."""
    fake = FakeClock(datetime(2030, 1, 1, 12, 0, tzinfo=UTC))
    memory = backend_url == "memory://"
    backend = durable.InMemoryBackend(clock=fake) if memory else durable.connect(backend_url)

    async def until_stale(executor_id: str, silence: timedelta) -> None:
        if memory:
            fake.now += silence
        deadline = time.monotonic() + 60  # a safety net: SQL backends wait for real time
        while not ((found := await backend.get_executor(executor_id)) and found.stale):
            assert time.monotonic() < deadline, f"{executor_id} never became stale"
            await asyncio.sleep(0.01)

    async with durable.Runtime(backend, recover=False, executor_id="node-1", claim_ttl=30) as rt:
        me = await backend.get_executor("node-1")
        assert me is not None
        assert (me.hostname, me.pid, me.heartbeat_interval) == (
            socket.gethostname(),
            os.getpid(),
            10,
        )
        assert me.incarnation and me.stopped_at is None and not me.stale
        # another executor, beating every 10 ms, silent since it started
        assert await backend.start_executor(
            "node-dead",
            hostname="h2",
            pid=42,
            incarnation="i-dead",
            heartbeat_interval=0.01,
            replacing=None,
        )
        await until_stale("node-dead", timedelta(seconds=1))
        await rt._node_heartbeat()
        found = await rt.list_executors()
        assert [e.id for e in found] == ["node-1", "node-dead"]  # the latest heartbeat first
        assert not found[0].stale and found[1].stale
        assert found[0].heartbeat_at > me.heartbeat_at and found[0].started_at == me.started_at
        # a threshold the caller gives applies to every executor instead
        assert [e.stale for e in await rt.list_executors(stale_after=3600)] == [False, False]
        await backend.mark_executor_stopped("node-dead", incarnation="i-dead")
        dead = {e.id: e for e in await rt.list_executors()}["node-dead"]
        assert dead.stopped_at is not None and not dead.stale
        if memory:  # 31 s without a heartbeat: more than 3 of node-1's own intervals
            fake.now += timedelta(seconds=31)
            assert [e.stale for e in await rt.list_executors()] == [True, False]
            await rt._node_heartbeat()
            assert [e.stale for e in await rt.list_executors()] == [False, False]
    # closing the runtime marks it stopped
    async with backend if memory else durable.connect(backend_url) as again:
        stopped = await again.get_executor("node-1")
        assert stopped is not None and stopped.stopped_at is not None and not stopped.stale


@pytest.mark.postgres
async def test_postgres_notify_wakes_a_waiter_of_another_backend(pg_url: str) -> None:
    """LISTEN/NOTIFY: work committed through one backend (as by another process) wakes a worker
    waiting on another at once, long before its poll timeout."""
    async with durable.connect(pg_url) as waiting, durable.connect(pg_url) as producing:
        await waiting.wait_for_work(0.5)  # starts listening; absorbs the catch-up wake-up
        await waiting.wait_for_work(0.5)
        loop = asyncio.get_running_loop()
        waiter = asyncio.create_task(waiting.wait_for_work(30))
        await asyncio.sleep(0.2)
        started = loop.time()
        await producing.create_workflow(
            durable.WorkflowSnapshot(id="n-1", name="n"),
            task=durable.TaskSpec(instance_id="n-1", name="n"),
        )
        await asyncio.wait_for(waiter, 10)
        assert loop.time() - started < 5  # woken by the notification, not the 30 s timeout
