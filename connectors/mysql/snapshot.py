"""The initial copy: a consistent snapshot read by primary key into Arrow chunks.

The binlog coordinate (and GTID state) is read under the snapshot transaction, so streaming from
it continues exactly where the copy's view of the data ends: no gap, no overlap.
"""

from __future__ import annotations

import decimal
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from zetl_connectors.mysql.catalog import quote_ident, quote_table
from zetl_connectors.mysql.convert import snapshot_converter
from zetl_connectors.mysql.position import MySQLPosition

from zetl.events import TableId
from zetl.schema.types import Field, Schema, TypeKind

__all__ = ["SnapshotChunk", "begin_consistent_snapshot", "current_position", "read_table"]


def _set_session(cur: Any) -> None:
    # UTC so that TIMESTAMP values arrive as UTC; long network timeouts because the reader may
    # wait on a slow sink between two fetches of an unbuffered result.
    cur.execute("SET SESSION time_zone = '+00:00'")
    cur.execute("SET SESSION net_write_timeout = 3600, net_read_timeout = 3600")
    cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")


def current_position(conn: Any, mariadb: bool) -> MySQLPosition:
    """The server's binlog coordinate now (for ``snapshot: never``)."""
    with conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        row = cur.fetchone()
        if row is None:
            raise RuntimeError("SHOW MASTER STATUS returned nothing: the binlog is off")
        file, pos = row[0], int(row[1])
        if mariadb:
            cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, pos))
            gtid = cur.fetchone()[0]
        else:
            gtid = row[4] if len(row) > 4 else None
    return MySQLPosition(file, pos, (gtid or "").replace("\n", "") or None)


def begin_consistent_snapshot(conn: Any, mariadb: bool, log: logging.Logger) -> MySQLPosition:
    """Open a consistent-snapshot transaction on ``conn``; return the binlog coordinate it matches.

    MariaDB reports that coordinate without any lock (``binlog_snapshot_file/position``); MySQL
    needs a brief global read lock while the transaction starts (``RELOAD`` privilege).
    """
    with conn.cursor() as cur:
        _set_session(cur)
        if mariadb:
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            cur.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
            status = {str(k).lower(): v for k, v in cur.fetchall()}
            file, pos = status["binlog_snapshot_file"], int(status["binlog_snapshot_position"])
            cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, pos))
            gtid = cur.fetchone()[0] or None
        else:
            cur.execute("FLUSH TABLES WITH READ LOCK")
            try:
                cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                cur.execute("SHOW MASTER STATUS")
                row = cur.fetchone()
                file, pos = row[0], int(row[1])
                gtid = (row[4] if len(row) > 4 else "") or None
            finally:
                cur.execute("UNLOCK TABLES")
    position = MySQLPosition(file, pos, gtid.replace("\n", "") if gtid else None)
    log.info("consistent snapshot at %s", position)
    return position


@dataclass
class SnapshotChunk:
    rows: Any  # pyarrow.Table
    last_key: tuple[Any, ...] | None
    count: int


_CAST_KINDS = {
    TypeKind.INT16, TypeKind.INT32, TypeKind.INT64, TypeKind.FLOAT32, TypeKind.FLOAT64, TypeKind.DECIMAL,
    TypeKind.DATE, TypeKind.TIMESTAMP, TypeKind.TIMESTAMPTZ,
}
_TEXT_KINDS = {TypeKind.STRING, TypeKind.JSON, TypeKind.UUID}


def _text_to_python(field: Field) -> Callable[[bytes], Any]:
    """How PyMySQL would turn the text of one value into a Python value (the exact, slow path)."""
    from pymysql.converters import convert_date, convert_datetime, convert_timedelta

    kind = field.type.kind
    if field.source_type and field.source_type.lower().startswith("bit"):
        return lambda raw: raw
    if kind in (TypeKind.INT16, TypeKind.INT32, TypeKind.INT64):
        return lambda raw: int(raw)
    if kind is TypeKind.DECIMAL:
        return lambda raw: decimal.Decimal(raw.decode())
    if kind in (TypeKind.FLOAT32, TypeKind.FLOAT64):
        return lambda raw: float(raw)
    if kind is TypeKind.DATE:
        return lambda raw: convert_date(raw.decode())
    if kind in (TypeKind.TIMESTAMP, TypeKind.TIMESTAMPTZ):
        return lambda raw: convert_datetime(raw.decode())
    if kind is TypeKind.TIME:
        return lambda raw: convert_timedelta(raw.decode())
    if kind is TypeKind.BINARY:
        return lambda raw: bytes(raw)
    return lambda raw: raw.decode("utf-8")


