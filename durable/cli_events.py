"""``durable events URL [--after N] [--limit N] [--follow] [--json]``: the change feed
(:meth:`durable.Client.events`), for projections, audit logs and a look at what happens.

A listing prints one page (a table on a terminal, tab-separated lines otherwise, a JSON array
with ``--json``) and, on stderr, the position to pass as ``--after`` to read on. ``--follow``
prints every event as it appears (a JSON object per line with ``--json``) until interrupted,
or until ``--count`` events were printed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import click

from durable.cli_output import (
    Seconds,
    count_range,
    emit,
    json_option,
    json_text,
    jsonable,
    say,
    stamp,
    when,
)
from durable.client import Client
from durable.models import ChangeEvent

T = TypeVar("T")


class OpenClient(Protocol):
    """:func:`durable.cli.open_client`: run a coroutine function on a client for a URL."""

    def __call__(self, url: str, fn: Callable[[Client], Awaitable[T]]) -> T: ...


def _step(event: ChangeEvent) -> str:
    if event.step_position is not None:
        return f"{event.step_position}:{event.step_name}"
    return event.step_name or ""


def _line(event: ChangeEvent) -> str:
    return (
        f"{event.position}\t{event.kind.value}\t{event.workflow_id}\t{event.workflow_name}\t"
        f"{event.status or '-'}\t{_step(event) or '-'}\t{stamp(event.time)}"
    )


def events_command(open_client: OpenClient) -> click.Command:
    """``durable events URL``: the change feed."""

    @click.command("events")
    @click.argument("url", metavar="URL")
    @click.option(
        "--after",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        help="Print the events after this position (the last one read).",
    )
    @click.option(
        "--limit",
        type=count_range(),
        default=100,
        show_default=True,
        help="Events per page.",
    )
    @click.option("--follow", is_flag=True, help="Print events as they appear, until interrupted.")
    @click.option(
        "--interval",
        type=Seconds(min=0, min_open=True),
        default=0.5,
        show_default=True,
        help="Seconds between reads while following, once nothing is new.",
    )
    @click.option(
        "--count",
        type=click.IntRange(min=1),
        default=None,
        help="With --follow: stop after this many events.",
    )
    @json_option
    def events(
        url: str,
        after: int,
        limit: int,
        follow: bool,
        interval: float,
        count: int | None,
        as_json: bool,
    ) -> None:
        """Print the change feed: executions created, started and finished, steps recorded
        (pending, sleeping, waiting for a message), messages sent, in one global order. Pass
        the last position printed as --after to read on (nothing is missed)."""
        if count is not None and not follow:
            raise click.UsageError("--count goes with --follow (a page holds --limit events)")
        if follow:
            open_client(url, lambda client: _follow(client, after, interval, count, as_json))
            return
        found = open_client(url, lambda client: client.events(after=after, limit=limit))
        emit(
            found,
            as_json=as_json,
            columns=[
                ("position", lambda e: str(e.position)),
                ("kind", lambda e: e.kind.value),
                ("workflow", lambda e: e.workflow_id),
                ("name", lambda e: e.workflow_name),
                ("status", lambda e: e.status or ""),
                ("step", _step),
                ("time", lambda e: when(e.time)),
            ],
            line=_line,
        )
        if found:
            click.echo(f"next: --after {found[-1].position}", err=True)

    return events


async def _follow(
    client: Client, after: int, interval: float, count: int | None, as_json: bool
) -> None:
    printed = 0
    async for event in client.follow_events(after=after, poll_interval=interval):
        if as_json:
            click.echo(json_text(jsonable(event)))
        else:
            say(_line(event))
        printed += 1
        if count is not None and printed >= count:
            return


__all__ = ["events_command"]
