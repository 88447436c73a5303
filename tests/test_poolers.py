"""durable behind a real PgBouncer: refused at start in transaction mode (each transaction may
get another PostgreSQL session, and durable keeps state in its sessions), at home in session
mode. PgBouncer runs as a process of the test's own, in front of the test's database; under CI
it must be installed (.ci/run installs it)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

import durable

pytestmark = pytest.mark.postgres

PGBOUNCER = shutil.which("pgbouncer") or next(
    (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def pooled(pg_url: str, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start PgBouncer in a pool mode in front of ``pg_url``'s server; returns its URL."""
    if PGBOUNCER is None:
        if os.environ.get("CI"):
            pytest.fail("pgbouncer is not installed (CI must install it)")
        pytest.skip("pgbouncer is not installed")
    server = sa.make_url(pg_url)
    started: list[subprocess.Popen[bytes]] = []

    def start(mode: str, pool_size: int = 20) -> str:
        port = _free_port()
        home = tmp_path / f"pgbouncer-{mode}-{pool_size}"
        home.mkdir()
        (home / "users.txt").write_text(f'"{server.username}" ""\n')
        (home / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={server.host} port={server.port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {home / 'users.txt'}\n"
            f"pool_mode = {mode}\ndefault_pool_size = {pool_size}\nmax_client_conn = 200\n"
        )
        user = []
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            owner = pwd.getpwnam("postgres")
            os.chown(home, owner.pw_uid, owner.pw_gid)
            for name in ("users.txt", "pgbouncer.ini"):
                os.chown(home / name, owner.pw_uid, owner.pw_gid)
            user = ["-u", "postgres"]
        assert PGBOUNCER is not None
        log = home / "pgbouncer.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [PGBOUNCER, *user, str(home / "pgbouncer.ini")], stdout=out, stderr=out
            )
        started.append(proc)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer did not start: {log.read_text()}") from None
                time.sleep(0.05)
        return server.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)

    yield start
    for proc in started:
        proc.terminate()
        proc.wait(10)


def _tables(url: str) -> list[str]:
    server = sa.make_url(url)
    with psycopg.connect(
        host=server.host, port=server.port, user=server.username, dbname=server.database
    ) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return [str(r[0]) for r in rows]


async def test_transaction_pooling_is_refused_at_start_before_anything_is_written(
    pg_url: str, pooled: Callable[[str], str]
) -> None:
    url = pooled("transaction")
    backend = durable.connect(url)
    with pytest.raises(durable.ConfigurationError, match="pool_mode = transaction") as raised:
        await backend.start()
    await backend.close()
    assert "pool_mode = session" in str(raised.value)
    assert _tables(pg_url) == []  # refused before migrating
    # the check made no setting: the sessions the pooler hands to its other clients are clean
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as c:
        for _ in range(3):
            assert c.execute("SHOW enable_seqscan").fetchone() == ("on",)
            assert c.execute("SHOW plan_cache_mode").fetchone() == ("auto",)


async def test_transaction_pooling_with_one_session_is_refused_at_once(
    pg_url: str, pooled: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one session in the pool, the check's second connection waited in the pooler's
    queue for the session its first held, until the pooler gave up (120 s), and the start
    failed saying the database could not be reached."""
    from durable.backends.sql import direct

    monkeypatch.setattr(direct, "SESSION_CHECK_WAIT", 1.0)
    url = pooled("transaction", pool_size=1)
    backend = durable.connect(url)
    started = time.monotonic()
    with pytest.raises(durable.ConfigurationError, match="pool_mode = transaction"):
        await backend.start()
    await backend.close()
    assert time.monotonic() - started < 30
    assert _tables(pg_url) == []


@durable.step
async def add(a: int, b: int) -> int:
    return a + b


@durable.workflow
async def three_adds(x: int) -> int:
    y = await add(x, 1)
    y = await add(y, 2)
    return await add(y, 3)


async def test_session_pooling_runs_workflows(pooled: Callable[[str], str]) -> None:
    url = pooled("session")
    async with durable.Runtime(durable.connect(url)) as runtime:
        await runtime.start_worker(concurrency=8)
        ids = [await runtime.enqueue(three_adds, n) for n in range(40)]
        assert [await runtime.result(i, timeout=60) for i in ids] == [n + 6 for n in range(40)]
        assert len(await runtime.list_steps(ids[0])) == 3
