"""Postgres -> Iceberg workloads of the peer baseline, end to end through zetl's runner.

    python tests/bench/iceberg.py [--rows 500000] [--stream-rows 200000] [--txn-rows 1000]
                            [--latency-commits 50] [--commit-intervals 1s,200ms] [--repeat 1]
                            [--json out.json]

(``make bench BENCH_WORKLOADS=iceberg`` runs it through ``tests/bench/run.py``.)

Starts a private Postgres (loopback, own directory), loads the baseline's table ``t`` (10 columns:
int, bigint, numeric(12,2), text, varchar(32), timestamp, boolean, jsonb, int, text) and measures
in the same run:

* snapshot: ``psql COPY (SELECT * FROM t) TO STDOUT > /dev/null`` (the ceiling) versus zetl
  copying ``t`` into an Iceberg table (``snapshot: initial_only``; from the runner's start to the
  last Iceberg commit, connections, catalog and table creation included; Python modules are
  imported before timing);
* stream backlog: ``stream-rows`` rows inserted into ``t_stream`` in transactions of ``txn-rows``
  rows while zetl is stopped, then ``pg_recvlogical`` (pgoutput) draining a slot holding the same
  backlog (the ceiling) versus zetl catching up into Iceberg (runner start to the commit that
  holds the last row);
* freshness: ``latency-commits`` single-row commits while zetl streams into Iceberg; for each,
  the time from the Postgres commit until the row is in a committed Iceberg snapshot (the sink's
  ``commit_interval`` bounds it from below).

Ratios are zetl / ceiling (higher is better). The machine is shared: compare ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Figure  # noqa: E402
from zetl.config.load import load_integration  # noqa: E402
from zetl.runner import IntegrationRunner  # noqa: E402
from zetl.testing.servers import PG_BIN, PostgresServer  # noqa: E402

DDL = (
    "(id integer PRIMARY KEY, big bigint NOT NULL, amount numeric(12,2), name text, code varchar(32),"
    " created_at timestamp, flag boolean, doc jsonb, qty integer, note text)"
)
ROWS = (
    "SELECT g, g::bigint*1000003, (g % 100000)/100.0, md5(g::text), 'C' || (g % 1000),"
    " timestamp '2024-01-01' + g * interval '1 second', g % 2 = 0,"
    " jsonb_build_object('k', g, 's', md5(g::text), 'arr', jsonb_build_array(g % 7, g % 11)), g % 500, repeat('x', 20 + g % 40)"
    " FROM generate_series({a}, {b}) g"
)
DB = "bench"


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def psql(server: PostgresServer, *args: str) -> list[str]:
    return [str(PG_BIN / "psql"), "-X", "-q", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", "-d", DB, *args]


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def write_config(work: Path, server: PostgresServer, name: str, table: str, snapshot: str, commit_interval: str) -> Path:
    (work / "warehouse").mkdir(exist_ok=True)
    path = work / f"{name}.yaml"
    path.write_text(
        f"""name: {name}
source:
  type: postgres
  host: 127.0.0.1
  port: {server.port}
  database: {DB}
  user: postgres
  snapshot: {snapshot}
  heartbeat_interval: 1s
tables: [public.{table}]
sink:
  type: iceberg
  namespace: bench
  commit_interval: {commit_interval}
  catalog:
    type: sql
    uri: 'sqlite:///{work / "catalog.db"}'
    warehouse: '{(work / "warehouse").as_uri()}'
batching:
  max_rows: 50000
  max_delay: 200ms
checkpoint:
  path: state.db
"""
    )
    return path


class Runner:
    """An integration run in a thread of this process (so that its CPU is measured)."""

    def __init__(self, config: Path) -> None:
        self.runner = IntegrationRunner(load_integration(config))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.state: Any = None

    def _run(self) -> None:
        self.state = self.runner.run()

    def start(self) -> Runner:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.runner.stop.set()
        self.thread.join(120)


def iceberg_rows(work: Path, table: str) -> int:
    """Rows in the table's current snapshot (from the snapshot summary: no data is read)."""
    from pyiceberg.catalog import load_catalog

    catalog = load_catalog("zetl", type="sql", uri=f"sqlite:///{work / 'catalog.db'}", warehouse=(work / "warehouse").as_uri())
    try:
        loaded = catalog.load_table(("bench", f"public_{table}"))
    except Exception:
        return 0
    snapshot = loaded.current_snapshot()
    return int(snapshot.summary["total-records"]) if snapshot is not None else 0


def wait_rows(work: Path, table: str, n: int, timeout: float, poll: float = 0.05) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if iceberg_rows(work, table) >= n:
            return time.perf_counter()
        time.sleep(poll)
    raise SystemExit(f"Iceberg table {table} did not reach {n} rows in {timeout:.0f}s (has {iceberg_rows(work, table)})")


