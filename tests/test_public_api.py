"""The public surface: __all__, the exception tree, errors that cross process boundaries."""

from __future__ import annotations

import inspect
import pickle

import pytest

import durable
from durable import errors


def test_all_lists_exactly_the_public_names() -> None:
    assert sorted(durable.__all__) == sorted(set(durable.__all__))
    for name in durable.__all__:
        assert hasattr(durable, name), name
    public = {n for n in vars(durable) if not n.startswith("_") and n[0].isupper()}
    assert public <= set(durable.__all__) | {"WORKFLOW_TASK"}


def test_every_error_derives_from_the_root() -> None:
    classes = [
        c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, Exception)
    ]
    assert len(classes) > 15
    assert all(issubclass(c, durable.DurableError) for c in classes)
    assert issubclass(durable.InvalidArgumentError, ValueError)


@pytest.mark.parametrize(
    "error",
    [
        durable.ClaimLostError("wf-1", "workflow", "w1", "w2"),
        durable.WorkflowNotFoundError("wf-1"),
        durable.TaskNotFoundError("wf-1", "step:3"),
        durable.ConcurrentUpdateError("wf-1", 3, 4),
        durable.StepAlreadyRecordedError("wf-1", 2),
        durable.ExecutorIdInUseError("node-1", "host-a", 42, "2026-01-01 00:00:00+00:00"),
        durable.WorkflowAlreadyExistsError("wf-1"),
        durable.SerializationError("no"),
        durable.CorruptRowError.at("durable_steps", "wf-1", "output", "not JSON", position=2),
        durable.NonDeterminismError(),
    ],
)
def test_errors_survive_pickling(error: durable.DurableError) -> None:
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error)
    assert str(again) == str(error)
    assert again.__dict__ == error.__dict__


def test_default_message_is_the_docstring() -> None:
    assert str(durable.NonDeterminismError()) == (
        "A replay diverged from the recorded history of the workflow."
    )


def test_json_refuses_text_no_database_can_store() -> None:
    with pytest.raises(durable.SerializationError, match="not valid Unicode"):
        durable.JSONSerializer().dumps({"name": "caf\ud800"})
    assert durable.JSONSerializer().dumps({"name": "café"}) == '{"name":"café"}'
