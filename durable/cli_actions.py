"""``durable workflows cancel | retry | resume | fork``: change executions, one by id or many
chosen by the filters of ``workflows list`` (``fork``: one by id).

:func:`add_action_commands` adds them to :mod:`durable.cli`'s ``workflows`` group. Given ids,
a command acts on those (``ID: status`` per line, exit status 1 on the first error, as before
filters existed). Given filters instead (``--status``, ``--name``, ``--queue``, ``--since``,
``--until``; at most ``--limit``), it lists what matches, asks for confirmation (in a terminal;
elsewhere it needs ``--yes``), then acts on each with a progress bar in a terminal, one line per
execution elsewhere; one that cannot be changed (a retry of a running one) is reported and
skipped, and the exit status is 1 if any was. A cancel of an execution that had finished
already changes nothing: its ``ID: status`` line shows the status it kept, stderr says it was
already finished, and the summary counts it apart (not an error).

``resume`` is ``retry`` under the name operators look for: :meth:`Client.resume
<durable.Client.resume>` runs a cancelled, dead-lettered or failed execution again from its
history. ``fork ID --from-step N`` starts a new execution with the first N steps' outputs
copied (:meth:`Client.fork <durable.Client.fork>`) and prints its id.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from datetime import datetime

import click

from durable.cli_output import checked_id, count_range, say, stdout_is_terminal
from durable.cli_workflows import OpenClient, filter_options, select_workflows
from durable.client import Client
from durable.errors import (
    BackendUnavailableError,
    DurableError,
    InvalidArgumentError,
    NotFoundError,
)
from durable.models import WorkflowInfo, WorkflowStatus

#: What each action does, the statuses it acts on when filtering without --status, and its
#: Client operation.
ACTIONS: dict[
    str, tuple[str, tuple[WorkflowStatus, ...], Callable[[Client, str], Awaitable[WorkflowInfo]]]
] = {
    "cancel": (
        "Cancel unfinished executions (each stops at its next step boundary; its descendants "
        "are cancelled with it).",
        (WorkflowStatus.PENDING, WorkflowStatus.RUNNING),
        Client.cancel,
    ),
    "retry": (
        "Run failed, dead-lettered or cancelled executions again (completed steps are kept).",
        (WorkflowStatus.FAILED, WorkflowStatus.DEAD_LETTER, WorkflowStatus.CANCELLED),
        Client.retry,
    ),
    "resume": (
        "Resume cancelled, dead-lettered or failed executions from their history: the same as "
        "`durable workflows retry`.",
        (WorkflowStatus.CANCELLED, WorkflowStatus.DEAD_LETTER, WorkflowStatus.FAILED),
        Client.resume,
    ),
}


def stdin_is_terminal() -> bool:
    """Whether a person can answer a question (stdin is a terminal)."""
    return sys.stdin.isatty()


def add_action_commands(workflows: click.Group, open_client: OpenClient) -> None:
    """Add ``cancel``, ``retry``, ``resume`` and ``fork`` to the ``workflows`` group."""
    for verb, (doc, default_statuses, op) in ACTIONS.items():
        workflows.command(verb)(_action(verb, doc, default_statuses, op, open_client))
    workflows.add_command(_fork_command(open_client))


def _fork_command(open_client: OpenClient) -> click.Command:
    @click.command("fork")
    @click.argument("url", metavar="URL")
    @click.argument("workflow_id", callback=lambda _c, _p, v: checked_id(v, "WORKFLOW_ID"))
    @click.option(
        "--from-step", "from_step", required=True, type=count_range(min=0), metavar="N",
        help="The position of the first step that runs again (the numbers `workflows show` "
        "prints, from 0); the steps before it replay their recorded outputs.",
    )  # fmt: skip
    @click.option(
        "--id", "new_id", default=None, metavar="NEW_ID",
        callback=lambda _c, _p, v: None if v is None else checked_id(v, "--id"),
        help="The new execution's id (default: a new random one).",
    )  # fmt: skip
    def fork(url: str, workflow_id: str, from_step: int, new_id: str | None) -> None:
        """Start a new execution of WORKFLOW_ID's workflow, with its input, whose steps before
        --from-step N replay WORKFLOW_ID's recorded outputs and whose steps from N on run for
        real (after fixing a bug in step N, say). Prints the new execution's id; WORKFLOW_ID
        is not changed."""

        async def run(client: Client) -> str:
            return await client.fork(workflow_id, from_step=from_step, new_workflow_id=new_id)

        say(open_client(url, run))

    return fork


def _action(
    verb: str,
    doc: str,
    default_statuses: tuple[WorkflowStatus, ...],
    op: Callable[[Client, str], Awaitable[WorkflowInfo]],
    open_client: OpenClient,
) -> Callable[..., None]:
    @click.argument("url", metavar="URL")
    @click.argument(
        "workflow_ids",
        nargs=-1,
        metavar="[ID]...",
        # each id once, in the order given: a second act on one id would be refused (it is
        # no longer in a state for it) after the first did the job
        callback=lambda _c, _p, v: tuple(dict.fromkeys(checked_id(i, "WORKFLOW_ID") for i in v)),
    )
    @filter_options
    @click.option(
        "--limit", default=1000, show_default=True, type=count_range(),
        help="At most this many executions chosen by filters.",
    )  # fmt: skip
    @click.option("--yes", is_flag=True, help="Do not ask for confirmation (filters only).")
    def command(
        url: str,
        workflow_ids: tuple[str, ...],
        statuses: tuple[str, ...],
        name: str | None,
        queue: str | None,
        since: datetime | None,
        until: datetime | None,
        labels: dict[str, str] | None,
        limit: int,
        yes: bool,
    ) -> None:
        filtering = bool(statuses or name or queue or since or until or labels)
        if workflow_ids and filtering:
            raise click.UsageError("give ids or filters, not both")
        if workflow_ids:

            async def each_id(client: Client) -> int:
                """Each id in turn, one refused (unknown, or not in a state for it) not
                stopping the rest; returns how many were refused."""
                refused = 0
                for workflow_id in workflow_ids:
                    try:
                        info = await op(client, workflow_id)
                    except BackendUnavailableError:
                        raise  # the rest would fail alike: one error, as any command's
                    except DurableError as exc:
                        running = await _running_already(client, verb, workflow_id, exc)
                        if running is None:
                            refused += 1
                            say(f"{workflow_id}: could not {verb}: {exc}", err=True)
                        else:
                            say(f"{running.id}: {running.status.value}")
                            say(
                                f"{running.id}: not finished ({running.status.value}): "
                                f"nothing to {verb}",
                                err=True,
                            )
                    else:
                        say(f"{info.id}: {info.status.value}")
                        _note_unchanged(verb, info)
                return refused

            if open_client(url, each_id):
                click.get_current_context().exit(1)
            return
        if not filtering:
            raise click.UsageError("give the ids to act on, or filters (e.g. --status, --name)")
        chosen = statuses or tuple(s.value for s in default_statuses)

        async def run(client: Client) -> int:
            found = await select_workflows(
                client,
                statuses=chosen,
                name=name,
                queue=queue,
                since=since,
                until=until,
                limit=limit,
                labels=labels,
            )
            if not found:
                click.echo(f"no execution matches: nothing to {verb}", err=True)
                return 0
            if not yes:
                question = f"{verb} {len(found)} execution(s)"
                if not stdin_is_terminal():
                    raise click.UsageError(f"this would {question}: pass --yes to confirm")
                if not click.confirm(f"{question.capitalize()}?"):
                    raise click.Abort()
            return await _each(client, found, verb, op)

        failures = open_client(url, run)
        if failures:
            click.get_current_context().exit(1)

    command.__doc__ = (
        f"{doc}\n\nGive IDs, or filters choosing them as `workflows list` does (by default "
        f"the {', '.join(s.value for s in default_statuses)} ones); with filters it asks "
        "first (--yes: it does not) and shows its progress."
    )
    return command


async def _each(
    client: Client,
    found: list[WorkflowInfo],
    verb: str,
    op: Callable[[Client, str], Awaitable[WorkflowInfo]],
) -> int:
    """Apply ``op`` to each execution; report each (a progress bar in a terminal); return how
    many failed."""
    failures = 0
    unchanged = 0
    progress = None
    if stdout_is_terminal():
        from rich.progress import Progress

        progress = Progress()
        progress.start()
    task = progress.add_task(verb, total=len(found)) if progress is not None else None
    try:
        for info in found:
            try:
                done = await op(client, info.id)
            except DurableError as exc:
                failures += 1
                say(f"{info.id}: could not {verb}: {exc}", err=True)
            else:
                if progress is None:
                    say(f"{done.id}: {done.status.value}")
                if _unchanged(verb, done):
                    unchanged += 1
                    _note_unchanged(verb, done)
            if progress is not None and task is not None:
                progress.advance(task)
    finally:
        if progress is not None:
            progress.stop()
    acted = len(found) - failures - unchanged
    note = f" ({unchanged} had already finished: unchanged)" if unchanged else ""
    click.echo(f"{acted} of {len(found)} execution(s): {verb} done{note}", err=True)
    return failures


async def _running_already(
    client: Client, verb: str, workflow_id: str, refusal: DurableError
) -> WorkflowInfo | None:
    """The execution a retry or resume refused because it is not finished (pending or
    running: run again already, by an act on its parent given before it, say), else None."""
    if verb == "cancel" or not isinstance(refusal, InvalidArgumentError):
        return None
    try:
        info = await client.get_workflow(workflow_id)
    except NotFoundError:
        return None
    return None if info.status.is_terminal else info


def _unchanged(verb: str, info: WorkflowInfo) -> bool:
    """Whether ``verb`` left the execution as it was: a cancel of one that had finished
    (:meth:`Client.cancel <durable.Client.cancel>` changes nothing then)."""
    return verb == "cancel" and info.status is not WorkflowStatus.CANCELLED


def _note_unchanged(verb: str, info: WorkflowInfo) -> None:
    if _unchanged(verb, info):
        say(
            f"{info.id}: already finished ({info.status.value}): nothing to {verb}",
            err=True,
        )


__all__ = ["ACTIONS", "add_action_commands"]
