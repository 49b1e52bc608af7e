#!/usr/bin/env python
"""Postgres source workloads (the peer baseline's, see shared/peers/README.md), with raw ceilings.

    python tests/bench/postgres.py [--rows 500000] [--stream-rows 200000] [--txn-rows 1000] [--latency-commits 50] [--json out.json]

Starts a private Postgres (loopback, own data dir, removed at the end), loads table ``t`` with the
baseline's 10 mixed-type columns and measures, in the same run:

* snapshot: zetl's ``PostgresSource`` copying ``t`` into Arrow chunks (a counting sink consumes
  them) versus ``psql -c "COPY (SELECT * FROM t) TO STDOUT" > /dev/null``;
  also, for reference, the same rows through ``COPY ... (FORMAT binary)`` with psycopg's loaders;
* stream backlog: 200 transactions x 1000 inserted rows while the source is stopped, then the
  source restarted from its checkpoint, from ``read()`` to the last event, versus ``pg_recvlogical``
  (pgoutput, proto 1) draining the same backlog from a slot created at the same point;
* CPU µs per event of this process while streaming the backlog (and per snapshot row);
* latency: 10 warm-up + 50 single-row autocommit INSERTs 100-300 ms apart, from the moment COMMIT
  returned to the client to the moment the batch holding the row came out of ``read()``; p50 and
  p99. The source often has the row before the client thread has seen COMMIT return, so samples
  can be slightly negative; the figure from the moment COMMIT was sent (which includes the
  commit itself, fsync included) is reported too.

Best of ``--repeat`` runs for the throughput figures (ceilings likewise).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CountingSink, Figure, cpu_seconds, timed_command  # noqa: E402

from zetl.events import Op  # noqa: E402
from zetl.plugin import PluginContext  # noqa: E402
from zetl.tables import TableSelection  # noqa: E402
from zetl.testing.servers import PG_BIN, PostgresServer  # noqa: E402

DB = "bench"
DDL = """(id integer PRIMARY KEY, big bigint NOT NULL, amount numeric(12,2), name text, code varchar(32),
  created_at timestamp, flag boolean, doc jsonb, qty integer, note text)"""
ROWS = """SELECT g, g::bigint*1000003, (g % 100000)/100.0, md5(g::text), 'C' || (g % 1000),
       timestamp '2024-01-01' + g * interval '1 second', g % 2 = 0,
       jsonb_build_object('k', g, 's', md5(g::text), 'arr', jsonb_build_array(g % 7, g % 11)),
       g % 500, repeat('x', 20 + g % 40)
FROM generate_series({a}, {b}) g"""


def psql_cmd(server: PostgresServer, *args: str) -> list[str]:
    return [str(PG_BIN / "psql"), "-X", "-q", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", "-d", DB, *args]


def make_source(server: PostgresServer, table: str, **settings: Any) -> Any:
    from zetl_connectors.postgres import PostgresConfig, PostgresSource

    config = PostgresConfig(host="127.0.0.1", port=server.port, database=DB, user="postgres", **settings)
    state_dir = Path(tempfile.mkdtemp(prefix="zetl-bench-state-"))  # never the state of an earlier run
    return PostgresSource(config, PluginContext(integration=f"bench_{table}", tables=TableSelection.of([f"public.{table}"]), state_dir=state_dir))


def insert_workload(server: PostgresServer, table: str, n: int, txn_rows: int, first: int = 1) -> float:
    """``stream_insert.sh``: n rows in autocommit INSERT ... SELECT transactions of txn_rows rows, through psql."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        for a in range(first, first + n, txn_rows):
            b = min(a + txn_rows - 1, first + n - 1)
            f.write(f"INSERT INTO {table} {ROWS.format(a=a, b=b)};\n".replace("\n", " ") + "\n")
        path = f.name
    wall, _ = timed_command(psql_cmd(server, "-v", "ON_ERROR_STOP=1", "-f", path))
    Path(path).unlink()
    return wall


# -- snapshot ------------------------------------------------------------------------------------
def zetl_snapshot(server: PostgresServer, rows: int) -> dict[str, Any]:
    sink = CountingSink()
    source = make_source(server, "t", snapshot="initial_only")
    t0 = time.perf_counter()
    c0 = cpu_seconds()
    source.open()
    for batch in source.read(None):
        sink.write(batch)
    wall = time.perf_counter() - t0
    cpu = cpu_seconds() - c0
    source.close()
    if sink.rows != rows:
        raise SystemExit(f"snapshot delivered {sink.rows} rows, expected {rows}")
    return {"seconds": wall, "cpu_seconds": cpu, "rows_per_s": rows / wall, "cpu_us_per_row": cpu / rows * 1e6}


