"""Does a step get slower as history piles up? Two questions, on SQLite and PostgreSQL:

1. **History depth.** Two workflows run side by side: a deep one records ``--history`` steps
   (default 3,000), a shallow one 10; then each takes ``--window`` more steps (default 50),
   timed inside its body, the two taking turns step by step so that both see the same machine.
   The median step of the deep one (steps 3,000..3,050) over that of the shallow one (steps
   10..60). Target: at most 1.2x.
2. **Finished work in the tables.** Two databases with the same schema, one empty and one loaded
   with ``--finished`` finished workflows (default 1,000,000) of ``--steps-per-workflow`` steps
   each, inserted in bulk with SQL (PostgreSQL: ``INSERT ... SELECT FROM generate_series``;
   SQLite: ``executemany`` in large transactions). Ids are UUID-shaped and random, as the
   runtime's are. Then, alternating between the two databases one iteration at a time: create a
   pending workflow, time ``claim_available_tasks``, time running the claimed workflow
   (``--short-steps`` steps, each timed in its body). Targets: claim and step medians at most
   1.2x the empty database's. Every backend operation the iterations call is timed too, as a
   breakdown of the whole workflow's cost.

Finally the claim statement and the ``record_step`` statement, exactly as the backend executes
them (captured from real calls), are explained on the loaded database: PostgreSQL ``EXPLAIN
(ANALYZE, BUFFERS)`` inside a transaction that is rolled back, SQLite ``EXPLAIN QUERY PLAN``.
The check: no full scan of any table with 10,000 rows or more.

    python benchmarks/step_scaling.py [--backend sqlite|postgres|all] [--history 3000]
        [--finished 1000000] [--pg-url postgresql+psycopg://...] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl
import psycopg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

import durable
from durable.models import StepRecord, TaskSpec, WorkflowSnapshot

TARGET_RATIO = 1.2
#: A full scan of a table this large fails the index check (small tables may be scanned).
SCAN_THRESHOLD = 10_000
EARLY = 10
TTL = timedelta(seconds=60)
PG_SCHEMAS = {
    "history": "durable_bench_scaling_history",
    "empty": "durable_bench_scaling_empty",
    "loaded": "durable_bench_scaling_loaded",
}
DONE_WORKFLOW = "bench.scaling.done.v1"
DONE_STEP = "bench.scaling.done_step"

REGISTRY = durable.Registry()
#: Seconds each timed step took, by workflow id, in call order.
STEP_SECONDS: dict[str, list[float]] = {}


@dataclass
class Pairing:
    """Two long workflows that time their last steps in turns: one step each, alternately."""

    barrier: asyncio.Barrier = field(default_factory=lambda: asyncio.Barrier(2))
    baton: asyncio.Lock = field(default_factory=asyncio.Lock)


PAIRINGS: dict[str, Pairing] = {}
#: What the backend's operations cost, by operation, while :data:`OpTimer.enabled`.
OPS = (
    "create_workflow",
    "claim_available_tasks",
    "get_workflow",
    "claim_task",
    "begin_execution",
    "record_step",
    "finish_workflow",
)


@durable.step(name="bench.scaling.noop")
async def noop(i: int) -> int:
    return i


@durable.workflow(name="bench.scaling.long.v1", registry=REGISTRY)
async def long_workflow(untimed: int, timed: int) -> int:
    """``untimed`` steps, then (once its partner is ready too) ``timed`` steps, each taken
    while holding the pairing's baton, so the two workflows' timed steps alternate."""
    wid = durable.workflow_id()
    for i in range(untimed):
        await noop(i)
    pairing = PAIRINGS[wid]
    await pairing.barrier.wait()
    durations = STEP_SECONDS.setdefault(wid, [])
    for i in range(untimed, untimed + timed):
        async with pairing.baton:
            started = time.perf_counter()
            await noop(i)
            durations.append(time.perf_counter() - started)
    return untimed + timed


@durable.workflow(name="bench.scaling.short.v1", registry=REGISTRY)
async def short_workflow(n: int) -> int:
    durations = STEP_SECONDS.setdefault(durable.workflow_id(), [])
    for i in range(n):
        started = time.perf_counter()
        await noop(i)
        durations.append(time.perf_counter() - started)
    return n


class OpTimer:
    """Times the backend operations in :data:`OPS` (instance attributes shadow the methods)."""

    def __init__(self, backend: durable.SQLAlchemyBackend) -> None:
        self.backend = backend
        self.enabled = False
        self.samples: dict[str, list[float]] = {name: [] for name in OPS}
        for name in OPS:
            setattr(backend, name, self._wrap(name, getattr(backend, name)))

    def _wrap(self, name: str, method: Any) -> Any:
        samples = self.samples[name]

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await method(*args, **kwargs)
            finally:
                if self.enabled:
                    samples.append((time.perf_counter() - started) * 1e6)

        return timed

    def remove(self) -> None:
        for name in OPS:
            delattr(self.backend, name)


def _us(seconds: Sequence[float]) -> list[float]:
    return [s * 1e6 for s in seconds]


# -- databases ----------------------------------------------------------------------------------


@dataclass
class Store:
    """One database (a SQLite file, or a PostgreSQL schema) and a runtime on it."""

    label: str
    kind: str
    backend: durable.SQLAlchemyBackend
    sqlite_path: Path | None = None
    pg_url: str | None = None
    pg_schema: str | None = None
    runtime: durable.Runtime = field(init=False)

    def __post_init__(self) -> None:
        self.runtime = durable.Runtime(
            self.backend, executor_id=f"bench-{self.label}", recover=False, registry=REGISTRY
        )


def open_store(kind: str, label: str, *, directory: Path | None, pg_url: str | None) -> Store:
    if kind == "sqlite":
        assert directory is not None
        path = directory / f"scaling-{label}.db"
        bl.remove_sqlite(path)
        backend = durable.connect(bl.sqlite_url(path))
        assert isinstance(backend, durable.SQLAlchemyBackend)
        return Store(label, kind, backend, sqlite_path=path)
    assert pg_url is not None
    schema = PG_SCHEMAS[label]
    bl.reset_pg_schema(pg_url, schema)
    backend = bl.pg_connect_backend(pg_url, schema)
    return Store(label, kind, backend, pg_url=pg_url, pg_schema=schema)


@contextlib.contextmanager
def _pg(store: Store, *, autocommit: bool = False) -> Iterator[psycopg.Connection[Any]]:
    assert store.pg_url is not None and store.pg_schema is not None
    with psycopg.connect(
        bl.pg_conninfo(store.pg_url), autocommit=autocommit, **bl.pg_search_path(store.pg_schema)
    ) as conn:
        yield conn


def table_rows(store: Store) -> dict[str, int]:
    tables = ["durable_workflows", "durable_steps", "durable_tasks"]
    if store.kind == "sqlite":
        assert store.sqlite_path is not None
        with bl.sqlite_raw(store.sqlite_path) as conn:
            return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
    with _pg(store) as conn:
        counts = {}
        for t in tables:
            row = conn.execute(f"SELECT count(*) FROM {t}").fetchone()
            counts[t] = int(row[0]) if row else 0
        return counts


def database_size(store: Store) -> int:
    if store.kind == "sqlite":
        assert store.sqlite_path is not None
        return sum(
            Path(f"{store.sqlite_path}{s}").stat().st_size
            for s in ("", "-wal")
            if Path(f"{store.sqlite_path}{s}").exists()
        )
    with _pg(store) as conn:
        row = conn.execute(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = 'r'",
            (store.pg_schema,),
        ).fetchone()
        return int(row[0] or 0) if row else 0


# -- bulk loading -------------------------------------------------------------------------------


def _done_id(g: int) -> str:
    """A random-looking UUID per finished workflow; PostgreSQL computes the same one."""
    return str(uuid.UUID(bytes=hashlib.md5(f"done-{g}".encode()).digest()))


_PG_LOAD_WORKFLOWS = """
INSERT INTO durable_workflows (id, name, status, input, output, error, parent_id, executor_id,
    queue, priority, idempotency_key, attempts, max_attempts, version, created_at, updated_at,
    started_at, completed_at)
