"""The hot path on PostgreSQL: one statement, straight on a psycopg connection.

Recording a step is one atomic, fenced statement (see ``record_step``). Run through
SQLAlchemy's async engine it costs about twice the client CPU of the statement itself: a pool
checkout, a ``Connection`` and an execution context, a result object, and a greenlet switch for
each of them. :class:`DirectStatements` removes that layer for such statements and nothing else:

* the statement is still written once in SQLAlchemy Core and compiled once by the engine's own
  dialect (:class:`CompiledStatement`); its bind processors (``UTCDateTime``'s checks) still run;
* it runs on a few connections of its own (at most :data:`DIRECT_CONNECTIONS`, opened on
  demand, in autocommit mode). Each is opened *by the engine's pool* and then detached from it,
  so the engine's connect arguments and events apply, and the pool keeps all its slots for
  transactions (holding pooled connections idle could starve them). They are closed on
  :meth:`close`;
* it is a server-side prepared statement, so PostgreSQL parses and plans it once per connection;
* each connection's socket stays in the event loop's selector between statements
  (:class:`~durable.backends.sql.waits.SocketWaiter` is its ``wait``), where psycopg's own
  wait would add and remove it around every statement.

It is only used for psycopg on the event loop it first ran on; elsewhere :meth:`execute`
returns None and the caller runs the statement the ordinary way. A connection that fails, or
whose statement is interrupted (a cancelled task), is invalidated rather than reused; one that
the server dropped takes the idle ones with it. Every driver error, opening a connection
included, is raised as SQLAlchemy would have raised it, so the backend translates all of them
into durable's errors in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
import re
import struct
import threading
from collections.abc import Callable, Generator, Sequence
from typing import Any, NamedTuple

import psycopg
import sqlalchemy as sa
from psycopg import errors as pg_errors
from psycopg.adapt import Dumper, PyFormat, Transformer
from psycopg.generators import execute as pg_execute
from psycopg.postgres import types as pg_types
from psycopg.pq import ExecStatus, Format
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from durable.backends.sql.stale import psycopg_closed_while_idle
from durable.backends.sql.urls import shown_url
from durable.backends.sql.waits import SocketWaiter
from durable.errors import ConfigurationError

#: Run on each direct connection when it opens; its statements are durable's own, each written
#: to reach its rows through their keys, and these settings keep PostgreSQL's planner to that:
#:
#: * ``plan_cache_mode``: the statements are prepared once, but left to itself PostgreSQL planned
#:   them anew at every execution (its cost model never favoured the generic plan), which cost
#:   the server nearly as much as running them (0.9 ms of planning against 1.2 ms of execution
#:   for a claim; 0.25 against 0.4 ms for a batch of step records). Now once per connection.
#: * ``enable_sort``: a claim takes the first due tasks in the order of an index. Right after a
#:   bulk enqueue the tasks table has no statistics yet; the planner then guessed that one task
#:   would match and sorted the whole table for each claim instead (3.7 ms a claim with 10,000
#:   tasks waiting: a drain quadratic in its backlog). A sort the statement needs still runs.
#: * ``enable_seqscan``: the generic plan of a claim guesses that ``LIMIT $n`` keeps a tenth of
#:   the table, and joined the picked tasks to a scan of every task to update them.
#: * ``jit``: off, since the two settings above price the plans they avoid so high that
#:   PostgreSQL would otherwise compile every statement to machine code at each execution (a
#:   second per claim: seen once, with both on and jit left as it was).
#:
#: ``tests/test_pg_plans.py`` checks the plans a drain uses on a table without statistics.
#: :data:`KEY_DRIVEN_PLANS` are the three that also hold for a transaction of durable's own
#: through the pool (``SQLDialect.plan_by_keys``).
KEY_DRIVEN_PLANS = {"enable_sort": "off", "enable_seqscan": "off", "jit": "off"}
_SESSION_SETTINGS = "; ".join(
    ["SET plan_cache_mode = force_generic_plan"]
    + [f"SET {name} = {value}" for name, value in KEY_DRIVEN_PLANS.items()]
)


class CompiledStatement:
    """A Core statement compiled once for a dialect, with what is needed to bind its values
    and to read the rows it returns (its SELECT or RETURNING columns)."""

    def __init__(
        self, stmt: sa.Select[Any] | sa.CompoundSelect[Any] | sa.UpdateBase, dialect: sa.Dialect
    ) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.sql = _binary_arrays(str(compiled), compiled, dialect)
        self._compiled = compiled
        self._dialect = dialect
        # the processors SQLAlchemy itself would apply for this dialect (UTCDateTime's checks
        # and conversions among them)
        self._processors = [
            (compiled.bind_names[bind], process)
            for bind in compiled.bind_names
            if (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        ]
        self._columns = [
            (str(column.key), column.type.dialect_impl(dialect).result_processor(dialect, None))
            for column in stmt.exported_columns
        ]
        self._keys = [key for key, _ in self._columns]
        self._processed = [(key, process) for key, process in self._columns if process]
        # a positional paramstyle (sqlite3's qmark): the values in the compiled order
        self._positions = list(compiled.positiontup or ()) if compiled.positional else None
        #: how many parameters a positional statement takes (None: named parameters)
        self.positional_count = None if self._positions is None else len(self._positions)
        # binding without SQLAlchemy's construct_params, which costs more than the statement
        # on SQLite: for each driver parameter, its bindparam's key and processor
        processors = dict(self._processors)
        binds = {name: bind for bind, name in compiled.bind_names.items()}
        order = self._positions if self._positions is not None else list(binds)
        self._names = order
        psycopg_arrays = dialect.driver == "psycopg"
        entries = [
            (
                binds[name].key,
                binds[name],
                (psycopg_arrays and _typed_processor(binds[name].type, dialect))
                or processors.get(name),
            )
            for name in order
        ]
        planned = not any(bind.expanding or bind.callable is not None for bind in binds.values())
        #: the driver's parameters in the statement's order (positional) or its names' (named)
        self._bind = _Binder(entries) if planned else None
        #: psycopg: the statement as PostgreSQL takes it (``$1``...), for :class:`_Session`;
        #: its parameters' names and formats in that order, and their binder
        self.pg_query: bytes | None = None
        self.pg_formats: list[PyFormat] = []
        self._pg_names: list[str] = []
        self._pg_bind: _Binder | None = None
        if psycopg_arrays and not compiled.positional:
            self.pg_query, self._pg_names, self.pg_formats = _numbered(self.sql)
            if planned:
                by_name = dict(zip(order, entries, strict=True))
                self._pg_bind = _Binder([by_name[name] for name in self._pg_names])
        #: True for a SELECT, or DML with RETURNING (known from the statement: asking the
        #: cursor for its description costs more than the rows)
        self.returns_rows = bool(self._columns)

    def rows(self, raw: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
        """The driver's rows as mappings by column key, through the columns' result types."""
        keys, processed = self._keys, self._processed
        rows = []
        for row in raw:
            mapping = dict(zip(keys, row, strict=True))
            for key, process in processed:
                mapping[key] = process(mapping[key])
            rows.append(mapping)
        return rows

    def params(self, values: dict[str, Any]) -> Any:
        """The driver's parameters for ``values`` (keyed like the statement's bindparams): a
        mapping, or for a positional paramstyle a tuple in the statement's order."""
        if self._bind is not None:
            bound = self._planned(self._bind, values)
            if self._positions is not None:
                return bound
            return dict(zip(self._names, bound, strict=True))
        params = dict(self._compiled.construct_params(values))
        try:
            for name, process in self._processors:
                params[name] = process(params[name])
        except ValueError as exc:  # as SQLAlchemy reports a type that refused a value
            raise sa.exc.StatementError(str(exc), self.sql, values, exc) from exc
        if self._positions is not None:
            return tuple(params[name] for name in self._positions)
        return params

    def numbered_params(self, values: dict[str, Any]) -> Sequence[Any]:
        """The parameters of :attr:`pg_query` for ``values``, in its order (``$1`` first)."""
        if self._pg_bind is not None:
            return self._planned(self._pg_bind, values)
        named = self.params(values)
        return [named[name] for name in self._pg_names]

    def _planned(self, bind: _Binder, values: dict[str, Any]) -> tuple[Any, ...]:
        """``bind(values)``, a value its type refused raised as SQLAlchemy raises it."""
        try:
            return bind(values)
        except ValueError as exc:  # as SQLAlchemy reports a type that refused a value
            raise sa.exc.StatementError(str(exc), self.sql, values, exc) from exc


