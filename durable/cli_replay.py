"""``durable workflows export`` and ``durable workflows replay``: recorded executions against
the current code, the check a team runs in CI before deploying a change to a workflow.

``export URL ID [-o FILE]`` writes one execution's history (:mod:`durable.history`).
``replay`` replays executions (from history files, or read from a database: by id, or chosen
as ``workflows list`` chooses them) against the workflows the ``--module`` modules define,
without running a step body or writing anything (:mod:`durable.replayer`), prints one line per
execution, and exits 1 if any diverges (or cannot be replayed: its workflow is not in the
modules), 0 otherwise.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from durable.cli_output import (
    checked_id,
    chosen_serializer,
    count_range,
    json_text,
    reported_errors,
    say,
)
from durable.cli_workflows import OpenClient, filter_options, select_workflows
from durable.client import Client
from durable.errors import DurableError
from durable.history import dump_history, read_history_file
from durable.models import WorkflowInfo, WorkflowSnapshot
from durable.registry import default_registry
from durable.replayer import ReplayResult, replay_history
from durable.serialization import get_serializer
from durable.workflow import Workflow


async def read_snapshot(client: Client, workflow_id: str) -> WorkflowSnapshot:
    """One execution's header and steps, read through ``client``."""
    info = await client.get_workflow(workflow_id)
    steps = await client.list_steps(workflow_id)
    fields = {f: getattr(info, f) for f in WorkflowInfo.__dataclass_fields__}
    return WorkflowSnapshot(**fields, steps=tuple(steps))


def load_workflows(modules: tuple[str, ...]) -> dict[str, Workflow[Any, Any]]:
    """Import ``modules`` (from the current directory too) and return the workflows they
    define (module attributes) by name; for other names, those of the decorators' default
    registry.

    :raises click.BadParameter: a module cannot be imported, or two different workflows of
        the modules have the same name (which one is the current code?).
    """
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    found: dict[str, Workflow[Any, Any]] = {}
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise click.BadParameter(f"cannot import {module_name!r}: {exc}") from exc
        for value in vars(module).values():
            if not isinstance(value, Workflow):
                continue
            seen = found.setdefault(value.name, value)
            if seen is not value:
                raise click.BadParameter(
                    f"two workflows are named {value.name!r} in the modules ({seen.label} and "
                    f"{value.label}): give --module the current code only"
                )
    for name in default_registry.names():
        wf = default_registry.get(name)
        if isinstance(wf, Workflow):
            found.setdefault(name, wf)
    return found


def add_replay_commands(workflows: click.Group, open_client: OpenClient) -> None:
    """Add ``export`` and ``replay`` to the ``workflows`` group."""

    @workflows.command("export")
    @click.argument("url", metavar="URL")
    @click.argument("workflow_id", callback=lambda _c, _p, v: checked_id(v, "WORKFLOW_ID"))
    @click.option(
        "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
        help="Write the history here (default: standard output).",
    )  # fmt: skip
    def export(url: str, workflow_id: str, output: Path | None) -> None:
        """Write one execution's history (header and steps) as a JSON history file, the input
        of `durable workflows replay --from-file` and `durable.testing.replay`."""

        async def read(client: Client) -> dict[str, Any]:
            snapshot = await read_snapshot(client, workflow_id)
            return dump_history(snapshot, client.backend.serializer)

        text = json_text(open_client(url, read), indent=2, ensure_ascii=False) + "\n"
        if output is None:
            click.echo(text, nl=False, color=True)  # as written to a file: nothing stripped
        else:
            try:
                output.write_text(text, encoding="utf-8")
            except OSError as exc:
                raise click.ClickException(
                    f"cannot write {output}: {exc.strerror or exc}"
                ) from None
            click.echo(f"wrote the history of {workflow_id} to {output}", err=True)

    @workflows.command("replay")
    @click.argument("target", nargs=-1, metavar="[URL [WORKFLOW_ID...]]")
    @click.option(
        "-m", "--module", "modules", multiple=True, required=True,
        help="Import this module for its workflows (repeatable).",
    )  # fmt: skip
    @click.option(
        "-f", "--from-file", "files", multiple=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Replay this history file (repeatable; then no URL).",
    )  # fmt: skip
    @filter_options
    @click.option("--limit", default=100, show_default=True, type=count_range())
    @click.option("--app-version", default=None, help="The version the current code is known as.")
    def replay(
        target: tuple[str, ...],
        modules: tuple[str, ...],
        files: tuple[Path, ...],
        statuses: tuple[str, ...],
        name: str | None,
        queue: str | None,
        since: datetime | None,
        until: datetime | None,
        labels: dict[str, str] | None,
        limit: int,
        app_version: str | None,
    ) -> None:
        """Replay recorded executions against the current code, running no step and writing
        nothing; exit 1 if any diverges.

        The executions: history files (--from-file), or those at URL: the WORKFLOW_IDs
        given, or else up to --limit chosen by --status, --name, --queue, --since, --until,
        --label (newest first)."""
        known = load_workflows(modules)
        snapshots: list[WorkflowSnapshot] = []
        if files:
            if target:
                raise click.UsageError("give history files or a URL, not both")
            snapshots = [_read_history(path) for path in files]
        else:
            if not target:
                raise click.UsageError("give a URL (and workflow ids), or --from-file")
            url, ids = target[0], [checked_id(i, "WORKFLOW_ID") for i in target[1:]]

            async def read(client: Client) -> list[WorkflowSnapshot]:
                chosen = ids or [
                    info.id
                    for info in await select_workflows(
                        client,
                        statuses=statuses,
                        name=name,
                        queue=queue,
                        since=since,
                        until=until,
                        limit=limit,
                        labels=labels,
                    )
                ]
                return [await read_snapshot(client, i) for i in chosen]

            snapshots = open_client(url, read)
        failures = _replay_all(snapshots, known, app_version, say)
        click.echo(f"{len(snapshots)} execution(s) replayed, {failures} failed", err=True)
        if failures:
            raise SystemExit(1)


def _read_history(path: Path) -> WorkflowSnapshot:
    """The history file at ``path``; a file that cannot be read, is not UTF-8 JSON or not a
    history is a one-line error (exit status 1), not a traceback."""
    with reported_errors():
        try:
            return read_history_file(path, get_serializer(chosen_serializer()))
        except UnicodeDecodeError as exc:
            raise click.ClickException(
                f"a history file must be JSON (UTF-8): {path} is not UTF-8 text ({exc.reason} "
                f"at byte {exc.start})"
            ) from None
        except OSError as exc:
            raise click.ClickException(f"cannot read {path}: {exc.strerror or exc}") from None


def _replay_all(
    snapshots: list[WorkflowSnapshot],
    known: dict[str, Workflow[Any, Any]],
    app_version: str | None,
    echo: Callable[[str], None],
) -> int:
    """Replay each snapshot against its workflow; print a line each; the number that failed."""
    import asyncio

    failures = 0
    for snapshot in snapshots:
        wf = known.get(snapshot.name)
        if wf is None:
            echo(f"{snapshot.id} ({snapshot.name}): NOT REPLAYED: no such workflow in the modules")
            failures += 1
            continue
        try:
            result: ReplayResult = asyncio.run(
                replay_history(wf, snapshot, app_version=app_version)
            )
        except DurableError as exc:
            echo(f"{snapshot.id} ({snapshot.name}): NOT REPLAYED: {exc}")
            failures += 1
            continue
        echo(result.describe())
        failures += 0 if result.ok else 1
    return failures
