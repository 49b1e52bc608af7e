"""Golden tests of flattening (tests/golden/flatten/documents.txt) and its stability rules."""

from __future__ import annotations

import logging

import orjson
import pytest

from golden_util import Case, check, params
from zetl.events import UNCHANGED, TableId
from zetl.flatten import FlattenConfig, Flattener
from zetl.jsonvalue import JsonText, dump_json, parse_json
from zetl.schema.types import Field, Schema, T

SCHEMA = Schema.of(TableId("s", "t"), [Field("id", T.int64), Field("doc", T.json)], ["id"])


def render(schema: Schema, rows: list[dict]) -> str:
    """The columns and rows; json values (``JsonText``) as the JSON they hold."""
    columns = ", ".join(f"{f.name} {f.type}" for f in schema.fields if f.name != "id")
    values = [{k: orjson.Fragment(str(v)) if isinstance(v, JsonText) else v for k, v in r.items() if k != "id"} for r in rows]
    return f"{columns} => {orjson.dumps(values).decode()}"


@params("flatten/documents.txt", 3)
def test_flatten(case: Case) -> None:
    """Each document arrives as a source sends it: ``JsonText`` (its exact text)."""
    unnest, documents = case.inputs
    table = Flattener(FlattenConfig(unnest=unnest)).for_table(SCHEMA.table)  # type: ignore[arg-type]
    texts = [None if d is None else JsonText(dump_json(d)) for d in parse_json(documents)]
    observed, _ = table.observe(SCHEMA, [{"id": i, "doc": d} for i, d in enumerate(texts)])
    rows = table.finish(observed)
    check(case, render(table.schema(SCHEMA), rows))  # type: ignore[arg-type]


def test_types_only_widen_across_batches() -> None:
    table = Flattener(FlattenConfig(unnest="top_level")).for_table(SCHEMA.table)
    _, changed = table.observe(SCHEMA, [{"id": 1, "doc": {"n": 1}}])
    assert changed
    _, changed = table.observe(SCHEMA, [{"id": 2, "doc": {"n": "x"}}])
    assert changed and table.schema(SCHEMA).field("doc.n").type == T.string()
    observed, changed = table.observe(SCHEMA, [{"id": 3, "doc": {"n": 7}}])
    assert not changed, "an int after a string must not flip the type back"
    assert table.finish(observed)[0]["doc.n"] == "7"  # type: ignore[index]


def test_unchanged_document_leaves_every_flattened_column_unchanged() -> None:
    table = Flattener(FlattenConfig(unnest="top_level")).for_table(SCHEMA.table)
    table.observe(SCHEMA, [{"id": 1, "doc": {"a": 1, "b": 2}}])
    observed, _ = table.observe(SCHEMA, [{"id": 1, "doc": UNCHANGED}])
    assert table.finish(observed) == [{"id": 1, "doc.a": UNCHANGED, "doc.b": UNCHANGED, "doc": UNCHANGED}]


def test_max_columns_keeps_further_keys_in_the_json_column(caplog: pytest.LogCaptureFixture) -> None:
    table = Flattener(FlattenConfig(unnest="top_level", max_columns=3), logging.getLogger("test.flatten")).for_table(SCHEMA.table)
    with caplog.at_level(logging.WARNING):
        observed, _ = table.observe(SCHEMA, [{"id": 1, "doc": {"a": 1, "b": 2, "c": 3}}])
    assert table.finish(observed) == [{"id": 1, "doc.a": 1, "doc": JsonText('{"b":2,"c":3}')}]
    assert "max_columns=3" in caplog.text


def test_seed_from_sink_continues_inference_and_skips_redirect_columns() -> None:
    sink = Schema.of(
        SCHEMA.table,
        [Field("id", T.int64), Field("doc", T.json), Field("doc.a", T.int64), Field("doc.a__string", T.string())],
        ["id"],
    )
    table = Flattener(FlattenConfig(unnest="top_level")).for_table(SCHEMA.table)
    table.seed(SCHEMA, sink)
    assert table.schema(SCHEMA).names == ("id", "doc", "doc.a")
    _, changed = table.observe(SCHEMA, [{"id": 1, "doc": {"a": 5}}])
    assert not changed


def test_per_table_settings_first_pattern_wins() -> None:
    config = FlattenConfig.model_validate({"unnest": "none", "tables": {"s.*": {"unnest": "full", "columns": ["payload"]}}})
    assert config.for_table(TableId("s", "t")).unnest == "full"
    assert config.for_table(TableId("x", "t")).unnest == "none"
    table = Flattener(config).for_table(TableId("s", "t"))
    schema = Schema.of(TableId("s", "t"), [Field("id", T.int64), Field("doc", T.json), Field("payload", T.json)], ["id"])
    assert table.json_columns(schema) == ["payload"]


def test_json_text_is_parsed_exactly_and_kept_as_sent_when_not_an_object() -> None:
    """Documents arrive as ``JsonText``: numbers stay exact, the last of duplicate keys wins, and
    a document that has no columns of its own stays the source's text, byte for byte."""
    table = Flattener(FlattenConfig(unnest="top_level")).for_table(SCHEMA.table)
    rows = [
        {"id": 1, "doc": JsonText('{"a": 1, "a": 2, "n": 123456789012345678901234567890, "x": 1e400}')},
        {"id": 2, "doc": JsonText("[1e400,  -0, 1.0]")},
        {"id": 3, "doc": JsonText("[" * 5000 + "]" * 5000)},  # deeper than the parser goes
    ]
    observed, _ = table.observe(SCHEMA, rows)
    flat = table.finish(observed)
    assert flat[0] == {"id": 1, "doc.a": 2, "doc.n": "123456789012345678901234567890", "doc.x": "1E+400", "doc": None}
    assert flat[1]["doc"] == "[1e400,  -0, 1.0]" and isinstance(flat[1]["doc"], JsonText)  # type: ignore[index]
    assert flat[2]["doc"] == "[" * 5000 + "]" * 5000  # type: ignore[index]
