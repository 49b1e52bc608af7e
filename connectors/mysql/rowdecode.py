"""A fast decoder for the rows of binlog row events.

pymysqlreplication decodes rows value by value through several layers of calls; on large
transactions that is most of the source's time. This decoder reads the same bytes (the rest of
the row event after the library parsed its header) with one small function per column, built
once per table map. It uses the library's parsed table map (``Column`` objects: types, lengths,
character sets, enum/set labels) and leaves everything it does not handle to the library: a table
with a column type not listed in ``_READERS`` (MySQL binary JSON, TIME, GEOMETRY, pre-5.6
temporal types) or an event without a full row image is decoded by ``event.rows`` as before.

Values come out as the library gives them except: SET -> the labels joined by ``,`` (the empty
set is ``""``, not NULL), BIT -> int, TIMESTAMP -> UTC-aware datetime, YEAR 0 -> 0.
``RowDecoder.converted_rows`` also applies the caller's per-column conversions to non-NULL values
while decoding (the same result as converting each decoded row afterwards, without the second
pass); it only does so when the event's columns are exactly the caller's.
"""

from __future__ import annotations

import codecs
import datetime as dt
import struct
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from decimal import Decimal
from typing import Any

from zetl_connectors.mysql.convert import UTF8_BYTES_SHORTCUTS

__all__ = ["RowDecoder"]

Reader = Callable[[bytes, int], tuple[Any, int]]
Converter = Callable[[Any], Any]
ImageFn = Callable[[bytes, int], tuple[dict[str, Any], int]]
RowsFn = Callable[[bytes, int, int], list[dict[str, Any]]]
_UTC = dt.UTC
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=_UTC)

# MySQL field type codes (include/field_types.h)
_DECIMAL, _TINY, _SHORT, _LONG, _FLOAT, _DOUBLE, _TIMESTAMP, _LONGLONG, _INT24, _DATE = 0, 1, 2, 3, 4, 5, 7, 8, 9, 10
_YEAR, _VARCHAR, _BIT, _TIMESTAMP2, _DATETIME2, _TIME2 = 13, 15, 16, 17, 18, 19
_JSON, _NEWDECIMAL, _ENUM, _SET, _BLOB, _VAR_STRING, _STRING = 245, 246, 247, 248, 252, 253, 254

_DIG2BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)


def _struct_reader(fmt: str) -> Reader:
    s = struct.Struct(fmt)
    unpack, size = s.unpack_from, s.size

    def read(b: bytes, o: int) -> tuple[Any, int]:
        return unpack(b, o)[0], o + size

    return read


def _int24(unsigned: bool) -> Reader:
    def read(b: bytes, o: int) -> tuple[Any, int]:
        v = b[o] | (b[o + 1] << 8) | (b[o + 2] << 16)
        if not unsigned and v >= 0x800000:
            v -= 0x1000000
        return v, o + 3

    return read


def _encoding(column: Any) -> str | None:
    name = getattr(column, "character_set_name", None)
    if name is None or name == "binary":
        return None
    from pymysql.charset import charset_by_name

    cs = charset_by_name(name)
    enc = cs.encoding if cs is not None else name
    "".encode(enc)  # LookupError for an encoding Python does not know: the library then decodes
    return enc


def _string(prefix: int, encoding: str | None) -> Reader:
    if prefix == 1:

        def read(b: bytes, o: int) -> tuple[Any, int]:
            n = b[o]
            raw = b[o + 1 : o + 1 + n]
            return (raw.decode(encoding) if encoding else bytes(raw)), o + 1 + n

    else:

        def read(b: bytes, o: int) -> tuple[Any, int]:
            n = int.from_bytes(b[o : o + prefix], "little")
            start = o + prefix
            raw = b[start : start + n]
            return (raw.decode(encoding) if encoding else bytes(raw)), start + n

    return read


