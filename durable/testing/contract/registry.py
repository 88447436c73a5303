"""The workflow registry (names served, enabled or not, which claims obey) and executors (starts,
heartbeats, staleness, incarnations)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from functools import partial

import pytest

from durable.backends.base import PersistentBackend
from durable.errors import (
    InvalidArgumentError,
    UnknownWorkflowError,
)
from durable.models import (
    STALE_AFTER_HEARTBEATS,
    RegisteredWorkflow,
)
from durable.testing.contract._support import (
    EXPIRED,
    LONG,
    SHORT,
    ContractBase,
    W,
    assert_aware,
    assert_between,
    create,
    ids_of,
    now,
    start_executor,
)


class RegistryContract(ContractBase):
    """The workflow registry (names served, enabled or not, which claims obey) and executors
    (starts, heartbeats, staleness, incarnations)."""

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
