"""The schema pipeline's pass-through: a batch whose rows need no filtering or reshaping is
returned as it is, and every table that does need work is still filtered/reshaped."""

from __future__ import annotations

from typing import Any

from zetl.jsonvalue import JsonText
from zetl.config.model import IntegrationConfig
from zetl.events import Batch, ChangeEvent, Op, SequencePosition, TableId
from zetl.pipeline import SchemaPipeline
from zetl.schema.changes import CreateTable
from zetl.schema.types import Field, Schema, T
from zetl.testing.plugins import MemorySink

TABLE = TableId("shop", "items")
OTHER = TableId("shop", "other")
SCHEMA = Schema.of(TABLE, [Field("id", T.int64, nullable=False), Field("name", T.string()), Field("doc", T.json)], primary_key=("id",))


def pipeline(**sections: Any) -> tuple[SchemaPipeline, MemorySink]:
    config = IntegrationConfig.model_validate({"name": "p", "source": {"type": "script"}, "sink": {"type": "memory"}, **sections})
    sink = MemorySink()
    return SchemaPipeline(config, sink), sink


def row(i: int, **extra: Any) -> dict[str, Any]:
    return {"id": i, "name": f"n{i}", "doc": {"a": i, "b": {"c": "x"}}, **extra}


def batch(*events: ChangeEvent) -> Batch:
    return Batch(events=events, end_position=SequencePosition("stream", len(events)))


def changes() -> Batch:
    return batch(
        ChangeEvent(TABLE, Op.INSERT, None, row(1), SequencePosition("stream", 1)),
        ChangeEvent(TABLE, Op.UPDATE, {"id": 1}, row(1), SequencePosition("stream", 2)),
        ChangeEvent(TABLE, Op.DELETE, row(1), None, SequencePosition("stream", 3)),
    )


def test_batch_needing_no_work_is_returned_unchanged() -> None:
    p, _ = pipeline()
    p.prepare([SCHEMA])
    b = changes()
    assert p.process(b) is b


def test_table_unknown_to_the_pipeline_passes_through() -> None:
    p, _ = pipeline()
    b = batch(ChangeEvent(OTHER, Op.INSERT, None, {"x": 1}))
    assert p.process(b) is b


def test_row_missing_a_target_column_is_padded() -> None:
    p, sink = pipeline()
    wider = Schema.of(TABLE, [*SCHEMA.fields, Field("old", T.string())], primary_key=("id",))
    sink.apply(CreateTable(TABLE, wider))  # the target keeps a column the source no longer has
    p.prepare([SCHEMA])
    b = changes()
    out = p.process(b)
    assert out is not b
    assert out.events[0].after == {**row(1), "old": None}
    assert out.events[2].after is None and out.events[2].before == row(1)


def test_column_map_still_reshapes() -> None:
    p, sink = pipeline(schema_evolution={"behavior": "ignore"})
    narrower = Schema.of(TABLE, [f for f in SCHEMA.fields if f.name != "doc"], primary_key=("id",))
    sink.apply(CreateTable(TABLE, narrower))  # the policy does not add `doc`: its values are not written
    p.prepare([SCHEMA])
    assert p.column_maps[TABLE] == {"doc": None}
    out = p.process(changes())
    assert out.events[0].after == {"id": 1, "name": "n1"}
    assert out.events[2].before == {"id": 1, "name": "n1"}


def test_filter_still_applies() -> None:
    p, _ = pipeline(filters={"tables": {"shop.items": {"columns": {"exclude": ["name"]}, "rows": "id != 2"}}})
    p.prepare([SCHEMA])
    b = batch(ChangeEvent(TABLE, Op.INSERT, None, row(1)), ChangeEvent(TABLE, Op.INSERT, None, row(2)))
    out = p.process(b)
    assert [e.after for e in out.events] == [{"id": 1, "doc": {"a": 1, "b": {"c": "x"}}}]
    assert p.rows_filtered_out == 1


def test_flattening_still_applies() -> None:
    p, _ = pipeline(flatten={"unnest": "top_level"})
    p.prepare([SCHEMA])
    out = p.process(batch(ChangeEvent(TABLE, Op.INSERT, None, row(1))))
    after = out.events[0].after
    assert after is not None and after["doc.a"] == 1 and after["doc.b"] == JsonText('{"c":"x"}')


def test_truncate_refused_by_the_policy_is_still_dropped() -> None:
    p, _ = pipeline(schema_evolution={"behavior": "ignore"})
    p.prepare([SCHEMA])
    b = batch(ChangeEvent(TABLE, Op.INSERT, None, row(1)), ChangeEvent(TABLE, Op.TRUNCATE, None, None))
    out = p.process(b)
    assert [e.op for e in out.events] == [Op.INSERT]


def test_table_missing_from_the_target_is_not_written() -> None:
    p, _ = pipeline()
    p.prepare([SCHEMA])
    p.target_schemas[TABLE] = None  # as after a plan that did not create the table
    out = p.process(changes())
    assert out.events == ()


def test_mixed_tables_reshape_only_where_needed() -> None:
    p, sink = pipeline()
    other = Schema.of(OTHER, [Field("id", T.int64, nullable=False), Field("v", T.int64)], primary_key=("id",))
    wider = Schema.of(OTHER, [*other.fields, Field("old", T.int64)], primary_key=("id",))
    sink.apply(CreateTable(OTHER, wider))
    p.prepare([SCHEMA, other])
    first = ChangeEvent(TABLE, Op.INSERT, None, row(1))
    out = p.process(batch(first, ChangeEvent(OTHER, Op.INSERT, None, {"id": 1, "v": 2})))
    assert out.events[0] is first
    assert out.events[1].after == {"id": 1, "v": 2, "old": None}
