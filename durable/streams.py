"""Streams out: ``durable.write_stream(key, value)`` and ``durable.close_stream(key)`` inside a
workflow, ``client.read_stream(id, key)`` outside (LLM tokens, progress lines).

A stream is a sequence of values a workflow publishes under a key. Each write is a recorded
position of the workflow's history (named :data:`WRITE_STEP`), written in one transaction with
the value and fenced by the workflow's lease
(:meth:`~durable.backends.PersistentBackend.write_stream`): the value is stored exactly once,
whatever crash and replay of the writer (a replay finds the position recorded and writes nothing;
a write that did not commit left nothing and is made again), at the next offset (0, 1, 2, ...).
Closing (:data:`CLOSE_STEP`) tells readers the stream is complete; a stream that is never closed
ends for its readers when its workflow finishes.

A reader (:class:`StreamReader`, behind :meth:`Client.read_stream <durable.Client.read_stream>`)
gets every value from the start (or from an offset), in order, then waits for more: it is woken
by each commit (in this process; on PostgreSQL in every process, through LISTEN/NOTIFY) and reads
what came in batches, so a burst of values costs one read rather than one per value; it looks
again in case a write of another process was not announced: soon at first, then less often,
up to ``poll_interval`` seconds apart (:mod:`durable.polling`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine
from typing import Any

from durable.backends.base import PersistentBackend
from durable.context import ExecutionContext
from durable.events import Write, check_value, publish, publish_blocking, workflow_context
from durable.models import StepRecord
from durable.polling import pauses
from durable.validation import check_name

#: The name a stream write is recorded under in a workflow's history; its input is
#: ``{"key": key}``.
WRITE_STEP = "durable.write_stream"
#: The name closing a stream is recorded under.
CLOSE_STEP = "durable.close_stream"

#: Values a reader fetches per read at most.
READ_BATCH = 1000


def write_stream(key: str, value: Any) -> Coroutine[Any, Any, None]:
    """Append ``value`` to the current workflow's stream ``key``, inside an async workflow:
    ``await durable.write_stream("tokens", token)``.

    Readers (:meth:`Client.read_stream <durable.Client.read_stream>`) get the values in the
    order written, each once, even if the workflow crashes and is replayed. Costs one write
    (none on a replay).

    :raises InvalidArgumentError: ``key`` is not a non-empty str of at most 255 characters, or
        the backend's serializer cannot store ``value`` (nothing is recorded).
    :raises StreamClosedError: the stream was closed.
    :raises DurableError: called outside a workflow (or inside a step), or from a sync workflow
        (call :func:`write_stream_sync` there).
    """
    key = check_name(key, "key")
    ctx = workflow_context("durable.write_stream()", is_async=True)
    check_value(ctx, value, "value")
    return publish(ctx, ctx.guard(WRITE_STEP), key, _writer(ctx, key, value))


def write_stream_sync(key: str, value: Any) -> None:
    """:func:`write_stream` for sync workflows.

    :raises InvalidArgumentError: as :func:`write_stream`.
    :raises StreamClosedError: the stream was closed.
    :raises DurableError: called outside a workflow (or inside a step), or from an async one.
    """
    key = check_name(key, "key")
    ctx = workflow_context("durable.write_stream_sync()", is_async=False)
    check_value(ctx, value, "value")
    publish_blocking(ctx, ctx.guard(WRITE_STEP), key, _writer(ctx, key, value))


def close_stream(key: str) -> Coroutine[Any, Any, None]:
    """Close the current workflow's stream ``key``, inside an async workflow: readers end after
    its last value, and later writes to it raise :class:`~durable.errors.StreamClosedError`.
    Closing a closed stream, or one never written, is allowed.

    :raises InvalidArgumentError: ``key`` is not a non-empty str of at most 255 characters.
    :raises DurableError: called outside a workflow (or inside a step), or from a sync workflow
        (call :func:`close_stream_sync` there).
    """
    key = check_name(key, "key")
    ctx = workflow_context("durable.close_stream()", is_async=True)
    return publish(ctx, ctx.guard(CLOSE_STEP), key, _closer(ctx, key))


def close_stream_sync(key: str) -> None:
    """:func:`close_stream` for sync workflows.

    :raises InvalidArgumentError: as :func:`close_stream`.
    :raises DurableError: called outside a workflow (or inside a step), or from an async one.
    """
    key = check_name(key, "key")
    ctx = workflow_context("durable.close_stream_sync()", is_async=False)
    publish_blocking(ctx, ctx.guard(CLOSE_STEP), key, _closer(ctx, key))


def _writer(ctx: ExecutionContext, key: str, value: Any) -> Write:
    backend = ctx.runtime.backend

    async def write(workflow_id: str, executor_id: str, step: StepRecord) -> None:
        await backend.write_stream(workflow_id, key, value, worker_id=executor_id, step=step)

    return write


def _closer(ctx: ExecutionContext, key: str) -> Write:
    backend = ctx.runtime.backend

    async def write(workflow_id: str, executor_id: str, step: StepRecord) -> None:
        await backend.close_stream(workflow_id, key, worker_id=executor_id, step=step)

    return write


class StreamReader:
    """Reads one stream from ``offset`` on, batch by batch (see the module docstring)."""

    def __init__(
        self,
        backend: PersistentBackend,
        workflow_id: str,
        key: str,
        *,
        offset: int,
        poll_interval: float,
    ) -> None:
        self.backend = backend
        self.workflow_id = workflow_id
        self.key = key
        self.offset = offset
        """The offset of the next value to read."""
        self.poll_interval = poll_interval

    async def next_batch(self) -> list[Any] | None:
        """The values from :attr:`offset` on, waiting until there is at least one; None once
        the stream has ended (closed, or its workflow finished) and every value was read.

        :raises WorkflowNotFoundError: no such workflow.
        """
        backend = self.backend
        looks = pauses(self.poll_interval)
        while True:
            with backend.watch_outputs(self.workflow_id) as watch:
                chunk = await backend.read_stream(
                    self.workflow_id, self.key, offset=self.offset, limit=READ_BATCH
                )
                if chunk.values:
                    self.offset = chunk.next_offset
                    return list(chunk.values)
                if chunk.ended:
                    return None
                await watch.wait(next(looks))

    async def values(self) -> AsyncIterator[Any]:
        """Every value, in order, until the stream ends."""
        while (batch := await self.next_batch()) is not None:
            for value in batch:
                yield value


__all__ = [
    "CLOSE_STEP",
    "WRITE_STEP",
    "StreamReader",
    "close_stream",
    "close_stream_sync",
    "write_stream",
    "write_stream_sync",
]
