"""The project's workflows. durable's Django app imports the ``workflows`` module of every
installed app when Django starts, so ``manage.py durable_worker`` serves them."""

from __future__ import annotations

from typing import Any

import durable


@durable.step(name="examples.django.price")
def price(order_id: str, quantity: int) -> int:
    return 250 * quantity  # a real step would call a pricing service


@durable.step(name="examples.django.charge")
def charge(order_id: str, amount: int) -> str:
    return f"charge-{order_id}-{amount}"  # ... and a payment provider


@durable.workflow(name="examples.django.checkout.v1")
def checkout(order_id: str, quantity: int) -> dict[str, Any]:
    amount = price(order_id, quantity)
    return {"order_id": order_id, "amount": amount, "receipt": charge(order_id, amount)}
