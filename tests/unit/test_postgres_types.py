"""Postgres type map (golden file), text decoders, positions and pgoutput message decoding."""

from __future__ import annotations

import datetime as dt
import struct
import uuid
from decimal import Decimal

import pytest

from golden_util import Case, check, params
from zetl.jsonvalue import JsonText
from zetl.events import UNCHANGED, Position, SequencePosition, TableId
from zetl.schema.changes import AddColumn, AlterColumnType, DropColumn
from zetl.schema.types import DataType, Field, Schema, T
from zetl_connectors.postgres.config import PostgresConfig, default_slot_name
from zetl_connectors.postgres.decoding import decoder_for, parse_array, to_pg_text
from zetl_connectors.postgres.pgoutput import RelationDecoder, decode_relation, diff_schema
from zetl_connectors.postgres.position import PostgresPosition, format_lsn, parse_lsn
from zetl_connectors.postgres.typemap import ARRAY_ELEMENTS, BUILTIN_TYPES, PgType, canonical_type

_BY_NAME = {t.name: t for t in BUILTIN_TYPES.values()}
_ARRAY_OF = {element: array for array, element in ARRAY_ELEMENTS.items()}


def _resolve(name: str, typmod: int) -> DataType:
    if name.endswith("[]"):
        element = _resolve(name[:-2], typmod)
        return canonical_type(PgType(0, name, "array"), typmod, element)
    if name == "enum":
        return canonical_type(PgType(0, "mood", "enum"), typmod)
    if name.startswith("domain:"):
        return canonical_type(PgType(0, "d", "domain"), typmod, _resolve(name[7:], typmod))
    pg = _BY_NAME.get(name, PgType(0, name, "other"))
    return canonical_type(pg, typmod)


@params("postgres_typemap.txt", 3)
def test_type_map(case: Case) -> None:
    check(case, str(_resolve(case.inputs[0], int(case.inputs[1]))))


def test_every_builtin_array_has_a_builtin_element() -> None:
    assert set(ARRAY_ELEMENTS.values()) <= set(BUILTIN_TYPES)


@pytest.mark.parametrize(
    "data_type, text, value",
    [
        (T.boolean, "t", True),
        (T.boolean, "f", False),
        (T.int64, "-9000000000", -9000000000),
        (T.float64, "NaN", None),
        (T.float32, "-Infinity", float("-inf")),
        (T.decimal(12, 2), "1234.50", Decimal("1234.50")),
        (T.binary, "\\x00ff10", b"\x00\xff\x10"),
        (T.date, "2024-02-29", dt.date(2024, 2, 29)),
        (T.date, "infinity", dt.date.max),
        (T.time, "24:00:00", dt.time.max),
        (T.timestamp, "2024-01-02 03:04:05.123456", dt.datetime(2024, 1, 2, 3, 4, 5, 123456)),
        (T.timestamptz, "2024-01-02 03:04:05+00", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)),
        (T.timestamptz, "2024-01-02 03:04:05.5+02:30", dt.datetime(2024, 1, 2, 0, 34, 5, 500000, tzinfo=dt.timezone.utc)),
        (T.uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
        (T.json, '{"a": [1, null]}', JsonText('{"a": [1, null]}')),
        (T.list_(T.int32), "{1,NULL,3}", [1, None, 3]),
        (T.list_(T.string()), '{"a,b","c\\"d",NULL,"NULL",""}', ["a,b", 'c"d', None, "NULL", ""]),
        (T.list_(T.int32), "{{1,2},{3,4}}", [[1, 2], [3, 4]]),
        (T.list_(T.int32), "[0:1]={5,6}", [5, 6]),
        (T.list_(T.int32), "{}", []),
    ],
)
def test_text_decoders(data_type: DataType, text: str, value: object) -> None:
    got = decoder_for(data_type)(text)
    if value is None:  # NaN
        assert got != got
    else:
        assert got == value
        if isinstance(value, dt.datetime) and value.tzinfo is not None:
            assert got.tzinfo is dt.timezone.utc


def test_array_parser_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_array("{1,2", int)


def test_pg_text_round_trip_of_keys() -> None:
    assert to_pg_text(b"\x01") == "\\x01"
    assert to_pg_text(dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)) == "2024-01-01T00:00:00+00:00"
    assert to_pg_text(Decimal("1.50")) == "1.50"


