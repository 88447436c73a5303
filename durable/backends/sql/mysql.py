"""MariaDB's missing statements, emulated inside the transaction (used by ``dialects.py`` only).

The backend's statements are written once, in the SQLAlchemy Core that SQLite and PostgreSQL
share: ``INSERT ... ON CONFLICT`` and ``UPDATE ... RETURNING``. MariaDB has neither, so
:class:`MySQLConnection` stands in for the connection a transaction's function gets and runs
each of those statements as a few plain ones, in the same transaction:

* ``UPDATE ... RETURNING``: lock the rows the UPDATE would change (``SELECT pk ... FOR UPDATE``;
  a batch claim picks its rows with :class:`Pick` instead, see :data:`PICK`), update them by
  primary key, then select the returned columns by primary key. The rows are locked from the
  first statement to the commit, so nothing changes in between.
* ``INSERT ... ON CONFLICT DO NOTHING``: the INSERT; a duplicate key (error 1062) undoes that
  statement alone (InnoDB), and counts no row. (``INSERT IGNORE`` would also swallow a foreign
  key or a NOT NULL violation.)
* ``INSERT ... ON CONFLICT (key) DO UPDATE SET ... WHERE ...``: lock the row of that key if it
  is there (``SELECT ... FOR UPDATE``) and update it, else the INSERT, and on a duplicate key
  (inserted meanwhile) the update: ``UPDATE ... WHERE key = the inserted key AND where`` (and,
  for ``INSERT ... SELECT``, the SELECT's own condition: a fence stays a fence), ``excluded.col``
  standing for the value the INSERT carried. (``ON DUPLICATE KEY UPDATE`` has no WHERE.)
* Every UPDATE's SET clause is reordered (:func:`in_mysql_order`): MySQL assigns left to right,
  and an expression sees the values assigned before it.

``INSERT ... RETURNING`` and ``DELETE ... RETURNING`` run as they are (MariaDB 10.5+). Every other
statement goes straight to the connection.
"""

from __future__ import annotations

import socket
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.dml import Insert, Update
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.util import immutabledict

from durable.errors import SerializationError

#: The execution option an UPDATE carries to say which rows it updates: a :class:`Pick`, run
#: first.
PICK = "durable_mysql_pick"
#: Rounds of a :class:`Pick`'s plain read and lock before a contended pick walks the index
#: with locks for the rest.
PICK_ROUNDS = 3

#: MySQL's error number for a duplicate key.
DUPLICATE_KEY = 1062
#: Bytes of a statement's packet kept for its SQL and the protocol, out of the server's
#: ``max_allowed_packet``; the rest is what its values may take.
PACKET_MARGIN = 64 * 1024


class NoRows:
    """The result of a statement that changed and returned nothing (an ignored duplicate)."""

    rowcount = 0

    def __iter__(self) -> Any:
        return iter(())

    def first(self) -> None:
        return None

    def one_or_none(self) -> None:
        return None

    def scalar(self) -> None:
        return None

    def scalar_one_or_none(self) -> None:
        return None

    def one(self) -> Any:
        raise sa.exc.NoResultFound("No row was found when one was required")

    def scalar_one(self) -> Any:
        return self.one()

    def all(self) -> list[Any]:
        return []

    def fetchall(self) -> list[Any]:
        return []

    def scalars(self) -> NoRows:
        return self

    def mappings(self) -> NoRows:
        return self


class Count(NoRows):
    """The result of several emulated statements that returned no rows: their row count."""

    def __init__(self, rowcount: int) -> None:
        self.rowcount = rowcount


def errno(exc: BaseException) -> int | None:
    """The MySQL error number of a driver error (wrapped by SQLAlchemy or not)."""
    orig = getattr(exc, "orig", exc)
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


