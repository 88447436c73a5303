"""``@durable.transaction``: a step whose database writes commit together with its record.

A transactional step gets a SQLAlchemy connection on durable's own database, already in a
transaction::

    @durable.transaction
    def reserve(conn: sa.Connection, order_id: str) -> int:
        conn.execute(stock.update().where(...).values(qty=stock.c.qty - 1))
        return conn.execute(sa.select(stock.c.qty).where(...)).scalar_one()

    @durable.workflow
    def checkout(order_id: str) -> int:
        return reserve(order_id)            # the connection is passed by durable

The body's writes, its return value and the step's checkpoint are committed in ONE
transaction, fenced by the workflow's lease (the same fence as every step record): either all
of it is visible, or none. A crash before the commit leaves nothing, and the step runs again on
recovery; a crash after it leaves the writes and the record, and the recorded output is
returned on replay without running the body. An executor that lost its lease (another took
the workflow over) has its transaction rolled back. So the effect on the database happens
exactly once, not at least once. Retries (``max_attempts``) run the body again, each in a new
transaction (the failed one rolled back).

``def`` bodies take a ``Connection`` (from sync workflows call the step; from async ones,
``await step.aio(...)``); ``async def`` bodies take an ``AsyncConnection`` and need an async
engine (PostgreSQL, or ``sqlite+aiosqlite://``). For the ORM, open a session on the connection:
``Session(bind=conn)`` (``AsyncSession(bind=conn)``) and ``flush()`` it; do not commit it.

Keep the body to database work: it holds a transaction (on SQLite, the write lock) while it
runs. The memory backend and custom backends without
:attr:`~durable.backends.PersistentBackend.supports_transactions` refuse transactional steps
with :class:`~durable.errors.ConfigurationError`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar, overload

from durable.context import ExecutionContext, StepGuard, current, in_step
from durable.errors import DurableError, SerializationError
from durable.models import StepRecord, StepStatus
from durable.retry import RetryPolicy
from durable.step import Step, check_step_function, decorator_policy
from durable.validation import default_name, is_async_callable

P = ParamSpec("P")
T = TypeVar("T")


class _Raised(Exception):
    def __init__(self, error: Exception, *, retryable: bool = True) -> None:
        super().__init__()
        self.error = error
        self.retryable = retryable


class TransactionStep(Step[P, T], Generic[P, T]):
    """A step whose body runs in one transaction with its record (see the module docstring).
    Call it with the arguments after the connection."""

    #: Not handed out to other workers (``durable.map`` refuses it).
    transactional = True
    #: The engine the step's transactions run on (None: durable's own; see :func:`transaction`).
    engine: Any = None

    def _outside(self) -> DurableError:
        return DurableError(
            f"transactional step {self.name!r} was called outside a workflow (or inside a "
            f"step): it needs the workflow's transaction; to test the body, call "
            f"{self.label}.fn(connection, ...)"
        )

    def _body(self, args: Any, kwargs: Any) -> Callable[[Any], Any]:
        fn = self.fn
        if self.is_async:

            async def run_async(conn: Any) -> Any:
                try:
                    with in_step():
                        return await fn(conn, *args, **kwargs)
                except Exception as exc:
                    raise _Raised(exc) from None

            return run_async

        def run(conn: Any) -> Any:
            try:
                with in_step():
                    return fn(conn, *args, **kwargs)
            except Exception as exc:
                raise _Raised(exc) from None

        return run

    @staticmethod
    def _recorder(guard: StepGuard, attempts: int) -> Callable[[Any], StepRecord]:
        def record(value: Any) -> StepRecord:
            try:
                stored = guard._roundtrip(value)
            except SerializationError as exc:  # recorded as the step's failure, not retried
                raise _Raised(exc, retryable=False) from None
            return guard._entry(StepStatus.SUCCEEDED, output=stored, attempts=attempts, child=None)

        return record

    def _check(self, ctx: ExecutionContext) -> None:
        backend = ctx.runtime.backend
        if not backend.supports_transactions:
            raise backend._no_transactions(f"transactional step {self.name!r}")

    def _done(self, guard: StepGuard, made: StepRecord) -> Any:
        guard.recorded = made
        guard.result = made.output
        return made.output

    async def _execute(self, guard: StepGuard, args: Any, kwargs: Any) -> Any:
        if guard.replayed:
            return guard.replay()
        ctx = guard.ctx
        self._check(ctx)
        backend = ctx.runtime.backend
        attempt = 0
        while True:
            attempt += 1
            await ctx.ensure_lease()
            try:
                # not awaited as a write of durable's own: the body may rightly take long
                with ctx.checkpoint(awaited=False):
                    made = await backend.run_transactional_step(
                        ctx.workflow_id,
                        self._body(args, kwargs),
                        self._recorder(guard, attempt),
                        worker_id=ctx.executor_id,
                        is_async=self.is_async,
                        engine=self.engine,
                    )
            except _Raised as raised:
                exc = raised.error
                if raised.retryable and self.retry.should_retry(exc, attempt):
                    await ctx.runtime.sleep(self.retry.delay(attempt))
                    continue
                raise await guard.fail(exc, attempts=attempt)  # noqa: B904 (as replayed)
            return self._done(guard, made)

    def _execute_blocking(
        self, ctx: ExecutionContext, guard: StepGuard, args: Any, kwargs: Any
    ) -> Any:
        if guard.replayed:
            return guard.replay()
        self._check(ctx)
        backend = ctx.runtime.backend
        attempt = 0
        while True:
            attempt += 1
            if not ctx.lease_fresh():
                ctx.block_on(ctx.ensure_lease())
            body, record = self._body(args, kwargs), self._recorder(guard, attempt)
            try:
                with ctx.checkpoint(awaited=False):  # the body may rightly take long
                    made = backend.run_transactional_step_blocking(
                        ctx.workflow_id, body, record, worker_id=ctx.executor_id, engine=self.engine
                    )
                    if made is None:  # the backend's transactions run on its event loop
                        made = ctx.block_on(
                            backend.run_transactional_step(
                                ctx.workflow_id,
                                body,
                                record,
                                worker_id=ctx.executor_id,
                                engine=self.engine,
                            )
                        )
            except _Raised as raised:
                exc = raised.error
                if raised.retryable and self.retry.should_retry(exc, attempt):
                    ctx.block_on(ctx.runtime.sleep(self.retry.delay(attempt)))
                    continue
                raise ctx.block_on(guard.fail(exc, attempts=attempt))  # noqa: B904 (as replayed)
            return self._done(guard, made)


class AsyncTransactionStep(TransactionStep[P, T]):
    """An ``async def`` transactional step (its body takes an ``AsyncConnection``):
    ``await step(...)`` from async workflows."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, T]:
        ctx = current()
        if ctx is None:
            raise self._outside()
        if not ctx.is_async:
            raise DurableError(
                f"async transactional step {self.name!r} was called from the sync workflow "
                f"{ctx.workflow_name!r}: make the workflow async, or the step a plain def"
            )
        return self._execute(ctx.guard(self.name), args, kwargs)


