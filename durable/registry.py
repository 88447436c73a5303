"""Workflow names and the functions that run them.

Decorating a function with :func:`durable.workflow` registers it in :data:`default_registry`
under its name; a runtime looks workflows up by name to resume them after a crash and to run
work enqueued by name. Names are contracts with the stored executions: name versions explicitly
(``orders.checkout.v2``) when a workflow's steps change, and keep old versions registered until
their executions have finished.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from durable.errors import ConfigurationError, UnknownWorkflowError


class Registrable(Protocol):
    """What a registry holds: a name, and the function behind it (by which it tells a module
    reload, which replaces an entry, from two functions claiming one name). A
    :class:`durable.Step` is one.

    The registry is below the decorators (the layers in CONTRIBUTING.md), so it knows what it
    holds only by these protocols; the runtime, which looks entries up to run them, knows them
    as the :class:`durable.Workflow` and :class:`durable.Step` the decorators registered.
    """

    @property
    def name(self) -> str: ...
    @property
    def fn(self) -> Callable[..., Any]: ...


class RegistrableWorkflow(Registrable, Protocol):
    """A registered workflow: also its description. A :class:`durable.Workflow` is one."""

    @property
    def description(self) -> str | None: ...


class Registry:
    """A thread-safe map from workflow names to workflows, and from step names to steps.

    Steps: ``@durable.step`` registers every step in :data:`default_registry`, and every
    registry serves those too (after its own :meth:`register_step` entries). So a runtime with
    a registry of its own runs the steps its workflows hand out (:func:`durable.map`), and its
    workers claim them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._workflows: dict[str, RegistrableWorkflow] = {}
        self._disabled: set[str] = set()
        self._steps: dict[str, Registrable] = {}

    def register(self, workflow: RegistrableWorkflow) -> None:
        """Add ``workflow``; re-registering the same function (a module reload) replaces it.

        :raises ConfigurationError: another function is registered under the same name.
        """
        with self._lock:
            existing = self._workflows.get(workflow.name)
            if existing is not None and _origin(existing.fn) != _origin(workflow.fn):
                raise ConfigurationError(
                    f"workflow name {workflow.name!r} is already used by "
                    f"{_origin(existing.fn)}; cannot register {_origin(workflow.fn)} under it"
                )
            self._workflows[workflow.name] = workflow

    def get(self, name: str) -> RegistrableWorkflow:
        """:raises UnknownWorkflowError: nothing is registered under ``name``."""
        try:
            return self._workflows[name]
        except KeyError:
            raise UnknownWorkflowError(
                f"no workflow is registered under the name {name!r}: import the module that "
                "defines it before starting the runtime"
            ) from None

    def register_step(self, step: Registrable) -> None:
        """Add a decorated step, so that workers can run it when a workflow hands it out.

        :raises ConfigurationError: another function is registered under the same step name.
        """
        with self._lock:
            existing = self._steps.get(step.name)
            if existing is not None and _origin(existing.fn) != _origin(step.fn):
                raise ConfigurationError(
                    f"step name {step.name!r} is already used by {_origin(existing.fn)}; "
                    f"cannot register {_origin(step.fn)} under it"
                )
            self._steps[step.name] = step

    def get_step(self, name: str) -> Registrable:
        """The step registered under ``name`` here, else in :data:`default_registry`.

        :raises UnknownWorkflowError: no step is registered under ``name``.
        """
        step = self._steps.get(name)
        if step is None and self is not default_registry:
            step = default_registry._steps.get(name)
        if step is None:
            raise UnknownWorkflowError(
                f"no step is registered under the name {name!r}: import the module that "
                "defines it before starting the worker"
            )
        return step

    def step_names(self) -> list[str]:
        """The names of the steps this registry serves (its own and the default registry's),
        sorted."""
        with self._lock:
            names = set(self._steps)
        if self is not default_registry:
            names.update(default_registry.step_names())
        return sorted(names)

    def __contains__(self, name: object) -> bool:
        return name in self._workflows

    def names(self) -> list[str]:
        """Every registered name, enabled or not, sorted."""
        with self._lock:
            return sorted(self._workflows)

    def disable(self, name: str) -> None:
        """Stop this process's workers from claiming ``name`` (executions already running go
        on; ``runtime.run`` still runs it explicitly)."""
        self.get(name)
        with self._lock:
            self._disabled.add(name)

    def enable(self, name: str) -> None:
        """Undo :meth:`disable`."""
        with self._lock:
            self._disabled.discard(name)

    def is_enabled(self, name: str) -> bool:
        return name in self._workflows and name not in self._disabled

    def describe(self) -> list[tuple[str, bool, str | None]]:
        """``(name, enabled, description)`` for every registered workflow."""
        with self._lock:
            return [
                (n, n not in self._disabled, self._workflows[n].description)
                for n in sorted(self._workflows)
            ]


def _origin(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


#: Where :func:`durable.workflow` registers workflows unless told otherwise.
default_registry = Registry()
