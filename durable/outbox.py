"""``durable.enqueue_in`` and ``durable.send_in``: record an execution, or a message, inside the
application's own transaction, so that it exists if and only if that transaction commits::

    with engine.begin() as conn:                     # the application's transaction
        conn.execute(orders.insert().values(id="o-1"))
        durable.enqueue_in(conn, "orders.checkout.v1", "o-1", idempotency_key="o-1")

The connection must be to the database that holds durable's tables (the same server and the
same database: that is what makes the two writes one commit). The rows written are exactly
those :meth:`durable.Client.enqueue` writes, by the same statements, with the same idempotency:
an id or key that exists creates nothing and its execution's id is returned. Workers are woken
when the caller commits: on PostgreSQL by the NOTIFY sent in the transaction (delivered only
on commit); on SQLite by their polling, or at once in this process when ``using`` names the
client or runtime whose workers should hear of it.

Accepted connections: a SQLAlchemy ``Connection`` or ORM ``Session`` (the call returns the id),
an ``AsyncConnection`` or ``AsyncSession`` (the call returns a coroutine: ``await`` it). Nothing
is committed here; the caller commits or rolls back.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

import sqlalchemy as sa

from durable.backends.base import PersistentBackend
from durable.errors import ConfigurationError, InvalidArgumentError, SerializationError
from durable.executions import (
    CheckedEnqueue,
    EnqueueOptions,
    execution_record,
    not_a_workflow,
)
from durable.queues import Queue, queue_name
from durable.validation import check_id, check_name, check_optional_id
from durable.workflow import Workflow

if TYPE_CHECKING:  # imported where used: ``import durable`` does not load them
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    from sqlalchemy.orm import Session

T = TypeVar("T")


class Owner(Protocol):
    """A :class:`~durable.Client` or :class:`~durable.Runtime`: its backend, and a way to run
    one of the backend's coroutines from sync code."""

    backend: PersistentBackend

    def blocking(self, coro: Coroutine[Any, Any, T]) -> T: ...


_helpers: dict[str, PersistentBackend] = {}


def _helper(dialect_name: str) -> PersistentBackend:
    """A backend object that is never started, for its statements only (JSON serializer), per
    kind of database: what enqueue_in runs on a caller's connection when ``using`` is not
    given. Its engine never connects."""
    found = _helpers.get(dialect_name)
    if found is None:
        from durable.backends.sql import SQLAlchemyBackend

        urls = {
            "sqlite": "sqlite://",
            "postgresql": "postgresql+psycopg://enqueue-in/unused",
            "mysql": "mysql+aiomysql://enqueue-in/unused",
        }
        if dialect_name not in urls:
            raise ConfigurationError(
                f"durable.enqueue_in / send_in: durable does not run on {dialect_name} databases"
            )
        found = _helpers.setdefault(dialect_name, SQLAlchemyBackend(urls[dialect_name]))
    return found


def _backend(conn: sa.Connection, using: Owner | None, what: str) -> PersistentBackend:
    """The backend whose statements and serializer write on ``conn``; with ``using``, its
    database is checked to be the one ``conn`` is connected to.

    :raises ConfigurationError: the backend cannot write in a caller's transaction, or ``conn``
        is to another database.
    """
    if using is None:
        return _helper(conn.dialect.name)
    backend = getattr(using, "backend", None)
    if not isinstance(backend, PersistentBackend):
        raise InvalidArgumentError(
            f"{what}: using= takes a durable.Client or durable.Runtime, got "
            f"{type(using).__qualname__}"
        )
    if not backend.supports_transactions:
        raise backend._no_transactions(what)
    known = getattr(backend, "known_database_identity", None)  # no I/O where it can
    own = known() if callable(known) else None
    if own is None:
        own = using.blocking(backend.own_database_identity())
    theirs = backend.database_identity(conn)
    if tuple(theirs) != tuple(own):  # the server may have restarted since it was read
        again = getattr(backend, "reread_database_identity_blocking", None)
        own = (again() if callable(again) else None) or own
    if tuple(theirs) != tuple(own):
        raise ConfigurationError(
            f"{what}: the connection is to another database ({theirs!r}) than durable's tables "
            f"({own!r}): an enqueue or send in your transaction is only atomic with it on the "
            "same server and database (on PostgreSQL, through a search_path that finds the "
            "same durable_* tables)"
        )
    return backend


def _on_commit(target: Any, callback: Callable[[], None]) -> None:
    """Call ``callback`` when the caller's transaction commits (sessions: after the commit;
    connections: as it commits)."""
    from sqlalchemy.orm import Session

    if isinstance(target, Session):
        sa.event.listen(target, "after_commit", lambda _s: callback(), once=True)
    else:
        sa.event.listen(target, "commit", lambda _c: callback(), once=True)


