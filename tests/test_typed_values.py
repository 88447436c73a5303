"""Typed values through the default JSON serializer: dataclasses and pydantic models returned by
steps and workflows (and passed as inputs) come back as the same class, on every backend: from
``run``, from the stored result (``result``, a second ``run`` of the id), from the history
(``list_steps``) and on a replay (a retried attempt replays the typed step output).

Also: an envelope whose class is not imported here loads as its plain dict (loading imports
nothing); a class defined in a function is refused with a clear error; stored fields that no
longer fit their class fail to load with an error naming the class.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from typing import Generic, TypeVar

import pydantic
import pytest

import durable
from durable.errors import SerializationError
from durable.serialization import JSONSerializer

CALLS: Counter[str] = Counter()


@dataclasses.dataclass(frozen=True)
class Line:
    sku: str
    qty: int


@dataclasses.dataclass
class Order:
    id: str
    lines: list[Line]
    note: str | None = None


class Quote(pydantic.BaseModel):
    order_id: str
    total: Decimal
    at: datetime
    lines: list[int]


class Receipt(pydantic.BaseModel):
    quote: Quote
    paid: bool


@durable.step(name="typed.price")
def price(order: Order) -> Quote:
    CALLS["price"] += 1
    assert isinstance(order, Order) and isinstance(order.lines[0], Line)
    return Quote(
        order_id=order.id,
        total=Decimal("12.50"),
        at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        lines=[line.qty for line in order.lines],
    )


@durable.step(name="typed.pay")
def pay(quote: Quote) -> Receipt:
    CALLS["pay"] += 1
    if CALLS["pay"] == 1:
        raise RuntimeError("the gateway timed out")
    return Receipt(quote=quote, paid=True)


@durable.workflow(
    name="typed.checkout.v1", retry=durable.RetryPolicy(max_attempts=2, initial_delay=0.0)
)
async def checkout(order: Order) -> tuple[Order, Receipt]:
    quote = await price.aio(order)
    assert isinstance(quote, Quote), type(quote)  # on the second attempt: replayed
    receipt = await pay.aio(quote)
    return order, receipt


@pytest.fixture
def durable_url(backend_url: str) -> str:  # durable's fixtures on every backend
    return backend_url


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()


ORDER = Order(id="o-1", lines=[Line("apple", 3), Line("pear", 1)], note="gift")


async def test_dataclass_and_model_round_trip_through_steps_and_results(
    durable_runtime: durable.Runtime, durable_client: durable.Client, durable_worker: object
) -> None:
    workflow_id = await durable_client.enqueue(checkout, ORDER)
    order, receipt = await durable_client.result(workflow_id)
    assert CALLS == {"price": 1, "pay": 2}  # the retried attempt replayed the typed quote
    assert order == ORDER and type(order.lines[0]) is Line
    assert type(receipt) is Receipt and type(receipt.quote) is Quote
    assert receipt.quote.total == Decimal("12.50") and receipt.quote.at.tzinfo is not None
    # the stored result, read again (a second run of the id runs nothing)
    again = await durable_runtime.run(checkout, ORDER, workflow_id=workflow_id)
    assert again == [order, receipt]  # a tuple is stored as a JSON list
    assert CALLS == {"price": 1, "pay": 2}
    # the history
    steps = await durable_client.list_steps(workflow_id)
    outputs = [s.output for s in steps if s.output is not None]
    assert any(type(o) is Quote for o in outputs) and any(type(o) is Receipt for o in outputs)
    info = await durable_client.get_workflow(workflow_id)
    assert info.input["args"] == [ORDER] and type(info.input["args"][0]) is Order


def test_sync_round_trip(durable_runtime: durable.Runtime) -> None:
    CALLS["pay"] = 1  # no failure: run() does not retry
    order, receipt = durable_runtime.run_sync(checkout, ORDER)
    assert type(order) is Order and type(receipt) is Receipt


def test_an_envelope_of_a_class_not_imported_here_loads_as_its_dict() -> None:
    serializer = JSONSerializer()
    text = '{"__durable_type__":"no_such_module_here:Thing","value":{"a":1}}'
    assert serializer.loads(text) == {
        "__durable_type__": "no_such_module_here:Thing",
        "value": {"a": 1},
    }
    # a class that is neither a dataclass nor a model is not built either
    text = '{"__durable_type__":"collections:Counter","value":{"a":1}}'
    assert serializer.loads(text) == {"__durable_type__": "collections:Counter", "value": {"a": 1}}


def test_an_envelope_read_without_its_class_is_written_back_as_it_was() -> None:
    """A process without the class (``durable workflows export`` in a shell, a fork from the
    CLI) reads an envelope as its dict and writes it back: the same envelope, not a dict
    escaped as one with the key of its own, so it still loads as the class where it is
    found. A history exported there replays as the class."""
    from durable.history import dump_history, load_history
    from durable.models import WorkflowSnapshot, WorkflowStatus

    serializer = JSONSerializer()
    stored = serializer.dumps({"order": ORDER, "lines": [Line("x", 2)], "own": dict(MARKED[0])})
    hidden = stored.replace(f'"{__name__}:', '"elsewhere_only:')  # a class not found here
    read = serializer.loads(hidden)
    assert read["lines"] == [
        {"__durable_type__": "elsewhere_only:Line", "value": {"sku": "x", "qty": 2}}
    ]
    assert serializer.dumps(read) == hidden
    assert (
        serializer.dumps([read, (read["order"],)])
        == f"[{hidden},[{serializer.dumps(read['order'])}]]"
    )

    unseen = serializer.loads(stored.replace(f'"{__name__}:Line"', '"elsewhere_only:Line"'))
    snapshot = WorkflowSnapshot(
        id="w", name="typed.checkout.v1", status=WorkflowStatus.SUCCEEDED, output=unseen
    )
    exported = dump_history(snapshot, serializer)
    back = serializer.loads(
        exported["workflow"]["output"].replace("elsewhere_only:", f"{__name__}:")
    )
    assert back == {"order": ORDER, "lines": [Line("x", 2)], "own": MARKED[0]}
    assert type(back["order"]) is Order and type(back["lines"][0]) is Line
    assert load_history(exported, serializer).output == unseen


def test_a_class_defined_in_a_function_is_refused() -> None:
    @dataclasses.dataclass
    class Local:
        a: int

    with pytest.raises(SerializationError, match="defined inside a function"):
        JSONSerializer().dumps(Local(1))


def test_stored_fields_that_no_longer_fit_fail_naming_the_class() -> None:
    text = f'{{"__durable_type__":"{__name__}:Line","value":{{"sku":"a","colour":"red"}}}}'
    with pytest.raises(SerializationError, match=f"{__name__}:Line"):
        JSONSerializer().loads(text)
    text = f'{{"__durable_type__":"{__name__}:Quote","value":{{"order_id":"a"}}}}'
    with pytest.raises(SerializationError, match=f"{__name__}:Quote"):
        JSONSerializer().loads(text)


def test_plain_values_are_unchanged() -> None:
    serializer = JSONSerializer()
    value = {"a": [1, 2.5, None, True, "é"], "b": {"c": "d"}}
    assert serializer.dumps(value) == '{"a":[1,2.5,null,true,"é"],"b":{"c":"d"}}'
    assert serializer.loads(serializer.dumps(value)) == value


#: Values of exactly str, int, float, bool or None, which dumps writes and roundtrip returns
#: without the encoder and the decoder.
LEAVES: list[object] = [
    0,
    -7,
    2**80,
    True,
    False,
    None,
    0.0,
    -0.0,
    2.5,
    1e300,
    5e-324,
    float("inf"),
    float("-inf"),
    float("nan"),
    "",
    "plain",
    'é "quoted" \\ \n \u2028 \x00 日本',
]


def test_a_plain_value_is_written_as_the_encoder_writes_it_and_reads_back_as_itself() -> None:
    import json
    import math

    serializer = JSONSerializer()
    encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
    for value in LEAVES:
        text, stored = serializer.roundtrip(value)
        assert text == serializer.dumps(value) == encoder.encode(value)
        loaded = serializer.loads(text)
        assert type(stored) is type(loaded)
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(stored)
        else:
            assert stored == loaded == value
    # the same refusals as through the encoder
    with pytest.raises(SerializationError, match="int"):
        serializer.dumps(10**5000)  # past Python's digit limit
    with pytest.raises(SerializationError, match="not valid Unicode"):
        serializer.dumps("a\ud800b")
    # an int or str subclass is not a plain value: read back as the plain type, as before
    flag = enum.IntEnum("Flag", {"ON": 1})
    assert serializer.roundtrip(flag.ON) == ("1", 1)
    assert type(serializer.roundtrip(flag.ON)[1]) is int


def test_a_serializer_that_reads_otherwise_reads_its_plain_values_back_itself() -> None:
    class Tagged(JSONSerializer):
        def loads(self, text: str) -> object:
            return ("read", super().loads(text))

    assert Tagged().roundtrip(5) == ("5", ("read", 5))
    assert Tagged().roundtrip("x") == ('"x"', ("read", "x"))


@durable.step(name="typed.echo_payload")
def echo_payload(payload: dict[str, object]) -> dict[str, object]:
    return payload


@durable.workflow(name="typed.payload.v1")
async def payload_flow(payload: dict[str, object]) -> dict[str, object]:
    got = await echo_payload.aio(payload)
    assert got == payload, got
    return got


#: Dicts from outside that happen to have the envelope's key: stored as they are.
MARKED: list[dict[str, object]] = [
    {"__durable_type__": f"{__name__}:Line", "value": {"sku": "a", "qty": 1}},
    {"__durable_type__": f"{__name__}:Line", "value": {"bogus": 1}},
    {"__durable_type__": "builtins:dict", "value": [["a", 1]]},
    {"event": {"__durable_type__": None, "id": 3}, "more": [{"__durable_type__": "x"}]},
]


async def test_a_plain_dict_with_the_envelope_key_comes_back_as_that_dict(
    backend_url: str,
) -> None:
    """A dict that had a ``__durable_type__`` key of its own (a payload from outside) was
    taken for a typed envelope: loaded as another type, or stored and then unreadable
    (CorruptRowError). Such dicts are escaped when stored, and load back equal."""
    serializer = JSONSerializer()
    for payload in MARKED:
        assert serializer.loads(serializer.dumps(payload)) == payload
    inside = Order(id="o-9", lines=[], note=None)
    assert serializer.loads(serializer.dumps([inside, MARKED[0]])) == [inside, MARKED[0]]
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        for i, payload in enumerate(MARKED):
            assert await rt.run(payload_flow, payload, workflow_id=f"marked-{i}") == payload
            assert await rt.result(f"marked-{i}") == payload
            (step,) = await rt.list_steps(f"marked-{i}")
            assert step.output == payload and type(step.output) is dict


def test_a_dict_key_that_is_not_a_str_is_refused() -> None:
    """JSON keys are text: ``{1: "a", "1": "b", None: "n"}`` was stored and came back as
    ``{"1": "b", "null": "n"}``. A key that is not a str is refused, naming it."""
    serializer = JSONSerializer()
    for value in (
        {1: "a", "1": "b"},
        {None: "n"},
        [{"ok": {2.5: "x"}}],
        {"k": (1, {True: 1})},
        {str(i): i for i in range(20)} | {20: 20},  # a long dict, checked at C speed first
        Order(id="o", lines=[], note={1: "x"}),  # type: ignore[arg-type]
    ):
        with pytest.raises(SerializationError, match="only str keys can be stored"):
            serializer.dumps(value)
    with pytest.raises(SerializationError, match=r"a dict key is 1 \(int\)"):
        serializer.dumps({1: "a"})

    class Key(str):
        pass

    assert serializer.loads(serializer.dumps({Key("k"): 1})) == {"k": 1}  # a str, still


async def test_a_workflow_input_with_a_key_that_is_not_a_str_is_refused(sqlite_url: str) -> None:
    async with durable.Runtime(durable.connect(sqlite_url), recover=False) as rt:
        with pytest.raises(SerializationError, match="a dict key is 1"):
            await rt.run(payload_flow, {1: "one", "1": "one"}, workflow_id="int-keys")


def test_sqlite_timestamps_are_written_and_read_as_sqlalchemy_would() -> None:
    """UTCDateTime on SQLite has one bind and one result function of its own (C isoformat and
    fromisoformat); they must give exactly what SQLAlchemy's SQLite DATETIME gives after this
    type's own step: the same text (so stored values keep sorting and comparing as before),
    the same aware UTC datetimes back, and the same refusal of naive times."""
    import random
    from datetime import timedelta, timezone
    from zoneinfo import ZoneInfo

    from sqlalchemy.dialects import sqlite
    from sqlalchemy.dialects.sqlite import DATETIME

    from durable.backends.sql.schema import UTCDateTime

    dialect = sqlite.dialect()
    ours = UTCDateTime()
    bind = ours.dialect_impl(dialect).bind_processor(dialect)
    read = ours.dialect_impl(dialect).result_processor(dialect, None)
    text = DATETIME().bind_processor(dialect)
    parse = DATETIME().result_processor(dialect, None)
    assert bind is not None and read is not None and text is not None and parse is not None
    zones = [
        UTC,
        ZoneInfo("Asia/Kolkata"),
        ZoneInfo("America/New_York"),
        timezone(-timedelta(hours=9, minutes=30)),
    ]
    rnd = random.Random(11)
    for _ in range(5000):
        value = datetime(
            rnd.randint(2, 9998),
            rnd.randint(1, 12),
            rnd.randint(1, 28),
            rnd.randint(0, 23),
            rnd.randint(0, 59),
            rnd.randint(0, 59),
            rnd.choice([0, rnd.randint(0, 999_999)]),
            tzinfo=rnd.choice(zones),
        )
        expected = text(ours.process_bind_param(value, dialect))
        assert bind(value) == expected
        assert read(expected) == ours.process_result_value(parse(expected), dialect) == value
        assert read(expected).tzinfo is UTC
    for computed in ["2026-12-04 20:00:00.123", "2026-12-04T20:00:00", "2026-12-04"]:
        assert read(computed) == ours.process_result_value(computed, dialect)
        assert read(computed).tzinfo is UTC
    # text with an offset of its own (not what SQLite keeps, but readable): that instant, in UTC
    for offset in ["2026-12-04 20:00:00.5+02:00", "2026-12-04T20:00:00-09:30", "2026-12-04 20:00Z"]:
        assert read(offset) == datetime.fromisoformat(offset)
        assert read(offset).tzinfo is UTC
    # the same time bound twice in a row (a step's completed_at and its lease check's now)
    # gives the same text, and a naive time after it is still refused
    moment = datetime(2026, 12, 4, 20, 0, 0, 5, tzinfo=ZoneInfo("Asia/Kolkata"))
    assert bind(moment) == bind(moment) == text(ours.process_bind_param(moment, dialect))
    assert bind(None) is None and read(None) is None
    with pytest.raises(ValueError, match="naive datetime"):
        bind(datetime(2026, 12, 4, 20, 0))


@dataclasses.dataclass
class Cart:
    """Its ``__post_init__`` changes what it was given."""

    items: list[str]
    wrapped: bool = dataclasses.field(default=False, init=False)

    def __post_init__(self) -> None:
        self.items = [*self.items, "gift-wrap"]
        self.wrapped = True


T = TypeVar("T")


class Page(pydantic.BaseModel, Generic[T]):
    items: list[T]


class Ids(pydantic.RootModel[list[int]]):
    pass


class Customer(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    name: str = pydantic.Field(alias="Name")

    @pydantic.computed_field  # type: ignore[prop-decorator]
    @property
    def shout(self) -> str:
        return self.name.upper()


def test_a_value_loads_as_it_was_stored() -> None:
    """A dataclass was made again through its ``__init__``, so its ``__post_init__`` ran at
    each load (one more "gift-wrap" each time); a generic model and a root model came back as
    their stored dicts; a model with an alias, or with a computed field and no extras allowed,
    could not be loaded at all."""
    serializer = JSONSerializer()
    cart = Cart(["book"])
    assert cart.items == ["book", "gift-wrap"]
    loaded = serializer.loads(serializer.dumps(cart))
    assert loaded == cart and loaded.items == ["book", "gift-wrap"] and loaded.wrapped
    assert serializer.loads(serializer.dumps(serializer.loads(serializer.dumps(cart)))) == cart
    page = serializer.loads(serializer.dumps(Page[int](items=[1, 2])))
    assert isinstance(page, Page) and page.items == [1, 2]
    ids = serializer.loads(serializer.dumps(Ids([1, 2])))
    assert isinstance(ids, Ids) and ids.root == [1, 2]
    customer = serializer.loads(serializer.dumps(Customer(Name="ada")))
    assert isinstance(customer, Customer) and customer.shout == "ADA"


@dataclasses.dataclass
class Grown:
    a: int
    added: list[int] = dataclasses.field(default_factory=list)


def test_a_field_added_since_takes_its_default() -> None:
    stored = f'{{"__durable_type__": "{__name__}:Grown", "value": {{"a": 1}}}}'
    assert JSONSerializer().loads(stored) == Grown(1, [])
