"""The Iceberg sink against a real SQL catalog (SQLite) and warehouse in a temp dir, read back with DuckDB."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pytest

from zetl.arrow import arrow_schema
from zetl.errors import SchemaError
from zetl.events import UNCHANGED, Batch, ChangeEvent, Op, RowChunk, SequencePosition, TableId
from zetl.plugin import PluginContext
from zetl.schema.changes import AddColumn, AlterColumnType, CreateTable, DropColumn, DropTable, RenameColumn
from zetl.schema.types import Field, Schema, T
from zetl.testing.conformance import SinkConformance
from zetl_sinks.iceberg import IcebergConfig, IcebergSink
from zetl_sinks.iceberg.inspect import duckdb_connection, read_rows as duck_rows
from zetl_sinks.iceberg.positions import TableMark, resume_position

pytestmark = pytest.mark.integration


def _pos(n: int) -> SequencePosition:
    return SequencePosition("stream", n)


@pytest.fixture(scope="module")
def duck() -> Any:
    return duckdb_connection()


def _make_factory(state: Path, **options: Any) -> Callable[[], IcebergSink]:
    def factory() -> IcebergSink:
        config = IcebergConfig(commit_interval=3600, **options)
        return IcebergSink(config, PluginContext(integration="it", state_dir=state))

    return factory


def _reader(factory: Callable[[], IcebergSink], duck: Any) -> Callable[[TableId], list[dict[str, Any]]]:
    def read(table: TableId) -> list[dict[str, Any]]:
        sink = factory()
        sink.open()
        try:
            location = sink._require_open().load_table(sink.table_identifier(table)).metadata_location
        finally:
            sink.close()
        return duck_rows(duck, location)

    return read


class TestIcebergConformance(SinkConformance):
    @pytest.fixture
    def sink_factory(self, tmp_path: Path) -> Callable[[], IcebergSink]:
        return _make_factory(tmp_path / "state")

    @pytest.fixture
    def read_rows(self, sink_factory: Callable[[], IcebergSink], duck: Any) -> Callable[[TableId], list[dict[str, Any]]]:
        return _reader(sink_factory, duck)


ALL_TYPES = TableId("shop", "everything")


def _all_types_schema() -> Schema:
    return Schema.of(
        ALL_TYPES,
        [
            Field("id", T.int64),
            Field("flag", T.boolean),
            Field("small", T.int16),
            Field("num", T.int32),
            Field("real", T.float32),
            Field("dbl", T.float64),
            Field("price", T.decimal(12, 2)),
            Field("huge", T.decimal(60, 10)),
            Field("name", T.string(40)),
            Field("blob", T.binary),
            Field("day", T.date),
            Field("at", T.time),
            Field("ts", T.timestamp),
            Field("tstz", T.timestamptz),
            Field("uid", T.uuid),
            Field("doc", T.json),
            Field("tags", T.list_(T.string())),
            Field("point", T.struct([Field("x", T.int32), Field("y", T.int32)])),
        ],
        ["id"],
    )


def test_every_canonical_type_round_trips_through_duckdb(tmp_path: Path, duck: Any) -> None:
    factory = _make_factory(tmp_path / "state")
    schema = _all_types_schema()
    uid = uuid.UUID("12345678-1234-5678-1234-567812345678")
    row = {
        "id": 1, "flag": True, "small": -3, "num": 7, "real": 1.5, "dbl": 2.25, "price": Decimal("1234.56"),
        "huge": Decimal("12345678901234567890123456789012345678901234.5678901234"), "name": "zoë", "blob": b"\x00\x01",
        "day": dt.date(2026, 1, 2), "at": dt.time(3, 4, 5, 6), "ts": dt.datetime(2026, 1, 2, 3, 4, 5, 600000),
        "tstz": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), "uid": uid, "doc": {"a": [1, 2], "b": None},
        "tags": ["x", "y"], "point": {"x": 1, "y": 2},
    }
    with factory() as sink:
        sink.apply(CreateTable(ALL_TYPES, schema))
        sink.write(Batch(events=(ChangeEvent.insert(ALL_TYPES, row, _pos(1)),), end_position=_pos(1)))
        assert sink.flush(force=True) == _pos(1)
        got_schema = sink.current_schema(ALL_TYPES)
        assert got_schema is not None
        assert [(f.name, str(f.type)) for f in got_schema] == [(f.name, str(f.type)) for f in schema]
        assert got_schema.primary_key == ("id",)
    (got,) = _reader(factory, duck)(ALL_TYPES)
    assert got["uid"] == uid
    assert got["price"] == Decimal("1234.56")
    assert got["huge"] == "12345678901234567890123456789012345678901234.5678901234"
    assert got["doc"] == '{"a":[1,2],"b":null}'
    assert got["tstz"] == row["tstz"]
    assert got["ts"] == row["ts"] and got["at"] == row["at"] and got["day"] == row["day"]
    assert got["tags"] == ["x", "y"] and got["point"] == {"x": 1, "y": 2}
    assert (got["flag"], got["small"], got["num"], got["real"], got["dbl"], got["name"], bytes(got["blob"])) == (True, -3, 7, 1.5, 2.25, "zoë", b"\x00\x01")


def test_snapshot_chunks_then_stream_with_collapsing_and_few_rewrites(tmp_path: Path, duck: Any) -> None:
    factory = _make_factory(tmp_path / "state")
    t = TableId("shop", "items")
    schema = Schema.of(t, [Field("id", T.int32), Field("name", T.string()), Field("uid", T.uuid), Field("doc", T.json)], ["id"])
    rows = [{"id": i, "name": f"n{i}", "uid": str(uuid.UUID(int=i)), "doc": '{"i": %d}' % i} for i in range(1, 1001)]
    chunk = pa.Table.from_pylist(rows, schema=arrow_schema(schema))
    with factory() as sink:
        sink.apply(CreateTable(t, schema))
        sink.write(Batch(chunks=(RowChunk(t, Op.READ, chunk.slice(0, 500), SequencePosition("snapshot", 500)),), end_position=SequencePosition("snapshot", 500)))
        sink.flush(force=True)
        sink.write(Batch(chunks=(RowChunk(t, Op.READ, chunk.slice(500), SequencePosition("snapshot", 1000)),), end_position=SequencePosition("snapshot", 1000)))
        sink.flush(force=True)
        events = []
        n = 0
        for i in range(1001, 1011):  # new keys: appended without touching existing files
            n += 1
            events.append(ChangeEvent.insert(t, {"id": i, "name": f"n{i}", "uid": uuid.UUID(int=i), "doc": {"i": i}}, _pos(n)))
        for version in range(3):  # collapsed to the last version
            n += 1
            events.append(ChangeEvent.update(t, {"id": 7}, {"id": 7, "name": f"seven-{version}", "uid": UNCHANGED, "doc": UNCHANGED}, _pos(n)))
        n += 1
        events.append(ChangeEvent.delete(t, {"id": 8}, _pos(n)))
        sink.write(Batch(events=tuple(events), end_position=_pos(n)))
        assert sink.flush(force=True) == _pos(n)
        table = sink._require_open().load_table(sink.table_identifier(t))
        snapshots = table.metadata.snapshots
        assert len(snapshots) == 3, "one snapshot per commit"
        last = table.current_snapshot().summary
        assert last.additional_properties["zetl.integration"] == "it"
        # Only the file holding keys 7 and 8 was rewritten; the other snapshot file stayed.
        assert int(last.additional_properties.get("deleted-data-files", last["deleted-data-files"] if "deleted-data-files" in last else 0)) == 1
    got = {r["id"]: r for r in _reader(factory, duck)(t)}
    assert len(got) == 1009
    assert 8 not in got
    assert got[7]["name"] == "seven-2" and got[7]["uid"] == uuid.UUID(int=7) and got[7]["doc"] == '{"i": 7}'
    assert got[1005]["doc"] == '{"i":1005}'


def test_changelog_mode_keeps_every_version_and_is_idempotent(tmp_path: Path, duck: Any) -> None:
    factory = _make_factory(tmp_path / "state", mode="changelog")
    t = TableId("shop", "log")
    schema = Schema.of(t, [Field("id", T.int32), Field("name", T.string())], ["id"])
    ts = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    batch = Batch(
        events=(
            ChangeEvent.insert(t, {"id": 1, "name": "a"}, _pos(1), commit_ts=ts),
            ChangeEvent.update(t, {"id": 1}, {"id": 1, "name": "b"}, _pos(2), commit_ts=ts),
            ChangeEvent.delete(t, {"id": 1, "name": "b"}, _pos(3), commit_ts=ts),
        ),
        end_position=_pos(3),
    )
    with factory() as sink:
        sink.apply(CreateTable(t, schema))
        got_schema = sink.current_schema(t)
        assert got_schema is not None and got_schema.names == ("id", "name")
        sink.write(batch)
        sink.flush(force=True)
    with factory() as sink:  # replay after a crash: nothing is appended twice
        assert sink.stored_position() == _pos(3)
        sink.write(batch)
        sink.flush(force=True)
    got = _reader(factory, duck)(t)
    assert [(r["_op"], r["name"]) for r in sorted(got, key=lambda r: r["_position"])] == [("c", "a"), ("u", "b"), ("d", "b")]
    assert got[0]["_commit_ts"] == ts


def test_schema_changes_add_widen_and_refusals(tmp_path: Path, duck: Any) -> None:
    factory = _make_factory(tmp_path / "state")
    t = TableId("shop", "evolving")
    schema = Schema.of(t, [Field("id", T.int32), Field("qty", T.int32), Field("ratio", T.float32), Field("price", T.decimal(10, 2))], ["id"])
    with factory() as sink:
        sink.apply(CreateTable(t, schema))
        sink.write(Batch(events=(ChangeEvent.insert(t, {"id": 1, "qty": 1, "ratio": 0.5, "price": Decimal("1.25")}, _pos(1)),), end_position=_pos(1)))
        widen = [AlterColumnType(t, "qty", T.int64, T.int32), AlterColumnType(t, "ratio", T.float64, T.float32), AlterColumnType(t, "price", T.decimal(20, 2), T.decimal(10, 2))]
        add = AddColumn(t, Field("note", T.json), "id")
        for change in [*widen, add]:
            assert sink.can_apply(change), change
            sink.apply(change)
        refused = [
            AlterColumnType(t, "qty", T.int32, T.int64),
            AlterColumnType(t, "price", T.decimal(20, 4), T.decimal(20, 2)),
            AlterColumnType(t, "ratio", T.string(), T.float64),
            DropColumn(t, "id"),
            RenameColumn(t, "qty", "price"),
        ]
        for change in refused:
            assert not sink.can_apply(change), change
        with pytest.raises(SchemaError) as info:
            sink.apply(refused[1])
        assert info.value.column == "price" and "scale" in info.value.message and "shop" in info.value.message
        with pytest.raises(SchemaError) as info:
            sink.apply(refused[3])
        assert info.value.column == "id" and "primary key" in info.value.message
        got_schema = sink.current_schema(t)
        assert got_schema is not None
        assert [(f.name, str(f.type)) for f in got_schema] == [("id", "int32"), ("note", "json"), ("qty", "int64"), ("ratio", "float64"), ("price", "decimal(20,2)")]
        sink.write(Batch(events=(ChangeEvent.insert(t, {"id": 2, "note": [1], "qty": 2**40, "ratio": 0.25, "price": Decimal("123456789012.34")}, _pos(2)),), end_position=_pos(2)))
        assert sink.flush(force=True) == _pos(2)
    got = {r["id"]: r for r in _reader(factory, duck)(t)}
    assert got[1] == {"id": 1, "note": None, "qty": 1, "ratio": 0.5, "price": Decimal("1.25")}
    assert got[2] == {"id": 2, "note": "[1]", "qty": 2**40, "ratio": 0.25, "price": Decimal("123456789012.34")}


def test_partitioned_table_and_name_template(tmp_path: Path, duck: Any) -> None:
    factory = _make_factory(
        tmp_path / "state",
        table_name="{integration}_{table}",
        tables={"shop.events": {"partition_by": ["day(at)", "bucket[4](id)"], "properties": {"write.parquet.compression-codec": "zstd"}}},
    )
    t = TableId("shop", "events")
    schema = Schema.of(t, [Field("id", T.int64), Field("at", T.timestamptz)], ["id"])
    base = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)
    with factory() as sink:
        sink.apply(CreateTable(t, schema))
        assert sink.table_identifier(t) == ("zetl", "it_events")
        sink.write(Batch(events=tuple(ChangeEvent.insert(t, {"id": i, "at": base + dt.timedelta(hours=10 * i)}, _pos(i)) for i in range(1, 11)), end_position=_pos(10)))
        sink.flush(force=True)
        sink.write(Batch(events=(ChangeEvent.delete(t, {"id": 3}, _pos(11)),), end_position=_pos(11)))
        sink.flush(force=True)
        table = sink._require_open().load_table(sink.table_identifier(t))
        assert [f.name for f in table.spec().fields] == ["at_day", "id_bucket"]
        assert table.properties["write.parquet.compression-codec"] == "zstd"
    got = sorted(r["id"] for r in _reader(factory, duck)(t))
    assert got == [1, 2, 4, 5, 6, 7, 8, 9, 10]


def test_table_without_primary_key_is_refused_in_current_mode(tmp_path: Path) -> None:
    t = TableId("shop", "nokey")
    schema = Schema.of(t, [Field("a", T.int32)])
    with _make_factory(tmp_path / "state")() as sink:
        assert not sink.can_apply(CreateTable(t, schema))
        with pytest.raises(SchemaError, match="no primary key"):
            sink.apply(CreateTable(t, schema))


def test_crash_between_table_commits_resumes_without_loss_or_duplicate(tmp_path: Path, duck: Any) -> None:
    """A commit round writes table a then table b; the process dies after a: the stored position is
    b's previous one, and the replay leaves a untouched and completes b."""
    factory = _make_factory(tmp_path / "state")
    a, b = TableId("s", "a"), TableId("s", "b")
    schema_a = Schema.of(a, [Field("id", T.int32), Field("v", T.string())], ["id"])
    schema_b = Schema.of(b, [Field("id", T.int32), Field("v", T.string())], ["id"])
    first = Batch(events=(ChangeEvent.insert(a, {"id": 1, "v": "a1"}, _pos(1)), ChangeEvent.insert(b, {"id": 1, "v": "b1"}, _pos(2))), end_position=_pos(2))
    second = Batch(events=(ChangeEvent.update(a, {"id": 1}, {"id": 1, "v": "a2"}, _pos(3)), ChangeEvent.insert(b, {"id": 2, "v": "b2"}, _pos(4))), end_position=_pos(4))
    with factory() as sink:
        sink.apply(CreateTable(a, schema_a))
        sink.apply(CreateTable(b, schema_b))
        sink.write(first)
        sink.flush(force=True)
        sink.write(second)
        # Simulate the crash: commit table a only, as the commit round would before dying.
        buffer = sink._buffers[a]
        sink._commit_table(a, buffer, _pos(4), [sink._ident_text(a), sink._ident_text(b)])
    with factory() as sink:
        assert sink.stored_position() == _pos(2)
        sink.write(second)  # the runner replays from _pos(2)
        assert sink.flush(force=True) == _pos(4)
        assert sink.stored_position() == _pos(4)
    read = _reader(factory, duck)
    assert sorted((r["id"], r["v"]) for r in read(a)) == [(1, "a2")]
    assert sorted((r["id"], r["v"]) for r in read(b)) == [(1, "b1"), (2, "b2")]