SELECT md5('done-' || g)::uuid::text, %(name)s, 'succeeded',
    '{"args":[' || %(steps)s || '],"kwargs":{}}', %(steps)s::text, NULL, NULL, 'bench-loader',
    'default', 0, NULL, 1, 3, 3, t, t + interval '1 second', t, t + interval '1 second'
FROM generate_series(%(lo)s::int, %(hi)s::int) AS g,
    LATERAL (SELECT now() - make_interval(secs => %(n)s::int - g) AS t) AS ts
ORDER BY 1
"""
_PG_LOAD_STEPS = """
INSERT INTO durable_steps (workflow_id, position, name, status, output, error,
    child_workflow_id, attempts, executor_id, started_at, completed_at)
SELECT md5('done-' || g)::uuid::text, p, %(step)s, 'succeeded', p::text, NULL, NULL, 1,
    'bench-loader', t, t
FROM generate_series(%(lo)s::int, %(hi)s::int) AS g
    CROSS JOIN generate_series(0, %(steps)s::int - 1) AS p,
    LATERAL (SELECT now() - make_interval(secs => %(n)s::int - g) AS t) AS ts
ORDER BY 1, 2
"""


def load_postgres(store: Store, n: int, steps_per_workflow: int, chunk: int) -> None:
    with _pg(store) as conn:
        try:  # skip the foreign-key triggers (rows are consistent by construction)
            conn.execute("SET session_replication_role = replica")
        except psycopg.errors.InsufficientPrivilege:
            conn.rollback()
        conn.commit()
        for lo in range(0, n, chunk):
            params = {
                "lo": lo,
                "hi": min(n, lo + chunk) - 1,
                "n": n,
                "name": DONE_WORKFLOW,
                "step": DONE_STEP,
                "steps": steps_per_workflow,
            }
            conn.execute(_PG_LOAD_WORKFLOWS, params)
            if steps_per_workflow:
                conn.execute(_PG_LOAD_STEPS, params)
            conn.commit()
            bl.log(f"  postgres: {min(n, lo + chunk):,}/{n:,} finished workflows")
    with _pg(store, autocommit=True) as conn:
        for table in ("durable_workflows", "durable_steps", "durable_tasks"):
            conn.execute(f"VACUUM ANALYZE {table}")


def load_sqlite(store: Store, n: int, steps_per_workflow: int, chunk: int) -> None:
    assert store.sqlite_path is not None
    base = datetime.now(UTC)
    insert_workflow = (
        "INSERT INTO durable_workflows (id, name, status, input, output, error, parent_id, "
        "executor_id, queue, priority, idempotency_key, attempts, max_attempts, version, "
        "created_at, updated_at, started_at, completed_at) "
        "VALUES (?, ?, 'succeeded', ?, ?, NULL, NULL, 'bench-loader', 'default', 0, NULL, 1, 3, "
        "3, ?, ?, ?, ?)"
    )
    insert_step = (
        "INSERT INTO durable_steps (workflow_id, position, name, status, output, error, "
        "child_workflow_id, attempts, executor_id, started_at, completed_at) "
        "VALUES (?, ?, ?, 'succeeded', ?, NULL, NULL, 1, 'bench-loader', ?, ?)"
    )
    payload = json.dumps({"args": [steps_per_workflow], "kwargs": {}}, separators=(",", ":"))
    with bl.sqlite_raw(store.sqlite_path, synchronous="OFF") as conn:
        conn.execute("PRAGMA foreign_keys=OFF")  # rows are consistent by construction
        conn.execute("PRAGMA cache_size=-262144")  # 256 MiB for the load only
        for lo in range(0, n, chunk):
            wf_rows: list[tuple[str, ...]] = []
            step_rows: list[tuple[str, int, str, str, str, str]] = []
            for g in range(lo, min(n, lo + chunk)):
                wid = _done_id(g)
                created = bl.sqlite_timestamp(base - timedelta(seconds=n - g))
                done = bl.sqlite_timestamp(base - timedelta(seconds=n - g - 1))
                output = str(steps_per_workflow)
                wf_rows.append((wid, DONE_WORKFLOW, payload, output, created, done, created, done))
                step_rows.extend(
                    (wid, p, DONE_STEP, str(p), created, created) for p in range(steps_per_workflow)
                )
            wf_rows.sort()
            step_rows.sort()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(insert_workflow, wf_rows)
            conn.executemany(insert_step, step_rows)
            conn.execute("COMMIT")
            bl.log(f"  sqlite: {min(n, lo + chunk):,}/{n:,} finished workflows")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


# -- 1. history depth ---------------------------------------------------------------------------


async def history_depth(store: Store, *, history: int, window: int, repeat: int) -> dict[str, Any]:
    """Per repeat, two workflows: a deep one builds ``history`` steps, a shallow one ``EARLY``;
    then they take ``window`` timed steps each, alternately (so both see the same machine)."""
    early: list[float] = []
    late: list[float] = []
    runs = []
    for run in range(repeat):
        deep, shallow = f"deep-{store.kind}-{run}", f"shallow-{store.kind}-{run}"
        PAIRINGS[deep] = PAIRINGS[shallow] = Pairing()
        started = time.perf_counter()
        try:
            await asyncio.gather(
                store.runtime.run(long_workflow, history, window, workflow_id=deep),
                store.runtime.run(long_workflow, EARLY, window, workflow_id=shallow),
            )
        finally:
            del PAIRINGS[deep], PAIRINGS[shallow]
        elapsed = time.perf_counter() - started
        e, late_run = _us(STEP_SECONDS.pop(shallow)), _us(STEP_SECONDS.pop(deep))
        early += e
        late += late_run
        runs.append(
            {
                "early_us": round(statistics.median(e), 2),
                "late_us": round(statistics.median(late_run), 2),
                "ratio": bl.ratio(statistics.median(late_run), statistics.median(e)),
                "seconds": round(elapsed, 3),
            }
        )
        bl.log(
            f"{store.kind} history run {run + 1}/{repeat}: steps {EARLY}..{EARLY + window} "
            f"{runs[-1]['early_us']:.0f} us, steps {history}..{history + window} "
            f"{runs[-1]['late_us']:.0f} us ({runs[-1]['ratio']:.2f}x)"
        )
    early_stats, late_stats = bl.summary(early), bl.summary(late)
    return {
        "history": history,
        "window": window,
        "repeat": repeat,
        "early_steps": [EARLY, EARLY + window],
        "late_steps": [history, history + window],
        "early_step_us": early_stats,
        "late_step_us": late_stats,
        "ratio": bl.ratio(late_stats["median"], early_stats["median"]),
        "runs": runs,
    }


# -- 2. finished workflows in the tables ----------------------------------------------------------


async def _claim_and_run(store: Store, short_steps: int) -> tuple[float, float, list[float]]:
    """Create a pending workflow, claim it (timed), run it (timed); (claim us, run us, steps)."""
    backend, rt = store.backend, store.runtime
    iid = str(uuid.uuid4())
    wf = short_workflow
    await backend.create_workflow(
        WorkflowSnapshot(
            id=iid,
            name=wf.name,
            input={"args": [short_steps], "kwargs": {}},
            queue=wf.queue,
            max_attempts=wf.retry.max_attempts,
        ),
        task=TaskSpec(instance_id=iid, name=wf.name, queue=wf.queue),
    )
    started = time.perf_counter()
    claims = await backend.claim_available_tasks(rt.executor_id, 1, TTL, names=[wf.name])
    claimed = time.perf_counter()
    if [c.instance_id for c in claims] != [iid]:
        raise RuntimeError(f"claimed {claims!r}, expected workflow {iid}")
    result = await rt.run(wf, workflow_id=iid)
    finished = time.perf_counter()
    if result != short_steps:
        raise RuntimeError(f"workflow {iid} returned {result!r}")
    return (claimed - started) * 1e6, (finished - claimed) * 1e6, _us(STEP_SECONDS.pop(iid))


async def finished_work(
    empty: Store, loaded: Store, *, iterations: int, short_steps: int, warmup: int
) -> dict[str, Any]:
    """Alternate between the two databases, one claim and one short workflow at a time."""
    samples: dict[str, dict[str, list[float]]] = {
        s.label: {"claim": [], "run": [], "step": []} for s in (empty, loaded)
    }
    timers = {s.label: OpTimer(s.backend) for s in (empty, loaded)}
    try:
        for store in (empty, loaded):
            for _ in range(warmup):
                await _claim_and_run(store, short_steps)
        for timer in timers.values():
            timer.enabled = True
        for i in range(iterations):
            # alternate which database goes first, so neither always follows the other
            for store in (empty, loaded) if i % 2 == 0 else (loaded, empty):
                claim_us, run_us, step_us = await _claim_and_run(store, short_steps)
                samples[store.label]["claim"].append(claim_us)
                samples[store.label]["run"].append(run_us)
                samples[store.label]["step"].extend(step_us)
            if (i + 1) % max(1, iterations // 5) == 0 or i + 1 == iterations:
                bl.log(
                    f"{empty.kind} finished work {i + 1}/{iterations}: claim "
                    f"{statistics.median(samples['empty']['claim']):.0f} / "
                    f"{statistics.median(samples['loaded']['claim']):.0f} us, step "
                    f"{statistics.median(samples['empty']['step']):.0f} / "
                    f"{statistics.median(samples['loaded']['step']):.0f} us (empty / loaded)"
                )
    finally:
        for timer in timers.values():
            timer.remove()
    stats: dict[str, dict[str, Any]] = {
        label: {f"{k}_us": bl.summary(v) for k, v in kinds.items()}
        for label, kinds in samples.items()
    }
    for label, timer in timers.items():
        stats[label]["ops_us"] = {
            name: bl.summary(values) for name, values in timer.samples.items() if values
        }
    ops_ratio = {
        name: bl.ratio(
            stats["loaded"]["ops_us"][name]["median"], stats["empty"]["ops_us"][name]["median"]
        )
        for name in OPS
        if name in stats["empty"]["ops_us"] and name in stats["loaded"]["ops_us"]
    }
    return {
        "iterations": iterations,
        "short_steps": short_steps,
        "empty": stats["empty"],
        "loaded": stats["loaded"],
        "claim_ratio": bl.ratio(
            stats["loaded"]["claim_us"]["median"], stats["empty"]["claim_us"]["median"]
        ),
        "step_ratio": bl.ratio(
            stats["loaded"]["step_us"]["median"], stats["empty"]["step_us"]["median"]
        ),
        "run_ratio": bl.ratio(
            stats["loaded"]["run_us"]["median"], stats["empty"]["run_us"]["median"]
        ),
        "ops_ratio": ops_ratio,
    }


# -- 3. query plans -----------------------------------------------------------------------------


@contextlib.contextmanager
def capture(backend: durable.SQLAlchemyBackend) -> Iterator[list[tuple[str, Any]]]:
    """The statements (and driver parameters) the backend sends while the block runs, through
    the engine or straight on the driver (the PostgreSQL hot path, SQLite's claims)."""
    engine = backend.engine
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    seen: list[tuple[str, Any]] = []
    runner = backend._runner
    direct = runner.direct

    async def direct_spy(statement: Any, values: dict[str, Any]) -> int | None:
        rowcount = await direct(statement, values)
        if rowcount is not None:
            seen.append((statement.sql, statement.params(values)))
        return rowcount

    def listener(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if not statement.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK")):
            seen.append((statement, parameters))

    # SQLite's statements straight on sqlite3: claims (run_alone), a lone record (direct_now)
    inline = {
        name: method
        for name in ("run_alone", "direct_now")
        if (method := getattr(runner, name, None)) is not None
    }

    def inline_spy(method: Callable[..., Any]) -> Callable[..., Any]:
        def spy(statement: Any, values: dict[str, Any]) -> Any:
            result = method(statement, values)
            if result is not None:  # None: not run here (the caller goes on to direct)
                seen.append((statement.sql, statement.params(values)))
            return result

        return spy

    sa.event.listen(sync_engine, "before_cursor_execute", listener)
    runner.direct = direct_spy  # type: ignore[method-assign]
    for name, method in inline.items():
        setattr(runner, name, inline_spy(method))
    try:
        yield seen
    finally:
        sa.event.remove(sync_engine, "before_cursor_execute", listener)
        del runner.direct
        for name in inline:
            delattr(runner, name)


def _compiled(backend: durable.SQLAlchemyBackend, stmt: Any) -> str | None:
    """The SQL of one of the backend's prebuilt statements, compiled for its database."""
    if stmt is None:
        return None
    engine = backend.engine
    dialect = engine.sync_engine.dialect if isinstance(engine, AsyncEngine) else engine.dialect
    return str(stmt.compile(dialect=dialect))


async def capture_hot_statements(store: Store) -> dict[str, tuple[str, Any]]:
    """Run a claim and a step record for real; return their SQL and parameters."""
    backend, worker = store.backend, store.runtime.executor_id
    wf = short_workflow
    ids = [str(uuid.uuid4()) for _ in range(2)]
    for iid in ids:
        await backend.create_workflow(
            WorkflowSnapshot(
                id=iid, name=wf.name, input={"args": [1], "kwargs": {}}, queue=wf.queue
            ),
            task=TaskSpec(instance_id=iid, name=wf.name, queue=wf.queue),
        )
    with capture(backend) as claim_sql:
        claims = await backend.claim_available_tasks(worker, 1, TTL, names=[wf.name])
    iid = claims[0].instance_id
    await backend.begin_execution(iid, worker)
    record = StepRecord(
        position=0,
        name=noop.name,
        output=0,
        executor_id=worker,
        started_at=datetime.now(UTC),
    )
    with capture(backend) as record_sql:
        await backend.record_step(iid, record, worker_id=worker)
    if len(claim_sql) != 1 or len(record_sql) != 1:
        raise RuntimeError(f"expected one statement each, got {claim_sql} and {record_sql}")
    return {"claim": claim_sql[0], "record_step": record_sql[0]}


def _pg_scans(plan: dict[str, Any], out: list[dict[str, Any]]) -> None:
    relation = plan.get("Relation Name")
    node = plan.get("Node Type", "")
    if relation and ("Scan" in node or node == "ModifyTable"):
        entry = {"table": relation, "node": node, "index": plan.get("Index Name")}
        if node == "ModifyTable":
            entry["operation"] = plan.get("Operation")
            entry["index"] = ", ".join(plan.get("Conflict Arbiter Indexes", [])) or None
        entry["full_scan"] = node == "Seq Scan"
        out.append(entry)
    for child in plan.get("Plans", []):
        _pg_scans(child, out)


async def explain_postgres(store: Store, sql: str, params: Any) -> dict[str, Any]:
    engine = store.backend.engine
    assert isinstance(engine, AsyncEngine)
    async with engine.connect() as conn:
        result = await conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)
        text = "\n".join(row[0] for row in result)
        await conn.rollback()
        plan = await _pg_json_plan(conn, sql, params)
        # which indexes the planner can use when the tables are too small to bother with them
        await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        forced = await _pg_json_plan(conn, sql, params)
    scans: list[dict[str, Any]] = []
    _pg_scans(plan[0]["Plan"], scans)
    forced_scans: list[dict[str, Any]] = []
    _pg_scans(forced[0]["Plan"], forced_scans)
    return {
        "plan": text,
        "scans": scans,
        "scans_with_seqscan_off": forced_scans,
        "execution_ms": plan[0].get("Execution Time"),
    }


async def _pg_json_plan(conn: Any, sql: str, params: Any) -> Any:
    """``EXPLAIN (ANALYZE, FORMAT JSON)`` of ``sql``; the transaction is rolled back."""
    result = await conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params)
    plan = result.scalar_one()
    await conn.rollback()
    return json.loads(plan) if isinstance(plan, str) else plan


