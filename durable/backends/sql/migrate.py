"""Schema migrations: Alembic, driven from code so that a backend can migrate when it starts.

The revisions live in the repository's ``alembic/`` folder (packaged as ``durable/_migrations``)
and are generated from :mod:`durable.backends.sql.schema`. Alembic's version table is
``durable_alembic_version`` so that it never collides with an application's own migrations.
Concurrent upgrades are serialized: by an advisory lock on PostgreSQL, by the write lock of
``BEGIN IMMEDIATE`` on SQLite.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa

from durable.backends.sql.schema import MYSQL_NAMES, PREFIX
from durable.backends.sql.urls import shown_url
from durable.errors import ConfigurationError, InvalidArgumentError, SchemaVersionError

# Alembic is imported by the functions that use it: it takes a tenth of a second or more to
# import, and a backend that finds its database at head (or a `durable --help`) never needs it.
if TYPE_CHECKING:
    from alembic.config import Config

T = TypeVar("T")

VERSION_TABLE = "durable_alembic_version"
#: Any constant would do; it only has to be the same for every process.
_PG_LOCK_KEY = 0x6475726162  # "durab"
_MYSQL_LOCK = "durable_migrate"
_MYSQL_LOCK_TIMEOUT = 600


@cache
def script_location() -> str:
    """The folder that holds ``env.py`` and ``versions/``: packaged, or the source checkout's."""
    package = Path(__file__).resolve().parents[2]
    for candidate in (package / "_migrations", package.parent / "alembic"):
        if (candidate / "env.py").is_file():
            return str(candidate)
    raise ConfigurationError(f"durable's migrations are missing (looked beside {package})")


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """An Alembic configuration for durable's revisions, bound to ``connection`` if given."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", script_location())
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The revision this code expects the database to be at."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: sa.Connection) -> str | None:
    """The revision the database is at (None: durable's tables were never created)."""
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def is_known(revision: str) -> bool:
    """Whether ``revision`` is one of this code's revisions (not one from a newer durable)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    return any(known.revision == revision for known in script.walk_revisions())


def check_known(connection: sa.Connection) -> str | None:
    """The revision the database is at (None: never migrated).

    :raises SchemaVersionError: a revision this code does not know (from a newer durable).
    """
    current = current_revision(connection)
    if current is None:
        return None
    if not is_known(current):
        raise SchemaVersionError(
            f"the database schema is at revision {current!r}, which this version of durable "
            f"does not know (its newest is {head_revision()!r}): the database was migrated by a "
            "newer durable; upgrade durable"
        ) from None
    return current


def include_name(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
    """Alembic's filter: durable compares and generates only its own tables, so it can share a
    database with an application's tables (and the application's own Alembic version table)."""
    if type_ == "table":
        return name is not None and name.startswith(PREFIX) and name != VERSION_TABLE
    return True


#: The options durable's revisions are compared and generated with: ``env.py`` passes them to
#: Alembic, and ``tests/test_migrations.py`` compares a migrated database with them.
CONTEXT_OPTIONS: dict[str, Any] = {
    "version_table": VERSION_TABLE,
    "compare_type": True,
    "include_name": include_name,
}


def lock(connection: sa.Connection) -> None:
    """Take the migration lock until the connection's transaction ends (PostgreSQL: an advisory
    lock; SQLite needs none, its write lock is taken when the transaction begins)."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
    elif connection.dialect.name in MYSQL_NAMES:
        # a named lock of the session, not of the transaction: unlock() releases it
        got = connection.execute(
            sa.text("SELECT GET_LOCK(:k, :t)"), {"k": _MYSQL_LOCK, "t": _MYSQL_LOCK_TIMEOUT}
        ).scalar()
        if got != 1:
            raise SchemaVersionError(
                f"another process held durable's migration lock for {_MYSQL_LOCK_TIMEOUT} s"
            )


def unlock(connection: sa.Connection) -> None:
    """Release what :func:`lock` took beyond the transaction (MySQL's named lock)."""
    if connection.dialect.name in MYSQL_NAMES:
        connection.execute(sa.text("DO RELEASE_LOCK(:k)"), {"k": _MYSQL_LOCK})


@contextmanager
def _revision_errors(revision: str) -> Iterator[None]:
    """Alembic's complaints about the revision asked for, as durable's error."""
    from alembic.util import CommandError

    try:
        yield
    except CommandError as exc:
        raise InvalidArgumentError(f"cannot migrate to revision {revision!r}: {exc}") from None


def upgrade(connection: sa.Connection, revision: str = "head") -> tuple[str | None, str | None]:
    """Migrate to ``revision`` inside the connection's transaction, holding the migration lock;
    the revisions before and after, both read under the lock (of several processes migrating
    at once, one finds the old revision and the others the new one, and each can say which).

    :raises SchemaVersionError: the database is at a revision this code does not know.
    :raises InvalidArgumentError: ``revision`` is unknown, or below the current one.
    """
    from alembic import command

    with _locked(connection):
        before = check_known(connection)
        if before is None:  # a new database, or one a cut-off migration left tables in
            raise_if_unrecorded(connection)
        with _revision_errors(revision):
            command.upgrade(alembic_config(connection), revision)
        return before, current_revision(connection)


