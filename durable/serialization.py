"""How workflow inputs, step results and outputs become text in the database.

JSON is the default: it is readable in the database, safe to load, and lets a producer in another
language or another code base enqueue work. :class:`PickleSerializer` handles any picklable value
but executes code on load; it is only used when asked for by name.

Typed values: the JSON serializer also stores instances of dataclasses and of pydantic models
(anything with ``model_dump`` and ``model_validate``, pydantic v2's API) as a *typed envelope*,
``{"__durable_type__": "module:QualName", "value": {...}}``, and loads them back as the same class:
a step or workflow that returns an ``Order`` dataclass returns an ``Order`` on replay and from
``result()``. A dataclass's fields are stored one by one (nested dataclasses and models keep their
types, tuples come back as lists); a model is stored as ``model_dump(mode="json")`` and rebuilt with
``model_validate``. Loading imports nothing: the class is looked up among the modules this process
has already imported (the worker that runs a workflow has imported its types), so a row in the
database cannot make a process import code. An envelope whose class is not found (not imported
here, renamed, or no longer a dataclass or model) loads as the plain dict it is stored as (a
:class:`StoredEnvelope`, which is written back as the envelope it was, not escaped). Plain
JSON values cost nothing extra to load: the envelope is only looked for when the marker is in the
text.

A plain dict that has a ``__durable_type__`` key of its own (a payload received from outside) is
stored escaped, as ``{"__durable_type__": "builtins:dict", "value": [[key, item], ...]}``, and
loads back as that dict, never as a typed value. Dict keys must be str: JSON keys are text, so
``{1: "a"}`` would come back as ``{"1": "a"}`` (and ``{1: "a", "1": "b"}`` would lose an entry);
``dumps`` refuses any other key with :class:`~durable.errors.SerializationError` naming it. Both
are found by one walk of the value's dicts, lists and tuples as it is stored (about a
microsecond for a small dict).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import pickle
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
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

    def roundtrip(self, value: Any) -> tuple[str, Any]:
        """``value`` as stored and as read back (what a replay sees): ``(dumps(value),
        loads(dumps(value)))``; raises as :meth:`dumps` does."""
        text = self.dumps(value)
        return text, self.loads(text)


#: How a stored value that a serializer cannot read is reported (the start of the
#: SerializationError's message), by serializer name: the CLI hints at the other serializer.
UNREADABLE = {
    "json": "stored value is not valid JSON",
    "pickle": "stored value cannot be unpickled",
}

#: The key of a typed envelope (see the module's docstring).
TYPE_KEY = "__durable_type__"
_MARKER = f'"{TYPE_KEY}"'


class JSONSerializer(Serializer):
    """Compact JSON. Accepts dicts with str keys (a key of another type is refused: JSON would
    give it back as text), lists, tuples (loaded as lists), str, int, float, bool and None; and
    instances of dataclasses and pydantic models, loaded back as the same class (the typed
    envelope of the module's docstring). A dict with a ``__durable_type__`` key of its own is
    stored escaped and loads back as itself."""

    name = "json"

    def __init__(self) -> None:
        self._encoder = json.JSONEncoder(
            separators=(",", ":"), ensure_ascii=False, default=_encode_typed
        )
        self._decoder = json.JSONDecoder()
        self._typed_decoder = json.JSONDecoder(object_hook=_decode_typed)
        # a subclass that reads or writes otherwise reads its own text back in roundtrip()
        cls = type(self)
        self._leaves_as_is = cls.loads is JSONSerializer.loads and cls.dumps is JSONSerializer.dumps

    def roundtrip(self, value: Any) -> tuple[str, Any]:
        """:meth:`Serializer.roundtrip`; a str, int, float, bool or None (exactly those types)
        reads back as an equal value of its type, immutable, so it is returned as it is, not
        parsed again (every no-op step's result)."""
        text = self.dumps(value)
        if type(value) in _LEAVES and self._leaves_as_is:
            return text, value
        return text, self.loads(text)

    def dumps(self, value: Any) -> str:
        try:
            leaf = _LEAF_TEXT.get(type(value))
            if leaf is not None:  # what the encoder writes for it, without building one
                text = leaf(value)
            else:
                text = self._encoder.encode(value)
                # a walk of dicts, lists and tuples (a microsecond for a small dict): refuses
                # keys that are not str, and finds dicts whose own key is the envelope's, to
                # escape them
                if _holds_marker_key(value):
                    text = self._encoder.encode(_escaped(value))
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
        except RecursionError as exc:
            raise SerializationError(
                f"cannot serialize a value of type {type(value).__qualname__} as JSON: it is "
                "nested deeper than Python's recursion limit"
            ) from exc

    def loads(self, text: str) -> Any:
        decoder = self._typed_decoder if _MARKER in text else self._decoder  # a C-speed scan
        try:
            try:
                return decoder.decode(text)
            except RecursionError:
                # written on a shallower stack than this one: read where the whole recursion
                # limit is free, as it was at most when the value was written
                return _on_a_fresh_stack(decoder.decode, text)
        except RecursionError as exc:
            raise SerializationError("stored value is nested too deeply to read") from exc
        except _RebuildError as exc:
            raise SerializationError(str(exc)) from exc.__cause__
        except ValueError as exc:
            raise SerializationError(f"{UNREADABLE['json']}: {exc}") from exc


def _on_a_fresh_stack(fn: Callable[[str], Any], text: str) -> Any:
    """``fn(text)`` in a thread of its own (its stack empty), for its result or exception."""
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, fn(text)))
        except BaseException as exc:  # handed to the caller
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name="durable-deep-json")
    thread.start()
    thread.join()
    done, value = outcome[0]
    if done:
        return value
    raise value


