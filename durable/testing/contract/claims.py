"""Tasks, claims, leases and fencing: add, claim, extend, release, complete, expiry and takeover,
finding and batch-claiming available work."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from durable.backends.base import PersistentBackend
from durable.errors import (
    ClaimLostError,
    InvalidArgumentError,
    TaskNotFoundError,
)
from durable.models import (
    AvailableTask,
    TaskSpec,
    WorkflowStatus,
)
from durable.testing.contract._support import (
    EXPIRED,
    LONG,
    SHORT,
    Call,
    ContractBase,
    W,
    assert_aware,
    assert_between,
    create,
    ids_of,
    keys_of,
    now,
    observe_within,
    running,
    step,
)


class ClaimContract(ContractBase):
    """Tasks, claims, leases and fencing: add, claim, extend, release, complete, expiry and
    takeover, finding and batch-claiming available work."""

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

    async def test_a_claim_taken_over_and_let_expire_is_not_renewed_by_its_old_holder(
        self, backend: PersistentBackend
    ) -> None:
        """A lapsed claim may be renewed by its holder only while nobody took it over: once
        another worker has claimed the task, the old holder's renewal is refused even after
        that claim lapsed in turn (its holder may have recorded steps meanwhile)."""
        await create(backend, "wf")
        assert await backend.claim_task("wf", W, "w1", SHORT) is not None
        await asyncio.sleep(EXPIRED)
        assert await backend.claim_task("wf", W, "w2", SHORT) is not None
        await asyncio.sleep(EXPIRED)
        with pytest.raises(ClaimLostError):
            await backend.extend_task_claim("wf", W, "w1", LONG)
        with pytest.raises(ClaimLostError):
            await backend.record_step("wf", step(0), worker_id="w1")

    async def test_claim_and_begin_claims_as_a_claim_and_begins_as_a_begin(
        self, backend: PersistentBackend
    ) -> None:
        """:meth:`claim_and_begin_tasks` takes what :meth:`claim_available_tasks` would (not a
        task another worker holds, not one not due yet, not its own), and each claim it pairs
        with a snapshot is begun as :meth:`begin_execution` would: running under the worker,
        its attempt counted, the snapshot the stored one."""
        await create(backend, "free", input=[1])
        await create(backend, "held")
        await create(backend, "mine")
        await create(backend, "later", run_after=now() + timedelta(hours=1))
        assert await backend.claim_task("held", W, "w2", LONG) is not None
        assert await backend.claim_task("mine", W, "w1", LONG) is not None
        pairs = await backend.claim_and_begin_tasks("w1", 10, LONG)
        assert [claim.instance_id for claim, _ in pairs] == ["free"]
        [(claim, snapshot)] = pairs
        assert claim.worker_id == "w1" and claim.task_id == W and claim.attempts == 1
        task = await backend.get_task("free", W)
        assert task.claimed_by == "w1"
        if snapshot is None:  # only claimed: its caller begins it
            snapshot = await backend.begin_execution("free", "w1")
        assert snapshot.status is WorkflowStatus.RUNNING
        assert snapshot.executor_id == "w1" and snapshot.attempts == 1
        assert snapshot.input == [1] and not snapshot.steps
        assert snapshot == await backend.load_snapshot("free")
        assert await backend.claim_and_begin_tasks("w2", 10, LONG) == []
        with pytest.raises(InvalidArgumentError):
            await backend.claim_and_begin_tasks("w1", 0, LONG)

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

    async def test_the_claim_order_follows_moved_and_added_tasks(
        self, backend: PersistentBackend
    ) -> None:
        """Claims take tasks by priority, due time and creation as they are at the claim: a
        task rescheduled after an earlier claim goes behind the tasks now due before it, and a
        task added meanwhile takes its place in the order."""
        t0 = now() - timedelta(hours=1)
        for minutes, instance_id in enumerate(("first", "second", "third")):
            await create(backend, instance_id, run_after=t0 + timedelta(minutes=minutes))
        assert ids_of(await backend.claim_available_tasks("w1", 1, LONG)) == ["first"]
        await backend.begin_execution("first", "w1")
        await backend.reschedule_workflow("first", worker_id="w1", run_after=timedelta(0))
        claims = await backend.claim_available_tasks("w2", 10, LONG)
        assert ids_of(claims) == ["second", "third", "first"]
        # w2's own claims are available to it: the order it finds them in
        await create(backend, "zero", run_after=t0 - timedelta(minutes=1))
        order = ["zero", "second", "third", "first"]
        assert ids_of(await backend.find_available_tasks("w2", 10)) == order
        await backend.delete_snapshot("third")
        assert ids_of(await backend.find_available_tasks("w2", 10)) == ["zero", "second", "first"]

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

    async def test_an_expired_claim_fences_until_its_holder_renews_it(
        self, backend: PersistentBackend
    ) -> None:
        """A lapsed claim is not held: fenced writes raise ``ClaimLostError(holder=None)`` and
        it is offered as unclaimed. Until another worker claims it, the late holder's
        ``extend_task_claim`` renews it, and its writes go through again."""
        await create(backend, "wf")
        assert await backend.claim_task("wf", W, "w1", SHORT) is not None
        await asyncio.sleep(EXPIRED)
        with pytest.raises(ClaimLostError) as lost:
            await backend.record_step("wf", step(0), worker_id="w1")
        assert (lost.value.worker_id, lost.value.holder) == ("w1", None)
        [offered] = await backend.find_available_tasks("w2", 10)
        assert (offered.claimed_by, offered.claim_expires_at) == (None, None)
        lapsed = await backend.get_task("wf", W)
        assert lapsed.claimed_by == "w1"  # as stored: the holder let it expire
        renewed = await backend.extend_task_claim("wf", W, "w1", LONG)
        assert (renewed.worker_id, renewed.attempts) == ("w1", 1)
        await backend.record_step("wf", step(0), worker_id="w1")
        assert await backend.claim_task("wf", W, "w2", LONG) is None
        assert await backend.find_available_tasks("w2", 10) == []
