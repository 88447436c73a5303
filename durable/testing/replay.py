"""``durable.testing.replay``: check that the current code of a workflow still replays a
recorded execution, in a test or a CI job, without a database or a runtime.

::

    from durable.testing import replay

    def test_checkout_still_replays_production_histories():
        for path in Path("tests/histories").glob("*.json"):   # `durable workflows export`
            replay(checkout, path)                            # raises on a divergence

Nothing runs (no step body, no child, no sleep) and nothing is written: every position the
code reaches is answered from the history (see :mod:`durable.replayer`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from durable.errors import InvalidArgumentError, NonDeterminismError
from durable.history import load_history, read_history_file
from durable.models import StepRecord, WorkflowInfo, WorkflowSnapshot
from durable.replayer import ReplayResult, replay_history
from durable.serialization import Serializer
from durable.workflow import Workflow

__all__ = ["ReplayResult", "as_snapshot", "replay", "replay_async"]

History = WorkflowSnapshot | tuple[WorkflowInfo, Iterable[StepRecord]] | dict[str, Any] | str | Path


def as_snapshot(history: History, serializer: Serializer | None = None) -> WorkflowSnapshot:
    """The recorded execution ``history`` names: a :class:`~durable.models.WorkflowSnapshot`;
    a ``(WorkflowInfo, steps)`` pair as a client reads them (``get_workflow``,
    ``list_steps``); a history file's parsed object; or the path of a history file
    (``durable workflows export``; a ``str`` is a path).

    :raises HistoryFormatError: a file or object that is not a history this durable reads.
    :raises InvalidArgumentError: anything else.
    """
    if isinstance(history, WorkflowSnapshot):
        return history
    if isinstance(history, tuple) and len(history) == 2 and isinstance(history[0], WorkflowInfo):
        info, steps = history
        fields = {f: getattr(info, f) for f in WorkflowInfo.__dataclass_fields__}
        return WorkflowSnapshot(**fields, steps=tuple(steps))
    if isinstance(history, dict):
        return load_history(history, serializer)
    if isinstance(history, str | Path):
        return read_history_file(history, serializer)
    raise InvalidArgumentError(
        "a history is a WorkflowSnapshot, a (WorkflowInfo, steps) pair, a history file's "
        f"object or its path, got {type(history).__qualname__}"
    )


async def replay_async(
    workflow: Workflow[Any, Any],
    history: History,
    *,
    app_version: str | None = None,
    serializer: Serializer | None = None,
    check: bool = True,
) -> ReplayResult:
    """:func:`replay`, awaited."""
    snapshot = as_snapshot(history, serializer)
    result = await replay_history(
        workflow, snapshot, app_version=app_version, serializer=serializer
    )
    if check and not result.ok:
        raise NonDeterminismError(result.describe())
    return result


def replay(
    workflow: Workflow[Any, Any],
    history: History,
    *,
    app_version: str | None = None,
    serializer: Serializer | None = None,
    check: bool = True,
) -> ReplayResult:
    """Replay the recorded execution ``history`` (see :func:`as_snapshot`) against
    ``workflow``'s current code, without running a step body or writing anything.

    :param app_version: the version the code is known as, when the workflow has no ``version``
        (reported beside the recorded one).
    :param serializer: the serializer the history's values were written with (default JSON).
    :param check: raise on a divergence (default); False returns it in the result.
    :returns: what the replay found (:class:`~durable.replayer.ReplayResult`).
    :raises NonDeterminismError: with ``check``, the code does not replay the history; the
        message names the first divergence and both code versions.
    :raises InvalidArgumentError: ``history`` is not an execution of ``workflow``.

    Callable from sync code and from a running event loop (it then replays in a thread of its
    own); in async code, prefer ``await replay_async(...)``.
    """
    run = replay_async(
        workflow, history, app_version=app_version, serializer=serializer, check=check
    )
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run)
    box: list[ReplayResult | BaseException] = []

    def in_thread() -> None:
        try:
            box.append(asyncio.run(run))
        except BaseException as exc:  # handed back to the caller's thread
            box.append(exc)

    thread = threading.Thread(target=in_thread, name="durable-replay")
    thread.start()
    thread.join()
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]