class _RebuildError(ValueError):
    """A typed envelope whose stored fields no longer fit its class."""


class _KeyTypeError(TypeError):
    """A dict key that is not a str: JSON would store it as text (``1`` as ``"1"``, ``None`` as
    ``"null"``), so it would come back as another key, or overwrite one."""

    def __init__(self, key: Any) -> None:
        super().__init__(
            f"a dict key is {key!r} ({type(key).__qualname__}): only str keys can be stored (JSON "
            "keys are text: it would come back as another key, or overwrite one)"
        )


def _float_text(value: float) -> str:
    """A float as :class:`json.JSONEncoder` writes it (``allow_nan``, its default)."""
    if value != value:
        return "NaN"
    if value == _INFINITY:
        return "Infinity"
    if value == -_INFINITY:
        return "-Infinity"
    return float.__repr__(value)


_INFINITY = float("inf")
#: For a value of exactly one of these types, its JSON text as the encoder (``ensure_ascii``
#: off) writes it at the top level, at a tenth of the encoder's cost (building its C encoder
#: is most of that): an int's ``repr`` (which raises ValueError past Python's digit limit, as
#: the encoder does), a str through the encoder's own ``encode_basestring``.
_LEAF_TEXT: dict[type, Callable[[Any], str]] = {
    int: int.__repr__,
    str: json.encoder.encode_basestring,
    float: _float_text,
    bool: lambda value: "true" if value else "false",
    type(None): lambda value: "null",
}
#: Types whose values hold nothing to look into (the walk's fast path).
_LEAVES: frozenset[type] = frozenset({str, int, float, bool, type(None)})
_STR_ONLY: frozenset[type] = frozenset({str})
#: Containers longer than this are first checked by the set of their items' types.
_SHORT = 8

#: The ``__durable_type__`` of a plain dict that has a ``__durable_type__`` key of its own.
ESCAPED_DICT = "builtins:dict"


def _holds_marker_key(value: Any) -> bool:
    """Whether a dict in ``value`` (through dicts, lists and tuples) has the key
    :data:`TYPE_KEY`; raise :class:`_KeyTypeError` for a key that is not a str. Dataclasses and
    models are walked by :func:`_encode_typed` when they are encoded. Long containers of plain
    keys or values are passed over at C speed (a set of their types)."""
    found = False
    items: Any
    if isinstance(value, dict):
        if len(value) <= _SHORT or not _STR_ONLY.issuperset(map(type, value)):
            for key in value:
                if type(key) is not str and not isinstance(key, str):
                    raise _KeyTypeError(key)
        found = TYPE_KEY in value
        items = value.values()
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        return False
    if len(items) > _SHORT and _LEAVES.issuperset(map(type, items)):
        return found
    for item in items:
        if type(item) not in _LEAVES and _holds_marker_key(item):
            found = True
    return found


def _escaped(value: Any) -> Any:
    """``value`` with every dict that has the key :data:`TYPE_KEY` stored as the envelope
    ``{TYPE_KEY: ESCAPED_DICT, "value": [[key, item], ...]}``, which loads back as that dict."""
    if isinstance(value, dict):
        items = {key: _escaped(item) for key, item in value.items()}
        if TYPE_KEY in items and not isinstance(value, StoredEnvelope):
            return {TYPE_KEY: ESCAPED_DICT, "value": [[key, item] for key, item in items.items()]}
        return items  # a stored envelope: written as it was read
    if isinstance(value, (list, tuple)):
        return [_escaped(item) for item in value]
    return value