def test_resume_position_rule() -> None:
    p = _pos
    assert resume_position({}) is None
    assert resume_position({"a": TableMark("a", p(5), ("a", "b"), 1), "b": TableMark("b", p(5), ("a", "b"), 1)}) == p(5)
    assert resume_position({"a": TableMark("a", p(5), ("a", "b"), 1), "b": TableMark("b", p(2), ("b",), 1)}) == p(2)
    assert resume_position({"a": TableMark("a", p(5), ("a", "b"), 1), "b": TableMark("b", None, (), None)}) is None
    assert resume_position({"a": TableMark("a", p(5), ("a",), 1), "b": TableMark("b", p(2), ("b",), 1)}) == p(5)


def test_composite_primary_key(tmp_path: Path, duck: Any) -> None:
    factory = _make_factory(tmp_path / "state")
    t = TableId("shop", "lines")
    schema = Schema.of(t, [Field("order_id", T.int64), Field("line", T.int32), Field("sku", T.string())], ["order_id", "line"])
    rows = [{"order_id": o, "line": l, "sku": f"s{o}-{l}"} for o in range(1, 301) for l in (1, 2)]
    with factory() as sink:
        sink.apply(CreateTable(t, schema))
        chunk = pa.Table.from_pylist(rows, schema=arrow_schema(schema))
        sink.write(Batch(chunks=(RowChunk(t, Op.READ, chunk, SequencePosition("snapshot", 1)),), end_position=SequencePosition("snapshot", 1)))
        sink.flush(force=True)
        sink.write(
            Batch(
                events=(
                    ChangeEvent.update(t, {"order_id": 5, "line": 2}, {"order_id": 5, "line": 2, "sku": "changed"}, _pos(1)),
                    ChangeEvent.delete(t, {"order_id": 7, "line": 1}, _pos(2)),
                    ChangeEvent.update(t, {"order_id": 9, "line": 1}, {"order_id": 9, "line": 3, "sku": "moved"}, _pos(3)),
                ),
                end_position=_pos(3),
            )
        )
        sink.flush(force=True)
    got = {(r["order_id"], r["line"]): r["sku"] for r in _reader(factory, duck)(t)}
    assert len(got) == 599
    assert got[(5, 2)] == "changed" and (7, 1) not in got and (9, 1) not in got and got[(9, 3)] == "moved" and got[(5, 1)] == "s5-1"


