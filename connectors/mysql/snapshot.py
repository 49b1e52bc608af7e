"""The initial copy: a consistent snapshot read by primary key into Arrow chunks.

The binlog coordinate (and GTID state) is read under the snapshot transaction, so streaming from
it continues exactly where the copy's view of the data ends: no gap, no overlap (see
``begin_consistent_snapshot`` for how each server kind and privilege set gets there).
"""

from __future__ import annotations

import decimal
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from zetl_connectors.mysql.catalog import quote_ident, quote_table, selected_tables
from zetl_connectors.mysql.connection import pymysql
from zetl_connectors.mysql.convert import snapshot_converter
from zetl_connectors.mysql.position import MySQLPosition

from zetl.errors import SourceError
from zetl.events import TableId
from zetl.plugin import TableSelector
from zetl.schema.types import Field, Schema, TypeKind

__all__ = ["SnapshotChunk", "begin_consistent_snapshot", "current_position", "read_table"]


def _set_session(cur: Any) -> None:
    # UTC so that TIMESTAMP values arrive as UTC; long network timeouts because the reader may
    # wait on a slow sink between two fetches of an unbuffered result.
    cur.execute("SET SESSION time_zone = '+00:00'")
    cur.execute("SET SESSION net_write_timeout = 3600, net_read_timeout = 3600")
    cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")


# MySQL >= 8.4 answers SHOW MASTER STATUS with a syntax error.
_PARSE_ERROR = 1064


def _master_status(cur: Any) -> tuple[str, int, str | None]:
    """File, offset and (MySQL) executed GTID set of the binlog's end, from ``SHOW MASTER STATUS``
    (``SHOW BINARY LOG STATUS`` on MySQL >= 8.4, which no longer knows the former)."""
    try:
        cur.execute("SHOW MASTER STATUS")
    except pymysql().err.ProgrammingError as exc:
        if not exc.args or exc.args[0] != _PARSE_ERROR:
            raise
        cur.execute("SHOW BINARY LOG STATUS")
    row = cur.fetchone()
    if row is None:
        raise SourceError("SHOW MASTER STATUS returned nothing: the binlog is off (set log_bin and restart the server)", retryable=False)
    gtid = row[4] if len(row) > 4 else None  # MariaDB has no GTID column here
    return str(row[0]), int(row[1]), (str(gtid).replace("\n", "") or None) if gtid else None


def current_position(conn: Any, mariadb: bool) -> MySQLPosition:
    """The server's binlog coordinate now (for ``snapshot: never``)."""
    with conn.cursor() as cur:
        file, pos, gtid = _master_status(cur)
        if mariadb:
            cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, pos))
            gtid = cur.fetchone()[0]
    return MySQLPosition(file, pos, (gtid or "").replace("\n", "") or None)


# Refusals of FLUSH TABLES WITH READ LOCK for want of the RELOAD privilege (RDS/Aurora answer
# 1045 even to their master user; servers answer 1227 "you need the RELOAD privilege").
_LOCK_REFUSED = frozenset({1044, 1045, 1142, 1227})
# LOCK TABLES on a table dropped since it was listed.
_NO_SUCH_TABLE = 1146
_LOCK_WAIT_TIMEOUT = 1205
_LOCK_ATTEMPTS = 3
_LOCK_WAIT_SECONDS = 120


def begin_consistent_snapshot(
    conn: Any,
    mariadb: bool,
    log: logging.Logger,
    *,
    selector: TableSelector | None = None,
    lock_connection: Callable[[], Any] | None = None,
) -> MySQLPosition:
    """Open a consistent-snapshot transaction on ``conn``; return the binlog coordinate it matches.

    Guarantee: every transaction that changed a selected table is either visible to the snapshot
    and before the coordinate, or invisible to it and after the coordinate (no gap, no overlap).

    * MariaDB reports the coordinate of the snapshot itself (``binlog_snapshot_file/position``):
      no lock at all.
    * MySQL: a global read lock (``FLUSH TABLES WITH READ LOCK``, ``RELOAD`` privilege) held
      while the transaction starts and the coordinate is read; every commit waits a moment.
    * MySQL without ``RELOAD`` (RDS/Aurora): when the global lock is refused, and ``selector``
      and ``lock_connection`` are given, ``LOCK TABLES <each selected table> READ`` is taken on
      a second connection instead (``LOCK TABLES`` and ``SELECT`` privileges); see
      ``_begin_under_table_locks`` for why that keeps the same guarantee for the selected
      tables. Writers of those tables wait a moment; other tables are not held up.

    ``performance_schema.log_status`` (MySQL 8, ``BACKUP_ADMIN``) is not used: it reports a
    binlog coordinate without blocking commits, but nothing ties that coordinate to the read
    view of a transaction, so it cannot place a snapshot on the binlog by itself.

    Raises:
        SourceError: the global read lock is refused and no table-lock fallback is possible
            (says which privileges to grant).
    """
    driver = pymysql()
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
            try:
                cur.execute("FLUSH TABLES WITH READ LOCK")
            except driver.err.MySQLError as exc:
                code = exc.args[0] if exc.args else None
                if code not in _LOCK_REFUSED:
                    raise
                if selector is None or lock_connection is None:
                    raise SourceError(
                        f"the snapshot needs a global read lock and the server refused it ({exc.args[-1]}): grant the"
                        " RELOAD privilege, or LOCK TABLES on the selected tables",
                        retryable=False,
                    ) from exc
                log.warning(
                    "FLUSH TABLES WITH READ LOCK refused (%s): locking only the selected tables (LOCK TABLES ... READ)"
                    " while the snapshot starts; their writers wait a moment. Grant RELOAD to use the global lock instead",
                    exc.args[-1],
                )
                file, pos, gtid = _begin_under_table_locks(conn, selector, lock_connection, log)
            else:
                try:
                    cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                    file, pos, gtid = _master_status(cur)
                finally:
                    cur.execute("UNLOCK TABLES")
    position = MySQLPosition(file, pos, gtid.replace("\n", "") if gtid else None)
    log.info("consistent snapshot at %s", position)
    return position