def _run(
    conn: Any, work: Callable[[sa.Connection], T], using: Owner | None
) -> T | Coroutine[Any, Any, T]:
    """Run ``work`` on the caller's sync connection, now, or in a coroutine for async ones
    (which first reads the identity of ``using``'s database, on its loop: the check in
    :func:`_backend` then needs no I/O of its own)."""
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    from sqlalchemy.orm import Session

    if isinstance(conn, sa.Connection):
        return work(conn)
    if isinstance(conn, Session):
        return work(conn.connection())
    if isinstance(conn, AsyncConnection | AsyncSession):
        return _run_async(conn, work, using)
    raise InvalidArgumentError(
        "expected a SQLAlchemy Connection, Session, AsyncConnection or AsyncSession in a "
        f"transaction, got {type(conn).__qualname__}"
    )


async def _run_async(
    conn: AsyncConnection | AsyncSession, work: Callable[[sa.Connection], T], using: Owner | None
) -> T:
    from sqlalchemy.ext.asyncio import AsyncConnection

    backend = getattr(using, "backend", None)
    if isinstance(backend, PersistentBackend) and backend.supports_transactions:
        await backend.own_database_identity()
    if isinstance(conn, AsyncConnection):
        return await conn.run_sync(work)
    return await conn.run_sync(lambda session: work(session.connection()))


def _wake_target(conn: Any) -> Any:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    if isinstance(conn, AsyncConnection):
        return conn.sync_connection
    if isinstance(conn, AsyncSession):
        return conn.sync_session
    return conn


def _resolved(
    backend: PersistentBackend,
    conn: sa.Connection,
    wf: Workflow[Any, Any] | str,
    opts: EnqueueOptions,
) -> EnqueueOptions:
    """``opts`` with its deadline resolved on the store's clock, as an enqueue does."""
    timeout = opts.timeout
    if timeout is None and isinstance(wf, Workflow):
        timeout = wf.timeout
    if timeout is None:
        return opts
    dialect = getattr(backend, "dialect", None)
    now = dialect.host_now() if dialect is not None else None
    if now is None and dialect is not None:
        now = conn.execute(sa.select(dialect.now())).scalar_one()
    assert now is not None
    limit = now + timeout
    deadline = limit if opts.deadline is None else min(limit, opts.deadline)
    return dataclasses.replace(opts, timeout=None, deadline=deadline)


