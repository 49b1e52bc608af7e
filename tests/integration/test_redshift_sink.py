"""The Redshift sink against a Redshift-compatible target: private Postgres 15 behind the
wire-protocol proxy with the SQL shim (see tests/redshift_target/README.md), S3 staging on moto."""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from decimal import Decimal
from typing import Any, Callable

import pytest
from redshift_target.fixtures import *  # noqa: F403  (fixtures: moto_s3, redshift_proxy, redshift_target)
from redshift_target.target import RedshiftTarget

from zetl.errors import SchemaError, SinkError
from zetl.events import UNCHANGED, Batch, ChangeEvent, SequencePosition, TableId
from zetl.plugin import PluginContext
from zetl.schema.changes import AddColumn, AlterColumnType, CreateTable, DropColumn, RenameColumn
from zetl.schema.types import Field, Schema, T
from zetl.testing.conformance import SinkConformance
from zetl_sinks.redshift import RedshiftConfig, RedshiftSink

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def _pos(n: int) -> SequencePosition:
    return SequencePosition("stream", n)


def make_factory(target: RedshiftTarget, integration: str = "it", **overrides: Any) -> Callable[[], RedshiftSink]:
    def factory() -> RedshiftSink:
        config = RedshiftConfig.model_validate(target.sink_config(**overrides))
        return RedshiftSink(config, PluginContext(integration=integration))

    return factory


def make_reader(target: RedshiftTarget, schema: str = "public") -> Callable[[TableId], list[dict[str, Any]]]:
    """Rows of a table read straight from Postgres, keyed by source column names."""

    def read(table: TableId) -> list[dict[str, Any]]:
        meta = target.query(f'SELECT layout FROM "{schema}"._zetl_tables WHERE target_table = %s', (table.name.lower(),))
        names = {c["target"]: c["source"] for c in json.loads(meta[0]["layout"])["columns"]} if meta else {}
        rows = target.query(f'SELECT * FROM "{schema}"."{table.name.lower()}"')
        return [{names.get(k, k): v for k, v in r.items()} for r in rows]

    return read


class TestRedshiftConformance(SinkConformance):
    @pytest.fixture
    def sink_factory(self, redshift_target: RedshiftTarget) -> Callable[[], RedshiftSink]:
        return make_factory(redshift_target)

    @pytest.fixture
    def read_rows(self, redshift_target: RedshiftTarget) -> Callable[[TableId], list[dict[str, Any]]]:
        return make_reader(redshift_target)


class TestRedshiftConformanceS3Copy(SinkConformance):
    """The same suite with every batch staged in S3 and loaded with (emulated) COPY."""

    @pytest.fixture
    def sink_factory(self, redshift_target: RedshiftTarget) -> Callable[[], RedshiftSink]:
        return make_factory(redshift_target, load="s3_copy")

    @pytest.fixture
    def read_rows(self, redshift_target: RedshiftTarget) -> Callable[[TableId], list[dict[str, Any]]]:
        return make_reader(redshift_target)


ALL_TYPES = TableId("shop", "everything")


def _all_types_schema() -> Schema:
    return Schema.of(
        ALL_TYPES,
        [
            Field("id", T.int64, nullable=False),
            Field("flag", T.boolean),
            Field("small", T.int16),
            Field("medium", T.int32),
            Field("real32", T.float32),
            Field("real64", T.float64),
            Field("price", T.decimal(12, 2)),
            Field("huge", T.decimal(50, 5)),
            Field("label", T.string(20)),
            Field("blob", T.binary),
            Field("day", T.date),
            Field("clock", T.time),
            Field("local_ts", T.timestamp),
            Field("utc_ts", T.timestamptz),
            Field("ident", T.uuid),
            Field("doc", T.json),
            Field("tags", T.list_(T.string())),
            Field("address", T.struct([Field("city", T.string()), Field("zip", T.string())])),
        ],
        ["id"],
    )


def _all_types_row(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "flag": i % 2 == 0,
        "small": -i,
        "medium": 70000 + i,
        "real32": 1.5,
        "real64": 2.25 + i,
        "price": Decimal("1234.56"),
        "huge": Decimal("123456789012345678901234567890123456789012.12345"),
        "label": f"label {i} é",
        "blob": bytes([0, 1, 2, 255, i % 256]),
        "day": dt.date(2026, 1, 2),
        "clock": dt.time(13, 14, 15, 123456),
        "local_ts": dt.datetime(2026, 3, 4, 5, 6, 7, 890123),
        "utc_ts": dt.datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=dt.timezone.utc),
        "ident": uuid.UUID(int=i),
        "doc": {"customer": {"name": f"ann {i}", "vip": True}, "items": [{"sku": "a", "qty": i}], "note": None},
        "tags": ["x", "y"],
        "address": {"city": "Paris", "zip": "75001"},
    }


