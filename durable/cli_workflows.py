"""``durable workflows list | show | watch``, ``durable queues`` and ``durable executors``: the
commands an operator reads a database with.

:func:`add_workflow_commands` adds them to :mod:`durable.cli`'s ``workflows`` group and
:func:`executors_command` builds ``durable executors``, both with the way the CLI opens a
client (an existing database, schema checked, not migrated).

``workflows list`` filters by status and name in the database (``Client.list_workflows``); the
backend has no queue or time filter, so ``--queue``, ``--since`` and ``--until`` are applied
here, over the pages it reads newest first: ``--since`` stops the scan at the first older
execution, while ``--queue`` and ``--until`` skip rows and may read many pages to fill
``--limit``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol, TypeVar

import click

from durable.backends.rows import CORRUPT_ROW
from durable.cli_output import (
    STATUS_CHOICE,
    Seconds,
    bar,
    checked_id,
    count_range,
    emit,
    json_option,
    jsonable,
    label_pairs,
    moment,
    say,
    seconds,
    serializer_hint,
    stamp,
    stdout_is_terminal,
    when,
)
from durable.client import Client
from durable.errors import BackendUnavailableError
from durable.inspection import left_unfinished, unfinished_text
from durable.models import ExecutorInfo, StepRecord, WorkflowInfo
from durable.overview import queue_rows, shown_children, status_counts

T = TypeVar("T")

#: Workflows counted at most per status by ``watch`` (more shows as ``N+``).
#: Rows read per page when the listing filters in Python.
SCAN_PAGE = 200


class OpenClient(Protocol):
    """:func:`durable.cli.open_client`: run a coroutine function on a client for a URL."""

    def __call__(self, url: str, fn: Callable[[Client], Awaitable[T]]) -> T: ...


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


async def select_workflows(
    client: Client,
    *,
    statuses: tuple[str, ...] = (),
    name: str | None = None,
    queue: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    labels: dict[str, str] | None = None,
) -> list[WorkflowInfo]:
    """Up to ``limit`` executions, newest first, with one of ``statuses`` (any when empty),
    ``name``, ``queue``, every one of ``labels`` (filtered by the database, by its index),
    created at or after ``since`` and at or before ``until``."""
    in_python = queue is not None or since is not None or until is not None
    found: list[WorkflowInfo] = []
    cursor: str | None = None
    while True:
        page = await client.list_workflows(
            status=list(statuses) or None,
            name=name,
            limit=max(limit, SCAN_PAGE) if in_python else limit,
            cursor=cursor,
            labels=labels,
        )
        for info in page.items:
            created = _aware(info.created_at)
            if since is not None and created is not None and created < since:
                return found  # newest first: every later row is older still
            if until is not None and created is not None and created > until:
                continue
            if queue is not None and info.queue != queue:
                continue
            found.append(info)
            if len(found) == limit:
                return found
        if page.next_cursor is None or not page.items:
            return found
        cursor = page.next_cursor


def _note(info: WorkflowInfo) -> str:
    error = info.error
    if error is None or error.type != CORRUPT_ROW:
        return ""
    return f"unreadable: {serializer_hint(error.message)}"


def _line(info: WorkflowInfo) -> str:
    note = _note(info)
    return (
        f"{info.id}\t{info.name}\t{info.status.value}\tattempts={info.attempts}\t"
        f"created={stamp(info.created_at)}" + (f"\t{note}" if note else "")
    )


def _steps_timeline(info: WorkflowInfo, steps: list[StepRecord], now: datetime) -> list[str]:
    """One line per step: position, name, status, attempts, executor, start offset, duration,
    and a bar as long as the step took, on a scale from the workflow's start to the last
    step's end. A step left pending by the workflow's end (a cancelled sleep) ends with it."""
    starts = [start for s in steps if (start := _aware(s.started_at)) is not None]
    t0 = _aware(info.started_at) or (min(starts) if starts else None)
    spans: list[tuple[float | None, float | None]] = []
    for s in steps:
        start, end = _aware(s.started_at), _aware(s.completed_at)
        if end is None and left_unfinished(info, s):
            end = _aware(info.completed_at) or start
        if t0 is None or start is None:
            spans.append((None, None))
            continue
        spans.append(((start - t0).total_seconds(), ((end or now) - start).total_seconds()))
    total = max((o + d for o, d in spans if o is not None and d is not None), default=0.0)
    lines = []
    for s, (offset, length) in zip(steps, spans, strict=True):
        drawn = bar(offset, length, total) if offset is not None and length is not None else ""
        status = unfinished_text(info) if left_unfinished(info, s) else s.status.value
        status += " (reruns)" if s.rerun else ""
        child = f" child {s.child_workflow_id}" if s.child_workflow_id else ""
        lines.append(
            f"{s.position:>4}  {s.name:<24.24} {status:<15} x{s.attempts:<3} "
            f"{(s.executor_id or '-'):<16.16} +{seconds(offset):<8} {seconds(length):<8} "
            f"|{drawn}|{child}"
        )
        if s.error is not None:
            lines.append(f"{'':>6}{s.error.type}: {s.error.message}")
    return lines


async def queue_depths(client: Client) -> list[dict[str, object]]:
    """Each queue with unfinished executions: how many wait (pending) and run, and when the
    oldest waiting one was created (:func:`durable.overview.queue_rows`)."""
    return [
        {
            "queue": r.queue,
            "pending": r.pending,
            "running": r.running,
            "oldest": r.oldest_pending,
            "limits": r.limits_text,
        }
        for r in await queue_rows(client)
    ]


def _counts_text(counts: dict[str, int]) -> str:
    return "  ".join(f"{status}={n}" for status, n in counts.items())


def filter_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options that choose executions as ``workflows list`` does: ``--status`` (repeatable),
    ``--name``, ``--queue``, ``--since``, ``--until``, ``--label`` (repeatable; see
    :func:`select_workflows`)."""
    options = [
        click.option(
            "--status",
            "statuses",
            multiple=True,
            type=STATUS_CHOICE,
            help="Only this status (repeatable).",
        ),
        click.option(
            "--name",
            default=None,
            help="Only this workflow name.",
            callback=lambda _c, _p, v: None if v is None else checked_id(v, "--name"),
        ),
        click.option(
            "--queue",
            default=None,
            help="Only this queue.",
            callback=lambda _c, _p, v: None if v is None else checked_id(v, "--queue"),
        ),
        click.option(
            "--since",
            callback=moment,
            default=None,
            help="Only those created since: 30s, 15m, 1h, 7d ago, or an ISO 8601 time.",
        ),
        click.option(
            "--until", callback=moment, default=None, help="Only those created until (same forms)."
        ),
        click.option(
            "--label",
            "labels",
            multiple=True,
            callback=label_pairs,
            metavar="KEY=VALUE",
            help="Only those labelled so (repeatable: every one).",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def add_workflow_commands(workflows: click.Group, open_client: OpenClient) -> None:
    """Add ``list``, ``show`` and ``watch`` to the ``workflows`` group."""
    url_argument = click.argument("url", metavar="URL")
    id_argument = click.argument(
        "workflow_id", callback=lambda _c, _p, v: checked_id(v, "WORKFLOW_ID")
    )

    @workflows.command("list")
    @url_argument
    @filter_options
    @click.option("--limit", default=50, show_default=True, type=count_range())
    @json_option
    def list_workflows(
        url: str,
        statuses: tuple[str, ...],
        name: str | None,
        queue: str | None,
        since: datetime | None,
        until: datetime | None,
        labels: dict[str, str] | None,
        limit: int,
        as_json: bool,
    ) -> None:
        """List executions, newest first. A row that cannot be read is listed with what is
        wrong with it (and its unknown status, if that is what is wrong, shown as failed).

        --queue, --since and --until are applied as the rows are read (the database filters
        by status, name and labels)."""
        found = open_client(
            url,
            lambda client: select_workflows(
                client,
                statuses=statuses,
                name=name,
                queue=queue,
                since=since,
                until=until,
                limit=limit,
                labels=labels,
            ),
        )
        emit(
            found,
            as_json=as_json,
            columns=[
                ("id", lambda i: i.id),
                ("name", lambda i: i.name),
                ("status", lambda i: i.status.value),
                ("queue", lambda i: i.queue),
                ("attempts", lambda i: str(i.attempts)),
                ("created", lambda i: when(i.created_at)),
                ("note", _note),
            ],
            line=_line,
        )

    @workflows.command("show")
    @url_argument
    @id_argument
    def show_workflow(url: str, workflow_id: str) -> None:
        """Print an execution for a person: its header, what it waits for, its steps as a
        timeline (position, name, status, attempts, executor, start offset, duration, a bar as
        long as the step took) and its children."""

        async def read(
            client: Client,
        ) -> tuple[WorkflowInfo, list[StepRecord], str, list[str], int, dict[str, str]]:
            info = await client.get_workflow(workflow_id)
            labels = await client.get_labels(workflow_id)
            steps = await client.list_steps(workflow_id)
            waiting = await client.waiting(workflow_id)
            children, all_children = await shown_children(client, workflow_id)
            described = [f"{c.id}  {c.name}  {c.status.value}" for c in children]
            return info, steps, str(waiting) if waiting else "", described, all_children, labels

        info, steps, waiting, children, all_children, labels = open_client(url, read)
        echo = say  # stored values: an error's message may hold a terminal's escapes
        echo(f"{info.id}  {info.name}  {info.status.value}")
        echo(f"  queue {info.queue}, priority {info.priority}, attempts {info.attempts}")
        echo(f"  code version {info.code_version or 'unknown'}")
        for label, value in (
            ("created", info.created_at),
            ("started", info.started_at),
            ("completed", info.completed_at),
            ("deadline", info.deadline),
        ):
            if value is not None:
                echo(f"  {label:<9} {stamp(value)}")
        if info.parent_id:
            echo(f"  parent    {info.parent_id}")
        if labels:
            echo("  labels    " + ", ".join(f"{k}={v}" for k, v in sorted(labels.items())))
        if info.error is not None:
            echo(f"  error     {info.error.type}: {info.error.message}")
        if waiting:
            echo(f"  {waiting}")
        echo(f"steps ({len(steps)}):")
        now = datetime.now(UTC)
        for line in _steps_timeline(info, steps, now):
            echo(line)
        if children:
            if all_children > len(children):
                echo(f"children ({all_children}, the newest {len(children)} shown):")
            else:
                echo(f"children ({len(children)}):")
            for child in children:
                echo(f"  {child}")

    @workflows.command("watch")
    @url_argument
    @click.option(
        "--interval", default=2.0, show_default=True, type=Seconds(min=0.1),
        help="Seconds between refreshes.",
    )  # fmt: skip
    @click.option(
        "--count", default=None, type=click.IntRange(min=1), help="Stop after N refreshes."
    )
    @click.option("--once", is_flag=True, help="Print the counts once and stop (--count 1).")
    def watch(url: str, interval: float, count: int | None, once: bool) -> None:
        """Show how many executions there are by status (exact counts), refreshed
        every --interval seconds until Ctrl-C. In a terminal the counts are redrawn in place;
        elsewhere one line is printed per refresh.

        While the database cannot be reached (a restart, an outage) it says so on stderr, once
        per outage, and keeps refreshing: the counts come back with the database. A refresh
        that fails does not count towards --count; --once (one refresh) fails at once."""
        rounds = 1 if once else count

        async def run(client: Client) -> None:
            done = 0
            live = None
            unreachable = False
            if stdout_is_terminal():
                from rich.live import Live

                live = Live(_counts_text({}), auto_refresh=False)
                live.start()
            try:
                while rounds is None or done < rounds:
                    if done or unreachable:
                        await asyncio.sleep(interval)
                    try:
                        counts = await status_counts(client)
                    except BackendUnavailableError as exc:
                        if rounds == 1:
                            raise  # one look asked for: the error is the answer
                        if not unreachable:
                            click.echo(f"{exc} (refreshing again every {interval:g}s)", err=True)
                        unreachable = True
                        continue
                    if unreachable:
                        click.echo("the database can be reached again", err=True)
                        unreachable = False
                    text = _counts_text(counts)
                    if live is not None:
                        stamp_now = datetime.now(UTC).isoformat(timespec="seconds")
                        live.update(f"{stamp_now}  {text}", refresh=True)
                    else:
                        click.echo(text)
                    done += 1
            finally:
                if live is not None:
                    live.stop()

        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it is meant to stop
            open_client(url, run)


def queues_command(open_client: OpenClient) -> click.Command:
    """``durable queues URL``: the queues with unfinished executions."""

    @click.command("queues")
    @click.argument("url", metavar="URL")
    @json_option
    def queues(url: str, as_json: bool) -> None:
        """List the queues that hold unfinished executions, and those with stored limits: how
        many wait and run (exact counts), when the oldest waiting one was created, and the
        limits (``durable queues set`` changes them)."""
        emit(
            open_client(url, queue_depths),
            as_json=as_json,
            columns=[
                ("queue", lambda q: str(q["queue"])),
                ("pending", lambda q: str(q["pending"])),
                ("running", lambda q: str(q["running"])),
                ("oldest pending", lambda q: when(_moment(q["oldest"]))),
                ("limits", lambda q: str(q["limits"])),
            ],
            line=lambda q: (
                f"{q['queue']}\tpending={q['pending']}\trunning={q['running']}\t"
                f"oldest={stamp(_moment(q['oldest']))}\tlimits={q['limits']}"
            ),
        )

    return queues


def _moment(value: object) -> datetime | None:
    return value if isinstance(value, datetime) else None


def executors_command(open_client: OpenClient) -> click.Command:
    """``durable executors URL``: the runtimes known by their heartbeats."""

    @click.command("executors")
    @click.argument("url", metavar="URL")
    @click.option(
        "--stale-after",
        type=Seconds(min=0, min_open=True),
        default=None,
        help="Seconds of silence after which a running executor is stale "
        "(default: each by its own heartbeat interval).",
    )
    @json_option
    def executors(url: str, stale_after: float | None, as_json: bool) -> None:
        """List the runtimes (workers, clients that run workflows) known by their heartbeats:
        id, host, pid, started, last heartbeat, stopped, and whether it is stale."""

        def state(e: ExecutorInfo) -> str:
            return "stopped" if e.stopped_at else ("stale" if e.stale else "alive")

        emit(
            open_client(url, lambda client: client.list_executors(stale_after=stale_after)),
            as_json=as_json,
            columns=[
                ("id", lambda e: e.id),
                ("host", lambda e: e.hostname),
                ("pid", lambda e: str(e.pid)),
                ("started", lambda e: when(e.started_at)),
                ("heartbeat", lambda e: when(e.heartbeat_at)),
                ("state", state),
            ],
            line=lambda e: (
                f"{e.id}\t{e.hostname}\t{e.pid}\tstarted={stamp(e.started_at)}\t"
                f"heartbeat={stamp(e.heartbeat_at)}\t{state(e)}"
            ),
            as_object=lambda e: {**jsonable(e), "state": state(e)},
        )

    return executors


__all__ = [
    "OpenClient",
    "add_workflow_commands",
    "executors_command",
    "filter_options",
    "queue_depths",
    "queues_command",
    "select_workflows",
]