def explain_sqlite(store: Store, sql: str, params: Any) -> dict[str, Any]:
    assert store.sqlite_path is not None
    with bl.sqlite_raw(store.sqlite_path) as conn:
        rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
    lines, scans = [], []
    for _id, _parent, _unused, detail in rows:
        lines.append(detail)
        words = detail.split()
        if detail.startswith("SCAN CONSTANT ROW"):
            continue
        if words and words[0] in ("SCAN", "SEARCH") and len(words) > 1:
            table = words[1]
            index = None
            if " USING " in detail:
                index = detail.split(" USING ", 1)[1]
            scans.append(
                {
                    "table": table,
                    "node": words[0],
                    "index": index,
                    "full_scan": words[0] == "SCAN" and index is None,
                }
            )
    return {"plan": "\n".join(lines), "scans": scans}


async def explain(store: Store) -> dict[str, Any]:
    statements = await capture_hot_statements(store)
    counts = table_rows(store)
    prebuilt = {
        "record_step": _compiled(store.backend, getattr(store.backend, "_record_step", None))
    }
    out: dict[str, Any] = {"table_rows": counts}
    for name, (sql, params) in statements.items():
        if store.kind == "postgres":
            if name == "record_step" and isinstance(params, dict):
                params = {**params, "s_position": 1}  # a new row, under the lease we hold
            info = await explain_postgres(store, sql, params)
        else:
            info = explain_sqlite(store, sql, params)
        big = [
            s
            for s in info["scans"]
            if s["full_scan"] and counts.get(s["table"], 0) >= SCAN_THRESHOLD
        ]
        info["sql"] = sql
        info["full_scans_of_large_tables"] = [s["table"] for s in big]
        info["uses_indexes"] = not big
        if prebuilt.get(name) is not None:
            info["matches_prebuilt_statement"] = " ".join(sql.split()) == " ".join(
                str(prebuilt[name]).split()
            )
        out[name] = info
    return out


