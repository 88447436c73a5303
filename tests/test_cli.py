"""The ``durable`` command line: migrate, migrate --check, downgrade (which asks first),
schema-revision, and the workflow commands' refusal of a schema they cannot use."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from durable import Registry, Runtime, cli, connect, workflow
from durable.backends.sql import SQLAlchemyBackend
from durable.backends.sql import migrate as migrations
from durable.backends.sql.dialects import normalize_url
from durable.cli import main
from durable.models import StepRecord, StepStatus, TaskSpec, WorkflowSnapshot, WorkflowStatus

HEAD = migrations.head_revision()


def durable(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A URL to a SQLite file that does not exist yet."""
    return f"sqlite:///{tmp_path / 'cli.db'}"


def stamp(url: str, revision: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE {migrations.VERSION_TABLE} SET version_num = :r"), {"r": revision}
        )
    engine.dispose()


def test_help_lists_the_commands() -> None:
    result = durable("--help")
    assert result.exit_code == 0
    for command in ("migrate", "downgrade", "schema-revision"):
        assert command in result.stdout
    assert durable("migrate", "-h").exit_code == 0
    version = durable("--version")
    assert version.exit_code == 0 and version.stdout.startswith("durable, version ")


def test_migrate_then_read_the_revision(db: str) -> None:
    result = durable("migrate", db)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{db}: upgraded from base (no durable tables) to {HEAD}\n"

    again = durable("migrate", db, "--revision", "head")
    assert again.exit_code == 0
    assert again.stdout == f"{db}: already at revision {HEAD}\n"

    revision = durable("schema-revision", db)
    assert revision.exit_code == 0
    assert revision.stdout == f"{HEAD}\n"
    assert revision.stderr == ""


def test_check(db: str, tmp_path: Path) -> None:
    missing = durable("migrate", db, "--check")
    assert missing.exit_code == 1
    assert "no SQLite database at" in missing.stderr
    assert not (tmp_path / "cli.db").exists()  # a check creates nothing

    sqlite3.connect(tmp_path / "cli.db").close()  # an empty database
    empty = durable("migrate", db, "--check")
    assert empty.exit_code == 1
    assert "durable's tables are missing" in empty.stderr
    assert f"run `durable migrate {db}`" in empty.stderr

    durable("migrate", db)
    current = durable("migrate", db, "--check")
    assert current.exit_code == 0, current.output
    assert current.stdout == f"{db}: up to date (revision {HEAD})\n"


def test_check_takes_no_revision(db: str) -> None:
    result = durable("migrate", db, "--check", "--revision", HEAD)
    assert result.exit_code == 2
    assert "drop --revision" in result.stderr


def test_downgrade_to_base_and_back(db: str) -> None:
    durable("migrate", db)
    down = durable("downgrade", db, "base", "--yes")
    assert down.exit_code == 0, down.output
    assert down.stdout == f"{db}: downgraded from {HEAD} to base (no durable tables)\n"

    revision = durable("schema-revision", db)
    assert revision.exit_code == 0
    assert revision.stdout == "base\n"
    assert f"needs revision {HEAD}: run `durable migrate {db}`" in revision.stderr

    assert durable("migrate", db).exit_code == 0
    assert durable("schema-revision", db).stdout == f"{HEAD}\n"


def test_unknown_revisions_are_errors(db: str) -> None:
    durable("migrate", db)
    down = durable("downgrade", db, "nope", "--yes")
    assert down.exit_code == 1
    assert "Error: cannot migrate to revision 'nope'" in down.stderr
    up = durable("migrate", db, "--revision", "nope")
    assert up.exit_code == 1
    assert "cannot migrate to revision 'nope'" in up.stderr


def test_a_database_from_a_newer_durable_is_left_alone(db: str) -> None:
    durable("migrate", db)
    stamp(db, "9999_future")

    for args in (["migrate", db], ["migrate", db, "--check"], ["downgrade", db, "base", "--yes"]):
        result = durable(*args)
        assert result.exit_code == 1, args
        assert "'9999_future', which this version of durable does not know" in result.stderr

    revision = durable("schema-revision", db)
    assert revision.exit_code == 0
    assert revision.stdout == "9999_future\n"
    assert "a newer durable migrated it" in revision.stderr


def test_bad_urls(tmp_path: Path) -> None:
    memory = durable("migrate", "memory://")
    assert memory.exit_code == 2
    assert "memory:// keeps nothing" in memory.stderr

    mysql = durable("migrate", "mysql+mysqlconnector://localhost/db")
    assert mysql.exit_code == 1
    assert "unsupported database URL scheme 'mysql+mysqlconnector'" in mysql.stderr

    nowhere = durable("migrate", "postgresql://postgres@127.0.0.1:1/nope")
    assert nowhere.exit_code == 1
    assert "cannot reach the database" in nowhere.stderr


