"""Reading a table into Arrow, chunk by chunk in primary-key order, inside a given snapshot.

Rows follow the core's Arrow layout (``zetl.arrow``: uuid and json as text, field metadata with the
canonical type). Each chunk is one ``COPY (SELECT ... WHERE key > last ORDER BY key LIMIT n) TO STDOUT (FORMAT
csv)``; pyarrow's CSV reader turns the text into typed columns in C++. Measured on the benchmark
table (10 columns, 500k rows), this is several times faster than ``COPY ... (FORMAT binary)`` with
psycopg's per-value loaders, which run Python code for every value (see BENCHMARKS.md).
Types pyarrow cannot parse from Postgres text (bytea, arrays, strings of other types) are read as
text and converted with the same decoders as the change stream.

When pyarrow refuses a value of a chunk (an ``infinity`` timestamp, a NaN), that chunk is read
again as text and every non-text column is converted value by value with those decoders, into
the same Arrow types as the fast path; text columns (string, json, uuid) keep their text as it
is. Columns the integration does not use (``PluginContext.columns``: excluded and not named by a
row filter) are not selected at all: they arrive as NULL, so a value zetl cannot decode in such
a column never stops the table.

Guarantees: chunks are disjoint and, concatenated, hold every row of the table visible in the
transaction's snapshot exactly once; the key of a chunk's last row is returned with it, so that
reading can resume after it.
"""

from __future__ import annotations

import csv as csv_module
import datetime as dt
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

from zetl.errors import SourceError, exclude_advice
from zetl.schema.types import DataType, Schema, TypeKind

from .decoding import Decoder, decoder_for, parse_array

if TYPE_CHECKING:
    import psycopg
    import pyarrow as pa

__all__ = ["ChunkReader"]

# Canonical kinds whose Postgres text pyarrow's CSV reader parses directly into the Arrow type.
# uuid and json are carried as their text, which is exactly what Postgres prints.
_ARROW_PARSES = {
    TypeKind.BOOLEAN, TypeKind.INT16, TypeKind.INT32, TypeKind.INT64, TypeKind.FLOAT32, TypeKind.FLOAT64,
    TypeKind.DECIMAL, TypeKind.STRING, TypeKind.DATE, TypeKind.TIME, TypeKind.TIMESTAMP, TypeKind.UUID, TypeKind.JSON,
}  # fmt: skip


@dataclass
class _Column:
    name: str
    arrow: Any
    csv_type: Any  # what the CSV reader produces
    convert: str  # "none", "utc", "python", "unread" (selected as NULL)


_naive_timestamp = decoder_for(DataType(TypeKind.TIMESTAMP))


def _utc_from_naive(text: str) -> dt.datetime:
    return _naive_timestamp(text).replace(tzinfo=dt.timezone.utc)


def _text_as_is(text: str) -> str:
    return text


def _layout_decoder(data_type: DataType) -> Decoder:
    """The decoder of a value into the Arrow layout (``zetl.arrow``): the stream's decoder,
    except that uuid and json stay the text Postgres printed (also as list elements)."""
    if data_type.kind in (TypeKind.UUID, TypeKind.JSON, TypeKind.STRING):
        return _text_as_is
    if data_type.kind is TypeKind.LIST and data_type.element is not None:
        element = _layout_decoder(data_type.element)
        return lambda text: parse_array(text, element)
    return decoder_for(data_type)