def downgrade(connection: sa.Connection, revision: str) -> None:
    """Migrate down to ``revision`` (``"base"`` drops every durable table, Alembic's version
    table included)."""
    from alembic import command

    with _locked(connection):
        check_known(connection)
        with _revision_errors(revision):
            command.downgrade(alembic_config(connection), revision)
        if current_revision(connection) is None:
            sa.Table(VERSION_TABLE, sa.MetaData()).drop(connection, checkfirst=True)


@contextmanager
def _locked(connection: sa.Connection) -> Iterator[None]:
    """Hold the migration lock (:func:`lock`, :func:`unlock`) around a schema change. When the
    change fails, a failure to release the lock (its connection died with it) is not raised
    in place of the change's own error, which says what happened."""
    lock(connection)
    try:
        yield
    except BaseException:
        with suppress(Exception):  # the session, and its lock, are gone with the connection
            unlock(connection)
        raise
    unlock(connection)


def raise_if_unrecorded(connection: sa.Connection) -> None:
    """Refuse a database that has durable's tables but records no revision: on MySQL/MariaDB,
    whose DDL commits as it goes, a first migration cut off part-way (migrating again would
    fail on a table that exists, and a check would call the tables missing); elsewhere, a
    version table dropped by hand.

    :raises SchemaVersionError: saying so, and what to do.
    """
    found = sorted(
        name
        for name in sa.inspect(connection).get_table_names()
        if include_name(name, "table", {})  # durable's own, as Alembic compares them
    )
    if found:
        url = shown_url(connection.engine.url)
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise SchemaVersionError(
            f"the database at {url} has {len(found)} of durable's tables ({shown}) but records "
            "no schema revision: a first migration was cut off part-way (MySQL/MariaDB commit "
            "each table as it is made), or the version table was dropped. If durable never ran "
            "on it, drop the durable_* tables and run `durable migrate` again; otherwise "
            "restore a backup (README, Migrations)"
        )


def in_transaction(connection: sa.Connection, fn: Callable[[sa.Connection], T]) -> T:
    """Run ``fn`` (:func:`upgrade`, :func:`downgrade`, :func:`check`) in a transaction of its own
    on ``connection``, on which none is begun.

    On SQLite, with its foreign keys off meanwhile: Alembic's batch mode changes a table by
    copying it to a new one and dropping the old one, and with foreign keys on, that drop
    deletes every row that references the table through ``ON DELETE CASCADE`` (a revision
    that rebuilt ``durable_workflows`` emptied the steps, tasks, messages and events, and an
    application's table that references it). The switch only takes effect outside a
    transaction, so it is made on the driver's connection before SQLAlchemy begins one, and
    undone after; a migration that leaves a reference dangling is rolled back
    (``PRAGMA foreign_key_check``).

    :raises SchemaVersionError: the changed schema leaves rows that reference nothing.
    """
    if connection.dialect.name != "sqlite":
        with connection.begin():
            return fn(connection)
    driver = connection.connection.dbapi_connection
    assert driver is not None
    was_on = _sqlite_pragma(driver, "PRAGMA foreign_keys") == 1
    _sqlite_pragma(driver, "PRAGMA foreign_keys=OFF")
    try:
        with connection.begin():
            before = current_revision(connection)
            result = fn(connection)
            if current_revision(connection) != before:
                dangling = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if dangling:
                    raise SchemaVersionError(
                        f"migrating left {len(dangling)} row(s) that reference rows which do not "
                        f"exist (the first: table {dangling[0][0]}, row {dangling[0][1]}, "
                        f"referencing {dangling[0][2]}): nothing was changed"
                    )
            return result
    finally:
        if was_on:
            _sqlite_pragma(driver, "PRAGMA foreign_keys=ON")


def _sqlite_pragma(driver: Any, pragma: str) -> Any:
    """Run ``pragma`` on a SQLite driver connection (sqlite3, or SQLAlchemy's aiosqlite
    adapter), outside SQLAlchemy's transactions; its first value, if it returns one."""
    cursor = driver.cursor()
    try:
        cursor.execute(pragma)
        row = cursor.fetchone()
    finally:
        cursor.close()
    return row[0] if row else None


def missing_tables(url: str, detail: str = "") -> SchemaVersionError:
    """The error for a database that lacks durable's tables (never migrated, or downgraded to
    base): it says how to create them."""
    return SchemaVersionError(
        f"durable's tables are missing from the database at {url}{detail}: "
        f"run `durable migrate {url}`, or start the backend with auto_migrate=True"
    )


def check(connection: sa.Connection) -> None:
    """Raise :class:`SchemaVersionError` unless the database is at this code's head revision:
    its tables are missing, out of date, or from a newer durable."""
    current = check_known(connection)
    head = head_revision()
    if current != head:
        url = shown_url(connection.engine.url)
        if current is None:
            raise_if_unrecorded(connection)
            raise missing_tables(url, f" (this version of durable needs revision {head!r})")
        raise SchemaVersionError(
            f"the database is at schema revision {current!r} but this version of durable needs "
            f"revision {head!r}: run `durable migrate {url}`, or start the backend with "
            "auto_migrate=True"
        )
