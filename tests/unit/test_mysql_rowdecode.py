"""zetl's binlog row decoder on hand-encoded row images (the integration tests compare it with
pymysqlreplication on rows written by MariaDB)."""

from __future__ import annotations

import datetime as dt
import struct
from typing import Any

from zetl.jsonvalue import JsonText
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


def _packed_decimal(text: str, precision: int, scale: int) -> bytes:
    """MySQL's packed decimal: base-10**9 groups of 4 bytes, the leftover digits in 1-4 bytes (in
    front of the integer part, after the fraction)."""
    negative = text.startswith("-")
    whole, _, frac = text.lstrip("-").partition(".")
    whole = whole.rjust(precision - scale, "0")
    frac = frac.ljust(scale, "0")
    lead = len(whole) % 9
    raw = int(whole[:lead] or 0).to_bytes(rowdecode._DIG2BYTES[lead], "big") if lead else b""
    raw += b"".join(int(whole[i : i + 9]).to_bytes(4, "big") for i in range(lead, len(whole), 9))
    full = scale - scale % 9
    raw += b"".join(int(frac[i : i + 9]).to_bytes(4, "big") for i in range(0, full, 9))
    if scale % 9:
        raw += int(frac[full:]).to_bytes(rowdecode._DIG2BYTES[scale % 9], "big")
    value = int.from_bytes(raw, "big") ^ (0x80 << (8 * (len(raw) - 1)))
    if negative:
        value ^= (1 << (8 * len(raw))) - 1
    return value.to_bytes(len(raw), "big")


_PADDED_COLUMNS = [  # ten columns: the null bitmap has six padding bits
    Column("id", 3, unsigned=False),
    Column("big", 8, unsigned=False),
    Column("amount", 246, precision=12, decimals=2),
    Column("name", 252, length_size=2, character_set_name="utf8mb4"),
    Column("code", 15, max_length=128, character_set_name="utf8mb4"),
    Column("at", 18, fsp=6),
    Column("flag", 1, unsigned=False),
    Column("doc", 252, length_size=4, character_set_name="utf8mb4"),
    Column("small", 1, unsigned=True),
    Column("note", 252, length_size=2, character_set_name="latin1"),
]


def _padded_row(nulls: bytes, amount: str = "-1234.05") -> bytes:
    doc = '{"k": "é", "n": [1, 2.5]}'.encode()
    values = struct.pack("<iq", -7, 2**40) + _packed_decimal(amount, 12, 2) + struct.pack("<H", 3) + b"abc" + bytes([2]) + b"C1"
    values += datetime2(2024, 1, 1, 0, 0, 1, 6, 123456) + bytes([0xFE]) + struct.pack("<I", len(doc)) + doc + bytes([200])
    values += struct.pack("<H", 2) + b"\xe9x"
    return nulls + values


def test_padding_bits_of_the_null_bitmap_are_not_nulls() -> None:
    # The server sets the bitmap's bits past the last column (b'\x00\xfc' for ten columns without NULLs).
    from decimal import Decimal

    from zetl_connectors.mysql.convert import _json_text

    rows = decoder(_PADDED_COLUMNS)
    want = {
        "id": -7, "big": 2**40, "amount": Decimal("-1234.05"), "name": "abc", "code": "C1", "at": dt.datetime(2024, 1, 1, 0, 0, 1, 123456),
        "flag": -2, "doc": '{"k": "é", "n": [1, 2.5]}', "small": 200, "note": "éx",
    }
    for nulls in (b"\x00\x00", b"\x00\xfc"):
        data = _padded_row(nulls)
        row, end = rows.image(data, 0)
        assert end == len(data) and row == want and str(row["amount"]) == "-1234.05"
    converting = rows.converting((None,) * 7 + (_json_text,) + (None,) * 2)
    row, _ = converting(_padded_row(b"\x00\xfc"), 0)
    assert row == want | {"doc": JsonText('{"k": "é", "n": [1, 2.5]}')}
    # a NULL (the second column) with the padding bits set: the per-column path
    data = b"\x02\xfc" + _padded_row(b"")[:4] + _padded_row(b"")[12:]
    row, end = rows.image(data, 0)
    assert end == len(data) and row == want | {"big": None}


def test_packed_decimals_keep_their_scale() -> None:
    from decimal import Decimal

    cols = [Column("a", 246, precision=5, decimals=2), Column("b", 246, precision=5, decimals=2), Column("c", 246, precision=4, decimals=0)]
    data = bytes([0]) + _packed_decimal("-0.05", 5, 2) + _packed_decimal("100.00", 5, 2) + _packed_decimal("-9999", 4, 0)
    row, end = decoder(cols).image(data, 0)
    assert end == len(data)
    assert row == {"a": Decimal("-0.05"), "b": Decimal(100), "c": Decimal(-9999)}
    assert [str(v) for v in row.values()] == ["-0.05", "100.00", "-9999"]


def test_json_of_a_column_that_is_not_utf8_is_decoded_to_text_first() -> None:
    from zetl_connectors.mysql.convert import _json_text

    cols = [Column("id", 3, unsigned=False), Column("doc", 252, length_size=2, character_set_name="latin1")]
    rows = decoder(cols).converting((None, _json_text))
    data = bytes([0]) + struct.pack("<i", 1) + struct.pack("<H", 9) + b'{"s":"\xe9"}'
    row, end = rows(data, 0)
    assert end == len(data) and row == {"id": 1, "doc": JsonText('{"s":"é"}')}


def test_rows_of_an_event_in_one_call_equal_the_image_row_by_row() -> None:
    from zetl_connectors.mysql.convert import _json_text

    with_null = b"\x02\xfc" + _padded_row(b"")[:4] + _padded_row(b"")[12:]
    data = _padded_row(b"\x00\xfc") + with_null + _padded_row(b"\x00\xfc", "0.10") + with_null
    rows = decoder(_PADDED_COLUMNS)
    converters = (None,) * 7 + (_json_text,) + (None,) * 2
    for image, all_rows in ((rows.image, rows.rows), (rows.converting(converters), rows.converting_rows(converters))):
        one_by_one, o = [], 0
        while o < len(data):
            row, o = image(data, o)
            one_by_one.append(row)
        assert len(one_by_one) == 4 and all_rows(data, 0, len(data)) == one_by_one
        assert all_rows(data, len(data), len(data)) == []