# -- one backend --------------------------------------------------------------------------------


async def bench_backend(
    kind: str, args: argparse.Namespace, directory: Path | None
) -> dict[str, Any]:
    pg_url = args.pg_url if kind == "postgres" else None
    if pg_url is not None:
        bl.ensure_pg_database(pg_url)
    stores = {
        label: open_store(kind, label, directory=directory, pg_url=pg_url)
        for label in ("history", "empty", "loaded")
    }
    result: dict[str, Any] = {}
    try:
        async with contextlib.AsyncExitStack() as stack:
            for store in stores.values():
                await stack.enter_async_context(store.runtime)

            bl.log(f"{kind}: history depth ({args.history} steps)")
            result["history"] = await history_depth(
                stores["history"],
                history=args.history,
                window=args.window,
                repeat=args.history_repeat,
            )

            bl.log(f"{kind}: loading {args.finished:,} finished workflows")
            started = time.perf_counter()
            loader = load_postgres if kind == "postgres" else load_sqlite
            await asyncio.to_thread(
                loader, stores["loaded"], args.finished, args.steps_per_workflow, args.chunk
            )
            if kind == "postgres":  # the empty database gets the same treatment
                with _pg(stores["empty"], autocommit=True) as conn:
                    conn.execute("VACUUM ANALYZE")
            load_seconds = time.perf_counter() - started

            bl.log(f"{kind}: claim + short workflow, empty vs loaded")
            finished = await finished_work(
                stores["empty"],
                stores["loaded"],
                iterations=args.iterations,
                short_steps=args.short_steps,
                warmup=args.warmup,
            )
            finished.update(
                finished=args.finished,
                steps_per_workflow=args.steps_per_workflow,
                load_seconds=round(load_seconds, 1),
                loaded_database_bytes=database_size(stores["loaded"]),
            )
            result["finished"] = finished

            bl.log(f"{kind}: query plans on the loaded database")
            result["explain"] = await explain(stores["loaded"])
    finally:
        if kind == "postgres" and not args.keep:
            assert pg_url is not None
            for schema in PG_SCHEMAS.values():
                bl.drop_pg_schema(pg_url, schema)
    return result


