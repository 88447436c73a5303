"""Workflow names and the functions that run them.

Decorating a function with :func:`durable.workflow` registers it in :data:`default_registry`
under its name; a runtime looks workflows up by name to resume them after a crash and to run
work enqueued by name. Names are contracts with the stored executions: name versions explicitly
(``orders.checkout.v2``) when a workflow's steps change, and keep old versions registered until
their executions have finished.

One name, one function (steps too: :meth:`Registry.register_step`). A function registered
under a name already taken replaces the entry only if it comes from the same place: the same
``module:qualname``, as when a module is reloaded (``importlib.reload``) or a notebook cell
defining it runs again; else :class:`~durable.errors.ConfigurationError`. Under a *default*
name (``module:qualname``, what the decorators use without ``name=``) the same place is not
enough where that name does not single out one function: a function defined inside a function
(``make.<locals>.w``: each call of ``make`` makes another), a lambda (``<lambda>``: every
lambda of the module) or a bound method (one per instance). A second, different such function
under its default name is refused too (replacing the first would leave a worker running the
second for the first's executions): give each its own ``name=``. An explicit ``name=`` is
taken at its word: a function from the same place registering it again replaces the entry (a
test that defines its steps and runs once per backend; a factory meant to make distinct
functions must give each a distinct name).
"""

from __future__ import annotations

import inspect
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
        """Add ``workflow``; re-registering the same definition (a module reload) replaces it
        (the rule is in the module docstring).

        :raises ConfigurationError: another function is registered under the same name: one
            defined elsewhere, or, under a default name, another function made by the same
            nested definition or lambda.
        """
        with self._lock:
            existing = self._workflows.get(workflow.name)
            if existing is not None:
                _check_replaceable("workflow", existing, workflow)
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

        Re-registering follows the rule of :meth:`register` (see the module docstring).

        :raises ConfigurationError: another function is registered under the same step name:
            one defined elsewhere, or, under a default name, another function made by the same
            nested definition or lambda.
        """
        with self._lock:
            existing = self._steps.get(step.name)
            if existing is not None:
                _check_replaceable("step", existing, step)
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


def _check_replaceable(kind: str, existing: Registrable, new: Registrable) -> None:
    """Refuse ``new`` in the place of ``existing`` (same name) unless it is the same definition
    made again (the rule in the module docstring).

    :raises ConfigurationError: it is another function.
    """
    if _origin(existing.fn) != _origin(new.fn):
        raise ConfigurationError(
            f"{kind} name {new.name!r} is already used by {_origin(existing.fn)}; cannot "
            f"register {_origin(new.fn)} under it"
        )
    if new.name == _origin(new.fn) and not _unique(new.fn) and not _same(existing.fn, new.fn):
        raise ConfigurationError(
            f"{kind} name {new.name!r} is already used by another function: the default name "
            f"(module:qualname) of {_what(new.fn)} does not tell such functions apart, and one "
            f"name runs one function. Pass name= to the decorator: a name of its own for each "
            f"function that must stay runnable (a factory's), or one fixed name if each new "
            f"function is to replace the last (a test run again)"
        )


def _unique(fn: Any) -> bool:
    """Whether ``fn``'s default name names one definition of its module: not a function defined
    inside a function (``<locals>``), a lambda (``<lambda>``) or a bound method."""
    return "<" not in getattr(fn, "__qualname__", "<") and not inspect.ismethod(fn)


def _what(fn: Any) -> str:
    """What kind of function with a default name that is not unique ``fn`` is, for messages."""
    if inspect.ismethod(fn):
        return "a bound method (each instance has one)"
    if "<lambda>" in getattr(fn, "__qualname__", ""):
        return "a lambda (every lambda of a module has one)"
    return "a function defined inside a function (each call of that one makes another)"


def _same(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are the same function (a method bound to the same instance)."""
    if inspect.ismethod(a) and inspect.ismethod(b):
        return a.__func__ is b.__func__ and a.__self__ is b.__self__
    return a is b


#: Where :func:`durable.workflow` registers workflows unless told otherwise.
default_registry = Registry()
