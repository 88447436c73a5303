"""``@durable.workflow``: functions whose progress is persisted step by step.

A workflow's body must be deterministic: given the same input and the same step results, it must
call the same steps in the same order. Everything that touches the outside world (I/O, time,
randomness) belongs in steps. A workflow is run by a :class:`~durable.Runtime`
(``await runtime.run(checkout, "o-1")``); called from inside another workflow it starts a *child*
workflow whose id is derived from the parent's id and the call's position; called anywhere else it
is a plain function call (handy in unit tests).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import timedelta
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, cast, overload

from durable.context import current
from durable.errors import DurableError, InvalidArgumentError
from durable.registry import Registry, default_registry
from durable.retry import WORKFLOW_RETRY, RetryPolicy
from durable.validation import (
    check_decorated,
    check_duration,
    check_instance,
    check_name,
    check_positive_int,
    default_name,
    is_async_callable,
)
from durable.versioning import check_version, source_version


class _Named(Protocol):
    """What a queue option may be besides a name: a :class:`durable.Queue` (its ``name``)."""

    @property
    def name(self) -> str: ...


P = ParamSpec("P")
T = TypeVar("T")

#: How many times an execution may be resumed after an interrupted attempt (its executor died or
#: lost its lease) before it is dead-lettered as a crash loop, unless the workflow says otherwise.
DEFAULT_MAX_RECOVERIES = 10


def _documented(fn: Any) -> Any:
    """What a workflow's default description is the docstring of: ``fn``, or the function a
    ``functools.partial`` wraps (whose own docstring is the ``partial`` class's)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


class Workflow(Generic[P, T]):
    """A registered workflow function."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str,
        retry: RetryPolicy,
        queue: str,
        description: str | None,
        max_recoveries: int = DEFAULT_MAX_RECOVERIES,
        timeout: timedelta | None = None,
        version: str | None = None,
    ) -> None:
        if max_recoveries < 0:
            raise InvalidArgumentError(f"max_recoveries must be >= 0, got {max_recoveries}")
        # first: a callable object's attributes (its __dict__) must not replace the workflow's
        functools.update_wrapper(cast(Any, self), fn)
        self.fn = fn
        self.name = check_name(name, "the workflow name")  # the decorator's, or the default
        self.retry = retry
        self.max_recoveries = max_recoveries
        self.timeout = timeout
        """How long an execution may take from its start before it is cancelled (see
        :func:`workflow`), or None."""
        self.queue = check_name(queue, "queue")
        self.description = (
            description if description is not None else inspect.getdoc(_documented(fn))
        )
        self.is_async = is_async_callable(fn)
        self.version = check_version(version, "version")
        """The version given to ``@durable.workflow(version=...)``, or None (see
        :meth:`code_version`)."""
        self.registry: Registry | None = None
        """The registry ``@durable.workflow`` registered it in (``@durable.scheduled`` declares
        its schedules there), or None for a workflow made otherwise."""

    @property
    def label(self) -> str:
        """How messages refer to the workflow in code: its function's ``__name__``, else
        ``workflow`` (a ``functools.partial``, a callable object)."""
        label = getattr(self.fn, "__name__", None)
        return label if isinstance(label, str) else "workflow"

    def __repr__(self) -> str:
        return f"<durable workflow {self.name}>"

    def cannot_take(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> TypeError | None:
        """Why the function cannot be called with ``args`` and ``kwargs`` (Python's
        ``TypeError``), or None: it can, or it has no signature to read (a builtin)."""
        try:
            inspect.signature(self.fn).bind(*args, **kwargs)
        except TypeError as exc:
            return exc
        except ValueError:
            return None
        return None

    def check_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Refuse, before anything is written, arguments the function cannot take (each of its
        executions would fail at once, and be retried for nothing). Whether a call binds
        depends only on how many positional arguments it has and on its keywords' names, so
        the answer is kept per such shape (a batch of like rows binds once).

        :raises InvalidArgumentError: it cannot take them (Python's reason, named).
        """
        shape = (len(args), *kwargs)
        fits: set[tuple[Any, ...]] = self.__dict__.setdefault("_fitting_shapes", set())
        if shape in fits:
            return
        problem = self.cannot_take(args, kwargs)
        if problem is not None:
            raise InvalidArgumentError(
                f"workflow {self.name!r} cannot take these arguments: {problem}"
            )
        if len(fits) < 64:
            fits.add(shape)

    def keyword_parameters(self) -> frozenset[str]:
        """The names its function takes by keyword (none if it has no signature to read)."""
        known: frozenset[str] | None = self.__dict__.get("_keyword_parameters")
        if known is None:
            try:
                parameters = list(inspect.signature(self.fn).parameters.values())
            except ValueError:
                parameters = []
            known = frozenset(
                p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            )
            self.__dict__["_keyword_parameters"] = known
        return known

    def code_version(self, app_version: str | None = None) -> str:
        """The version an execution of this workflow records (:mod:`durable.versioning`): its
        own ``version``, else ``app_version``, else the hash of its function's source."""
        if self.version is not None:
            return self.version
        if app_version is not None:
            return app_version
        cached: str | None = self.__dict__.get("_source_version")
        if cached is None:
            cached = self.__dict__["_source_version"] = source_version(self.fn)
        return cached


class AsyncWorkflow(Workflow[P, T]):
    """An ``async def`` workflow."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, T]:
        ctx = current()
        if ctx is None:
            return self.fn(*args, **kwargs)  # type: ignore[no-any-return]
        if not ctx.is_async:
            raise DurableError(
                f"async workflow {self.name!r} was called from the sync workflow "
                f"{ctx.workflow_name!r}: parent and child must both be sync or both async"
            )
        return ctx.runtime.run_child(ctx, ctx.guard(self.name), self, args, kwargs)


class SyncWorkflow(Workflow[P, T]):
    """A plain ``def`` workflow; it runs in a worker thread of the runtime."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:
        ctx = current()
        if ctx is None:
            return self.fn(*args, **kwargs)  # type: ignore[no-any-return]
        if ctx.is_async:
            raise DurableError(
                f"sync workflow {self.name!r} was called directly from the async workflow "
                f"{ctx.workflow_name!r}: write `await {self.label}.aio(...)`"
            )
        guard = ctx.guard(self.name)
        if guard.replayed:
            return guard.replay()  # type: ignore[no-any-return]
        return ctx.block_on(ctx.runtime.run_child(ctx, guard, self, args, kwargs))  # type: ignore[no-any-return]

    def aio(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, T]:
        """Start this sync workflow as a child of an async workflow and await its result."""
        ctx = current()
        if ctx is None or not ctx.is_async:
            raise DurableError(f"workflow {self.name!r}: .aio() is for async parent workflows")
        return ctx.runtime.run_child(ctx, ctx.guard(self.name), self, args, kwargs)


class _WorkflowDecorator(Protocol):
    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, T]], /) -> AsyncWorkflow[P, T]: ...  # type: ignore[overload-overlap]
    @overload
    def __call__(self, fn: Callable[P, T], /) -> SyncWorkflow[P, T]: ...


