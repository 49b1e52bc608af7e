"""The initial copy: a consistent snapshot read by primary key into Arrow chunks.

The binlog coordinate (and GTID state) is read under the snapshot transaction, so streaming from
it continues exactly where the copy's view of the data ends: no gap, no overlap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from zetl.events import TableId
from zetl.schema.types import Schema, TypeKind

from zetl_connectors.mysql.catalog import quote_ident, quote_table
from zetl_connectors.mysql.convert import snapshot_converter
from zetl_connectors.mysql.position import MySQLPosition

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


def _column_builder(schema: Schema) -> Callable[[list[tuple[Any, ...]]], Any]:
    import pyarrow as pa

    from zetl.arrow import arrow_schema

    arrow = arrow_schema(schema)
    plan: list[tuple[Any, Any]] = []
    for f, af in zip(schema.fields, arrow):
        conv = None if f.type.kind is TypeKind.JSON else snapshot_converter(f, f"table {schema.table}, column {f.name}")
        plan.append((conv, af.type))

    def build(rows: list[tuple[Any, ...]]) -> Any:
        columns = list(zip(*rows)) if rows else [() for _ in plan]
        arrays = []
        for (conv, atype), values in zip(plan, columns):
            if conv is not None:
                values = [None if v is None else conv(v) for v in values]
            arrays.append(pa.array(values, type=atype))
        return pa.Table.from_arrays(arrays, schema=arrow)

    return build


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
    build = _column_builder(schema)
    cur = conn.cursor(pymysql.cursors.SSCursor)
    try:
        cur.execute(sql, params or None)
        while not stop():
            rows = cur.fetchmany(chunk_rows)
            if not rows:
                break
            last = rows[-1]
            yield SnapshotChunk(build(rows), tuple(last[i] for i in key_index) if key_index else None, len(rows))
    finally:
        if not stop():
            cur.close()  # an unbuffered cursor drains the rest on close: skip that when stopping


def estimate_rows(conn: Any, table: TableId) -> int | None:
    with conn.cursor() as cur:
        cur.execute("SELECT TABLE_ROWS FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s", (table.namespace, table.name))
        row = cur.fetchone()
    return int(row[0]) if row and row[0] is not None else None
