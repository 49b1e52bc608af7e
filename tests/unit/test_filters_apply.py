"""Column filters, masks and row-filter semantics for changes (UPDATE moving in/out of the filter)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import ValidationError

from zetl.arrow import arrow_schema
from zetl.config.load import load_integration
from zetl.errors import ConfigError, SchemaError, SourceError
from zetl.events import UNCHANGED, ChangeEvent, Op, RowChunk, SequencePosition, TableId
from zetl.filters.apply import TableFilter, mask_hash
from zetl.filters.config import FiltersConfig
from zetl.schema.types import Field, Schema, T

TABLE = TableId("crm", "users")
SCHEMA = Schema.of(
    TABLE,
    [Field("id", T.int64), Field("email", T.string()), Field("ssn", T.string()), Field("status", T.string()), Field("notes", T.string()), Field("ref", T.uuid), Field("doc", T.json)],
    ["id"],
)
P = SequencePosition("stream", 1)


def table_filter(rows: str | None = "status = 'active'", **columns: object) -> TableFilter:
    config = FiltersConfig.model_validate({"salt": "s3cret", "tables": {"crm.*": {"rows": rows, "columns": columns}}})
    result = TableFilter.build(config, SCHEMA)
    assert result is not None
    return result


def row(i: int, status: str | None, **extra: object) -> dict[str, object]:
    return {"id": i, "email": f"{i}@x.io", "ssn": "123", "status": status, "notes": "n", "ref": None, "doc": None, **extra}


@pytest.mark.parametrize(
    "event, expected",
    [
        (ChangeEvent.insert(TABLE, row(1, "active"), P), "INSERT"),
        (ChangeEvent.insert(TABLE, row(1, "gone"), P), None),
        (ChangeEvent.read(TABLE, row(1, None), P), None),
        (ChangeEvent.update(TABLE, row(1, "active"), row(1, "active"), P), "UPDATE"),
        (ChangeEvent.update(TABLE, row(1, "gone"), row(1, "active"), P), "INSERT"),  # moves in
        (ChangeEvent.update(TABLE, row(1, "active"), row(1, "gone"), P), "DELETE"),  # moves out
        (ChangeEvent.update(TABLE, row(1, "gone"), row(1, "gone"), P), None),
        (ChangeEvent.update(TABLE, {"id": 1}, row(1, "active"), P), "UPDATE"),  # old row unknown: upsert
        (ChangeEvent.update(TABLE, None, row(1, "gone"), P), "DELETE"),  # old row unknown: make sure it is gone
        (ChangeEvent.update(TABLE, row(1, "active"), row(1, UNCHANGED), P), "UPDATE"),  # unchanged: taken from before
        (ChangeEvent.update(TABLE, {"id": 1}, row(1, UNCHANGED), P), "UPDATE"),  # cannot tell: applied as is
        (ChangeEvent.delete(TABLE, row(1, "gone"), P), None),  # never reached the target
        (ChangeEvent.delete(TABLE, row(1, "active"), P), "DELETE"),
        (ChangeEvent.delete(TABLE, {"id": 1}, P), "DELETE"),
        (ChangeEvent.truncate(TABLE, P), "TRUNCATE"),
    ],
)
def test_row_filter_semantics_for_changes(event: ChangeEvent, expected: str | None) -> None:
    result = table_filter().apply_event(event)
    assert (result.op.name if result is not None else None) == expected
    if result is not None and result.op is Op.DELETE:
        assert result.before is not None and result.before["id"] == 1 and result.after is None
    if result is not None and result.op is Op.INSERT:
        assert result.before is None and result.after is not None and result.after["status"] == "active"


def test_columns_excluded_and_masked_on_events_and_chunks_alike() -> None:
    f = table_filter(None, exclude=["not*"], mask={"email": "hash", "ssn": None, "ref": "hash"})
    assert f.target_schema.names == ("id", "email", "ssn", "status", "ref", "doc")
    assert str(f.target_schema.field("email").type) == "string(64)" and f.target_schema.field("ssn").nullable
    ref = uuid.UUID(int=7)
    event = f.apply_event(ChangeEvent.insert(TABLE, row(1, "active", ref=ref, doc={"b": 1, "a": 2}), P))
    assert event is not None and event.after is not None
    assert event.after["email"] == mask_hash(b"s3cret", "1@x.io") and len(event.after["email"]) == 64
    assert event.after["ssn"] is None and "notes" not in event.after
    # The same row as an Arrow chunk (json as text, uuid as text) hashes to the same values.
    chunk_rows = pa.Table.from_pylist([row(1, "active", ref=str(ref), doc='{"a": 2, "b": 1}')], schema=arrow_schema(SCHEMA))
    chunk = f.apply_chunk(RowChunk(TABLE, Op.READ, chunk_rows, P))
    assert chunk is not None
    got = chunk.rows.to_pylist()[0]
    assert got["email"] == event.after["email"] and got["ref"] == event.after["ref"] and got["ssn"] is None
    assert chunk.rows.column_names == list(f.target_schema.names)
    # UNCHANGED stays unchanged through masks (the target keeps its value).
    update = f.apply_event(ChangeEvent.update(TABLE, None, row(1, "active", email=UNCHANGED), P))
    assert update is not None and update.after is not None and update.after["email"] is UNCHANGED


def test_row_filter_on_chunks_is_vectorised_and_keeps_the_type() -> None:
    rows = pa.Table.from_pylist([row(i, "active" if i % 2 else "gone") for i in range(10)], schema=arrow_schema(SCHEMA))
    f = table_filter()
    kept = f.apply_chunk(RowChunk(TABLE, Op.READ, rows, P))
    assert kept is not None and [r["id"] for r in kept.rows.to_pylist()] == [1, 3, 5, 7, 9]
    batch = rows.to_batches()[0]
    kept_batch = f.apply_chunk(RowChunk(TABLE, Op.READ, batch, P))
    assert kept_batch is not None and isinstance(kept_batch.rows, pa.RecordBatch) and kept_batch.rows.num_rows == 5
    assert f.apply_chunk(RowChunk(TABLE, Op.READ, rows.slice(0, 1), P)) is None


def test_schema_errors_name_table_and_column() -> None:
    config = FiltersConfig.model_validate({"tables": {"crm.users": {"columns": {"exclude": ["id"]}}}})
    with pytest.raises(SchemaError, match="'id' is part of the primary key of crm.users and cannot be excluded"):
        TableFilter.build(config, SCHEMA)
    config = FiltersConfig.model_validate({"tables": {"crm.users": {"rows": "amount > 1"}}})
    with pytest.raises(SchemaError, match=r"names column\(s\) amount that crm.users does not have"):
        TableFilter.build(config, SCHEMA)
    config = FiltersConfig.model_validate({"tables": {"crm.users": {"columns": {"mask": {"id": None}}}}})
    with pytest.raises(SchemaError, match="cannot be masked with null; use 'hash'"):
        TableFilter.build(config, SCHEMA)
    assert TableFilter.build(config, Schema.of(TableId("other", "t"), [Field("id", T.int64)], ["id"])) is None


def test_config_validation_messages() -> None:
    with pytest.raises(ValidationError, match="'salt' is required when a column is masked with 'hash'"):
        FiltersConfig.model_validate({"tables": {"a.b": {"columns": {"mask": {"email": "hash"}}}}})
    with pytest.raises(ValidationError, match="column 'email' is both excluded and masked"):
        FiltersConfig.model_validate({"salt": "x", "tables": {"a.b": {"columns": {"exclude": ["e*"], "mask": {"email": "hash"}}}}})
    with pytest.raises(ValidationError, match="invalid row filter at column 6: expected a value, got '=='"):
        FiltersConfig.model_validate({"tables": {"a.b": {"rows": "a == == 1"}}})
    secret = FiltersConfig.model_validate({"salt": "hush", "tables": {}})
    assert "hush" not in repr(secret) and "hush" not in str(secret.model_dump())


def test_syntax_errors_point_at_the_file_position_of_the_problem(tmp_path: Path) -> None:
    # Plain and quoted one-line values: the position is exact; a folded block: the value's start
    # (the message's "at column N" locates the problem inside the expression).
    path = tmp_path / "f.yaml"
    path.write_text(
        "name: f\nsource: {type: memory}\nsink: {type: memory}\nfilters:\n  tables:\n"
        "    shop.a:\n      rows: amount >= and status = 'x'\n"
        "    shop.b:\n      rows: \"amount >= 1 and (status = 'x'\"\n"
        "    shop.c:\n      rows: >\n        amount >=\n        and x\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_integration(path)
    found = [(i.path, i.line, i.column, i.message.split(":")[0]) for i in caught.value.issues]
    assert found == [
        ("filters.tables.shop.a.rows", 7, 23, "invalid row filter at column 11"),
        ("filters.tables.shop.b.rows", 9, 43, "invalid row filter at column 30"),
        ("filters.tables.shop.c.rows", 11, 13, "invalid row filter at column 11"),
    ]


def test_a_filter_that_does_not_fit_the_table_names_the_file_line_and_setting(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("name: f\nsource: {type: memory}\nsink: {type: memory}\nfilters:\n  tables:\n    crm.users:\n      rows: status = 'active' and ref = 'nope'\n")
    config = load_integration(path).config.filters
    with pytest.raises(ConfigError) as caught:
        TableFilter.build(config, SCHEMA)
    (issue,) = caught.value.issues
    assert (issue.file, issue.line, issue.column, issue.path) == (str(path), 7, 13, "filters.tables.crm.users.rows")
    assert "the literal 'nope' is not a UUID" in issue.message and "column 'ref' (uuid)" in issue.message
    assert issue.hint is not None and "ref (uuid)" in issue.hint


def test_an_insert_lacking_a_filtered_column_is_an_error_not_a_silent_keep() -> None:
    with pytest.raises(SourceError, match=r"crm.users: an INSERT row lacks column\(s\) status that the row filter"):
        table_filter().apply_event(ChangeEvent.insert(TABLE, {"id": 1, "email": "e"}, P))