class ChunkReader:
    """Reads one table of a snapshot transaction in key-ordered chunks of ``chunk_rows`` rows."""

    def __init__(self, conn: "psycopg.Connection[Any]", schema: Schema, chunk_rows: int, reads: Callable[[str], bool] | None = None) -> None:
        """``reads(column)``: False for a column nothing downstream uses; it is selected as NULL
        (key columns are always read)."""
        import pyarrow as pa
        from psycopg import sql

        from zetl.arrow import arrow_schema

        self._arrow_schema = arrow_schema(schema)
        self.conn = conn
        self.schema = schema
        self.chunk_rows = chunk_rows
        self.key = schema.primary_key
        self.columns: list[_Column] = []
        select: list[Any] = []
        for f in schema.fields:
            ident = sql.Identifier(f.name)
            target = self._arrow_schema.field(f.name).type
            if reads is not None and f.name not in schema.primary_key and not reads(f.name):
                self.columns.append(_Column(f.name, target, pa.string(), "unread"))
                select.append(sql.SQL("NULL"))
            elif f.type.kind in _ARROW_PARSES:
                self.columns.append(_Column(f.name, target, target, "none"))
                select.append(ident)
            elif f.type.kind is TypeKind.TIMESTAMPTZ:
                # the session time zone is UTC; drop the offset in SQL so the CSV reader parses it
                self.columns.append(_Column(f.name, target, pa.timestamp("us"), "utc"))
                select.append(sql.SQL("({} AT TIME ZONE 'UTC')").format(ident))
            else:
                self.columns.append(_Column(f.name, target, pa.string(), "python"))
                select.append(ident)
        self._decoders = {f.name: _layout_decoder(f.type) for f in schema.fields}
        for col in self.columns:
            if col.convert == "utc":  # selected AT TIME ZONE 'UTC': the text has no offset
                self._decoders[col.name] = _utc_from_naive
        self._key_index = [schema.names.index(k) for k in self.key]
        self._select = sql.SQL(", ").join(select)
        self._from = sql.Identifier(schema.table.namespace, schema.table.name)
        self._order = sql.SQL(", ").join(sql.Identifier(k) for k in self.key)

    def _query(self, after: tuple[str, ...] | None) -> Any:
        from psycopg import sql

        if not self.key:  # no key: the whole table in one read (resuming re-reads it)
            return sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT csv)").format(self._select, self._from)
        where = sql.SQL("")
        if after is not None:
            # COPY takes no bind parameters: the bound is written as properly escaped literals
            # (psycopg's sql.Literal), compared as a row value in key order.
            keys = sql.SQL(", ").join(sql.Identifier(k) for k in self.key)
            values = sql.SQL(", ").join(sql.Literal(v) for v in after)
            where = sql.SQL(" WHERE ({}) > ({})").format(keys, values)
        return sql.SQL("COPY (SELECT {} FROM {}{} ORDER BY {} LIMIT {}) TO STDOUT (FORMAT csv)").format(
            self._select, self._from, where, self._order, sql.Literal(self.chunk_rows)
        )

    def chunks(self, after: tuple[str, ...] | None = None) -> Iterator[tuple["pa.Table", tuple[str, ...] | None]]:
        """Yield ``(rows, last_key)`` per chunk, starting after key ``after`` (None: from the start).

        ``last_key`` is the key of the chunk's last row in Postgres text form. While a chunk is
        parsed (pyarrow releases the GIL), the next one is already being fetched: its bound is
        read from the raw text of the last row, so fetching never waits for parsing.
        """
        with ThreadPoolExecutor(1, thread_name_prefix="zetl-pg-snapshot") as pool:
            pending = pool.submit(self.fetch, after)
            while True:
                rows = pending.result()
                if not rows:
                    return
                last_key = self.key_of(rows[-1]) if self.key else None
                more = bool(self.key) and len(rows) >= self.chunk_rows
                if more:
                    pending = pool.submit(self.fetch, last_key)
                table = self.parse(b"".join(rows))
                del rows
                yield table, last_key
                if not more:
                    return

    def key_of(self, row: Any) -> tuple[str, ...]:
        """The key columns of one raw CSV row, in Postgres text form."""
        fields = next(csv_module.reader([bytes(row).decode()]))
        return tuple(fields[i] for i in self._key_index)

    def fetch(self, after: tuple[str, ...] | None) -> list[Any]:
        """The raw CSV rows of one chunk (one buffer per row, as libpq hands them over).

        Uses libpq directly: psycopg's Python-level COPY iteration costs about as much again.
        Raises psycopg errors (mapped by the caller).
        """
        import psycopg
        from psycopg import pq

        pgconn = self.conn.pgconn
        pgconn.send_query(self._query(after).as_bytes(self.conn))
        result = pgconn.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_OUT:
            message = (result.error_message if result is not None else pgconn.error_message).decode(errors="replace").strip()
            while pgconn.get_result() is not None:
                pass
            if pgconn.status != pq.ConnStatus.OK:
                raise psycopg.OperationalError(message)
            raise psycopg.DatabaseError(message)
        rows: list[Any] = []
        append = rows.append
        get = pgconn.get_copy_data
        while True:
            nbytes, data = get(0)
            if nbytes <= 0:
                break
            append(data)
        if nbytes == -2:
            raise psycopg.OperationalError(pgconn.error_message.decode(errors="replace").strip())
        error = None
        while (result := pgconn.get_result()) is not None:
            if result.status != pq.ExecStatus.COMMAND_OK:
                error = result.error_message.decode(errors="replace").strip()
        if error:
            raise psycopg.DatabaseError(error)
        return rows

    def read_chunk(self, after: tuple[str, ...] | None) -> "pa.Table":
        """One chunk as an Arrow table in the canonical Arrow types."""
        return self.parse(b"".join(self.fetch(after)))

    def parse(self, data: bytes) -> "pa.Table":
        """Postgres CSV text of this table's select list -> Arrow table of the canonical types."""
        import pyarrow as pa

        if not data:
            return self._arrow_schema.empty_table()
        try:
            table = self._read_csv(data, {c.name: c.csv_type for c in self.columns})
            python = {c.name for c in self.columns if c.convert == "python"}
        except pa.ArrowInvalid:
            # A value Arrow's parsers refuse (infinity timestamps, NaN): this chunk goes through
            # the exact per-value decoders, into the same Arrow types; text stays text.
            table = self._read_csv(data, {c.name: pa.string() for c in self.columns})
            python = {c.name for c in self.columns if c.convert != "unread" and not (c.convert == "none" and c.arrow == pa.string())}
        arrays = []
        for i, col in enumerate(self.columns):
            arr = table.column(i)
            if col.convert == "unread":
                arr = pa.nulls(len(arr), col.arrow)
            elif col.name in python:
                decode = self._decoders[col.name]
                try:
                    arr = pa.array([None if v is None else decode(v) for v in arr.to_pylist()], type=col.arrow)
                except (ValueError, TypeError, ArithmeticError, pa.ArrowException) as exc:
                    raise SourceError(
                        f"cannot read column {col.name!r} of table {self.schema.table} as {col.arrow}: {exc}. {exclude_advice(self.schema.table, col.name)}",
                        retryable=False,
                    ) from None
            elif col.convert == "utc":
                arr = arr.cast(col.arrow)
            arrays.append(arr)
        return pa.Table.from_arrays(arrays, schema=self._arrow_schema)

    def _read_csv(self, data: bytes, types: dict[str, Any]) -> "pa.Table":
        import pyarrow.csv as csv

        return csv.read_csv(
            io.BytesIO(data),
            read_options=csv.ReadOptions(column_names=[c.name for c in self.columns], block_size=1 << 24),
            parse_options=csv.ParseOptions(newlines_in_values=True),
            convert_options=csv.ConvertOptions(
                column_types=types,
                true_values=["t"],
                false_values=["f"],
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
