"""``WorkflowInfo.from_fields``: the records the hot path builds without the dataclass's
``__init__`` are the records ``__init__`` would build (equal, frozen, with fresh defaults), and
bad field names are refused as ``__init__`` refuses them."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from durable.errors import ErrorInfo
from durable.executions import execution_rows, plan_enqueue_many
from durable.models import StepRecord, StepStatus, WorkflowInfo, WorkflowSnapshot, WorkflowStatus

_SAMPLES: dict[str, list[Any]] = {
    "status": list(WorkflowStatus),
    "input": [None, {"args": [1], "kwargs": {}}, [1, "two"]],
    "output": [None, 3, "done"],
    "error": [None, ErrorInfo(type="ValueError", message="bad", traceback="tb")],
    "queue": ["default", "emails"],
    "priority": [0, -5, 7],
    "attempts": [0, 1, 4],
    "interruptions": [0, 2],
    "version": [0, 1, 9],
    "continuations": [0, 3],
    "steps": [
        (),
        (StepRecord(position=0, name="s", status=StepStatus.SUCCEEDED, output=1, attempts=1),),
    ],
    "labels": [{}, {"customer": "c-42"}],
}


def _value(rng: random.Random, name: str) -> Any:
    if name in _SAMPLES:
        return rng.choice(_SAMPLES[name])
    if name.endswith("_at") or name == "deadline":
        moment = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.random())
        return rng.choice([None, moment])
    if name == "max_attempts":
        return rng.choice([None, 1, 3])
    return rng.choice([None, f"{name}-{rng.randrange(1000)}"])


@pytest.mark.parametrize("cls", [WorkflowInfo, WorkflowSnapshot])
def test_from_fields_builds_what_init_builds(cls: type[WorkflowInfo]) -> None:
    rng = random.Random(11)
    names = [f.name for f in dataclasses.fields(cls)]
    for _ in range(500):
        given = ["id", "name", *(n for n in names[2:] if rng.random() < 0.5)]
        values = {n: _value(rng, n) for n in given}
        if rng.random() < 0.3:  # every field, as a backend's row gives them
            values = {n: _value(rng, n) for n in names}
        built = cls.from_fields(values)
        expected = cls(**values)
        assert type(built) is cls
        assert built == expected
        assert repr(built) == repr(expected)
        assert dataclasses.asdict(built) == dataclasses.asdict(expected)
        assert pickle.loads(pickle.dumps(built)) == expected
        assert copy.copy(built) == expected
        assert dataclasses.replace(built, id="other") == dataclasses.replace(expected, id="other")
        with pytest.raises(dataclasses.FrozenInstanceError):
            built.id = "changed"  # type: ignore[misc]


def test_from_fields_gives_each_record_its_own_default_labels() -> None:
    first = WorkflowSnapshot.from_fields({"id": "a", "name": "wf"})
    second = WorkflowSnapshot.from_fields({"id": "b", "name": "wf"})
    assert first.labels == {} and second.labels == {}
    assert first.labels is not second.labels
    assert first.steps == () and first.status is WorkflowStatus.PENDING


def test_from_fields_refuses_unknown_and_missing_fields() -> None:
    with pytest.raises(TypeError, match=r"unknown fields \['stats'\]"):
        WorkflowInfo.from_fields({"id": "a", "name": "wf", "stats": "running"})
    with pytest.raises(TypeError, match=r"missing \['name'\]"):
        WorkflowInfo.from_fields({"id": "a"})
    with pytest.raises(TypeError, match=r"unknown fields \['steps'\]"):
        WorkflowInfo.from_fields({"id": "a", "name": "wf", "steps": ()})
    # the same refusals as the constructor's
    with pytest.raises(TypeError):
        WorkflowInfo(id="a", name="wf", stats="running")  # type: ignore[call-arg]


def test_a_batch_of_argument_tuples_shares_its_options_and_other_rows_keep_their_own() -> None:
    from durable.executions import Enqueue

    rows = [(1,), (2,), Enqueue(args=(3,), priority=4), Enqueue(args=(4,), labels={"k": "v"})]
    rows += [Enqueue(args=(5,), idempotency_key="key-5"), (6,)]
    planned = plan_enqueue_many(
        "wf",
        rows,
        priority=1,
        run_after=None,
        delay=timedelta(seconds=5),
        max_attempts=None,
        queue="q",
        queue_name=lambda q: q,
    )
    built = execution_rows(planned, [row.fn for row in planned])
    options = [row[4] for row in built]
    assert options[0] is options[1] is options[5]  # the batch's own, built once
    assert options[2].priority == 4 and options[2].delay == timedelta(seconds=5)
    assert options[3].labels == {"k": "v"} and options[3].priority == 1
    assert options[4].idempotency_key == "key-5"
    assert options[0].idempotency_key is None and options[0].labels == {}
    for row, opts in zip(planned, options, strict=True):
        assert opts == row.options(row.fn)


def test_a_snapshots_header_is_its_fields_but_steps_and_labels_with_changes() -> None:
    rng = random.Random(5)
    names = [f.name for f in dataclasses.fields(WorkflowSnapshot)]
    for _ in range(200):
        snapshot = WorkflowSnapshot(**{n: _value(rng, n) for n in names})
        plain = WorkflowInfo(
            **{f.name: getattr(snapshot, f.name) for f in dataclasses.fields(WorkflowInfo)}
        )
        assert snapshot.header() == plain and type(snapshot.header()) is WorkflowInfo
        changes = {"version": rng.randrange(5), "updated_at": _value(rng, "updated_at")}
        assert snapshot.header(**changes) == dataclasses.replace(plain, **changes)
    with pytest.raises(TypeError, match=r"unknown fields \['steps'\]"):
        snapshot.header(steps=())


def test_new_step_record_builds_what_init_builds() -> None:
    """The step record every step builds without the dataclass's ``__init__``: equal to the
    constructor's for the same fields (the others at their defaults), frozen, and the same
    through ``repr``, ``asdict``, pickling, copying and ``replace``."""
    from durable.models import new_step_record

    rng = random.Random(7)
    for _ in range(500):
        values: dict[str, Any] = {
            "position": rng.randrange(10_000),
            "name": rng.choice(["a", "charge", "é/step"]),
            "status": rng.choice(list(StepStatus)),
            "output": rng.choice([None, 3, "done", {"k": [1]}]),
            "serialized_output": rng.choice([None, "3", '"done"']),
            "error": rng.choice(_SAMPLES["error"]),
            "child_workflow_id": rng.choice([None, "wf/1"]),
            "attempts": rng.randrange(1, 5),
            "executor_id": rng.choice([None, "worker-1"]),
            "started_at": _value(rng, "started_at"),
        }
        built = new_step_record(**values)
        expected = StepRecord(**values)
        assert type(built) is StepRecord
        assert built == expected
        assert repr(built) == repr(expected)
        assert built.serialized_output == expected.serialized_output  # not compared by ==
        assert dataclasses.asdict(built) == dataclasses.asdict(expected)
        assert pickle.loads(pickle.dumps(built)) == expected
        assert copy.copy(built) == expected
        assert dataclasses.replace(built, attempts=9) == dataclasses.replace(expected, attempts=9)
        with pytest.raises(dataclasses.FrozenInstanceError):
            built.position = 1  # type: ignore[misc]