@pytest.mark.parametrize("load", ["insert", "s3_copy"])
def test_every_type_round_trips_and_super_is_queryable(redshift_target: RedshiftTarget, load: str) -> None:
    factory = make_factory(redshift_target, load=load)
    rows = [_all_types_row(i) for i in range(1, 4)]
    redshift_target.proxy.statements.clear()
    with factory() as sink:
        sink.apply(CreateTable(ALL_TYPES, _all_types_schema()))
        assert sink.write(Batch(events=tuple(ChangeEvent.insert(ALL_TYPES, r, _pos(i)) for i, r in enumerate(rows, 1)), end_position=_pos(3))) == _pos(3)
    copies = [s for s in redshift_target.proxy.statements if s.startswith("COPY")]
    assert bool(copies) == (load == "s3_copy"), copies
    got = {r["id"]: r for r in make_reader(redshift_target)(ALL_TYPES)}
    for r in rows:
        g = got[r["id"]]
        assert g["blob"] == r["blob"] and g["ident"] == str(r["ident"]) and g["huge"] == str(r["huge"])
        for k in ("flag", "small", "medium", "real32", "real64", "price", "label", "day", "clock", "local_ts", "utc_ts", "doc", "tags", "address"):
            assert g[k] == r[k], k
    # SUPER is queryable by key with Redshift's functions (the shim implements the same signatures).
    by_key = redshift_target.query(
        "SELECT id, json_extract_path_text(json_serialize(doc), 'customer', 'name') AS name, "
        "json_extract_path_text(json_serialize(address), 'city') AS city FROM public.everything ORDER BY id"
    )
    assert [(r["id"], r["name"], r["city"]) for r in by_key] == [(i, f"ann {i}", "Paris") for i in (1, 2, 3)]
    assert redshift_target.query("SELECT count(*) AS n FROM public.everything WHERE (doc -> 'customer' ->> 'vip')::boolean")[0]["n"] == 3
    if load == "s3_copy":
        import boto3

        s3 = boto3.client("s3", endpoint_url=redshift_target.s3_endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
        left = s3.list_objects_v2(Bucket=redshift_target.bucket, Prefix=redshift_target.s3_prefix).get("KeyCount", 0)
        assert left == 0, "staged files must be deleted once the batch is committed"


def test_auto_load_picks_copy_for_large_batches(redshift_target: RedshiftTarget) -> None:
    t = TableId("shop", "auto_items")
    schema = Schema.of(t, [Field("id", T.int64), Field("name", T.string())], ["id"])
    factory = make_factory(redshift_target, load="auto", copy_min_rows=50)
    with factory() as sink:
        sink.apply(CreateTable(t, schema))
        sink.write(Batch(events=tuple(ChangeEvent.insert(t, {"id": i, "name": f"n{i}"}, _pos(i)) for i in range(1, 11)), end_position=_pos(10)))
        assert sink.status()["copy_batches"] == 0
        sink.write(Batch(events=tuple(ChangeEvent.insert(t, {"id": i, "name": f"n{i}"}, _pos(i)) for i in range(11, 211)), end_position=_pos(210)))
        assert sink.status()["copy_batches"] == 1
    assert redshift_target.query("SELECT count(*) AS n, count(DISTINCT id) AS d FROM public.auto_items")[0] == {"n": 210, "d": 210}


def test_dedupe_key_changes_and_unchanged_chain(redshift_target: RedshiftTarget) -> None:
    t = TableId("shop", "orders")
    schema = Schema.of(t, [Field("id", T.int64), Field("note", T.string()), Field("doc", T.json), Field("qty", T.int32)], ["id"])
    factory = make_factory(redshift_target)
    with factory() as sink:
        sink.apply(CreateTable(t, schema))
        sink.write(Batch(events=(ChangeEvent.insert(t, {"id": 1, "note": "long toast", "doc": {"a": 1}, "qty": 1}, _pos(1)),), end_position=_pos(1)))
        sink.write(
            Batch(
                events=(
                    # unchanged twice in a row: both keep the target's values
                    ChangeEvent.update(t, {"id": 1}, {"id": 1, "note": UNCHANGED, "doc": UNCHANGED, "qty": 2}, _pos(2)),
                    ChangeEvent.update(t, {"id": 1}, {"id": 1, "note": UNCHANGED, "doc": {"a": 2}, "qty": 3}, _pos(3)),
                    ChangeEvent.insert(t, {"id": 2, "note": "two", "doc": None, "qty": 1}, _pos(4)),
                    ChangeEvent.update(t, {"id": 2}, {"id": 2, "note": UNCHANGED, "doc": [1, 2], "qty": 5}, _pos(5)),
                    # primary key change: 2 -> 3, unchanged value carried over from the batch
                    ChangeEvent.update(t, {"id": 2}, {"id": 3, "note": UNCHANGED, "doc": [1, 2], "qty": 6}, _pos(6)),
                ),
                end_position=_pos(6),
            )
        )
    rows = {r["id"]: r for r in make_reader(redshift_target)(t)}
    assert rows == {
        1: {"id": 1, "note": "long toast", "doc": {"a": 2}, "qty": 3},
        3: {"id": 3, "note": "two", "doc": [1, 2], "qty": 6},
    }


HOSTILE_NAMES = [
    'quo"te',
    "semi;colon); DROP TABLE x; --",
    "select",
    "Ünïcødé 表",
    "percent %s %(x)s",
    "x" * 200,
    "x" * 199 + "y",
]


def test_hostile_identifiers_create_and_fill_tables_safely(redshift_target: RedshiftTarget, caplog: pytest.LogCaptureFixture) -> None:
    t = TableId("we;ird", 'Ta"ble; DROP SCHEMA public CASCADE; --' + "é" * 40)
    fields = [Field("id", T.int64)] + [Field(n, T.string()) for n in HOSTILE_NAMES]
    schema = Schema.of(t, fields, ["id"])
    factory = make_factory(redshift_target, schema="Target Schema;")
    row = {"id": 1, **{n: f"value of {n[:20]}'; --" for n in HOSTILE_NAMES}}
    with caplog.at_level(logging.WARNING):
        with factory() as sink:
            sink.apply(CreateTable(t, schema))
            sink.write(Batch(events=(ChangeEvent.insert(t, row, _pos(1)),), end_position=_pos(1)))
            sink.write(Batch(events=(ChangeEvent.update(t, {"id": 1}, {**row, "select": "updated", 'quo"te': UNCHANGED}, _pos(2)),), end_position=_pos(2)))
            got_schema = sink.current_schema(t)
            target_name = sink.target_table_name(t)
    assert got_schema is not None and list(got_schema.names) == ["id", *HOSTILE_NAMES]
    with factory() as restarted:  # a new process finds the table and its source names again
        assert restarted.current_schema(t) == got_schema and restarted.stored_position() == _pos(2)
    assert any("longer than the target's 63-byte limit" in r.getMessage() for r in caplog.records)
    meta = redshift_target.query('SELECT layout FROM "target schema;"._zetl_tables')  # folded like every identifier
    columns = json.loads(meta[0]["layout"])["columns"]
    targets = [c["target"] for c in columns]
    assert len(set(targets)) == len(targets) and all(len(n.encode()) <= 63 for n in targets)
    long_a, long_b = targets[-2], targets[-1]
    assert long_a != long_b and long_a[:50] == long_b[:50], "names sharing a long prefix stay distinct via the hash suffix"
    stored = redshift_target.query(f'SELECT * FROM "target schema;"."{target_name.replace(chr(34), chr(34) * 2)}"')
    assert len(stored) == 1
    by_source = {c["source"]: stored[0][c["target"]] for c in columns}
    assert by_source["select"] == "updated" and by_source['quo"te'] == row['quo"te'] and by_source["x" * 200] == row["x" * 200]
    assert redshift_target.query("SELECT count(*) AS n FROM information_schema.schemata WHERE schema_name = 'public'")[0]["n"] == 1


def test_history_mode_keeps_every_version(redshift_target: RedshiftTarget) -> None:
    t = TableId("shop", "accounts")
    schema = Schema.of(t, [Field("id", T.int64), Field("owner", T.string()), Field("balance", T.decimal(10, 2))], ["id"])
    factory = make_factory(redshift_target, history_mode=True)
    ts = [dt.datetime(2026, 5, 1, 12, 0, s, tzinfo=dt.timezone.utc) for s in range(10)]
    b1 = Batch(
        events=(
            ChangeEvent.insert(t, {"id": 1, "owner": "ann", "balance": Decimal("10.00")}, _pos(1), commit_ts=ts[1]),
            ChangeEvent.insert(t, {"id": 2, "owner": "bob", "balance": Decimal("20.00")}, _pos(2), commit_ts=ts[2]),
        ),
        end_position=_pos(2),
    )
    b2 = Batch(
        events=(
            ChangeEvent.update(t, {"id": 1}, {"id": 1, "owner": UNCHANGED, "balance": Decimal("11.00")}, _pos(3), commit_ts=ts[3]),
            ChangeEvent.update(t, {"id": 1}, {"id": 1, "owner": "ann b", "balance": Decimal("12.00")}, _pos(4), commit_ts=ts[4]),
            ChangeEvent.delete(t, {"id": 2}, _pos(5), commit_ts=ts[5]),
        ),
        end_position=_pos(5),
    )
    with factory() as sink:
        sink.apply(CreateTable(t, schema))
        sink.write(b1)
        sink.write(b2)
        sink.write(b2)  # delivered again after a crash: already stored with the checkpoint, skipped
    with factory() as sink:
        assert sink.stored_position() == _pos(5)
        sink.write(b2)
    rows = redshift_target.query('SELECT id, owner, balance, _op, _position, _valid_from, _valid_to FROM public.accounts ORDER BY id, _valid_from, _op')
    summary = [(r["id"], r["owner"], r["balance"], r["_op"], r["_valid_from"], r["_valid_to"]) for r in rows]
    assert summary == [
        (1, "ann", Decimal("10.00"), "c", ts[1], ts[3]),
        (1, "ann", Decimal("11.00"), "u", ts[3], ts[4]),
        (1, "ann b", Decimal("12.00"), "u", ts[4], None),
        (2, "bob", Decimal("20.00"), "c", ts[2], ts[5]),
        (2, None, None, "d", ts[5], ts[5]),
    ]
    assert json.loads(rows[2]["_position"]) == {"kind": "sequence", "phase": "stream", "offset": 4}
    current = redshift_target.query("SELECT id, owner FROM public.accounts WHERE _valid_to IS NULL")
    assert current == [{"id": 1, "owner": "ann b"}]


def test_schema_changes_add_widen_swap_rename_drop(redshift_target: RedshiftTarget) -> None:
    t = TableId("shop", "evolving")
    schema = Schema.of(t, [Field("id", T.int32), Field("code", T.string(5)), Field("qty", T.int32), Field("old", T.string())], ["id"])
    factory = make_factory(redshift_target)
    with factory() as sink:
        sink.apply(CreateTable(t, schema))
        sink.write(Batch(events=(ChangeEvent.insert(t, {"id": 1, "code": "abc", "qty": 7, "old": "o"}, _pos(1)),), end_position=_pos(1)))
        widen_code = AlterColumnType(t, "code", T.string(50), T.string(5))
        widen_qty = AlterColumnType(t, "qty", T.int64, T.int32)
        narrow = AlterColumnType(t, "qty", T.int16, T.int64)
        to_json = AlterColumnType(t, "code", T.json, T.string(50))
        for change in (AddColumn(t, Field("extra", T.json)), widen_code, widen_qty, RenameColumn(t, "old", "renamed"), DropColumn(t, "extra")):
            assert sink.can_apply(change), change
            sink.apply(change)
            sink.apply(change)  # idempotent
        assert not sink.can_apply(narrow) and not sink.can_apply(to_json)
        got = sink.current_schema(t)
        assert got is not None
        assert [(f.name, f.type) for f in got.fields] == [("id", T.int32), ("code", T.string(50)), ("renamed", T.string()), ("qty", T.int64)]
        sink.write(Batch(events=(ChangeEvent.insert(t, {"id": 2, "code": "x" * 50, "qty": 2**40, "renamed": "r"}, _pos(2)),), end_position=_pos(2)))
        with pytest.raises(SchemaError, match="without losing values"):
            sink.apply(narrow)
    catalog = redshift_target.query("SELECT column_name, data_type, character_maximum_length FROM information_schema.columns WHERE table_name = 'evolving' ORDER BY ordinal_position")
    assert [(c["column_name"], c["data_type"], c["character_maximum_length"]) for c in catalog] == [
        ("id", "integer", None), ("code", "character varying", 200), ("renamed", "character varying", 65535), ("qty", "bigint", None)
    ]
    rows = {r["id"]: r for r in make_reader(redshift_target)(t)}
    assert rows[1] == {"id": 1, "code": "abc", "renamed": "o", "qty": 7}
    assert rows[2]["qty"] == 2**40
    varchar_alter = [s for s in redshift_target.proxy.statements if "ALTER COLUMN" in s and "TYPE VARCHAR(200)" in s]
    assert varchar_alter, "VARCHAR widening uses ALTER COLUMN TYPE"


def test_rejected_value_names_table_column_and_is_fatal(redshift_target: RedshiftTarget) -> None:
    t = TableId("shop", "strict")
    schema = Schema.of(t, [Field("id", T.int64), Field("code", T.string(2)), Field("amount", T.decimal(5, 2))], ["id"])
    factory = make_factory(redshift_target)
    with factory() as sink:
        sink.apply(CreateTable(t, schema))
        with pytest.raises(SinkError) as info:
            sink.write(Batch(events=(ChangeEvent.insert(t, {"id": 1, "code": "abcdefghijk", "amount": Decimal("1")}, _pos(1)),), end_position=_pos(1)))
        assert info.value.retryable is False
        assert "shop.strict" in info.value.message and "SQLSTATE 22001" in info.value.message
        assert "rejected value 'abcdefghijk' in column code (Redshift column code, VARCHAR(8)) of the row with id=1" in info.value.message
        with pytest.raises(SinkError) as info:
            sink.write(Batch(events=(ChangeEvent.insert(t, {"id": 1, "code": "ab", "amount": Decimal("NaN")}, _pos(1)),), end_position=_pos(1)))
        assert info.value.retryable is False and "shop.strict.amount" in info.value.message and "NaN" in info.value.message
        # Nothing of a failed batch is committed, not even its checkpoint.
        assert sink.stored_position() is None
        sink.write(Batch(events=(ChangeEvent.insert(t, {"id": 1, "code": "ab", "amount": Decimal("1.5")}, _pos(1)),), end_position=_pos(1)))
    assert make_reader(redshift_target)(t) == [{"id": 1, "code": "ab", "amount": Decimal("1.50")}]


def test_oversize_strings_fail_or_truncate(redshift_target: RedshiftTarget) -> None:
    t = TableId("shop", "texts")
    schema = Schema.of(t, [Field("id", T.int64), Field("body", T.string())], ["id"])
    big = "é" * 40000  # 80000 bytes
    with make_factory(redshift_target)() as sink:
        sink.apply(CreateTable(t, schema))
        with pytest.raises(SinkError, match=r"shop\.texts\.body.*80000 bytes.*oversize_strings: truncate"):
            sink.write(Batch(events=(ChangeEvent.insert(t, {"id": 1, "body": big}, _pos(1)),), end_position=_pos(1)))
    with make_factory(redshift_target, oversize_strings="truncate")() as sink:
        sink.write(Batch(events=(ChangeEvent.insert(t, {"id": 1, "body": big}, _pos(1)),), end_position=_pos(1)))
    stored = redshift_target.query("SELECT body FROM public.texts")[0]["body"]
    assert len(stored.encode()) <= 65535 and stored == big[: len(stored)]


def test_table_without_primary_key_appends_and_refuses_updates(redshift_target: RedshiftTarget) -> None:
    t = TableId("shop", "events_log")
    schema = Schema.of(t, [Field("at", T.timestamp), Field("what", T.string())], [])
    with make_factory(redshift_target)() as sink:
        sink.apply(CreateTable(t, schema))
        row = {"at": dt.datetime(2026, 1, 1), "what": "x"}
        sink.write(Batch(events=(ChangeEvent.insert(t, row, _pos(1)), ChangeEvent.insert(t, row, _pos(2))), end_position=_pos(2)))
        with pytest.raises(SinkError, match="no primary key"):
            sink.write(Batch(events=(ChangeEvent.delete(t, row, _pos(3)),), end_position=_pos(3)))
    assert len(redshift_target.query("SELECT * FROM public.events_log")) == 2


def test_physical_design_and_case_sensitive_names(redshift_target: RedshiftTarget) -> None:
    t = TableId("Sales", "OrderLines")
    schema = Schema.of(t, [Field("OrderId", T.int64), Field("LineNo", T.int32), Field("Sku", T.string())], ["OrderId", "LineNo"])
    factory = make_factory(
        redshift_target,
        case_sensitive_identifiers=True,
        table_name="{namespace}_{name}",
        tables={"Sales.OrderLines": {"distkey": "OrderId", "sortkey": ["OrderId", "LineNo"]}},
    )
    redshift_target.proxy.statements.clear()
    with factory() as sink:
        sink.apply(CreateTable(t, schema))
        sink.write(Batch(events=(ChangeEvent.insert(t, {"OrderId": 1, "LineNo": 1, "Sku": "a"}, _pos(1)),), end_position=_pos(1)))
    create = next(s for s in redshift_target.proxy.statements if s.startswith('CREATE TABLE "public"."Sales_OrderLines"'))
    assert create.endswith('DISTSTYLE KEY DISTKEY ("OrderId") COMPOUND SORTKEY ("OrderId", "LineNo")')
    assert "SET enable_case_sensitive_identifier TO true" in redshift_target.proxy.statements
    assert redshift_target.query('SELECT "OrderId", "LineNo", "Sku" FROM public."Sales_OrderLines"') == [{"OrderId": 1, "LineNo": 1, "Sku": "a"}]


def test_connection_refused_is_retryable() -> None:
    from zetl.errors import SinkConnectionError
    from zetl.testing.servers import free_port

    config = RedshiftConfig(host="127.0.0.1", port=free_port(), user="u", password="secret-value", ssl=False, connect_timeout=2)
    with pytest.raises(SinkConnectionError) as info:
        RedshiftSink(config, PluginContext(integration="it")).open()
    assert info.value.retryable and "127.0.0.1" in info.value.message and "secret-value" not in info.value.message


def test_connection_lost_mid_stream_is_retryable_and_loses_nothing(redshift_target: RedshiftTarget) -> None:
    from redshift_target.proxy import RedshiftProxy

    from zetl.errors import SinkConnectionError

    t = TableId("shop", "fragile")
    schema = Schema.of(t, [Field("id", T.int64), Field("name", T.string())], ["id"])
    first = Batch(events=(ChangeEvent.insert(t, {"id": 1, "name": "a"}, _pos(1)),), end_position=_pos(1))
    second = Batch(events=(ChangeEvent.insert(t, {"id": 2, "name": "b"}, _pos(2)),), end_position=_pos(2))
    own_proxy = RedshiftProxy(redshift_target.pg.host, redshift_target.pg.port).start()
    try:
        sink = RedshiftSink(RedshiftConfig.model_validate(redshift_target.sink_config(port=own_proxy.port)), PluginContext(integration="it"))
        sink.open()
        sink.apply(CreateTable(t, schema))
        assert sink.write(first) == _pos(1)
    finally:
        own_proxy.stop()  # the network goes away under the open connection
    with pytest.raises(SinkConnectionError) as info:
        sink.write(second)
    assert info.value.retryable
    sink.close()
    with make_factory(redshift_target)() as restarted:  # the runner's retry: reopen, resume from the stored position
        assert restarted.stored_position() == _pos(1)
        assert restarted.write(second) == _pos(2)
    assert sorted(r["id"] for r in make_reader(redshift_target)(t)) == [1, 2]


def test_can_apply_refuses_names_that_would_collide(redshift_target: RedshiftTarget) -> None:
    t = TableId("shop", "clash")
    schema = Schema.of(t, [Field("id", T.int64), Field("Name", T.string())], ["id"])
    with make_factory(redshift_target, history_mode=True)() as sink:
        assert not sink.can_apply(CreateTable(t, Schema.of(t, [Field("id", T.int64), Field("a", T.string()), Field("A", T.string())], ["id"])))
        sink.apply(CreateTable(t, schema))
        assert not sink.can_apply(AddColumn(t, Field("NAME", T.string())))  # folds onto "name"
        assert not sink.can_apply(AddColumn(t, Field("_valid_to", T.string())))  # a history-mode column
        assert not sink.can_apply(RenameColumn(t, "Name", "_op"))
        assert sink.can_apply(RenameColumn(t, "Name", "name"))  # same target column: metadata only
        sink.apply(RenameColumn(t, "Name", "name"))
        assert sink.can_apply(AddColumn(t, Field("Name2", T.string())))
        with pytest.raises(SchemaError, match="all map to Redshift column 'name'"):
            sink.apply(AddColumn(t, Field("NAME", T.string())))
        got = sink.current_schema(t)
        assert got is not None and got.names == ("id", "name")


def test_documents_over_json_parse_limit_go_through_copy(redshift_target: RedshiftTarget) -> None:
    t = TableId("shop", "big_docs")
    schema = Schema.of(t, [Field("id", T.int64), Field("doc", T.json)], ["id"])
    big = {"items": [{"sku": f"sku-{i}", "text": "x" * 50} for i in range(1500)]}  # about 100 kB of JSON
    batch = Batch(events=(ChangeEvent.insert(t, {"id": 1, "doc": big}, _pos(1)), ChangeEvent.insert(t, {"id": 2, "doc": {"small": True}}, _pos(2))), end_position=_pos(2))
    with make_factory(redshift_target, load="insert")() as sink:
        sink.apply(CreateTable(t, schema))
        with pytest.raises(SinkError, match=r"shop\.big_docs\.doc is \d+ bytes; JSON_PARSE takes at most 65535: configure sink.s3"):
            sink.write(batch)
    with make_factory(redshift_target, load="auto")() as sink:
        assert sink.write(batch) == _pos(2)
        assert sink.status()["copy_batches"] == 1
    rows = {r["id"]: r["doc"] for r in make_reader(redshift_target)(t)}
    assert rows == {1: big, 2: {"small": True}}


def test_connect_timeout_does_not_limit_statements(redshift_target: RedshiftTarget) -> None:
    # The connection must be made within connect_timeout (3 s leaves room on a loaded machine);
    # the statement then sleeps past it on the server, which a socket timeout would cut.
    with make_factory(redshift_target, connect_timeout=3)() as sink:
        assert sink._fetchall("SELECT 1 AS slept FROM pg_sleep(3.5)") == [[1]]


def test_rejected_value_is_found_among_many_rows_loaded_by_copy(redshift_target: RedshiftTarget) -> None:
    t = TableId("shop", "prices")
    schema = Schema.of(t, [Field("id", T.int64), Field("label", T.string()), Field("price", T.decimal(5, 2))], ["id"])
    events = tuple(ChangeEvent.insert(t, {"id": i, "label": f"l{i}", "price": Decimal("12345.67") if i == 217 else Decimal("1.25")}, _pos(i)) for i in range(1, 301))
    with make_factory(redshift_target, load="s3_copy")() as sink:
        sink.apply(CreateTable(t, schema))
        with pytest.raises(SinkError) as info:
            sink.write(Batch(events=events, end_position=_pos(300)))
        assert "rejected value Decimal('12345.67') in column price (Redshift column price, DECIMAL(5,2)) of the row with id=217" in info.value.message
        assert not info.value.retryable
        assert redshift_target.query("SELECT count(*) AS n FROM public.prices")[0]["n"] == 0


def test_two_source_tables_mapping_to_one_target_table_is_an_error(redshift_target: RedshiftTarget) -> None:
    first, second = TableId("public", "orders"), TableId("archive", "orders")
    with make_factory(redshift_target)() as sink:
        sink.apply(CreateTable(first, Schema.of(first, [Field("id", T.int64)], ["id"])))
    with make_factory(redshift_target)() as sink:
        with pytest.raises(SchemaError, match=r"public\.orders and archive\.orders both map to Redshift table public\.orders.*\{namespace\}_\{name\}"):
            sink.current_schema(second)


def test_widenings_across_redshift_types_keep_values(redshift_target: RedshiftTarget) -> None:
    t = TableId("shop", "wide")
    schema = Schema.of(t, [Field("id", T.int64), Field("amount", T.decimal(38, 2)), Field("day", T.date), Field("ratio", T.float32)], ["id"])
    with make_factory(redshift_target)() as sink:
        sink.apply(CreateTable(t, schema))
        sink.write(Batch(events=(ChangeEvent.insert(t, {"id": 1, "amount": Decimal("12.50"), "day": dt.date(2026, 2, 3), "ratio": 0.5}, _pos(1)),), end_position=_pos(1)))
        for change in (AlterColumnType(t, "amount", T.decimal(45, 2), T.decimal(38, 2)), AlterColumnType(t, "day", T.timestamp, T.date), AlterColumnType(t, "ratio", T.float64, T.float32)):
            assert sink.can_apply(change)
            sink.apply(change)
        sink.write(Batch(events=(ChangeEvent.insert(t, {"id": 2, "amount": Decimal("1234567890123456789012345678901234567890123.45"), "day": dt.datetime(2026, 2, 3, 4, 5), "ratio": 0.1}, _pos(2)),), end_position=_pos(2)))
        got = sink.current_schema(t)
    assert got is not None and [f.type for f in got.fields] == [T.int64, T.decimal(45, 2), T.timestamp, T.float64]
    rows = {r["id"]: r for r in make_reader(redshift_target)(t)}
    assert rows[1] == {"id": 1, "amount": "12.50", "day": dt.datetime(2026, 2, 3), "ratio": 0.5}
    assert rows[2]["amount"] == "1234567890123456789012345678901234567890123.45" and rows[2]["ratio"] == 0.1


def test_iam_authentication_with_temporary_credentials_from_the_redshift_api(
    redshift_target: RedshiftTarget, moto_s3: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """``iam: true``: the driver asks the Redshift API (moto in server mode) for temporary
    credentials of ``user`` on ``cluster_identifier`` and logs in as the returned ``IAM:<user>``
    over TLS (the driver insists on it with IAM; here a proxy with a self-signed certificate the
    test trusts). The target is trust-authenticated, so the temporary password is not checked
    here; the temporary user name is (only that role may log in and write)."""
    import boto3

    from redshift_target.proxy import RedshiftProxy
    from redshift_target.target import S3_CREDENTIALS, self_signed_tls

    pg, db = redshift_target.pg, redshift_target.database
    suffix = abs(hash(db)) % 10**8
    cluster, iam_role = f"zetl-iam-{suffix}", f"IAM:zetl_iam_{suffix}"
    boto3.client(
        "redshift",
        endpoint_url=moto_s3,
        region_name=S3_CREDENTIALS["region"],
        aws_access_key_id=S3_CREDENTIALS["access_key_id"],
        aws_secret_access_key=S3_CREDENTIALS["secret_access_key"],
    ).create_cluster(ClusterIdentifier=cluster, NodeType="ra3.xlplus", MasterUsername="admin", MasterUserPassword="Admin-pass-1", ClusterType="single-node")
    tls, ca = self_signed_tls(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the driver loads the default CAs, which honour it
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_CREDENTIALS["access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_CREDENTIALS["secret_access_key"])
    pg.psql(f'DROP ROLE IF EXISTS "{iam_role}"')
    pg.psql(f'CREATE ROLE "{iam_role}" LOGIN')
    tls_proxy = RedshiftProxy(pg.host, pg.port, tls=tls).start()
    try:
        pg.psql(f'GRANT CREATE ON DATABASE "{db}" TO "{iam_role}"', dbname=db)
        pg.psql(f'GRANT USAGE ON SCHEMA zetl_shim TO "{iam_role}"', dbname=db)
        overrides = {"port": tls_proxy.port, "ssl": True, "sslmode": "verify-ca", "iam": True, "user": f"zetl_iam_{suffix}", "password": None, "cluster_identifier": cluster, "region": S3_CREDENTIALS["region"], "aws_endpoint_url": moto_s3}
        config = RedshiftConfig.model_validate(redshift_target.sink_config(schema="iam_landing", **overrides))
        t = TableId("shop", "iam_items")
        with RedshiftSink(config, PluginContext(integration="iam")) as sink:
            sink.apply(CreateTable(t, Schema.of(t, [Field("id", T.int64), Field("doc", T.json)], ["id"])))
            sink.write(Batch(events=(ChangeEvent.insert(t, {"id": 1, "doc": {"via": "iam"}}, _pos(1)),), end_position=_pos(1)))
        owner = redshift_target.query("SELECT tableowner FROM pg_tables WHERE schemaname = 'iam_landing' AND tablename = 'iam_items'")
        assert owner == [{"tableowner": iam_role}], "the sink logged in as the temporary IAM user"
        assert redshift_target.query("SELECT id, doc FROM iam_landing.iam_items") == [{"id": 1, "doc": {"via": "iam"}}]
        wrong = RedshiftConfig.model_validate(redshift_target.sink_config(**{**overrides, "cluster_identifier": f"missing-{suffix}"}))
        with pytest.raises(SinkError, match=f"missing-{suffix}"):
            RedshiftSink(wrong, PluginContext(integration="iam")).open()
    finally:
        tls_proxy.stop()
        pg.psql(f'DROP OWNED BY "{iam_role}"', dbname=db)
        pg.psql(f'DROP ROLE IF EXISTS "{iam_role}"')


def test_columns_added_by_hand_are_reported_never_written_and_dropped_only_when_asked(redshift_target: RedshiftTarget) -> None:
    t = TableId("shop", "curated")
    schema = Schema.of(t, [Field("id", T.int64), Field("name", T.string())], ["id"])
    with make_factory(redshift_target)() as sink:
        sink.apply(CreateTable(t, schema))
        sink.write(Batch(events=(ChangeEvent.insert(t, {"id": 1, "name": "a"}, _pos(1)),), end_position=_pos(1)))
    redshift_target.pg.psql("ALTER TABLE public.curated ADD COLUMN reviewed boolean; UPDATE public.curated SET reviewed = true", dbname=redshift_target.database)
    with make_factory(redshift_target)() as sink:
        got = sink.current_schema(t)
        assert got is not None and [(f.name, f.type, f.nullable) for f in got.fields] == [("id", T.int64, False), ("name", T.string(), True), ("reviewed", T.boolean, True)]
        # zetl's writes leave the column alone: an update keeps it, an insert leaves it NULL.
        sink.write(Batch(events=(ChangeEvent.update(t, {"id": 1, "name": "a"}, {"id": 1, "name": "b"}, _pos(2)), ChangeEvent.insert(t, {"id": 2, "name": "c"}, _pos(3))), end_position=_pos(3)))
        assert redshift_target.query("SELECT id, name, reviewed FROM public.curated ORDER BY id") == [
            {"id": 1, "name": "b", "reviewed": True},
            {"id": 2, "name": "c", "reviewed": None},
        ]
        sink.apply(DropColumn(t, "reviewed"))  # a policy that makes the target follow the source
        got = sink.current_schema(t)
        assert got is not None and got.names == ("id", "name")
    assert [r["column_name"] for r in redshift_target.query("SELECT column_name FROM information_schema.columns WHERE table_name = 'curated' ORDER BY ordinal_position")] == ["id", "name"]
