"""zetl's binlog row decoder on hand-encoded row images (the integration tests compare it with
pymysqlreplication on rows written by MariaDB)."""

from __future__ import annotations

import datetime as dt
import struct
from typing import Any

from zetl_connectors.mysql import rowdecode


class Column:
    def __init__(self, name: str, type: int, **attrs: Any) -> None:
        self.name = name
        self.type = type
        for k, v in attrs.items():
            setattr(self, k, v)


def datetime2(y: int, mo: int, d: int, h: int, mi: int, s: int, fsp: int, frac: int) -> bytes:
    packed = (((y * 13 + mo) << 5 | d) << 17 | (h << 12 | mi << 6 | s)) + 0x8000000000
    return packed.to_bytes(5, "big") + (frac.to_bytes((fsp + 1) // 2, "big") if fsp else b"")


def decoder(columns: list[Column]) -> Any:
    return rowdecode._TableRows(tuple(c.name for c in columns), columns, [rowdecode._reader(c) for c in columns])


def test_datetime2_with_each_fraction_width_and_zero_dates() -> None:
    cols = [Column(n, 18, fsp=f) for n, f in (("us", 6), ("s", 0), ("ms", 3), ("cs", 2), ("zero", 1))]
    data = bytes([0]) + datetime2(2024, 1, 2, 3, 4, 5, 6, 123456) + datetime2(2000, 12, 31, 23, 59, 59, 0, 0)
    data += datetime2(1999, 6, 7, 8, 9, 10, 3, 1230) + datetime2(1970, 1, 1, 0, 0, 0, 2, 99) + datetime2(0, 0, 0, 0, 0, 0, 1, 0)
    row, end = decoder(cols).image(data, 0)
    assert end == len(data)
    assert row == {
        "us": dt.datetime(2024, 1, 2, 3, 4, 5, 123456),
        "s": dt.datetime(2000, 12, 31, 23, 59, 59),
        "ms": dt.datetime(1999, 6, 7, 8, 9, 10, 123000),
        "cs": dt.datetime(1970, 1, 1, 0, 0, 0, 990000),
        "zero": None,
    }


def test_nulls_fixed_width_strings_and_labels() -> None:
    cols = [
        Column("i", 3, unsigned=False),
        Column("u", 8, unsigned=True),
        Column("n", 3, unsigned=False),
        Column("v", 15, max_length=300, character_set_name="utf8mb4"),
        Column("bin", 252, length_size=2, character_set_name="binary"),
        Column("e", 247, size=1, enum_values=["", "a", "b"]),
        Column("st", 248, size=1, set_values=["x", "y", "z"]),
        Column("bits", 16, bytes=2),
        Column("y", 13),
    ]
    text = "héllo".encode()
    data = bytes([0b00000100, 0])  # only column 2 (n) is NULL
    data += struct.pack("<i", -5) + struct.pack("<Q", 2**64 - 1)
    data += struct.pack("<H", len(text)) + text + struct.pack("<H", 3) + b"\x00\xff\x01"
    data += bytes([2]) + bytes([0b101]) + (257).to_bytes(2, "big") + bytes([124])
    row, end = decoder(cols).image(data, 0)
    assert end == len(data)
    assert row == {"i": -5, "u": 2**64 - 1, "n": None, "v": "héllo", "bin": b"\x00\xff\x01", "e": "b", "st": "x,z", "bits": 257, "y": 2024}


def test_unsupported_column_types_leave_the_table_to_the_library() -> None:
    assert rowdecode._reader(Column("t", 19, fsp=0)) is None  # TIME2
    assert rowdecode._reader(Column("j", 245, length_size=4)) is None  # MySQL binary JSON


def _row_with_nulls(columns: list[Column], nulls: int, values: bytes) -> bytes:
    return nulls.to_bytes((len(columns) + 7) // 8, "little") + values


def test_converting_image_applies_converters_to_non_null_values_only() -> None:
    cols = [
        Column("id", 3, unsigned=False),
        Column("qty", 3, unsigned=False),
        Column("doc", 252, length_size=4, character_set_name="utf8mb4"),
        Column("at", 18, fsp=0),
    ]
    doc = b'{"k": [1, 2]}'
    seen: list[Any] = []

    def at(v: Any) -> Any:
        seen.append(v)
        return ("at", v)

    converters = (None, lambda v: v * 10, lambda v: ("json", v), at)
    rows = decoder(cols)
    image = rows.converting(converters)
    assert rows.converting(converters) is image  # generated once per set of converters
    full = _row_with_nulls(cols, 0, struct.pack("<ii", 1, 2) + struct.pack("<I", len(doc)) + doc + datetime2(2024, 1, 2, 3, 4, 5, 0, 0))
    zero = _row_with_nulls(cols, 0, struct.pack("<ii", 2, 3) + struct.pack("<I", 2) + b"[]" + datetime2(0, 0, 0, 0, 0, 0, 0, 0))
    nulls = _row_with_nulls(cols, 0b0110, struct.pack("<i", 3) + datetime2(2000, 1, 1, 0, 0, 0, 0, 0))
    data = full + zero + nulls
    out = []
    o = 0
    while o < len(data):
        row, o = image(data, o)
        out.append(row)
    assert out == [
        {"id": 1, "qty": 20, "doc": ("json", '{"k": [1, 2]}'), "at": ("at", dt.datetime(2024, 1, 2, 3, 4, 5))},
        {"id": 2, "qty": 30, "doc": ("json", "[]"), "at": None},  # a zero date is NULL, not converted
        {"id": 3, "qty": None, "doc": None, "at": ("at", dt.datetime(2000, 1, 1))},
    ]
    assert None not in seen
    # the plain image is unchanged
    assert rows.image(full, 0)[0] == {"id": 1, "qty": 2, "doc": '{"k": [1, 2]}', "at": dt.datetime(2024, 1, 2, 3, 4, 5)}


def test_neighbouring_fixed_width_columns_read_together() -> None:
    cols = [Column("a", 1, unsigned=True), Column("b", 2, unsigned=False), Column("c", 8, unsigned=True), Column("d", 5), Column("s", 15, max_length=10, character_set_name="utf8mb4"), Column("e", 4), Column("f", 3, unsigned=True)]
    data = bytes([0]) + struct.pack("<BhQd", 255, -2, 2**64 - 1, 1.5) + bytes([2]) + b"hi" + struct.pack("<fI", 0.25, 2**32 - 1)
    row, end = decoder(cols).image(data, 0)
    assert end == len(data)
    assert row == {"a": 255, "b": -2, "c": 2**64 - 1, "d": 1.5, "s": "hi", "e": 0.25, "f": 2**32 - 1}
    # the same columns with NULLs take the per-column path
    data = bytes([0b0000010]) + struct.pack("<BQd", 1, 2, 3.0) + bytes([0]) + struct.pack("<fI", 1.0, 7)
    row, end = decoder(cols).image(data, 0)
    assert end == len(data)
    assert row == {"a": 1, "b": None, "c": 2, "d": 3.0, "s": "", "e": 1.0, "f": 7}