def _column_builder(schema: Schema) -> Callable[[list[list[Any]]], Any]:
    """Builds the Arrow table of a chunk from the raw text values of its rows (column by column:
    Arrow's casts parse numbers, decimals, dates and timestamps in C; values they refuse, such as
    zero dates, take the exact per-value path)."""
    import pyarrow as pa

    from zetl.arrow import arrow_schema

    arrow = arrow_schema(schema)
    plan: list[tuple[Field, Any, str, Any, Any]] = []
    for f, af in zip(schema.fields, arrow):
        is_bit = bool(f.source_type and f.source_type.lower().startswith("bit"))
        kind = f.type.kind
        if kind in _CAST_KINDS and not is_bit:
            how = "cast"
        elif kind in _TEXT_KINDS:
            how = "text"
        elif kind is TypeKind.BINARY:
            how = "binary"
        else:
            how = "python"
        conv = snapshot_converter(f, f"table {schema.table}, column {f.name}")
        plan.append((f, af.type, how, _text_to_python(f), conv))

    def exact(values: Any, parse: Callable[[bytes], Any], conv: Any, atype: Any) -> Any:
        out = [None if v is None else parse(v) for v in values]
        if conv is not None:
            out = [None if v is None else conv(v) for v in out]
        return pa.array(out, type=atype)

    def build(rows: list[list[Any]]) -> Any:
        columns = list(zip(*rows)) if rows else [() for _ in plan]
        arrays = []
        for (f, atype, how, parse, conv), values in zip(plan, columns):
            if how == "binary":
                arrays.append(pa.array(values, type=pa.binary()))
            elif how == "text":
                arrays.append(pa.array(values, type=pa.binary()).cast(pa.string()))
            elif how == "cast":
                try:
                    text = pa.array(values, type=pa.binary()).cast(pa.string())
                    if f.type.kind is TypeKind.TIMESTAMPTZ:
                        arrays.append(text.cast(pa.timestamp("us")).cast(atype))
                    else:
                        arrays.append(text.cast(atype))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    arrays.append(exact(values, parse, conv, atype))
            else:
                arrays.append(exact(values, parse, conv, atype))
        return pa.Table.from_arrays(arrays, schema=arrow)

    return build


def _split_row(data: bytes, ncols: int) -> list[Any]:
    """The values of one text-protocol row packet as raw bytes (None for NULL)."""
    out: list[Any] = []
    append = out.append
    pos = 0
    for _ in range(ncols):
        n = data[pos]
        if n < 251:
            pos += 1
        elif n == 251:
            append(None)
            pos += 1
            continue
        elif n == 252:
            n = data[pos + 1] | (data[pos + 2] << 8)
            pos += 3
        elif n == 253:
            n = data[pos + 1] | (data[pos + 2] << 8) | (data[pos + 3] << 16)
            pos += 4
        else:
            n = int.from_bytes(data[pos + 1 : pos + 9], "little")
            pos += 9
        append(data[pos : pos + n])
        pos += n
    return out


def _raw_rows(conn: Any, cur: Any, ncols: int, count: int) -> list[list[Any]]:
    """Up to ``count`` rows of the unbuffered result as raw values, read straight from the
    connection's packets (PyMySQL's per-value decoding and conversion is most of the snapshot's
    cost otherwise)."""
    result = cur._result
    if result is None or not result.unbuffered_active:
        return []
    read_packet = conn._read_packet
    is_eof = result._check_packet_is_eof
    rows: list[list[Any]] = []
    append = rows.append
    for _ in range(count):
        packet = read_packet()
        if is_eof(packet):
            result.unbuffered_active = False
            result.connection = None
            result.rows = None
            break
        append(_split_row(packet._data, ncols))
    return rows


def read_table(conn: Any, schema: Schema, after: tuple[Any, ...] | None, chunk_rows: int, stop: Callable[[], bool]) -> Iterator[SnapshotChunk]:
    """Rows of one table in primary-key order, after ``after`` (a key), ``chunk_rows`` at a time.

    One unbuffered query streams the table; every chunk carries the key of its last row, where a
    resumed snapshot continues. Tables without a primary key are read whole (a resume reads them
    again from the start).
    """
    import pymysql.cursors

    pk = schema.primary_key
    cols = ", ".join(quote_ident(f.name) for f in schema.fields)
    sql = f"SELECT {cols} FROM {quote_table(schema.table)}"
    params: tuple[Any, ...] = ()
    if pk:
        if after is not None:
            sql += f" WHERE ({', '.join(quote_ident(c) for c in pk)}) > ({', '.join(['%s'] * len(pk))})"
            params = tuple(after)
        sql += " ORDER BY " + ", ".join(quote_ident(c) for c in pk)
    key_index = [schema.names.index(c) for c in pk]
    key_binary = [schema.fields[i].type.kind is TypeKind.BINARY for i in key_index]
    build = _column_builder(schema)
    ncols = len(schema.fields)
    cur = conn.cursor(pymysql.cursors.SSCursor)
    try:
        cur.execute(sql, params or None)
        while not stop():
            rows = _raw_rows(conn, cur, ncols, chunk_rows)
            if not rows:
                break
            last = rows[-1]
            key = tuple(bytes(last[i]) if binary else bytes(last[i]).decode("utf-8") for i, binary in zip(key_index, key_binary)) if key_index else None
            yield SnapshotChunk(build(rows), key, len(rows))
    finally:
        if not stop():
            cur.close()  # an unbuffered cursor drains the rest on close: skip that when stopping


def estimate_rows(conn: Any, table: TableId) -> int | None:
    with conn.cursor() as cur:
        cur.execute("SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s", (table.namespace, table.name))
        row = cur.fetchone()
    return int(row[0]) if row and row[0] is not None else None