@overload
def enqueue_in(
    conn: AsyncConnection | AsyncSession,
    fn: Workflow[Any, Any] | str,
    *args: Any,
    using: Owner | None = None,
    workflow_id: str | None = None,
    idempotency_key: str | None = None,
    priority: int = 0,
    run_after: datetime | None = None,
    delay: float | timedelta | None = None,
    max_attempts: int | None = None,
    queue: str | Queue | None = None,
    timeout: float | timedelta | None = None,
    deadline: datetime | None = None,
    labels: Mapping[str, str] | None = None,
    partition_key: str | None = None,
    debounce: float | timedelta | None = None,
    debounce_key: str | None = None,
    **kwargs: Any,
) -> Coroutine[Any, Any, str]: ...
@overload
def enqueue_in(
    conn: sa.Connection | Session,
    fn: Workflow[Any, Any] | str,
    *args: Any,
    using: Owner | None = None,
    workflow_id: str | None = None,
    idempotency_key: str | None = None,
    priority: int = 0,
    run_after: datetime | None = None,
    delay: float | timedelta | None = None,
    max_attempts: int | None = None,
    queue: str | Queue | None = None,
    timeout: float | timedelta | None = None,
    deadline: datetime | None = None,
    labels: Mapping[str, str] | None = None,
    partition_key: str | None = None,
    debounce: float | timedelta | None = None,
    debounce_key: str | None = None,
    **kwargs: Any,
) -> str: ...
def enqueue_in(
    conn: Any,
    fn: Workflow[Any, Any] | str,
    *args: Any,
    using: Owner | None = None,
    workflow_id: str | None = None,
    idempotency_key: str | None = None,
    priority: int = 0,
    run_after: datetime | None = None,
    delay: float | timedelta | None = None,
    max_attempts: int | None = None,
    queue: str | Queue | None = None,
    timeout: float | timedelta | None = None,
    deadline: datetime | None = None,
    labels: Mapping[str, str] | None = None,
    partition_key: str | None = None,
    debounce: float | timedelta | None = None,
    debounce_key: str | None = None,
    **kwargs: Any,
) -> str | Coroutine[Any, Any, str]:
    """Record that a workflow must run, inside the caller's transaction on ``conn``, and
    return its id (a coroutine of it for async connections and sessions). The execution
    exists if and only if the caller's transaction commits.

    The arguments are those of :meth:`durable.Client.enqueue` (debouncing excepted), with the
    same meaning and idempotency (a second ``enqueue_in`` with the same ``idempotency_key`` or
    ``workflow_id`` creates nothing and returns the existing execution's id; so does one whose
    first transaction committed meanwhile: it waits for it on PostgreSQL).

    :param conn: a ``Connection`` or ``Session`` (sync), an ``AsyncConnection`` or
        ``AsyncSession`` (async), in a transaction on the database holding durable's tables.
    :param using: the :class:`~durable.Client` or :class:`~durable.Runtime` whose database this
        is: its serializer is used, ``conn`` is checked to be to the same server and database,
        and its workers in this process are woken on commit. Without it, arguments are stored
        as JSON (durable's default serializer).

    :raises InvalidArgumentError: an argument of the wrong type or out of range, ``fn`` neither
        a name nor a workflow, a decorated ``fn`` that cannot take the arguments, ``debounce``
        given, ``conn`` not a connection or session, or the id or key belongs to another
        workflow (nothing is written).
    :raises SerializationError: the arguments cannot be serialized (nothing is written).
    :raises ConfigurationError: ``using``'s backend cannot write in a caller's transaction (the
        memory backend), or ``conn`` is to another database.
    """
    checked = CheckedEnqueue.check(
        fn,
        workflow_id=workflow_id,
        idempotency_key=idempotency_key,
        priority=priority,
        run_after=run_after,
        delay=delay,
        max_attempts=max_attempts,
        queue=queue_name(queue),
        timeout=timeout,
        deadline=deadline,
        labels=labels,
        partition_key=partition_key,
        debounce=debounce,
        debounce_key=debounce_key,
    )
    if not isinstance(fn, str | Workflow):
        raise not_a_workflow(fn)
    if checked.debounce is not None:
        raise InvalidArgumentError(
            "durable.enqueue_in does not debounce (a debounced call changes an execution that "
            "other transactions may be changing too): use Client.enqueue(..., debounce=...)"
        )
    if isinstance(fn, Workflow):
        fn.check_arguments(args, kwargs)  # nothing is written if it cannot take them
    options = checked.options(fn)
    instance_id = workflow_id or str(uuid.uuid4())
    target = _wake_target(conn)

    def work(sync_conn: sa.Connection) -> str:
        backend = _backend(sync_conn, using, "durable.enqueue_in")
        opts = _resolved(backend, sync_conn, fn, options)
        snapshot, task = execution_record(fn, instance_id, args, kwargs, opts)
        try:
            [(info, created)] = backend.enqueue_in_transaction(sync_conn, [(snapshot, task)])
        except (InvalidArgumentError, SerializationError) as exc:
            message = str(exc).removeprefix("inputs[0]: ")
            raise type(exc)(f"durable.enqueue_in({snapshot.name!r}): {message}") from exc
        if created and using is not None:
            _on_commit(target, backend.notify_work)
        return info.id

    return _run(conn, work, using)


@overload
def send_in(
    conn: AsyncConnection | AsyncSession,
    workflow_id: str,
    topic: str,
    value: Any = None,
    *,
    idempotency_key: str | None = None,
    using: Owner | None = None,
) -> Coroutine[Any, Any, bool]: ...
@overload
def send_in(
    conn: sa.Connection | Session,
    workflow_id: str,
    topic: str,
    value: Any = None,
    *,
    idempotency_key: str | None = None,
    using: Owner | None = None,
) -> bool: ...
def send_in(
    conn: Any,
    workflow_id: str,
    topic: str,
    value: Any = None,
    *,
    idempotency_key: str | None = None,
    using: Owner | None = None,
) -> bool | Coroutine[Any, Any, bool]:
    """Send ``value`` to workflow ``workflow_id`` on ``topic`` inside the caller's transaction
    (see :func:`enqueue_in` for ``conn`` and ``using``): the message, and the wake-up of the
    workflow if it waits on that topic, exist if and only if the caller commits. Returns (a
    coroutine of, for async connections) what :meth:`durable.Client.send` returns: True when
    stored, False when a message with this ``idempotency_key`` was sent to that workflow
    before.

    :raises WorkflowNotFoundError: no workflow has that id.
    :raises WorkflowFinishedError: that workflow has finished.
    :raises InvalidArgumentError: ``workflow_id``, ``topic`` or ``idempotency_key`` is not a
        valid name, or ``value`` cannot be serialized (nothing is written).
    :raises ConfigurationError: as :func:`enqueue_in`.
    """
    check_id(workflow_id, "workflow_id")
    check_name(topic, "topic")
    check_optional_id(idempotency_key, "idempotency_key")
    target = _wake_target(conn)

    def work(sync_conn: sa.Connection) -> bool:
        backend = _backend(sync_conn, using, "durable.send_in")
        try:
            stored = backend.send_in_transaction(
                sync_conn, workflow_id, topic, value, idempotency_key=idempotency_key
            )
        except SerializationError as exc:
            raise InvalidArgumentError(f"value cannot be stored: {exc}") from exc
        if stored and using is not None:
            _on_commit(target, backend.notify_work)
        return stored

    return _run(conn, work, using)