def test_position_json_round_trip_and_total_order() -> None:
    snap1 = PostgresPosition("snapshot", parse_lsn("0/16B3748"), table="public.t", last_key=("10",), step=1)
    snap2 = PostgresPosition("snapshot", parse_lsn("0/16B3748"), tables_done=("public.t",), step=2)
    s1 = PostgresPosition.stream(parse_lsn("0/16B3750"))
    s2 = PostgresPosition.stream(parse_lsn("1/0"))
    for p in (snap1, snap2, s1, s2):
        back = Position.from_json(p.to_json())
        assert back == p and isinstance(back, PostgresPosition) and back.to_json() == p.to_json()
    assert snap1 < snap2 < s1 < s2
    assert sorted([s2, snap2, s1, snap1]) == [snap1, snap2, s1, s2]
    assert Position.from_json(snap1.to_json()).last_key == ("10",)  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        _ = s1 < SequencePosition("stream", 1)
    assert format_lsn(parse_lsn("16/B374D848")) == "16/B374D848"


def test_config_defaults_and_checks() -> None:
    assert default_slot_name("Shop Orders-1") == "zetl_shop_orders_1"
    config = PostgresConfig(database="d", user="u", password="secret", heartbeat_interval="250ms")
    assert config.heartbeat_interval == 0.25 and "secret" not in repr(config)
    with pytest.raises(ValueError, match="region"):
        PostgresConfig(database="d", user="u", iam_auth=True)
    with pytest.raises(ValueError):
        PostgresConfig(database="d", user="u", slot_name="Bad-Name")
    with pytest.raises(ValueError):
        PostgresConfig(database="d", user="u", unknown_key=1)  # type: ignore[call-arg]


def _relation_message(oid: int, namespace: str, name: str, columns: list[tuple[str, int, int, bool]]) -> bytes:
    out = b"R" + struct.pack(">I", oid) + namespace.encode() + b"\0" + name.encode() + b"\0" + b"d" + struct.pack(">h", len(columns))
    for col, type_oid, typmod, key in columns:
        out += bytes([1 if key else 0]) + col.encode() + b"\0" + struct.pack(">Ii", type_oid, typmod)
    return out


def _tuple(*values: bytes | None | str) -> bytes:
    out = struct.pack(">h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v == "u":
            out += b"u"
        else:
            assert isinstance(v, bytes)
            out += b"t" + struct.pack(">i", len(v)) + v
    return out


def test_relation_and_tuple_decoding() -> None:
    msg = _relation_message(16384, "shop", "orders", [("id", 23, -1, True), ("note", 25, -1, False), ("amount", 1700, 786438, False)])
    oid, table, identity, columns = decode_relation(msg)
    assert (oid, table, identity) == (16384, TableId("shop", "orders"), "d")
    assert [(c.name, c.type_oid, c.typmod, c.is_key) for c in columns] == [("id", 23, -1, True), ("note", 25, -1, False), ("amount", 1700, 786438, False)]
    schema = Schema.of(table, [Field("id", T.int32), Field("note", T.string()), Field("amount", T.decimal(12, 2))], ["id"])
    decoder = RelationDecoder(table, schema)
    data = b"I" + struct.pack(">I", oid) + b"N" + _tuple(b"7", "u", "é".encode() and b"1.50")
    row, end = decoder.decode(data, 6)
    assert row == {"id": 7, "note": UNCHANGED, "amount": Decimal("1.50")} and end == len(data)
    row, _ = decoder.decode(b"xxxxxx" + _tuple(b"8", "h\xc3\xa9".encode("latin-1"), None), 6)
    assert row == {"id": 8, "note": "hé", "amount": None}


def test_schema_diff_orders_drops_type_changes_then_adds() -> None:
    t = TableId("public", "t")
    old = Schema.of(t, [Field("id", T.int32), Field("a", T.string()), Field("b", T.int32)], ["id"])
    new = Schema.of(t, [Field("id", T.int32), Field("b", T.int64), Field("c", T.date)], ["id"])
    changes = diff_schema(old, new)
    assert changes == [DropColumn(t, "a"), AlterColumnType(t, "b", T.int64, T.int32), AddColumn(t, Field("c", T.date, nullable=True), after="b")]
    assert diff_schema(old, old) == []


def test_iam_token_is_made_locally_from_the_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    from zetl_connectors.postgres.catalog import iam_token

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    config = PostgresConfig(host="db.example.eu-west-1.rds.amazonaws.com", port=5432, database="d", user="zetl", iam_auth=True, region="eu-west-1")
    token = iam_token(config)
    assert token.startswith("db.example.eu-west-1.rds.amazonaws.com:5432/?Action=connect&DBUser=zetl")
    assert "X-Amz-Signature=" in token and "eu-west-1" in token
