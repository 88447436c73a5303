"""Orders: the order row and its workflow created in one transaction, and stock reserved by a
step whose write commits with its checkpoint (exactly once, not at least once).

To run:

    python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python examples/orders.py

(or pass a database URL: ``examples/orders.py postgresql+psycopg://app@localhost/app``, or
``mysql://app@localhost/app`` for MariaDB). By
default a SQLite file ``orders.db`` in the current folder holds the application's tables AND
durable's: that is what makes one transaction cover both.

1. ``place_order`` inserts the order and enqueues its checkout with ``durable.enqueue_in`` in
   the same transaction: both exist, or neither (an order whose insert fails leaves no
   workflow behind; enqueueing the same order twice runs it once: the idempotency key).
2. The checkout workflow's ``reserve`` step is a ``@durable.transaction``: its stock update,
   the order's status change and the step's checkpoint commit together, fenced by the
   workflow's lease. A crash before that commit leaves nothing and the step runs again; after
   it, the step is never run again (its recorded result is replayed).
"""

from __future__ import annotations

import sys

import sqlalchemy as sa

import durable

META = sa.MetaData()
orders = sa.Table(
    "shop_orders",
    META,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("sku", sa.String(64), nullable=False),
    sa.Column("qty", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
)
stock = sa.Table(
    "shop_stock",
    META,
    sa.Column("sku", sa.String(64), primary_key=True),
    sa.Column("qty", sa.Integer, nullable=False),
)


class OutOfStock(durable.NonRetryableError):
    """Not enough stock: the order is rejected (not retried)."""


@durable.transaction(name="shop.reserve_stock", max_attempts=3, initial_delay=0.1)
def reserve(conn: sa.Connection, order_id: str) -> int:
    """Take the order's quantity from the stock and mark the order reserved: one transaction
    with the step's checkpoint. Returns the stock left."""
    order = conn.execute(sa.select(orders).where(orders.c.id == order_id)).one()
    taken = conn.execute(  # no UPDATE ... RETURNING: MariaDB has none
        stock.update()
        .where(stock.c.sku == order.sku, stock.c.qty >= order.qty)
        .values(qty=stock.c.qty - order.qty)
    ).rowcount
    if taken != 1:
        raise OutOfStock(f"not enough {order.sku} for order {order_id}")
    left = conn.execute(sa.select(stock.c.qty).where(stock.c.sku == order.sku)).scalar_one()
    conn.execute(orders.update().where(orders.c.id == order_id).values(status="reserved"))
    return int(left)


@durable.transaction(name="shop.reject_order")
def reject(conn: sa.Connection, order_id: str) -> None:
    conn.execute(orders.update().where(orders.c.id == order_id).values(status="rejected"))


@durable.workflow(name="shop.checkout.v1")
def checkout(order_id: str) -> str:
    try:
        reserve(order_id)
    except OutOfStock:
        reject(order_id)
        return f"{order_id}: rejected (out of stock)"
    return f"{order_id}: reserved"


def place_order(engine: sa.Engine, order_id: str, sku: str, qty: int) -> str:
    """The application's own transaction: the order row and its workflow, one commit."""
    with engine.begin() as conn:
        conn.execute(orders.insert().values(id=order_id, sku=sku, qty=qty, status="new"))
        return durable.enqueue_in(conn, checkout, order_id, idempotency_key=f"order-{order_id}")


def app_url(url: str) -> str:
    """The application's own engine for durable's database: the same database through a sync
    driver (``mysql://`` alone would mean mysqlclient, which durable's extra does not install)."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() in ("mysql", "mariadb"):
        return parsed.set(drivername="mysql+pymysql").render_as_string(hide_password=False)
    return url.replace("+aiosqlite", "")


def main(url: str) -> None:
    runtime = durable.Runtime(durable.connect(url), recover=False)
    with runtime:  # creates durable's tables
        engine = sa.create_engine(app_url(url))
        META.create_all(engine)  # the application's tables, in the same database
        with engine.begin() as conn:
            if conn.execute(sa.select(sa.func.count()).select_from(orders)).scalar_one():
                # durable keeps the earlier checkouts, and their idempotency keys: placing the
                # same orders again would return those, and run nothing
                print("this database holds the orders of an earlier run: start from an empty")
                print("one (on the default SQLite file, delete orders.db) to run it again")
                return
            conn.execute(stock.insert().values(sku="mug", qty=5))

        ids = [place_order(engine, f"o-{n}", "mug", qty) for n, qty in ((1, 2), (2, 2), (3, 10))]
        try:
            place_order(engine, "o-1", "mug", 1)  # the order exists: the whole transaction fails
        except sa.exc.IntegrityError:
            print("o-1 again: refused by the orders table, and no second workflow was enqueued")

        runtime.blocking(runtime.start_worker(poll_interval=0.1))
        for wid in ids:
            print(runtime.client.result_sync(wid, timeout=30))
        with engine.connect() as conn:
            statuses = dict(conn.execute(sa.select(orders.c.id, orders.c.status)).all())
            left = conn.execute(sa.select(stock.c.qty).where(stock.c.sku == "mug")).scalar_one()
        workflows = runtime.client.list_workflows_sync(name="shop.checkout.v1")
        print(f"orders: {statuses}; mugs left: {left}; checkouts: {len(workflows.items)}")
        engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "sqlite:///orders.db")
