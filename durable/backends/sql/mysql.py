"""MariaDB's missing statements, emulated inside the transaction (used by ``dialects.py`` only).

The backend's statements are written once, in the SQLAlchemy Core that SQLite and PostgreSQL
share: ``INSERT ... ON CONFLICT`` and ``UPDATE ... RETURNING``. MariaDB has neither, so
:class:`MySQLConnection` stands in for the connection a transaction's function gets and runs
each of those statements as a few plain ones, in the same transaction:

* ``UPDATE ... RETURNING``: lock the rows the UPDATE would change (``SELECT pk ... FOR UPDATE``;
  a batch claim selects its rows ``ORDER BY ... LIMIT n FOR UPDATE SKIP LOCKED`` instead, see
  :data:`PICK`), update them by primary key, then select the returned columns by primary key.
  The rows are locked from the first statement to the commit, so nothing changes in between.
* ``INSERT ... ON CONFLICT DO NOTHING``: the INSERT inside a savepoint; a duplicate key (error
  1062) rolls the savepoint back and counts no row. (``INSERT IGNORE`` would also swallow a
  foreign key or a NOT NULL violation.)
* ``INSERT ... ON CONFLICT (key) DO UPDATE SET ... WHERE ...``: the same, then on a duplicate an
  ``UPDATE ... WHERE key = the inserted key AND where`` (and, for ``INSERT ... SELECT``, the
  SELECT's own condition: a fence stays a fence), ``excluded.col`` standing for the value the
  INSERT carried. (``ON DUPLICATE KEY UPDATE`` has no WHERE, and assigns left to right.)

``INSERT ... RETURNING`` and ``DELETE ... RETURNING`` run as they are (MariaDB 10.5+). Every other
statement goes straight to the connection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql import visitors
from sqlalchemy.sql.dml import Insert, Update

#: The execution option an UPDATE carries to say which rows it updates: a SELECT of their
#: primary key (ordered, limited, ``FOR UPDATE SKIP LOCKED``), run first.
PICK = "durable_mysql_pick"

#: MySQL's error number for a duplicate key.
DUPLICATE_KEY = 1062


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


class MySQLConnection:
    """A SQLAlchemy connection whose :meth:`execute` emulates what MariaDB lacks (see the
    module's docstring); everything else is the connection's own."""

    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def execute(self, statement: Any, parameters: Any = None, **kwargs: Any) -> Any:
        if isinstance(statement, Insert) and statement._post_values_clause is not None:
            if isinstance(parameters, Sequence) and not isinstance(parameters, Mapping):
                count = 0  # executemany: row by row, each may conflict on its own
                for row in parameters:
                    count += self._upsert(statement, dict(row)).rowcount
                return Count(count)
            return self._upsert(statement, dict(parameters or {}))
        if isinstance(statement, Update) and (
            statement._returning or PICK in statement._execution_options
        ):
            return self._update_returning(statement, dict(parameters or {}))
        return self._conn.execute(statement, parameters, **kwargs)

    # -- UPDATE ... RETURNING ------------------------------------------------------------------

    def _update_returning(self, stmt: Update, params: dict[str, Any]) -> Any:
        table = stmt.table
        assert isinstance(table, sa.Table)
        pk = list(table.primary_key.columns)
        pick = stmt._execution_options.get(PICK)
        if pick is None:
            pick = sa.select(*pk).where(*stmt._where_criteria).with_for_update()
        keys = [tuple(row) for row in self._conn.execute(pick, params)]
        returning = list(stmt._returning)
        if not keys:
            if returning:
                return self._conn.execute(sa.select(*returning).where(sa.false()))
            return NoRows()
        by_key = _key_condition(pk, keys)
        update = stmt._generate()
        update._returning = ()
        update._where_criteria = (by_key,)
        update._execution_options = update._execution_options.difference([PICK])
        done = self._conn.execute(update, params)
        if not returning:
            return done
        return self._conn.execute(sa.select(*returning).where(by_key), params)

    # -- INSERT ... ON CONFLICT ----------------------------------------------------------------

    def _upsert(self, stmt: Insert, params: dict[str, Any]) -> Any:
        clause = stmt._post_values_clause
        plain = stmt._generate()
        plain._post_values_clause = None
        try:
            with self._conn.begin_nested():
                return self._conn.execute(plain, params)
        except sa.exc.IntegrityError as exc:
            if errno(exc) != DUPLICATE_KEY:
                raise
        set_ = getattr(clause, "update_values_to_set", None)
        if not set_:  # DO NOTHING
            if stmt._returning:
                return self._conn.execute(sa.select(*stmt._returning).where(sa.false()))
            return NoRows()
        return self._conflict_update(stmt, clause, params)

    def _conflict_update(self, stmt: Insert, clause: Any, params: dict[str, Any]) -> Any:
        table = stmt.table
        assert isinstance(table, sa.Table)
        values, condition = _inserted_values(stmt, params)
        target = [table.c[_name(col)] for col in clause.inferred_target_elements]
        by_key = sa.and_(*[col == values[col.key] for col in target])
        excluded = stmt.excluded  # type: ignore[attr-defined]

        def replace(element: Any) -> Any:
            if isinstance(element, sa.Column) and element.table is excluded:
                return values[element.key]
            return None

        update = sa.update(table).where(by_key)
        if condition is not None:
            update = update.where(condition)
        if clause.update_whereclause is not None:
            update = update.where(clause.update_whereclause)
        update = update.values(
            {
                _name(key): visitors.replacement_traverse(value, {}, replace)
                for key, value in clause.update_values_to_set
            }
        )
        # a parameter named after a column would become a SET value: only the renamed ones
        done = self._conn.execute(update, {k: v for k, v in params.items() if f"durable_v_{k}" not in params})
        if not stmt._returning:
            return done
        found = sa.select(*stmt._returning).where(by_key)
        if done.rowcount == 0:
            found = found.where(sa.false())
        return self._conn.execute(found, params)


def _name(key: Any) -> str:
    return key if isinstance(key, str) else str(key.key)


def _key_condition(pk: list[sa.Column[Any]], keys: list[tuple[Any, ...]]) -> Any:
    if len(pk) == 1:
        return pk[0].in_([key[0] for key in keys])
    return sa.tuple_(*pk).in_(keys)


def _inserted_values(stmt: Insert, params: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """Each column's value in ``stmt`` (an expression: a bound parameter the same ``params``
    fill), and the condition an ``INSERT ... SELECT`` inserts under (None for ``VALUES``)."""
    select = stmt.select
    if select is not None:
        names = [_name(c) for c in stmt._select_names or ()]
        exprs = [getattr(c, "element", c) for c in select.selected_columns]
        where = select.whereclause
        return dict(zip(names, exprs, strict=True)), where
    table = stmt.table
    assert isinstance(table, sa.Table)
    values: dict[str, Any] = {_name(col): value for col, value in (stmt._values or {}).items()}
    for key in list(params):
        if key in table.c and key not in values:
            # a parameter named after a column is reserved for SET: bind the value anew
            params[f"durable_v_{key}"] = params[key]
            values[key] = sa.bindparam(f"durable_v_{key}", type_=table.c[key].type)
    return values, None
