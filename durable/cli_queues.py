"""``durable queues``: the queues' depths and limits (``durable queues URL``, as ``durable queues
list URL``), and their stored limits changed (``durable queues set URL NAME --concurrency 5``)
or forgotten (``durable queues delete URL NAME``). Every worker's next claim obeys a change."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import click

from durable.backends.base import MAX_RATE_PERIOD
from durable.cli_output import emit, json_option
from durable.client import Client
from durable.models import QueueInfo
from durable.queues import describe_limits
from durable.validation import INT32_MAX

T = TypeVar("T")
#: what ``none`` converts to: remove the limit (None is "not given")
_NONE = "none"


class OpenClient(Protocol):
    """Runs ``fn`` with a client of the database at ``url`` (the CLI's own)."""

    def __call__(self, url: str, fn: Callable[[Client], Awaitable[T]]) -> T: ...


class _ListByDefault(click.Group):
    """A group whose first argument, when it names no subcommand, is ``list``'s: ``durable
    queues URL`` is ``durable queues list URL``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["list", *args]
        return super().parse_args(ctx, args)


class _Limit(click.ParamType):  # type: ignore[type-arg]
    """A limit: a positive int (at most the largest 32-bit signed integer), or ``none`` to
    remove it."""

    name = "N|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return value
        if str(value).lower() == "none":
            return _NONE
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a positive int nor 'none'", param, ctx)
        if number < 1:
            self.fail(f"{value!r} is not a positive int", param, ctx)
        if number > INT32_MAX:
            self.fail(f"{value!r} is above {INT32_MAX}", param, ctx)
        return number


class _Rate(click.ParamType):  # type: ignore[type-arg]
    """A rate limit ``STARTS/SECONDS`` (``100/60``: STARTS a positive int, SECONDS a finite
    number above 0 and below :data:`~durable.backends.base.MAX_RATE_PERIOD`), or ``none``."""

    name = "STARTS/SECONDS|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        if str(value).lower() == "none":
            return _NONE
        starts, _, seconds = str(value).partition("/")
        try:
            rate = (int(starts), float(seconds))
        except ValueError:
            self.fail(f"{value!r} is not STARTS/SECONDS (e.g. 100/60) nor 'none'", param, ctx)
        if not 1 <= rate[0] <= INT32_MAX:
            self.fail(f"{value!r}: STARTS must be a whole number from 1 to {INT32_MAX}", param, ctx)
        if not 0 < rate[1] < MAX_RATE_PERIOD:  # False for nan
            self.fail(
                f"{value!r}: SECONDS must be a number above 0 and below {MAX_RATE_PERIOD:.0f}",
                param,
                ctx,
            )
        return rate


def _info(q: QueueInfo) -> dict[str, object]:
    return {
        "name": q.name,
        "concurrency": q.concurrency,
        "worker_concurrency": q.worker_concurrency,
        "rate_limit": q.rate_limit,
        "rate_period": q.rate_period,
        "partition_concurrency": q.partition_concurrency,
        "limits": describe_limits(q),
    }


def queues_group(open_client: OpenClient, list_command: click.Command) -> click.Group:
    """The ``durable queues`` group: ``list`` (the default), ``set``, ``delete``."""

    @click.group("queues", cls=_ListByDefault)
    def queues() -> None:
        """The queues: their depths and limits (``durable queues URL``), and their limits
        changed (``set``) or forgotten (``delete``)."""

    queues.add_command(list_command, "list")

    @queues.command("set")
    @click.argument("url", metavar="URL")
    @click.argument("name")
    @click.option("--concurrency", type=_Limit(), help="At most N at once.")
    @click.option("--worker-concurrency", type=_Limit(), help="At most N at once per worker.")
    @click.option("--rate-limit", type=_Rate(), help="At most STARTS per SECONDS (100/60).")
    @click.option(
        "--partition-concurrency",
        type=_Limit(),
        help="At most N at once per partition key.",
    )
    @json_option
    def set_limits(url: str, name: str, as_json: bool, **limits: Any) -> None:
        """Set limits of queue NAME (others are kept; ``none`` removes one); every worker's
        next claim obeys them."""
        given = {k: None if v == _NONE else v for k, v in limits.items() if v is not None}
        if not given:
            raise click.UsageError("give at least one limit to set (see --help)")

        async def update(client: Client) -> QueueInfo:
            return await client.update_queue(name, **given)

        stored = open_client(url, update)
        emit(
            [_info(stored)],
            as_json=as_json,
            columns=[("queue", lambda q: str(q["name"])), ("limits", lambda q: str(q["limits"]))],
            line=lambda q: f"{q['name']}\tlimits={q['limits']}",
        )

    @queues.command("delete")
    @click.argument("url", metavar="URL")
    @click.argument("name")
    def delete(url: str, name: str) -> None:
        """Forget the limits of queue NAME (its executions run without limits)."""

        async def forget(client: Client) -> bool:
            return await client.delete_queue(name)

        if not open_client(url, forget):
            raise click.ClickException(f"no queue named {name!r} is stored")
        click.echo(f"queue {name!r}: limits removed")

    return queues
