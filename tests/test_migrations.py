"""Alembic migrations: the migrated schema is exactly ``schema.metadata``, on SQLite and PostgreSQL.

Every test starts from an empty database (a new SQLite file, or a fresh PostgreSQL database).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import durable
from durable import SchemaVersionError, SQLAlchemyBackend, WorkflowSnapshot
from durable.backends.sql import migrate
from durable.backends.sql.dialects import normalize_url
from durable.backends.sql.schema import PREFIX, UTCDateTime, metadata
from durable.errors import BackendUnavailableError, InvalidArgumentError

REPO = Path(__file__).resolve().parents[1]
HEAD = migrate.head_revision()
DURABLE_TABLES = {t.name for t in metadata.sorted_tables}


@pytest.fixture(
    params=[
        "sqlite",
        "aiosqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def db_url(request: pytest.FixtureRequest) -> str:
    """An empty database of each kind the SQL backend runs on."""
    fixture = {
        "sqlite": "sqlite_url",
        "aiosqlite": "aiosqlite_url",
        "postgres": "pg_url",
        "mysql": "mysql_url",
    }
    return str(request.getfixturevalue(fixture[request.param]))


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    """A plain synchronous engine on ``db_url``, to look at the database from outside durable."""
    url = normalize_url(db_url)
    if url.get_backend_name() == "sqlite":
        url = url.set(drivername="sqlite")
    if url.get_backend_name() == "mysql":
        url = url.set(drivername="mysql+pymysql").update_query_dict({"charset": "utf8mb4"})
    eng = sa.create_engine(url)
    yield eng
    eng.dispose()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def start(url: str, **options: Any) -> None:
    """Start a backend (which migrates it, or checks it) and close it."""
    backend = SQLAlchemyBackend(url, **options)
    try:
        await backend.start()
    finally:
        await backend.close()


def differences(engine: sa.Engine, target: sa.MetaData = metadata) -> list[Any]:
    """What Alembic's autogenerate would change to make the database match ``target``."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts=migrate.CONTEXT_OPTIONS)
        return list(compare_metadata(context, target))


def copy_of(original: sa.MetaData) -> sa.MetaData:
    """A copy of ``original`` that a test may change."""
    copy = sa.MetaData(naming_convention=original.naming_convention)
    for table in original.sorted_tables:
        table.to_metadata(copy)
    return copy


