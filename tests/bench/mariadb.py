"""MariaDB workloads of the peer baseline, for zetl's MySQL source.

    python tests/bench/mariadb.py [--rows 500000] [--stream-rows 200000] [--txn-rows 1000] [--json out.json]

Starts a private MariaDB (loopback, own datadir), loads the baseline's table ``t`` (10 columns:
int, bigint, decimal, text, varchar, datetime(6), boolean, json, int, text), and measures in the
same run:

* snapshot: ``mariadb -e 'select * from t' > /dev/null`` (the ceiling) versus zetl's snapshot of
  ``t`` into Arrow chunks (first batch to last; CPU of this process);
* stream backlog: ``N`` rows inserted in transactions of ``txn-rows`` rows, then
  ``mariadb-binlog --read-from-remote-server -v`` of that binlog (the ceiling) versus zetl reading
  the same backlog into change events from the position before the inserts.

Ratios are zetl / ceiling (higher is better). The machine is shared: compare ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Figure

from zetl.plugin import PluginContext
from zetl.tables import TableSelection
from zetl.testing.servers import MariaDBServer

DDL = (
    "(id INT PRIMARY KEY, big BIGINT NOT NULL, amount DECIMAL(12,2), name TEXT, code VARCHAR(32),"
    " created_at DATETIME(6), flag BOOLEAN, doc JSON, qty INT, note TEXT) ENGINE=InnoDB"
)
ROWS = (
    "SELECT seq, seq*1000003, (seq % 100000)/100.0, md5(seq), CONCAT('C', seq % 1000),"
    " TIMESTAMP('2024-01-01') + INTERVAL seq SECOND, seq % 2 = 0,"
    " JSON_OBJECT('k', seq, 's', md5(seq), 'arr', JSON_ARRAY(seq % 7, seq % 11)), seq % 500, REPEAT('x', 20 + seq % 40)"
    " FROM seq_{a}_to_{b}"
)


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def client(server: MariaDBServer, *args: str) -> list[str]:
    return ["mariadb", "--protocol=TCP", "-h", "127.0.0.1", "-P", str(server.port), "-u", "zetl", "-pzetl", *args]


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def load(server: MariaDBServer, rows: int) -> None:
    server.sql(f"CREATE DATABASE bench; CREATE TABLE bench.t {DDL}; CREATE TABLE bench.t_stream {DDL}")
    step = 100_000
    for a in range(1, rows + 1, step):
        server.sql(f"INSERT INTO bench.t {ROWS.format(a=a, b=min(rows, a + step - 1))}", database="bench")
    server.sql("ANALYZE TABLE bench.t")


def source(server: MariaDBServer, table: str, **options: Any) -> Any:
    from zetl_connectors.mysql import MySQLConfig, MySQLSource

    config = MySQLConfig(port=server.port, user="zetl", password="zetl", **options)  # type: ignore[arg-type]
    state = server.dir / "bench-state"
    state.mkdir(exist_ok=True)
    return MySQLSource(config, PluginContext(integration="bench", tables=TableSelection.of([f"bench.{table}"]), state_dir=state))


def zetl_snapshot(server: MariaDBServer, rows: int) -> dict[str, Any]:
    src = source(server, "t", snapshot="initial_only")
    src.open()
    count = 0
    c0, t0 = cpu(), time.perf_counter()
    for batch in src.read(None):
        count += batch.row_count
    dt, dc = time.perf_counter() - t0, cpu() - c0
    src.close()
    assert count == rows, f"snapshot read {count} rows, want {rows}"
    return {"rows": count, "seconds": dt, "rows_per_s": count / dt, "cpu_us_per_row": dc / count * 1e6}


def pymysql_sscursor(server: MariaDBServer, rows: int) -> dict[str, Any]:
    """The alternative to zetl's snapshot reader: PyMySQL's unbuffered cursor with its own
    value conversion, rows fetched and dropped (no Arrow)."""
    import pymysql
    import pymysql.cursors

    conn = pymysql.connect(host="127.0.0.1", port=server.port, user="zetl", password="zetl", database="bench")
    count = 0
    c0, t0 = cpu(), time.perf_counter()
    with conn.cursor(pymysql.cursors.SSCursor) as cur:
        cur.execute("SELECT * FROM t ORDER BY id")
        while True:
            chunk = cur.fetchmany(50_000)
            if not chunk:
                break
            count += len(chunk)
    dt, dc = time.perf_counter() - t0, cpu() - c0
    conn.close()
    return {"rows": count, "seconds": dt, "rows_per_s": count / dt, "cpu_us_per_row": dc / count * 1e6}


def zetl_stream(server: MariaDBServer, start: Any, n: int, *, table: str = "t_stream", cache_table_maps: bool = True, prefetch: bool = True) -> dict[str, Any]:
    src = source(server, table, snapshot="never")
    src._cache_table_maps = cache_table_maps
    src._prefetch = prefetch
    src.open()
    count = 0
    c0, t0 = cpu(), time.perf_counter()
    for batch in src.read(start):
        count += len(batch.events)
        if count >= n:
            break
    dt, dc = time.perf_counter() - t0, cpu() - c0
    src.close()
    assert count == n, f"stream read {count} events, want {n}"
    return {"events": count, "seconds": dt, "events_per_s": count / dt, "cpu_us_per_event": dc / count * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--stream-rows", type=int, default=200_000)
    ap.add_argument("--txn-rows", type=int, default=1000)
    ap.add_argument("--small-txns", type=int, default=20_000, help="single-row transactions for the table-map workload (0: skip)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from zetl.runner import tune_garbage_collector
    from zetl_connectors.mysql.snapshot import current_position

    # The source runs under the daemon's process-wide collector policy in production: measure it so.
    tune_garbage_collector()

    result: dict[str, Any] = {"workload": "mariadb", "rows": a.rows, "stream_rows": a.stream_rows, "txn_rows": a.txn_rows}
    with MariaDBServer(settings={"innodb_buffer_pool_size": "512M", "max_binlog_size": "1G"}) as server:
        result["server"] = server.sql("SELECT VERSION()")
        load(server, a.rows)
        ceiling = min(timed(client(server, "bench", "-e", "select * from t")) for _ in range(2))
        result["snapshot_ceiling_rows_per_s"] = a.rows / ceiling
        result["pymysql_sscursor"] = pymysql_sscursor(server, a.rows)
        print(f"PyMySQL SSCursor alone (no Arrow): {result['pymysql_sscursor']['rows_per_s']:,.0f} rows/s", flush=True)
        result["snapshot"] = zetl_snapshot(server, a.rows)
        result["snapshot_ratio"] = result["snapshot"]["rows_per_s"] / result["snapshot_ceiling_rows_per_s"]
        print(f"snapshot: zetl {result['snapshot']['rows_per_s']:,.0f} rows/s, ceiling {result['snapshot_ceiling_rows_per_s']:,.0f} -> {result['snapshot_ratio']:.3f}", flush=True)

        server.sql("FLUSH BINARY LOGS")
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", port=server.port, user="zetl", password="zetl")
        start = current_position(conn, True)
        conn.close()
        binlog = start.file
        t0 = time.perf_counter()
        for first in range(1, a.stream_rows + 1, a.txn_rows):
            last = min(a.stream_rows, first + a.txn_rows - 1)
            server.sql(f"INSERT INTO bench.t_stream {ROWS.format(a=first, b=last)}", database="bench")
        result["insert_seconds"] = time.perf_counter() - t0
        server.sql("FLUSH BINARY LOGS")
        ceiling = min(timed(["mariadb-binlog", "--read-from-remote-server", "--protocol=TCP", "-h", "127.0.0.1", "-P", str(server.port), "-u", "zetl", "-pzetl", "-v", binlog]) for _ in range(2))
        result["stream_ceiling_events_per_s"] = a.stream_rows / ceiling
        result["stream"] = zetl_stream(server, start, a.stream_rows)
        result["stream_ratio"] = result["stream"]["events_per_s"] / result["stream_ceiling_events_per_s"]
        print(f"stream backlog: zetl {result['stream']['events_per_s']:,.0f} events/s, ceiling {result['stream_ceiling_events_per_s']:,.0f} -> {result['stream_ratio']:.3f}", flush=True)
        # the same without reading the binlog socket ahead in a thread (what the read-ahead adds)
        result["stream_without_read_ahead"] = zetl_stream(server, start, a.stream_rows, prefetch=False)
        print(f"stream backlog without read-ahead: {result['stream_without_read_ahead']['events_per_s']:,.0f} events/s", flush=True)
        if a.small_txns:
            # single-row transactions: here the table map before every row event is the cost
            server.sql("CREATE TABLE bench.t_small " + DDL)
            conn = pymysql.connect(host="127.0.0.1", port=server.port, user="zetl", password="zetl")
            start = current_position(conn, True)
            conn.close()
            script = "".join(f"INSERT INTO t_small {ROWS.format(a=i, b=i)};\n" for i in range(1, a.small_txns + 1))
            subprocess.run(client(server, "bench"), input=script.encode(), check=True)
            for cache in (True, False):
                r = zetl_stream(server, start, a.small_txns, table="t_small", cache_table_maps=cache)
                result[f"small_txns_{'cached' if cache else 'uncached'}_table_maps"] = r
                print(f"single-row transactions, table maps {'cached' if cache else 'parsed every time'}: {r['events_per_s']:,.0f} events/s", flush=True)
    figures = [
        Figure("snapshot rows/s", result["snapshot"]["rows_per_s"], "rows/s", result["snapshot_ceiling_rows_per_s"], 0.3, note="vs mariadb -e 'select * from t'"),
        Figure("snapshot CPU per row", result["snapshot"]["cpu_us_per_row"], "µs", None, None, False),
        Figure("snapshot via PyMySQL SSCursor (reference)", result["pymysql_sscursor"]["rows_per_s"], "rows/s", result["snapshot_ceiling_rows_per_s"], None, note="alternative reader, not used"),
        Figure("stream backlog events/s", result["stream"]["events_per_s"], "events/s", result["stream_ceiling_events_per_s"], 0.15, note="vs mariadb-binlog --read-from-remote-server -v"),
        Figure("stream CPU per event", result["stream"]["cpu_us_per_event"], "µs", None, None, False),
        Figure("stream backlog without read-ahead (reference)", result["stream_without_read_ahead"]["events_per_s"], "events/s", result["stream_ceiling_events_per_s"], None, note="binlog socket read by the decoding thread"),
    ]
    if a.small_txns:
        figures.append(Figure("single-row txns events/s (table maps cached)", result["small_txns_cached_table_maps"]["events_per_s"], "events/s"))
        figures.append(Figure("single-row txns events/s (table maps parsed each time)", result["small_txns_uncached_table_maps"]["events_per_s"], "events/s"))
    result["figures"] = [f.to_json() for f in figures]
    print(json.dumps(result, indent=2))
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
