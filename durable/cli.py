"""The ``durable`` command line.

Every command is a small function on the :func:`main` group. To add one, decorate a function with
``@main.command()``; a family of commands (``durable workflows list``, ...) is a
:func:`click.group` of its own, registered with ``main.add_command``. Commands that work on a
database take its URL as their first argument and open it with :func:`open_backend`, which turns
durable's errors into a one-line message and exit status 1; the ``durable workflows`` commands
go through a :class:`~durable.Client` opened by :func:`open_client`.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from durable.cli_actions import add_action_commands
from durable.cli_events import events_command
from durable.cli_gc import gc_command
from durable.cli_output import (
    Seconds,
    checked_id,
    chosen_serializer,
    count_range,
    emit,
    json_option,
    json_text,
    jsonable,
    log_to_stderr,
    reported_errors,
    serializer_option,
    stamp,
    when,
)
from durable.cli_queues import queues_group
from durable.cli_replay import add_replay_commands
from durable.cli_schedules import schedules_group
from durable.cli_workflows import add_workflow_commands, executors_command, queues_command
from durable.client import Client
from durable.errors import SchemaVersionError
from durable.inspection import Waiting
from durable.models import Message, StepRecord
from durable.runtime import Runtime
from durable.worker import serve, step_threads_left

# The SQL backend (SQLAlchemy's asyncio extension, the drivers, Alembic) is imported by the
# commands that open a database, so that `durable --help` and `durable worker` start fast.
if TYPE_CHECKING:
    from durable.backends.sql import SQLAlchemyBackend

T = TypeVar("T")

url_argument = click.argument("url", metavar="URL")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="durable-sqla", prog_name="durable")
@click.option("-v", "--verbose", count=True, help="Log what is done (-vv: debug).")
def main(verbose: int) -> None:
    """Durable workflows: manage the database they are stored in.

    URL is a database URL: sqlite:///app.db or postgresql://user@host/db. Exit status: 0 on
    success, 1 when the command fails (or a check does not pass), 2 on a usage error.
    """
    if verbose:
        log_to_stderr(logging.DEBUG if verbose > 1 else logging.INFO)


def open_backend(
    url: str,
    fn: Callable[[SQLAlchemyBackend], Awaitable[T]],
    *,
    existing: bool = False,
) -> T:
    """Run ``fn`` on a backend for ``url``, unstarted (nothing is migrated or checked: the schema
    commands handle revisions themselves), then close it.

    ``existing``: a SQLite file that does not exist is an error rather than an empty database
    to create. Commands that read or write durable's tables use :func:`open_client` instead.
    """
    if url.split("://", 1)[0] == "memory":
        raise click.BadParameter("memory:// keeps nothing: it has no schema", param_hint="URL")

    from durable.backends.sql.backend import SQLAlchemyBackend

    async def run() -> T:
        backend = SQLAlchemyBackend(url, auto_migrate=False)
        try:
            return await fn(backend)
        finally:
            await backend.close()

    with reported_errors():
        if existing:
            _require_sqlite_file(url)
        return asyncio.run(run())


def open_client(url: str, fn: Callable[[Client], Awaitable[T]]) -> T:
    """Run ``fn`` on a :class:`~durable.Client` for ``url`` (an existing database, not
    migrated), then close it. Starting the client checks the schema revision: a database
    without durable's tables, at an older revision, or migrated by a newer durable is refused
    before anything is read or written (:class:`SchemaVersionError`, exit status 1). Values are
    read with the command's ``--serializer`` (:func:`~durable.cli_output.serializer_option`)."""
    if url.split("://", 1)[0] == "memory":
        raise click.BadParameter("memory:// keeps nothing: it has no schema", param_hint="URL")

    serializer = chosen_serializer()

    async def run() -> T:
        # start() only checks
        async with Client(url, auto_migrate=False, serializer=serializer) as client:
            return await fn(client)

    with reported_errors():
        _require_sqlite_file(url)
        return asyncio.run(run())


