"""The version of a workflow's code that an execution records when it starts.

An execution records one version (:attr:`WorkflowInfo.code_version
<durable.models.WorkflowInfo.code_version>`), chosen in this order:

1. the workflow's own ``version`` (``@durable.workflow(version="2024-06")``);
2. the runtime's ``app_version`` (``Runtime(backend, app_version="1.4.2")``);
3. a hash of the workflow function's source (``src-`` and 16 hex digits of its SHA-256): it
   changes when the workflow function's text changes, whatever else changes. Steps' bodies are
   not part of it: a replay never runs a recorded step again, so they do not decide whether a
   replay matches its history (a step's *name*, which is what the history records, is written
   in the workflow function that calls it, or in its decorator: give steps and workflows an
   explicit ``version`` or ``app_version`` when that matters to you).

A worker may serve only the versions it has (``Runtime(..., serve_versions=True)``), so that a
rolling deploy leaves old executions to old workers.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

from durable.errors import InvalidArgumentError

#: The longest version an execution records (the column's width).
MAX_VERSION_LENGTH = 64


def source_version(fn: Callable[..., Any]) -> str:
    """``src-`` and 16 hex digits of the SHA-256 of ``fn``'s source (dedented), or of its
    compiled code where its source cannot be read (a function made at runtime). The source of
    a ``functools.partial`` is its function's; that of a callable object, its class's."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if callable(fn) and not inspect.isroutine(fn) and not isinstance(fn, type):
        fn = type(fn)
    try:
        text = textwrap.dedent(inspect.getsource(fn)).encode()
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        text = (code.co_code + repr(code.co_names).encode()) if code is not None else b""
        text = text or repr(fn).encode()
    return "src-" + hashlib.sha256(text).hexdigest()[:16]


def check_version(value: object, what: str) -> str | None:
    """``value`` if it is None or a non-empty str of at most :data:`MAX_VERSION_LENGTH` chars.

    :raises InvalidArgumentError: anything else, naming ``what``.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_VERSION_LENGTH:
        raise InvalidArgumentError(
            f"{what} must be a non-empty string of at most {MAX_VERSION_LENGTH} characters, "
            f"got {value!r}"
        )
    return value
