"""Fixtures shared by the whole suite: database URLs for every backend kind.

PostgreSQL comes from pytest-postgresql. When a server is reachable (DURABLE_PG_HOST /
DURABLE_PG_PORT, default 127.0.0.1:5432, as started by .ci/run) the ``postgresql_noproc``
factory uses it: this is the only way as root, since PostgreSQL refuses to run as root. Otherwise,
as a normal user with PostgreSQL installed, pytest-postgresql starts its own server
(``postgresql_proc``). Every test gets a fresh database, dropped afterwards.

Under CI (``CI`` set), an unreachable PostgreSQL is an error, not a skip.
"""

from __future__ import annotations

import functools
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


MYSQL_HOST = os.environ.get("DURABLE_MYSQL_HOST", "127.0.0.1")
MYSQL_PORT = int(os.environ.get("DURABLE_MYSQL_PORT", "3306"))
MYSQL_USER = os.environ.get("DURABLE_MYSQL_USER", "root")


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A URL to a fresh, empty MySQL/MariaDB database, dropped after the test (named after the
    pytest process and a counter, so that concurrent sessions on one server do not collide).

    Skipped when no server answers on DURABLE_MYSQL_HOST:DURABLE_MYSQL_PORT (default
    127.0.0.1:3306, user root without a password), failed instead under CI."""
    try:
        import pymysql
    except ImportError:  # pragma: no cover - the test extra installs it
        if os.environ.get("CI"):
            pytest.fail("PyMySQL is not installed (the test extra installs it)")
        pytest.skip("PyMySQL is not installed")
    if not _reachable(MYSQL_HOST, MYSQL_PORT):
        if os.environ.get("CI"):
            pytest.fail(f"MySQL is not reachable at {MYSQL_HOST}:{MYSQL_PORT} (CI must start it)")
        pytest.skip(f"MySQL is not reachable at {MYSQL_HOST}:{MYSQL_PORT}")
    global _MYSQL_COUNT
    _MYSQL_COUNT += 1
    name = f"durable_test_{os.getpid()}_{_MYSQL_COUNT}"
    admin = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, autocommit=True)
    try:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cursor.execute(
                f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin"
            )
        yield f"mysql+aiomysql://{MYSQL_USER}@{MYSQL_HOST}:{MYSQL_PORT}/{name}"
    finally:
        try:
            with admin.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            admin.close()


_MYSQL_COUNT = 0

#: The test modules whose ``mysql`` parameters run by default: the contract suite, the
#: migrations, the MySQL tests, the crash tests and a chosen set of runtime tests. The mysql
#: parameter everywhere would add several minutes to the suite; DURABLE_MYSQL_ALL=1 runs it
#: everywhere (``backend_url`` has it in every module).
MYSQL_MODULES = frozenset(
    {
        "test_contract.py",
        "test_change_feed.py",
        "test_migrations.py",
        "test_mysql.py",
        "test_process_fork.py",
        "test_deadlocks.py",
        "test_crash_recovery.py",
        "test_runtime.py",
        "test_workers.py",
        "test_claim_begin.py",
        "test_poison_rows.py",
        "test_messages.py",
        "test_worker_prefetch.py",
        "test_examples.py",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the ``mysql`` parameters outside :data:`MYSQL_MODULES`, unless
    DURABLE_MYSQL_ALL is set."""
    if os.environ.get("DURABLE_MYSQL_ALL"):
        return
    keep, drop = [], []
    for item in items:
        outside = item.path.name not in MYSQL_MODULES
        (drop if outside and item.get_closest_marker("mysql") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session")
def _mysql_session_url() -> Iterator[str]:
    """One database for the session's backend tests, migrated once (MariaDB's DDL makes a
    migration take seconds); dropped at the end."""
    import pymysql

    name = f"durable_test_{os.getpid()}"
    admin = pymysql.connect(host=MYSQL_HOST, port=MYSQL_PORT, user=MYSQL_USER, autocommit=True)
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin")
    try:
        yield f"mysql+aiomysql://{MYSQL_USER}@{MYSQL_HOST}:{MYSQL_PORT}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@pytest.fixture
def mysql_backend_url(request: pytest.FixtureRequest) -> str:
    """A URL to a MySQL/MariaDB database at durable's head revision with every durable table
    empty: the session's database (:func:`_mysql_session_url`), emptied before the test. Tests
    that need an empty database (no tables at all) take ``mysql_url``."""
    if not _reachable(MYSQL_HOST, MYSQL_PORT):
        if os.environ.get("CI"):
            pytest.fail(f"MySQL is not reachable at {MYSQL_HOST}:{MYSQL_PORT} (CI must start it)")
        pytest.skip(f"MySQL is not reachable at {MYSQL_HOST}:{MYSQL_PORT}")
    url = str(request.getfixturevalue("_mysql_session_url"))
    import asyncio
    import concurrent.futures

    import pymysql

    from durable.backends.sql import migrate
    from durable.backends.sql.backend import SQLAlchemyBackend

    admin = pymysql.connect(
        host=MYSQL_HOST,
        port=MYSQL_PORT,
        user=MYSQL_USER,
        autocommit=True,
        database=url.rsplit("/", 1)[1],
    )
    try:
        with admin.cursor() as cursor:
            cursor.execute("SHOW FULL TABLES")
            rows = cursor.fetchall()
            tables = [row[0] for row in rows]
            # the change feed's sequence is listed as a table, but takes no DELETE
            sequences = {row[0] for row in rows if row[1] == "SEQUENCE"}
            version = None
            if migrate.VERSION_TABLE in tables:
                cursor.execute(f"SELECT version_num FROM {migrate.VERSION_TABLE}")
                version = cursor.fetchone()
            if (
                version is None
                or version[0] != _head_revision()
                or not _durable_tables() <= set(tables)
            ):
                for table in tables:  # a test changed the schema: start it over
                    cursor.execute("SET FOREIGN_KEY_CHECKS = 0")
                    cursor.execute(f"DROP TABLE `{table}`")
                # on a thread of its own: an async test that asks for this fixture by name
                # (getfixturevalue) calls it inside its running event loop
                with concurrent.futures.ThreadPoolExecutor(1) as pool:
                    pool.submit(asyncio.run, _start_and_close(SQLAlchemyBackend(url))).result()
            else:
                cursor.execute("SET FOREIGN_KEY_CHECKS = 0")
                for table in tables:
                    if table != migrate.VERSION_TABLE and table not in sequences:
                        cursor.execute(f"DELETE FROM `{table}`")
    finally:
        admin.close()
    return url


@functools.cache
def _durable_tables() -> set[str]:
    from durable.backends.sql.schema import metadata

    return set(metadata.tables)


@functools.cache
def _head_revision() -> str:
    from durable.backends.sql import migrate

    return migrate.head_revision()


async def _start_and_close(backend: object) -> None:
    async with backend:  # type: ignore[attr-defined]
        pass


BACKEND_KINDS = [
    "memory",
    "sqlite",
    "aiosqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mysql", marks=pytest.mark.mysql),
]


@pytest.fixture(params=BACKEND_KINDS)
def backend_url(request: pytest.FixtureRequest) -> str:
    """One URL per backend kind: memory://, a SQLite file (both drivers), PostgreSQL, MySQL."""
    kind = request.param
    if kind == "memory":
        return "memory://"
    return str(
        request.getfixturevalue(
            {
                "sqlite": "sqlite_url",
                "aiosqlite": "aiosqlite_url",
                "postgres": "pg_url",
                "mysql": "mysql_backend_url",
            }[kind]
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