def test_name_clash_and_mode_switch_are_refused(tmp_path: Path) -> None:
    one, other = TableId("a_b", "c"), TableId("a", "b_c")
    schema = Schema.of(one, [Field("id", T.int32)], ["id"])
    with _make_factory(tmp_path / "state")() as sink:
        sink.apply(CreateTable(one, schema))
        with pytest.raises(SchemaError, match="maps to the same name"):
            sink.apply(CreateTable(other, Schema.of(other, [Field("id", T.int32)], ["id"])))
    with _make_factory(tmp_path / "state", mode="changelog")() as sink:
        with pytest.raises(SchemaError, match="created in mode 'current'"):
            sink.current_schema(one)


def test_null_in_a_required_column_is_refused_with_its_name(tmp_path: Path) -> None:
    from zetl.errors import SinkError

    t = TableId("shop", "strict")
    schema = Schema.of(t, [Field("id", T.int32), Field("name", T.string(), nullable=False)], ["id"])
    with _make_factory(tmp_path / "state")() as sink:
        sink.apply(CreateTable(t, schema))
        with pytest.raises(SinkError, match="'name'.*required"):
            sink.write(Batch(events=(ChangeEvent.insert(t, {"id": 1, "name": None}, _pos(1)),), end_position=_pos(1)))
            sink.flush(force=True)


