"""Helpers shared by the benchmark scripts (not a benchmark itself).

The scripts put this folder on ``sys.path`` (running ``python benchmarks/<name>.py`` does it by
itself), so they import this module as ``benchlib``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.engine import make_url

import durable

#: Where PostgreSQL benchmarks run unless ``--pg-url`` says otherwise. The database is created
#: when missing; every benchmark works in its own schemas, which it drops first.
DEFAULT_PG_URL = os.environ.get(
    "DURABLE_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/durable_bench"
)
DEFAULT_MYSQL_URL = os.environ.get(
    "DURABLE_BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/durable_bench"
)
REPO = Path(__file__).resolve().parents[1]


def log(message: str) -> None:
    """Progress, on stderr (stdout carries the results)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- statistics --------------------------------------------------------------------------------


def summary(samples_us: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and quartiles of samples in microseconds (samples kept, rounded)."""
    values = sorted(samples_us)
    if not values:
        raise ValueError("no samples")
    quartiles = (
        statistics.quantiles(values, n=4, method="inclusive")
        if len(values) > 1
        else [values[0]] * 3
    )
    return {
        "median": round(statistics.median(values), 2),
        "min": round(values[0], 2),
        "max": round(values[-1], 2),
        "p25": round(quartiles[0], 2),
        "p75": round(quartiles[2], 2),
        "n": len(values),
    }


def ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator > 0 else float("inf")


def target(
    name: str, value: float, limit: float, unit: str, *, backend: str, headline: bool = True
) -> dict[str, Any]:
    """A target and whether ``value`` meets it (``value <= limit``)."""
    return {
        "backend": backend,
        "name": name,
        "value": round(value, 3),
        "limit": limit,
        "unit": unit,
        "pass": value <= limit,
        "headline": headline,
    }


# -- PostgreSQL ---------------------------------------------------------------------------------


def pg_conninfo(url: str) -> str:
    """A libpq conninfo for a SQLAlchemy URL (``postgresql+psycopg://...`` -> ``postgresql://``)."""
    parsed = make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


def ensure_pg_database(url: str) -> None:
    """Create the URL's database if it does not exist (connecting to ``postgres`` to do it)."""
    parsed = make_url(url)
    try:
        with psycopg.connect(pg_conninfo(url), connect_timeout=5):
            return
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
    admin = pg_conninfo(parsed.set(database="postgres").render_as_string(hide_password=False))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(parsed.database))))
    log(f"created database {parsed.database!r}")


def pg_search_path(schema: str) -> dict[str, Any]:
    """libpq options that make ``schema`` the only schema unqualified names resolve in."""
    return {"options": f"-c search_path={schema}"}


