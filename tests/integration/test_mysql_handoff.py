"""The MySQL snapshot hand-off (global read lock, or table locks for a user without RELOAD, as on
RDS/Aurora) against the private MariaDB, with writers running through it: the snapshot plus the
binlog from the returned coordinate replay to exactly the final table (no gap, no overlap)."""

from __future__ import annotations

import logging
import random
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest
from zetl_connectors.mysql import MySQLConfig, MySQLPosition, MySQLSource
from zetl_connectors.mysql.catalog import read_schemas
from zetl_connectors.mysql.position import binlog_index
from zetl_connectors.mysql.snapshot import begin_consistent_snapshot, read_table

from zetl.errors import SourceError
from zetl.events import Op
from zetl.plugin import PluginContext
from zetl.tables import TableSelection
from zetl.testing.servers import MariaDBServer

pytestmark = [pytest.mark.integration, pytest.mark.mariadb]

INITIAL_ROWS = 300


def _connect(server: MariaDBServer, user: str, password: str, database: str | None = None) -> Any:
    return pymysql.connect(host="127.0.0.1", port=server.port, user=user, password=password, database=database, autocommit=True)


@pytest.fixture
def restricted_user(mariadb_server: MariaDBServer, mariadb_database: str) -> Iterator[tuple[str, str]]:
    """A user with what RDS/Aurora grant (no RELOAD): SELECT and LOCK TABLES on the database, replication."""
    user, password = f"nr_{zlib.crc32(mariadb_database.encode())}", "handoff-secret"
    mariadb_server.sql(
        f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}';"
        f" GRANT SELECT, LOCK TABLES ON `{mariadb_database}`.* TO '{user}'@'127.0.0.1';"
        f" GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO '{user}'@'127.0.0.1';"
    )
    try:
        yield user, password
    finally:
        mariadb_server.sql(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")


class Writers:
    """Inserts, updates and deletes rows of ``t`` (single statements and small transactions) in a
    thread until stopped; ``ops`` counts committed transactions."""

    def __init__(self, server: MariaDBServer, database: str) -> None:
        self.conn = _connect(server, "zetl", "zetl", database)
        self.stop_flag = threading.Event()
        self.ops = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="handoff-writers", daemon=True)

    def _run(self) -> None:
        rng = random.Random(7)
        next_id = INITIAL_ROWS + 1
        try:
            with self.conn.cursor() as cur:
                while not self.stop_flag.is_set():
                    choice = rng.random()
                    if choice < 0.4:
                        cur.execute("INSERT INTO t (id, v, note) VALUES (%s, %s, %s)", (next_id, rng.randrange(1000), f"n{next_id}"))
                        next_id += 1
                    elif choice < 0.7:
                        cur.execute("UPDATE t SET v = v + 1, note = %s WHERE id = %s", (f"u{self.ops}", rng.randrange(1, next_id)))
                    elif choice < 0.85:
                        cur.execute("DELETE FROM t WHERE id = %s", (rng.randrange(1, next_id),))
                    else:
                        cur.execute("BEGIN")
                        cur.execute("UPDATE t SET v = v * 2 WHERE id = %s", (rng.randrange(1, next_id),))
                        cur.execute("INSERT INTO t (id, v, note) VALUES (%s, 0, 'txn')", (next_id,))
                        next_id += 1
                        cur.execute("COMMIT")
                    self.ops += 1
        except pymysql.MySQLError as exc:  # reported by wait_for / stop in the test's thread
            self.error = exc

    def wait_for(self, ops: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.ops < ops:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"writers made {self.ops} of {ops} transactions in {timeout} s"
            time.sleep(0.01)

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "writers did not stop"
        self.conn.close()
        assert self.error is None, self.error


def _table_rows(server: MariaDBServer, database: str) -> dict[int, dict[str, Any]]:
    conn = _connect(server, "zetl", "zetl", database)
    try:
        with conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute("SELECT id, v, note FROM t")
            return {r["id"]: dict(r) for r in cur.fetchall()}
    finally:
        conn.close()


@pytest.mark.parametrize("lock", ["table locks (no RELOAD)", "global read lock"])
def test_handoff_under_concurrent_writes_has_no_gap_and_no_overlap(
    mariadb_server: MariaDBServer, mariadb_database: str, restricted_user: tuple[str, str], lock: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = mariadb_database
    user, password = restricted_user if lock.startswith("table") else ("zetl", "zetl")
    setup = _connect(mariadb_server, "zetl", "zetl", db)
    with setup.cursor() as cur:
        cur.execute("CREATE TABLE t (id int PRIMARY KEY, v bigint NOT NULL, note varchar(40))")
        cur.executemany("INSERT INTO t VALUES (%s, %s, %s)", [(i, i, f"r{i}") for i in range(1, INITIAL_ROWS + 1)])
    setup.close()
    selector = TableSelection.of([f"{db}.*"])
    log = logging.getLogger("zetl.test.handoff")

    writers = Writers(mariadb_server, db)
    writers.thread.start()
    try:
        writers.wait_for(100)
        conn = _connect(mariadb_server, user, password, db)
        try:
            with caplog.at_level(logging.WARNING, logger=log.name):
                start = begin_consistent_snapshot(conn, False, log, selector=selector, lock_connection=lambda: _connect(mariadb_server, user, password))
            during = writers.ops
            (schema,) = read_schemas(conn, selector, mariadb=True)
            snapshot: dict[int, dict[str, Any]] = {}
            for chunk in read_table(conn, schema, None, 64, lambda: False):
                snapshot.update({r["id"]: r for r in chunk.rows.to_pylist()})
            with conn.cursor() as cur:
                cur.execute("COMMIT")
        finally:
            conn.close()
        writers.wait_for(during + 100)  # writes after the hand-off, streamed from the coordinate
    finally:
        writers.stop()
    refused = [r for r in caplog.records if "FLUSH TABLES WITH READ LOCK refused" in r.getMessage()]
    assert bool(refused) == lock.startswith("table"), [r.getMessage() for r in caplog.records]
    assert start.gtid is None  # SHOW MASTER STATUS on MariaDB: file and offset only

    conn = _connect(mariadb_server, "zetl", "zetl")
    with conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        file, pos = cur.fetchone()[:2]
    conn.close()
    end = (binlog_index(file), int(pos))
    state = dict(snapshot)
    config = MySQLConfig(port=mariadb_server.port, user=user, password=password, flavor="mariadb")  # type: ignore[arg-type]
    state_dir = mariadb_server.dir / "zetl-state" / f"{db}-handoff"
    state_dir.mkdir(parents=True, exist_ok=True)
    source = MySQLSource(config, PluginContext(integration=f"handoff-{db}", tables=selector, state_dir=state_dir))
    applied = 0
    deadline = time.monotonic() + 60
    with source:
        for batch in source.read(MySQLPosition(start.file, start.pos, None)):
            for e in batch.events:
                key = (e.after or e.before or {})["id"]
                if e.op is Op.INSERT:
                    assert key not in state, f"insert of id {key} already in the snapshot (overlap)"
                    state[key] = dict(e.after or {})
                elif e.op is Op.UPDATE:
                    assert state.get(key) == e.before, f"update of id {key}: before image {e.before} but replayed {state.get(key)}"
                    state[key] = dict(e.after or {})
                elif e.op is Op.DELETE:
                    assert state.get(key) == e.before, f"delete of id {key}: before image {e.before} but replayed {state.get(key)}"
                    del state[key]
                applied += 1
            at = batch.end_position
            if isinstance(at, MySQLPosition) and (binlog_index(at.file), at.pos) >= end:
                break
            assert time.monotonic() < deadline, "the stream did not reach the binlog's end"
    assert applied >= 100
    assert state == _table_rows(mariadb_server, db)


def test_handoff_without_reload_nor_lock_tables_says_what_to_grant(mariadb_server: MariaDBServer, mariadb_database: str) -> None:
    user = f"nl_{zlib.crc32(mariadb_database.encode())}"
    mariadb_server.sql(
        f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY 'x'; GRANT SELECT ON `{mariadb_database}`.* TO '{user}'@'127.0.0.1';"
        f" GRANT REPLICATION CLIENT ON *.* TO '{user}'@'127.0.0.1'; CREATE TABLE `{mariadb_database}`.t (id int PRIMARY KEY)"
    )
    try:
        conn = _connect(mariadb_server, user, "x")
        try:
            with pytest.raises(SourceError, match=r"grant RELOAD .*GRANT LOCK TABLES ON") as info:
                begin_consistent_snapshot(
                    conn, False, logging.getLogger("zetl.test.handoff"),
                    selector=TableSelection.of([f"{mariadb_database}.*"]), lock_connection=lambda: _connect(mariadb_server, user, "x"),
                )
            assert not info.value.retryable
        finally:
            conn.close()
    finally:
        mariadb_server.sql(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")


def test_table_lock_waiting_on_an_open_transaction_gives_up_retryably(
    mariadb_server: MariaDBServer, mariadb_database: str, restricted_user: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from zetl_connectors.mysql import snapshot

    monkeypatch.setattr(snapshot, "_LOCK_WAIT_SECONDS", 1)
    user, password = restricted_user
    writer = _connect(mariadb_server, "zetl", "zetl", mariadb_database)
    conn = _connect(mariadb_server, user, password, mariadb_database)
    try:
        with writer.cursor() as cur:
            cur.execute("CREATE TABLE t (id int PRIMARY KEY, v int)")
            cur.execute("BEGIN")
            cur.execute("INSERT INTO t VALUES (1, 1)")  # open, uncommitted: LOCK TABLES ... READ waits for it
        with pytest.raises(SourceError, match=rf"LOCK TABLES waited 1 s .*{mariadb_database}\.t") as info:
            begin_consistent_snapshot(
                conn, False, logging.getLogger("zetl.test.handoff"),
                selector=TableSelection.of([f"{mariadb_database}.*"]), lock_connection=lambda: _connect(mariadb_server, user, password),
            )
        assert info.value.retryable
    finally:
        writer.rollback()
        writer.close()
        conn.close()