def revision(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        return migrate.current_revision(conn)


def tables(engine: sa.Engine) -> set[str]:
    return {t for t in sa.inspect(engine).get_table_names() if t.startswith(PREFIX)}


def describe(engine: sa.Engine) -> dict[str, Any]:
    """Everything about durable's tables a migration could change, rows included."""
    inspector = sa.inspect(engine)
    shape: dict[str, Any] = {}
    with engine.connect() as conn:
        for table in sorted(tables(engine)):
            shape[table] = {
                "columns": [(c["name"], str(c["type"])) for c in inspector.get_columns(table)],
                "indexes": sorted(i["name"] or "" for i in inspector.get_indexes(table)),
                "rows": sorted(map(str, conn.execute(sa.text(f"SELECT * FROM {table}")))),
            }
    return shape


def stamp(engine: sa.Engine, rev: str) -> None:
    """Write ``rev`` into the version table, as a newer durable's migration would."""
    version = sa.table(migrate.VERSION_TABLE, sa.column("version_num"))
    with engine.begin() as conn:
        sa.Table(
            migrate.VERSION_TABLE,
            sa.MetaData(),
            sa.Column("version_num", sa.String(32), primary_key=True),
        ).create(conn, checkfirst=True)
        conn.execute(sa.delete(version))
        conn.execute(sa.insert(version).values(version_num=rev))


# -- the migrated schema is the declared one ----------------------------------------------------


def test_upgrade_from_empty_matches_metadata(db_url: str, engine: sa.Engine) -> None:
    assert tables(engine) == set()
    run(start(db_url))
    assert revision(engine) == HEAD
    assert tables(engine) == DURABLE_TABLES | {migrate.VERSION_TABLE}
    assert differences(engine) == []


def _declared_predicates(dialect: str) -> dict[str, str | None]:
    """Each declared index's name and its ``<dialect>_where`` predicate (None: the whole table)."""
    out: dict[str, str | None] = {}
    for table in metadata.sorted_tables:
        for index in table.indexes:
            where = index.dialect_options[dialect]["where"]
            out[str(index.name)] = None if where is None else str(where)
    return out


@pytest.mark.postgres
def test_partial_indexes_on_postgresql_are_the_declared_ones(pg_url: str) -> None:
    """Alembic's comparison above does not look at an index's predicate: checked here. An index
    declared partial (``postgresql_where``) has exactly that predicate after the migrations,
    and every other one has none."""
    run(start(pg_url))
    engine = sa.create_engine(normalize_url(pg_url))
    try:
        with engine.connect() as conn:
            found = dict(
                conn.execute(
                    sa.text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename LIKE :p"),
                    {"p": f"{PREFIX}%"},
                ).all()
            )
    finally:
        engine.dispose()
    declared = _declared_predicates("postgresql")
    assert sum(1 for where in declared.values() if where) == 5
    for name, where in declared.items():
        definition = found[name]
        if where is None:
            assert " WHERE " not in definition, definition
        else:
            assert definition.endswith(f" WHERE ({where})"), definition


def test_comparison_sees_a_changed_schema(db_url: str, engine: sa.Engine) -> None:
    """The check above is not vacuous: types, nullability, indexes and tables are compared."""
    run(start(db_url))
    changed = copy_of(metadata)
    workflows = changed.tables[f"{PREFIX}workflows"]
    workflows.c.status.type = sa.String(32)
    workflows.c.error.nullable = False
    workflows.c.completed_at.type = sa.Integer()
    sa.Index(None, workflows.c.queue)
    sa.Table(f"{PREFIX}extra", changed, sa.Column("id", sa.Integer, primary_key=True))

    kinds = {_kind(diff) for diff in differences(engine, changed)}
    assert kinds == {
        ("modify_type", "status"),
        ("modify_nullable", "error"),
        ("modify_type", "completed_at"),
        ("add_index", "ix_durable_workflows_queue"),
        ("add_table", f"{PREFIX}extra"),
    }


def _kind(diff: Any) -> tuple[str, str]:
    if isinstance(diff, list):  # column modifications come as a list of tuples
        (op, _schema, _table, column, *_rest) = diff[0]
        return op, column
    op, obj = diff[0], diff[1]
    return op, obj.name


def test_utc_datetime_compares_equal_to_timestamptz(db_url: str, engine: sa.Engine) -> None:
    """The revisions spell UTCDateTime as ``sa.DateTime(timezone=True)``; both must compare
    equal, and a timestamp without time zone must not (on PostgreSQL, where they differ)."""
    run(start(db_url))
    assert isinstance(metadata.tables[f"{PREFIX}workflows"].c.created_at.type, UTCDateTime)
    naive = copy_of(metadata)
    naive.tables[f"{PREFIX}workflows"].c.created_at.type = sa.DateTime(timezone=False)
    found = {_kind(diff) for diff in differences(engine, naive)}
    if engine.dialect.name == "postgresql":
        assert found == {("modify_type", "created_at")}
    else:  # SQLite has no time zone in its types: both are DATETIME
        assert found == set()


#: The indexes and constraints durable's queries rely on (the comparison above already proves the
#: schema matches ``schema.metadata``: this guards against one being dropped from it).
EXPECTED_INDEXES = {
    "durable_workflows": {
        "ix_durable_workflows_created_at_id": ["created_at", "id"],  # listing, newest first
        "ix_durable_workflows_status_created_at": ["status", "created_at"],
        "ix_durable_workflows_name_created_at": ["name", "created_at"],
        "ix_durable_workflows_parent_id": ["parent_id"],  # children of a workflow
    },
    "durable_tasks": {
        "ix_durable_tasks_priority_run_after_id": ["priority", "run_after", "id"],  # claiming
    },
}
EXPECTED_UNIQUE = {
    "durable_workflows": {"uq_durable_workflows_idempotency_key": ["idempotency_key"]},
    "durable_tasks": {"uq_durable_tasks_instance_id_task_id": ["instance_id", "task_id"]},
}
EXPECTED_PRIMARY_KEYS = {
    "durable_workflows": ["id"],
    "durable_steps": ["workflow_id", "position"],  # a step is found by its position
    "durable_tasks": ["id"],
}
EXPECTED_CASCADES = {  # deleting a workflow deletes its steps and tasks
    ("durable_steps", ("workflow_id",)): "durable_workflows",
    ("durable_tasks", ("instance_id",)): "durable_workflows",
}


def test_migrated_schema_has_the_expected_indexes(db_url: str, engine: sa.Engine) -> None:
    run(start(db_url))
    inspector = sa.inspect(engine)

    for table, expected in EXPECTED_INDEXES.items():
        found = {
            i["name"]: [c or "" for c in i["column_names"]]
            for i in inspector.get_indexes(table)
            if not i["unique"]
        }
        assert found.items() >= expected.items(), table
    for table, expected in EXPECTED_UNIQUE.items():
        found = {u["name"]: u["column_names"] for u in inspector.get_unique_constraints(table)}
        assert found.items() >= expected.items(), table
    for table, columns in EXPECTED_PRIMARY_KEYS.items():
        assert inspector.get_pk_constraint(table)["constrained_columns"] == columns, table
    cascades = {
        (table, tuple(fk["constrained_columns"])): (fk["referred_table"], fk["options"])
        for table in tables(engine)
        for fk in inspector.get_foreign_keys(table)
    }
    for key, referred in EXPECTED_CASCADES.items():
        assert cascades[key] == (referred, {"ondelete": "CASCADE"}), key


# -- down and up again --------------------------------------------------------------------------


def test_downgrade_to_base_then_upgrade_again(db_url: str, engine: sa.Engine) -> None:
    async def cycle() -> None:
        backend = SQLAlchemyBackend(db_url)
        try:
            await backend.start()
            await backend.create_workflow(WorkflowSnapshot(id="w1", name="demo"))
            await backend.downgrade("base")
            assert await backend.schema_revision() is None
        finally:
            await backend.close()

    run(cycle())
    assert tables(engine) == set()  # the version table went too

    run(start(db_url))
    assert revision(engine) == HEAD
    assert differences(engine) == []
    with engine.connect() as conn:  # a clean slate, not the old rows
        assert conn.execute(sa.text("SELECT count(*) FROM durable_workflows")).scalar() == 0


def test_unknown_revision_to_migrate_to_is_an_invalid_argument(db_url: str) -> None:
    async def go() -> None:
        backend = SQLAlchemyBackend(db_url)
        try:
            await backend.start()
            with pytest.raises(InvalidArgumentError, match="nope"):
                await backend.migrate("nope")
        finally:
            await backend.close()

    run(go())


@pytest.mark.parametrize("auto_migrate", [True, False])
def test_tables_without_a_recorded_revision_are_named_not_called_missing(
    db_url: str, engine: sa.Engine, auto_migrate: bool
) -> None:
    """What a first migration cut off part-way leaves on MySQL/MariaDB (each table commits as
    it is made): some of durable's tables and no revision. Migrating again failed on "table
    already exists", and the check said the tables were missing; both now say what it is."""
    metadata.tables["durable_workflows"].create(engine)
    before = describe(engine)
    with pytest.raises(SchemaVersionError) as info:
        run(start(db_url, auto_migrate=auto_migrate))
    message = str(info.value)
    assert "has 1 of durable's tables (durable_workflows) but records no schema revision" in message
    assert "drop the durable_* tables and run `durable migrate` again" in message
    assert describe(engine) == before and revision(engine) is None


def test_a_migration_whose_connection_dies_says_so_on_mysql(
    mysql_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection dies in the middle of a revision: the error is that (the database is
    unavailable), not the failed release of the migration lock on the dead connection that
    used to replace it (SQLAlchemy's "Can't reconnect until invalid transaction is rolled
    back", a BackendError)."""
    from alembic import command

    def dies(config: Any, revision: str) -> None:
        config.attributes["connection"].execute(sa.text("KILL CONNECTION_ID()"))

    monkeypatch.setattr(command, "upgrade", dies)
    with pytest.raises(BackendUnavailableError) as info:
        run(start(mysql_url))
    assert "PendingRollbackError" not in str(info.value)


# -- refusing to touch a schema durable does not know -------------------------------------------


@pytest.mark.parametrize("auto_migrate", [True, False])
@pytest.mark.parametrize("with_tables", [True, False], ids=["migrated", "empty"])
def test_newer_unknown_revision_is_refused_and_nothing_changes(
    db_url: str, engine: sa.Engine, auto_migrate: bool, with_tables: bool
) -> None:
    if with_tables:

        async def populate() -> None:
            async with SQLAlchemyBackend(db_url) as backend:
                await backend.create_workflow(WorkflowSnapshot(id="w1", name="demo", input=[1]))

        run(populate())
    stamp(engine, "9999_from_the_future")
    before = describe(engine)

    with pytest.raises(SchemaVersionError) as info:
        run(start(db_url, auto_migrate=auto_migrate))
    message = str(info.value)
    assert "'9999_from_the_future'" in message
    assert "does not know" in message and "upgrade durable" in message
    assert f"newest is {HEAD!r}" in message

    assert describe(engine) == before
    assert revision(engine) == "9999_from_the_future"

    async def other_operations() -> None:  # neither migrating nor downgrading touch it either
        backend = SQLAlchemyBackend(db_url, auto_migrate=False)
        try:
            with pytest.raises(SchemaVersionError):
                await backend.migrate()
            with pytest.raises(SchemaVersionError):
                await backend.downgrade("base")
        finally:
            await backend.close()

    run(other_operations())
    assert describe(engine) == before


def test_auto_migrate_off_on_an_empty_database_names_the_command(
    db_url: str, engine: sa.Engine
) -> None:
    with pytest.raises(SchemaVersionError) as info:
        run(start(db_url, auto_migrate=False))
    message = str(info.value)
    assert "durable's tables are missing" in message
    assert f"needs revision {HEAD!r}" in message
    assert f"run `durable migrate {db_url}`" in message
    assert tables(engine) == set()

    run(start(db_url))  # migrating, then checking, works
    run(start(db_url, auto_migrate=False))


def test_a_query_after_the_tables_were_dropped_says_they_are_missing(db_url: str) -> None:
    async def scenario() -> None:
        backend = SQLAlchemyBackend(db_url)
        await backend.start()
        try:
            other = SQLAlchemyBackend(db_url, auto_migrate=False)
            try:
                await other.downgrade("base")
            finally:
                await other.close()
            calls: list[Callable[[], Awaitable[Any]]] = [
                lambda: backend.get_workflow("x"),
                lambda: backend.list_snapshots(),
                lambda: backend.claim_available_tasks("w", 1, timedelta(seconds=5)),
            ]
            for call in calls:
                with pytest.raises(SchemaVersionError) as info:
                    await call()
                message = str(info.value)
                assert "durable's tables are missing" in message
                assert "(no table durable_" in message
                assert f"run `durable migrate {db_url}`" in message
        finally:
            await backend.close()

    run(scenario())


# -- concurrency --------------------------------------------------------------------------------

_START_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, time
    from durable import SQLAlchemyBackend

    async def main(url: str, at: float) -> None:
        backend = SQLAlchemyBackend(url)
        time.sleep(max(0.0, at - time.time()))  # every process starts at the same moment
        try:
            await backend.start()
            print(await backend.schema_revision())
        finally:
            await backend.close()

    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
    """
)


@pytest.mark.slow
def test_processes_starting_at_once_on_a_fresh_database_all_succeed(
    db_url: str, engine: sa.Engine
) -> None:
    at = time.time() + 3  # time enough for every interpreter to import durable
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _START_SCRIPT, db_url, str(at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    for code, out, err in results:
        assert code == 0, err
        assert out.strip() == HEAD
    assert revision(engine) == HEAD
    assert differences(engine) == []


# -- the alembic command line -------------------------------------------------------------------


def _alembic(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini"), *args],
        env={**os.environ, "DURABLE_DATABASE_URL": url},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_alembic_command_line_upgrade_head(db_url: str, engine: sa.Engine) -> None:
    # what CONTRIBUTING.md tells you to type, with the URL spelled as users spell it
    url = db_url.replace("postgresql+psycopg://", "postgresql://")
    done = _alembic("upgrade", "head", url=url)
    assert done.returncode == 0, done.stderr
    assert "Running upgrade  -> " in done.stderr
    assert revision(engine) == HEAD
    assert differences(engine) == []

    current = _alembic("current", url=url)
    assert current.returncode == 0, current.stderr
    assert HEAD in current.stdout
    check = _alembic("check", url=url)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No new upgrade operations detected" in check.stdout

    run(start(db_url, auto_migrate=False))  # the backend agrees that the schema is current


def test_alembic_command_line_needs_a_url() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DURABLE_DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini"), "current"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "DURABLE_DATABASE_URL" in done.stderr


def test_executors_recorded_before_0005_get_an_incarnation_and_an_interval(
    db_url: str, engine: sa.Engine
) -> None:
    """Revision 0005 adds the executors' incarnation and heartbeat interval: rows recorded
    before it get an empty incarnation and the default interval of 10 s."""
    with engine.begin() as conn:
        migrate.upgrade(conn, "0003")
        conn.execute(
            sa.text(
                "INSERT INTO durable_executors (id, hostname, pid, started_at, heartbeat_at) "
                "VALUES ('old-node', 'h', 7, :at, :at)"
            ),
            {"at": "2026-01-01 00:00:00"},
        )
    with engine.begin() as conn:
        migrate.upgrade(conn)
        row = conn.execute(
            sa.text("SELECT id, pid, incarnation, heartbeat_interval FROM durable_executors")
        ).one()
    assert tuple(row) == ("old-node", 7, "", 10.0)
    assert differences(engine) == []


# -- rows survive the revisions that rebuild a table --------------------------------------------

KEPT = durable.Registry()


@durable.step(name="tm.double")
async def tm_double(n: int) -> int:
    return n * 2


@durable.workflow(name="tm.twice.v1", registry=KEPT)
async def tm_twice(n: int) -> int:
    return await tm_double(await tm_double(n))


def counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            table: conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in ("durable_workflows", "durable_steps", "durable_tasks", "app_orders")
        }


@pytest.mark.slow
def test_rows_survive_migrations_down_and_up_again(db_url: str, engine: sa.Engine) -> None:
    """Down to 0003 and up again (revisions that rebuild durable_workflows on SQLite, whose
    foreign keys cascade): every workflow, step and task is kept, and an application's table
    that references durable's; the queued execution then runs, the finished one keeps its
    steps. (On SQLite the rebuilds deleted every step, task and application row.)"""

    async def fill() -> None:
        async with durable.Runtime(durable.connect(db_url), registry=KEPT, recover=False) as rt:
            assert await rt.run(tm_twice, 1, workflow_id="done") == 4
            await rt.enqueue(tm_twice, 2, workflow_id="queued")

    run(fill())
    with engine.begin() as conn:  # an application's rows, deleted with their workflow
        conn.execute(
            sa.text(
                "CREATE TABLE app_orders (id INTEGER PRIMARY KEY, workflow_id VARCHAR(255) "
                "REFERENCES durable_workflows (id) ON DELETE CASCADE)"
            )
        )
        conn.execute(sa.text("INSERT INTO app_orders VALUES (1, 'done'), (2, 'queued')"))
    before = counts(engine)
    assert before == {
        "durable_workflows": 2,
        "durable_steps": 2,
        "durable_tasks": 1,
        "app_orders": 2,
    }

    async def down() -> None:
        backend = SQLAlchemyBackend(db_url)
        try:
            await backend.start()
            await backend.downgrade("0003")
        finally:
            await backend.close()

    run(down())
    assert revision(engine) == "0003" and counts(engine) == before
    run(start(db_url))  # auto-migrates to head
    assert revision(engine) == HEAD and counts(engine) == before

    async def finish() -> None:
        async with durable.Runtime(durable.connect(db_url), registry=KEPT, recover=False) as rt:
            await rt.start_worker(poll_interval=0.05)
            assert await rt.result("queued", timeout=60) == 8
            assert [s.output for s in await rt.list_steps("done")] == [2, 4]

    run(finish())


def test_tables_made_without_migrations_are_a_database_error_not_an_outage(
    db_url: str, engine: sa.Engine
) -> None:
    """durable's tables created by hand (no version table): refused before the migration's
    CREATE TABLE, as a schema durable cannot use, not as a database that cannot be reached
    (which callers wait out, for ever here)."""
    metadata.create_all(engine)
    with pytest.raises(SchemaVersionError) as refused:
        run(start(db_url))
    assert not isinstance(refused.value, durable.BackendUnavailableError)
    assert f"has {len(DURABLE_TABLES)} of durable's tables" in str(refused.value)