KEY_TYPES = {
    "int16": (T.int16, lambda i: i),
    "string": (T.string(), lambda i: f"k{i:04d}"),
    "decimal": (T.decimal(10, 2), lambda i: Decimal(i) / 4),
    "date": (T.date, lambda i: dt.date(2020, 1, 1) + dt.timedelta(days=i)),
    "timestamptz": (T.timestamptz, lambda i: dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=i)),
    "uuid": (T.uuid, lambda i: uuid.UUID(int=i)),
    "binary": (T.binary, lambda i: b"k%d" % i),
}


@pytest.mark.parametrize("key_type", sorted(KEY_TYPES))
def test_updates_find_their_rows_for_every_key_type(tmp_path: Path, duck: Any, key_type: str) -> None:
    """Few keys (IN filter) and many keys (min/max range filter) per commit, for each key type."""
    dtype, key = KEY_TYPES[key_type]
    t = TableId("s", f"keys_{key_type}")
    factory = _make_factory(tmp_path / "state")
    with factory() as sink:
        sink.apply(CreateTable(t, Schema.of(t, [Field("k", dtype), Field("v", T.int32)], ["k"])))
        n = 300
        sink.write(Batch(events=tuple(ChangeEvent.insert(t, {"k": key(i), "v": 0}, _pos(i + 1)) for i in range(n)), end_position=_pos(n)))
        sink.flush(force=True)
        for count, version, first in ((5, 1, 1000), (n, 2, 2000)):
            events = tuple(ChangeEvent.update(t, {"k": key(i)}, {"k": key(i), "v": version}, _pos(first + i)) for i in range(count))
            sink.write(Batch(events=events, end_position=events[-1].position))
            sink.flush(force=True)
        sink.write(Batch(events=(ChangeEvent.delete(t, {"k": key(7)}, _pos(5000)),), end_position=_pos(5000)))
        sink.flush(force=True)
    rows = _reader(factory, duck)(t)
    assert len(rows) == n - 1 and {r["v"] for r in rows} == {2}


