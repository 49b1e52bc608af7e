"""The Redshift sink: staged loads, one transaction per batch, checkpoint stored with the data."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import replace
from collections.abc import Iterator
from typing import Any, ClassVar, Sequence

import orjson

from zetl.errors import SchemaError, SinkError, WriterFencedError, ZetlError
from zetl.events import Batch, ChangeEvent, Position, RowChunk, TableId
from zetl.jsonvalue import JsonText
from zetl.plugin import PluginContext, require
from zetl.schema.changes import (
    AddColumn,
    AlterColumnType,
    CreateTable,
    DropColumn,
    DropTable,
    MakeColumnNullable,
    RenameColumn,
    TruncateTable,
)
from zetl.schema.types import Field, Schema
from zetl.sink import Sink, SinkCapabilities

from . import sql
from .config import RedshiftConfig
from .diagnose import locate_rejected_value
from .ddl import SchemaChangeMixin
from .errors import map_driver_error
from .identifiers import IdentifierRules
from .layout import HISTORY_COLUMNS, ColumnLayout, TableLayout
from .plan import Segment, StagedRow, plan_table
from .s3stage import S3Stager, StagedBatch
from .typemap import canonical_type
from .values import DocumentTooLargeForInsert, ValueEncoder

__all__ = ["RedshiftSink"]

_MAX_PARAMS = 32000


def _chunk_events(chunk: RowChunk) -> Iterator[ChangeEvent]:
    """A chunk's rows as events, with JSON text as ``JsonText`` whichever way the source marked it.

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
                value = after.get(name)
                if isinstance(value, (str, bytes)) and not isinstance(value, JsonText):
                    after[name] = JsonText(value.decode("utf-8") if isinstance(value, bytes) else value)
            event = replace(event, after=after)
        yield event


