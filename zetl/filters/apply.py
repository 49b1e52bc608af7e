"""Applying a table's filters: row filter first (on the source's full row), then column
selection and masks.

``TableFilter`` is bound to one table and its source schema. It changes the schema the sink
sees (``target_schema``: excluded columns gone, hashed columns become strings, null-masked
columns nullable) and each row accordingly, on ``ChangeEvent`` rows and on Arrow chunks alike.

Row-filter semantics for changes:

* READ / INSERT: kept when the new row passes.
* DELETE: dropped when the old row is known and does not pass (it never reached the target);
  otherwise kept (deleting a row that is absent is harmless).
* UPDATE: old passes, new passes -> UPDATE; old fails, new passes -> INSERT; old passes, new
  fails -> DELETE; both fail -> dropped. When the old row is not known (only its key: Postgres'
  default replica identity), an update that passes stays an UPDATE (sinks upsert, so a row moving
  into the filter is inserted) and one that fails becomes a DELETE of the key (a row moving out of
  the filter is removed from the target; deleting a row the target never had is harmless).
* TRUNCATE: always kept.

NULL follows SQL WHERE: a filter that is NULL for a row (``amount > 10`` with a NULL amount)
excludes it. A filter that cannot be decided because the row lacks a value it needs: on READ or
INSERT (whose rows are complete) that is an error, never a silent keep or drop; on an UPDATE whose
needed value is unchanged and unknown (a TOASTed Postgres value without the old row) the update
is applied as it is and a warning is logged once per table.

The row filter is bound to the table's schema when the filter is built (``zetl.filters.bind``):
string literals compared with date/time/timestamp/uuid/number columns become values of that type
(a timestamptz literal without an offset is UTC), and a filter that does not fit the column types
is a ``ConfigError`` naming the table and ``filters.tables.<pattern>.rows`` in the file.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from dataclasses import dataclass, replace
from typing import Any, Mapping

import orjson

from zetl.errors import ConfigError, ConfigIssue, SchemaError, SourceError
from zetl.events import UNCHANGED, ChangeEvent, Op, RowChunk
from zetl.filters.bind import BindError, bind
from zetl.filters.config import FiltersConfig, TableFilterConfig
from zetl.filters.expr import EvaluationError, Predicate, compile_expression
from zetl.jsonvalue import JsonText, dump_json
from zetl.schema.types import Field, Schema, T, TypeKind

__all__ = ["TableFilter", "canonical_bytes", "mask_hash", "python_value"]

_log = logging.getLogger("zetl.filters")


def python_value(value: Any, kind: TypeKind) -> Any:
    """A value read from an Arrow chunk (``to_pylist``) as the canonical Python value of its
    column's kind. Chunks carry json as text (a plain string or Arrow's json extension), which
    becomes ``JsonText`` (the same text, not parsed), and uuid as text or 16 bytes (Arrow's uuid
    extension); both layouts are accepted."""
    if value is None:
        return None
    if kind is TypeKind.JSON and isinstance(value, (str, bytes)) and not isinstance(value, JsonText):
        return JsonText(value.decode("utf-8") if isinstance(value, bytes) else value)
    if kind is TypeKind.UUID and not isinstance(value, uuid.UUID):
        return uuid.UUID(bytes=value) if isinstance(value, bytes) else uuid.UUID(str(value))
    return value


def canonical_bytes(value: Any) -> bytes:
    """The bytes a value is hashed from; equal values give equal bytes whichever path (event
    or Arrow chunk) they came by."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (dict, list)):  # a decoded document (json as text is a str, above)
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=lambda v: orjson.Fragment(dump_json(v)))
    if isinstance(value, bool):
        return b"true" if value else b"false"
    return str(value).encode()