def test_catalog_errors_are_clear_and_keep_secrets_out(tmp_path: Path) -> None:
    from zetl.errors import SinkError

    wrong = IcebergSink(IcebergConfig(catalog={"type": "no-such-catalog"}), PluginContext(integration="it", state_dir=tmp_path))
    with pytest.raises(SinkError) as info:
        wrong.open()
    assert not info.value.retryable and "no-such-catalog" in info.value.message and "'catalog' settings" in info.value.message
    unreachable = IcebergSink(
        IcebergConfig(catalog={"type": "sql", "uri": "postgresql+psycopg://zetl:hunter2secret@127.0.0.1:1/cat", "warehouse": tmp_path.as_uri()}),
        PluginContext(integration="it", state_dir=tmp_path),
    )
    with pytest.raises(SinkError) as info:
        unreachable.open()
    assert "hunter2secret" not in info.value.message and "cannot open the Iceberg catalog" in info.value.message


def test_drop_and_rename_columns(tmp_path: Path, duck: Any) -> None:
    factory = _make_factory(tmp_path / "state", tables={"shop.*": {"partition_by": ["region"]}})
    t = TableId("shop", "people")
    schema = Schema.of(t, [Field("id", T.int32), Field("region", T.string()), Field("nick", T.string()), Field("doc", T.json), Field("age", T.int16)], ["id"])
    with factory() as sink:
        sink.apply(CreateTable(t, schema))
        sink.write(Batch(events=(ChangeEvent.insert(t, {"id": 1, "region": "eu", "nick": "a", "doc": {"x": 1}, "age": 30}, _pos(1)),), end_position=_pos(1)))
        sink.flush(force=True)
        assert not sink.can_apply(DropColumn(t, "region")), "a partition source column cannot be dropped"
        changes = [DropColumn(t, "nick"), RenameColumn(t, "doc", "details"), RenameColumn(t, "id", "person_id")]
        for change in changes:
            assert sink.can_apply(change), change
            sink.apply(change)
            sink.apply(change)  # idempotent
        got_schema = sink.current_schema(t)
        assert got_schema is not None
        assert [(f.name, str(f.type)) for f in got_schema] == [("person_id", "int32"), ("region", "string"), ("details", "json"), ("age", "int16")]
        assert got_schema.primary_key == ("person_id",)
        sink.write(Batch(events=(ChangeEvent.insert(t, {"person_id": 2, "region": "us", "details": {"y": 2}, "age": 40}, _pos(2)),), end_position=_pos(2)))
        sink.write(Batch(events=(ChangeEvent.update(t, {"person_id": 1}, {"person_id": 1, "region": "eu", "details": {"x": 9}, "age": 31}, _pos(3)),), end_position=_pos(3)))
        sink.flush(force=True)
    got = {r["person_id"]: r for r in _reader(factory, duck)(t)}
    assert got == {1: {"person_id": 1, "region": "eu", "details": '{"x":9}', "age": 31}, 2: {"person_id": 2, "region": "us", "details": '{"y":2}', "age": 40}}


