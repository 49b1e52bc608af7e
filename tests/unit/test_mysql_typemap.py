"""MySQL type mapping (golden file) and value conversion of the MySQL source."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from golden_util import Case, check, params
from zetl_connectors.mysql.convert import (
    set_labels,
    snapshot_converter,
    stream_converter,
)
from zetl_connectors.mysql.typemap import UnknownTypeError, canonical_type

from zetl.jsonvalue import JsonText
from zetl.errors import SourceError
from zetl.schema.types import DataType, Field


@params("mysql_typemap.txt", 2)
def test_type_map(case: Case) -> None:
    check(case, str(canonical_type(case.inputs[0])))


def test_mariadb_json_is_longtext_with_a_check() -> None:
    assert str(canonical_type("longtext", is_json=True)) == "json"


def test_unknown_type_says_what_to_do() -> None:
    with pytest.raises(UnknownTypeError, match="exclude the table or cast"):
        canonical_type("vector(3)")


def _field(source_type: str) -> Field:
    return Field("c", canonical_type(source_type), source_type=source_type)


def test_both_decoders_agree_on_the_types_they_disagree_about() -> None:
    cases = [
        # source type, PyMySQL value, pymysqlreplication value, canonical
        ("bit(1)", b"\x01", "1", True),
        ("bit(9)", b"\x01\x01", "100000001", 257),
        ("bit(64)", b"\xff" * 8, "1" * 64, Decimal(2**64 - 1)),
        ("set('x','y','z')", "x,z", {"z", "x"}, "x,z"),
        ("time(2)", dt.timedelta(hours=23, minutes=59, seconds=59, microseconds=990000), dt.timedelta(hours=23, minutes=59, seconds=59, microseconds=990000), dt.time(23, 59, 59, 990000)),
        ("timestamp(3)", dt.datetime(2024, 1, 1, 12, 0, 0, 250000), dt.datetime(2024, 1, 1, 12, 0, 0, 250000), dt.datetime(2024, 1, 1, 12, 0, 0, 250000, tzinfo=dt.UTC)),
        ("bigint(20) unsigned", 18446744073709551615, 18446744073709551615, Decimal(18446744073709551615)),
        ("datetime", "0000-00-00 00:00:00", None, None),
        ("varbinary(4)", b"\x00\xff", "\x00\xff", b"\x00\xff"),
    ]
    for source_type, snap, stream, want in cases:
        f = _field(source_type)
        sc, tc = snapshot_converter(f, "t"), stream_converter(f, "t")
        got_snap = sc(snap) if sc else snap
        got_stream = tc(stream) if tc and stream is not None else stream
        assert got_snap == want and type(got_snap) is type(want), (source_type, got_snap)
        assert got_stream == want and type(got_stream) is type(want), (source_type, got_stream)


def test_mysql8_binary_json_and_year() -> None:
    conv = stream_converter(Field("j", DataType.parse("json"), source_type="json"), "t")
    assert conv is not None and conv({b"k": [b"s", 1, {b"n": None}]}) == JsonText('{"k": ["s", 1, {"n": null}]}')
    assert conv('{"a": 1}') == JsonText('{"a": 1}')
    year = stream_converter(_field("year(4)"), "t")
    assert year is not None and year(1900) == 0 and year(2024) == 2024


def test_time_outside_a_day_is_an_error_naming_the_column() -> None:
    conv = stream_converter(_field("time"), "table shop.t, column c")
    assert conv is not None
    with pytest.raises(SourceError, match="table shop.t, column c: TIME value 1 day, 1:00:00 is outside"):
        conv(dt.timedelta(hours=25))


def test_set_labels_keep_quotes_and_commas() -> None:
    assert set_labels("enum('a','b,c','it''s')") == ["a", "b,c", "it's"]