def binary_copy_reference(server: PostgresServer, rows: int) -> dict[str, Any]:
    """The alternative decoding: COPY (FORMAT binary) with psycopg's typed loaders, row tuples in Python."""
    import psycopg

    with psycopg.connect(server.dsn(DB)) as conn, conn.cursor() as cur:
        t0 = time.perf_counter()
        c0 = cpu_seconds()
        n = 0
        with cur.copy(f"COPY (SELECT * FROM t LIMIT {int(rows)}) TO STDOUT (FORMAT binary)") as copy:
            copy.set_types(["int4", "int8", "numeric", "text", "varchar", "timestamp", "bool", "jsonb", "int4", "text"])
            for _row in copy.rows():
                n += 1
        wall = time.perf_counter() - t0
        cpu = cpu_seconds() - c0
    return {"rows": n, "seconds": wall, "rows_per_s": n / wall, "cpu_us_per_row": cpu / n * 1e6}


# -- stream backlog -----------------------------------------------------------------------------
def zetl_stream_position(server: PostgresServer) -> Any:
    """Start the source once on t_stream (snapshot never): it creates its slot; return its first checkpoint."""
    source = make_source(server, "t_stream", snapshot="never", heartbeat_interval=0)
    source.open()
    try:
        for batch in source.read(None):
            if batch.end_position is not None:
                return batch.end_position
    finally:
        source.close()
    raise SystemExit("the source ended before its first checkpoint")


def zetl_stream_backlog(server: PostgresServer, start: Any, events: int) -> dict[str, Any]:
    sink = CountingSink()
    source = make_source(server, "t_stream", snapshot="never", heartbeat_interval=0)
    source.open()
    seen = 0
    # from START_REPLICATION to the last event: the first batch already holds thousands of decoded
    # events, so "first event -> last" would leave most of the work out
    first_at, c0 = time.perf_counter(), cpu_seconds()
    try:
        for batch in source.read(start):
            seen += batch.row_count
            sink.write(batch)  # no ack: the slot keeps the backlog, so the run can be repeated
            if seen >= events:
                break
        wall = time.perf_counter() - first_at
        cpu = cpu_seconds() - c0
    finally:
        source.close()
    if seen != events:
        raise SystemExit(f"stream delivered {seen} events, expected {events}")
    return {"seconds": wall, "cpu_seconds": cpu, "events_per_s": events / wall, "cpu_us_per_event": cpu / events * 1e6}


def recvlogical(server: PostgresServer, slot: str, end_lsn: str, out: Path) -> float:
    out.unlink(missing_ok=True)
    cmd = [
        str(PG_BIN / "pg_recvlogical"), "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", "-d", DB,
        "--no-loop", "-F", "0", "-E", end_lsn, "--start", "-S", slot, "-o", "proto_version=1", "-o", "publication_names=raw_pub", "-f", str(out),
    ]  # fmt: skip
    wall, _ = timed_command(cmd)
    return wall


