"""How workflow inputs, step results and outputs become text in the database.

JSON is the default: it is readable in the database, safe to load, and lets a producer in another
language or another code base enqueue work. :class:`PickleSerializer` handles any picklable value
but executes code on load; it is only used when asked for by name.
"""

from __future__ import annotations

import base64
import json
import pickle
from abc import ABC, abstractmethod
from typing import Any

from durable.errors import ConfigurationError, SerializationError


class Serializer(ABC):
    """Turns values into text and back.

    ``loads(dumps(v))`` must return a value equal to ``v`` for every value the serializer accepts;
    ``dumps`` raises :class:`~durable.errors.SerializationError` for a value it does not accept,
    naming the value's type, and never writes anything partial.
    """

    name: str = ""

    @abstractmethod
    def dumps(self, value: Any) -> str:
        """Serialize ``value``; raise SerializationError if it cannot be."""

    @abstractmethod
    def loads(self, text: str) -> Any:
        """Deserialize text produced by :meth:`dumps`; raise SerializationError if it is corrupt."""


class JSONSerializer(Serializer):
    """Compact JSON. Accepts dicts with string keys, lists, tuples (loaded as lists), str, int,
    float, bool and None."""

    name = "json"

    def __init__(self) -> None:
        self._encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
        self._decoder = json.JSONDecoder()

    def dumps(self, value: Any) -> str:
        try:
            text = self._encoder.encode(value)
            text.encode("utf-8")  # a lone surrogate is valid Python text but no database's
            return text
        except UnicodeEncodeError as exc:
            raise SerializationError(
                f"cannot store a value of type {type(value).__qualname__} as JSON: it contains "
                f"text that is not valid Unicode ({exc.reason} at position {exc.start})"
            ) from exc
        except (TypeError, ValueError) as exc:
            raise SerializationError(
                f"cannot serialize a value of type {_type_name(value, exc)} as JSON: {exc}"
            ) from exc

    def loads(self, text: str) -> Any:
        try:
            return self._decoder.decode(text)
        except ValueError as exc:
            raise SerializationError(f"stored value is not valid JSON: {exc}") from exc


class PickleSerializer(Serializer):
    """Pickle, base64-encoded. Loading runs code named by the data: use it only with a database
    that nobody untrusted can write to."""

    name = "pickle"

    def dumps(self, value: Any) -> str:
        try:
            return base64.b64encode(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)).decode()
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise SerializationError(
                f"cannot pickle a value of type {type(value).__qualname__}: {exc}"
            ) from exc

    def loads(self, text: str) -> Any:
        try:
            return pickle.loads(base64.b64decode(text.encode()))
        except Exception as exc:
            raise SerializationError(f"stored value cannot be unpickled: {exc}") from exc


def get_serializer(serializer: str | Serializer | None) -> Serializer:
    """Resolve a serializer given by name (``"json"``, ``"pickle"``) or instance; None is JSON."""
    if serializer is None or serializer == "json":
        return JSONSerializer()
    if serializer == "pickle":
        return PickleSerializer()
    if isinstance(serializer, Serializer):
        return serializer
    raise ConfigurationError(
        f"unknown serializer {serializer!r}: use 'json', 'pickle' or a Serializer instance"
    )


def _type_name(value: Any, exc: Exception) -> str:
    """Name the offending type: the innermost one JSON choked on when the message tells it."""
    text = str(exc)
    marker = "Object of type "
    if text.startswith(marker):
        return text[len(marker) :].split(" ", 1)[0]
    return type(value).__qualname__