def test_dotted_column_names_from_flattening(tmp_path: Path, duck: Any) -> None:
    # Flattened json keys are named like `doc.city`: one top-level column, not a nested path.
    factory = _make_factory(tmp_path / "state")
    t = TableId("shop", "flat")
    with factory() as sink:
        sink.apply(CreateTable(t, Schema.of(t, [Field("id", T.int64), Field("doc.city", T.string())], ["id"])))
        sink.write(Batch(events=(ChangeEvent.insert(t, {"id": 1, "doc.city": "Lyon"}, _pos(1)),), end_position=_pos(1)))
        for change in (AddColumn(t, Field("doc.zip", T.int32), "doc.city"), AlterColumnType(t, "doc.zip", T.int64, T.int32), RenameColumn(t, "doc.zip", "doc.postcode")):
            assert sink.can_apply(change), change
            sink.apply(change)
            sink.apply(change)  # idempotent
        got_schema = sink.current_schema(t)
        assert got_schema is not None and [(f.name, str(f.type)) for f in got_schema] == [("id", "int64"), ("doc.city", "string"), ("doc.postcode", "int64")]
        sink.write(Batch(events=(ChangeEvent.insert(t, {"id": 2, "doc.city": "Oslo", "doc.postcode": 150}, _pos(2)),), end_position=_pos(2)))
        assert sink.flush(force=True) == _pos(2)
    got = {r["id"]: r for r in _reader(factory, duck)(t)}
    assert got == {1: {"id": 1, "doc.city": "Lyon", "doc.postcode": None}, 2: {"id": 2, "doc.city": "Oslo", "doc.postcode": 150}}


