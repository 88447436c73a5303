"""Changing a workflow's code while executions are in flight: ``durable.patched`` and
``durable.deprecate_patch``.

A patch is a marker recorded in the workflow's history, at a position of its own (like a step,
named ``durable.patch:<patch id>``). Where the code asks ``if durable.patched("fee-v2"):``:

* the history has that marker at the next position: the execution took the new branch before
  (True, the position is replayed);
* the history has something else there: the execution passed this point under the old code
  (False, and no position is taken: the old branch replays what it recorded);
* the history has nothing there: the execution reaches this point for the first time, under
  the new code: the marker is recorded and the new branch taken (True).

So the choice is made once per execution and recorded (a patch id checked again later in the
execution gives the same answer, without a marker of its own); every later replay makes the
same one,
and a replay whose code does not match its history (the marker where a step was recorded, or
a step where the marker was) still fails with :class:`~durable.errors.NonDeterminismError`.

``durable.deprecate_patch("fee-v2")`` is for the cleanup, once no execution that took the old
branch is still in flight: the code keeps only the new branch; executions that recorded the
marker replay it (the position is taken), new ones record nothing. Once no execution that
recorded the marker is in flight either, the call can go.

In a sync workflow the marker is recorded before ``patched`` returns. In an async workflow
``patched`` (a plain call) cannot wait for a write: the marker is recorded by the execution's
next write, before it (:meth:`~durable.context.ExecutionContext.record_markers`: the next
step, sleep, message, event, child, or the outcome), so a later position is never recorded
without it. If the process dies before, nothing after the marker was recorded either: the
position is empty, and a replay reaches it "for the first time" again and makes the same
choice.
"""

from __future__ import annotations

import threading

from durable.context import ExecutionContext, StepGuard, current
from durable.errors import DurableError
from durable.validation import check_name

#: The prefix of the name a patch marker is recorded under: ``durable.patch:<patch id>``.
PATCH_STEP_PREFIX = "durable.patch:"


def patch_step_name(patch_id: str) -> str:
    """The name the marker of ``patch_id`` is recorded under in a history."""
    return f"{PATCH_STEP_PREFIX}{patch_id}"


def patched(patch_id: str) -> bool:
    """Whether the current execution takes the new code path of the change ``patch_id``::

        if durable.patched("fee-v2"):
            fee = compute_fee_v2(order)      # new executions
        else:
            fee = compute_fee(order)         # executions that passed here before the change

    True for executions that reach this point for the first time (the marker is recorded in
    their history), and for those that recorded the marker before; False for executions whose
    history shows they passed this point without it (they replay the old branch). Outside a
    workflow (and inside a step) it is True: the new code is the code.

    Patch ids are names (like step names): keep each one for one change, and never reuse one.
    One change may check its id at several places (``if durable.patched("fee-v2")`` where the
    fee is computed and again where it is refunded): the first check an execution reaches
    decides, records its marker if it takes the new branch, and every later check of that id
    in the execution answers the same, without a marker of its own, so an execution in flight
    at the deploy takes the old branch or the new one everywhere, never a mix.

    :raises InvalidArgumentError: ``patch_id`` is empty, too long or not valid Unicode.
    :raises NonDeterminismError: the replay already diverged.
    """
    check_name(patch_id, "the patch id")
    ctx = current()
    if ctx is None:
        return True
    name = patch_step_name(patch_id)
    chosen = ctx.patch_choices.get(patch_id)
    if chosen is not None:
        # asked before in this execution: the same branch. A marker that an earlier version of
        # durable recorded at this check too is replayed (its position taken), none is recorded
        ctx.marker(name, record_new=False)
        return chosen
    taken, guard = ctx.marker(name, record_new=not ctx.history_complete)
    if guard is not None and not guard.replayed and not ctx.replay_only:
        _record(ctx, guard)
    ctx.patch_choices[patch_id] = taken
    return taken


def deprecate_patch(patch_id: str) -> None:
    """Mark where ``durable.patched(patch_id)`` was, once only its new branch is left::

        durable.deprecate_patch("fee-v2")
        fee = compute_fee_v2(order)

    Executions that recorded the patch's marker replay it here; others (new ones, and those
    that never reached this point before) record nothing. Deploy it once no execution that took
    the old branch is in flight; remove the call once none that recorded the marker is.
    Outside a workflow it does nothing.

    :raises InvalidArgumentError: ``patch_id`` is empty, too long or not valid Unicode.
    :raises NonDeterminismError: the replay already diverged.
    """
    check_name(patch_id, "the patch id")
    ctx = current()
    if ctx is None:
        return
    ctx.marker(patch_step_name(patch_id), record_new=False)


def _record(ctx: ExecutionContext, guard: StepGuard) -> None:
    """Record a new marker: at once from a sync workflow's thread; by the next write of an
    async workflow (see the module's docstring)."""
    if ctx.is_async:
        ctx.unrecorded_markers.append(guard)
        return
    if threading.get_ident() == ctx.loop_thread:  # pragma: no cover - guarded by the API
        raise DurableError("durable.patched() of a sync workflow ran on the loop's thread")
    guard.succeed_blocking(True)