class SyncTransactionStep(TransactionStep[P, T]):
    """A ``def`` transactional step (its body takes a ``Connection``): called from sync
    workflows, awaited as ``step.aio(...)`` from async ones."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:
        ctx = current()
        if ctx is None:
            raise self._outside()
        if ctx.is_async:
            raise DurableError(
                f"sync transactional step {self.name!r} was called directly from the async "
                f"workflow {ctx.workflow_name!r}: write `await {self.label}.aio(...)`"
            )
        return self._execute_blocking(ctx, ctx.guard(self.name), args, kwargs)  # type: ignore[no-any-return]

    def aio(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, T]:
        """Await this transactional step from an async workflow."""
        ctx = current()
        if ctx is None:
            raise self._outside()
        if not ctx.is_async:
            raise DurableError(f"transactional step {self.name!r}: .aio() is for async workflows")
        return self._execute(ctx.guard(self.name), args, kwargs)


class _TransactionDecorator(Protocol):
    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[Concatenate[Any, P], Coroutine[Any, Any, T]], /
    ) -> AsyncTransactionStep[P, T]: ...
    @overload
    def __call__(self, fn: Callable[Concatenate[Any, P], T], /) -> SyncTransactionStep[P, T]: ...


@overload
def transaction(  # type: ignore[overload-overlap]
    fn: Callable[Concatenate[Any, P], Coroutine[Any, Any, T]], /
) -> AsyncTransactionStep[P, T]: ...
@overload
def transaction(fn: Callable[Concatenate[Any, P], T], /) -> SyncTransactionStep[P, T]: ...
@overload
def transaction(
    *,
    name: str | None = None,
    max_attempts: int = 1,
    initial_delay: float = 1.0,
    backoff_rate: float = 2.0,
    max_delay: float = 3600.0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    non_retryable: tuple[type[BaseException], ...] = (),
    retry: RetryPolicy | None = None,
    engine: Any = None,
) -> _TransactionDecorator: ...
def transaction(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    max_attempts: int = 1,
    initial_delay: float = 1.0,
    backoff_rate: float = 2.0,
    max_delay: float = 3600.0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    non_retryable: tuple[type[BaseException], ...] = (),
    retry: RetryPolicy | None = None,
    engine: Any = None,
) -> Any:
    """Make a function a transactional step: ``@durable.transaction`` or
    ``@durable.transaction(max_attempts=3)`` (see the module docstring).

    The function's first parameter is the connection (``sa.Connection`` for a ``def``,
    ``AsyncConnection`` for an ``async def``); callers pass the other arguments. Its writes,
    its return value (stored by the backend's serializer, as a step's) and the step's record
    commit in one transaction fenced by the workflow's lease. The options are those of
    :func:`durable.step` (no ``timeout``: a transaction is not abandoned half-way).

    :param engine: run the step's transactions on this engine instead of durable's own (a
        SQLAlchemy ``Engine`` for a ``def`` step, an ``AsyncEngine`` for an ``async def`` one;
        e.g. the application's pool, role or settings). It MUST be connected to the same
        server and database as durable's tables (that is what makes the writes and the
        checkpoint one commit): the first transaction on it checks that, and raises
        :class:`~durable.errors.ConfigurationError` before the body runs if not.

    :raises InvalidArgumentError: an option of the wrong type or out of range, or ``fn`` not a
        function, or without ``name`` a callable with no qualname (a ``functools.partial``).
    """
    policy = decorator_policy(
        "durable.transaction",
        fn,
        name,
        retry,
        max_attempts=max_attempts,
        initial_delay=initial_delay,
        backoff_rate=backoff_rate,
        max_delay=max_delay,
        retry_on=retry_on,
        non_retryable=non_retryable,
    )

    def decorate(f: Callable[..., Any]) -> TransactionStep[Any, Any]:
        check_step_function(f, "durable.transaction")
        kind = AsyncTransactionStep if is_async_callable(f) else SyncTransactionStep
        made: TransactionStep[Any, Any] = kind(
            f, name=name or default_name(f, "durable.transaction"), retry=policy
        )
        made.engine = engine
        return made

    return decorate(fn) if fn is not None else decorate