def _require_sqlite_file(url: str) -> None:
    from durable.backends.sql.dialects import normalize_url

    parsed = normalize_url(url)
    database = parsed.database
    if (
        parsed.get_backend_name() == "sqlite"
        and database not in (None, "", ":memory:")
        and not database.startswith("file:")
        and not Path(database).exists()
    ):
        raise click.ClickException(f"no SQLite database at {database}")


def shown(url: str) -> str:
    """The URL as it may be printed: without its password."""
    from durable.backends.sql.dialects import normalize_url
    from durable.backends.sql.urls import shown_url

    with reported_errors():
        return shown_url(normalize_url(url))


def revision_name(revision: str | None) -> str:
    return revision or "base (no durable tables)"


@main.command(short_help="Create or upgrade durable's tables.")
@url_argument
@click.option(
    "--revision", default=None, metavar="REV", help="Upgrade to this revision.  [default: head]"
)
@click.option(
    "--check",
    is_flag=True,
    help="Change nothing: exit with status 1 unless the schema is at this durable's revision.",
)
def migrate(url: str, revision: str | None, check: bool) -> None:
    """Create or upgrade durable's tables in the database at URL.

    Backends do this themselves when they start, unless started with auto_migrate=False.
    """
    if check:
        if revision is not None:
            raise click.UsageError("--check compares with the head revision: drop --revision")
        _check(url)
        return

    async def upgrade(backend: SQLAlchemyBackend) -> tuple[str | None, str | None]:
        return await backend.migrate(revision or "head")

    before, after = open_backend(url, upgrade)
    if before == after:
        click.echo(f"{shown(url)}: already at revision {revision_name(after)}")
    else:
        click.echo(f"{shown(url)}: upgraded from {revision_name(before)} to {revision_name(after)}")


def _check(url: str) -> None:
    async def check(backend: SQLAlchemyBackend) -> str | SchemaVersionError | None:
        try:
            await backend.start()  # with auto_migrate=False, start() only checks
        except SchemaVersionError as exc:
            return exc
        return await backend.schema_revision()

    outcome = open_backend(url, check, existing=True)
    if isinstance(outcome, SchemaVersionError):
        click.echo(f"{shown(url)}: {outcome}", err=True)
        click.get_current_context().exit(1)
    click.echo(f"{shown(url)}: up to date (revision {outcome})")


@main.command(short_help="Downgrade durable's tables (base: drop them).")
@url_argument
@click.argument("revision")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation: data will be lost.")
def downgrade(url: str, revision: str, yes: bool) -> None:
    """Downgrade durable's tables in the database at URL to REVISION.

    REVISION "base" drops every durable table, and the workflows stored in them; other
    revisions drop what later revisions added. It asks for confirmation when run in a terminal;
    elsewhere it needs --yes.
    """
    if not yes:
        if revision == "base":
            loss = f"drop every durable table at {shown(url)}, with every workflow stored in them"
        else:
            loss = f"downgrade {shown(url)} to revision {revision}, dropping what later ones added"
        if not stdin_is_terminal():
            raise click.UsageError(f"this would {loss}: pass --yes to confirm")
        click.confirm(f"This will {loss}. Go on?", abort=True)

    async def down(backend: SQLAlchemyBackend) -> tuple[str | None, str | None]:
        before = await backend.schema_revision()
        await backend.downgrade(revision)
        return before, await backend.schema_revision()

    before, after = open_backend(url, down, existing=True)
    if before == after:
        click.echo(f"{shown(url)}: already at revision {revision_name(after)}")
    else:
        click.echo(
            f"{shown(url)}: downgraded from {revision_name(before)} to {revision_name(after)}"
        )


def stdin_is_terminal() -> bool:
    """Whether a person can answer a question (stdin is a terminal)."""
    return sys.stdin.isatty()


