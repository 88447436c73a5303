"""``durable gc URL --older-than 30d``: delete finished executions older than a period, in
batches, with a progress bar and a summary (see :mod:`durable.retention`).

Built by :func:`gc_command` with the way :mod:`durable.cli` opens a client (on an existing
database, schema checked, not migrated), and registered there with ``main.add_command``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Protocol, TypeVar

import click

from durable.cli_output import Seconds, count_range
from durable.client import Client
from durable.validation import MAX_DELAY_SECONDS

T = TypeVar("T")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"(\d+)([smhdw])")


class OpenClient(Protocol):
    """:func:`durable.cli.open_client`: run a coroutine function on a client for a URL."""

    def __call__(self, url: str, fn: Callable[[Client], Awaitable[T]]) -> T: ...


def parse_age(text: str) -> timedelta:
    """A duration such as ``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or ``1d12h``.

    :raises ValueError: anything else (no unit, an unknown unit, zero).
    """
    value = text.strip().lower()
    parts = _AGE.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(
            f"{text!r} is not a duration: give a number and a unit, s, m, h, d or w "
            f"(e.g. 30d, 12h, 1d12h)"
        )
    try:
        age = timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in parts))
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration") from None
    if age <= timedelta(0):
        raise ValueError(f"{text!r}: the duration must be above zero")
    if age.total_seconds() > MAX_DELAY_SECONDS:
        raise ValueError(f"{text!r} is too long a duration: at most 100 years (36500d)")
    return age


def _age_option(ctx: click.Context, param: click.Parameter, value: str) -> timedelta:
    """``--older-than`` read by :func:`parse_age` (a usage error otherwise)."""
    try:
        return parse_age(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def shown_age(age: timedelta) -> str:
    """``age`` as :func:`parse_age` reads it: ``30d``, ``1d12h``, ``90m`` -> ``1h30m``."""
    seconds = int(age.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


def _plural(count: int) -> str:
    return f"{count} execution{'' if count == 1 else 's'}"


def gc_command(open_client: OpenClient) -> click.Command:
    """The ``gc`` command, opening clients with ``open_client``."""

    @click.command("gc", short_help="Delete finished executions older than a period.")
    @click.argument("url", metavar="URL")
    @click.option(
        "--older-than",
        "older_than",
        required=True,
        metavar="DURATION",
        callback=_age_option,
        help="Delete executions that finished longer ago than this (30d, 12h, 90m, 2w).",
    )
    @click.option("--name", "names", multiple=True, help="Only this workflow name (repeatable).")
    @click.option("--queue", "queues", multiple=True, help="Only this queue (repeatable).")
    @click.option(
        "--batch",
        default=1000,
        show_default=True,
        type=count_range(),
        help="Executions deleted per transaction.",
    )
    @click.option(
        "--pause",
        default=0.0,
        show_default=True,
        type=Seconds(min=0.0, max=3600.0),
        help="Seconds to pause between batches (leaves the database to workers).",
    )
    @click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
    def gc(
        url: str,
        older_than: timedelta,
        names: tuple[str, ...],
        queues: tuple[str, ...],
        batch: int,
        pause: float,
        dry_run: bool,
    ) -> None:
        """Delete the executions stored at URL that finished (succeeded, failed, cancelled or
        dead-lettered) longer ago than --older-than, with their steps, messages, events and
        streams, BATCH per transaction (workers keep claiming meanwhile). Unfinished executions
        are kept, and so are finished children of unfinished parents. Interrupted, it leaves
        a consistent store: run it again to finish."""
        only_names = list(names) or None
        only_queues = list(queues) or None

        async def run(client: Client) -> tuple[int, int]:
            total = await client.count_finished(older_than, names=only_names, queues=only_queues)
            if dry_run or total == 0:
                return total, 0
            with click.progressbar(
                length=total, label="deleting", file=sys.stderr, show_pos=True
            ) as bar:
                deleted = await client.delete_finished(
                    older_than,
                    names=only_names,
                    queues=only_queues,
                    batch=batch,
                    pause=pause,
                    on_batch=bar.update,
                )
            return total, deleted

        total, deleted = open_client(url, run)
        scope = "".join(
            [
                f" of {', '.join(names)}" if names else "",
                f" on {', '.join(queues)}" if queues else "",
            ]
        )
        age = f"that finished more than {shown_age(older_than)} ago"
        if dry_run:
            click.echo(f"dry run: {_plural(total)}{scope} {age} would be deleted")
        elif total == 0:
            click.echo(f"nothing to delete: no execution{scope} {age}")
        else:
            click.echo(f"deleted {_plural(deleted)}{scope} {age}")

    return gc