def _decimal_code(precision: int, scale: int, target: str, pad: str) -> list[str]:
    """Code that reads a packed decimal at ``o`` into ``target`` (a Decimal) and moves ``o``
    past it. MySQL's packed decimal: groups of 9 digits in 4 bytes, the leftover digits of each
    end in 1-4 bytes; the sign in the top bit (negative values have every bit inverted). The code
    is generated for the column's precision and scale, from integer constants only."""
    integral = precision - scale
    uncomp_int, comp_int = divmod(integral, 9)
    uncomp_frac, comp_frac = divmod(scale, 9)
    comp_int_bytes, comp_frac_bytes = _DIG2BYTES[comp_int], _DIG2BYTES[comp_frac]
    size = comp_int_bytes + uncomp_int * 4 + uncomp_frac * 4 + comp_frac_bytes
    int_groups = ([(comp_int_bytes * 8, comp_int)] if comp_int_bytes else []) + [(32, 9)] * uncomp_int
    frac_groups = [(32, 9)] * uncomp_frac + ([(comp_frac_bytes * 8, comp_frac)] if comp_frac_bytes else [])

    def expression(layout: list[tuple[int, int]], shift: int) -> str:
        # the groups' values, most significant first, combined in base 10**digits
        terms = ""
        for bits, digits in layout:
            shift -= bits
            group = f"((raw >> {shift}) & {(1 << bits) - 1})"
            terms = f"({terms}) * {10 ** digits} + {group}" if terms else group
        return terms or "0"

    total_bits = size * 8
    int_bits = sum(bits for bits, _ in int_groups)
    whole = expression(int_groups, total_bits)
    frac = expression(frac_groups, total_bits - int_bits)
    lines = [
        f"raw = int.from_bytes(b[o:o + {size}], 'big')",
        f"o += {size}",
        f"negative = not raw & {0x80 << (8 * (size - 1))}",
        f"raw ^= {0x80 << (8 * (size - 1))}",
        "if negative:",
        f"    raw ^= {(1 << (8 * size)) - 1}",
    ]
    if scale:
        # the unscaled integer and an exponent: one str and Decimal's exact string constructor
        lines.append(f"u = ({whole}) * {10 ** scale} + ({frac})")
        lines.append(f'{target} = D(f"-{{u}}e-{scale}" if negative else f"{{u}}e-{scale}")')
    else:
        lines.append(f"{target} = D(('-' if negative else '') + str({whole}))")
    return [pad + line for line in lines]


def _decimal(precision: int, scale: int) -> Reader:
    """A reader of one packed decimal column (see ``_decimal_code``)."""
    lines = ["def read(b, o):", *_decimal_code(precision, scale, "v", "    "), "    return v, o"]
    namespace: dict[str, Any] = {"D": Decimal}
    exec(compile("\n".join(lines), "<zetl decimal>", "exec"), namespace)  # noqa: S102 - integer constants only
    return namespace["read"]  # type: ignore[no-any-return]


def _fraction(fsp: int) -> tuple[int, int]:
    """Bytes of the fractional part and the factor to microseconds."""
    n = (fsp + 1) // 2
    return n, (10 ** (6 - 2 * n)) if n else 0


def _datetime2(fsp: int) -> Reader:
    nfrac, factor = _fraction(fsp)

    def read(b: bytes, o: int) -> tuple[Any, int]:
        packed = int.from_bytes(b[o : o + 5], "big") - 0x8000000000
        usec = int.from_bytes(b[o + 5 : o + 5 + nfrac], "big") * factor if nfrac else 0
        end = o + 5 + nfrac
        ymd, hms = packed >> 17, packed & 0x1FFFF
        ym = ymd >> 5
        year, month, day = ym // 13, ym % 13, ymd & 31
        if month == 0 or day == 0:
            return None, end  # zero or partial date: no canonical value
        return dt.datetime(year, month, day, hms >> 12, (hms >> 6) & 63, hms & 63, usec), end

    return read


def _timestamp2(fsp: int) -> Reader:
    nfrac, factor = _fraction(fsp)

    def read(b: bytes, o: int) -> tuple[Any, int]:
        seconds = int.from_bytes(b[o : o + 4], "big")
        usec = int.from_bytes(b[o + 4 : o + 4 + nfrac], "big") * factor if nfrac else 0
        return _EPOCH + dt.timedelta(seconds=seconds, microseconds=usec), o + 4 + nfrac

    return read


def _date(b: bytes, o: int) -> tuple[Any, int]:
    v = b[o] | (b[o + 1] << 8) | (b[o + 2] << 16)
    day, month, year = v & 31, (v >> 5) & 15, v >> 9
    if month == 0 or day == 0:
        return None, o + 3
    return dt.date(year, month, day), o + 3