def bench_snapshot(server: PostgresServer, work: Path, rows: int) -> dict[str, Any]:
    copy_runs = [timed(psql(server, "-c", "COPY (SELECT * FROM t) TO STDOUT")) for _ in range(2)]
    copy_rate = rows / min(copy_runs)
    config = write_config(work, server, "snap", "t", "initial_only", "5s")
    # the ceiling is measured next to each zetl run (same machine load)
    c0, t0 = cpu(), time.perf_counter()
    runner = Runner(config).start()
    runner.thread.join(600)
    seconds, cpu_s = time.perf_counter() - t0, cpu() - c0
    got = iceberg_rows(work, "t")
    if got != rows:
        raise SystemExit(f"snapshot: Iceberg has {got} rows, want {rows} (runner state {runner.state})")
    rate = rows / seconds
    print(f"snapshot  COPY {copy_rate:>10.0f} rows/s   zetl -> Iceberg {rate:>10.0f} rows/s   ratio {rate / copy_rate:.3f}   {cpu_s / rows * 1e6:.1f} µs CPU/row", flush=True)
    return {"rows": rows, "copy_rows_per_s": round(copy_rate), "zetl_rows_per_s": round(rate), "ratio": round(rate / copy_rate, 3), "cpu_us_per_row": round(cpu_s / rows * 1e6, 1), "seconds": round(seconds, 2)}


def insert_backlog(server: PostgresServer, n: int, txn_rows: int, first: int = 1) -> float:
    statements = [f"INSERT INTO t_stream {ROWS.format(a=a, b=min(a + txn_rows - 1, first + n - 1))};" for a in range(first, first + n, txn_rows)]
    script = Path(tempfile.mkstemp(suffix=".sql")[1])
    script.write_text("\n".join(statements) + "\n")
    try:
        return timed(psql(server, "-f", str(script)))
    finally:
        script.unlink()


def bench_stream(server: PostgresServer, work: Path, n: int, txn_rows: int) -> dict[str, Any]:
    # Ceiling: a pgoutput slot drained by pg_recvlogical.
    server.psql("CREATE PUBLICATION raw_pub FOR TABLE t_stream", DB)
    server.psql("SELECT pg_create_logical_replication_slot('raw_po', 'pgoutput')", DB)
    # zetl: create its slot (empty table), stop, so the backlog accumulates behind both slots.
    config = write_config(work, server, "stream", "t_stream", "initial", "1s")
    runner = Runner(config).start()
    time.sleep(3)
    runner.stop()
    insert_s = insert_backlog(server, n, txn_rows)
    end = server.psql("SELECT pg_current_wal_lsn()", DB)
    out = work / "po.bin"
    recv = [str(PG_BIN / "pg_recvlogical"), "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", "-d", DB, "--no-loop", "-F", "0", "-E", end,
            "--start", "-S", "raw_po", "-o", "proto_version=1", "-o", "publication_names=raw_pub", "-f", str(out)]
    recv_s = timed(recv)
    server.psql("SELECT pg_drop_replication_slot('raw_po')", DB)
    recv_rate = n / recv_s
    c0, t0 = cpu(), time.perf_counter()
    runner = Runner(config).start()
    done = wait_rows(work, "t_stream", n, timeout=600, poll=0.1)
    seconds, cpu_s = done - t0, cpu() - c0
    runner.stop()
    rate = n / seconds
    print(f"stream    pg_recvlogical {recv_rate:>10.0f} ev/s   zetl -> Iceberg {rate:>10.0f} ev/s   ratio {rate / recv_rate:.3f}   {cpu_s / n * 1e6:.1f} µs CPU/event", flush=True)
    return {"events": n, "txn_rows": txn_rows, "insert_s": round(insert_s, 2), "pg_recvlogical_events_per_s": round(recv_rate), "zetl_events_per_s": round(rate), "ratio": round(rate / recv_rate, 3), "cpu_us_per_event": round(cpu_s / n * 1e6, 1), "seconds": round(seconds, 2)}