# -- the command --------------------------------------------------------------------------------


def evaluate(results: dict[str, dict[str, Any]], history: int) -> list[dict[str, Any]]:
    targets = []
    for kind, r in results.items():
        targets.append(
            bl.target(
                f"step at {history} steps of history vs 10 <= 1.2x",
                r["history"]["ratio"],
                TARGET_RATIO,
                "x",
                backend=kind,
            )
        )
        f = r["finished"]
        for what in ("claim", "step"):
            targets.append(
                bl.target(
                    f"{what} with {f['finished']:,} finished workflows vs none <= 1.2x",
                    f[f"{what}_ratio"],
                    TARGET_RATIO,
                    "x",
                    backend=kind,
                )
            )
        for name in ("claim", "record_step"):
            big = r["explain"][name]["full_scans_of_large_tables"]
            targets.append(
                bl.target(
                    f"{name} plan: no full scan of a large table",
                    len(big),
                    0,
                    "full scans",
                    backend=kind,
                )
            )
    return targets


def report(document: dict[str, Any]) -> None:
    rows = []
    for kind, r in document["results"].items():
        h = r["history"]
        rows.append(
            (
                kind,
                f"step, {h['late_steps'][0]} vs {EARLY} steps of history",
                h["early_step_us"]["median"],
                h["late_step_us"]["median"],
                f"{h['ratio']:.2f}x",
            )
        )
        f = r["finished"]
        for what, label in (
            ("claim", "claim_available_tasks"),
            ("step", "step"),
            ("run", f"whole {f['short_steps']}-step workflow"),
        ):
            rows.append(
                (
                    kind,
                    f"{label}, {f['finished']:,} finished workflows vs none",
                    f["empty"][f"{what}_us"]["median"],
                    f["loaded"][f"{what}_us"]["median"],
                    f"{f[f'{what}_ratio']:.2f}x",
                )
            )
        for op, op_ratio in f["ops_ratio"].items():
            rows.append(
                (
                    kind,
                    f"  backend.{op}",
                    f["empty"]["ops_us"][op]["median"],
                    f["loaded"]["ops_us"][op]["median"],
                    f"{op_ratio:.2f}x",
                )
            )
    bl.print_table(
        "Scaling (medians, microseconds)",
        ["backend", "what", "baseline", "with history", "ratio"],
        rows,
    )
    for kind, r in document["results"].items():
        for name in ("claim", "record_step"):
            info = r["explain"][name]
            title = "EXPLAIN (ANALYZE, BUFFERS)" if kind == "postgres" else "EXPLAIN QUERY PLAN"
            print(f"\n{kind} {name}: {title}\n{info['sql']}\n")
            print(info["plan"])
            scans = ", ".join(
                f"{s['table']} {s['node']}" + (f" ({s['index']})" if s["index"] else "")
                for s in info["scans"]
            )
            print(f"-> {scans}; uses indexes: {info['uses_indexes']}")
            if "scans_with_seqscan_off" in info:
                forced = ", ".join(
                    f"{s['table']} {s['node']}" + (f" ({s['index']})" if s["index"] else "")
                    for s in info["scans_with_seqscan_off"]
                )
                print(f"-> with enable_seqscan = off: {forced}")
    bl.print_targets(document["targets"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bl.parser(__doc__)
    parser.add_argument("--history", type=int, default=3000, help="late window start (3000)")
    parser.add_argument("--window", type=int, default=50, help="steps timed per window (50)")
    parser.add_argument("--history-repeat", type=int, default=3, help="deep/shallow pairs (3)")
    parser.add_argument("--finished", type=int, default=1_000_000, help="finished workflows")
    parser.add_argument("--steps-per-workflow", type=int, default=5, help="their steps (5)")
    parser.add_argument("--chunk", type=int, default=100_000, help="workflows per load batch")
    parser.add_argument("--iterations", type=int, default=100, help="claims per database")
    parser.add_argument("--short-steps", type=int, default=10, help="steps per workflow (10)")
    parser.add_argument("--warmup", type=int, default=3, help="discarded claims per database")
    bl.add_run_options(parser, quick=False)
    args = parser.parse_args(argv)
    if args.window < 1 or args.history < EARLY + args.window:
        parser.error(f"--history must be at least {EARLY} + --window")
    if min(args.history_repeat, args.iterations, args.short_steps, args.chunk) < 1:
        parser.error("counts must be positive")
    if args.finished < 0 or args.steps_per_workflow < 0 or args.warmup < 0:
        parser.error("--finished, --steps-per-workflow and --warmup cannot be negative")
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    backends = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    results: dict[str, dict[str, Any]] = {}
    for kind in backends:
        directory: Path | None = None
        if kind == "sqlite":
            directory = args.sqlite_dir or Path(tempfile.mkdtemp(prefix="durable-bench-"))
            directory.mkdir(parents=True, exist_ok=True)
        try:
            results[kind] = await bench_backend(kind, args, directory)
        finally:
            if directory is not None and args.sqlite_dir is None and not args.keep:
                shutil.rmtree(directory, ignore_errors=True)
    return {
        "benchmark": "step_scaling",
        "config": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("json", "pg_url")
        },
        "machine": {
            **bl.machine_info(args.pg_url if "postgres" in backends else None),
            "load_average_at_start": load_at_start,
        },
        "results": results,
        "targets": evaluate(results, args.history),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print its tables and plans, write the JSON file; return the results."""
    return bl.main(argv, parse_args, run, report)


if __name__ == "__main__":
    main()
