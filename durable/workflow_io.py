"""What a :class:`~durable.Client` says to running workflows and hears from them:
:class:`WorkflowIO`, the client's operations on messages in (``send``, ``list_messages``),
events and streams out (``get_event``, ``read_stream``) and what an execution waits for
(``waiting``, ``list_waiting``), each with a ``_sync`` twin.

The workflow side of each is in its own module (:mod:`durable.messages`, :mod:`durable.events`,
:mod:`durable.streams`, :mod:`durable.inspection`); these are the thin, validated calls a
producer or an operator makes, over the backend's operations.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from durable.backends.base import PersistentBackend
from durable.errors import BackendUnavailableError, InvalidArgumentError, SerializationError
from durable.events import wait_for_event
from durable.inspection import KINDS as WAIT_KINDS
from durable.inspection import Waiting, waiting_of
from durable.models import Message, Page, WorkflowStatus
from durable.polling import UNANSWERED_LOOK
from durable.streams import StreamReader
from durable.validation import (
    check_bool,
    check_id,
    check_int,
    check_name,
    check_optional_id,
    check_positive_int,
    check_timeout,
)

T = TypeVar("T")


class WorkflowIO:
    """Messages in, events and streams out, and waits: the operations of
    :class:`~durable.Client` on running workflows (each with a ``_sync`` twin)."""

    backend: PersistentBackend
    poll_interval: float

    if TYPE_CHECKING:  # provided by the client

        def blocking(self, coro: Coroutine[Any, Any, T]) -> T: ...
        def _require_started(self) -> None: ...
        async def _until_closed(
            self,
            wait: Coroutine[Any, Any, T],
            timeout: float | None = None,
            late: Callable[[], BaseException] | None = None,
        ) -> T: ...

    # -- messages ------------------------------------------------------------------------------

    async def send(
        self,
        workflow_id: str,
        topic: str,
        value: Any = None,
        *,
        idempotency_key: str | None = None,
    ) -> bool:
        """Send ``value`` to the workflow ``workflow_id`` on ``topic``; it receives it with
        ``durable.recv(topic)``. Returns True once the message is stored (it is then kept until
        the workflow receives it, exactly once, after the messages sent on the topic before it);
        False when a message with this ``idempotency_key`` was already sent to that workflow
        (nothing is stored again). A workflow waiting on the topic is woken at once.

        :raises WorkflowNotFoundError: no workflow has that id.
        :raises WorkflowFinishedError: that workflow has finished (a send whose key was
            already stored returns False instead).
        :raises InvalidArgumentError: ``workflow_id``, ``topic`` or ``idempotency_key`` is not
            a non-empty str of at most 255 characters, or ``value`` cannot be serialized
            (nothing is stored).
        """
        self._require_started()
        check_id(workflow_id, "workflow_id")
        check_name(topic, "topic")
        check_optional_id(idempotency_key, "idempotency_key")
        try:
            return await self.backend.send_message(
                workflow_id, topic, value, idempotency_key=idempotency_key
            )
        except SerializationError as exc:
            raise InvalidArgumentError(
                f"value cannot be stored (a {type(value).__qualname__}): {exc}"
            ) from exc

    def send_sync(
        self,
        workflow_id: str,
        topic: str,
        value: Any = None,
        *,
        idempotency_key: str | None = None,
    ) -> bool:
        """:meth:`send` for code that is not async."""
        return self.blocking(self.send(workflow_id, topic, value, idempotency_key=idempotency_key))

    async def list_messages(
        self, workflow_id: str, *, topic: str | None = None, received: bool | None = None
    ) -> list[Message]:
        """The messages sent to the workflow (and its timers' messages), in the order they were
        stored; on ``topic`` only, or only received (``received=True``) or pending
        (``received=False``) ones, if given.

        :raises WorkflowNotFoundError: no such workflow.
        """
        self._require_started()
        check_id(workflow_id, "workflow_id")
        if topic is not None:
            check_name(topic, "topic")
        if received is not None:
            check_bool(received, "received")
        return await self.backend.list_messages(workflow_id, topic=topic, received=received)

    def list_messages_sync(
        self, workflow_id: str, *, topic: str | None = None, received: bool | None = None
    ) -> list[Message]:
        """:meth:`list_messages` for code that is not async."""
        return self.blocking(self.list_messages(workflow_id, topic=topic, received=received))

    # -- what an execution waits for ---------------------------------------------------------

    async def waiting(self, workflow_id: str) -> Waiting | None:
        """What the execution waits for, if it is not running and waits: sleeping until a time
        (``durable.sleep``) or waiting for a message on a topic (``durable.recv``); ``str()`` of
        the result says it in words. None when it runs, is queued, has finished, or waits for
        nothing of the kind (steps it handed out with :func:`durable.map`).

        :raises WorkflowNotFoundError: no such workflow.
        """
        self._require_started()
        info = await self.backend.get_workflow(check_id(workflow_id, "workflow_id"))
        if info.status is not WorkflowStatus.PENDING:
            return None
        steps = await self.backend.list_steps(workflow_id)
        return waiting_of(workflow_id, steps[-1], info) if steps else None

    def waiting_sync(self, workflow_id: str) -> Waiting | None:
        """:meth:`waiting` for code that is not async."""
        return self.blocking(self.waiting(workflow_id))

    async def list_waiting(
        self, *, kind: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> Page[Waiting]:
        """The executions that wait, newest first: those sleeping (``kind="sleep"``), those
        waiting for a message (``kind="message"``), or both (None); each a :class:`Waiting`
        with its workflow's header. A page of at most ``limit``, whose ``next_cursor`` (given
        as ``cursor``) reads the next.

        :raises InvalidArgumentError: an unknown ``kind``, a ``limit`` that is not a positive
            int, a malformed cursor.
        """
        self._require_started()
        names = [n for n, k in WAIT_KINDS.items() if kind is None or k == kind]
        if not names:
            valid = ", ".join(repr(k) for k in WAIT_KINDS.values())
            raise InvalidArgumentError(f"kind must be one of {valid} or None, got {kind!r}")
        check_positive_int(limit, "limit")
        if cursor is not None and not isinstance(cursor, str):
            raise InvalidArgumentError(f"cursor must be a str (a next_cursor), got {cursor!r}")
        page = await self.backend.list_waiting(step_names=names, limit=limit, cursor=cursor)
        items = [waiting_of(info.id, step, info) for info, step in page.items]
        return Page([w for w in items if w is not None], page.next_cursor)

    def list_waiting_sync(
        self, *, kind: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> Page[Waiting]:
        """:meth:`list_waiting` for code that is not async."""
        return self.blocking(self.list_waiting(kind=kind, limit=limit, cursor=cursor))

    # -- what workflows publish: events and streams ---------------------------------------------

    async def get_event(
        self,
        workflow_id: str,
        key: str,
        *,
        timeout: float | timedelta | None = 60.0,
        default: Any = None,
    ) -> Any:
        """The value the execution last set for its event ``key`` (``durable.set_event``),
        waiting up to ``timeout`` (seconds, or a ``timedelta``; None: no limit; 0: do not wait)
        until it is set. Returns ``default`` (None) if it was not set in time, or if the
        execution finished without setting it. Readable while the execution runs and after it
        finished. The wait is woken by the write (by every process's on PostgreSQL; by this
        process's elsewhere, other processes' being seen within ``poll_interval``).

        :raises WorkflowNotFoundError: no such workflow.
        :raises DurableError: the client (or its runtime) was closed while it waited.
        :raises BackendUnavailableError: ``timeout`` passed while the database could not be
            reached, or did not answer (whether the event was set is not known).
        :raises InvalidArgumentError: ``workflow_id`` or ``key`` is not a non-empty str of at
            most 255 characters, or ``timeout`` is negative or not finite.
        """
        self._require_started()
        check_id(workflow_id, "workflow_id")
        check_name(key, "key")
        wait = check_timeout(timeout)

        def late() -> BaseException:  # its last look still unanswered well past the timeout
            return BackendUnavailableError(
                f"the database did not answer while waiting for event {key!r} of workflow "
                f"{workflow_id!r} ({wait:g} s): whether it was set is not known"
            )

        return await self._until_closed(
            wait_for_event(
                self.backend,
                workflow_id,
                key,
                timeout=wait,
                default=default,
                poll_interval=self.poll_interval,
            ),
            None if wait is None else wait + UNANSWERED_LOOK,
            late,
        )

    def get_event_sync(
        self,
        workflow_id: str,
        key: str,
        *,
        timeout: float | timedelta | None = 60.0,
        default: Any = None,
    ) -> Any:
        """:meth:`get_event` for code that is not async."""
        return self.blocking(self.get_event(workflow_id, key, timeout=timeout, default=default))

    def read_stream(self, workflow_id: str, key: str, *, offset: int = 0) -> AsyncIterator[Any]:
        """The values of the execution's stream ``key`` (``durable.write_stream``), in the
        order written, each once, from the first (or from ``offset``): ``async for value in
        client.read_stream(workflow_id, "tokens")``. After the values already written it waits
        for more, woken by each write, and ends once the stream is closed
        (``durable.close_stream``) or the execution finished, after its last value. Readable
        while the execution runs and after it finished.

        :raises WorkflowNotFoundError: no such workflow (on the first iteration).
        :raises DurableError: the client (or its runtime) was closed while it waited.
        :raises InvalidArgumentError: ``workflow_id`` or ``key`` is not a non-empty str of at
            most 255 characters, or ``offset`` is not an int of at least 0 (at the call).
        """
        reader = self._stream_reader(workflow_id, key, offset)

        async def values() -> AsyncIterator[Any]:
            while (batch := await self._until_closed(reader.next_batch())) is not None:
                for value in batch:
                    yield value

        return values()

    def read_stream_sync(self, workflow_id: str, key: str, *, offset: int = 0) -> Iterator[Any]:
        """:meth:`read_stream` for code that is not async: an iterator, ``for value in
        client.read_stream_sync(workflow_id, "tokens")``."""
        reader = self._stream_reader(workflow_id, key, offset)

        def values() -> Iterator[Any]:
            while (batch := self.blocking(self._until_closed(reader.next_batch()))) is not None:
                yield from batch

        return values()

    def _stream_reader(self, workflow_id: str, key: str, offset: int) -> StreamReader:
        self._require_started()
        check_id(workflow_id, "workflow_id")
        check_name(key, "key")
        check_int(offset, "offset", minimum=0, maximum=2**31 - 1)
        return StreamReader(
            self.backend, workflow_id, key, offset=offset, poll_interval=self.poll_interval
        )