def _year(b: bytes, o: int) -> tuple[Any, int]:
    v = b[o]
    return (1900 + v if v else 0), o + 1


def _bit(nbytes: int) -> Reader:
    def read(b: bytes, o: int) -> tuple[Any, int]:
        return int.from_bytes(b[o : o + nbytes], "big"), o + nbytes

    return read


def _enum(size: int, labels: list[str]) -> Reader:
    def read(b: bytes, o: int) -> tuple[Any, int]:
        i = int.from_bytes(b[o : o + size], "little")
        return labels[i], o + size

    return read


def _set(size: int, labels: list[str]) -> Reader:
    def read(b: bytes, o: int) -> tuple[Any, int]:
        mask = int.from_bytes(b[o : o + size], "little")
        return ",".join(label for i, label in enumerate(labels) if mask >> i & 1), o + size

    return read


def _reader(c: Any) -> Reader | None:
    t = c.type
    unsigned = bool(getattr(c, "unsigned", False))
    if t == _TINY:
        return _struct_reader("<B" if unsigned else "<b")
    if t == _SHORT:
        return _struct_reader("<H" if unsigned else "<h")
    if t == _INT24:
        return _int24(unsigned)
    if t == _LONG:
        return _struct_reader("<I" if unsigned else "<i")
    if t == _LONGLONG:
        return _struct_reader("<Q" if unsigned else "<q")
    if t == _FLOAT:
        return _struct_reader("<f")
    if t == _DOUBLE:
        return _struct_reader("<d")
    if t == _YEAR:
        return _year
    if t == _NEWDECIMAL:
        return _decimal(c.precision, c.decimals)
    if t in (_VARCHAR, _VAR_STRING, _STRING):
        return _string(2 if c.max_length > 255 else 1, _encoding(c))
    if t == _BLOB:
        return _string(c.length_size, _encoding(c))
    if t == _DATE:
        return _date
    if t == _DATETIME2:
        return _datetime2(c.fsp)
    if t == _TIMESTAMP2:
        return _timestamp2(c.fsp)
    if t == _BIT:
        return _bit(c.bytes)
    if t == _ENUM and c.enum_values:
        return _enum(c.size, list(c.enum_values))
    if t == _SET and c.set_values:
        return _set(c.size, list(c.set_values))
    return None


def _is_utf8(encoding: str | None) -> bool:
    return encoding is not None and codecs.lookup(encoding).name == "utf-8"


def _utf8_shortcut(converter: Converter | None) -> Converter | None:
    """What gives ``converter``'s result straight from a utf-8 column's raw bytes, if known."""
    if converter is None:
        return None
    try:
        return UTF8_BYTES_SHORTCUTS.get(converter)
    except TypeError:  # an unhashable callable has no shortcut
        return None


_FIXED = {  # type code -> (struct format signed, unsigned); read inline by the generated code
    _TINY: ("<b", "<B"),
    _SHORT: ("<h", "<H"),
    _LONG: ("<i", "<I"),
    _LONGLONG: ("<q", "<Q"),
    _FLOAT: ("<f", "<f"),
    _DOUBLE: ("<d", "<d"),
}


# types whose inline or generated reading never gives None (the others may: zero dates)
_NEVER_NONE = frozenset((*_FIXED, _NEWDECIMAL, _VARCHAR, _VAR_STRING, _STRING, _BLOB))


def _string_prefix(c: Any) -> int | None:
    """Bytes of the length prefix of a string/blob column (read inline), None for other types."""
    if c.type in (_VARCHAR, _VAR_STRING, _STRING):
        return 2 if c.max_length > 255 else 1
    if c.type == _BLOB:
        return int(c.length_size)
    return None


