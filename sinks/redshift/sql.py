"""Every statement the Redshift sink runs, built from layouts (pure functions, golden-tested).

Identifiers are always quoted (``identifiers.quote``); values always travel as parameters
(``%s``), except the COPY options, which Redshift accepts only as literals and which are
validated by ``quote_literal``.
"""

from __future__ import annotations

from .config import TableOptions
from .identifiers import quote, quote_literal
from .layout import HISTORY_COLUMNS, ColumnLayout, TableLayout

__all__ = [
    "CHECKPOINT_TABLE",
    "METADATA_TABLE",
    "StageLayout",
    "add_column",
    "copy_into_stage",
    "create_stage",
    "create_table",
]

CHECKPOINT_TABLE = "_zetl_checkpoints"
EPOCH_COLUMN = "writer_epoch"
METADATA_TABLE = "_zetl_tables"


def create_schema(schema: str) -> str:
    return f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}"


def create_checkpoint_table(schema: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {quote(schema)}.{quote(CHECKPOINT_TABLE)} "
        '("integration" VARCHAR(256) NOT NULL, "position" VARCHAR(65535) NOT NULL, "updated_at" TIMESTAMP NOT NULL, '
        f'{quote(EPOCH_COLUMN)} BIGINT DEFAULT 0, PRIMARY KEY ("integration"))'
    )


def add_checkpoint_epoch(schema: str) -> str:
    """Checkpoint tables created before fencing get the epoch column (0: no epoch recorded)."""
    return f"ALTER TABLE {quote(schema)}.{quote(CHECKPOINT_TABLE)} ADD COLUMN {quote(EPOCH_COLUMN)} BIGINT DEFAULT 0"


def select_checkpoint_columns() -> str:
    return f"SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = '{CHECKPOINT_TABLE}'"


def create_metadata_table(schema: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {quote(schema)}.{quote(METADATA_TABLE)} "
        '("target_table" VARCHAR(512) NOT NULL, "layout" VARCHAR(65535) NOT NULL, "updated_at" TIMESTAMP NOT NULL, PRIMARY KEY ("target_table"))'
    )


def _column_def(c: ColumnLayout) -> str:
    # Only key columns are NOT NULL: Redshift cannot relax NOT NULL later, and cannot add a
    # NOT NULL column without a default; the canonical nullability is kept in the metadata.
    return f"{c.quoted} {c.redshift_type}" + (" NOT NULL" if c.primary_key else "")


def create_table(layout: TableLayout, options: TableOptions | None = None) -> str:
    """``CREATE TABLE`` with the primary key (informational in Redshift) and the physical design."""
    parts = [_column_def(c) for c in layout.columns]
    if layout.history:
        parts += [f"{quote(n)} {t}" for n, t in HISTORY_COLUMNS]
    elif layout.primary_key:
        parts.append(f"PRIMARY KEY ({', '.join(c.quoted for c in layout.key_columns)})")
    sql = f"CREATE TABLE {layout.qualified} ({', '.join(parts)})"
    if options is not None:
        style = options.diststyle or ("key" if options.distkey else None)
        if style:
            sql += f" DISTSTYLE {style.upper()}"
        if options.distkey:
            sql += f" DISTKEY ({layout.column(options.distkey).quoted})"
        if options.sortkey:
            sql += f" COMPOUND SORTKEY ({', '.join(layout.column(k).quoted for k in options.sortkey)})"
    return sql


def add_column(layout: TableLayout, c: ColumnLayout) -> str:
    return f"ALTER TABLE {layout.qualified} ADD COLUMN {c.quoted} {c.redshift_type}"


def drop_column(layout: TableLayout, target: str) -> str:
    return f"ALTER TABLE {layout.qualified} DROP COLUMN {quote(target)}"


def rename_column(layout: TableLayout, old: str, new: str) -> str:
    return f"ALTER TABLE {layout.qualified} RENAME COLUMN {quote(old)} TO {quote(new)}"


def alter_varchar(layout: TableLayout, c: ColumnLayout) -> str:
    return f"ALTER TABLE {layout.qualified} ALTER COLUMN {c.quoted} TYPE {c.redshift_type}"


def copy_column(layout: TableLayout, source: str, target: ColumnLayout) -> str:
    """Fill ``target`` from column ``source`` (add-copy-swap widening), converting explicitly."""
    return f"UPDATE {layout.qualified} SET {target.quoted} = CAST({quote(source)} AS {target.redshift_type})"


def drop_table(layout: TableLayout) -> str:
    return f"DROP TABLE IF EXISTS {layout.qualified}"


def delete_all(layout: TableLayout) -> str:
    # DELETE, not TRUNCATE: TRUNCATE commits the transaction in Redshift, which would break the
    # one-transaction-per-batch guarantee.
    return f"DELETE FROM {layout.qualified}"


def close_all_versions(layout: TableLayout) -> str:
    return f'UPDATE {layout.qualified} SET "_valid_to" = %s WHERE "_valid_to" IS NULL'


# -- staging --------------------------------------------------------------------------------


