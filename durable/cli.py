"""The ``durable`` command line.

Every command is a small function on the :func:`main` group. To add one, decorate a function with
``@main.command()``; a family of commands (``durable workflows list``, ...) is a
:func:`click.group` of its own, registered with ``main.add_command``. Commands that work on a
database take its URL as their first argument and open it with :func:`open_backend`, which turns
durable's errors into a one-line message and exit status 1.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import click

from durable.backends.sql import SQLAlchemyBackend
from durable.backends.sql import migrate as migrations
from durable.backends.sql.dialects import normalize_url
from durable.errors import DurableError, SchemaVersionError

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
        logging.basicConfig(
            level=logging.DEBUG if verbose > 1 else logging.INFO,
            format="%(levelname)-5s [%(name)s] %(message)s",
        )


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn durable's errors into a message on stderr and exit status 1."""
    try:
        yield
    except DurableError as exc:
        raise click.ClickException(str(exc)) from exc


def open_backend(
    url: str, fn: Callable[[SQLAlchemyBackend], Awaitable[T]], *, existing: bool = False
) -> T:
    """Run ``fn`` on a backend for ``url`` (not started: nothing is migrated), then close it.

    ``existing``: the command only reads, so a SQLite file that does not exist is an error
    rather than an empty database to create.
    """
    if url.split("://", 1)[0] == "memory":
        raise click.BadParameter("memory:// keeps nothing: it has no schema", param_hint="URL")

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


def _require_sqlite_file(url: str) -> None:
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
    with reported_errors():
        return normalize_url(url).render_as_string(hide_password=True)


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
        before = await backend.schema_revision()
        await backend.migrate(revision or "head")
        return before, await backend.schema_revision()

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
def downgrade(url: str, revision: str) -> None:
    """Downgrade durable's tables in the database at URL to REVISION.

    REVISION "base" drops every durable table, and the workflows stored in them.
    """

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


@main.command("schema-revision", short_help="Print the database's schema revision.")
@url_argument
def schema_revision(url: str) -> None:
    """Print the schema revision of the database at URL ("base": no durable tables).

    A note on stderr tells when it is not the revision this durable needs.
    """

    async def read(backend: SQLAlchemyBackend) -> str | None:
        return await backend.schema_revision()

    current = open_backend(url, read, existing=True)
    click.echo(current or "base")
    head = migrations.head_revision()
    if current is not None and not migrations.is_known(current):
        click.echo(f"a newer durable migrated it: this one knows revisions up to {head}", err=True)
    elif current != head:
        click.echo(
            f"this durable needs revision {head}: run `durable migrate {shown(url)}`", err=True
        )