@pytest.mark.postgres
def test_postgres(pg_url: str) -> None:
    # as a user writes it, with a password that must not be printed
    url = pg_url.replace("postgresql+psycopg://postgres@", "postgresql://postgres:s3cret@")
    assert durable("migrate", url, "--check").exit_code == 1

    result = durable("migrate", url)
    assert result.exit_code == 0, result.output
    assert "upgraded from base (no durable tables) to" in result.stdout
    assert "s3cret" not in result.stdout and "***" in result.stdout

    assert durable("migrate", url, "--check").exit_code == 0
    assert durable("schema-revision", url).stdout == f"{HEAD}\n"
    assert durable("downgrade", url, "base", "--yes").exit_code == 0
    assert durable("schema-revision", url).stdout == "base\n"


def test_the_installed_script(db: str) -> None:
    """The ``durable`` entry point that ``pip install`` puts beside the interpreter."""
    script = Path(sys.executable).with_name("durable")
    if not script.exists():
        found = shutil.which("durable")
        assert found, "the durable script is not installed: pip install -e ."
        script = Path(found)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(script), *args], capture_output=True, text=True, timeout=120, env=os.environ
        )

    migrated = run("migrate", db)
    assert migrated.returncode == 0, migrated.stderr
    assert f"to {HEAD}" in migrated.stdout
    assert run("schema-revision", db).stdout == f"{HEAD}\n"
    assert run("migrate", "--check", db).returncode == 0
    assert run("downgrade", db, "base", "--yes").returncode == 0
    failed = run("migrate", "--check", db)
    assert failed.returncode == 1
    assert "durable's tables are missing" in failed.stderr


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_processes_migrating_at_once_say_which_one_upgraded(
    backend: str, db: str, request: pytest.FixtureRequest
) -> None:
    """Several ``durable migrate`` started together on a new database: one upgrades it, and
    only that one says so; the others wait for it and find it done (each reads the revision
    while holding the migration lock, not before it)."""
    url = db if backend == "sqlite" else request.getfixturevalue("pg_url")
    command = [sys.executable, "-c", "from durable.cli import main; main()", "migrate", url]
    runs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    said = sorted(out.split(": ", 1)[1] for out, _ in outputs)
    assert said == [
        f"already at revision {HEAD}\n",
        f"already at revision {HEAD}\n",
        f"upgraded from base (no durable tables) to {HEAD}\n",
    ], outputs


@pytest.mark.parametrize("module", ["durable", "durable.cli"])
def test_python_dash_m_runs_the_command(module: str, db: str) -> None:
    """``python -m durable.cli worker ...`` did nothing and exited 0."""
    run = subprocess.run(
        [sys.executable, "-m", module, "migrate", db],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"{db}: upgraded from base (no durable tables) to {HEAD}\n"
    usage = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True)
    assert "Usage: durable" in usage.stdout + usage.stderr


# -- downgrading asks first ----------------------------------------------------------------------


