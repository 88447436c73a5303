"""Sync views over durable's blocking API: one starts a checkout, one shows its status (and
its result once it is done). The client is the process's (opened on first use, shared by every
request thread); the workflows run in ``manage.py durable_worker`` processes."""

from __future__ import annotations

import contextlib
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

import durable
from durable.integrations.django import get_client
from orders.workflows import checkout


@csrf_exempt  # an API called by programs; a form would keep Django's CSRF check
@require_POST
def start_checkout(request: HttpRequest, order_id: str) -> JsonResponse:
    quantity = int(request.GET.get("quantity", "1"))
    # the order id makes the start idempotent: a second POST returns the same execution
    workflow_id = get_client().enqueue_sync(
        checkout, order_id, quantity, workflow_id=f"order-{order_id}"
    )
    return JsonResponse({"workflow_id": workflow_id}, status=202)


@require_GET
def workflow_status(request: HttpRequest, workflow_id: str) -> JsonResponse:
    client = get_client()
    wait = float(request.GET.get("wait", "0"))
    if wait > 0:  # wait up to `wait` seconds for it to finish
        with contextlib.suppress(Exception):  # timed out, failed, unknown: see below
            client.result_sync(workflow_id, timeout=wait)
    try:
        info = client.get_workflow_sync(workflow_id)
    except durable.WorkflowNotFoundError:
        return JsonResponse({"error": f"no workflow {workflow_id!r}"}, status=404)
    body: dict[str, Any] = {"workflow_id": info.id, "status": info.status.value}
    if info.status is durable.WorkflowStatus.SUCCEEDED:
        body["result"] = info.output
    elif info.error is not None:
        body["error"] = f"{info.error.type}: {info.error.message}"
    return JsonResponse(body)