class _TableRows:
    """One row image decoder, generated for the table's column layout.

    The generated code holds only integer constants: names, readers and structs are looked up
    by index in tuples, so nothing from the server ever becomes code.
    """

    __slots__ = ("_columns", "_converted", "_readers", "image", "names", "rows")

    def __init__(self, names: tuple[str, ...], columns: list[Any], readers: list[Reader]) -> None:
        self.names = names
        self._columns = list(columns)
        self._readers = tuple(readers)
        # generated images that also convert values, by the identity of their converters
        self._converted: dict[tuple[int, ...], tuple[tuple[Converter | None, ...], ImageFn, RowsFn]] = {}
        # image(b, o) -> (row, next offset); rows(b, o, end) -> the rows of b[o:end] (same code in a loop)
        self.image, self.rows = self._generate((None,) * len(names))

    def converting(self, converters: tuple[Converter | None, ...]) -> ImageFn:
        """The image function that also applies ``converters[i]`` to every non-NULL value of
        column ``i`` (generated once per set of converter objects)."""
        return self._converting(converters)[1]

    def converting_rows(self, converters: tuple[Converter | None, ...]) -> RowsFn:
        """Like ``converting`` for all the rows of ``b[o:end]`` in one call (a list)."""
        return self._converting(converters)[2]

    def _converting(self, converters: tuple[Converter | None, ...]) -> tuple[tuple[Converter | None, ...], ImageFn, RowsFn]:
        key = tuple(map(id, converters))
        cached = self._converted.get(key)
        if cached is None:
            # the converters are kept with their ids so that an id is never reused meanwhile
            cached = self._converted[key] = (converters, *self._generate(converters))
        return cached

    def _generate(self, converters: tuple[Converter | None, ...]) -> tuple[ImageFn, RowsFn]:
        names, columns, readers = self.names, self._columns, self._readers
        nbytes = (len(names) + 7) // 8
        structs: list[Any] = []
        encodings: list[str | None] = []
        shortcuts: list[Converter] = []
        converted_inline: set[int] = set()

        def value(i: int, c: Any, target: str, pad: str) -> list[str]:
            """Code that reads column ``i`` at ``o`` into ``target`` and moves ``o`` past it."""
            fixed = _FIXED.get(c.type)
            prefix = _string_prefix(c)
            if prefix is not None:
                encodings.append(_encoding(c))
                e = len(encodings) - 1
                if prefix == 1:
                    head = "n = b[o] + 1"
                elif prefix == 2:
                    head = "n = (b[o] | b[o + 1] << 8) + 2"  # cheaper than int.from_bytes on a slice
                else:
                    head = f"n = int.from_bytes(b[o:o + {prefix}], 'little') + {prefix}"
                shortcut = _utf8_shortcut(converters[i]) if _is_utf8(encodings[e]) else None
                if shortcut is not None:
                    # the converter applied to the raw utf-8 bytes: no str is made first
                    shortcuts.append(shortcut)
                    converted_inline.add(i)
                    read = f"J[{len(shortcuts) - 1}](b[o + {prefix}:o + n])"
                elif encodings[e] is None:
                    read = f"b[o + {prefix}:o + n]"
                else:
                    read = f"b[o + {prefix}:o + n].decode(E[{e}])"
                return [pad + head, f"{pad}{target} = {read}", pad + "o += n"]
            if c.type == _DATETIME2:
                # 5 bytes: sign bit, year*13+month (17 bits), day (5), hour (5), minute (6), second (6)
                nfrac, factor = _fraction(c.fsp)
                if nfrac:  # the date-time and its fraction in one read
                    head = [
                        pad + f"p = int.from_bytes(b[o:o + {5 + nfrac}], 'big')",
                        pad + (f"f = (p & {(1 << (8 * nfrac)) - 1}) * {factor}" if factor != 1 else f"f = p & {(1 << (8 * nfrac)) - 1}"),
                        pad + f"p = (p >> {8 * nfrac}) - 549755813888",
                    ]
                else:
                    head = [pad + "p = int.from_bytes(b[o:o + 5], 'big') - 549755813888", pad + "f = 0"]
                return [
                    *head,
                    pad + f"o += {5 + nfrac}",
                    pad + "ymd = p >> 17",
                    pad + "ym = ymd >> 5",
                    pad + "mo = ym % 13",
                    pad + "d = ymd & 31",
                    pad + "if mo == 0 or d == 0:",
                    f"{pad}    {target} = None",  # zero or partial date: no canonical value
                    pad + "else:",
                    pad + "    h = p & 131071",
                    f"{pad}    {target} = DT(ym // 13, mo, d, h >> 12, (h >> 6) & 63, h & 63, f)",
                ]
            if c.type == _NEWDECIMAL:
                return _decimal_code(c.precision, c.decimals, target, pad)  # inline: no call per value
            if c.type == _TINY:  # one byte: no struct call
                if getattr(c, "unsigned", False):
                    return [f"{pad}{target} = b[o]", pad + "o += 1"]
                return [f"{pad}{target} = b[o]", f"{pad}if {target} > 127:", f"{pad}    {target} -= 256", pad + "o += 1"]
            if fixed is not None:
                st = struct.Struct(fixed[1] if getattr(c, "unsigned", False) else fixed[0])
                structs.append(st.unpack_from)
                return [f"{pad}{target} = S[{len(structs) - 1}](b, o)[0]", f"{pad}o += {st.size}"]
            return [f"{pad}{target}, o = R[{i}](b, o)"]

        def convert(i: int, target: str, pad: str) -> list[str]:
            """Code that applies column ``i``'s converter to ``target`` unless it is NULL."""
            if converters[i] is None or i in converted_inline:
                return []
            if columns[i].type in _NEVER_NONE:
                return [f"{pad}{target} = C[{i}]({target})"]
            return [f"{pad}if {target} is not None:", f"{pad}    {target} = C[{i}]({target})"]

        # The NULL bitmap as an int, without its padding bits: the server sets the bits past the
        # last column to 1 (MariaDB and MySQL alike), so the bytes of a row without NULLs are not
        # all zero unless the table has a multiple of 8 columns.
        mask = (1 << len(columns)) - 1
        if nbytes == 0:
            bitmap = "0"
        elif nbytes == 1:
            bitmap = f"b[o] & {mask}"
        elif nbytes == 2:
            bitmap = f"(b[o] | b[o + 1] << 8) & {mask}"
        else:
            bitmap = f"int.from_bytes(b[o:o + {nbytes}], 'little') & {mask}"
        lines = ["def image(b, o):", f"    nulls = {bitmap}", f"    o += {nbytes}"]
        # Rows without NULLs (the usual case): straight-line code and one dict display.
        lines.append("    if not nulls:")
        i = 0
        while i < len(columns):
            # Neighbouring fixed-width columns are unpacked by one struct call.
            j = i
            while j < len(columns) and columns[j].type in _FIXED:
                j += 1
            if j - i >= 2:
                fmt = "<" + "".join(_FIXED[c.type][1 if getattr(c, "unsigned", False) else 0][1] for c in columns[i:j])
                st = struct.Struct(fmt)
                structs.append(st.unpack_from)
                lines.append(f"        {', '.join(f'v{k}' for k in range(i, j))} = S[{len(structs) - 1}](b, o)")
                lines.append(f"        o += {st.size}")
                for k in range(i, j):
                    lines += convert(k, f"v{k}", "        ")
                i = j
                continue
            lines += value(i, columns[i], f"v{i}", "        ")
            lines += convert(i, f"v{i}", "        ")
            i += 1
        lines.append("        return {" + ", ".join(f"N{i}: v{i}" for i in range(len(columns))) + "}, o")
        lines.append("    row = {}")
        for i, c in enumerate(columns):
            lines.append(f"    if nulls & {1 << i}:")
            lines.append(f"        row[N{i}] = None")
            lines.append("    else:")
            lines += value(i, c, f"v{i}", "        ")
            lines += convert(i, f"v{i}", "        ")
            lines.append(f"        row[N{i}] = v{i}")
        lines.append("    return row, o")
        namespace: dict[str, Any] = {"R": tuple(readers), "S": tuple(structs), "E": tuple(encodings), "DT": dt.datetime, "D": Decimal, "C": converters, "J": tuple(shortcuts)}
        namespace.update({f"N{i}": name for i, name in enumerate(names)})  # names are values, never code
        # The same code in a loop over the rows of a row event: no call and no tuple per row.
        loop = ["def rows(b, o, end):", "    out = []", "    append = out.append", "    while o < end:"]
        for line in lines[1:]:
            stripped = line.lstrip()
            pad = "    " + line[: len(line) - len(stripped)]
            if stripped.startswith("return {"):
                loop += [pad + "append(" + stripped[len("return ") : -len(", o")] + ")", pad + "continue"]
            elif stripped == "return row, o":
                loop.append(pad + "append(row)")
            else:
                loop.append("    " + line)
        loop.append("    return out")
        code = "\n".join(lines) + "\n\n\n" + "\n".join(loop)
        exec(compile(code, "<zetl row image>", "exec"), namespace)  # noqa: S102 - generated from integers only
        return namespace["image"], namespace["rows"]


