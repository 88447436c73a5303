"""durable in a Django project: add ``"durable.integrations.django"`` to ``INSTALLED_APPS``
and configure it with the ``DURABLE`` setting (:mod:`durable.integrations.django.conf`)::

    DURABLE = {"URL": "sqlite:///durable.db"}   # or a PostgreSQL URL

Views are sync and use the blocking API of the process-wide client::

    from durable.integrations.django import get_client

    def start(request, order_id):
        workflow_id = get_client().enqueue_sync(checkout, order_id)
        return JsonResponse({"workflow_id": workflow_id}, status=202)

The client runs on an event loop of its own (a background thread), not on the server's: an
async view calls the ``_sync`` methods through ``asgiref.sync.sync_to_async``, never awaits the
client's coroutines on its own loop.

Workflows are defined in a ``workflows`` module of an installed app (imported when Django
starts, like ``admin.py``) or in the modules ``DURABLE["WORKFLOWS"]`` lists. Workers are
separate processes: ``python manage.py durable_worker`` (SIGTERM stops it gracefully).
``python manage.py durable_migrate`` creates or upgrades durable's tables, for projects that
turn ``AUTO_MIGRATE`` off. Needs Django (``pip install 'durable-sqla[integrations]'``).
"""

from __future__ import annotations

from durable.integrations.django.handles import close, get_client, get_runtime, make_runtime

__all__ = ["close", "get_client", "get_runtime", "make_runtime"]