def test_downgrade_needs_a_confirmation(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    durable("migrate", db)
    unasked = durable("downgrade", db, "base")  # stdin is no terminal here
    assert unasked.exit_code == 2
    assert "drop every durable table" in unasked.stderr and "--yes" in unasked.stderr
    assert durable("schema-revision", db).stdout == f"{HEAD}\n"

    monkeypatch.setattr(cli, "stdin_is_terminal", lambda: True)
    declined = CliRunner().invoke(main, ["downgrade", db, "base"], input="n\n")
    assert declined.exit_code == 1
    assert "Go on?" in declined.output and "Aborted" in declined.output
    assert durable("schema-revision", db).stdout == f"{HEAD}\n"

    accepted = CliRunner().invoke(main, ["downgrade", db, "base"], input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert f"downgraded from {HEAD} to base" in accepted.output
    assert durable("schema-revision", db).stdout == "base\n"


# -- commands on durable's tables: a newer schema, missing tables --------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_db(request: pytest.FixtureRequest, db: str) -> str:
    """An empty database: a SQLite file (created empty) or a PostgreSQL database."""
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    sqlite3.connect(db.removeprefix("sqlite:///")).close()
    return db


def with_workflows(url: str) -> None:
    """Migrate ``url`` and store a pending workflow (with its task) and a failed one."""

    async def fill() -> None:
        async with SQLAlchemyBackend(url) as backend:
            await backend.create_workflow(
                WorkflowSnapshot(id="pending-1", name="cli.wf", input={"args": [], "kwargs": {}}),
                task=TaskSpec(instance_id="pending-1", name="cli.wf"),
            )
            await backend.create_workflow(
                WorkflowSnapshot(
                    id="failed-1",
                    name="cli.wf",
                    status=WorkflowStatus.FAILED,
                    input={"args": [], "kwargs": {}},
                )
            )

    asyncio.run(fill())


def contents(url: str) -> dict[str, list[Any]]:
    """Every row of durable's tables, to compare before and after a command."""
    engine = sa.create_engine(normalize_url(url))
    try:
        names = [n for n in sa.inspect(engine).get_table_names() if n.startswith("durable_")]
        with engine.connect() as conn:
            return {
                n: sorted(map(tuple, conn.execute(sa.text(f"SELECT * FROM {n}"))), key=repr)
                for n in names
            }
    finally:
        engine.dispose()


TABLE_COMMANDS = [
    ["workflows", "cancel", "{url}", "pending-1"],
    ["workflows", "retry", "{url}", "failed-1"],
    ["workflows", "list", "{url}"],
    ["workflows", "get", "{url}", "pending-1"],
    ["workflows", "steps", "{url}", "pending-1"],
    ["workflows", "waiting", "{url}"],
    ["workflows", "messages", "{url}", "pending-1"],
]


def test_commands_refuse_a_database_from_a_newer_durable(any_db: str) -> None:
    with_workflows(any_db)
    assert durable("workflows", "cancel", any_db, "pending-1").exit_code == 0  # works at head
    assert durable("workflows", "retry", any_db, "failed-1").exit_code == 0
    stamp(any_db, "9999_future")
    before = contents(any_db)

    for command in TABLE_COMMANDS:
        args = [a.format(url=any_db) for a in command]
        result = durable(*args)
        assert result.exit_code == 1, (args, result.output)
        assert "'9999_future', which this version of durable does not know" in result.stderr
    assert contents(any_db) == before


def test_commands_say_when_the_tables_are_missing(any_db: str) -> None:
    for command in TABLE_COMMANDS:
        args = [a.format(url=any_db) for a in command]
        result = durable(*args)
        assert result.exit_code == 1, (args, result.output)
        assert "durable's tables are missing" in result.stderr
        assert "run `durable migrate" in result.stderr
        assert "cannot reach" not in result.stderr

    with_workflows(any_db)
    assert durable("downgrade", any_db, "base", "--yes").exit_code == 0
    gone = durable("workflows", "list", any_db)
    assert gone.exit_code == 1 and "durable's tables are missing" in gone.stderr


def test_the_listing_shows_an_unreadable_row(db: str) -> None:
    durable("migrate", db)
    with_workflows(db)
    engine = sa.create_engine(db)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE durable_workflows SET input = '{x' WHERE id = 'failed-1'"))
    engine.dispose()

    listed = durable("workflows", "list", db)
    assert listed.exit_code == 0, listed.output
    lines = {line.split("\t")[0]: line for line in listed.stdout.splitlines()}
    assert set(lines) == {"pending-1", "failed-1"}
    assert "unreadable" not in lines["pending-1"]
    assert (
        "unreadable: the stored workflow 'failed-1' cannot be read: column 'input'"
        in (lines["failed-1"])
    )
    got = durable("workflows", "get", db, "failed-1")
    assert got.exit_code == 1 and "column 'input'" in got.stderr


PICKLED = Registry()


@workflow(name="cli.pickled.v1", registry=PICKLED)
async def pickled(x: int) -> dict[str, int]:
    return {"ok": x}


def pickled_database(url: str) -> None:
    """A real run through ``durable.connect(url, serializer="pickle")``."""

    async def run() -> None:
        backend = connect(url, serializer="pickle")
        async with Runtime(backend, registry=PICKLED, executor_id="p-1") as runtime:
            assert await runtime.run(pickled, 1, workflow_id="pk-1") == {"ok": 1}

    asyncio.run(run())


def test_a_database_written_with_pickle(db: str, tmp_path: Path) -> None:
    """Read with JSON, a pickled row is unreadable: the message says which serializer may read
    it; ``--serializer pickle`` (or DURABLE_SERIALIZER) reads it."""
    pickled_database(db)
    hint = "if the database was written with serializer='pickle', read it with --serializer pickle"
    listed = durable("workflows", "list", db)
    assert listed.exit_code == 0 and hint in listed.stdout
    got = durable("workflows", "get", db, "pk-1")
    assert got.exit_code == 1 and hint in got.stderr

    listed = durable("workflows", "list", db, "--serializer", "pickle")
    assert listed.exit_code == 0 and "unreadable" not in listed.stdout
    assert listed.stdout.startswith("pk-1\tcli.pickled.v1\tsucceeded")
    got = durable("workflows", "get", db, "pk-1", "--serializer", "pickle")
    assert got.exit_code == 0 and json.loads(got.stdout)["output"] == {"ok": 1}
    from_env = CliRunner(env={"DURABLE_SERIALIZER": "pickle"}).invoke(
        main, ["workflows", "steps", db, "pk-1", "--json"], catch_exceptions=False
    )
    assert from_env.exit_code == 0 and json.loads(from_env.stdout) == []
    history = tmp_path / "pk-1.json"
    exported = durable(
        "workflows", "export", db, "pk-1", "-o", str(history), "--serializer", "pickle"
    )
    assert exported.exit_code == 0, exported.output
    assert json.loads(history.read_text())["serializer"] == "pickle"
    # the history file's values are pickled too: read with the same --serializer
    refused = durable("workflows", "replay", "-m", "json", "-f", str(history))
    assert refused.exit_code == 1 and "'pickle' serializer" in refused.stderr
    read = durable(
        "workflows", "replay", "-m", "json", "-f", str(history), "--serializer", "pickle"
    )
    assert "pk-1 (cli.pickled.v1): NOT REPLAYED: no such workflow" in read.stdout
    bad = durable("workflows", "list", db, "--serializer", "yaml")
    assert bad.exit_code == 2 and "--serializer" in bad.stderr
    assert "--serializer" not in durable("migrate", "--help").stdout


def test_the_waiting_listing(db: str) -> None:
    """``durable workflows waiting`` says what each waiting execution waits for."""

    async def setup() -> None:
        async with SQLAlchemyBackend(db) as backend:
            for instance_id, name, output in (
                ("nap-1", "durable.sleep", "2030-01-01T00:00:00+00:00"),
                ("ask-1", "durable.recv", None),
            ):
                await backend.create_workflow(
                    WorkflowSnapshot(id=instance_id, name="w.v1"),
                    task=TaskSpec(instance_id=instance_id, name="w.v1"),
                )
                await backend.claim_task(instance_id, "workflow", "x", timedelta(seconds=30))
                await backend.begin_execution(instance_id, "x")
                step = StepRecord(
                    position=0, name=name, status=StepStatus.PENDING, input="topic", output=output
                )
                await backend.record_step(instance_id, step, worker_id="x")
                await backend.reschedule_workflow(
                    instance_id, worker_id="x", run_after=timedelta(hours=1), consume_attempt=False
                )

    asyncio.run(setup())
    both = durable("workflows", "waiting", db)
    assert both.exit_code == 0, both.output
    assert both.stdout.splitlines() == [
        "ask-1\tw.v1\twaiting for topic 'topic'",
        "nap-1\tw.v1\tsleeping until 2030-01-01T00:00:00+00:00",
    ]
    sleeping = durable("workflows", "waiting", db, "--kind", "sleep")
    assert sleeping.stdout.splitlines() == ["nap-1\tw.v1\tsleeping until 2030-01-01T00:00:00+00:00"]


def test_the_messages_listing(db: str) -> None:
    """``durable workflows messages`` lists what was sent to an execution: pending ones by
    default, every one with ``--all``, one topic with ``--topic``; an unknown id is an error."""

    async def setup() -> None:
        async with SQLAlchemyBackend(db) as backend:
            await backend.create_workflow(
                WorkflowSnapshot(id="inbox-1", name="w.v1"),
                task=TaskSpec(instance_id="inbox-1", name="w.v1"),
            )
            await backend.send_message("inbox-1", "decision", {"ok": True})
            await backend.send_message("inbox-1", "note", "hello")

    asyncio.run(setup())
    pending = durable("workflows", "messages", db, "inbox-1")
    assert pending.exit_code == 0, pending.output
    rows = [line.split("\t") for line in pending.stdout.splitlines()]
    assert [(r[1], r[2], r[4], r[5]) for r in rows] == [
        ("decision", "message", "received=pending", '{"ok": true}'),
        ("note", "message", "received=pending", '"hello"'),
    ]
    assert int(rows[0][0]) < int(rows[1][0])  # in the order sent
    one = durable("workflows", "messages", db, "inbox-1", "--topic", "note", "--all")
    assert [line.split("\t")[1] for line in one.stdout.splitlines()] == ["note"]
    missing = durable("workflows", "messages", db, "nobody")
    assert missing.exit_code == 1 and "nobody" in missing.stderr