class RowDecoder:
    """Decodes the rows of pymysqlreplication row events (see the module doc). Not thread-safe."""

    def __init__(self) -> None:
        self._tables: dict[int, tuple[Any, tuple[Any, ...], _TableRows | None]] = {}

    def clear(self) -> None:
        """Forget the decoders (call when the reader's table maps are cleared)."""
        self._tables.clear()

    def _for(self, event: Any) -> _TableRows | None:
        table = event.table_map.get(event.table_id)
        if table is None:
            return None
        cached = self._tables.get(event.table_id)
        if cached is not None and cached[0] is table:
            return cached[2]
        columns = table.columns
        # A re-parsed table map of the same layout reuses the generated decoder.
        layout = tuple(
            (getattr(c, "name", None), c.type, getattr(c, "unsigned", False), getattr(c, "max_length", None), getattr(c, "length_size", None),
             getattr(c, "precision", None), getattr(c, "decimals", None), getattr(c, "fsp", None), getattr(c, "bytes", None), getattr(c, "size", None),
             getattr(c, "character_set_name", None), tuple(getattr(c, "enum_values", None) or ()), tuple(getattr(c, "set_values", None) or ()))
            for c in columns
        )
        if cached is not None and cached[1] == layout:
            self._tables[event.table_id] = (table, layout, cached[2])
            return cached[2]
        names = tuple(getattr(c, "name", None) for c in columns)
        decoder: _TableRows | None = None
        if all(names) and len(set(names)) == len(names):
            try:
                readers = [_reader(c) for c in columns]
            except (LookupError, AttributeError):
                readers = [None]
            if all(r is not None for r in readers):
                decoder = _TableRows(names, list(columns), readers)  # type: ignore[arg-type]
        self._tables[event.table_id] = (table, layout, decoder)
        return decoder

    def rows(self, event: Any, update: bool) -> list[Any] | None:
        """The event's rows: value dicts, or (before, after) pairs for an update. None: the
        event is left to the library (nothing was consumed)."""
        decoder = self._usable(event, update)
        if decoder is None:
            return None
        return self._read(event, update, decoder.image, decoder.rows)

    def converted_rows(self, event: Any, update: bool, names: AbstractSet[str], converters: Mapping[str, Converter]) -> list[Any] | None:
        """Like ``rows`` with ``converters[name]`` applied to every non-NULL value of column
        ``name`` while decoding. Only when the event's columns are exactly ``names`` (the
        schema the converters belong to); otherwise None and nothing was consumed (use ``rows``)."""
        decoder = self._usable(event, update)
        if decoder is None or not names.issuperset(decoder.names) or len(names) != len(decoder.names):
            return None
        _, image, rows = decoder._converting(tuple(converters.get(n) for n in decoder.names))
        return self._read(event, update, image, rows)

    def _usable(self, event: Any, update: bool) -> _TableRows | None:
        """The decoder for the event, None when the library has to decode it."""
        if getattr(event, "complete", True) is False or not hasattr(event, "table_map"):
            return None
        decoder = self._for(event)
        if decoder is None or event.number_of_columns != len(decoder.names):
            return None
        full = b"\xff" * (len(decoder.names) // 8) + (bytes([(1 << (len(decoder.names) % 8)) - 1]) if len(decoder.names) % 8 else b"")
        if bytes(event.columns_present_bitmap) != full or (update and bytes(event.columns_present_bitmap2) != full):
            return None
        return decoder

    @staticmethod
    def _read(event: Any, update: bool, image: ImageFn, rows: RowsFn) -> list[Any]:
        data = event.packet.read(event.event_size - event.packet.read_bytes)
        if not update:
            return rows(data, 0, len(data))
        out: list[Any] = []
        o, end = 0, len(data)
        while o < end:
            before, o = image(data, o)
            after, o = image(data, o)
            out.append((before, after))
        return out
