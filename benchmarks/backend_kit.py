"""The backend kit (:mod:`durable.testing.benchkit`) on durable's own backends: in memory, a
SQLite file, and PostgreSQL, each over a new, empty store.

Figures: a step at 3,000 vs 10 steps of history, a claim with 100,000 finished workflows vs
none, and calls per second under 200 concurrent callers (see the kit's docstring). PostgreSQL
runs in a database of its own, ``<--pg-url's database>_kit``, created empty and dropped
afterwards (unless ``--keep``).

    python benchmarks/backend_kit.py [--backend memory|sqlite|postgres|mysql|all]
        [--finished 100000] [--history 3000] [--concurrency 200] [--rounds 5] [--samples 50]
        [--pg-url URL] [--mysql-url URL]

``--backend mysql`` (not part of ``all``) runs it on MySQL/MariaDB, in ``<--mysql-url's
database>_kit``, created empty and dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl
import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

import durable
from durable.testing.benchkit import Figure, add_size_arguments, run_kit, sizes_from_arguments

BACKENDS = ("memory", "sqlite", "postgres")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--backend", choices=[*BACKENDS, "mysql", "all"], default="all")
    add_size_arguments(p)
    p.add_argument("--pg-url", default=bl.DEFAULT_PG_URL, help="PostgreSQL server (its database)")
    p.add_argument("--mysql-url", default=bl.DEFAULT_MYSQL_URL, help="MySQL/MariaDB server")
    p.add_argument("--sqlite-dir", type=Path, help="where the SQLite file goes (a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the SQLite file and the database")
    return p.parse_args(argv)


def _kit_pg_url(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(database=f"{parsed.database}_kit").render_as_string(hide_password=False)


def _admin(url: str) -> psycopg.Connection[Any]:
    admin = make_url(url).set(database="postgres").render_as_string(hide_password=False)
    return psycopg.connect(bl.pg_conninfo(admin), autocommit=True)


def recreate_pg_database(url: str, *, drop_only: bool = False) -> None:
    name = sql.Identifier(str(make_url(url).database))
    with _admin(url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        if not drop_only:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(name))


async def run(args: argparse.Namespace) -> dict[str, dict[str, Figure]]:
    sizes = sizes_from_arguments(args)
    kinds = BACKENDS if args.backend == "all" else (args.backend,)
    results: dict[str, dict[str, Figure]] = {}
    with tempfile.TemporaryDirectory(prefix="durable-kit-") as tmp:
        directory = args.sqlite_dir or Path(tmp)
        for kind in kinds:
            print(f"\n== {kind}")
            if kind == "memory":
                results[kind] = await run_kit(lambda: durable.connect("memory://"), sizes)
            elif kind == "sqlite":
                path = directory / "backend_kit.db"
                bl.remove_sqlite(path)
                url = bl.sqlite_url(path)
                results[kind] = await run_kit(lambda url=url: durable.connect(url), sizes)
                if not args.keep:
                    bl.remove_sqlite(path)
            elif kind == "mysql":
                url = _kit_pg_url(args.mysql_url)  # <database>_kit, as for PostgreSQL
                bl.recreate_mysql_database(url)
                try:
                    results[kind] = await run_kit(lambda url=url: durable.connect(url), sizes)
                finally:
                    if not args.keep:
                        bl.recreate_mysql_database(url, drop_only=True)
            else:
                url = _kit_pg_url(args.pg_url)
                recreate_pg_database(url)
                try:
                    results[kind] = await run_kit(lambda url=url: durable.connect(url), sizes)
                finally:
                    if not args.keep:
                        recreate_pg_database(url, drop_only=True)
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Figure]]:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    main()
