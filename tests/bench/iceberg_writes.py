"""Iceberg sink write paths, measured without a source: `python tests/bench/iceberg_writes.py [rows]`.

A table of ``rows`` keys (default 500k) is loaded as snapshot chunks, then one commit each of:
new keys (append path), updates of random keys (copy-on-write of the files holding them),
updates of a narrow key range, deletes; and pyiceberg's own ``Table.upsert`` of the same random
updates for comparison. Prints one line per case (seconds, rows/s) and a JSON summary.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa

from zetl.arrow import arrow_schema
from zetl.events import Batch, ChangeEvent, Op, RowChunk, SequencePosition, TableId
from zetl.plugin import PluginContext
from zetl.schema.changes import CreateTable
from zetl.schema.types import Field, Schema, T
from zetl_sinks.iceberg import IcebergConfig, IcebergSink

TABLE = TableId("bench", "t")
SCHEMA = Schema.of(TABLE, [Field("id", T.int64), Field("name", T.string()), Field("amount", T.decimal(12, 2)), Field("at", T.timestamptz)], ["id"])
EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _row(i: int, version: int = 0) -> dict[str, Any]:
    return {"id": i, "name": f"name-{i}-{version}", "amount": Decimal(i % 100000) / 100, "at": EPOCH + dt.timedelta(seconds=i + version)}


class Clock:
    def __init__(self, files: Any) -> None:
        self.results: dict[str, dict[str, float]] = {}
        self.files = files

    def run(self, label: str, rows: int, fn: Any) -> None:
        started = time.perf_counter()
        fn()
        seconds = time.perf_counter() - started
        added, deleted, total = self.files()
        self.results[label] = {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds) if seconds else 0,
                               "files_added": added, "files_rewritten": deleted, "files_in_table": total}
        print(f"{label:55s} {rows:>7d} rows {seconds:6.2f} s {rows / seconds:>8.0f} rows/s  files +{added} -{deleted} (of {total})", flush=True)


def main(rows: int = 500_000) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="zetl-bench-iceberg-"))
    # Files of ~16 MB of Arrow data (pyiceberg's default is 512 MB) so that the table spans
    # several files, as a long-lived table does, and rewrites can be told from appends.
    config = IcebergConfig(commit_interval=3600, max_buffered_rows=10_000_000, properties={"write.target-file-size-bytes": str(16 * 1024 * 1024)})
    sink = IcebergSink(config, PluginContext(integration="bench", state_dir=work))
    sink.open()
    sink.apply(CreateTable(TABLE, SCHEMA))
    def files() -> tuple[int, int, int]:
        summary = sink._load(TABLE).current_snapshot().summary
        props = {**summary.additional_properties}
        get = lambda key: int(props.get(key, 0))  # noqa: E731
        return get("added-data-files"), get("deleted-data-files"), get("total-data-files")

    clock = Clock(files)
    seq = iter(range(1, 10**9))

    def pos() -> SequencePosition:
        return SequencePosition("stream", next(seq))

    def commit(batch: Batch) -> None:
        sink.write(batch)
        sink.flush(force=True)

    arrow = arrow_schema(SCHEMA)

    def snapshot() -> None:
        step = 100_000
        for start in range(0, rows, step):
            chunk = pa.Table.from_pylist([_row(i) for i in range(start + 1, min(rows, start + step) + 1)], schema=arrow)
            p = SequencePosition("snapshot", start + step)
            sink.write(Batch(chunks=(RowChunk(TABLE, Op.READ, chunk, p),), end_position=p))
        sink.flush(force=True)

    clock.run("snapshot chunks into an empty table (append)", rows, snapshot)
    n = rows // 5
    new_keys = [ChangeEvent.insert(TABLE, _row(i), pos()) for i in range(rows + 1, rows + n + 1)]
    clock.run(f"insert {n} new keys", n, lambda: commit(Batch(events=tuple(new_keys), end_position=new_keys[-1].position)))
    rng = random.Random(7)
    picked = rng.sample(range(1, rows + 1), n)
    updates = [ChangeEvent.update(TABLE, {"id": i}, _row(i, 1), pos()) for i in picked]
    clock.run(f"update {n} random keys", n, lambda: commit(Batch(events=tuple(updates), end_position=updates[-1].position)))
    narrow = [ChangeEvent.update(TABLE, {"id": i}, _row(i, 2), pos()) for i in range(1000, 2000)]
    clock.run("update 1000 neighbouring keys", 1000, lambda: commit(Batch(events=tuple(narrow), end_position=narrow[-1].position)))
    mixed = []
    for i in range(1, 10_001):
        mixed.append(ChangeEvent.update(TABLE, {"id": rows - i}, _row(rows - i, 3), pos()))
        mixed.append(ChangeEvent.update(TABLE, {"id": rows - i}, _row(rows - i, 4), pos()))
    clock.run("20000 updates of 10000 keys, collapsed in one commit", 20_000, lambda: commit(Batch(events=tuple(mixed), end_position=mixed[-1].position)))
    deletes = [ChangeEvent.delete(TABLE, {"id": i}, pos()) for i in range(5000, 15000)]
    clock.run("delete 10000 keys", 10_000, lambda: commit(Batch(events=tuple(deletes), end_position=deletes[-1].position)))

    table = sink._load(TABLE)
    frame = pa.Table.from_pylist([_row(i, 9) for i in picked], schema=pa.schema([f.with_nullable(f.name != "id") for f in arrow]))
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    frame = frame.cast(schema_to_pyarrow(table.schema(), include_field_ids=False))
    clock.run(f"pyiceberg Table.upsert of the {n} random updates (reference)", n, lambda: table.upsert(frame))
    sink.close()
    summary = {"table_rows": rows, "results": clock.results}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500_000)