class Pick:
    """How a batch claim picks the rows its UPDATE changes: at most ``:p_limit`` rows of
    ``table`` that are ``available``, first in ``order``, each locked by this transaction and
    none that another transaction holds (``FOR UPDATE SKIP LOCKED``).

    Not in one locking walk of the order's index: a locking read checks every entry it passes
    against the clustered index when the entry is delete-marked, and InnoDB keeps a deleted
    row's entries, delete-marked, until purge removes them, which waits for the oldest read view
    on the whole server (a long report, a backup, a transaction left open). Finished tasks are
    deleted at the head of the claim's ``(priority, run_after, id)`` index, so a claim behind
    20,000 of them read 40,000 pages (8x slower). A plain read skips them. So:

    1. the first candidates, by a plain read (``SELECT id ... ORDER BY ... LIMIT n``: the
       committed rows as of now, the index's delete-marked entries skipped);
    2. lock those still available, by primary key (``SELECT id ... WHERE id IN (...) AND
       available FOR UPDATE SKIP LOCKED``): the condition is checked again on the row as
       committed once locked, so a row another claim took meanwhile is left, and one it holds
       is skipped;
    3. short of ``n`` rows while candidates were left behind (other claims hold them): again
       from 1 without the candidates seen, up to :data:`PICK_ROUNDS` rounds; then the locking
       walk of the index for the rest (correct whatever the contention, slow only behind
       unpurged rows).

    Every locked row is one the claim takes (no row locked beyond ``n``): a concurrent claim
    skips only rows that are being claimed.
    """

    def __init__(
        self, table: sa.Table, available: sa.ColumnElement[bool], order: Sequence[Any]
    ) -> None:
        (pk,) = table.primary_key.columns  # a batch claim's table has a one-column key
        limit = sa.bindparam("p_limit", type_=sa.Integer())
        self.first = sa.select(pk).where(available).order_by(*order).limit(limit)
        self.more = self.first.where(pk.not_in(sa.bindparam("durable_seen", expanding=True)))
        self.lock = (
            sa.select(pk)
            .where(pk.in_(sa.bindparam("durable_ids", expanding=True)), available)
            .with_for_update(skip_locked=True)
        )
        self.walk = self.more.with_for_update(skip_locked=True)

    def run(self, conn: sa.Connection, params: Mapping[str, Any]) -> list[Any]:
        """The primary keys of the rows picked and locked (in no particular order)."""
        limit = int(params["p_limit"])
        held: list[Any] = []
        seen: list[Any] = []
        for _ in range(PICK_ROUNDS):
            need = limit - len(held)
            read = self.more if seen else self.first
            found = list(conn.execute(read, {**params, "p_limit": need, "durable_seen": seen}))
            candidates = [row[0] for row in found]
            if not candidates:
                return held
            locked = conn.execute(self.lock, {**params, "durable_ids": candidates})
            held += [row[0] for row in locked]
            if len(held) >= limit or len(candidates) < need:
                return held  # enough, or every available row was a candidate
            seen += candidates
        rest = conn.execute(
            self.walk, {**params, "p_limit": limit - len(held), "durable_seen": held}
        )
        return held + [row[0] for row in rest]


#: The characters the driver escapes with a backslash in a statement's text (PyMySQL's and
#: aiomysql's ``escape_string``, asyncmy's alike): each takes two bytes on the wire.
ESCAPED = ("\\", "'", '"', "\0", "\n", "\r", "\x1a")
_ESCAPED_BYTES = tuple(char.encode() for char in ESCAPED)


def escapes(value: Any) -> int:
    """How many bytes the driver's escaping adds to ``value`` in a statement's text (one per
    escaped character; 0 for a value that is no string)."""
    if isinstance(value, str):
        return sum(value.count(char) for char in ESCAPED)
    if isinstance(value, (bytes, bytearray)):
        return sum(value.count(char) for char in _ESCAPED_BYTES)
    return 0