class _Binder:
    """Binds a statement's values (a mapping by bindparam key) for the driver, in the order of
    ``entries`` (each parameter's bindparam key, bindparam and bind processor), planned once:
    the required values taken from the mapping in one ``itemgetter`` call, each optional one
    (its bindparam's own value by default: a literal of the statement) after them, the
    processors run on those that have one, and the whole put in the entries' order by a
    second ``itemgetter``. Binding each parameter by key in a loop cost about twice as much
    (a step record binds 19)."""

    __slots__ = ("_optional", "_order", "_processors", "_take")

    def __init__(self, entries: Sequence[tuple[str, Any, Any]]) -> None:
        required = [i for i, (_, bind, _) in enumerate(entries) if bind.required]
        optional = [i for i, (_, bind, _) in enumerate(entries) if not bind.required]
        gathered = required + optional  # gathered index -> the entries'
        self._take = _getter([entries[i][0] for i in required])
        self._optional = [(entries[i][0], entries[i][1].value) for i in optional]
        self._processors = [
            (at, _quick_boolean(process) if isinstance(entries[i][1].type, sa.Boolean) else process)
            for at, i in enumerate(gathered)
            if (process := entries[i][2]) is not None
        ]
        positions = range(len(entries))
        in_order = gathered == list(positions)
        self._order = tuple if in_order else _getter([gathered.index(i) for i in positions])

    def __call__(self, values: dict[str, Any]) -> tuple[Any, ...]:
        """The bound values, in the entries' order.

        :raises KeyError: a required value is missing.
        :raises ValueError: a bind processor refused a value.
        """
        bound = list(self._take(values))
        for key, default in self._optional:
            bound.append(values.get(key, default))
        for at, process in self._processors:
            bound[at] = process(bound[at])
        return self._order(bound)


