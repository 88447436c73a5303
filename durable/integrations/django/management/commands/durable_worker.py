"""``python manage.py durable_worker``: a worker for the project's workflows."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from durable.cli_output import log_to_stderr
from durable.errors import DurableError
from durable.integrations.django.conf import durable_settings
from durable.integrations.django.handles import make_runtime
from durable.worker import serve


class Command(BaseCommand):
    help = (
        "Claim and run enqueued executions of the project's workflows (settings.DURABLE) until "
        "SIGTERM or SIGINT; then stop claiming, let running executions finish for --grace "
        "seconds, and hand the rest back so that other workers resume them at once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--concurrency", type=int, help="executions at once (CONCURRENCY)")
        parser.add_argument(
            "--queue", action="append", dest="queues", help="only this queue (repeatable)"
        )
        parser.add_argument("--grace", type=float, help="seconds to finish on shutdown (GRACE)")
        parser.add_argument(
            "--poll-interval", type=float, default=1.0, help="seconds between polls (1.0)"
        )
        parser.add_argument("--executor-id", help="this worker's executor id (EXECUTOR_ID)")

    def handle(self, *args: Any, **options: Any) -> None:
        if not logging.getLogger().handlers:  # durable's INFO and up: what it serves, failures
            log_to_stderr(logging.WARNING)
            logging.getLogger("durable").setLevel(logging.INFO)
        try:
            conf = durable_settings()
            given = options["executor_id"]
            given = conf.executor_id if given is None else given
            extra = {} if given is None else {"executor_id": given}
            runtime = make_runtime(conf, **extra)
            done = asyncio.run(
                serve(
                    runtime,
                    concurrency=(
                        conf.concurrency
                        if options["concurrency"] is None
                        else options["concurrency"]
                    ),
                    queues=options["queues"] or (list(conf.queues) if conf.queues else None),
                    grace=conf.grace if options["grace"] is None else options["grace"],
                    poll_interval=options["poll_interval"],
                )
            )
        except DurableError as exc:
            raise CommandError(f"{type(exc).__name__}: {exc}") from exc
        self.stderr.write(f"worker {runtime.executor_id} stopped after {done} execution(s)")