def test_drop_table_removes_it_from_the_catalog_and_keeps_its_files(tmp_path: Path, duck: Any) -> None:
    factory = _make_factory(tmp_path / "state")
    kept, gone = TableId("shop", "kept"), TableId("shop", "gone")
    with factory() as sink:
        for t in (kept, gone):
            sink.apply(CreateTable(t, Schema.of(t, [Field("id", T.int32), Field("v", T.string())], ["id"])))
        sink.write(Batch(events=(ChangeEvent.insert(kept, {"id": 1, "v": "a"}, _pos(1)), ChangeEvent.insert(gone, {"id": 1, "v": "b"}, _pos(2))), end_position=_pos(2)))
        sink.flush(force=True)
        location = sink._require_open().load_table(sink.table_identifier(gone)).metadata_location
        # rows buffered for the table when the drop comes are committed first, then the table goes
        sink.write(Batch(events=(ChangeEvent.insert(gone, {"id": 2, "v": "c"}, _pos(3)),), end_position=_pos(3)))
        assert sink.can_apply(DropTable(gone))
        sink.apply(DropTable(gone))
        sink.apply(DropTable(gone))  # idempotent: a replay after a crash drops nothing more
        assert sink.current_schema(gone) is None and sink.current_schema(kept) is not None
        assert sink.managed_tables() == [kept]
    assert _reader(factory, duck)(kept) == [{"id": 1, "v": "a"}]
    # the files stay: the last metadata file still reads back (what register_table would restore)
    assert sorted(r["id"] for r in duck_rows(duck, location)) == [1]