def _getter(keys: Sequence[Any]) -> Callable[[Any], tuple[Any, ...]]:
    """``operator.itemgetter(*keys)``, always returning a tuple (itemgetter of one key returns
    its item, of none is refused)."""
    if len(keys) >= 2:
        return operator.itemgetter(*keys)
    if keys:
        key = keys[0]
        return lambda container: (container[key],)
    return lambda container: ()


def _quick_boolean(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """SQLAlchemy's ``Boolean`` bind processor ``process``, with a bool (every value durable
    binds) looked up among what ``process`` makes of False and True (on SQLite, 0 and 1)
    rather than checked and converted in two more calls; anything else still goes through
    ``process``, which refuses what is not a boolean."""
    bound = (process(False), process(True))

    def bind(value: Any) -> Any:
        if value.__class__ is bool:
            return bound[value]
        return process(value)

    return bind


#: psycopg's placeholders (``%(name)s``, ``%(name)b``, ``%(name)t``) and its escaped ``%``
_PLACEHOLDER = re.compile(r"%\((\w+)\)([sbt])|%%")


def _numbered(sql: str) -> tuple[bytes, list[str], list[PyFormat]]:
    """``sql`` (psycopg's named placeholders) with PostgreSQL's numbered ones instead, as
    psycopg converts a query before it sends it: a name used twice is one parameter. Returns
    the query, and the parameters' names and formats in their numbers' order."""
    names: list[str] = []
    formats: list[PyFormat] = []
    numbers: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "%"
        if name not in numbers:
            names.append(name)
            formats.append(PyFormat(match.group(2)))
            numbers[name] = len(names)
        return f"${numbers[name]}"

    return _PLACEHOLDER.sub(number, sql).encode(), names, formats


class TypedArray(list[Any]):
    """A list sent as a one-dimensional PostgreSQL array of a type known in advance (a subclass
    per type).

    psycopg looks through every list it sends to find the type of its elements (the first one
    that is not None, the largest int) and its dimensions, then picks an element dumper, all in
    Python: more than the elements' own dumping. A statement's arrays have known types and one
    dimension, so their element dumper is fixed here (the server casts, e.g. ``bigint[]`` to
    ``integer[]``, as the statement says)."""

    __slots__ = ()


_ARRAY_HEAD = struct.Struct("!iiIii").pack  # dimensions, has nulls, element oid, length, lower
_EMPTY_HEAD = struct.Struct("!iiI").pack  # no dimensions
_ITEM_LENGTH = struct.Struct("!i").pack
_NULL_ITEM = _ITEM_LENGTH(-1)


class _FlatArrayDumper(Dumper):
    """Dumps a :class:`TypedArray` in PostgreSQL's binary array format: its header, then each
    element's length and bytes from the element type's own binary dumper (psycopg's, C)."""

    format = Format.BINARY
    element_oid = 0

    def __init__(self, cls: type, context: Any = None) -> None:
        super().__init__(cls, context)
        element = psycopg.adapters.get_dumper_by_oid(self.element_oid, Format.BINARY)
        self._element: Callable[[Any], Any] = element(object, context).dump

    def dump(self, obj: Any) -> bytes:
        if not obj:
            return _EMPTY_HEAD(0, 0, self.element_oid)
        element, length = self._element, _ITEM_LENGTH
        parts: list[Any] = [b""]
        hasnull = 0
        for item in obj:
            if item is None:
                hasnull = 1
                parts.append(_NULL_ITEM)
            else:
                data = element(item)
                parts.append(length(len(data)))
                parts.append(data)
        parts[0] = _ARRAY_HEAD(1, hasnull, self.element_oid, len(obj), 1)
        return b"".join(parts)


def _array_class(element: str) -> type[TypedArray]:
    """A :class:`TypedArray` subclass for PostgreSQL type ``element``, with its binary dumper
    registered (psycopg's global adapters: the class is durable's own, nothing else sends it)."""
    info = pg_types.get(element)
    assert info is not None
    array = type(f"{element.capitalize()}Array", (TypedArray,), {"__slots__": ()})
    dumper = type(
        f"{element.capitalize()}ArrayDumper",
        (_FlatArrayDumper,),
        {"element_oid": info.oid, "oid": info.array_oid},
    )
    psycopg.adapters.register_dumper(array, dumper)
    return array


#: the array classes by the element type SQLAlchemy knows (others are sent as plain lists)
_ARRAYS: list[tuple[type[Any], type[TypedArray]]] = [
    (sa.Boolean, _array_class("bool")),
    (sa.Integer, _array_class("int8")),
    (sa.String, _array_class("text")),
    (sa.DateTime, _array_class("timestamptz")),
]


def _typed_array(bind_type: Any, dialect: sa.Dialect) -> type[TypedArray] | None:
    """The :class:`TypedArray` for a bind parameter of ``bind_type``, if it is an array of a
    known type."""
    if not isinstance(bind_type, sa.ARRAY):
        return None
    item = bind_type.item_type
    if isinstance(item, sa.TypeDecorator):
        item = item.impl_instance
    for known, array in _ARRAYS:
        if isinstance(item, known):
            return array
    return None


def _binary_arrays(sql: str, compiled: Any, dialect: sa.Dialect) -> str:
    """``sql`` with its array parameters sent in binary (psycopg's ``%(name)b``).

    psycopg sends a list in text by default, quoting every element (a regular expression per
    element), which cost more than the rest of a batch statement's parameters together; in
    binary each element goes as it is, the same values. Only for psycopg's placeholders."""
    if dialect.driver != "psycopg" or compiled.positional:
        return sql
    for bind, name in compiled.bind_names.items():
        if isinstance(bind.type, sa.ARRAY):
            sql = sql.replace(f"%({name})s", f"%({name})b")
    return sql


def _typed_processor(bind_type: Any, dialect: sa.Dialect) -> Any:
    """For an array of a known type, what binds a list as its :class:`TypedArray`, each
    element through its type's own bind processor (UTCDateTime's checks), in place of
    SQLAlchemy's array processor; None for any other parameter."""
    array = _typed_array(bind_type, dialect)
    if array is None:
        return None
    process = bind_type.item_type.dialect_impl(dialect).bind_processor(dialect)
    if process is None:
        return lambda value: None if value is None else array(value)
    return lambda value: None if value is None else array([process(v) for v in value])


class DirectResult(NamedTuple):
    """What a direct statement did: its row count, and the rows it returned (if any)."""

    rowcount: int
    rows: list[dict[str, Any]]


#: The most connections the direct path opens; statements queue for them. Each statement holds
#: one for a single round trip, so a few serve many concurrent workflows.
DIRECT_CONNECTIONS = 4
#: Seconds the pooler check (:meth:`DirectStatements.check_sessions`) waits for its connection's
#: statement while its other connection holds a transaction: only a pooler in transaction mode
#: with no other session makes it wait.
SESSION_CHECK_WAIT = 10.0

#: The most statements a direct connection keeps prepared (one per statement and parameter
#: types, as psycopg does: a Python int goes as the smallest integer type that holds it, None
#: as an unknown type); past it, statements go unprepared. durable's statements are a few dozen.
MAX_PREPARED = 256


class _Session:
    """A direct connection, with what runs a statement on it below psycopg's cursor.

    A cursor's ``execute`` parses the query for each call (its cache lookup), keeps its own
    prepared statement bookkeeping, locks the connection and builds result state, in Python:
    15 to 30 us of a lone step's 120 to 160 us of client CPU. The direct path needs none of
    that (one statement per connection at a time, its queries known in advance), so it runs
    them on libpq's connection with psycopg's own pieces: the :class:`~psycopg.adapt.Transformer`
    (psycopg's dumpers and loaders, found once per type and kept), the ``execute`` generator
    (driven by the connection's ``wait``, the :class:`SocketWaiter` on the event loop) and
    psycopg's errors built from the server's result. The bytes sent are what the cursor sent:
    the same numbered query, prepared under a name of its own per parameter types."""

    __slots__ = ("_pgconn", "_prepared", "_tx", "conn", "waiter")

    def __init__(self, conn: Any, waiter: SocketWaiter | None = None) -> None:
        self.conn = conn
        self.waiter = waiter
        self._pgconn = conn.pgconn
        self._tx = Transformer(conn)
        self._prepared: dict[tuple[CompiledStatement, tuple[int, ...]], bytes] = {}

    def run(
        self, statement: CompiledStatement, params: Sequence[Any]
    ) -> Generator[Any, Any, DirectResult]:
        """The statement's I/O as a psycopg generator, for the connection's ``wait``; its
        value is the statement's row count and rows.

        :raises psycopg.Error: the server refused it, or the connection failed.
        """
        pgconn, tx = self._pgconn, self._tx
        assert statement.pg_query is not None
        values = tx.dump_sequence(params, statement.pg_formats)
        types, formats = tx.types or (), tx.formats
        key = (statement, types)
        name = self._prepared.get(key)
        if name is None and len(self._prepared) < MAX_PREPARED:
            name = b"durable_%d" % len(self._prepared)
            pgconn.send_prepare(name, statement.pg_query, param_types=types)
            self._result((yield from pg_execute(pgconn)))
            self._prepared[key] = name
        if name is None:
            pgconn.send_query_params(
                statement.pg_query, values, param_types=types, param_formats=formats
            )
        else:
            pgconn.send_query_prepared(name, values, param_formats=formats)
        result = self._result((yield from pg_execute(pgconn)))
        rowcount = result.command_tuples
        if not statement.returns_rows:
            return DirectResult(-1 if rowcount is None else rowcount, [])
        tx.set_pgresult(result)
        rows = statement.rows(tx.load_rows(0, result.ntuples, tuple))
        return DirectResult(len(rows) if rowcount is None else rowcount, rows)

    def _result(self, results: list[Any]) -> Any:
        """A statement's one result; raises the server's error as psycopg would."""
        for result in results:
            if result.status == ExecStatus.FATAL_ERROR:
                raise pg_errors.error_from_result(result, encoding=self.conn.info.encoding)
        if len(results) != 1 or results[0].status not in _ANSWERED:
            raise pg_errors.InterfaceError(
                f"unexpected result of a direct statement: {[r.status for r in results]}"
            )
        return results[0]


_ANSWERED = (ExecStatus.COMMAND_OK, ExecStatus.TUPLES_OK)


class DirectStatements:
    """Runs :class:`CompiledStatement` objects on autocommit psycopg connections opened through
    an async engine's pool. Safe for any number of concurrent callers on one event loop."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine.sync_engine
        self.enabled = engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
        size = getattr(self._engine.pool, "size", None)
        pool_size = int(size()) if callable(size) else 1
        self._capacity = max(1, min(DIRECT_CONNECTIONS, pool_size))
        # psycopg AsyncConnections in autocommit mode, each in its session (what runs its
        # statements, with the waiter that keeps its socket in the loop's selector)
        self._idle: list[_Session] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._available: asyncio.Semaphore | None = None
        self._generation = 0  # bumped by close(): connections of an older one are not reused

    async def execute(
        self, statement: CompiledStatement, values: dict[str, Any]
    ) -> DirectResult | None:
        """Run ``statement`` as one autocommitted statement and return its row count and rows;
        None when the direct path does not apply here (the caller then runs it through the
        engine).

        :raises sa.exc.DBAPIError: as SQLAlchemy would have raised it, so callers translate
            errors in one place.
        """
        if not self.enabled:
            return None
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop, self._available = loop, asyncio.Semaphore(self._capacity)
        elif self._loop is not loop:
            return None
        assert self._available is not None
        params = statement.numbered_params(values)
        generation = self._generation
        async with self._available:
            session: _Session | None = None
            while self._idle:
                session = self._idle.pop()
                waiter = session.waiter
                if not (
                    waiter.said_something() if waiter else psycopg_closed_while_idle(session.conn)
                ):
                    break
                await _close(session.conn, session.waiter)  # the server ended it meanwhile
                session = None
            conn: Any = None
            try:
                if session is None:
                    conn = await self._open()
                    session = _Session(conn, SocketWaiter.install(conn, loop))
                conn = session.conn
                result: DirectResult = await conn.wait(session.run(statement, params))
            except BaseException as exc:
                # no connection: opening one failed (refused, too many clients, the pool's
                # timeout); the error says whether the server is unreachable
                broken = conn is not None and bool(conn.broken or conn.closed)
                if session is not None:
                    await _close(session.conn, session.waiter)
                elif conn is not None:
                    await _close(conn)
                if broken:  # the server went away: its other connections are gone too
                    await self._discard_idle()
                wrapped = as_sqlalchemy(exc, statement, params, self._engine.dialect, broken)
                if wrapped is exc:
                    raise
                raise wrapped from exc
            if generation == self._generation:
                self._idle.append(session)
            else:  # closed meanwhile
                await _close(session.conn, session.waiter)
            return result

    async def check_sessions(self) -> None:
        """Refuse a connection pooler that gives durable's connections another PostgreSQL
        session for each transaction (PgBouncer's ``pool_mode = transaction``, or the like):
        the direct path's prepared statements and planner settings, and the workers' LISTEN,
        live in the session. Two connections of its own, opened without the settings (none
        must reach a pooled session someone else gets next) and closed after: A runs a
        statement, B begins a transaction and runs one, A runs one more. On connections of
        their own A's two statements run in one session; behind such a pooler, B's transaction
        takes the session A just left (the pooler hands back the last one freed), and A gets
        another.

        :raises ConfigurationError: naming what was seen and what durable needs.
        """
        if not self.enabled:
            return
        opened: list[Any] = []
        try:
            opened.append(await self._open(settings=False))
            opened.append(await self._open(settings=False))
            a, b = opened
            first = await _backend_pid(a)
            await b.execute("BEGIN")
            await _backend_pid(b)
            try:
                second = await asyncio.wait_for(_backend_pid(a), SESSION_CHECK_WAIT)
            except TimeoutError:
                # A waits for a session while B's transaction holds one: only a pooler in
                # transaction mode, with no other session to give, makes it wait (on its own
                # session, A answers at once); it would wait until the pooler gives up
                second = None
            else:
                await b.execute("ROLLBACK")
        finally:
            for conn in opened:
                await _close(conn)
        if first != second:
            seen = (
                f"PostgreSQL backend {first}, then {second} for the same connection"
                if second is not None
                else f"a connection waited more than {SESSION_CHECK_WAIT:.0f} s for a session "
                "while another's transaction held the one there was"
            )
            raise ConfigurationError(
                f"{shown_url(self._engine.url)} gives each "
                f"transaction a session of its own ({seen}): a connection pooler in transaction "
                "mode sits in between (PgBouncer's pool_mode = transaction, or the like). "
                "durable keeps prepared statements, planner settings and its workers' "
                "LISTEN in its sessions: connect it to PostgreSQL itself, or through a "
                "pool in session mode (pool_mode = session)"
            )

    async def _open(self, *, settings: bool = True) -> Any:
        """A new connection, opened by the pool (connect arguments, events) and detached;
        with ``settings``, the session's (:func:`_settle`)."""
        fairy: Any = await greenlet_spawn(self._engine.raw_connection)
        conn = fairy.driver_connection
        fairy.detach()  # the pool forgets it: its slot is free, and closing it is ours
        try:
            await conn.set_autocommit(True)
            if settings:
                await _settle(conn)
        except BaseException:
            await _close(conn)
            raise
        return conn

    async def _discard_idle(self) -> None:
        """Close the idle connections (after one broke: a restarted server dropped them all,
        and each would otherwise fail one more statement before it is discarded)."""
        idle, self._idle = self._idle, []
        for session in idle:
            await _close(session.conn, session.waiter)

    async def close(self) -> None:
        """Close every idle connection of the direct path (one in use closes when it is done)."""
        self._generation += 1
        await self._discard_idle()
        self._loop = self._available = None


def driver_connect_params(
    engine: sa.Engine | AsyncEngine, connect_args: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """What ``psycopg.Connection.connect`` / ``AsyncConnection.connect`` take to open, in
    autocommit mode, a connection as ``engine`` would with ``connect_args`` (the ones it was
    created with), outside its pool (not its ``connect`` event listeners)."""
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    return list(cargs), {**cparams, **connect_args, "autocommit": True}


async def _settle(conn: Any) -> None:
    """A direct connection's session settings: :data:`_SESSION_SETTINGS`, and UTC (the
    session's time zone changes no value, since timestamps are sent and compared as instants,
    but on UTC psycopg reads them as datetime.UTC: UTCDateTime has nothing left to convert)."""
    await conn.execute("SET TIME ZONE 'UTC'")
    await conn.execute(_SESSION_SETTINGS)


async def _backend_pid(conn: Any) -> int:
    cursor = await conn.execute("SELECT pg_backend_pid()")
    row = await cursor.fetchone()
    return int(row[0])


async def _close(conn: Any, waiter: SocketWaiter | None = None) -> None:
    if waiter is not None:  # first: a closed socket must not stay in the loop's selector
        waiter.close()
    with contextlib.suppress(Exception):
        await conn.close()


class BlockingDirectStatements:
    """The same for sync callers, from any thread: a sync workflow's thread records its steps
    itself instead of handing each record to the event loop and waiting. Sync psycopg
    connections cannot come from an async engine's pool, so these are opened from the engine's
    URL and the ``connect_args`` it was created with (not its ``connect`` event listeners)."""

    def __init__(self, engine: AsyncEngine, connect_args: dict[str, Any]) -> None:
        self._dialect = engine.dialect
        self._connect = driver_connect_params(engine, connect_args)
        self._idle: list[_Session] = []  # on psycopg Connections in autocommit mode
        self._lock = threading.Lock()
        self._available = threading.BoundedSemaphore(DIRECT_CONNECTIONS)
        self._generation = 0

    def connect(self) -> Any:
        """A new psycopg connection (not in autocommit mode) with the engine's arguments, for
        a sync SQLAlchemy engine's ``creator``."""
        args, kwargs = self._connect
        return psycopg.Connection.connect(*args, **{**kwargs, "autocommit": False})

    def execute(self, statement: CompiledStatement, values: dict[str, Any]) -> DirectResult:
        """Run ``statement`` as one autocommitted statement and return its row count and rows.

        :raises sa.exc.DBAPIError: as SQLAlchemy would have raised it.
        """
        params = statement.numbered_params(values)
        generation = self._generation
        with self._available:
            while True:
                with self._lock:
                    session = self._idle.pop() if self._idle else None
                if session is None or not psycopg_closed_while_idle(session.conn):
                    break
                with contextlib.suppress(Exception):  # the server ended it meanwhile
                    session.conn.close()
            conn: Any = None
            try:
                if session is None:
                    args, kwargs = self._connect
                    conn = psycopg.Connection.connect(*args, **kwargs)
                    conn.execute(_SESSION_SETTINGS)
                    session = _Session(conn)
                conn = session.conn
                result: DirectResult = conn.wait(session.run(statement, params))
            except BaseException as exc:
                broken = conn is not None and bool(conn.broken or conn.closed)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                if broken:  # the server went away: its other connections are gone too
                    with self._lock:
                        idle, self._idle = self._idle, []
                    for other in idle:
                        with contextlib.suppress(Exception):
                            other.conn.close()
                wrapped = as_sqlalchemy(exc, statement, params, self._dialect, broken)
                if wrapped is exc:
                    raise
                raise wrapped from exc
            with self._lock:
                if generation == self._generation:
                    self._idle.append(session)
                    return result
            conn.close()  # closed meanwhile
            return result

    def close(self) -> None:
        """Close every idle connection (one in use closes when it is done)."""
        with self._lock:
            self._generation += 1
            idle, self._idle = self._idle, []
        for session in idle:
            with contextlib.suppress(Exception):
                session.conn.close()


def as_sqlalchemy(
    exc: BaseException,
    statement: CompiledStatement,
    params: Any,
    dialect: sa.Dialect,
    broken: bool,
) -> BaseException:
    """A driver error as SQLAlchemy would have raised it (other exceptions unchanged)."""
    dbapi = dialect.loaded_dbapi
    if not isinstance(exc, dbapi.Error):
        return exc
    return sa.exc.DBAPIError.instance(
        statement.sql, params, exc, dbapi.Error, connection_invalidated=broken, dialect=dialect
    )
