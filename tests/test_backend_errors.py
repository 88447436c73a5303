"""Configuration and availability errors of durable.connect and the backends it builds, and the
choice of serializer."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import durable
from durable.backends import PersistentBackend, SQLAlchemyBackend
from durable.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    DurableError,
    SerializationError,
    WorkflowNotFoundError,
)
from durable.models import StepRecord, TaskSpec, WorkflowSnapshot


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("mysql+mysqlconnector://user@localhost/db", "mysql+mysqlconnector"),
        ("redis://localhost:6379/0", "redis"),
        ("oracle+cx_oracle://u@h/db", "oracle+cx_oracle"),
        ("sqlite+pysqlcipher:///x.db", "sqlite+pysqlcipher"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg"),
        ("nosuchthing://x", "nosuchthing"),
    ],
)
def test_unknown_scheme_is_a_configuration_error(url: str, scheme: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        durable.connect(url)
    assert repr(scheme) in str(info.value)


@pytest.mark.parametrize(
    "url",
    ["not a url", "", "://nothing", "sqlite:/x.db", "postgresql://u@h:notaport/db"],
)
def test_malformed_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        durable.connect(url)
    assert repr(url) in str(info.value)


def test_url_that_is_no_string_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="None"):
        durable.connect(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "missing", "hint"),
    [
        ("mysql://root@127.0.0.1/x", "aiomysql", "pip install 'durable-sqla[mysql]'"),
        ("mariadb+pymysql://root@127.0.0.1/x", "pymysql", "pip install 'durable-sqla[mysql]'"),
        ("mysql+asyncmy://root@127.0.0.1/x", "asyncmy", "pip install asyncmy"),
    ],
)
def test_a_driver_that_is_not_installed_is_named_with_its_install(
    url: str, missing: str, hint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A MySQL URL where the mysql extra is not installed (the driver stands for it here)."""
    monkeypatch.setitem(sys.modules, missing, None)  # import of it fails, as when not installed
    with pytest.raises(ConfigurationError) as info:
        durable.connect(url)
    assert f"need the {missing} driver, which is not installed: {hint}" in str(info.value)


@pytest.mark.parametrize(
    ("url", "options", "named"),
    [
        ("memory://", {"auto_migrate": False}, "auto_migrate"),
        ("sqlite:///:memory:", {"serializer": "yaml"}, "yaml"),
        ("memory://", {"serializer": "marshal"}, "marshal"),
        ("sqlite:///:memory:", {"sqlite_synchronous": "SOMETIMES"}, "SOMETIMES"),
    ],
)
def test_bad_options_are_configuration_errors(
    url: str, options: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named):
        durable.connect(url, **options)


async def test_unreachable_postgres_is_unavailable_on_start() -> None:
    backend = durable.connect("postgresql+psycopg://postgres@127.0.0.1:1/durable")
    assert isinstance(backend, SQLAlchemyBackend)
    with pytest.raises(BackendUnavailableError) as info:
        await backend.start()
    assert "127.0.0.1:1" in str(info.value)
    assert info.value.__cause__ is not None  # the driver's error is kept
    with pytest.raises(BackendUnavailableError):
        await backend.get_workflow("wf")
    assert backend.checked_out_connections() == 0
    await backend.close()
    await backend.close()  # idempotent


def _sqlite_urls(path: Path | str) -> list[str]:
    return [f"sqlite:///{path}", f"sqlite+aiosqlite:///{path}"]


async def _assert_start_fails(url: str) -> DurableError:
    backend = durable.connect(url)
    assert isinstance(backend, SQLAlchemyBackend)
    try:
        with pytest.raises(DurableError) as info:
            await backend.start()
        assert backend.checked_out_connections() == 0
    finally:
        await backend.close()
        await _join_aiosqlite_threads()
    return info.value


async def _join_aiosqlite_threads() -> None:
    """Let aiosqlite's worker threads finish while the event loop still runs.

    aiosqlite (0.22) stops the thread of a connection that failed to open without waiting for it;
    if the loop closes first, the thread dies with "Event loop is closed" (omnilib/aiosqlite#241),
    which pytest reports as an unhandled thread exception.
    """
    for thread in threading.enumerate():
        if "_connection_worker_thread" in thread.name:
            await asyncio.to_thread(thread.join, 5)