@overload
def workflow(fn: Callable[P, Coroutine[Any, Any, T]], /) -> AsyncWorkflow[P, T]: ...  # type: ignore[overload-overlap]
@overload
def workflow(fn: Callable[P, T], /) -> SyncWorkflow[P, T]: ...
@overload
def workflow(
    *,
    name: str | None = None,
    max_attempts: int | None = None,
    retry: RetryPolicy | None = None,
    queue: str | _Named = "default",
    description: str | None = None,
    registry: Registry | None = None,
    max_recoveries: int = DEFAULT_MAX_RECOVERIES,
    timeout: timedelta | float | None = None,
    version: str | None = None,
) -> _WorkflowDecorator: ...
def workflow(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    max_attempts: int | None = None,
    retry: RetryPolicy | None = None,
    queue: str | _Named = "default",
    description: str | None = None,
    registry: Registry | None = None,
    max_recoveries: int = DEFAULT_MAX_RECOVERIES,
    timeout: timedelta | float | None = None,
    version: str | None = None,
) -> Any:
    """Make a function a durable workflow and register it under its name.

    :param name: the stored name (default ``module:qualname``; required for a callable that has
        no qualname: a ``functools.partial``, an object with a ``__call__``, which is async
        if ``__call__`` is ``async def``). Prefer an explicit, versioned name such as
        ``"orders.checkout.v1"``: executions in flight and work enqueued by name refer to it,
        so keep old versions registered until their executions finish. One name runs one
        function (the rule is in :mod:`durable.registry`): workflows defined inside a function
        that runs more than once (a factory), and lambdas, need a ``name`` of their own.
    :param max_attempts: for queued executions: how many *failed* attempts (the body raised)
        before the workflow is dead-lettered (default schedule: at once, +1 min, +4 min; see
        ``retry``). Interrupted attempts do not count.
    :param max_recoveries: how many times an *interrupted* attempt (its executor died or lost
        its lease) may be resumed before the execution is dead-lettered as a crash loop
        (default :data:`DEFAULT_MAX_RECOVERIES`). Counted apart from failed attempts (see
        :attr:`~durable.WorkflowInfo.interruptions`), so worker crashes do not use up the
        failure budget; a graceful shutdown or a database outage hands the attempt back
        without counting it at all.
    :param queue: the queue enqueued executions go to unless the caller says otherwise (a
        name, or a :class:`~durable.Queue`, whose name is taken: its limits are stored where a
        runtime declares it, ``Runtime(queues=[...])``).
    :param registry: where to register (default :data:`durable.registry.default_registry`).
    :param timeout: how long an execution may take (a ``timedelta``, or seconds), counted from
        when it is recorded, on the store's clock: its *deadline* is stored with it. Once the
        deadline passes, the execution is cancelled whether or not a worker runs it at that
        moment (the executor running it stops it; a worker's sweep,
        :meth:`~durable.backends.PersistentBackend.cancel_expired_workflows`, cancels it
        while it sleeps, waits or is queued), with a
        :class:`~durable.errors.DeadlineExceededError` recorded as its error, and its child
        workflows with it. A start may give its own ``timeout`` (replacing this one) or
        ``deadline``. A child workflow's deadline is the earlier of its parent's and its own.
        Applied where the execution is recorded from the decorated function (``run``,
        ``enqueue`` of the function, a child); an enqueue by name only knows the start's
        ``timeout`` / ``deadline``.
    :param version: the code version its executions record (:attr:`WorkflowInfo.code_version
        <durable.WorkflowInfo.code_version>`, at most 64 characters); default: the runtime's
        ``app_version``, else a hash of the function's source (see :mod:`durable.versioning`).

    :raises ConfigurationError: another function is registered under the same name (one
        defined elsewhere; or, under its default name, another function of the same nested
        definition, or another lambda).
    :raises InvalidArgumentError: an option of the wrong type or out of range: an empty or
        overlong ``name`` or ``queue``, a ``max_attempts`` that is not a positive int, a
        ``retry`` that is not a :class:`~durable.retry.RetryPolicy`, or ``fn`` not a function
        (``@durable.workflow("name")`` instead of ``@durable.workflow(name="name")``; a
        ``staticmethod`` object), or without ``name`` a callable with no qualname, or a
        negative ``max_recoveries``, or a ``timeout`` that is not a positive ``timedelta``
        or number of seconds.
    """
    if fn is not None:
        check_decorated(fn, "durable.workflow")
    if name is not None:
        check_name(name, "name")
    # a durable.Queue gives its name (read, not imported: queues are a layer above workflows)
    queue = check_name(queue if isinstance(queue, str) else getattr(queue, "name", queue), "queue")
    check_instance(retry, RetryPolicy, "retry")
    check_instance(registry, Registry, "registry")
    check_instance(description, str, "description")
    limit = None if timeout is None else check_duration(timeout, "timeout")
    check_version(version, "version")
    policy = retry or WORKFLOW_RETRY
    if max_attempts is not None:
        policy = RetryPolicy(
            max_attempts=check_positive_int(max_attempts, "max_attempts"),
            initial_delay=policy.initial_delay,
            backoff_rate=policy.backoff_rate,
            max_delay=policy.max_delay,
            retry_on=policy.retry_on,
            non_retryable=policy.non_retryable,
        )

    def decorate(f: Callable[..., Any]) -> Workflow[Any, Any]:
        check_decorated(f, "durable.workflow")
        if isinstance(f, Workflow):
            raise DurableError(f"{f.name!r} is already a durable workflow")
        kind = AsyncWorkflow if is_async_callable(f) else SyncWorkflow
        wf: Workflow[Any, Any] = kind(
            f,
            name=name or default_name(f, "durable.workflow"),
            retry=policy,
            queue=queue,
            description=description,
            max_recoveries=max_recoveries,
            timeout=limit,
            version=version,
        )
        wf.registry = registry or default_registry
        wf.registry.register(wf)
        return wf

    return decorate(fn) if fn is not None else decorate
