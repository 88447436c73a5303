"""The Django app config: imports the project's workflows when Django starts."""

from __future__ import annotations

import importlib

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules

from durable.errors import ConfigurationError
from durable.integrations.django.conf import durable_settings


class DurableConfig(AppConfig):
    """``durable.integrations.django``: registers the workflows of the project (the
    ``workflows`` module of every installed app, and the modules ``DURABLE["WORKFLOWS"]``
    lists) so that ``manage.py durable_worker`` serves them."""

    name = "durable.integrations.django"
    label = "durable"
    verbose_name = "durable workflows"
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        autodiscover_modules("workflows")
        for module in durable_settings().workflows:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name is None or not f"{module}.".startswith(f"{exc.name}."):
                    raise  # a module the listed one imports: its own error
                raise ConfigurationError(
                    f"settings.DURABLE['WORKFLOWS'] names {module!r}, which cannot be "
                    f"imported: {exc}"
                ) from exc
