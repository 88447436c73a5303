"""Steps and history: recording a step (appended, pending rows overwritten, final rows kept,
fenced, at a cost that does not grow with the history), and which failed steps a retry or a
redrive runs again."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import (
    Awaitable,
)
from datetime import timedelta

import pytest

from durable.backends.base import PersistentBackend
from durable.errors import (
    ClaimLostError,
    SerializationError,
    StepAlreadyRecordedError,
    WorkflowNotFoundError,
)
from durable.models import (
    ErrorInfo,
    StepRecord,
    StepStatus,
    TaskSpec,
    WorkflowStatus,
)
from durable.testing.contract._support import (
    LONG,
    ContractBase,
    Unserializable,
    W,
    assert_between,
    create,
    keys_of,
    now,
    running,
    step,
)

#: The histories whose step costs are compared, and how: medians of COST_SAMPLES recordings
#: each (after COST_WARMUP), at most COST_RATIO apart, in any of COST_TRIALS trials.
SMALL_HISTORY = 10
LARGE_HISTORY = 3_000
COST_WARMUP = 5
COST_SAMPLES = 40
COST_RATIO = 4.0
COST_TRIALS = 3


class StepContract(ContractBase):
    """Steps and history: recording a step (appended, pending rows overwritten, final rows kept,
    fenced), and which failed steps a retry or a redrive runs again."""

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

    async def test_get_step_reads_the_step_at_a_position(self, backend: PersistentBackend) -> None:
        await running(backend, "wf", "w1")
        assert await backend.get_step("wf", 0) is None  # no step yet
        await backend.record_step("wf", step(0, output={"x": 1}), worker_id="w1")
        await backend.record_step(
            "wf",
            step(3, status=StepStatus.PENDING, input={"args": [3], "kwargs": {}}),
            worker_id="w1",
        )
        steps = await backend.list_steps("wf")
        assert await backend.get_step("wf", 0) == steps[0] == step(0, output={"x": 1})
        assert await backend.get_step("wf", 3) == steps[1]
        assert steps[1].status is StepStatus.PENDING
        assert steps[1].input == {"args": [3], "kwargs": {}}
        assert await backend.get_step("wf", 1) is None
        assert await backend.get_step("wf", 4) is None
        with pytest.raises(WorkflowNotFoundError):
            await backend.get_step("ghost", 0)

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

    async def test_recording_a_step_costs_the_same_at_any_history(
        self, backend: PersistentBackend
    ) -> None:
        """``record_step`` costs the same with 3,000 steps of history as with 10: a backend
        that rewrites or re-reads the whole history per step fails. Costs are compared, never
        timed against a limit: the median of many interleaved recordings at each size, a
        generous ratio, and a few trials (noise on a busy machine makes one trial slow, a cost
        that grows with the history makes every trial slow)."""
        sizes = {"small": SMALL_HISTORY, "large": LARGE_HISTORY}
        for instance_id, size in sizes.items():
            await create(
                backend, instance_id, steps=tuple(step(p, output={"p": p}) for p in range(size))
            )
            assert await backend.claim_task(instance_id, W, "w1", LONG) is not None
        positions = dict(sizes)

        async def cost(instance_id: str) -> float:
            record = step(positions[instance_id], output={"p": positions[instance_id]})
            positions[instance_id] += 1
            started = time.perf_counter()
            await backend.record_step(instance_id, record, worker_id="w1")
            return time.perf_counter() - started

        ratios: list[float] = []
        for _trial in range(COST_TRIALS):
            costs: dict[str, list[float]] = {"small": [], "large": []}
            for n in range(COST_WARMUP + COST_SAMPLES):
                for instance_id in ("small", "large") if n % 2 else ("large", "small"):
                    spent = await cost(instance_id)
                    if n >= COST_WARMUP:
                        costs[instance_id].append(spent)
            small, large = (statistics.median(costs[k]) for k in ("small", "large"))
            ratios.append(large / small)
            if ratios[-1] <= COST_RATIO:
                break
        else:
            pytest.fail(
                f"recording a step at {LARGE_HISTORY} steps of history costs "
                f"{', '.join(f'{r:.1f}' for r in ratios)} times what it costs at "
                f"{SMALL_HISTORY} (medians of {COST_SAMPLES}, in {COST_TRIALS} trials; at most "
                f"{COST_RATIO} allowed): record_step must not grow with the history"
            )
        for instance_id in sizes:
            recorded = await backend.list_steps(instance_id)
            assert [s.position for s in recorded] == list(range(positions[instance_id]))