class RedshiftSink(SchemaChangeMixin, Sink[RedshiftConfig]):
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
        self._unmanaged: dict[TableId, tuple[Field, ...]] = {}
        """Per table, the Redshift columns added by hand (seen when the layout was loaded)."""
        self._stored: Position | None = None
        self._stored_loaded = False
        self._stage_counter = 0
        self._has_checkpoints = False
        """Whether ``_zetl_checkpoints`` exists (always after a writable open)."""
        self._has_metadata = False
        """Whether ``_zetl_tables`` exists (always after a writable open)."""
        self._has_epoch = False
        """Whether ``_zetl_checkpoints`` has the writer epoch column (always after a writable open)."""
        self._stager: S3Stager | None = None
        self._current: tuple[TableLayout, Segment] | None = None
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
            kwargs.update(iam=True, db_user=cfg.user, region=cfg.region, profile=cfg.profile, endpoint_url=cfg.aws_endpoint_url)
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
            # The driver applies its timeout to every socket read, which would cut a long COPY or
            # MERGE; it is meant for connecting. Dead connections are found by TCP keepalive.
            sock = getattr(self._conn, "_usock", None)
            if sock is not None and hasattr(sock, "settimeout"):
                sock.settimeout(None)
            if cfg.case_sensitive_identifiers:
                self._execute("SET enable_case_sensitive_identifier TO true")  # session setting only
            if self.context.read_only:
                # Inspection (zetl drift) creates nothing: a missing schema or table of zetl's
                # own means nothing is stored yet, which needs only SELECT/USAGE to find out.
                present = {row[0] for row in self._fetchall(sql.select_zetl_tables(), (self.schema_name,))}
                self._has_checkpoints = sql.CHECKPOINT_TABLE in present
                self._has_metadata = sql.METADATA_TABLE in present
                self._has_epoch = self._has_checkpoints and sql.EPOCH_COLUMN in self._checkpoint_columns()
            else:
                self._execute(sql.create_schema(self.schema_name))
                self._execute(sql.create_checkpoint_table(self.schema_name))
                self._execute(sql.create_metadata_table(self.schema_name))
                if sql.EPOCH_COLUMN not in self._checkpoint_columns():  # a table from before fencing
                    self._execute(sql.add_checkpoint_epoch(self.schema_name))
                self._has_checkpoints = self._has_metadata = self._has_epoch = True
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
            stored = self._fetchall(sql.select_metadata(schema_name), (target,)) if catalog and self._has_metadata else []
            self._conn.commit()
        except Exception as exc:
            self._rollback()
            raise map_driver_error(exc, action="reading the target schema", table=f"{schema_name}.{target}") from exc
        if not catalog:
            return None
        if stored:
            layout = TableLayout.from_json(stored[0][0], schema_name, target)
            if layout.table != table:
                raise SchemaError(
                    f"source tables {layout.table} and {table} both map to Redshift table {schema_name}.{target}; "
                    "make sink.table_name tell them apart (e.g. \"{namespace}_{name}\") or replicate them with different schemas",
                    table=str(table),
                )
            self._unmanaged[table] = self._unmanaged_columns(layout, catalog)
            return layout
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

    def _unmanaged_columns(self, layout: TableLayout, catalog: list[Any]) -> tuple[Field, ...]:
        """Columns of the Redshift table that zetl's layout does not know (added by hand)."""
        known = {c.target for c in layout.columns} | ({n for n, _ in HISTORY_COLUMNS} if layout.history else set())
        fields = []
        for name, data_type, length, precision, scale, _nullable in catalog:
            if name in known:
                continue
            try:
                ctype = canonical_type(str(data_type), length, precision, scale)
            except ValueError as exc:
                self.log.warning("column %s.%s.%s (not created by zetl) is left out of the target schema: %s", layout.target_schema, layout.target_table, name, exc)
                continue
            fields.append(Field(name, ctype, nullable=True, source_type=str(data_type)))
        return tuple(fields)

    def current_schema(self, table: TableId) -> Schema | None:
        """The table as it is in Redshift: zetl's columns (with their source names and canonical
        nullability), then columns added by hand (nullable; zetl never writes them); None if the
        table does not exist."""
        layout = self._layout(table)
        if layout is None:
            return None
        schema = layout.schema()
        taken = set(schema.names)
        extra = tuple(f for f in self._unmanaged.get(table, ()) if f.name not in taken)
        return Schema(schema.table, schema.fields + extra, schema.primary_key) if extra else schema

    def managed_tables(self) -> list[TableId] | None:
        """The source tables whose layout zetl keeps in the target schema's ``_zetl_tables`` and
        whose Redshift table still exists (sorted). Read only: without ``_zetl_tables`` (nothing
        created yet, or a read-only open before any run) there are none."""
        if not self._has_metadata:
            return []
        from .identifiers import quote

        try:
            stored = self._fetchall(f'SELECT "target_table", "layout" FROM {quote(self.schema_name)}.{quote(sql.METADATA_TABLE)}')
            existing = {row[0] for row in self._fetchall("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (self.schema_name,))}
            self._conn.commit()
        except Exception as exc:
            self._rollback()
            raise map_driver_error(exc, action="listing the tables zetl manages", table=f"{self.schema_name}.{sql.METADATA_TABLE}") from exc
        found: set[TableId] = set()
        for target, layout_json in stored:
            if target not in existing:
                continue
            table = TableLayout.from_json(layout_json, self.schema_name, target).table
            if self.target_table_name(table) == target:  # else another table_name template made it
                found.add(table)
        return sorted(found)

    # -- checkpoints ----------------------------------------------------------------------
    def stored_position(self) -> Position | None:
        if not self._has_checkpoints:  # read only, before any run: nothing stored yet
            self._stored, self._stored_loaded = None, True
            return None
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

    def _checkpoint_columns(self) -> set[str]:
        return {row[0] for row in self._fetchall(sql.select_checkpoint_columns(), (self.schema_name,))}

    def stored_epoch(self) -> int | None:
        """The writer epoch stored in the integration's ``_zetl_checkpoints`` row (None: none)."""
        if not self._has_epoch:
            return None
        try:
            rows = self._fetchall(sql.select_checkpoint_epoch(self.schema_name), (self.context.integration,))
            self._conn.commit()
        except Exception as exc:
            self._rollback()
            raise map_driver_error(exc, action="reading the stored writer epoch") from exc
        epoch = int(rows[0][0] or 0) if rows else 0
        return epoch or None

    def _fence(self) -> None:
        """First statement of a write or schema-change transaction: record this run's writer epoch
        in the checkpoint row, which also locks it until the transaction ends, unless the row
        holds a greater one: then another run took over and ``WriterFencedError`` is raised (the
        caller rolls back, nothing is written). Epoch 0 (library use) takes no part."""
        epoch = self.context.writer_epoch
        if epoch <= 0:
            return
        updated = self._execute(sql.fence_checkpoint(self.schema_name), (epoch, self.context.integration, epoch)).rowcount
        if updated:
            return
        rows = self._fetchall(sql.select_checkpoint_epoch(self.schema_name), (self.context.integration,))
        stored = int(rows[0][0] or 0) if rows else 0
        if stored > epoch:
            raise WriterFencedError(
                f"the checkpoint of integration '{self.context.integration}' in Redshift ({self.schema_name}.{sql.CHECKPOINT_TABLE}) was written by writer epoch {stored}, "
                f"newer than this run's epoch {epoch}: another run took over (a run with another state directory, or this process was paused "
                "while it lost its lock). This run stops without writing; keep one run of the integration (see `zetl status`) and stop the others.",
                retryable=False,
            )

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
    def _require_writable(self, what: str) -> None:
        if self.context.read_only:
            raise SinkError(f"the Redshift sink was opened read only (zetl drift); refusing to {what}", retryable=False)

    def write(self, batch: Batch) -> Position | None:
        self._require_writable("write a batch")
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
        self._current: tuple[TableLayout, Segment] | None = None
        try:
            self._fence()
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
                epoch = max(self.context.writer_epoch, 0)
                if not self._execute(sql.update_checkpoint(schema_name), (position_json, epoch, self.context.integration)).rowcount:
                    self._execute(sql.insert_checkpoint(schema_name), (self.context.integration, position_json, epoch))
            self._conn.commit()
        except ZetlError:
            self._rollback()
            self._cleanup(staged_files)
            raise
        except Exception as exc:
            self._rollback()
            self._cleanup(staged_files)
            error = map_driver_error(exc, action="writing a batch", table=table_name)
            rejected = self._find_rejected_value(exc)
            if rejected is not None:
                error = SinkError(f"{error.message}; {rejected}", retryable=error.retryable)
            raise error from exc
        self._cleanup(staged_files)
        if batch.end_position is not None:
            self._stored, self._stored_loaded = batch.end_position, True
        self._stats["batches"] += 1
        self._stats["rows"] += batch.row_count
        return batch.end_position

    def _find_rejected_value(self, exc: BaseException) -> str | None:
        """For a data error (SQLSTATE 22xxx), which column and value of the failing segment it was."""
        fields = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
        if not str(fields.get("C", "")).startswith("22") or self._current is None or self._conn is None:
            return None
        layout, segment = self._current
        encoder = ValueEncoder(layout, self.config.oversize_strings, self.log)
        try:
            self._conn.autocommit = True
            found = locate_rejected_value(self._execute, layout, segment.rows, encoder)
        except Exception as probe_error:  # diagnosis is best effort; the original error stands
            self.log.debug("could not locate the rejected value: %s", probe_error)
            return None
        finally:
            try:
                self._conn.autocommit = False
            except Exception:
                pass
        return found.describe(layout) if found is not None else None

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
        self._current = (layout, segment)
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

    def _load_stage(self, stage: sql.StageLayout, rows: list[StagedRow], staged_files: list[StagedBatch], force_copy: bool = False) -> None:
        encoder = ValueEncoder(stage.layout, self.config.oversize_strings, self.log)
        if force_copy or self._use_copy(len(rows)):
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
        try:
            encoded = list(self._staged_values(stage, rows, encoder.param))
        except DocumentTooLargeForInsert:
            if self._stager is None or self.config.load != "auto":
                raise
            self.log.info("a JSON document of %s is over 65535 bytes: loading this batch with COPY", stage.layout.table)
            self._load_stage(stage, rows, staged_files, force_copy=True)
            return
        per_row = len(stage.data_columns())
        chunk = max(1, min(self.config.insert_rows_per_statement, _MAX_PARAMS // per_row))
        for begin in range(0, len(encoded), chunk):
            part = encoded[begin : begin + chunk]
            self._execute(sql.insert_into_stage(stage, len(part)), [v for row in part for v in row])
        self._stats["insert_batches"] += 1

    def status(self) -> dict[str, Any]:
        return {
            "target": f"{self.config.host or self.config.cluster_identifier or self.config.serverless_workgroup}/{self.config.database}.{self.schema_name}",
            "load": self.config.load,
            "history_mode": self.config.history_mode,
            **self._stats,
        }