def _encode_typed(value: Any) -> Any:
    """The JSON encoder's fallback: a dataclass or pydantic model instance as a typed envelope;
    anything else is refused (the encoder raises TypeError, reported as SerializationError)."""
    cls = type(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {TYPE_KEY: _type_ref(cls), "value": _escaped_if_needed(fields)}
    dump = getattr(value, "model_dump", None)
    if callable(dump) and callable(getattr(cls, "model_validate", None)):
        # by alias and without computed fields: what model_validate takes back
        fields = dump(mode="json", by_alias=True, round_trip=True)
        return {TYPE_KEY: _type_ref(cls), "value": _escaped_if_needed(fields)}
    raise TypeError(f"Object of type {cls.__qualname__} is not JSON serializable")


def _escaped_if_needed(fields: dict[str, Any]) -> Any:
    """An envelope's ``value``, escaped when a dict in it has the key :data:`TYPE_KEY`."""
    return _escaped(fields) if _holds_marker_key(fields) else fields


def _type_ref(cls: type) -> str:
    if "<locals>" in cls.__qualname__:
        raise TypeError(
            f"Object of type {cls.__qualname__} is not JSON serializable: a class defined inside "
            "a function cannot be found again when the value is loaded; define it at module level"
        )
    return f"{cls.__module__}:{cls.__qualname__}"


class StoredEnvelope(dict[str, Any]):
    """A typed envelope loaded where its class is not found (not imported in this process,
    renamed, no longer a dataclass or model): to its reader the plain dict it is stored as,
    ``{"__durable_type__": "module:QualName", "value": {...}}``; written again as that same
    envelope, not escaped as a dict that has the key of its own. So a value read and written
    back by a process without the class (``durable workflows export``, a fork) still loads as
    the class where it is found."""

    __slots__ = ()


def _decode_typed(obj: dict[str, Any]) -> Any:
    """The JSON decoder's object hook: rebuild a typed envelope (innermost first, so nested
    values are already rebuilt), else keep the dict (an envelope as a :class:`StoredEnvelope`)."""
    ref = obj.get(TYPE_KEY)
    if ref is None or len(obj) != 2 or not isinstance(ref, str):
        return obj
    value = obj.get("value")
    if ref == ESCAPED_DICT and isinstance(value, list):
        try:
            return dict(value)  # a plain dict that has a TYPE_KEY key (see _escaped)
        except (TypeError, ValueError):
            return StoredEnvelope(obj)
    cls = _find_class(ref)
    if cls is None or (dataclasses.is_dataclass(cls) and not isinstance(value, dict)):
        return StoredEnvelope(obj)
    try:
        if dataclasses.is_dataclass(cls) and isinstance(value, dict):
            return _dataclass_as_stored(cls, value)
        return cls.model_validate(value)  # type: ignore[attr-defined]
    except Exception as exc:  # the stored fields no longer fit the class
        raise _RebuildError(f"cannot load a stored {ref}: {exc}") from exc


def _dataclass_as_stored(cls: type, value: dict[str, Any]) -> Any:
    """An instance of dataclass ``cls`` with the stored fields, made without calling its
    ``__init__``, as unpickling does: its ``__post_init__`` ran when it was first made, and run
    again at each load it changed the value each time ("gift-wrap" appended once more). A field
    stored by an older version of the class, and no longer in it, is set as it was; one added
    since takes its default (one without a default cannot be loaded)."""
    built: Any = object.__new__(cls)
    for f in dataclasses.fields(cls):
        if f.name in value:
            continue
        if f.default is not dataclasses.MISSING:
            object.__setattr__(built, f.name, f.default)
        elif f.default_factory is not dataclasses.MISSING:
            object.__setattr__(built, f.name, f.default_factory())
        else:
            raise TypeError(f"the stored value has no field {f.name!r}")
    for key, item in value.items():
        object.__setattr__(built, key, item)
    return built


def _find_class(ref: str) -> type | None:
    """The class ``module:QualName`` names, among the modules already imported; None when it is
    not there or is neither a dataclass nor a pydantic model."""
    module_name, _, qualname = ref.partition(":")
    qualname = qualname.partition("[")[0]  # a generic model's parameters: Page[int] is a Page
    found: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        found = getattr(found, part, None)
        if found is None:
            return None
    if not isinstance(found, type):
        return None
    if dataclasses.is_dataclass(found) or callable(getattr(found, "model_validate", None)):
        return found
    return None


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
            raise SerializationError(f"{UNREADABLE['pickle']}: {exc}") from exc


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