class StageLayout:
    """A temporary staging table for one table's rows of one batch.

    Columns ``c0..cN`` hold the target columns in layout order (binary as hex text), then
    ``_zetl_op`` (``u`` upsert / ``d`` delete; history mode: r/c/u/d), ``_zetl_keep_<i>`` (true:
    column ``i`` keeps its value in the target: an unchanged marker), and in history mode the
    version's position, validity interval and whether it is the key's first version in the batch.
    """

    def __init__(self, name: str, layout: TableLayout, keep: tuple[int, ...]) -> None:
        self.name = name
        self.layout = layout
        self.keep = keep

    @property
    def quoted(self) -> str:
        return quote(self.name)

    def data_columns(self) -> list[str]:
        cols = [f"c{i}" for i in range(len(self.layout.columns))] + ["_zetl_op"] + [f"_zetl_keep_{i}" for i in self.keep]
        if self.layout.history:
            cols += ["_zetl_position", "_zetl_valid_from", "_zetl_valid_to", "_zetl_first"]
        return cols

    def value_expressions(self) -> list[str]:
        """The placeholder of each staged column in a multi-row INSERT."""
        exprs = ["JSON_PARSE(%s)" if c.redshift_type == "SUPER" else "%s" for c in self.layout.columns]
        exprs += ["%s"] * (len(self.data_columns()) - len(exprs))
        return exprs


def create_stage(stage: StageLayout) -> str:
    cols = [f'"c{i}" {c.staged_type}' for i, c in enumerate(stage.layout.columns)]
    cols.append('"_zetl_op" CHAR(1) NOT NULL')
    cols += [f'"_zetl_keep_{i}" BOOLEAN' for i in stage.keep]
    if stage.layout.history:
        cols += ['"_zetl_position" VARCHAR(4096)', '"_zetl_valid_from" TIMESTAMPTZ', '"_zetl_valid_to" TIMESTAMPTZ', '"_zetl_first" BOOLEAN']
    return f"CREATE TEMP TABLE {stage.quoted} ({', '.join(cols)})"


def insert_into_stage(stage: StageLayout, rows: int) -> str:
    cols = ", ".join(quote(c) for c in stage.data_columns())
    one = "(" + ", ".join(stage.value_expressions()) + ")"
    return f"INSERT INTO {stage.quoted} ({cols}) VALUES " + ", ".join([one] * rows)


def copy_into_stage(stage: StageLayout, manifest_url: str, jsonpaths_url: str, iam_role: str, region: str | None) -> str:
    """``COPY`` of gzipped JSON lines listed in a manifest; ``jsonpaths`` maps keys to columns,
    so SUPER columns receive the nested JSON value itself."""
    cols = ", ".join(quote(c) for c in stage.data_columns())
    role = "IAM_ROLE default" if iam_role == "default" else f"IAM_ROLE {quote_literal(iam_role)}"
    sql = (
        f"COPY {stage.quoted} ({cols}) FROM {quote_literal(manifest_url)} {role} "
        f"FORMAT AS JSON {quote_literal(jsonpaths_url)} MANIFEST GZIP TIMEFORMAT 'auto' DATEFORMAT 'auto'"
    )
    if region:
        sql += f" REGION {quote_literal(region)}"
    return sql


def _staged_value(stage: StageLayout, i: int, alias: str) -> str:
    c = stage.layout.columns[i]
    ref = f'{alias}."c{i}"'
    return f"TO_VARBYTE({ref}, 'hex')" if c.staged_type != c.redshift_type else ref


def _key_match(stage: StageLayout, target: str, alias: str) -> str:
    cols = stage.layout.columns
    return " AND ".join(f'{target}.{cols[i].quoted} = {alias}."c{i}"' for i, c in enumerate(cols) if c.primary_key)


def fill_unchanged(stage: StageLayout, i: int) -> str:
    """Copy the target's current value of column ``i`` into staged rows that keep it."""
    c = stage.layout.columns[i]
    value = f"cur.{c.quoted}"
    if c.staged_type != c.redshift_type:
        value = f"FROM_VARBYTE({value}, 'hex')"
    where = _key_match(stage, "cur", stage.quoted) + f' AND {stage.quoted}."_zetl_keep_{i}"'
    if stage.layout.history:
        where += ' AND cur."_valid_to" IS NULL'
    return f'UPDATE {stage.quoted} SET "c{i}" = {value} FROM {stage.layout.qualified} AS cur WHERE {where}'


def delete_matching(stage: StageLayout) -> str:
    """Delete target rows whose key has a ``d`` in the stage (DELETE ... USING)."""
    target = stage.layout.qualified
    return f"DELETE FROM {target} USING {stage.quoted} WHERE {_key_match(stage, target, stage.quoted)} AND {stage.quoted}.\"_zetl_op\" = 'd'"


def drop_staged_deletes(stage: StageLayout) -> str:
    return f"DELETE FROM {stage.quoted} WHERE \"_zetl_op\" = 'd'"


