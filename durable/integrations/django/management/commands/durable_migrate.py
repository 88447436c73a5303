"""``python manage.py durable_migrate``: create or upgrade durable's tables (``durable
migrate`` on ``settings.DURABLE["URL"]``)."""

from __future__ import annotations

from typing import Any

import click
from django.core.management.base import BaseCommand, CommandError, CommandParser

from durable.cli import main
from durable.integrations.django.conf import durable_settings


class Command(BaseCommand):
    help = (
        "Create or upgrade durable's tables in the database of settings.DURABLE['URL'] (needed "
        "only with AUTO_MIGRATE off, e.g. as a deployment step with more privileges)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--check",
            action="store_true",
            help="change nothing: fail unless the schema is at this durable's revision",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        argv = ["migrate", durable_settings().url] + (["--check"] if options["check"] else [])
        try:
            code = main.main(argv, prog_name="durable", standalone_mode=False)
        except click.ClickException as exc:
            raise CommandError(exc.format_message()) from exc
        if code:
            raise CommandError(f"durable migrate exited with status {code}")