def mask_hash(salt: bytes, value: Any) -> Any:
    """HMAC-SHA256 of the value, hex; NULL stays NULL and ``UNCHANGED`` stays unchanged."""
    if value is None or value is UNCHANGED:
        return value
    return hmac.new(salt, canonical_bytes(value), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class TableFilter:
    """The filters of one table, bound to its source schema."""

    source_schema: Schema
    target_schema: Schema
    kept: tuple[str, ...]
    hashed: frozenset[str]
    nulled: frozenset[str]
    predicate: Predicate | None
    salt: bytes
    rows_issue: ConfigIssue | None = None
    """Where the row filter is written (file, line, setting path), for errors met later."""

    @classmethod
    def build(cls, config: FiltersConfig, schema: Schema) -> TableFilter | None:
        """The filter of ``schema``'s table, or None when no filter applies to it.

        Raises:
            SchemaError: a primary-key column is excluded or masked with null, or the row
                filter names a column the table does not have.
            ConfigError: the row filter does not fit the table's column types (a literal that
                is not a valid date, a number compared with text, ...), with the file position
                of the filter when the config was loaded from a file.
        """
        pattern = config.pattern_for(schema.table)
        if pattern is None:
            return None
        return cls._build(pattern, config.tables[pattern], config, schema)

    @classmethod
    def _build(cls, pattern: str, tc: TableFilterConfig, config: FiltersConfig, schema: Schema) -> TableFilter:
        where = f"filters.tables for {schema.table}"
        for column, kind in tc.columns.mask.items():
            if column not in schema:
                raise SchemaError(f"{where}: masked column '{column}' is not a column of {schema.table} (columns: {', '.join(schema.names)})", table=str(schema.table), column=column)
            if kind == "null" and column in schema.primary_key:
                raise SchemaError(f"{where}: '{column}' is part of the primary key and cannot be masked with null; use 'hash'", table=str(schema.table), column=column)
        fields: list[Field] = []
        kept: list[str] = []
        for f in schema.fields:
            if not tc.columns.keeps(f.name):
                if f.name in schema.primary_key:
                    raise SchemaError(
                        f"{where}: '{f.name}' is part of the primary key of {schema.table} and cannot be excluded; rows are matched by it",
                        table=str(schema.table),
                        column=f.name,
                    )
                continue
            kind = tc.columns.mask.get(f.name)
            if kind == "hash":
                f = replace(f, type=T.string(64), source_type=f"hash of {f.source_type or f.type}")
            elif kind == "null":
                f = replace(f, nullable=True)
            fields.append(f)
            kept.append(f.name)
        predicate = None
        rows_issue = None
        if tc.rows is not None:
            file, line, column = config.rows_position(pattern)
            rows_issue = ConfigIssue(file or "the integration's file", line, column, f"filters.tables.{pattern}.rows", "")
            predicate = compile_expression(tc.rows)
            missing = sorted(predicate.columns - set(schema.names))
            if missing:
                at = f" ({file}:{line}:{column})" if line else ""
                raise SchemaError(
                    f"filters.tables.{pattern}.rows{at}: the row filter {tc.rows!r} names column(s) {', '.join(missing)} that {schema.table} does not have (columns: {', '.join(schema.names)})",
                    table=str(schema.table),
                    column=missing[0],
                )
            try:
                predicate = bind(predicate, schema)
            except BindError as exc:
                raise ConfigError(
                    replace(
                        rows_issue,
                        message=f"the row filter {tc.rows!r} does not fit table {schema.table}: {exc.reason}",
                        hint=f"columns of {schema.table}: {', '.join(f'{f.name} ({f.type})' for f in schema.fields)}; dates and times are written as ISO 8601 text, e.g. '2026-01-31'",
                    )
                ) from None
        target = Schema(schema.table, tuple(fields), schema.primary_key, schema.version)
        salt = config.salt.get_secret_value().encode() if config.salt is not None else b""
        masks = tc.columns.mask
        return cls(
            schema,
            target,
            tuple(kept),
            frozenset(c for c, k in masks.items() if k == "hash"),
            frozenset(c for c, k in masks.items() if k == "null"),
            predicate,
            salt,
            rows_issue,
        )

    @property
    def shapes_columns(self) -> bool:
        return len(self.kept) != len(self.source_schema.fields) or bool(self.hashed or self.nulled)

    # -- rows -----------------------------------------------------------------------------
    def shape_row(self, row: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        """The row with only the kept columns, masks applied (columns the row lacks stay absent)."""
        if row is None or not self.shapes_columns:
            return row
        out: dict[str, Any] = {}
        for name in self.kept:
            if name not in row:
                continue
            value = row[name]
            if name in self.hashed:
                value = mask_hash(self.salt, value)
            elif name in self.nulled and value is not UNCHANGED:
                value = None
            out[name] = value
        return out

    def apply_event(self, event: ChangeEvent) -> ChangeEvent | None:
        """The event as the target must see it (None: it does not reach the target)."""
        if event.op is Op.TRUNCATE:
            return event
        if self.predicate is not None:
            routed = self._route(event)
            if routed is None:
                return None
            event = routed
        if not self.shapes_columns:
            return event
        return replace(event, before=self.shape_row(event.before), after=self.shape_row(event.after))

    def _evaluation_error(self, reason: str) -> ConfigError:
        assert self.predicate is not None and self.rows_issue is not None
        return ConfigError(
            replace(
                self.rows_issue,
                message=f"the row filter {self.predicate.text!r} cannot be evaluated on a row of {self.source_schema.table}: {reason}",
                hint="the row's values do not have the types the filter expects; check the filter against the table's columns",
            )
        )

    def _matches(self, row: Mapping[str, Any]) -> bool | None:
        assert self.predicate is not None
        try:
            return self.predicate.matches(row)
        except EvaluationError as exc:
            raise self._evaluation_error(str(exc)) from exc

    def _route(self, event: ChangeEvent) -> ChangeEvent | None:
        assert self.predicate is not None
        match = self._matches
        if event.op in (Op.READ, Op.INSERT):
            decided = match(event.after or {})
            if decided is None:
                lacking = sorted(c for c in self.predicate.columns if (event.after or {}).get(c, UNCHANGED) is UNCHANGED)
                raise SourceError(
                    f"{self.source_schema.table}: an {event.op.name} row lacks column(s) {', '.join(lacking)} that the row filter "
                    f"{self.predicate.text!r} needs; the source sent an incomplete row, so it can be neither kept nor dropped safely"
                )
            return event if decided else None
        if event.op is Op.DELETE:
            return None if event.before is not None and match(event.before) is False else event
        # UPDATE: fill unchanged values of the new row from the old one where it has them.
        before = event.before
        after = dict(event.after or {})
        if before is not None:
            for k, v in after.items():
                if v is UNCHANGED and k in before and before[k] is not UNCHANGED:
                    after[k] = before[k]
        was = match(before) if before is not None else None
        now = match(after)
        if now is None:
            # A needed value is unchanged and unknown (no old row): the update is applied as it
            # is (the target keeps its value of the unchanged column); said once, never silent.
            _warn_undecided(str(self.source_schema.table), self.predicate.text)
            return event
        if now:
            if was is False:
                return ChangeEvent(event.table, Op.INSERT, None, after, event.position, event.commit_ts, event.txid)
            return event
        if was is False:
            return None
        old = before if before is not None else after
        return ChangeEvent(event.table, Op.DELETE, old, None, event.position, event.commit_ts, event.txid)

    def apply_chunk(self, chunk: RowChunk) -> RowChunk | None:
        """The chunk filtered and shaped, vectorised (None when no row is left)."""
        rows = chunk.rows
        if self.predicate is not None:
            try:
                rows = self.predicate.arrow_filter(rows)
            except EvaluationError as exc:
                raise self._evaluation_error(str(exc)) from exc
            if rows.num_rows == 0:
                return None
        if self.shapes_columns:
            rows = self._shape_arrow(rows)
        return replace(chunk, rows=rows)

    def _shape_arrow(self, rows: Any) -> Any:
        import pyarrow as pa

        from zetl.arrow import arrow_field

        table = rows if isinstance(rows, pa.Table) else pa.Table.from_batches([rows])
        columns: list[Any] = []
        fields: list[Any] = []
        for name in self.kept:
            if name not in table.column_names:
                continue
            target_field = arrow_field(self.target_schema.field(name))
            column = table[name]
            if name in self.hashed:
                kind = self.source_schema.field(name).type.kind
                column = pa.array([mask_hash(self.salt, python_value(v, kind)) for v in column.to_pylist()], pa.string())
            elif name in self.nulled:
                column = pa.nulls(table.num_rows, column.type)
            columns.append(column)
            fields.append(target_field.with_type(column.type))
        result = pa.Table.from_arrays(columns, schema=pa.schema(fields))
        if isinstance(rows, pa.RecordBatch):
            batches = result.combine_chunks().to_batches()
            return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=result.schema)
        return result


_undecided_warned: set[tuple[str, str]] = set()


def _warn_undecided(table: str, text: str) -> None:
    if (table, text) not in _undecided_warned:
        _undecided_warned.add((table, text))
        _log.warning(
            "%s: an UPDATE leaves a value the row filter %r needs unchanged and the old row is not sent, so the filter "
            "cannot be decided; the update is applied as it is. Set REPLICA IDENTITY FULL on the table (Postgres) to decide every update.",
            table,
            text,
        )
