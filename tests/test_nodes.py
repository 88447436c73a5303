"""The persisted workflow registry and executor heartbeats, on every backend."""

from __future__ import annotations

import asyncio
from datetime import timedelta

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


async def test_executors_record_heartbeats_and_stale_ones_are_detected(backend_url: str) -> None:
    backend = durable.connect(backend_url)
    async with durable.Runtime(backend, recover=False, executor_id="node-1") as rt:
        await backend.record_executor_heartbeat("node-dead", hostname="h2", pid=42)
        await asyncio.sleep(0.3)
        await backend.record_executor_heartbeat("node-1", hostname="h1", pid=1)
        found = {e.id: e for e in await rt.list_executors(stale_after=0.2)}
        assert not found["node-1"].stale and found["node-1"].stopped_at is None
        assert found["node-dead"].stale
        assert found["node-dead"].heartbeat_at < found["node-1"].heartbeat_at
        await backend.mark_executor_stopped("node-dead")
        found = {e.id: e for e in await backend.list_executors(stale_after=timedelta(seconds=0.2))}
        assert found["node-dead"].stopped_at is not None and not found["node-dead"].stale
    # closing the runtime marks it stopped
    async with durable.connect(backend_url) as again:
        if isinstance(again, durable.InMemoryBackend):
            return  # a new in-memory backend starts empty
        found = {e.id: e for e in await again.list_executors(stale_after=timedelta(seconds=60))}
        assert found["node-1"].stopped_at is not None


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
