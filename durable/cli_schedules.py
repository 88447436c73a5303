"""``durable schedules ...``: list, pause, resume, trigger and delete cron schedules.

Built by :func:`schedules_group` with the way :mod:`durable.cli` opens a client (on an
existing database, schema checked, not migrated), and registered there with
``main.add_command``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol, TypeVar

import click

from durable.cli_output import emit, json_option, say, when
from durable.client import Client
from durable.models import ScheduleInfo, WorkflowInfo

T = TypeVar("T")


class OpenClient(Protocol):
    """:func:`durable.cli.open_client`: run a coroutine function on a client for a URL."""

    def __call__(self, url: str, fn: Callable[[Client], Awaitable[T]]) -> T: ...


def _stamp(value: datetime | None) -> str:
    return value.isoformat() if value else "-"


def _state(s: ScheduleInfo) -> str:
    return "paused" if s.paused else "active"


def _origin(s: ScheduleInfo) -> str:
    return "code" if s.declared else "client"


def _line(s: ScheduleInfo) -> str:
    return (
        f"{s.name}\t{s.workflow}\t{s.cron}\t{s.timezone}\t{_state(s)}\t"
        f"next={_stamp(s.next_run_at)}\tlast={_stamp(s.last_tick_at)}\tmissed={s.missed.value}"
        f"\tfrom={_origin(s)}"
    )


def schedules_group(open_client: OpenClient) -> click.Group:
    """The ``schedules`` command group, opening clients with ``open_client``."""
    url_argument = click.argument("url", metavar="URL")
    name_argument = click.argument("name")

    @click.group()
    def schedules() -> None:
        """List and control the cron schedules stored at a URL."""

    @schedules.command("list")
    @url_argument
    @json_option
    def list_schedules(url: str, as_json: bool) -> None:
        """List schedules by name: workflow, cron, zone, state, next and last tick (UTC), and
        whether code (@durable.scheduled) or a client created it."""
        emit(
            open_client(url, lambda client: client.list_schedules()),
            as_json=as_json,
            columns=[
                ("name", lambda s: s.name),
                ("workflow", lambda s: s.workflow),
                ("cron", lambda s: s.cron),
                ("zone", lambda s: s.timezone),
                ("state", _state),
                ("next", lambda s: when(s.next_run_at)),
                ("last", lambda s: when(s.last_tick_at)),
                ("missed", lambda s: s.missed.value),
                ("from", _origin),
            ],
            line=_line,
        )

    def one(verb: str, doc: str, op: Callable[[Client, str], Awaitable[Any]]) -> None:
        def command(url: str, name: str) -> None:
            result = open_client(url, lambda client: op(client, name))
            if isinstance(result, ScheduleInfo):
                say(_line(result))
            elif isinstance(result, WorkflowInfo):
                say(f"{result.id}: {result.status.value}")
            elif result is False:
                raise click.ClickException(f"no schedule named {name!r}")
            else:
                say(f"{name}: deleted")

        command.__doc__ = doc
        schedules.command(verb)(url_argument(name_argument(command)))

    one("pause", "Pause a schedule: no tick runs until it is resumed.", Client.pause_schedule)
    one(
        "resume",
        "Resume a paused schedule from its next tick (ticks passed meanwhile do not run).",
        Client.resume_schedule,
    )
    one(
        "trigger",
        "Enqueue one execution of a schedule now; print its id and status.",
        Client.trigger_schedule,
    )
    one(
        "delete",
        "Delete a schedule (its executions are kept; one declared in code comes back when a "
        "worker declaring it starts).",
        Client.delete_schedule,
    )
    return schedules
