"""Continue-as-new: ``durable.continue_as_new(*args, **kwargs)`` ends a workflow's run and
starts it again, under the same id, with new arguments and an empty history.

A workflow that loops for months (an entity, a subscription, a poller) would otherwise replay an
ever longer history on every resume. Calling :func:`continue_as_new` instead of looping bounds
it: the run ends at once (like ``raise``), and in one transaction, fenced by the workflow's
lease (:meth:`~durable.backends.PersistentBackend.continue_as_new`), its history is deleted,
the new arguments become its input, its ``continuations`` counter grows by one, and it is due at
once. Any worker (this one first) then starts the next run from the new input.

What stays the same, by design:

* **the id**: whoever addresses the workflow by id (a :meth:`Client.result
  <durable.Client.result>`, a parent awaiting it as a child, messages sent to it) still
  reaches it; :meth:`Client.result <durable.Client.result>` returns the outcome of the run
  that finally returns;
* the idempotency key, the parent, queue, priority, ``max_attempts`` and the **deadline** (a
  timeout bounds the whole execution, across its runs);
* rows other than its history that are keyed by the workflow id (messages waiting for it,
  events it published) are not touched.

What is reset: the history (its steps, and steps handed to other workers not done yet), the
output and error, ``attempts`` and ``interruptions``. The previous run is linked by the id and
the counter: :attr:`WorkflowInfo.continuations <durable.WorkflowInfo.continuations>` says how
many runs came before; their histories are gone. Child workflows a run started keep running
(their ids, ``<id>/<position>`` in the first run, are ``<id>/<run>.<position>`` in later runs, so
a later run never mistakes an earlier run's child for its own).

A crash before the continuation is recorded replays the run, which reaches the same
``continue_as_new`` call (its arguments come from recorded steps) and records it then; a crash
after it starts the new run from its empty history.
"""

from __future__ import annotations

from typing import Any, NoReturn

from durable.context import WorkflowSuspended, current
from durable.errors import ControlFlow, DurableError, SerializationError
from durable.registry import Registry


class ContinueAsNew(ControlFlow):
    """Internal: raised by :func:`continue_as_new` to end the run; the runtime records the
    continuation. A BaseException, so that ``except Exception`` in workflow code cannot swallow
    it."""

    def __init__(self, workflow_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__(f"workflow {workflow_id!r} continues as new")
        self.workflow_id = workflow_id
        self.args = args
        self.kwargs = kwargs

    @property
    def input(self) -> dict[str, Any]:
        """The new run's input, as an execution's input is stored."""
        return {"args": list(self.args), "kwargs": self.kwargs}


class WorkflowContinued(WorkflowSuspended):
    """Internal: the run ended with :func:`continue_as_new`, which is recorded; the next run is
    due at once. A :class:`~durable.context.WorkflowSuspended`, so that workers and ``run``
    treat it as a hand-back (``run`` looks again at once)."""

    def __init__(self, workflow_id: str) -> None:
        BaseException.__init__(self, f"workflow {workflow_id!r} continued as new")
        self.workflow_id = workflow_id


def continue_as_new(*args: Any, **kwargs: Any) -> NoReturn:
    """End the current workflow's run and start it again with ``args`` and ``kwargs`` as its
    arguments and an empty history, under the same id (see the module's docstring for what is
    kept and what is reset). Like ``raise``, it does not return; call it from an async or a sync
    workflow, where a loop would go round again::

        @durable.workflow(name="accounts.entity.v1")
        async def entity(account_id: str, balance: int) -> None:
            for _ in range(100):
                balance += await apply_next_event(account_id)
            durable.continue_as_new(account_id, balance)

    Do not call it beside running steps (``asyncio.gather``): their outcomes would be recorded
    into a history that is about to be deleted, or refused.

    :raises DurableError: called outside a workflow (or inside a step).
    :raises InvalidArgumentError: the workflow's function cannot take the arguments (raised
        here, in the workflow, before anything is recorded: the run fails with it, as with any
        error its code raises, and its history is kept).
    :raises SerializationError: the arguments cannot be serialized by the backend's serializer
        (raised here, in the workflow, before anything is recorded).
    """
    ctx = current()
    if ctx is None:
        raise DurableError(
            "durable.continue_as_new() was called outside a workflow (or inside a step)"
        )
    registry = getattr(ctx.runtime, "registry", None)  # a runtime's (a test's host: none)
    if isinstance(registry, Registry) and ctx.workflow_name in registry:
        # the run's own code: may it take them? As enqueue asks, before anything is recorded
        check = getattr(registry.get(ctx.workflow_name), "check_arguments", None)
        if check is not None:
            check(args, kwargs)
    signal = ContinueAsNew(ctx.workflow_id, args, kwargs)
    try:
        ctx.runtime.backend.serializer.dumps(signal.input)
    except SerializationError as exc:
        raise SerializationError(
            f"the arguments workflow {ctx.workflow_id!r} continues as new with cannot be "
            f"serialized: {exc}"
        ) from exc
    raise signal


__all__ = ["ContinueAsNew", "WorkflowContinued", "continue_as_new"]