def _begin_under_table_locks(conn: Any, selector: TableSelector, lock_connection: Callable[[], Any], log: logging.Logger) -> tuple[str, int, str | None]:
    """Start the snapshot transaction on ``conn`` while a second connection holds
    ``LOCK TABLES <selected> READ``; the binlog coordinate is read inside the transaction.

    Why a second connection: ``START TRANSACTION`` releases the table locks of its own session
    (and ``LOCK TABLES`` ends an open transaction), so one session cannot hold both.

    Why there is no gap and no overlap for the selected tables:
      * ``LOCK TABLES ... READ`` returns only once no transaction that wrote one of them is still
        open (the write's metadata lock is held until the transaction has fully committed, and a
        commit is in the binlog before it is visible), and until ``UNLOCK TABLES`` no statement
        can write one of them.
      * So while the lock is held, no change to them commits: the snapshot started then sees
        every change to them that is before the coordinate read then, and none after it.
    Transactions of other tables go on meanwhile; they do not matter to this integration.

    A selected table created between listing the tables and locking them would not be covered:
    the list is read again under the lock, and the lock taken again with the new list
    (``_LOCK_ATTEMPTS`` times at most).
    """
    driver = pymysql()
    tables = selected_tables(conn, selector)
    locker = lock_connection()
    try:
        with locker.cursor() as lock_cur:
            # a long transaction on a selected table makes LOCK TABLES wait, and new writers queue
            # behind it: give up after a bounded wait (error 1205, retried by the runner)
            lock_cur.execute("SET SESSION lock_wait_timeout = %s", (_LOCK_WAIT_SECONDS,))
            for attempt in range(1, _LOCK_ATTEMPTS + 1):
                if tables:
                    try:
                        lock_cur.execute("LOCK TABLES " + ", ".join(f"{quote_table(t)} READ" for t in tables))
                    except driver.err.MySQLError as exc:
                        code = exc.args[0] if exc.args else None
                        if code == _NO_SUCH_TABLE and attempt < _LOCK_ATTEMPTS:
                            tables = selected_tables(conn, selector)  # dropped meanwhile
                            continue
                        if code == _LOCK_WAIT_TIMEOUT:
                            raise SourceError(
                                f"LOCK TABLES waited {_LOCK_WAIT_SECONDS} s for transactions still open on the selected tables"
                                f" ({', '.join(map(str, tables))}) to end; the snapshot starts again later. Long transactions on"
                                " them delay the snapshot (granting RELOAD lets it use the global read lock instead)",
                                retryable=True,
                            ) from exc
                        if code in _LOCK_REFUSED:
                            raise SourceError(
                                f"the snapshot needs a lock to start without gap or overlap and the server refused both"
                                f" FLUSH TABLES WITH READ LOCK and LOCK TABLES ({exc.args[-1]}): grant RELOAD (global lock) or"
                                " LOCK TABLES on the selected tables' databases, e.g. GRANT LOCK TABLES ON `db`.* TO <user>",
                                retryable=False,
                            ) from exc
                        raise
                try:
                    locked_now = selected_tables(locker, selector)
                    if set(locked_now) - set(tables):
                        log.info("tables created while the snapshot lock was taken (%s): locking again", ", ".join(map(str, sorted(set(locked_now) - set(tables)))))
                        tables = locked_now
                        if attempt < _LOCK_ATTEMPTS:
                            continue
                        raise SourceError(
                            f"selected tables kept being created while the snapshot lock was taken ({_LOCK_ATTEMPTS} attempts); retrying later",
                            retryable=True,
                        )
                    with conn.cursor() as cur:
                        cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                        return _master_status(cur)
                finally:
                    if tables:
                        lock_cur.execute("UNLOCK TABLES")
    finally:
        locker.close()
    raise AssertionError("unreachable: every attempt returns, continues or raises")


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
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # zero dates, out-of-range values: converted (or reported) one by one
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


def read_table(
    conn: Any, schema: Schema, after: tuple[Any, ...] | None, chunk_rows: int, stop: Callable[[], bool], reads: Callable[[str], bool] | None = None
) -> Iterator[SnapshotChunk]:
    """Rows of one table in primary-key order, after ``after`` (a key), ``chunk_rows`` at a time.

    ``reads(column)`` False: a column nothing downstream uses, selected as NULL (never read nor
    converted; key columns are always read).

    One unbuffered query streams the table; every chunk carries the key of its last row, where a
    resumed snapshot continues. Tables without a primary key are read whole (a resume reads them
    again from the start).
    """
    import pymysql.cursors

    pk = schema.primary_key
    cols = ", ".join(quote_ident(f.name) if reads is None or f.name in pk or reads(f.name) else "NULL" for f in schema.fields)
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