def bench_latency(server: PostgresServer, work: Path, commits: int, commit_interval: str, table: str) -> dict[str, Any]:
    """Single-row commits 100-300 ms apart while zetl streams into Iceberg; each awaited."""
    import random

    import psycopg

    server.psql(f"CREATE TABLE {table} {DDL}", DB)
    config = write_config(work, server, f"latency-{table.replace('_', '-')}", table, "initial", commit_interval)
    runner = Runner(config).start()
    latencies = []
    with psycopg.connect(server.dsn(DB), autocommit=True) as conn:
        deadline = time.monotonic() + 60
        while runner.runner.status.state is None or str(runner.runner.status.state.value if hasattr(runner.runner.status.state, "value") else runner.runner.status.state) != "streaming":
            if time.monotonic() > deadline:
                raise SystemExit("the latency integration did not start streaming")
            time.sleep(0.1)
        time.sleep(1)
        pause = random.Random(5)
        for i in range(1, commits + 1):
            conn.execute(f"INSERT INTO {table} {ROWS.format(a=i, b=i)}")
            committed = time.perf_counter()
            visible = wait_rows(work, table, i, timeout=60, poll=0.01)
            latencies.append(visible - committed)
            time.sleep(pause.uniform(0.1, 0.3))
    runner.stop()
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))]
    print(f"freshness commit in Postgres -> visible in Iceberg (commit_interval {commit_interval}): p50 {p50 * 1000:.0f} ms  p99 {p99 * 1000:.0f} ms", flush=True)
    return {"commits": commits, "commit_interval": commit_interval, "p50_ms": round(p50 * 1000), "p99_ms": round(p99 * 1000), "max_ms": round(latencies[-1] * 1000)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--stream-rows", type=int, default=200_000)
    ap.add_argument("--txn-rows", type=int, default=1000)
    ap.add_argument("--latency-commits", type=int, default=50)
    ap.add_argument("--commit-intervals", default="1s,200ms", help="the sink's commit_interval values for the freshness probes")
    ap.add_argument("--repeat", type=int, default=1, help="snapshot runs (best kept)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # Import the libraries before any timing: a one-time start-up cost (~1 s here), not throughput.
    import duckdb  # noqa: F401
    import pyiceberg.catalog.sql  # noqa: F401
    import pyiceberg.io.pyarrow  # noqa: F401
    import pyiceberg.table  # noqa: F401

    import zetl_connectors.postgres  # noqa: F401
    import zetl_sinks.iceberg.writer  # noqa: F401

    results: dict[str, Any] = {"workload": "iceberg", "rows": a.rows, "stream_rows": a.stream_rows, "txn_rows": a.txn_rows}
    figures: list[Figure] = []
    server = PostgresServer(settings={"shared_buffers": "256MB", "max_wal_size": "2GB"})
    try:
        server.start()
        server.psql(f'CREATE DATABASE "{DB}"')
        server.psql(f"CREATE TABLE t {DDL}; CREATE TABLE t_stream {DDL};", DB)
        server.psql(f"INSERT INTO t {ROWS.format(a=1, b=a.rows)}", DB)
        server.psql("VACUUM ANALYZE t", DB)
        server.psql("CHECKPOINT", DB)
        results["server"] = server.psql("SHOW server_version", DB)
        snaps = [bench_snapshot(server, Path(tempfile.mkdtemp(prefix="zetl-bench-iceberg-")), a.rows) for _ in range(max(1, a.repeat))]
        snap = max(snaps, key=lambda r: r["ratio"])
        results["snapshot"] = {"runs": snaps}
        figures.append(Figure("Postgres -> Iceberg snapshot rows/s", snap["zetl_rows_per_s"], "rows/s", snap["copy_rows_per_s"], 0.25, note="vs psql COPY TO STDOUT"))
        figures.append(Figure("Postgres -> Iceberg snapshot CPU per row", snap["cpu_us_per_row"], "µs", None, None, False))
        stream = bench_stream(server, Path(tempfile.mkdtemp(prefix="zetl-bench-iceberg-")), a.stream_rows, a.txn_rows)
        results["stream"] = stream
        figures.append(Figure("Postgres -> Iceberg stream backlog events/s", stream["zetl_events_per_s"], "events/s", stream["pg_recvlogical_events_per_s"], 0.3, note="vs pg_recvlogical pgoutput"))
        figures.append(Figure("Postgres -> Iceberg stream CPU per event", stream["cpu_us_per_event"], "µs", None, None, False))
        results["freshness"] = []
        for i, interval in enumerate(x.strip() for x in a.commit_intervals.split(",") if x.strip()):
            lat = bench_latency(server, Path(tempfile.mkdtemp(prefix="zetl-bench-iceberg-")), a.latency_commits, interval, f"t_lat{i}")
            results["freshness"].append(lat)
            figures.append(Figure(f"freshness p50 (commit_interval {interval})", lat["p50_ms"], "ms", None, None, False, note="Postgres commit -> row in an Iceberg snapshot"))
            figures.append(Figure(f"freshness p99 (commit_interval {interval})", lat["p99_ms"], "ms", None, None, False))
    finally:
        server.stop()
    results["figures"] = [f.to_json() for f in figures]
    text = json.dumps(results, indent=2)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
