"""Columns added FIRST / moved AFTER mid-stream, in binlogs logged without column names
(``binlog_row_metadata`` not FULL while they were written): rows before and after each statement
decode by position with the schema history, in one read and after a restart inside the history."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pymysql
import pytest
from zetl_connectors.mysql import MySQLConfig, MySQLPosition, MySQLSource

from zetl.events import Batch, Op
from zetl.plugin import PluginContext
from zetl.tables import TableSelection
from zetl.testing.servers import MariaDBServer

pytestmark = [pytest.mark.integration, pytest.mark.mariadb]


def _source(server: MariaDBServer, database: str) -> MySQLSource:
    state = server.dir / "zetl-state" / database
    state.mkdir(parents=True, exist_ok=True)
    context = PluginContext(integration=f"it-{database}", tables=TableSelection.of([f"{database}.*"]), state_dir=state)
    return MySQLSource(MySQLConfig(port=server.port, user="zetl", password="zetl"), context)  # type: ignore[arg-type]


def _read_until(source: MySQLSource, start: MySQLPosition | None, done: Callable[[list[Batch]], bool], timeout: float = 60) -> list[Batch]:
    batches: list[Batch] = []
    deadline = time.monotonic() + timeout
    for batch in source.read(start):
        batches.append(batch)
        if done(batches):
            return batches
        assert time.monotonic() < deadline, "timed out reading the binlog"
    raise AssertionError("read() ended")


def _streaming(batches: list[Batch]) -> bool:
    end = batches[-1].end_position
    return isinstance(end, MySQLPosition) and not end.in_snapshot


def _has_id(wanted: int, op: Op) -> Callable[[list[Batch]], bool]:
    return lambda bs: any(e.op is op and (e.after or {}).get("id") == wanted for b in bs for e in b.events)


def _rows(batches: list[Batch]) -> list[tuple[str, dict[str, Any]]]:
    return [(e.op.name, dict(e.after or {})) for b in batches for e in b.events]


@pytest.fixture
def client(mariadb_server: MariaDBServer, mariadb_database: str) -> Iterator[Any]:
    conn = pymysql.connect(host="127.0.0.1", port=mariadb_server.port, user="zetl", password="zetl", database=mariadb_database, autocommit=True)
    yield conn
    conn.close()


def test_add_first_and_moves_decode_by_position_without_logged_names(mariadb_server: MariaDBServer, mariadb_database: str, client: Any) -> None:
    with client.cursor() as cur:
        cur.execute("CREATE TABLE items (id int PRIMARY KEY, name varchar(20), amount int unsigned, size enum('s','m'))")
    with _source(mariadb_server, mariadb_database) as source:
        start = _read_until(source, None, _streaming)[-1].end_position
    assert isinstance(start, MySQLPosition)

    mariadb_server.sql("SET GLOBAL binlog_row_metadata = 'MINIMAL'")
    try:
        with client.cursor() as cur:
            cur.execute("INSERT INTO items VALUES (1, 'one', 4000000000, 'm')")
            cur.execute("ALTER TABLE items ADD COLUMN qty int NOT NULL DEFAULT 5 FIRST")
            cur.execute("INSERT INTO items VALUES (7, 2, 'two', 2, 's')")
            cur.execute("ALTER TABLE items MODIFY COLUMN name varchar(20) AFTER amount")
            cur.execute("INSERT INTO items VALUES (8, 3, 3000000000, 'three', 'm')")
            cur.execute("UPDATE items SET qty = 9 WHERE id = 1")
    finally:
        mariadb_server.sql("SET GLOBAL binlog_row_metadata = 'FULL'")

    one = {"id": 1, "name": "one", "amount": 4000000000, "size": "m"}
    expected = [
        ("INSERT", one),
        ("INSERT", {"qty": 7, "id": 2, "name": "two", "amount": 2, "size": "s"}),
        ("INSERT", {"qty": 8, "id": 3, "amount": 3000000000, "name": "three", "size": "m"}),
        ("UPDATE", {**one, "qty": 9}),
    ]
    with _source(mariadb_server, mariadb_database) as source:
        batches = _read_until(source, start, _has_id(1, Op.UPDATE))
    assert _rows(batches) == expected
    changes = [str(c) for b in batches for c in b.schema_changes]
    assert any("add column" in c and ".qty int32 not null" in c and "after" not in c for c in changes), changes

    # a restart from the checkpoint right after ADD COLUMN ... FIRST: the schema history (not
    # information_schema, which has the final order) says how the later rows are laid out
    after_add = next(b.end_position for b in batches if any("add column" in str(c) for c in b.schema_changes))
    assert isinstance(after_add, MySQLPosition)
    with _source(mariadb_server, mariadb_database) as source:
        resumed = _read_until(source, after_add, _has_id(1, Op.UPDATE))
    assert _rows(resumed) == expected[1:]