def reset_pg_schema(url: str, schema: str) -> None:
    """Drop ``schema`` (and everything in it) and create it empty."""
    with psycopg.connect(pg_conninfo(url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def drop_pg_schema(url: str, schema: str) -> None:
    with psycopg.connect(pg_conninfo(url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def pg_connect_backend(url: str, schema: str) -> durable.SQLAlchemyBackend:
    """durable's backend for ``url``, with its tables in ``schema``."""
    backend = durable.connect(
        url, engine_options={"connect_args": pg_search_path(schema), "pool_size": 5}
    )
    assert isinstance(backend, durable.SQLAlchemyBackend)
    return backend


def connect_backend(kind: str, url: str, schema: str) -> durable.PersistentBackend:
    """durable's backend for a benchmark's database of ``kind``: on PostgreSQL with its tables
    in ``schema`` (:func:`pg_connect_backend`), elsewhere :func:`durable.connect` of ``url``."""
    if kind == "postgres":
        return pg_connect_backend(url, schema)
    return durable.connect(url)


def pg_server_info(url: str) -> dict[str, Any]:
    """Server version and the settings that decide what a commit costs."""
    names = ["fsync", "synchronous_commit", "wal_sync_method", "full_page_writes"]
    names += ["shared_buffers", "wal_level"]
    with psycopg.connect(pg_conninfo(url)) as conn:
        version = conn.execute("SELECT version()").fetchone()
        settings: dict[str, Any] = {}
        for name in names:
            row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            settings[name] = row[0] if row else None
        return {
            "server_version": conn.info.server_version,
            "version": version[0] if version else None,
            "settings": settings,
        }


# -- SQLite -------------------------------------------------------------------------------------


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def remove_sqlite(path: Path) -> None:
    """Delete a SQLite database and its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").unlink()


@contextlib.contextmanager
def sqlite_raw(path: Path, *, synchronous: str = "NORMAL") -> Iterator[sqlite3.Connection]:
    """A stdlib sqlite3 connection with durable's pragmas (WAL, ``synchronous``, foreign keys,
    busy timeout) and no implicit transactions: the caller issues BEGIN IMMEDIATE/COMMIT."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        yield conn
    finally:
        conn.close()


def sqlite_timestamp(value: datetime) -> str:
    """A UTC timestamp as SQLAlchemy's SQLite DateTime type stores it."""
    return value.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


# -- the machine --------------------------------------------------------------------------------


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def git_state() -> dict[str, Any]:
    """The commit checked out, and whether ``durable/`` has uncommitted changes, now."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "durable"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "durable_modified": bool(status)}


def machine_info(pg_url: str | None = None) -> dict[str, Any]:
    """CPU, memory, load, Python, library and database versions, for the results file."""
    info: dict[str, Any] = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "sqlite_version": sqlite3.sqlite_version,
        "sqlalchemy": sa.__version__,
        "psycopg": psycopg.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "durable_module": str(Path(durable.__file__).resolve().parent),
    }
    with contextlib.suppress(metadata.PackageNotFoundError):
        info["durable_sqla"] = metadata.version("durable-sqla")
    info.update(git_state())
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]

        info["cpu_count_physical"] = psutil.cpu_count(logical=False)
        info["memory_total_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
        freq = psutil.cpu_freq()
        if freq is not None:
            info["cpu_mhz"] = round(freq.current)
    except ImportError:
        pass
    if pg_url is not None:
        try:
            info["postgres"] = pg_server_info(pg_url)
        except psycopg.Error as exc:
            info["postgres"] = {"error": str(exc).strip()}
    return info


# -- command line --------------------------------------------------------------------------------


def parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's argument parser: described by its docstring's first paragraph, with
    ``--backend``; the benchmark adds its own options, then :func:`add_run_options`."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    p.add_argument("--backend", choices=["sqlite", "postgres", "all"], default="all")
    return p


def add_mysql_backend(p: argparse.ArgumentParser) -> None:
    """For the benchmarks that run on MySQL/MariaDB too: ``--backend mysql`` (not part of
    ``all``) and ``--mysql-url``."""
    for action in p._actions:
        if action.dest == "backend" and action.choices is not None:
            action.choices = [*action.choices, "mysql"]
    p.add_argument("--mysql-url", default=DEFAULT_MYSQL_URL, help="MySQL/MariaDB database URL")


def mysql_params(url: str) -> dict[str, Any]:
    """PyMySQL / aiomysql connect arguments for a ``mysql://`` URL (database included)."""
    parsed = make_url(url)
    return {
        "host": parsed.host or "127.0.0.1",
        "port": parsed.port or 3306,
        "user": parsed.username or "root",
        "password": parsed.password or "",
        "db": parsed.database,
        "charset": "utf8mb4",
    }


def recreate_mysql_database(url: str, *, drop_only: bool = False) -> None:
    """Drop the URL's MySQL/MariaDB database, then (unless ``drop_only``) create it empty."""
    import pymysql

    params = mysql_params(url)
    name = params.pop("db")
    conn = pymysql.connect(**params, autocommit=True)
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
            if not drop_only:
                cursor.execute(
                    f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                )
    finally:
        conn.close()


def add_run_options(
    p: argparse.ArgumentParser,
    *,
    quick: bool = True,
    keep_help: str = "keep the databases afterwards",
) -> None:
    """The options every benchmark takes: where the databases are, the JSON file, ``--keep``
    and (unless ``quick`` is False) ``--quick``."""
    p.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL database URL")
    p.add_argument("--sqlite-dir", type=Path, help="where the SQLite files go (a temp dir)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--keep", action="store_true", help=keep_help)
    if quick:
        p.add_argument("--quick", action="store_true", help="tiny sizes, to check it runs")


def main(
    argv: Sequence[str] | None,
    parse_args: Callable[[Sequence[str] | None], argparse.Namespace],
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]],
    report: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Run a benchmark, print its tables, write the JSON file; return the results."""
    args = parse_args(argv)
    document = asyncio.run(run(args))
    report(document)
    write_json(args.json, document)
    return document


# -- output -------------------------------------------------------------------------------------


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A table on stdout: rich's when rich is installed, plain text otherwise."""
    # a short row leaves its last columns empty (as rich does)
    cells = [[_cell(v) for v in row] + [""] * (len(columns) - len(row)) for row in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [len(c) for c in columns]
        for row in cells:
            widths = [max(w, len(v)) for w, v in zip(widths, row, strict=True)]
        print(f"\n{title}")
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
        print("  ".join("-" * w for w in widths))
        for row in cells:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
        return
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i < 2 else "right")
    for row in cells:
        table.add_row(*(_rich_verdict(v) for v in row))
    Console(width=max(110, len(columns) * 18)).print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "pass" if value else "MISS"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def _rich_verdict(text: str) -> str:
    if text == "pass":
        return "[green]pass[/green]"
    if text == "MISS":
        return "[bold red]MISS[/bold red]"
    return text


def print_targets(targets: Sequence[dict[str, Any]]) -> None:
    print_table(
        "Targets",
        ["backend", "target", "measured", "limit", "result"],
        [
            (t["backend"], t["name"], f"{t['value']:g} {t['unit']}", f"{t['limit']:g}", t["pass"])
            for t in targets
        ],
    )


def write_json(path: str | None, document: dict[str, Any]) -> None:
    if path is None:
        return
    Path(path).write_text(json.dumps(document, indent=2, default=str) + "\n")
    log(f"results written to {path}")
