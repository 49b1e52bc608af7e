"""The Redshift sink: staged loads, one transaction per batch, checkpoint stored with the data."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import replace
from collections.abc import Iterator
from typing import Any, ClassVar, Sequence

import orjson

from zetl.errors import SchemaError, SinkError, ZetlError
from zetl.events import Batch, ChangeEvent, Position, RowChunk, TableId
from zetl.plugin import PluginContext, require
from zetl.schema.changes import (
    AddColumn,
    AlterColumnType,
    CreateTable,
    DropColumn,
    DropTable,
    MakeColumnNullable,
    RenameColumn,
    SchemaChange,
    TruncateTable,
)
from zetl.schema.planner import can_widen
from zetl.schema.types import Field, Schema, TypeKind
from zetl.sink import Sink, SinkCapabilities

from . import sql
from .config import RedshiftConfig
from .errors import map_driver_error
from .identifiers import IdentifierRules
from .layout import HISTORY_COLUMNS, ColumnLayout, TableLayout
from .plan import Segment, StagedRow, plan_table
from .s3stage import S3Stager, StagedBatch
from .typemap import canonical_type, redshift_type
from .values import ValueEncoder

__all__ = ["RedshiftSink"]

_MAX_PARAMS = 32000


def _chunk_events(chunk: RowChunk) -> Iterator[ChangeEvent]:
    """A chunk's rows as events, with JSON text decoded whichever way the source marked it.

    ``RowChunk.events`` decodes columns tagged with ``zetl.type`` metadata; a column that is an
    ``arrow.json`` extension (or a string tagged json) without that tag still holds JSON text.
    """
    import pyarrow as pa

    from zetl.arrow import TYPE_KEY

    undecoded = [
        f.name
        for f in chunk.rows.schema
        if TYPE_KEY not in (f.metadata or {}) and isinstance(f.type, pa.JsonType)
    ]
    for event in chunk.events():
        if undecoded and event.after is not None:
            after = dict(event.after)
            for name in undecoded:
                if isinstance(after.get(name), (str, bytes)):
                    after[name] = orjson.loads(after[name])
            event = replace(event, after=after)
        yield event


class RedshiftSink(Sink[RedshiftConfig]):
    """Writes batches to Redshift; see the package docstring for the guarantees."""

    name: ClassVar[str] = "redshift"
    config_class = RedshiftConfig
    capabilities = SinkCapabilities(
        schema_changes=frozenset(
            {
                CreateTable.kind,
                AddColumn.kind,
                DropColumn.kind,
                RenameColumn.kind,
                AlterColumnType.kind,
                MakeColumnNullable.kind,
                DropTable.kind,
                TruncateTable.kind,
            }
        ),
        stores_checkpoint=True,
        nested_types=True,
        max_identifier_length=127,
        identifier_case="lower",
    )
    requires = ("redshift_connector",)
    extra = "redshift"

    def __init__(self, config: RedshiftConfig, context: PluginContext | None = None) -> None:
        super().__init__(config, context)
        self.log = self.context.logger
        self.rules = IdentifierRules(case_sensitive=config.case_sensitive_identifiers, max_bytes=config.max_identifier_bytes, logger=self.log)
        self.schema_name = self.rules.name(config.target_schema)
        """The target schema as Redshift names it (folded and shortened like every identifier)."""
        self._conn: Any = None
        self._layouts: dict[TableId, TableLayout | None] = {}
        self._stored: Position | None = None
        self._stored_loaded = False
        self._stage_counter = 0
        self._stager: S3Stager | None = None
        self._stats: dict[str, Any] = {"batches": 0, "rows": 0, "copy_batches": 0, "insert_batches": 0, "skipped_batches": 0}

    # -- connection -----------------------------------------------------------------------
    def open(self) -> None:
        rc = require("redshift_connector", extra="redshift", what="Redshift sink (redshift-connector)")
        cfg = self.config
        kwargs: dict[str, Any] = {
            "database": cfg.database,
            "port": cfg.port,
            "ssl": cfg.ssl,
            "sslmode": cfg.sslmode,
            "timeout": cfg.connect_timeout,
            "application_name": "zetl",
        }
        if cfg.host:
            kwargs["host"] = cfg.host
        if cfg.iam:
            kwargs.update(iam=True, db_user=cfg.user, region=cfg.region, profile=cfg.profile)
            if cfg.cluster_identifier:
                kwargs["cluster_identifier"] = cfg.cluster_identifier
            if cfg.serverless_workgroup:
                kwargs.update(is_serverless=True, serverless_work_group=cfg.serverless_workgroup)
        else:
            kwargs.update(user=cfg.user, password=cfg.password.get_secret_value() if cfg.password else None)
        where = cfg.host or cfg.cluster_identifier or cfg.serverless_workgroup
        try:
            self._conn = rc.connect(**{k: v for k, v in kwargs.items() if v is not None})
            self._conn.autocommit = False
            if cfg.case_sensitive_identifiers:
                self._execute("SET enable_case_sensitive_identifier TO true")
            self._execute(sql.create_schema(self.schema_name))
            self._execute(sql.create_checkpoint_table(self.schema_name))
            self._execute(sql.create_metadata_table(self.schema_name))
            self._conn.commit()
        except ZetlError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            err = map_driver_error(exc, action=f"connecting to Redshift at {where}:{cfg.port} database {cfg.database}")
            raise err from exc
        if cfg.s3 is not None:
            self._stager = S3Stager(cfg.s3, self.context.integration)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.rollback()
            except Exception:  # the connection may already be gone; closing is best effort
                pass
            try:
                conn.close()
            except Exception:
                pass

    def _cursor(self) -> Any:
        if self._conn is None:
            raise SinkError("the Redshift sink is not open (call open() first)")
        return self._conn.cursor()

    def _execute(self, statement: str, params: Sequence[Any] | None = None) -> Any:
        cur = self._cursor()
        cur.execute(statement, params)
        return cur

    def _fetchall(self, statement: str, params: Sequence[Any] | None = None) -> list[Any]:
        cur = self._execute(statement, params)
        return list(cur.fetchall() or [])

    def _rollback(self) -> None:
        try:
            if self._conn is not None:
                self._conn.rollback()
        except Exception as exc:  # the original error matters more; the connection is reset on retry
            self.log.debug("rollback failed: %s", exc)

    # -- names and layouts ----------------------------------------------------------------
    def target_table_name(self, table: TableId) -> str:
        return self.rules.name(self.config.table_name.format(name=table.name, namespace=table.namespace))

    def _layout(self, table: TableId) -> TableLayout | None:
        if table not in self._layouts:
            self._layouts[table] = self._load_layout(table)
        return self._layouts[table]

    def _load_layout(self, table: TableId) -> TableLayout | None:
        schema_name = self.schema_name
        target = self.target_table_name(table)
        try:
            catalog = self._fetchall(sql.select_columns(), (schema_name, target))
            stored = self._fetchall(sql.select_metadata(schema_name), (target,))
            self._conn.commit()
        except Exception as exc:
            self._rollback()
            raise map_driver_error(exc, action="reading the target schema", table=f"{schema_name}.{target}") from exc
        if not catalog:
            return None
        if stored:
            return TableLayout.from_json(stored[0][0], schema_name, target)
        # A table zetl did not create: take it as it is (names are the source names).
        history_names = {"_op", "_position", "_valid_from", "_valid_to"}
        names = {row[0] for row in catalog}
        history = history_names <= names
        columns = []
        for name, data_type, length, precision, scale, nullable in catalog:
            if history and name in history_names:
                continue
            try:
                ctype = canonical_type(str(data_type), length, precision, scale)
            except ValueError as exc:
                raise SchemaError(f"{schema_name}.{target}.{name}: {exc}", table=str(table), column=name) from None
            columns.append(ColumnLayout(name, name, ctype, nullable == "YES"))
        return TableLayout(table, schema_name, target, tuple(columns), (), history)

    def current_schema(self, table: TableId) -> Schema | None:
        layout = self._layout(table)
        return layout.schema() if layout is not None else None

    # -- schema changes -------------------------------------------------------------------
    def can_apply(self, change: SchemaChange) -> bool:
        if change.kind not in self.capabilities.schema_changes:
            return False
        if isinstance(change, AlterColumnType):
            layout = self._layout(change.table)
            current = layout.get(change.column) if layout else None
            old = current.type if current is not None else change.old_type
            if old is None:
                return False
            return can_widen(old, change.new_type) and self._widening_kind(old, change.new_type) is not None
        if isinstance(change, (AddColumn, RenameColumn)):
            # The new name must not land on a column that exists (case folding, shortening) or on
            # a history-mode column.
            layout = self._layout(change.table)
            if layout is None:
                return True
            source_name = change.field.name if isinstance(change, AddColumn) else change.new_name
            replaced = change.old_name if isinstance(change, RenameColumn) else None
            target = self.rules.name(source_name)
            taken = {c.target for c in layout.columns if c.source not in (source_name, replaced)}
            if layout.history:
                taken |= {name for name, _ in HISTORY_COLUMNS}
            return target not in taken
        if isinstance(change, CreateTable):
            try:
                TableLayout.build(change.schema, self.schema_name, self.target_table_name(change.table), self.rules, self.config.history_mode)
            except SchemaError:
                return False
        return True

    @staticmethod
    def _widening_kind(old: Any, new: Any) -> str | None:
        """How a widening is done: ``none`` (same Redshift type), ``varchar`` (ALTER TYPE), ``swap`` (add-copy-swap)."""
        old_rs, new_rs = redshift_type(old), redshift_type(new)
        if old_rs == new_rs:
            return "none"
        if old.kind is TypeKind.STRING and new.kind is TypeKind.STRING:
            return "varchar"
        if old_rs.startswith("VARCHAR") and new_rs.startswith("VARCHAR"):
            return "varchar"
        if new_rs in ("SUPER",) or old_rs == "SUPER":
            return None
        return "swap"

    def apply(self, change: SchemaChange) -> None:
        try:
            self._apply(change)
        except ZetlError:
            self._rollback()
            raise
        except Exception as exc:
            self._rollback()
            raise map_driver_error(exc, action=f"applying '{change}'", table=str(change.table)) from exc

    def _save_layout(self, layout: TableLayout) -> None:
        text = layout.to_json()
        if len(text.encode()) > 65535:
            raise SchemaError(f"the description of {layout.table} is over 65535 bytes; too many or too long column names for the metadata table", table=str(layout.table))
        self._execute(sql.delete_metadata(layout.target_schema), (layout.target_table,))
        self._execute(sql.insert_metadata(layout.target_schema), (layout.target_table, text))

    def _apply(self, change: SchemaChange) -> None:
        table = change.table
        layout = self._layout(table)
        if isinstance(change, CreateTable):
            if layout is not None:
                return  # already there (idempotent); differences are the planner's business
            target = self.target_table_name(table)
            new = TableLayout.build(change.schema, self.schema_name, target, self.rules, self.config.history_mode)
            options = self.config.tables.get(str(table))
            if options is not None:
                for name in [options.distkey, *options.sortkey]:
                    if name is not None and new.get(name) is None:
                        raise SchemaError(f"sink.tables['{table}'] names column {name!r}, which {table} does not have", table=str(table), column=name)
            self._execute(sql.create_table(new, options))
            self._save_layout(new)
            self._conn.commit()
            self._layouts[table] = new
            return
        if layout is None:
            if isinstance(change, (DropTable, TruncateTable)):
                return
            raise SchemaError(f"cannot apply '{change}': table {table} does not exist in Redshift", table=str(table))
        if isinstance(change, DropTable):
            self._execute(sql.drop_table(layout))
            self._execute(sql.delete_metadata(layout.target_schema), (layout.target_table,))
            self._conn.commit()
            self._layouts[table] = None
        elif isinstance(change, TruncateTable):
            self._execute(sql.delete_all(layout))
            self._conn.commit()
        elif isinstance(change, AddColumn):
            if layout.get(change.field.name) is not None:
                return
            column = ColumnLayout(change.field.name, self.rules.name(change.field.name), change.field.type, True, False)
            new = layout.with_columns([*layout.columns, column])
            self._execute(sql.add_column(new, column))
            self._save_layout(new)
            self._conn.commit()
            self._layouts[table] = new
        elif isinstance(change, DropColumn):
            column = layout.get(change.column)
            if column is None:
                return
            if column.primary_key:
                raise SchemaError(f"cannot drop primary-key column {change.column} of {table} in Redshift", table=str(table), column=change.column)
            new = layout.with_columns([c for c in layout.columns if c.source != change.column])
            self._execute(sql.drop_column(layout, column.target))
            self._save_layout(new)
            self._conn.commit()
            self._layouts[table] = new
        elif isinstance(change, RenameColumn):
            column = layout.get(change.old_name)
            if column is None:
                if layout.get(change.new_name) is not None:
                    return
                raise SchemaError(f"cannot rename {change.old_name}: no such column in {table}", table=str(table), column=change.old_name)
            renamed = ColumnLayout(change.new_name, self.rules.name(change.new_name), column.type, column.nullable, column.primary_key)
            new = layout.with_columns([renamed if c.source == change.old_name else c for c in layout.columns],
                                      tuple(change.new_name if k == change.old_name else k for k in layout.primary_key))
            if renamed.target != column.target:
                self._execute(sql.rename_column(layout, column.target, renamed.target))
            self._save_layout(new)
            self._conn.commit()
            self._layouts[table] = new
        elif isinstance(change, MakeColumnNullable):
            column = layout.get(change.column)
            if column is None or column.nullable:
                return
            updated = ColumnLayout(column.source, column.target, column.type, True, column.primary_key)
            if column.primary_key:
                # Key columns are the only NOT NULL ones; Redshift cannot drop NOT NULL in place.
                self._swap_column(layout, updated, primary_key=tuple(k for k in layout.primary_key if k != column.source))
                return
            new = layout.with_columns([updated if c.source == column.source else c for c in layout.columns])
            self._save_layout(new)  # physically nullable already
            self._conn.commit()
            self._layouts[table] = new
        elif isinstance(change, AlterColumnType):
            column = layout.get(change.column)
            if column is None:
                raise SchemaError(f"cannot change the type of {change.column}: no such column in {table}", table=str(table), column=change.column)
            if column.type == change.new_type:
                return
            how = self._widening_kind(column.type, change.new_type) if can_widen(column.type, change.new_type) else None
            if how is None:
                raise SchemaError(
                    f"Redshift cannot change {table}.{change.column} from {column.type} to {change.new_type} without losing values",
                    table=str(table), column=change.column,
                )
            updated = ColumnLayout(column.source, column.target, change.new_type, column.nullable, column.primary_key)
            new = layout.with_columns([updated if c.source == column.source else c for c in layout.columns])
            if how == "varchar":
                # Redshift runs ALTER COLUMN TYPE outside a transaction block only.
                self._conn.commit()
                self._conn.autocommit = True
                try:
                    self._execute(sql.alter_varchar(new, updated))
                finally:
                    self._conn.autocommit = False
            elif how == "swap":
                self._swap_column(layout, updated)
                return
            self._save_layout(new)
            self._conn.commit()
            self._layouts[table] = new
        else:  # pragma: no cover - the capabilities list every kind handled above
            raise SchemaError(f"the Redshift sink cannot apply {change.kind}", table=str(table))

    def _swap_column(self, layout: TableLayout, updated: ColumnLayout, primary_key: tuple[str, ...] | None = None) -> None:
        """Add-copy-swap in one transaction: new column, copy values, drop the old, rename.

        The column moves to the end of the table (Redshift cannot reorder columns)."""
        temp = self.rules.name(f"zetl_swap_{updated.target}")
        staged = ColumnLayout(updated.source, temp, updated.type, updated.nullable, updated.primary_key)
        self._execute(sql.add_column(layout, staged))
        self._execute(sql.copy_column(layout, updated.target, temp))
        self._execute(sql.drop_column(layout, updated.target))
        self._execute(sql.rename_column(layout, temp, updated.target))
        if primary_key is not None:
            updated = ColumnLayout(updated.source, updated.target, updated.type, True, False)
        new = layout.with_columns([c for c in layout.columns if c.source != updated.source] + [updated], primary_key)
        self._save_layout(new)
        self._conn.commit()
        self._layouts[layout.table] = new

    # -- checkpoints ----------------------------------------------------------------------
    def stored_position(self) -> Position | None:
        try:
            rows = self._fetchall(sql.select_checkpoint(self.schema_name), (self.context.integration,))
            self._conn.commit()
        except ZetlError:
            raise
        except Exception as exc:
            self._rollback()
            raise map_driver_error(exc, action="reading the stored checkpoint") from exc
        self._stored = Position.from_json(orjson.loads(rows[0][0])) if rows else None
        self._stored_loaded = True
        return self._stored

    def _already_written(self, position: Position | None) -> bool:
        if position is None:
            return False
        if not self._stored_loaded:
            self.stored_position()
        stored = self._stored
        if stored is None or stored.kind != position.kind:
            return False
        return position <= stored

    # -- writing --------------------------------------------------------------------------
    def write(self, batch: Batch) -> Position | None:
        if not batch.events and not batch.chunks and batch.end_position is None:
            return None  # nothing to write and no position to store (an idle batch)
        if self._already_written(batch.end_position):
            # Committed before a crash, together with its checkpoint: applying it again would
            # duplicate history rows. Exactly once.
            self._stats["skipped_batches"] += 1
            self.log.info("batch up to %s is already in Redshift; skipped", batch.end_position)
            return batch.end_position
        by_table: dict[TableId, list[ChangeEvent]] = {}
        for chunk in batch.chunks:
            by_table.setdefault(chunk.table, []).extend(_chunk_events(chunk))
        for event in batch.events:
            by_table.setdefault(event.table, []).append(event)
        now = dt.datetime.now(dt.timezone.utc)
        staged_files: list[StagedBatch] = []
        table_name: str | None = None
        try:
            for table, events in by_table.items():
                table_name = str(table)
                layout = self._layout(table)
                if layout is None:
                    raise SinkError(
                        f"table {table} does not exist in Redshift (its creation was not applied, see the schema_evolution policy); "
                        "cannot write its rows",
                        retryable=False,
                    )
                for segment in plan_table(layout, events, now):
                    self._write_segment(layout, segment, staged_files)
            table_name = None
            if batch.end_position is not None:
                schema_name = self.schema_name
                position_json = orjson.dumps(batch.end_position.to_json()).decode()
                self._execute(sql.delete_checkpoint(schema_name), (self.context.integration,))
                self._execute(sql.insert_checkpoint(schema_name), (self.context.integration, position_json))
            self._conn.commit()
        except ZetlError:
            self._rollback()
            self._cleanup(staged_files)
            raise
        except Exception as exc:
            self._rollback()
            self._cleanup(staged_files)
            raise map_driver_error(exc, action="writing a batch", table=table_name) from exc
        self._cleanup(staged_files)
        if batch.end_position is not None:
            self._stored, self._stored_loaded = batch.end_position, True
        self._stats["batches"] += 1
        self._stats["rows"] += batch.row_count
        return batch.end_position

    def _cleanup(self, staged_files: list[StagedBatch]) -> None:
        if self._stager is None:
            return
        for staged in staged_files:
            try:
                self._stager.cleanup(staged)
            except ZetlError as exc:  # the data is committed; leftovers do not affect correctness
                self.log.warning("could not delete staged files under %s: %s", staged.manifest_url.rsplit("/", 1)[0], exc.message)

    def _write_segment(self, layout: TableLayout, segment: Segment, staged_files: list[StagedBatch]) -> None:
        if segment.truncate:
            if layout.history:
                self._execute(sql.close_all_versions(layout), (segment.truncate_at,))
            else:
                self._execute(sql.delete_all(layout))
        if not segment.rows:
            return
        self._stage_counter += 1
        stage = sql.StageLayout(f"zetl_stage_{self._stage_counter}", layout, segment.keep_columns)
        self._execute(sql.create_stage(stage))
        self._load_stage(stage, segment.rows, staged_files)
        for i in stage.keep:
            if layout.primary_key:
                self._execute(sql.fill_unchanged(stage, i))
        if layout.history:
            if layout.primary_key:
                self._execute(sql.close_versions(stage))
            self._execute(sql.insert_versions(stage))
        elif layout.primary_key:
            if any(r.op == "d" for r in segment.rows):
                self._execute(sql.delete_matching(stage))
                self._execute(sql.drop_staged_deletes(stage))
            self._execute(sql.merge(stage))
        else:
            self._execute(sql.append_rows(stage))
        self._execute(sql.drop_stage(stage))

    def _use_copy(self, rows: int) -> bool:
        load = self.config.load
        return load == "s3_copy" or (load == "auto" and rows >= self.config.copy_min_rows)

    def _staged_values(self, stage: sql.StageLayout, rows: list[StagedRow], encode: Any) -> Iterator[list[Any]]:
        columns = stage.layout.columns
        for r in rows:
            values = [encode(c, v) for c, v in zip(columns, r.values)]
            values.append(r.op)
            values += [i in r.keep for i in stage.keep]
            if stage.layout.history:
                values += [r.position, r.valid_from, r.valid_to, r.first]
            yield values

    def _load_stage(self, stage: sql.StageLayout, rows: list[StagedRow], staged_files: list[StagedBatch]) -> None:
        encoder = ValueEncoder(stage.layout, self.config.oversize_strings, self.log)
        if self._use_copy(len(rows)):
            assert self._stager is not None and self.config.s3 is not None
            started = time.monotonic()

            def json_value(c: ColumnLayout, v: Any) -> Any:
                return encoder.json(c, v)

            values = self._staged_values(stage, rows, json_value)
            history_dates = stage.layout.history

            def jsonable() -> Iterator[list[Any]]:
                for row in values:
                    if history_dates:
                        row = [v.isoformat(sep=" ") if isinstance(v, dt.datetime) else v for v in row]
                    yield row

            staged = self._stager.stage(stage.data_columns(), jsonable())
            staged_files.append(staged)
            self._execute(sql.copy_into_stage(stage, staged.manifest_url, staged.jsonpaths_url, self.config.s3.iam_role, self.config.s3.region))
            self._stats["copy_batches"] += 1
            self.log.debug("staged %d rows of %s through S3 in %.3fs", len(rows), stage.layout.table, time.monotonic() - started)
            return
        per_row = len(stage.data_columns())
        chunk = max(1, min(self.config.insert_rows_per_statement, _MAX_PARAMS // per_row))
        buffer: list[Any] = []
        count = 0
        for values in self._staged_values(stage, rows, encoder.param):
            buffer.extend(values)
            count += 1
            if count == chunk:
                self._execute(sql.insert_into_stage(stage, count), buffer)
                buffer, count = [], 0
        if count:
            self._execute(sql.insert_into_stage(stage, count), buffer)
        self._stats["insert_batches"] += 1

    def status(self) -> dict[str, Any]:
        return {
            "target": f"{self.config.host or self.config.cluster_identifier or self.config.serverless_workgroup}/{self.config.database}.{self.schema_name}",
            "load": self.config.load,
            "history_mode": self.config.history_mode,
            **self._stats,
        }