class MySQLConnection:
    """A SQLAlchemy connection whose :meth:`execute` emulates what MariaDB lacks (see the
    module's docstring); everything else is the connection's own.

    With ``max_packet`` (the server's ``max_allowed_packet``), a statement whose values pass
    it as the driver sends them (escaped: a quote or a backslash takes two bytes) is refused
    with :class:`~durable.errors.SerializationError` before it is sent: the server would drop
    the connection, and the driver report that as a lost connection, which durable takes for
    an outage (a worker would hand the attempt back and run it again, for ever)."""

    def __init__(self, conn: sa.Connection, max_packet: int | None = None) -> None:
        self._conn = conn
        self._max_values = None if max_packet is None else max_packet - PACKET_MARGIN

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def exec_driver_sql(self, statement: str, parameters: Any = None, **kwargs: Any) -> Any:
        if self._max_values is not None and parameters:
            self._check_size(parameters)
        return self._conn.exec_driver_sql(statement, parameters, **kwargs)

    def _check_size(self, parameters: Any) -> None:
        """Refuse values that, in one statement (or one row of an ``executemany``), pass what
        the server accepts once the driver has escaped them (:func:`escapes`: counted only when
        the raw size is over half the limit, so small values cost no scan)."""
        limit = self._max_values
        assert limit is not None
        rows = [parameters] if isinstance(parameters, (Mapping, tuple)) else parameters
        for row in rows:
            values = list(row.values() if isinstance(row, Mapping) else row)
            size = 0
            for value in values:
                if isinstance(value, str):
                    # (a lone surrogate is the driver's to refuse, as before: counted here)
                    size += (
                        len(value) if value.isascii() else len(value.encode(errors="surrogatepass"))
                    )
                elif isinstance(value, (bytes, bytearray)):
                    size += len(value)
            if size * 2 > limit:  # escaping may double it: count what goes on the wire
                size += sum(escapes(value) for value in values)
            if size > limit:
                raise SerializationError(
                    f"a statement would carry {size} bytes of values (escaped), more than this "
                    f"MariaDB server accepts (max_allowed_packet is {limit + PACKET_MARGIN} "
                    "bytes): keep large values elsewhere and store a reference to them, or raise "
                    "the server's max_allowed_packet"
                )

    def execute(self, statement: Any, parameters: Any = None, **kwargs: Any) -> Any:
        if self._max_values is not None:
            if parameters:
                self._check_size(parameters)
            if isinstance(statement, Insert | Update) and statement._values:
                # values written into the statement itself (.values({...})): a rescheduled
                # attempt's error, a saved workflow's output; sent as parameters all the same
                embedded = [
                    value.value
                    for value in statement._values.values()
                    if isinstance(value, BindParameter)
                ]
                if embedded:
                    self._check_size(tuple(embedded))
        if isinstance(statement, Insert) and statement._post_values_clause is not None:
            if isinstance(parameters, Sequence) and not isinstance(parameters, Mapping):
                count = 0  # executemany: row by row, each may conflict on its own
                for row in parameters:
                    count += self._upsert(statement, dict(row)).rowcount
                return Count(count)
            return self._upsert(statement, dict(parameters or {}))
        if isinstance(statement, Update):
            statement = in_mysql_order(statement)
            if statement._returning or PICK in statement._execution_options:
                return self._update_returning(statement, dict(parameters or {}))
        return self._conn.execute(statement, parameters, **kwargs)

    # -- UPDATE ... RETURNING ------------------------------------------------------------------

    def _update_returning(self, stmt: Update, params: dict[str, Any]) -> Any:
        pinned = _pinned(stmt)
        if pinned is not None:  # one row, named by a key: update it, then read it back
            update, found, empty = pinned
            if self._conn.execute(update, params).rowcount == 0:
                return self._conn.execute(empty)
            return self._conn.execute(found, params)
        table = stmt.table
        assert isinstance(table, sa.Table)
        pk = list(table.primary_key.columns)
        pick = stmt._execution_options.get(PICK)
        if pick is not None:
            keys = [(key,) for key in pick.run(self._conn, params)]
        else:
            lock = sa.select(*pk).where(*stmt._where_criteria).with_for_update()
            keys = [tuple(row) for row in self._conn.execute(lock, params)]
        returning = list(stmt._returning)
        if not keys:
            if returning:
                return self._conn.execute(sa.select(*returning).where(sa.false()))
            return NoRows()
        by_key = _key_condition(pk, keys)
        update = stmt._generate()
        update._returning = ()
        update._where_criteria = (by_key,)
        update._execution_options = immutabledict(
            {k: v for k, v in update._execution_options.items() if k != PICK}
        )
        done = self._conn.execute(update, params)
        if not returning:
            return done
        return self._conn.execute(sa.select(*returning).where(by_key), params)

    # -- INSERT ... ON CONFLICT ----------------------------------------------------------------

    def _upsert(self, stmt: Insert, params: dict[str, Any]) -> Any:
        plain, update = _upsert_parts(stmt, params)
        # Rows many transactions write at once (a stream's head, an event): lock the row first
        # if it is there, since taking the shared lock of a failed INSERT and then the exclusive
        # one of the UPDATE deadlocks two writers of one row. A fenced INSERT ... SELECT (a step
        # record) has one writer, its lease's holder: INSERT first.
        if (
            update is not None
            and stmt.select is None
            and self._conn.execute(update.lock, update.params(params)).first() is not None
        ):
            return update.run(self._conn, params)
        try:
            # a failed statement is undone alone: the transaction goes on (InnoDB)
            return self._conn.execute(plain, params)
        except sa.exc.IntegrityError as exc:
            if errno(exc) != DUPLICATE_KEY:
                raise
        if update is not None:  # inserted meanwhile by another transaction
            return update.run(self._conn, params)
        if stmt._returning:
            return self._conn.execute(sa.select(*stmt._returning).where(sa.false()))
        return NoRows()


