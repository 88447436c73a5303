"""Fixtures shared by the whole suite: database URLs for every backend kind.

PostgreSQL comes from pytest-postgresql. When a server is reachable (DURABLE_PG_HOST /
DURABLE_PG_PORT, default 127.0.0.1:5432, as started by .ci/run) the ``postgresql_noproc``
factory uses it: this is the only way as root, since PostgreSQL refuses to run as root. Otherwise,
as a normal user with PostgreSQL installed, pytest-postgresql starts its own server
(``postgresql_proc``). Every test gets a fresh database, dropped afterwards.

Under CI (``CI`` set), an unreachable PostgreSQL is an error, not a skip.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_postgresql import factories
from support import Processes

PG_HOST = os.environ.get("DURABLE_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("DURABLE_PG_PORT", "5432"))
PG_USER = os.environ.get("DURABLE_PG_USER", "postgres")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


PG_SERVER_RUNNING = _reachable(PG_HOST, PG_PORT)

# one database name per test session, so that concurrent sessions on one server do not collide
PG_DBNAME = f"durable_test_{os.getpid()}"

if PG_SERVER_RUNNING or os.geteuid() == 0:
    postgresql_server = factories.postgresql_noproc(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=PG_DBNAME
    )
else:  # pragma: no cover - depends on the machine
    postgresql_server = factories.postgresql_proc(dbname=PG_DBNAME)

postgresql = factories.postgresql("postgresql_server")


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A URL to a fresh, empty PostgreSQL database, dropped after the test."""
    if not PG_SERVER_RUNNING and os.geteuid() == 0:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} (CI must start it)")
        pytest.skip(f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT}")
    conn = request.getfixturevalue("postgresql")
    info = conn.info
    yield f"postgresql+psycopg://{info.user}@{info.host}:{info.port}/{info.dbname}"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A URL to a new SQLite file (standard-library driver)."""
    return f"sqlite:///{tmp_path / 'durable.db'}"


@pytest.fixture
def aiosqlite_url(tmp_path: Path) -> str:
    """A URL to a new SQLite file through aiosqlite."""
    return f"sqlite+aiosqlite:///{tmp_path / 'durable-aio.db'}"


BACKEND_KINDS = [
    "memory",
    "sqlite",
    "aiosqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(params=BACKEND_KINDS)
def backend_url(request: pytest.FixtureRequest) -> str:
    """One URL per backend kind: memory://, a SQLite file (both drivers), PostgreSQL."""
    kind = request.param
    if kind == "memory":
        return "memory://"
    return str(
        request.getfixturevalue(
            {"sqlite": "sqlite_url", "aiosqlite": "aiosqlite_url", "postgres": "pg_url"}[kind]
        )
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A SQLite file or a fresh PostgreSQL database: what several processes can share."""
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """``processes(program, *args, name=...)`` starts a Python program as a real process, its
    output in ``tmp_path / f"{name}.out"``; every process still running at the end of the test
    is killed (SIGKILL) and reaped."""
    started: list[subprocess.Popen[bytes]] = []

    def start(program: Path, *args: str, name: str) -> subprocess.Popen[bytes]:
        with (tmp_path / f"{name}.out").open("wb") as out:  # the child keeps its copy
            process = subprocess.Popen(
                [sys.executable, str(program), *args],
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=60)