@pytest.fixture
def uncreatable_paths(tmp_path: Path) -> list[Path]:
    """Paths whose directory is a regular file, or does not exist."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    return [a_file / "durable.db", tmp_path / "missing-dir" / "durable.db"]


@pytest.fixture
def unwritable_path(tmp_path: Path) -> Path:
    """A path in a place this user cannot write to."""
    if os.geteuid() == 0:  # root ignores permissions; a read-only file system does not
        if not Path("/proc/self").is_dir():
            pytest.skip("no /proc to stand for a read-only location")
        return Path("/proc/durable-contract-test.db")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return locked / "durable.db"


@pytest.fixture
def garbage_file(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not an SQLite database" * 100)
    return path


@pytest.mark.parametrize("driver", [0, 1], ids=["sqlite", "aiosqlite"])
async def test_sqlite_path_that_cannot_be_created(
    uncreatable_paths: list[Path], driver: int
) -> None:
    for path in uncreatable_paths:
        error = await _assert_start_fails(_sqlite_urls(path)[driver])
        assert isinstance(error, BackendUnavailableError)
        assert str(path) in str(error)


@pytest.mark.parametrize("driver", [0, 1], ids=["sqlite", "aiosqlite"])
async def test_sqlite_path_that_is_not_writable(unwritable_path: Path, driver: int) -> None:
    error = await _assert_start_fails(_sqlite_urls(unwritable_path)[driver])
    assert isinstance(error, BackendError)


@pytest.mark.parametrize("driver", [0, 1], ids=["sqlite", "aiosqlite"])
async def test_sqlite_file_that_is_not_a_database(garbage_file: Path, driver: int) -> None:
    error = await _assert_start_fails(_sqlite_urls(garbage_file)[driver])
    assert isinstance(error, BackendError)


# -- serializers -------------------------------------------------------------------------------


def _workflow(instance_id: str, value: Any) -> WorkflowSnapshot:
    return WorkflowSnapshot(
        id=instance_id,
        name="wf",
        input=value,
        steps=(StepRecord(position=0, name="s", output=value),),
    )


async def test_json_is_the_default_and_rejects_a_set(backend_url: str) -> None:
    async with durable.connect(backend_url) as backend:
        assert backend.serializer.name == "json"
        with pytest.raises(SerializationError, match="set"):
            await backend.create_workflow(
                _workflow("wf", {"tags": {1, 2}}), task=TaskSpec(instance_id="wf", name="wf")
            )
        with pytest.raises(WorkflowNotFoundError):
            await backend.get_workflow("wf")
        assert await backend.find_available_tasks("w", 10) == []


async def test_pickle_only_when_asked_round_trips_a_set(backend_url: str) -> None:
    value = {"tags": {1, 2, 3}, "frozen": frozenset({"a"}), "pair": (1, 2), "bytes": b"\x00\xff"}
    async with durable.connect(backend_url, serializer="pickle") as backend:
        assert backend.serializer.name == "pickle"
        info, created = await backend.create_workflow(
            _workflow("wf", value), task=TaskSpec(instance_id="wf", name="wf")
        )
        assert created and info.input == value
        claim = await backend.claim_task("wf", "workflow", "w1", timedelta(seconds=60))
        assert claim is not None
        await backend.record_step(
            "wf", StepRecord(position=1, name="t", output={4, 5}), worker_id="w1"
        )
        done = await backend.finish_workflow(
            "wf", worker_id="w1", status=durable.WorkflowStatus.SUCCEEDED, output={"out"}
        )
        assert done.output == {"out"}
        loaded = await backend.load_snapshot("wf")
        assert loaded.input == value and type(loaded.input["tags"]) is set
        assert [s.output for s in loaded.steps] == [value, {4, 5}]
        assert loaded.output == {"out"}
    if backend_url.startswith("sqlite:///"):
        # what is stored is not JSON: pickle was used because it was asked for
        with sqlite3.connect(backend_url.removeprefix("sqlite:///")) as conn:
            [(stored,)] = conn.execute("SELECT input FROM durable_workflows").fetchall()
        assert not stored.startswith("{")


async def test_a_backend_can_be_given_a_serializer_instance(backend_url: str) -> None:
    async with durable.connect(backend_url, serializer=durable.PickleSerializer()) as backend:
        await backend.create_workflow(_workflow("wf", {1}))
        assert (await backend.get_workflow("wf")).input == {1}
        assert isinstance(backend, PersistentBackend)
