"""One commit of buffered changes to one Iceberg table: a single snapshot (see ``sink`` for the design).

``commit_current`` makes the table equal to the source for the buffered keys; ``commit_changelog``
appends every buffered change. Both write the snapshot summary ``properties`` given.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any, Mapping

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from zetl.errors import SinkError
from zetl.events import Op, Position
from zetl.schema.types import DataType

from zetl_sinks.iceberg.arrowconv import chunk_to_arrow, key_strings, last_occurrences, rows_to_arrow
from zetl_sinks.iceberg.buffer import TableBuffer

__all__ = ["commit_changelog", "commit_current"]


def _arrow_schema(iceberg_table: Any) -> pa.Schema:
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    return schema_to_pyarrow(iceberg_table.schema(), include_field_ids=False)


def _concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return schema.empty_table()
    return pa.concat_tables([t.cast(schema) if t.schema != schema else t for t in tables])


def _prefilter(iceberg_table: Any, keys_table: pa.Table, primary_key: tuple[str, ...]) -> Any:
    """A row filter on the first key column that lets Iceberg skip files by their statistics."""
    from pyiceberg.expressions import AlwaysTrue, And, GreaterThanOrEqual, In, LessThanOrEqual

    if keys_table.num_rows == 0:
        return AlwaysTrue()
    first = primary_key[0]
    column = keys_table.column(first)
    if isinstance(column.type, pa.BaseExtensionType):
        return AlwaysTrue()  # uuid: no cheap literal form; every file is checked
    try:
        if keys_table.num_rows <= 200:
            values = {v for v in column.to_pylist() if v is not None}
            return In(first, values) if values else AlwaysTrue()
        bounds = pc.min_max(column)
        low, high = bounds["min"].as_py(), bounds["max"].as_py()
        if low is None or high is None:
            return AlwaysTrue()
        return And(GreaterThanOrEqual(first, low), LessThanOrEqual(first, high))
    except (TypeError, ValueError, pa.ArrowException):
        return AlwaysTrue()


def _read_task(iceberg_table: Any, task: Any) -> pa.Table:
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan

    return ArrowScan(
        table_metadata=iceberg_table.metadata, io=iceberg_table.io, projected_schema=iceberg_table.schema(), row_filter=AlwaysTrue()
    ).to_table(tasks=[task])


def _check_required(data: pa.Table, iceberg_table: Any, table: str) -> None:
    """A NULL in a required column would make the table unreadable for some engines: refuse it.

    (``data`` is built from the table's own schema, so types need no further check.)"""
    for field in iceberg_table.schema().fields:
        if field.required and field.name in data.column_names and data.column(field.name).null_count:
            raise SinkError(
                f"column {field.name!r} of Iceberg table {table} is required (NOT NULL or primary key) but a row has no value for it; "
                "check the source column's nullability",
                retryable=False,
            )


def _commit(iceberg_table: Any, data: pa.Table, schema: pa.Schema, replaced: list[Any], properties: Mapping[str, str], table: str) -> Any:
    """One snapshot: ``replaced`` files out, ``data`` (rows in the table's Arrow ``schema``) in.
    Returns the table as committed."""
    # pyiceberg has no public API to write data files for a commit that also removes files;
    # this helper is what its own overwrite uses, hence the pin to one minor version in setup.cfg
    from pyiceberg.io.pyarrow import _dataframe_to_data_files

    metadata = iceberg_table.metadata
    if data.num_rows:
        _check_required(data, iceberg_table, table)
        data = data.cast(schema)
    commit_uuid = uuid.uuid4()
    files = list(_dataframe_to_data_files(table_metadata=metadata, df=data, io=iceberg_table.io, write_uuid=commit_uuid, counter=itertools.count(0))) if data.num_rows else []
    txn = iceberg_table.transaction()
    producer = txn.update_snapshot(snapshot_properties=dict(properties))
    if replaced:
        with producer.overwrite(commit_uuid=commit_uuid) as overwrite:
            for data_file in replaced:
                overwrite.delete_data_file(data_file)
            for data_file in files:
                overwrite.append_data_file(data_file)
    else:
        with producer.fast_append() as append:
            for data_file in files:
                append.append_data_file(data_file)
    return txn.commit_transaction()


def _storage(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.storage if isinstance(column, pa.ExtensionArray) else column


def _if_else(mask: pa.Array, when_true: pa.Array | pa.ChunkedArray, otherwise: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``pc.if_else`` that also works on extension columns (uuid), through their storage."""
    kind = otherwise.type
    chosen = pc.if_else(mask, _storage(when_true), _storage(otherwise))
    if isinstance(kind, pa.BaseExtensionType):
        return pa.ExtensionArray.from_storage(kind, chosen)
    return chosen


def _fill_unchanged(new_rows: pa.Table, unchanged: dict[str, pa.Array], old_rows: pa.Table, primary_key: tuple[str, ...], table: str) -> pa.Table:
    """Replace the UNCHANGED placeholders of ``new_rows`` with the values of ``old_rows`` (same key)."""
    if not unchanged:
        return new_rows
    if not primary_key:
        raise SinkError(
            f"a change to Iceberg table {table} leaves a value unchanged, but the table has no primary key to find the previous value by; "
            "set REPLICA IDENTITY FULL on the source table",
            retryable=False,
        )
    index: dict[bytes, int] = {}
    for i, k in enumerate(key_strings(old_rows, primary_key).to_pylist()):
        index[k] = i  # later rows (newer) win
    new_keys = key_strings(new_rows, primary_key).to_pylist()
    any_unchanged = pc.or_(*unchanged.values()) if len(unchanged) > 1 else next(iter(unchanged.values()))
    missing = [new_keys[i] for i, flag in enumerate(any_unchanged.to_pylist()) if flag and new_keys[i] not in index]
    if missing:
        raise SinkError(
            f"a change to Iceberg table {table} leaves a value unchanged for key {missing[0]!r}, but the table has no row with that key to take it from; "
            "set REPLICA IDENTITY FULL on the source table or resynchronise the table",
            retryable=False,
        )
    take = pa.array([index.get(k, 0) for k in new_keys], type=pa.int64())
    columns = []
    for field in new_rows.schema:
        column = new_rows.column(field.name)
        mask = unchanged.get(field.name)
        if mask is not None and old_rows.num_rows:
            old = old_rows.column(field.name).take(take).cast(field.type)
            column = _if_else(mask, old, column)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=new_rows.schema)


def commit_current(iceberg_table: Any, buffer: TableBuffer, types: Mapping[str, DataType], properties: Mapping[str, str], table: str) -> Any:
    """Apply the buffer so that the table holds exactly the last version of each buffered key;
    returns the table as committed."""
    schema = _arrow_schema(iceberg_table)
    pk = buffer.primary_key
    rows, gone = buffer.event_rows()
    event_table, unchanged = rows_to_arrow(rows, schema, types, table, may_be_unchanged=buffer.has_unchanged)
    event_keys = key_strings(event_table, pk) if event_table.num_rows else pa.array([], type=pa.large_binary())
    gone_table, _ = rows_to_arrow(TableBuffer.key_rows(pk, gone), schema, types, table, may_be_unchanged=False)

    # Snapshot rows: the newest version of each key, unless a buffered change is newer still.
    chunk_rows = _concat([chunk_to_arrow(rows_, schema, types, table) for rows_, _ in buffer.chunks], event_table.schema)
    superseded_chunk_rows = chunk_rows.schema.empty_table()
    if chunk_rows.num_rows:
        if len(event_keys):
            newer = pc.is_in(key_strings(chunk_rows, pk), value_set=event_keys)
            if pc.any(newer).as_py():
                superseded_chunk_rows = chunk_rows.filter(newer)
                chunk_rows = chunk_rows.filter(pc.invert(newer))
        if _has_duplicate_keys(chunk_rows, pk):  # a chunk read again after a resumed snapshot
            chunk_rows = chunk_rows.take(pa.array(last_occurrences(key_strings(chunk_rows, pk).to_pylist()), type=pa.int64()))

    new_rows = _concat([chunk_rows, event_table], event_table.schema)
    touched = _concat([new_rows.select(list(pk)), gone_table.select(list(pk))], event_table.schema.empty_table().select(list(pk)).schema)

    kept: list[pa.Table] = []
    old_versions: list[pa.Table] = [superseded_chunk_rows]
    replaced: list[Any] = []
    if iceberg_table.metadata.current_snapshot_id is not None:
        if buffer.truncated:
            replaced = [task.file for task in iceberg_table.scan().plan_files()]
        elif touched.num_rows:
            touched_keys = key_strings(touched, pk)
            for task in iceberg_table.scan(row_filter=_prefilter(iceberg_table, touched, pk)).plan_files():
                existing = _read_task(iceberg_table, task)
                if existing.num_rows == 0:
                    continue
                match = pc.is_in(key_strings(existing, pk), value_set=touched_keys)
                if not pc.any(match).as_py():
                    continue  # none of the commit's keys: the file stays as it is
                replaced.append(task.file)
                kept.append(existing.filter(pc.invert(match)))
                if unchanged:
                    old_versions.insert(len(old_versions) - 1, existing.filter(match))
    if unchanged:
        old = _concat(old_versions, event_table.schema)
        event_part = new_rows.slice(chunk_rows.num_rows)
        filled = _fill_unchanged(event_part, unchanged, old, pk, table)
        new_rows = _concat([new_rows.slice(0, chunk_rows.num_rows), filled], event_table.schema)
    data = _sorted_by_key(_concat([*kept, new_rows], event_table.schema), pk)
    return _commit(iceberg_table, data, schema, replaced, properties, table)


def _has_duplicate_keys(rows: pa.Table, primary_key: tuple[str, ...]) -> bool:
    column = rows.column(primary_key[0]) if len(primary_key) == 1 else None
    if column is not None and not isinstance(column.type, pa.BaseExtensionType):
        return bool(pc.count_distinct(column).as_py() != rows.num_rows)
    return bool(pc.count_distinct(key_strings(rows, primary_key)).as_py() != rows.num_rows)


def _is_sorted(rows: pa.Table, primary_key: tuple[str, ...]) -> bool:
    """True when a single-column key is strictly increasing (snapshot chunks read in key order)."""
    if len(primary_key) != 1:
        return False
    column = rows.column(primary_key[0])
    if isinstance(column.type, pa.BaseExtensionType):
        return False
    return bool(pc.all(pc.less(column.slice(0, len(column) - 1), column.slice(1))).as_py())


def _sorted_by_key(data: pa.Table, primary_key: tuple[str, ...]) -> pa.Table:
    """Rows in key order, so that each written file covers a narrow key range and later commits
    skip it by its statistics (left unsorted when a key type has no order in Arrow)."""
    if data.num_rows < 2:
        return data
    try:
        if _is_sorted(data, primary_key):
            return data
        return data.take(pc.sort_indices(data, sort_keys=[(c, "ascending") for c in primary_key]))
    except (pa.ArrowException, TypeError, ValueError):
        return data


def commit_changelog(iceberg_table: Any, buffer: TableBuffer, types: Mapping[str, DataType], properties: Mapping[str, str], table: str) -> Any:
    """Append every buffered change with ``_op``, ``_position`` and ``_commit_ts``; returns the
    table as committed."""
    schema = _arrow_schema(iceberg_table)
    rows = []
    for change in buffer.log:
        row = dict(change.row) if change.op is not Op.TRUNCATE else {}
        row["_op"] = change.op.value
        row["_position"] = orjson.dumps(change.position.to_json()).decode() if change.position is not None else None
        row["_commit_ts"] = change.commit_ts
        rows.append(row)
    data, unchanged = rows_to_arrow(rows, schema, types, table, may_be_unchanged=buffer.has_unchanged)
    if unchanged:
        data = _fill_unchanged_from_history(iceberg_table, data, unchanged, buffer.primary_key, types, table)
    return _commit(iceberg_table, data, schema, [], properties, table)


def _fill_unchanged_from_history(iceberg_table: Any, data: pa.Table, unchanged: dict[str, pa.Array], pk: tuple[str, ...], types: Mapping[str, DataType], table: str) -> pa.Table:
    """Changelog mode: unchanged values come from the latest version of the row already in the table."""
    if not pk or iceberg_table.metadata.current_snapshot_id is None:
        return _fill_unchanged(data, unchanged, data.schema.empty_table(), pk, table)
    flags = pc.or_(*unchanged.values()) if len(unchanged) > 1 else next(iter(unchanged.values()))
    wanted = data.filter(flags).select(list(pk))
    history = iceberg_table.scan(row_filter=_prefilter(iceberg_table, wanted, pk)).to_arrow()
    if history.num_rows:
        history = history.filter(pc.is_in(key_strings(history, pk), value_set=key_strings(wanted, pk)))
        # Oldest first, so that the newest version of each key wins in _fill_unchanged.
        positions = [Position.from_json(orjson.loads(p)) if p else None for p in history.column("_position").to_pylist()]
        order = sorted(range(len(positions)), key=lambda i: (positions[i] is not None, positions[i].sort_key() if positions[i] is not None else ()))
        history = history.take(pa.array(order, type=pa.int64())).cast(data.schema)
    return _fill_unchanged(data, unchanged, history, pk, table)