def merge(stage: StageLayout) -> str:
    """Upsert every staged row (one per key: the batch is deduplicated before staging)."""
    layout = stage.layout
    target = layout.qualified
    non_key = [i for i, c in enumerate(layout.columns) if not c.primary_key] or [i for i, c in enumerate(layout.columns)]
    sets = ", ".join(f"{layout.columns[i].quoted} = {_staged_value(stage, i, stage.quoted)}" for i in non_key)
    cols = ", ".join(c.quoted for c in layout.columns)
    values = ", ".join(_staged_value(stage, i, stage.quoted) for i in range(len(layout.columns)))
    return (
        f"MERGE INTO {target} USING {stage.quoted} ON {_key_match(stage, target, stage.quoted)} "
        f"WHEN MATCHED THEN UPDATE SET {sets} WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({values})"
    )


def close_versions(stage: StageLayout) -> str:
    """History mode: end the current version of every key the batch changes."""
    target = stage.layout.qualified
    return (
        f'UPDATE {target} SET "_valid_to" = {stage.quoted}."_zetl_valid_from" FROM {stage.quoted} '
        f'WHERE {_key_match(stage, target, stage.quoted)} AND {stage.quoted}."_zetl_first" AND {target}."_valid_to" IS NULL'
    )


def insert_versions(stage: StageLayout) -> str:
    """History mode: append every staged version."""
    layout = stage.layout
    cols = ", ".join([c.quoted for c in layout.columns] + [quote(n) for n, _ in HISTORY_COLUMNS])
    values = [_staged_value(stage, i, "s") for i in range(len(layout.columns))]
    values += ['s."_zetl_op"', 's."_zetl_position"', 's."_zetl_valid_from"', 's."_zetl_valid_to"']
    return f"INSERT INTO {layout.qualified} ({cols}) SELECT {', '.join(values)} FROM {stage.quoted} AS s"


def drop_stage(stage: StageLayout) -> str:
    return f"DROP TABLE IF EXISTS {stage.quoted}"


# -- checkpoints and metadata ---------------------------------------------------------------


def fence_checkpoint(schema: str) -> str:
    """The first statement of every write transaction of a fenced run (parameters: epoch,
    integration, epoch): it updates (and locks) the integration's checkpoint row only while no
    greater epoch is stored there; no row updated while one exists means another run took over."""
    column = quote(EPOCH_COLUMN)
    return f'UPDATE {quote(schema)}.{quote(CHECKPOINT_TABLE)} SET {column} = %s WHERE "integration" = %s AND COALESCE({column}, 0) <= %s'


def update_checkpoint(schema: str) -> str:
    """Parameters: position, epoch, integration (an epoch never goes down: library use writes 0)."""
    column = quote(EPOCH_COLUMN)
    return (
        f'UPDATE {quote(schema)}.{quote(CHECKPOINT_TABLE)} SET "position" = %s, {column} = GREATEST(COALESCE({column}, 0), %s), "updated_at" = GETDATE() '
        'WHERE "integration" = %s'
    )


def insert_checkpoint(schema: str) -> str:
    return f'INSERT INTO {quote(schema)}.{quote(CHECKPOINT_TABLE)} ("integration", "position", {quote(EPOCH_COLUMN)}, "updated_at") VALUES (%s, %s, %s, GETDATE())'


def select_checkpoint(schema: str) -> str:
    return f'SELECT "position" FROM {quote(schema)}.{quote(CHECKPOINT_TABLE)} WHERE "integration" = %s'


def select_checkpoint_epoch(schema: str) -> str:
    return f'SELECT {quote(EPOCH_COLUMN)} FROM {quote(schema)}.{quote(CHECKPOINT_TABLE)} WHERE "integration" = %s'


def delete_metadata(schema: str) -> str:
    return f'DELETE FROM {quote(schema)}.{quote(METADATA_TABLE)} WHERE "target_table" = %s'


def insert_metadata(schema: str) -> str:
    return f'INSERT INTO {quote(schema)}.{quote(METADATA_TABLE)} ("target_table", "layout", "updated_at") VALUES (%s, %s, GETDATE())'


def select_metadata(schema: str) -> str:
    return f'SELECT "layout" FROM {quote(schema)}.{quote(METADATA_TABLE)} WHERE "target_table" = %s'


def select_zetl_tables() -> str:
    """Which of zetl's own tables exist in a schema (a missing schema: none); read only."""
    return (
        "SELECT table_name FROM information_schema.tables "
        f"WHERE table_schema = %s AND table_name IN ('{CHECKPOINT_TABLE}', '{METADATA_TABLE}')"
    )


def select_columns() -> str:
    """The catalog's view of a table (works on Redshift and Postgres)."""
    return (
        "SELECT column_name, data_type, character_maximum_length, numeric_precision, numeric_scale, is_nullable "
        "FROM information_schema.columns WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position"
    )


def append_rows(stage: StageLayout) -> str:
    """Tables without a primary key: staged rows are appended (only inserts reach here)."""
    layout = stage.layout
    cols = ", ".join(c.quoted for c in layout.columns)
    values = ", ".join(_staged_value(stage, i, "s") for i in range(len(layout.columns)))
    return f"INSERT INTO {layout.qualified} ({cols}) SELECT {values} FROM {stage.quoted} AS s"
