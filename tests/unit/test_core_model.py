"""The core model: canonical types, schemas, positions, events and batches."""

from __future__ import annotations

import pytest

from zetl import UNCHANGED, Batch, ChangeEvent, DataType, Field, Op, Position, Schema, SequencePosition, T, TableId
from zetl.runner import merge_batches
from zetl.schema.changes import AddColumn, AlterColumnType, CreateTable, DropColumn, MakeColumnNullable, RenameColumn

TYPE_SPECS = [
    "boolean",
    "int16",
    "int32",
    "int64",
    "float32",
    "float64",
    "decimal(38,9)",
    "string",
    "string(255)",
    "binary",
    "date",
    "time",
    "timestamp",
    "timestamptz",
    "uuid",
    "json",
    "list<int32>",
    "list<list<string>>",
    "struct<a: int64, b: list<decimal(10,2)>, c: struct<d: date>>",
]


@pytest.mark.parametrize("spec", TYPE_SPECS)
def test_type_text_round_trips(spec: str) -> None:
    assert str(DataType.parse(spec)) == spec


@pytest.mark.parametrize(
    "spec, message",
    [
        ("integer", "unknown type 'integer'; canonical types are: boolean, int16"),
        ("decimal(10)", "expected ','"),
        ("decimal(5,7)", "invalid decimal(5,7)"),
        ("list<int32", "unexpected end"),
        ("int32 int64", "unexpected 'int64'"),
    ],
)
def test_bad_type_text_is_explained(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DataType.parse(spec)


def test_schema_guarantees() -> None:
    t = TableId("shop", "orders")
    schema = Schema.of(t, [Field("id", T.int64), Field("total", T.decimal(12, 2), source_type="numeric(12,2)")], ["id"])
    assert schema.field("id").primary_key and not schema.field("id").nullable
    assert schema.field("total").nullable and not schema.field("total").primary_key
    assert str(schema) == "table shop.orders (primary key: id)\n  id: int64 not null\n  total: decimal(12,2)  -- numeric(12,2)"
    with pytest.raises(KeyError, match="no column 'nope' in shop.orders; columns: id, total"):
        schema.field("nope")
    with pytest.raises(ValueError, match="duplicate column 'id'"):
        Schema(t, (Field("id", T.int32), Field("id", T.int64)))
    with pytest.raises(ValueError, match="primary key column"):
        Schema(t, (Field("id", T.int32),), ("key",))


def test_table_id() -> None:
    assert TableId.parse("shop.orders") == TableId("shop", "orders")
    assert TableId.parse("db.schema.t") == TableId("db.schema", "t")
    assert str(TableId("", "t")) == "t" and TableId.parse("t") == TableId("", "t")


def test_positions_order_and_round_trip() -> None:
    positions = [SequencePosition("snapshot", 0), SequencePosition("snapshot", 10), SequencePosition("stream", 0), SequencePosition("stream", 3)]
    assert sorted(reversed(positions)) == positions
    for p in positions:
        assert Position.from_json(p.to_json()) == p
        assert hash(Position.from_json(p.to_json())) == hash(p)
    with pytest.raises(ValueError, match="unknown position kind 'nope'"):
        Position.from_json({"kind": "nope"})


def test_positions_of_different_kinds_do_not_compare() -> None:
    class Other(Position):
        kind = "test-other"

        def sort_key(self) -> tuple[int]:
            return (1,)

        def _fields_json(self) -> dict[str, int]:
            return {}

        @classmethod
        def _from_fields(cls, data: object) -> "Other":
            return cls()

    with pytest.raises(TypeError, match="cannot compare positions of kind 'sequence' and 'test-other'"):
        assert SequencePosition("stream", 1) < Other()


def test_change_event_is_immutable_and_keyed() -> None:
    t = TableId("s", "t")
    e = ChangeEvent.update(t, {"id": 1}, {"id": 1, "v": UNCHANGED}, SequencePosition("stream", 1))
    assert e.key(("id",)) == (1,) and e.row == {"id": 1, "v": UNCHANGED}
    with pytest.raises(AttributeError):
        e.op = Op.DELETE  # type: ignore[misc]
    d = ChangeEvent.delete(t, {"id": 2})
    assert d.row == {"id": 2} and d.after is None
    assert repr(UNCHANGED) == "UNCHANGED"


def test_schema_change_text() -> None:
    t = TableId("s", "t")
    schema = Schema.of(t, [Field("id", T.int64)], ["id"])
    assert str(CreateTable(t, schema)) == "create table s.t (id int64)"
    assert str(AddColumn(t, Field("v", T.json), "id")) == "add column s.t.v json after id"
    assert str(DropColumn(t, "v")) == "drop column s.t.v"
    assert str(RenameColumn(t, "a", "b")) == "rename column s.t.a to b"
    assert str(AlterColumnType(t, "n", T.int64, T.int32)) == "alter column s.t.n type int32 -> int64"
    assert str(MakeColumnNullable(t, "n")) == "alter column s.t.n drop not null"


def test_merge_batches_keeps_order_and_last_position() -> None:
    t = TableId("s", "t")
    b1 = Batch(events=(ChangeEvent.insert(t, {"id": 1}),), end_position=SequencePosition("stream", 1))
    b2 = Batch(end_position=None)
    b3 = Batch(events=(ChangeEvent.insert(t, {"id": 2}),), end_position=SequencePosition("stream", 2))
    merged = merge_batches([b1, b2, b3])
    assert [e.after["id"] for e in merged.events] == [1, 2]  # type: ignore[index]
    assert merged.end_position == SequencePosition("stream", 2)


@pytest.mark.parametrize(("text", "seconds"), [(5, 5.0), ("250ms", 0.25), ("5s", 5.0), ("2m", 120.0), ("1.5h", 5400.0), ("1d", 86400.0)])
def test_durations_in_every_unit(text: object, seconds: float) -> None:
    from zetl.config.types import parse_duration

    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-1", "5 weeks", True])
def test_durations_refused(text: object) -> None:
    from zetl.config.types import parse_duration

    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)