@main.command("schema-revision", short_help="Print the database's schema revision.")
@url_argument
def schema_revision(url: str) -> None:
    """Print the schema revision of the database at URL ("base": no durable tables).

    A note on stderr tells when it is not the revision this durable needs.
    """

    async def read(backend: SQLAlchemyBackend) -> str | None:
        return await backend.schema_revision()

    from durable.backends.sql import migrate as migrations

    current = open_backend(url, read, existing=True)
    click.echo(current or "base")
    head = migrations.head_revision()
    if current is not None and not migrations.is_known(current):
        click.echo(f"a newer durable migrated it: this one knows revisions up to {head}", err=True)
    elif current != head:
        click.echo(
            f"this durable needs revision {head}: run `durable migrate {shown(url)}`", err=True
        )


def load_runtime(target: str) -> Runtime:
    """Import ``module:attribute`` (from the current directory too) and return the Runtime it
    names; the attribute may also be a function that returns one."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter("expected MODULE:RUNTIME, e.g. myapp.jobs:runtime")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}") from exc
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise click.BadParameter(f"{module_name!r} has no attribute {attribute!r}") from None
    if callable(obj) and not isinstance(obj, Runtime):
        try:
            inspect.signature(obj).bind()
        except TypeError:
            raise click.BadParameter(
                f"{target} takes arguments: name a durable.Runtime, or a function of no "
                "arguments that returns one"
            ) from None
        except ValueError:  # no signature to read (some builtins): call it and see
            pass
        obj = obj()
    if not isinstance(obj, Runtime):
        raise click.BadParameter(f"{target} is a {type(obj).__name__}, not a durable.Runtime")
    return obj


@main.command(short_help="Run a worker until SIGTERM or SIGINT.")
@click.argument("target", metavar="MODULE:RUNTIME")
@click.option("-c", "--concurrency", default=10, show_default=True, type=count_range())
@click.option("-q", "--queue", "queues", multiple=True, help="Only this queue (repeatable).")
@click.option(
    "--grace", default=30.0, show_default=True, type=Seconds(min=0),
    help="Seconds to finish on shutdown.",
)  # fmt: skip
@click.option(
    "--poll-interval", default=1.0, show_default=True, type=Seconds(min=0, min_open=True),
    help="Seconds between polls.",
)  # fmt: skip
def worker(
    target: str, concurrency: int, queues: tuple[str, ...], grace: float, poll_interval: float
) -> None:
    """Claim and run enqueued executions of the workflows registered with MODULE:RUNTIME.

    RUNTIME is a durable.Runtime in MODULE (or a function returning one). On SIGTERM or SIGINT
    the worker stops claiming, lets running executions finish for --grace seconds, and hands the
    rest back so that other workers resume them at once. A second signal ends it at once, by
    that signal (exit status 130 for SIGINT, 143 for SIGTERM), without waiting for running
    steps: other workers resume their executions once their leases expire.

    It logs to stderr what it serves when it starts, failed attempts and executions, and dead
    letters (durable -v worker: everything it does). Exit status 1 when it cannot start (no
    workflow registered, database unreachable) or when it stopped claiming on an unexpected
    error; it keeps going through database outages.
    """
    if not logging.getLogger().handlers:  # no -v: durable's INFO and up, others' warnings
        log_to_stderr(logging.WARNING)
        logging.getLogger("durable").setLevel(logging.INFO)
    runtime = load_runtime(target)
    try:
        with reported_errors():
            done = asyncio.run(
                serve(
                    runtime,
                    concurrency=concurrency,
                    queues=list(queues) or None,
                    grace=grace,
                    poll_interval=poll_interval,
                )
            )
    except click.ClickException as exc:  # the worker stopped on an error
        _exit_without_stuck_steps(exc.exit_code, first=exc.show)
        raise
    click.echo(f"worker {runtime.executor_id} stopped after {done} execution(s)", err=True)
    _exit_without_stuck_steps(0)


def _exit_without_stuck_steps(status: int, *, first: Callable[[], None] | None = None) -> None:
    """End the process with ``status`` (after calling ``first``: the error's message) if sync
    steps are still running in their threads once the worker has stopped (a call that never
    returns): their executions were handed back, and the interpreter would wait for those
    threads at exit, for good. Else return."""
    stuck = step_threads_left()
    if not stuck:
        return
    if first is not None:
        first()
    logging.getLogger("durable.worker").warning(
        "exiting without waiting for %d sync step(s) still running in threads after the "
        "grace period (their executions were handed back): %s",
        len(stuck),
        "; ".join(stuck),
        extra={"action": "worker.threads_left"},
    )
    logging.shutdown()
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(status)


@main.group()
def workflows() -> None:
    """Inspect and control workflow executions stored at a URL."""


@workflows.command("waiting")
@url_argument
@click.option(
    "--kind",
    type=click.Choice(["sleep", "message"]),
    default=None,
    help="Only sleeping workflows, or only those waiting for a message (default: both).",
)
@click.option("--limit", default=50, show_default=True, type=count_range())
@json_option
def list_waiting(url: str, kind: str | None, limit: int, as_json: bool) -> None:
    """List executions that wait, newest first, with what each waits for ("sleeping until
    T", "waiting for topic X")."""

    async def read(client: Client) -> list[Waiting]:
        return (await client.list_waiting(kind=kind, limit=limit)).items

    def name(w: Waiting) -> str:
        return w.workflow.name if w.workflow is not None else "-"

    emit(
        open_client(url, read),
        as_json=as_json,
        columns=[("id", lambda w: w.workflow_id), ("name", name), ("waits", str)],
        line=lambda w: f"{w.workflow_id}\t{name(w)}\t{w}",
        as_object=lambda w: {
            **{k: v for k, v in jsonable(w).items() if k != "workflow"},  # the header: `get`
            "name": name(w),
            "text": str(w),
        },
    )


@workflows.command("messages")
@url_argument
@click.argument("workflow_id", callback=lambda _c, _p, v: checked_id(v, "WORKFLOW_ID"))
@click.option("--topic", default=None, help="Only messages on this topic.")
@click.option(
    "--pending/--all",
    default=True,
    show_default=True,
    help="Only messages not received yet (the default), or every message.",
)
@json_option
def list_messages(
    url: str, workflow_id: str, topic: str | None, pending: bool, as_json: bool
) -> None:
    """List the messages sent to an execution (and its timers'), in the order they were
    stored: seq, topic, when it may be received, when it was received (or "pending"), and
    its value as JSON."""

    async def read(client: Client) -> list[Message]:
        return await client.list_messages(
            workflow_id, topic=topic, received=False if pending else None
        )

    def kind(m: Message) -> str:
        return "timer" if m.timer else "message"

    def received(m: Message) -> str:
        return stamp(m.received_at) if m.received_at else "pending"

    def value(m: Message) -> str:
        return json_text(m.value, default=repr)

    emit(
        open_client(url, read),
        as_json=as_json,
        columns=[
            ("seq", lambda m: str(m.seq)),
            ("topic", lambda m: m.topic),
            ("kind", kind),
            ("deliver", lambda m: when(m.deliver_at)),
            ("received", received),
            ("value", value),
        ],
        line=lambda m: (
            f"{m.seq}\t{m.topic}\t{kind(m)}\tdeliver={stamp(m.deliver_at)}\t"
            f"received={received(m)}\t{value(m)}"
        ),
    )


@workflows.command("get")
@url_argument
@click.argument("workflow_id", callback=lambda _c, _p, v: checked_id(v, "WORKFLOW_ID"))
def get_workflow(url: str, workflow_id: str) -> None:
    """Print one execution's header as JSON (times ISO 8601, non-finite floats as the strings
    "NaN", "Infinity", "-Infinity"); `durable workflows show` prints it for a person, with
    its steps."""

    async def read(client: Client) -> dict[str, Any]:
        header = jsonable(await client.get_workflow(workflow_id))
        return {**header, "labels": await client.get_labels(workflow_id)}

    click.echo(json_text(open_client(url, read), indent=2))


@workflows.command("steps")
@url_argument
@click.argument("workflow_id", callback=lambda _c, _p, v: checked_id(v, "WORKFLOW_ID"))
@json_option
def list_steps(url: str, workflow_id: str, as_json: bool) -> None:
    """List an execution's steps: position, name, status, attempts, executor, timings."""

    async def read(client: Client) -> list[StepRecord]:
        return await client.list_steps(workflow_id)

    def status(s: StepRecord) -> str:
        return f"{s.status.value} (runs again on retry)" if s.rerun else s.status.value

    def error(s: StepRecord) -> str:
        return f"{s.error.type}: {s.error.message}" if s.error else ""

    emit(
        open_client(url, read),
        as_json=as_json,
        columns=[
            ("#", lambda s: str(s.position)),
            ("name", lambda s: s.name),
            ("status", status),
            ("attempts", lambda s: str(s.attempts)),
            ("executor", lambda s: s.executor_id or "-"),
            ("started", lambda s: when(s.started_at)),
            ("completed", lambda s: when(s.completed_at)),
            ("error", error),
        ],
        line=lambda s: (
            f"{s.position}\t{s.name}\t{status(s)}\tattempts={s.attempts}\t"
            f"executor={s.executor_id or '-'}\tstarted={stamp(s.started_at)}\t"
            f"completed={stamp(s.completed_at)}" + (f"\t{error(s)}" if s.error else "")
        ),
    )


@main.command(short_help="Serve the web view of a database (needs the web extra).")
@url_argument
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--actions", is_flag=True, help="Allow cancel, retry, resume, fork in the browser.")
@click.option(
    "--token",
    envvar="DURABLE_UI_TOKEN",
    help="Require this token on every request (needed to bind beyond 127.0.0.1).",
)
def ui(url: str, host: str, port: int, actions: bool, token: str | None) -> None:
    """Serve the web view of the database at URL: workflows, steps, queues, executors."""
    try:
        from durable.web import serve as serve_web
    except ImportError as exc:
        raise click.ClickException(
            f"the web view needs the web extra: pip install 'durable-sqla[web]' ({exc})"
        ) from None
    with reported_errors():
        _require_sqlite_file(url)
        try:
            serve_web(
                url,
                host=host,
                port=port,
                actions=actions,
                token=token,
                serializer=chosen_serializer(),
            )
        except SystemExit as exc:  # uvicorn's exit status 3: it could not start (logged why)
            if exc.code in (None, 0):
                raise
            raise click.ClickException(
                f"the web view could not start on {host}:{port} (see above)"
            ) from None


main.add_command(schedules_group(open_client), "schedules")
add_workflow_commands(workflows, open_client)
add_replay_commands(workflows, open_client)
add_action_commands(workflows, open_client)
main.add_command(executors_command(open_client), "executors")
main.add_command(queues_group(open_client, queues_command(open_client)), "queues")
main.add_command(gc_command(open_client), "gc")
main.add_command(events_command(open_client), "events")


#: Commands that take no --serializer: the schema commands read no stored value, and a
#: worker's runtime has its own serializer.
NO_SERIALIZER = frozenset({"migrate", "downgrade", "schema-revision", "worker"})


def _add_serializer_options(group: click.Group) -> None:
    """Give every command that reads a database's values (it takes a URL, or history files)
    the ``--serializer`` option."""
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            _add_serializer_options(command)
        elif name not in NO_SERIALIZER and any(
            isinstance(p, click.Argument) and p.name in ("url", "target") for p in command.params
        ):
            command.params.append(serializer_option())


_add_serializer_options(main)


if __name__ == "__main__":  # python -m durable.cli, as python -m durable
    main(prog_name="durable")