# -- latency --------------------------------------------------------------------------------------
def latency(server: PostgresServer, commits: int, warmup: int = 10) -> dict[str, Any]:
    import psycopg

    source = make_source(server, "t_lat", snapshot="never", heartbeat_interval=0)
    source.open()
    committed: dict[int, float] = {}
    sent: dict[int, float] = {}
    arrived: dict[int, float] = {}
    total = warmup + commits
    started = threading.Event()
    done = threading.Event()

    def writer() -> None:
        started.wait(30)
        rng = random.Random(7)
        with psycopg.connect(server.dsn(DB), autocommit=True) as conn:
            for i in range(1, total + 1):
                conn.execute("BEGIN")
                conn.execute(f"INSERT INTO t_lat {ROWS.format(a=i, b=i)}")
                sent[i] = time.perf_counter()
                conn.execute("COMMIT")
                committed[i] = time.perf_counter()
                deadline = time.monotonic() + 5
                while i not in arrived and time.monotonic() < deadline:
                    time.sleep(0.001)
                time.sleep(rng.uniform(0.1, 0.3))
        done.set()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        for batch in source.read(None):
            now = time.perf_counter()
            for e in batch.events:
                if e.op is Op.INSERT and e.after is not None:
                    arrived[int(e.after["id"])] = now
            if batch.end_position is not None:
                source.ack(batch.end_position)
            started.set()
            if done.is_set() or len(arrived) >= total:
                break
    finally:
        source.close()
    thread.join(10)
    samples = sorted((arrived[i] - committed[i]) * 1000 for i in range(warmup + 1, total + 1) if i in arrived and i in committed)
    if len(samples) != commits:
        raise SystemExit(f"latency: {len(samples)} of {commits} commits arrived")
    from_sent = sorted((arrived[i] - sent[i]) * 1000 for i in range(warmup + 1, total + 1))
    p99 = min(len(samples) - 1, int(len(samples) * 0.99))
    return {
        "samples": len(samples),
        "p50_ms": statistics.median(samples),
        "p99_ms": samples[p99],
        "max_ms": samples[-1],
        "from_commit_sent_p50_ms": statistics.median(from_sent),
        "from_commit_sent_p99_ms": from_sent[p99],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--stream-rows", type=int, default=200_000)
    ap.add_argument("--txn-rows", type=int, default=1000)
    ap.add_argument("--latency-commits", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result: dict[str, Any] = {"workload": "postgres", "rows": a.rows, "stream_rows": a.stream_rows, "txn_rows": a.txn_rows, "latency_commits": a.latency_commits}
    settings = {"shared_buffers": "512MB", "max_wal_size": "4GB", "checkpoint_timeout": "30min", "synchronous_commit": "on"}
    figures: list[Figure] = []
    with PostgresServer(settings=settings) as server:
        server.psql(f'CREATE DATABASE "{DB}"')
        server.psql(f"CREATE TABLE t {DDL}; CREATE TABLE t_stream {DDL}; CREATE TABLE t_lat {DDL};", DB)
        server.psql(f"INSERT INTO t {ROWS.format(a=1, b=a.rows)}", DB)
        server.psql("VACUUM ANALYZE t", DB)
        server.psql("CHECKPOINT", DB)
        result["server"] = server.psql("SHOW server_version", DB)
        print(f"loaded t: {a.rows} rows", flush=True)

        # snapshot
        copy_s = min(timed_command(psql_cmd(server, "-c", "COPY (SELECT * FROM t) TO STDOUT"))[0] for _ in range(max(2, a.repeat)))
        snaps = [zetl_snapshot(server, a.rows) for _ in range(a.repeat)]
        snap = max(snaps, key=lambda s: s["rows_per_s"])
        result["snapshot"] = {"runs": snaps, "ceiling_copy_seconds": copy_s}
        ref = binary_copy_reference(server, min(a.rows, 100_000))
        result["snapshot_binary_copy_reference"] = ref
        figures.append(Figure("snapshot rows/s", snap["rows_per_s"], "rows/s", a.rows / copy_s, 0.3, note="vs psql COPY TO STDOUT"))
        figures.append(Figure("snapshot CPU per row", snap["cpu_us_per_row"], "µs", None, None, False))
        figures.append(Figure("snapshot via COPY binary + psycopg loaders (reference)", ref["rows_per_s"], "rows/s", a.rows / copy_s, None, note="alternative decoding, not used"))
        print(f"snapshot: {snap['rows_per_s']:,.0f} rows/s vs COPY {a.rows / copy_s:,.0f} (binary COPY + loaders: {ref['rows_per_s']:,.0f})", flush=True)

        # stream backlog: zetl's slot and the raw slots start at the same point
        start = zetl_stream_position(server)
        server.psql("CREATE PUBLICATION raw_pub FOR TABLE t_stream", DB)
        raw_slots = [f"raw_po{i}" for i in range(max(2, a.repeat))]
        for slot in raw_slots:
            server.psql(f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')", DB)
        result["insert_seconds"] = insert_workload(server, "t_stream", a.stream_rows, a.txn_rows)
        end_lsn = server.psql("SELECT pg_current_wal_lsn()", DB)
        with tempfile.TemporaryDirectory() as tmp:
            raw_s = min(recvlogical(server, slot, end_lsn, Path(tmp) / "po.bin") for slot in raw_slots)
        for slot in raw_slots:
            server.psql(f"SELECT pg_drop_replication_slot('{slot}')", DB)
        streams = [zetl_stream_backlog(server, start, a.stream_rows) for _ in range(a.repeat)]
        stream = max(streams, key=lambda s: s["events_per_s"])
        result["stream"] = {"runs": streams, "ceiling_recvlogical_seconds": raw_s}
        figures.append(Figure("stream backlog events/s", stream["events_per_s"], "events/s", a.stream_rows / raw_s, 0.4, note="vs pg_recvlogical pgoutput"))
        figures.append(Figure("stream CPU per event", min(s["cpu_us_per_event"] for s in streams), "µs", None, 25.0, False))
        print(f"stream: {stream['events_per_s']:,.0f} events/s vs pg_recvlogical {a.stream_rows / raw_s:,.0f}; {stream['cpu_us_per_event']:.1f} µs CPU/event", flush=True)

        # latency
        lat = latency(server, a.latency_commits)
        result["latency"] = lat
        figures.append(Figure("commit-to-source latency p50", lat["p50_ms"], "ms", None, 5.0, False))
        figures.append(Figure("commit-to-source latency p99", lat["p99_ms"], "ms", None, None, False))
        figures.append(Figure("latency from COMMIT sent (incl. commit) p50", lat["from_commit_sent_p50_ms"], "ms", None, None, False))
        print(f"latency: p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms", flush=True)
    result["figures"] = [f.to_json() for f in figures]
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    else:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