_UPSERTS: weakref.WeakKeyDictionary[Insert, dict[frozenset[str], Any]] = weakref.WeakKeyDictionary()


def _upsert_parts(stmt: Insert, params: dict[str, Any]) -> tuple[Insert, _ConflictUpdate | None]:
    """The plain INSERT of an ``INSERT ... ON CONFLICT``, and its conflict's UPDATE (None for
    DO NOTHING): built once per statement and set of parameter names."""
    table = stmt.table
    assert isinstance(table, sa.Table)
    columns = frozenset(key for key in params if key in table.c)
    built = _UPSERTS.setdefault(stmt, {})
    parts = built.get(columns)
    if parts is None:
        clause = stmt._post_values_clause
        plain = stmt._generate()
        plain._post_values_clause = None
        update = None
        if getattr(clause, "update_values_to_set", None):
            update = _ConflictUpdate(stmt, clause, columns)
        parts = built[columns] = (plain, update)
    return parts


class _ConflictUpdate:
    """The UPDATE of ``INSERT ... ON CONFLICT (key) DO UPDATE`` when the key is taken."""

    def __init__(self, stmt: Insert, clause: Any, columns: frozenset[str]) -> None:
        table = stmt.table
        assert isinstance(table, sa.Table)
        values, condition, self.renamed = _inserted_values(stmt, columns)
        target = [table.c[_name(col)] for col in clause.inferred_target_elements]
        by_key = sa.and_(*[col == values[col.key] for col in target])
        self.lock = sa.select(sa.literal(1)).where(by_key).with_for_update()

        def replace(element: Any, **kw: Any) -> Any:  # excluded.col: the INSERT's value
            source = getattr(element, "table", None)
            if isinstance(source, sa.Alias) and source.name == "excluded":
                return values[element.key]
            return None

        update = sa.update(table).where(by_key)
        if condition is not None:  # INSERT ... SELECT ... WHERE: the fence holds for both
            update = update.where(condition)
        if clause.update_whereclause is not None:
            update = update.where(clause.update_whereclause)
        self.update = in_mysql_order(
            update.values(
                {
                    _name(key): visitors.replacement_traverse(
                        cast("sa.ColumnElement[Any]", value), _NO_OPTIONS, replace
                    )
                    for key, value in _pairs(clause.update_values_to_set)
                }
            )
        )
        returning = list(stmt._returning)
        self.found = sa.select(*returning).where(by_key) if returning else None
        self.nothing = sa.select(*returning).where(sa.false()) if returning else None

    def params(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` for the UPDATE: a parameter named after a column would be a SET value,
        so those are passed renamed."""
        if not self.renamed:
            return params
        out = {k: v for k, v in params.items() if k not in self.renamed}
        out.update({f"durable_v_{k}": params[k] for k in self.renamed})
        return out

    def run(self, conn: sa.Connection, params: dict[str, Any]) -> Any:
        params = self.params(params)
        done = conn.execute(self.update, params)
        if self.found is None or self.nothing is None:
            return done
        return conn.execute(self.found if done.rowcount else self.nothing, params)


_ORDERED: weakref.WeakKeyDictionary[Update, Update] = weakref.WeakKeyDictionary()


def in_mysql_order(stmt: Update) -> Update:
    """``stmt`` with its SET clause ordered for MySQL, which assigns left to right: an
    expression that reads a column sees the value an earlier assignment gave it, where the SQL
    standard (SQLite, PostgreSQL) has every expression see the row as it was. So a column is
    assigned after every expression that reads it (cached per statement: they are built once).

    :raises NotImplementedError: two assignments read each other's column.
    """
    ordered = _ORDERED.get(stmt)
    if ordered is not None:
        return ordered
    values = dict(stmt._values or {})
    table = stmt.table
    names = {_name(key): key for key in values}
    readers: dict[str, set[str]] = {name: set() for name in names}  # column -> who reads it
    for name, key in names.items():
        for element in visitors.iterate(values[key]):
            if (
                isinstance(element, sa.Column)
                and element.table is table
                and element.key in readers
                and element.key != name
            ):
                readers[element.key].add(name)
    order: list[str] = []
    left = dict(readers)
    while left:
        ready = [name for name, who in left.items() if not (who - set(order))]
        if not ready:
            raise NotImplementedError(f"MySQL cannot run an UPDATE whose SET reads {sorted(left)}")
        order.extend(sorted(ready))
        for name in ready:
            del left[name]
    if order == list(names):
        ordered = stmt
    else:
        ordered = stmt._generate()
        ordered._values = immutabledict({names[name]: values[names[name]] for name in order})
        ordered._maintain_values_ordering = True
    _ORDERED[stmt] = ordered
    return ordered


_NO_OPTIONS: dict[str, Any] = {}
_PINNED: weakref.WeakKeyDictionary[Update, Any] = weakref.WeakKeyDictionary()


def _pinned(stmt: Update) -> tuple[Update, sa.Select[Any], sa.Select[Any]] | None:
    """For an ``UPDATE ... RETURNING`` whose WHERE names one row by a unique key (``col = :p``
    for every column of the primary key or of a unique constraint): the UPDATE without
    RETURNING, the SELECT of the returned columns by that key, and an empty one. The UPDATE
    locks the row it changes, so the SELECT after it reads what it wrote; two round trips, not
    three. None for any other UPDATE (cached per statement)."""
    if stmt in _PINNED:
        return _PINNED[stmt]  # type: ignore[no-any-return]
    table = stmt.table
    result = None
    if isinstance(table, sa.Table) and PICK not in stmt._execution_options:
        equal: dict[str, Any] = {}
        for criterion in stmt._where_criteria:
            for term in getattr(criterion, "clauses", None) or (criterion,):
                left, right = getattr(term, "left", None), getattr(term, "right", None)
                if (
                    getattr(term, "operator", None) is operators.eq
                    and isinstance(left, sa.Column)
                    and left.table is table
                    and isinstance(right, sa.BindParameter)
                ):
                    equal[left.key] = term
        keys = [list(table.primary_key.columns)] + [
            list(c.columns) for c in table.constraints if isinstance(c, sa.UniqueConstraint)
        ]
        for key in keys:
            if key and all(col.key in equal for col in key):
                update = stmt._generate()
                update._returning = ()
                returning = list(stmt._returning)
                found = sa.select(*returning).where(*[equal[col.key] for col in key])
                result = (in_mysql_order(update), found, sa.select(*returning).where(sa.false()))
                break
    _PINNED[stmt] = result
    return result


def _pairs(values: Any) -> Any:
    """SET's (column, value) pairs: a dict in SQLAlchemy 2.1, a list before."""
    return values.items() if isinstance(values, Mapping) else values


def _name(key: Any) -> str:
    return key if isinstance(key, str) else str(key.key)


def _key_condition(pk: list[sa.Column[Any]], keys: list[tuple[Any, ...]]) -> Any:
    if len(pk) == 1:
        return pk[0].in_([key[0] for key in keys])
    return sa.tuple_(*pk).in_(keys)


def _inserted_values(
    stmt: Insert, columns: frozenset[str]
) -> tuple[dict[str, Any], Any, frozenset[str]]:
    """Each column's value in ``stmt`` (an expression: a bound parameter the same parameters
    fill), the condition an ``INSERT ... SELECT`` inserts under (None for ``VALUES``), and the
    parameters named after ``columns`` that must be bound under another name."""
    select = stmt.select
    if select is not None:
        names = [_name(c) for c in stmt._select_names or ()]
        exprs = [getattr(c, "element", c) for c in select.selected_columns]
        return dict(zip(names, exprs, strict=True)), select.whereclause, frozenset()
    table = stmt.table
    assert isinstance(table, sa.Table)
    values: dict[str, Any] = {_name(col): value for col, value in (stmt._values or {}).items()}
    renamed = frozenset(key for key in columns if key not in values)
    for key in renamed:  # a parameter named after a column is reserved for SET
        values[key] = sa.bindparam(f"durable_v_{key}", type_=table.c[key].type)
    return values, None, renamed


#: In a pooled connection's ``info``: its last transaction was committed by durable's runner, so
#: the pool's reset has nothing to roll back.
TRANSACTION_ENDED = "durable_transaction_ended"


def rollback_unless_ended(dbapi_connection: Any, record: Any, reset_state: Any) -> None:
    """The pool's reset of a MySQL connection coming back (its ``reset`` event, the engine's own
    reset turned off): ROLLBACK, unless the runner marked the connection's transaction committed
    (:data:`TRANSACTION_ENDED`; anything else, a rollback included, is rolled back as before).
    SQLAlchemy's own reset sends a ROLLBACK after every commit, which PyMySQL and aiomysql send
    to the server whatever the state (psycopg knows there is no transaction and sends nothing):
    one round trip in four of a MariaDB transaction's."""
    ended = record is not None and record.info.pop(TRANSACTION_ENDED, False)
    if ended or not reset_state.asyncio_safe:  # not safe: as SQLAlchemy's reset, no I/O
        return
    dbapi_connection.rollback()


def resets_by_durable(engine: sa.Engine | AsyncEngine) -> bool:
    """Whether the pool of ``engine`` leaves the reset of connections to
    :func:`rollback_unless_ended` (the runner then marks the transactions it ends)."""
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    return sa.event.contains(sync_engine, "reset", rollback_unless_ended)


#: TCP settings every MySQL/MariaDB connection's socket gets once it is open, unless the
#: engine's ``connect_args`` set them (libpq's names and meanings: PostgreSQL's connections get
#: the same, as libpq settings, :data:`.dialects.PG_CONNECT_DEFAULTS`; 0 leaves
#: one to the operating system, ``keepalives=0`` turns the probes off). The drivers take none
#: of them (aiomysql and PyMySQL turn keepalives on with the system's two hours of idle), so
#: durable sets them on the socket: a peer that went away without a word (a host gone, a NAT
#: entry dropped) is found by keepalives after about a minute of silence, and data it does not
#: acknowledge fails the connection after 60 s, instead of a connection, and whoever awaits
#: it, waiting for the operating system's hours (15 minutes of retransmissions on Linux).
TCP_DEFAULTS: dict[str, int] = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}
#: Each TCP setting's socket option (level, name), where the platform has it.
_TCP_OPTIONS: dict[str, tuple[int, int]] = {
    key: (level, getattr(socket, name))
    for key, level, name in (
        ("keepalives", socket.SOL_SOCKET, "SO_KEEPALIVE"),
        ("keepalives_idle", socket.IPPROTO_TCP, "TCP_KEEPIDLE"),
        ("keepalives_interval", socket.IPPROTO_TCP, "TCP_KEEPINTVL"),
        ("keepalives_count", socket.IPPROTO_TCP, "TCP_KEEPCNT"),
        ("tcp_user_timeout", socket.IPPROTO_TCP, "TCP_USER_TIMEOUT"),
    )
    if hasattr(socket, name)
}


def take_tcp_settings(connect_args: dict[str, Any]) -> dict[str, int]:
    """Take the TCP settings (:data:`TCP_DEFAULTS`' keys) out of ``connect_args``, which go to
    the driver (it would refuse them), and return them, the defaults for those not given.

    :raises ValueError: a setting given that is not a whole number of at least 0.
    """
    settings = dict(TCP_DEFAULTS)
    for key in TCP_DEFAULTS:
        if key not in connect_args:
            continue
        given = connect_args.pop(key)
        try:
            value = int(given)
        except (TypeError, ValueError):
            value = -1
        if value < 0 or isinstance(given, (bool, float)):
            raise ValueError(f"connect_args {key!r} must be a whole number >= 0, got {given!r}")
        settings[key] = value
    return settings


def driver_socket(dbapi_connection: Any) -> socket.socket | None:
    """The socket of a MySQL driver's connection: aiomysql's and asyncmy's (their stream's,
    behind SQLAlchemy's adapter), PyMySQL's; None if it has none that can be seen."""
    driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    sock = getattr(driver, "_sock", None)  # PyMySQL
    if sock is None:
        writer = getattr(driver, "_writer", None)  # asyncio streams: aiomysql, asyncmy
        if writer is not None:
            sock = writer.get_extra_info("socket")
    return cast("socket.socket | None", sock)


def apply_tcp_settings(sock: socket.socket, settings: Mapping[str, int]) -> None:
    """Set ``settings`` (:func:`take_tcp_settings`) on a TCP socket; a Unix socket is left
    as it is."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    keepalive = int(settings.get("keepalives", 1) != 0)
    for key, value in settings.items():
        option = _TCP_OPTIONS.get(key)
        if option is None:
            continue
        if key == "keepalives":
            sock.setsockopt(*option, keepalive)
        elif value > 0 and (keepalive or not key.startswith("keepalives_")):  # 0: the system's
            sock.setsockopt(*option, value)


def tcp_settings_on_connect(settings: Mapping[str, int]) -> Callable[[Any, Any], None]:
    """A ``connect`` event listener that sets ``settings`` on each new connection's socket."""

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        sock = driver_socket(dbapi_connection)
        if sock is not None:
            apply_tcp_settings(sock, settings)

    return on_connect
