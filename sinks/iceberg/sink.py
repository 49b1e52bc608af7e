"""The Iceberg sink: each source table becomes an Iceberg table, committed exactly once.

How writes work (pyiceberg writes copy-on-write only: no delete files):

* Batches are buffered per table and committed at most once per ``commit_interval`` (at once
  when the last commit is older than that, so a lone change is not held back; earlier when
  ``max_buffered_rows`` changes wait; always when the runner forces a flush), one Iceberg
  snapshot per table per commit. ``write`` returns the position of the last commit, ``flush(force=True)``
  commits what is buffered.
* Within a commit each primary key is collapsed to its last change (``TableBuffer``).
* The keys of the commit are looked for only in the data files whose column statistics may hold
  them (a filter on the first key column: an ``IN`` list for up to 200 keys, a min/max range
  above that). Files that hold none of the keys are left alone; rows whose keys are new are simply
  appended. Only the files holding updated or deleted keys are rewritten (their other rows are
  kept), and the rewrite and the new rows are one ``overwrite`` snapshot, so readers never see a
  half-applied commit. Snapshot rows (``RowChunk``) go the same way: into an empty table they are
  a plain append.
* Written rows are sorted by primary key, so each file covers a narrow key range and the
  statistics filter above skips most files at the next commit.
* ``UNCHANGED`` values (TOAST) are taken from the row being replaced, read from the same files.
* TRUNCATE drops every data file in the same snapshot as the rows buffered after it.

Measured (BENCHMARKS.md, 500k-row table, one commit each): 100k new keys 0.33 s (append only);
100k random updates 0.64 s; 1000 neighbouring updates 0.16 s (one file rewritten); pyiceberg's
own ``Table.upsert`` of the same 100k updates 12.8 s. A commit costs about the same for 1 or
10 000 changes of a table, hence one commit per ``commit_interval`` rather than per batch.

Schema changes (pyiceberg ``UpdateSchema``, metadata only): add column (always optional: Iceberg
cannot add a required column to existing rows), widen int -> long, float -> double, decimal
precision (same scale), make nullable, drop column (not a key or partition column), rename
column. ``can_apply`` answers per change; anything else raises ``SchemaError`` naming the table
and column. Canonical types Iceberg cannot express (json, int16, string(n)) are recorded in the
table property ``zetl.column-types`` so that ``current_schema`` reports them as created.

Exactly once: every snapshot carries the integration name and the source position in its summary
(see ``positions``); ``stored_position`` reads them back and each table ignores replayed changes at
or before its own stored position. Tables are written only by zetl (no delete files expected).

Fencing: every snapshot also carries the run's ``context.writer_epoch``; ``stored_epoch`` is the
greatest over the integration's tables. A commit is built on the table metadata it checked (no
newer epoch in it), and the catalog accepts a commit only when that metadata is still the table's
current one (pyiceberg's optimistic commit), so check and commit are one atomic step: a commit
refused because the table moved on is checked again on the fresh metadata, and a newer epoch
there raises ``WriterFencedError`` (nothing committed). Schema changes check the fresh metadata
just before they apply. Epoch 0 (library use) records and checks nothing.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import signal
import time
from pathlib import Path
from typing import Any, Iterable

import orjson

from zetl.errors import SchemaError, SinkConnectionError, SinkError, WriterFencedError
from zetl.events import Batch, ChangeEvent, Op, Position, RowChunk, TableId
from zetl.names import URI_PATH_NAMES, safe_name, unsafe_reason
from zetl.plugin import PluginContext, require
from zetl.schema.changes import AddColumn, AlterColumnType, CreateTable, DropColumn, DropTable, MakeColumnNullable, RenameColumn, SchemaChange
from zetl.schema.types import DataType, Field, Schema, TypeKind
from zetl.sink import Sink, SinkCapabilities

from zetl_sinks.iceberg.buffer import TableBuffer
from zetl_sinks.iceberg.config import PARTITION_TRANSFORM, IcebergConfig
from zetl_sinks.iceberg.positions import INTEGRATION_KEY, TableMark, newest_epoch, read_mark, resume_position, summary_properties
from zetl_sinks.iceberg.typemap import from_iceberg, same_storage, to_iceberg

__all__ = ["IcebergSink"]

TYPES_PROPERTY = "zetl.column-types"
PRIMARY_KEY_PROPERTY = "zetl.primary-key"
SOURCE_TABLE_PROPERTY = "zetl.source-table"
MODE_PROPERTY = "zetl.mode"
CHANGELOG_COLUMNS = ("_op", "_position", "_commit_ts")
_SECRET_WORDS = ("password", "secret", "token", "key", "credential")
_URI_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")

KILL_ENV = "ZETL_ICEBERG_KILL_AT"
"""Crash tests only: ``after-commit:N`` SIGKILLs the process right after its N-th commit round
(Iceberg committed, checkpoint not yet saved); ``mid-round:N`` after the first table of its N-th
round that spans several tables (the other tables not committed yet)."""


class IcebergSink(Sink[IcebergConfig]):
    """Writes to Apache Iceberg tables through pyiceberg (see the module docstring)."""

    name = "iceberg"
    config_class = IcebergConfig
    capabilities = SinkCapabilities(
        schema_changes=frozenset({"create.table", "drop.table", "add.column", "alter.column.type", "alter.column.nullability", "drop.column", "rename.column"}),
        stores_checkpoint=True,
        nested_types=True,
        identifier_case="preserve",
    )
    requires = ("pyiceberg",)
    extra = "iceberg"

    def __init__(self, config: IcebergConfig, context: PluginContext | None = None) -> None:
        super().__init__(config, context)
        self._catalog: Any = None
        self._tables: dict[TableId, Any] = {}
        self._marks: dict[TableId, TableMark] = {}
        self._buffers: dict[TableId, TableBuffer] = {}
        self._pending_end: Position | None = None
        self._durable: Position | None = None
        self._first_buffered_at: float | None = None
        self._buffered_rows = 0
        self._commits = 0
        self._last_commit_at: float | None = None
        self._last_commit_seconds: float | None = None
        self._last_commit_mono: float | None = None
        self._kill_at = _parse_kill_at(os.environ.get(KILL_ENV))
        self._multi_table_rounds = 0

    # -- connection ---------------------------------------------------------------------------
    def _catalog_properties(self) -> dict[str, Any]:
        if self.config.catalog:
            return dict(self.config.catalog)
        base = Path(self.context.state_dir).resolve() / "iceberg"
        if self.context.read_only and not (base / "catalog.db").exists():
            # inspection before the first run: an empty catalog, and no files left behind
            return {"type": "sql", "uri": "sqlite:///:memory:", "warehouse": (base / "warehouse").as_uri()}
        (base / "warehouse").mkdir(parents=True, exist_ok=True)
        return {"type": "sql", "uri": f"sqlite:///{base / 'catalog.db'}", "warehouse": (base / "warehouse").as_uri()}

    def open(self) -> None:
        catalog_module = require("pyiceberg.catalog", extra="iceberg", what="Iceberg sink")
        require("pyiceberg.io.pyarrow", extra="iceberg", what="Iceberg sink (pyarrow writer)")
        properties = self._catalog_properties()
        try:
            self._catalog = catalog_module.load_catalog(self.config.catalog_name, **properties)
            if not self.context.read_only:  # inspection (zetl drift) creates nothing
                self._catalog.create_namespace_if_not_exists(self._namespace)
        except Exception as exc:
            kind = properties.get("type", "?")
            message = (
                f"cannot open the Iceberg catalog '{self.config.catalog_name}' (type {kind}) or its namespace '{self.config.namespace}': "
                f"{type(exc).__name__}: {self._redact(str(exc))}. Check the sink's 'catalog' settings."
            )
            if isinstance(exc, (ValueError, TypeError, KeyError, ImportError)):
                raise SinkError(message, retryable=False) from None  # a wrong setting: retrying cannot help
            raise SinkConnectionError(message) from None

    def _redact(self, text: str) -> str:
        """``text`` without the catalog's secret values (drivers quote URIs and keys in errors)."""
        for key, value in (self.config.catalog or {}).items():
            if isinstance(value, str) and len(value) >= 4 and any(w in key.lower() for w in _SECRET_WORDS):
                text = text.replace(value, "***")
        return _URI_PASSWORD.sub(r"\1***@", text)

    def close(self) -> None:
        self._catalog = None
        self._tables.clear()
        self._buffers.clear()
        self._buffered_rows = 0
        self._first_buffered_at = None

    @property
    def _namespace(self) -> tuple[str, ...]:
        return tuple(self.config.namespace.split("."))

    def _require_open(self) -> Any:
        if self._catalog is None:
            raise SinkError("the Iceberg sink is not open (call open() first)")
        return self._catalog

    # -- naming -------------------------------------------------------------------------------
    def table_identifier(self, table: TableId) -> tuple[str, ...]:
        """The Iceberg identifier (namespace..., name) of a source table.

        The table name becomes a directory of the warehouse (the table's location), so the
        source's schema and table names go through ``zetl.names.safe_name`` (URI path rules)
        before they fill the template: no path separator, ``..``, control character, ``%``,
        ``?`` or ``#`` reaches the location. Names without those map exactly as before."""
        template = self.config.options_for(table).table_name or self.config.table_name
        schema = safe_name(table.namespace, URI_PATH_NAMES) if table.namespace else ""
        name_part = safe_name(table.name, URI_PATH_NAMES)
        name = template.format(schema=schema, namespace=schema, table=name_part, integration=self.context.integration).strip("_") or name_part
        reason = unsafe_reason(name, URI_PATH_NAMES)
        if reason is not None:  # only configuration can bring this (e.g. the integration's name)
            raise SinkError(f"the Iceberg table name {name!r} for source table {table} cannot be used: {reason}; change the sink's table_name template", retryable=False)
        return (*self._namespace, name)

    def _ident_text(self, table: TableId) -> str:
        return ".".join(self.table_identifier(table))

    def _load(self, table: TableId) -> Any | None:
        cached = self._tables.get(table)
        if cached is not None:
            return cached
        from pyiceberg.exceptions import NoSuchTableError

        try:
            loaded = self._require_open().load_table(self.table_identifier(table))
        except NoSuchTableError:
            return None
        self._check_owner(table, loaded)
        self._tables[table] = loaded
        return loaded

    def _check_owner(self, table: TableId, loaded: Any) -> None:
        """Refuse an Iceberg table that another source table or the other mode created."""
        properties = loaded.metadata.properties
        source = properties.get(SOURCE_TABLE_PROPERTY)
        ident = self._ident_text(table)
        # str(table) quotes parts that hold a dot; tables created before that recorded the unquoted form
        if source is not None and source not in (str(table), table.unquoted):
            raise SchemaError(
                f"Iceberg table {ident} holds source table {source}, but {table} maps to the same name; "
                "give the sink a table_name template that tells them apart (e.g. '{schema}_{table}')",
                table=str(table),
            )
        mode = properties.get(MODE_PROPERTY)
        if mode is not None and mode != self.config.mode:
            raise SchemaError(
                f"Iceberg table {ident} was created in mode '{mode}' but the sink is configured with mode '{self.config.mode}'; "
                "use the same mode, another namespace, or drop the table to start over",
                table=str(table),
            )

    def _table_or_fail(self, table: TableId) -> Any:
        loaded = self._load(table)
        if loaded is None:
            raise SinkError(
                f"Iceberg table {self._ident_text(table)} for source table {table} does not exist; it is created when the "
                "schema planner applies 'create.table' (check the schema_evolution policy, and that the table has a primary key in mode 'current')",
                retryable=False,
            )
        return loaded

    # -- schemas ------------------------------------------------------------------------------
    @staticmethod
    def _recorded_types(iceberg_table: Any) -> dict[str, DataType]:
        text = iceberg_table.metadata.properties.get(TYPES_PROPERTY)
        if not text:
            return {}
        out: dict[str, DataType] = {}
        for name, spec in orjson.loads(text).items():
            try:
                out[name] = DataType.parse(spec)
            except ValueError:
                continue
        return out

    def _canonical_types(self, iceberg_table: Any) -> dict[str, DataType]:
        """Canonical type of every column: the recorded one when it still matches the storage."""
        recorded = self._recorded_types(iceberg_table)
        out: dict[str, DataType] = {}
        for f in iceberg_table.schema().fields:
            dtype = recorded.get(f.name)
            if dtype is None or not same_storage(dtype, f.field_type):
                dtype = from_iceberg(f.field_type)
            out[f.name] = dtype
        return out

    def current_schema(self, table: TableId) -> Schema | None:
        iceberg_table = self._load(table)
        if iceberg_table is None:
            return None
        types = self._canonical_types(iceberg_table)
        pk_text = iceberg_table.metadata.properties.get(PRIMARY_KEY_PROPERTY)
        iceberg_schema = iceberg_table.schema()
        if pk_text:
            primary_key = tuple(orjson.loads(pk_text))
        else:
            primary_key = tuple(iceberg_schema.find_column_name(i) for i in iceberg_schema.identifier_field_ids)
        fields = [
            Field(f.name, types[f.name], nullable=not f.required, primary_key=f.name in primary_key, doc=f.doc)
            for f in iceberg_schema.fields
            if f.name not in CHANGELOG_COLUMNS or self.config.mode != "changelog"
        ]
        return Schema(table, tuple(fields), tuple(c for c in primary_key if any(f.name == c for f in fields)))

    def can_apply(self, change: SchemaChange) -> bool:
        if isinstance(change, CreateTable):
            return self.config.mode == "changelog" or bool(change.schema.primary_key)
        if isinstance(change, AddColumn):
            return True
        if isinstance(change, AlterColumnType):
            return self._widening_problem(change) is None
        if isinstance(change, MakeColumnNullable):
            schema = self.current_schema(change.table) if self._catalog is not None else None
            return schema is None or change.column not in schema.primary_key
        if isinstance(change, (DropColumn, RenameColumn)):
            return self._column_change_problem(change) is None
        if isinstance(change, DropTable):
            return True
        return False

    def _column_change_problem(self, change: DropColumn | RenameColumn) -> str | None:
        """Why a drop or rename cannot be applied (None: it can, or it is already in effect)."""
        column = change.column if isinstance(change, DropColumn) else change.old_name
        if column in CHANGELOG_COLUMNS or (isinstance(change, RenameColumn) and change.new_name in CHANGELOG_COLUMNS):
            return f"{CHANGELOG_COLUMNS} are the changelog's own columns"
        if self._catalog is None:
            return None
        iceberg_table = self._load(change.table)
        if iceberg_table is None:
            return "the table does not exist"
        schema = self.current_schema(change.table)
        assert schema is not None
        if isinstance(change, RenameColumn):
            if change.old_name not in schema and change.new_name in schema:
                return None  # already renamed
            if change.new_name in schema:
                return f"column {change.new_name!r} exists already"
            return None if change.old_name in schema else f"no column {change.old_name!r}"
        if column not in schema:
            return None  # already dropped
        if column in schema.primary_key:
            return "it is part of the primary key (the table's identifier fields)"
        field_id = iceberg_table.schema().find_field(column).field_id
        if any(f.source_id == field_id for f in iceberg_table.spec().fields):
            return "the table is partitioned by it"
        return None

    def _widening_problem(self, change: AlterColumnType) -> str | None:
        """Why Iceberg cannot make this type change (None: it can)."""
        old = change.old_type
        if self._catalog is not None:
            schema = self.current_schema(change.table)
            if schema is not None and change.column in schema:
                old = schema.field(change.column).type
        new = change.new_type
        if old is None:
            return "the column's current type is unknown"
        if old == new:
            return None
        ints = {TypeKind.INT16: 0, TypeKind.INT32: 0, TypeKind.INT64: 1}
        if old.kind in ints and new.kind in ints:
            return None if ints[new.kind] >= ints[old.kind] else f"{old} -> {new} narrows the column"
        if old.kind is TypeKind.FLOAT32 and new.kind is TypeKind.FLOAT64:
            return None
        if old.kind is TypeKind.DECIMAL and new.kind is TypeKind.DECIMAL:
            if new.scale != old.scale:
                return "Iceberg cannot change a decimal's scale"
            if (new.precision or 0) < (old.precision or 0):
                return "Iceberg cannot reduce a decimal's precision"
            if (new.precision or 0) > 38:
                return "Iceberg decimals hold at most 38 digits"
            return None
        if old.kind is TypeKind.STRING and new.kind is TypeKind.STRING:
            return None  # both are Iceberg strings: only the recorded length changes
        return f"Iceberg allows only int -> long, float -> double and wider decimal precision, not {old} -> {new}"

    def apply(self, change: SchemaChange) -> None:
        self._require_open()
        # Rows buffered so far are in the shape before the change: commit them first.
        self._commit_all()
        self._tables.pop(change.table, None)  # the current metadata, for the epoch check
        current = self._load(change.table)
        if current is not None:
            self._refuse_if_fenced(change.table, current)
        try:
            if isinstance(change, CreateTable):
                self._create(change.schema)
            elif isinstance(change, AddColumn):
                self._add_column(change)
            elif isinstance(change, AlterColumnType):
                self._alter_type(change)
            elif isinstance(change, MakeColumnNullable):
                self._make_nullable(change)
            elif isinstance(change, (DropColumn, RenameColumn)):
                self._drop_or_rename(change)
            elif isinstance(change, DropTable):
                self._drop_table(change)
            else:
                column = getattr(change, "column", None) or getattr(change, "old_name", None)
                raise SchemaError(
                    f"the Iceberg sink does not apply '{change.kind}' ({change}) on {self._ident_text(change.table)}; "
                    "choose a schema_evolution policy that keeps the column (lenient) or skips the change",
                    table=str(change.table),
                    column=column,
                )
        finally:
            self._tables.pop(change.table, None)

    def _drop_table(self, change: DropTable) -> None:
        """Remove the table from the catalog (idempotent: a table already gone is fine).

        Only the catalog entry goes: the data and metadata files stay in the warehouse, so a drop
        the user did not mean can be undone by registering the last metadata file again
        (``register_table``); delete them with the warehouse's own tools once sure."""
        from pyiceberg.exceptions import NoSuchTableError

        self._buffers.pop(change.table, None)
        identifier = self.table_identifier(change.table)
        try:
            self._require_open().drop_table(identifier)
        except NoSuchTableError:
            return
        self.context.logger.warning("dropped Iceberg table %s (its files stay in the warehouse)", ".".join(identifier))

    def _create(self, schema: Schema) -> None:
        from pyiceberg.schema import Schema as IcebergSchema
        from pyiceberg.types import DoubleType, FloatType, NestedField, StringType, TimestamptzType

        if self._load(schema.table) is not None:
            return  # idempotent
        changelog = self.config.mode == "changelog"
        if not changelog and not schema.primary_key:
            raise SchemaError(
                f"table {schema.table} has no primary key: mode 'current' needs one to apply updates and deletes; "
                "add a primary key in the source or use mode: changelog for this sink",
                table=str(schema.table),
            )
        ids = itertools.count(len(schema.fields) + len(CHANGELOG_COLUMNS) + 1)
        fields = []
        identifier_ids = []
        for i, f in enumerate(schema.fields, start=1):
            itype = to_iceberg(f.type, lambda: next(ids))
            is_key = f.name in schema.primary_key
            required = (is_key or not f.nullable) and not changelog
            fields.append(NestedField(i, f.name, itype, required=required, doc=f.doc))
            if is_key and not changelog and not isinstance(itype, (FloatType, DoubleType)) and itype.is_primitive:
                identifier_ids.append(i)
        if changelog:
            base = len(schema.fields)
            fields += [
                NestedField(base + 1, "_op", StringType(), required=True, doc="r, c, u, d or t"),
                NestedField(base + 2, "_position", StringType(), required=False, doc="source position (JSON)"),
                NestedField(base + 3, "_commit_ts", TimestamptzType(), required=False, doc="source commit time"),
            ]
        iceberg_schema = IcebergSchema(*fields, identifier_field_ids=identifier_ids)
        options = self.config.options_for(schema.table)
        properties = {
            "format-version": "2",
            **options.properties,
            INTEGRATION_KEY: self.context.integration,
            SOURCE_TABLE_PROPERTY: str(schema.table),
            MODE_PROPERTY: self.config.mode,
            PRIMARY_KEY_PROPERTY: orjson.dumps(list(schema.primary_key)).decode(),
            TYPES_PROPERTY: orjson.dumps({f.name: str(f.type) for f in schema.fields}).decode(),
        }
        spec = self._partition_spec(schema, iceberg_schema, options.partition_by)
        try:
            self._require_open().create_table(self.table_identifier(schema.table), schema=iceberg_schema, partition_spec=spec, properties=properties)
        except Exception as exc:
            from pyiceberg.exceptions import TableAlreadyExistsError

            if isinstance(exc, TableAlreadyExistsError):
                return
            raise SinkError(f"cannot create Iceberg table {self._ident_text(schema.table)}: {type(exc).__name__}: {exc}", retryable=False) from exc

    def _partition_spec(self, schema: Schema, iceberg_schema: Any, partition_by: list[str]) -> Any:
        from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC, PartitionField, PartitionSpec
        from pyiceberg import transforms as tr

        if not partition_by:
            return UNPARTITIONED_PARTITION_SPEC
        fields = []
        for i, spec in enumerate(partition_by):
            m = PARTITION_TRANSFORM.match(spec)
            assert m is not None  # validated by the config
            if m.group(6):
                name, column, transform = "identity", m.group(6), tr.IdentityTransform()
            elif m.group(1):
                name, column = m.group(1), m.group(2)
                transform = {
                    "identity": tr.IdentityTransform(),
                    "year": tr.YearTransform(),
                    "month": tr.MonthTransform(),
                    "day": tr.DayTransform(),
                    "hour": tr.HourTransform(),
                    "void": tr.VoidTransform(),
                }[name]
            else:
                name, width, column = m.group(3), int(m.group(4)), m.group(5)
                transform = tr.BucketTransform(width) if name == "bucket" else tr.TruncateTransform(width)

            if name != "identity" and importlib.util.find_spec("pyiceberg_core") is None:
                raise SinkError(
                    f"partition field {spec!r} of Iceberg table {self._ident_text(schema.table)}: pyiceberg writes {name} partitions only with "
                    "pyiceberg-core installed: pip install 'zetl[iceberg]' (or partition by identity(col))",
                    retryable=False,
                )
            if column not in schema:
                raise SchemaError(
                    f"partition field {spec!r} of Iceberg table {self._ident_text(schema.table)} names column {column!r}, which table {schema.table} does not have "
                    f"(columns: {', '.join(schema.names)}); fix the sink's partition_by",
                    table=str(schema.table),
                    column=column,
                )
            source_id = iceberg_schema.find_field(column).field_id
            suffix = "" if name == "identity" else f"_{name}"
            fields.append(PartitionField(source_id=source_id, field_id=1000 + i, transform=transform, name=f"{column}{suffix}"))
        return PartitionSpec(*fields)

    def _record_types(self, txn: Any, iceberg_table: Any, updates: dict[str, DataType]) -> None:
        recorded = {name: str(t) for name, t in self._recorded_types(iceberg_table).items()}
        recorded.update({name: str(t) for name, t in updates.items()})
        txn.set_properties({TYPES_PROPERTY: orjson.dumps(recorded).decode()})

    def _add_column(self, change: AddColumn) -> None:
        iceberg_table = self._table_or_fail(change.table)
        if _has_field(iceberg_table, change.field.name):
            return  # idempotent
        with iceberg_table.transaction() as txn:
            with txn.update_schema() as update:
                # Iceberg cannot add a required column to a table that has rows: always optional.
                # A one-element path: a column name may contain dots (flattened keys such as doc.city).
                update.add_column((change.field.name,), to_iceberg(change.field.type, _never_called), doc=change.field.doc)
                if change.after and _has_field(iceberg_table, change.after):
                    update.move_after((change.field.name,), change.after)
            self._record_types(txn, iceberg_table, {change.field.name: change.field.type})

    def _alter_type(self, change: AlterColumnType) -> None:
        problem = self._widening_problem(change)
        if problem is not None:
            raise SchemaError(f"cannot change column {change.column!r} of Iceberg table {self._ident_text(change.table)}: {problem}", table=str(change.table), column=change.column)
        iceberg_table = self._table_or_fail(change.table)
        current = iceberg_table.schema().find_field(change.column)
        new_type = to_iceberg(change.new_type, _never_called)
        with iceberg_table.transaction() as txn:
            if current.field_type != new_type:
                with txn.update_schema() as update:
                    update.update_column((change.column,), field_type=new_type)
            self._record_types(txn, iceberg_table, {change.column: change.new_type})

    def _drop_or_rename(self, change: DropColumn | RenameColumn) -> None:
        """Metadata-only in Iceberg (columns are tracked by field id; data files stay as they are)."""
        column = change.column if isinstance(change, DropColumn) else change.old_name
        problem = self._column_change_problem(change)
        if problem is not None:
            raise SchemaError(f"cannot {change} in Iceberg table {self._ident_text(change.table)}: {problem}", table=str(change.table), column=column)
        iceberg_table = self._table_or_fail(change.table)
        if not _has_field(iceberg_table, column):
            return  # idempotent: already dropped or renamed
        recorded = {name: str(t) for name, t in self._recorded_types(iceberg_table).items()}
        primary_key = list(orjson.loads(iceberg_table.metadata.properties.get(PRIMARY_KEY_PROPERTY, "[]")))
        with iceberg_table.transaction() as txn:
            with txn.update_schema() as update:
                if isinstance(change, DropColumn):
                    update.delete_column((column,))
                else:
                    update.rename_column((column,), change.new_name)
            if isinstance(change, RenameColumn):
                if column in recorded:
                    recorded[change.new_name] = recorded.pop(column)
                primary_key = [change.new_name if c == column else c for c in primary_key]
            else:
                recorded.pop(column, None)
            txn.set_properties({TYPES_PROPERTY: orjson.dumps(recorded).decode(), PRIMARY_KEY_PROPERTY: orjson.dumps(primary_key).decode()})

    def _make_nullable(self, change: MakeColumnNullable) -> None:
        iceberg_table = self._table_or_fail(change.table)
        field = iceberg_table.schema().find_field(change.column)
        if field.field_id in iceberg_table.schema().identifier_field_ids:
            raise SchemaError(f"column {change.column!r} of Iceberg table {self._ident_text(change.table)} is part of the primary key and cannot become nullable", table=str(change.table), column=change.column)
        if not field.required:
            return
        with iceberg_table.update_schema() as update:
            update.update_column((change.column,), required=False)

    # -- writing ------------------------------------------------------------------------------
    def _mark(self, table: TableId) -> TableMark:
        mark = self._marks.get(table)
        if mark is None:
            iceberg_table = self._load(table)
            mark = read_mark(iceberg_table, self._ident_text(table), self.context.integration) if iceberg_table is not None else TableMark(self._ident_text(table), None, (), None)
            self._marks[table] = mark
        return mark

    def _already_committed(self, table: TableId, position: Position | None) -> bool:
        committed = self._mark(table).position
        return committed is not None and position is not None and position.kind == committed.kind and position <= committed

    def _buffer(self, table: TableId) -> TableBuffer:
        buffer = self._buffers.get(table)
        if buffer is None:
            schema = self.current_schema(table)
            if schema is None:
                self._table_or_fail(table)
            assert schema is not None
            buffer = self._buffers[table] = TableBuffer(schema.primary_key)
        return buffer

    def write(self, batch: Batch) -> Position | None:
        self._require_open()
        for chunk in batch.chunks:
            self._add_chunk(chunk, batch.end_position)
        if batch.events:
            self._add_events(batch.events, batch.end_position)
        if batch.end_position is not None:
            self._pending_end = batch.end_position
        if self._buffered_rows == 0 and not any(not b.is_empty for b in self._buffers.values()):
            # Nothing waits: everything up to this batch is in Iceberg already.
            if self._pending_end is not None:
                self._durable = self._pending_end
            return self._durable
        if self._due():
            self._commit_all()
        return self._durable

    def _add_chunk(self, chunk: RowChunk, end: Position | None) -> None:
        if self._already_committed(chunk.table, chunk.position or end):
            return
        buffer = self._buffer(chunk.table)
        if self.config.mode == "changelog":
            for event in chunk.events():
                buffer.add_logged(event)
        else:
            buffer.add_chunk(chunk.rows, chunk.position)
        self._note_buffered(len(chunk))

    def _add_events(self, events: tuple[ChangeEvent, ...], end: Position | None) -> None:
        """Buffer row changes; the hot path of streaming, so per-table state is looked up once."""
        changelog = self.config.mode == "changelog"
        tables: dict[TableId, list[Any]] = {}
        last_table: TableId | None = None
        state: list[Any] = []
        added = 0
        for event in events:
            if event.table is not last_table:  # consecutive events mostly share the table object
                last_table = event.table
                state = tables.get(last_table)  # type: ignore[assignment]
                if state is None:
                    state = tables[last_table] = [self._buffer(last_table), self._mark(last_table).position]
            buffer, committed = state
            if committed is not None:
                position = event.position or end
                if position is not None and position.kind == committed.kind and position <= committed:
                    continue  # already in Iceberg (a replay after a crash)
                # Positions do not decrease within a batch: the rest of this table's events are new.
                state[1] = None
            if changelog:
                buffer.add_logged(event)
            elif event.op is Op.TRUNCATE:
                buffer.truncate()
            else:
                buffer.add_event(event)
            added += 1
        if added:
            self._note_buffered(added)

    def _note_buffered(self, rows: int) -> None:
        if self._first_buffered_at is None:
            self._first_buffered_at = time.monotonic()
        self._buffered_rows += rows

    def _due(self) -> bool:
        """A commit is due when rows wait and the last commit is ``commit_interval`` old (so a
        lone change after a quiet period is committed at once, and a busy stream once per
        interval), or when ``max_buffered_rows`` changes wait."""
        if self._first_buffered_at is None:
            return False
        if self._buffered_rows >= self.config.max_buffered_rows:
            return True
        return self._last_commit_mono is None or time.monotonic() - self._last_commit_mono >= self.config.commit_interval

    def flush(self, force: bool = False) -> Position | None:
        if self._catalog is None:
            return self._durable
        if force or self._due():
            self._commit_all()
        elif self._first_buffered_at is None and self._pending_end is not None:
            self._durable = self._pending_end
        return self._durable

    def _commit_all(self) -> None:
        """Commit every buffered table (one snapshot each), then move the durable position."""
        pending = {t: b for t, b in self._buffers.items() if not b.is_empty}
        position = self._pending_end
        if pending:
            started = time.monotonic()
            names = [self._ident_text(t) for t in pending]
            # A fixed order keeps the rounds of a crash-and-replay comparable.
            for i, table in enumerate(sorted(pending, key=str)):
                self._commit_table(table, pending[table], position, names)
                self._buffers.pop(table, None)
                if i == 0 and len(pending) > 1:
                    self._multi_table_rounds += 1
                    self._crash_point("mid-round", self._multi_table_rounds)
            self._commits += 1
            self._crash_point("after-commit", self._commits)
            self._last_commit_at = time.time()
            self._last_commit_mono = time.monotonic()
            self._last_commit_seconds = time.monotonic() - started
        self._buffers.clear()
        self._buffered_rows = 0
        self._first_buffered_at = None
        if position is not None:
            self._durable = position

    def _commit_table(self, table: TableId, buffer: TableBuffer, position: Position | None, round_tables: list[str]) -> None:
        from pyiceberg.exceptions import CommitFailedException

        iceberg_table = self._table_or_fail(table)
        self._refuse_if_fenced(table, iceberg_table)
        properties = summary_properties(self.context.integration, position, round_tables, self.context.writer_epoch)
        name = self._ident_text(table)
        from zetl_sinks.iceberg.writer import commit_changelog, commit_current

        commit = commit_changelog if self.config.mode == "changelog" else commit_current
        try:
            committed = commit(iceberg_table, buffer, self._canonical_types(iceberg_table), properties, name)
        except (SinkError, SchemaError):
            self._tables.pop(table, None)
            raise
        except CommitFailedException as exc:
            self._tables.pop(table, None)
            # The table moved on since the metadata this commit was built on: a newer run's commit?
            fresh = self._fresh_or_none(table)
            if fresh is not None:
                self._refuse_if_fenced(table, fresh)
            raise SinkConnectionError(f"commit to Iceberg table {name} was refused ({self._redact(str(exc))}); another writer changed it, the commit is retried", retryable=True) from exc
        except OSError as exc:
            self._tables.pop(table, None)
            raise SinkConnectionError(f"cannot write Iceberg table {name}: {self._redact(str(exc))}", retryable=True) from exc
        except Exception as exc:
            self._tables.pop(table, None)
            raise SinkError(f"cannot commit to Iceberg table {name}: {type(exc).__name__}: {self._redact(str(exc))}", retryable=False) from exc
        if committed is not None:
            self._tables[table] = committed  # the committed metadata: no reload from the catalog
        else:
            self._tables.pop(table, None)
        self._marks[table] = TableMark(name, position, tuple(round_tables), None)

    def _fresh_or_none(self, table: TableId) -> Any | None:
        """The table as the catalog has it now (None when it cannot be loaded: the caller's
        retryable error stands)."""
        try:
            return self._require_open().load_table(self.table_identifier(table))
        except Exception as exc:
            self.context.logger.debug("cannot reload Iceberg table %s: %s", self._ident_text(table), exc)
            return None

    def _refuse_if_fenced(self, table: TableId, iceberg_table: Any) -> None:
        """Raise ``WriterFencedError`` when ``iceberg_table`` holds a writer epoch newer than this
        run's (see the module docstring)."""
        own = self.context.writer_epoch
        if own <= 0:
            return
        newest = newest_epoch(iceberg_table, self.context.integration)
        if newest is not None and newest > own:
            self._tables.pop(table, None)
            self._buffers.clear()
            self._buffered_rows = 0
            self._first_buffered_at = None
            raise WriterFencedError(
                f"Iceberg table {self._ident_text(table)} was written by writer epoch {newest} of integration '{self.context.integration}', "
                f"newer than this run's epoch {own}: another run took over (a run with another state directory, or this process was paused "
                "while it lost its lock). This run stops without committing; keep one run of the integration (see `zetl status`) and stop the others.",
                retryable=False,
            )

    def _crash_point(self, where: str, count: int) -> None:
        if self._kill_at == (where, count):
            self.context.logger.warning("%s=%s:%d reached: killing the process", KILL_ENV, *self._kill_at)
            os.kill(os.getpid(), signal.SIGKILL)

    # -- checkpoint ---------------------------------------------------------------------------
    def _integration_tables(self) -> Iterable[tuple[str, Any]]:
        from pyiceberg.exceptions import NoSuchNamespaceError

        catalog = self._require_open()
        try:
            identifiers = catalog.list_tables(self._namespace)
        except NoSuchNamespaceError:  # nothing written yet (open() creates it unless read-only)
            return
        for identifier in identifiers:
            try:
                iceberg_table = catalog.load_table(identifier)
            except Exception as exc:  # a table dropped meanwhile, or one another tool cannot open
                self.context.logger.debug("skipping Iceberg table %s: %s", ".".join(identifier), exc)
                continue
            if iceberg_table.metadata.properties.get(INTEGRATION_KEY) == self.context.integration:
                yield ".".join(identifier), iceberg_table

    def managed_tables(self) -> list[TableId] | None:
        """The source tables of the Iceberg tables in the namespace that carry this integration's
        property (sorted; tables created by other integrations or by hand are left out)."""
        found: set[TableId] = set()
        for name, iceberg_table in self._integration_tables():
            source = iceberg_table.metadata.properties.get(SOURCE_TABLE_PROPERTY)
            if source:
                found.add(TableId.parse(source))
            else:
                self.context.logger.debug("Iceberg table %s has no %s property; left out of the managed tables", name, SOURCE_TABLE_PROPERTY)
        return sorted(found)

    def stored_position(self) -> Position | None:
        marks = {name: read_mark(t, name, self.context.integration) for name, t in self._integration_tables()}
        return resume_position(marks)

    def stored_epoch(self) -> int | None:
        """The greatest writer epoch recorded in the snapshots of the integration's tables."""
        epochs = [e for _, t in self._integration_tables() if (e := newest_epoch(t, self.context.integration)) is not None]
        return max(epochs, default=None)

    def status(self) -> dict[str, Any]:
        return {
            "buffered_rows": self._buffered_rows,
            "commits": self._commits,
            "last_commit_at": self._last_commit_at,
            "last_commit_seconds": self._last_commit_seconds,
            "durable_position": str(self._durable) if self._durable is not None else None,
        }


def _parse_kill_at(text: str | None) -> tuple[str, int] | None:
    if not text:
        return None
    where, _, count = text.partition(":")
    if where not in ("after-commit", "mid-round") or not count.isdigit():
        raise SinkError(f"{KILL_ENV}={text!r} is not understood; write after-commit:N or mid-round:N (crash tests only)")
    return where, int(count)


def _has_field(iceberg_table: Any, name: str) -> bool:
    return any(f.name == name for f in iceberg_table.schema().fields)


def _never_called() -> int:
    # Field ids of nested types added by a schema update are reassigned by pyiceberg.
    return 0

