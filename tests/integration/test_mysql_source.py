"""The MySQL source against the private MariaDB server of the test session."""

from __future__ import annotations

import datetime as dt
import gc
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pymysql
import pytest
from zetl_connectors.mysql import MySQLConfig, MySQLPosition, MySQLSource

from zetl.jsonvalue import JsonText
from zetl.errors import NeedsAttentionError, SourceError
from zetl.events import Batch, ChangeEvent, Op, TableId
from zetl.plugin import PluginContext
from zetl.schema.changes import (
    CreateTable,
    DropTable,
)
from zetl.tables import TableSelection
from zetl.testing.conformance import SourceConformance, collect_events
from zetl.testing.servers import MariaDBServer

pytestmark = [pytest.mark.integration, pytest.mark.mariadb]

UTC = dt.UTC


def make_source(server: MariaDBServer, database: str, **options: Any) -> MySQLSource:
    """A source reading only ``database``; its state (schema history) lives in a directory per database."""
    config = MySQLConfig(port=server.port, user="zetl", password="zetl", **options)  # type: ignore[arg-type]
    state = server.dir / "zetl-state" / database
    state.mkdir(parents=True, exist_ok=True)
    context = PluginContext(integration=f"it-{database}", tables=TableSelection.of([f"{database}.*"]), state_dir=state)
    return MySQLSource(config, context)


class Driver:
    """Runs statements as a client of the test database (one committed transaction per call)."""

    def __init__(self, server: MariaDBServer, database: str, table: str = "items") -> None:
        self.database = database
        self.table = TableId(database, table)
        self.conn = pymysql.connect(host="127.0.0.1", port=server.port, user="zetl", password="zetl", database=database, autocommit=True)

    def run(self, *statements: str, params: Any = None) -> None:
        with self.conn.cursor() as cur:
            if len(statements) > 1:
                cur.execute("BEGIN")
            for s in statements:
                cur.execute(s, params)
            if len(statements) > 1:
                cur.execute("COMMIT")

    def create(self) -> None:
        self.run(f"CREATE TABLE `{self.table.name}` (id int primary key, name varchar(64), amount decimal(12,2))")

    def insert(self, rows: list[dict[str, Any]]) -> None:
        with self.conn.cursor() as cur:
            cur.execute("BEGIN")
            for r in rows:
                cols = list(r)
                cur.execute(
                    f"INSERT INTO `{self.table.name}` ({', '.join('`' + c + '`' for c in cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
                    [r[c] for c in cols],
                )
            cur.execute("COMMIT")

    def update(self, id: int, values: dict[str, Any]) -> None:
        sets = ", ".join(f"`{c}` = %s" for c in values)
        with self.conn.cursor() as cur:
            cur.execute(f"UPDATE `{self.table.name}` SET {sets} WHERE id = %s", [*values.values(), id])

    def delete(self, id: int) -> None:
        with self.conn.cursor() as cur:
            cur.execute(f"DELETE FROM `{self.table.name}` WHERE id = %s", (id,))

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def driver(mariadb_server: MariaDBServer, mariadb_database: str) -> Iterator[Driver]:
    d = Driver(mariadb_server, mariadb_database)
    yield d
    d.close()


class TestMySQLSourceConformance(SourceConformance):
    @pytest.fixture
    def source_factory(self, mariadb_server: MariaDBServer, mariadb_database: str) -> Callable[[], MySQLSource]:
        return lambda: make_source(mariadb_server, mariadb_database)

    @pytest.fixture
    def source_driver(self, driver: Driver) -> Driver:
        return driver


# -- types ----------------------------------------------------------------------------------

TYPES_DDL = """CREATE TABLE `all types` (
  id int PRIMARY KEY,
  ti tinyint, tu tinyint unsigned, si smallint, su smallint unsigned, mi mediumint, mu mediumint unsigned,
  i int, iu int unsigned, bi bigint, bu bigint unsigned,
  d decimal(12,2), dbig decimal(38,10), f float, db double,
  c char(3), vc varchar(20), tx text, e enum('small','large'), st set('x','y','z'),
  bn binary(4), vb varbinary(10), bl blob,
  dte date, dtm datetime, dtm6 datetime(6), ts timestamp(3) NULL, tm time(2), y year,
  j json, b1 bit(1), b9 bit(9)
)"""

TYPES_ROW = (
    "(%s, -128, 255, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295, -9223372036854775808, 18446744073709551615,"
    " -1234567890.12, 1234567890123456789012345678.1234567890, 1.5, -2.25e100,"
    " 'ab', 'héllo wörld ✓', 'long text', 'large', 'x,z',"
    " 0x00010203, 0xff00, 0xdeadbeef,"
    " '2024-02-29', '2024-01-02 03:04:05', '2024-01-02 03:04:05.123456', '2024-06-01 12:00:00.250', '23:59:59.99', 2155,"
    " '{\"k\": [1, 2.5, \"s\"], \"n\": null, \"t\": true}', b'1', b'100000001')"
)

EXPECTED_TYPES = {
    "ti": -128, "tu": 255, "si": -32768, "su": 65535, "mi": -8388608, "mu": 16777215, "i": -2147483648, "iu": 4294967295,
    "bi": -9223372036854775808, "bu": Decimal(18446744073709551615),
    "d": Decimal("-1234567890.12"), "dbig": Decimal("1234567890123456789012345678.1234567890"), "f": 1.5, "db": -2.25e100,
    "c": "ab", "vc": "héllo wörld ✓", "tx": "long text", "e": "large", "st": "x,z",
    "bn": b"\x00\x01\x02\x03", "vb": b"\xff\x00", "bl": b"\xde\xad\xbe\xef",
    "dte": dt.date(2024, 2, 29), "dtm": dt.datetime(2024, 1, 2, 3, 4, 5), "dtm6": dt.datetime(2024, 1, 2, 3, 4, 5, 123456),
    "ts": dt.datetime(2024, 6, 1, 12, 0, 0, 250000, tzinfo=UTC), "tm": dt.time(23, 59, 59, 990000), "y": 2155,
    "j": JsonText('{"k": [1, 2.5, "s"], "n": null, "t": true}'), "b1": True, "b9": 257,
}

EXPECTED_SCHEMA = {
    "id": "int32", "ti": "int16", "tu": "int16", "si": "int16", "su": "int32", "mi": "int32", "mu": "int32", "i": "int32", "iu": "int64",
    "bi": "int64", "bu": "decimal(20,0)", "d": "decimal(12,2)", "dbig": "decimal(38,10)", "f": "float32", "db": "float64",
    "c": "string(3)", "vc": "string(20)", "tx": "string", "e": "string", "st": "string", "bn": "binary", "vb": "binary", "bl": "binary",
    "dte": "date", "dtm": "timestamp", "dtm6": "timestamp", "ts": "timestamptz", "tm": "time", "y": "int16", "j": "json",
    "b1": "boolean", "b9": "int64",
}


def _canonical(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    if isinstance(out.get("j"), str):  # snapshot chunks carry JSON as text (the Arrow layout), events as JsonText
        out["j"] = JsonText(out["j"])
    if isinstance(out.get("ts"), dt.datetime):
        out["ts"] = out["ts"].astimezone(UTC)
    return out


@pytest.mark.parametrize("fast_rows", [True, False], ids=["zetl-row-decoder", "library-row-decoder"])
def test_every_common_type_in_snapshot_and_stream(mariadb_server: MariaDBServer, mariadb_database: str, driver: Driver, fast_rows: bool) -> None:
    driver.run(TYPES_DDL)
    driver.run("SET time_zone = '+05:00'")  # TIMESTAMP literals are in the session zone: 12:00 UTC = 17:00 +05
    driver.run("INSERT INTO `all types` VALUES " + TYPES_ROW.replace("%s", "1").replace("12:00:00.250", "17:00:00.250"))
    driver.run("INSERT INTO `all types` (id) VALUES (2)")
    table = TableId(mariadb_database, "all types")
    inserted = threading.Event()

    def stream_more(batch: Batch, events: list[ChangeEvent]) -> None:
        if not inserted.is_set() and any(e.op is Op.READ for e in events) and batch.end_position is not None and not batch.end_position.in_snapshot:  # type: ignore[attr-defined]
            inserted.set()
            driver.run("INSERT INTO `all types` VALUES " + TYPES_ROW.replace("%s", "3").replace("12:00:00.250", "17:00:00.250"))
            driver.run("INSERT INTO `all types` (id) VALUES (4)")

    with make_source(mariadb_server, mariadb_database) as source:
        source._fast_rows = fast_rows
        schema = {s.table: s for s in source.discover()}[table]
        assert {f.name: str(f.type) for f in schema.fields} == EXPECTED_SCHEMA
        events, _ = collect_events(source, None, until=lambda ev: len([e for e in ev if e.op is Op.INSERT]) >= 2, on_batch=stream_more)
    by_id = {(e.op, e.after["id"]): _canonical(dict(e.after)) for e in events if e.after is not None}
    for op, full, empty in ((Op.READ, 1, 2), (Op.INSERT, 3, 4)):
        row = by_id[(op, full)]
        for name, value in EXPECTED_TYPES.items():
            assert row[name] == value and type(row[name]) is type(value), f"{op} {name}: {row[name]!r} != {value!r}"
        assert all(v is None for k, v in by_id[(op, empty)].items() if k != "id"), f"{op}: NULLs stay NULL"


# -- DDL -----------------------------------------------------------------------------------


def _read_until(source: MySQLSource, start: Any, until: Callable[[list[Batch]], bool], timeout: float = 20) -> list[Batch]:
    batches: list[Batch] = []
    deadline = time.monotonic() + timeout
    for batch in source.read(start):
        batches.append(batch)
        if until(batches):
            return batches
        assert time.monotonic() < deadline, f"timed out; got {[str(c) for b in batches for c in b.schema_changes]}"
    raise AssertionError("read() ended")


def _stream_start(source: MySQLSource) -> MySQLPosition:
    batches = _read_until(source, None, lambda bs: bs[-1].end_position is not None and not bs[-1].end_position.in_snapshot)  # type: ignore[union-attr]
    end = batches[-1].end_position
    assert isinstance(end, MySQLPosition)
    return end


def test_alter_table_mid_stream(mariadb_server: MariaDBServer, mariadb_database: str, driver: Driver) -> None:
    t = driver.table
    driver.create()
    with make_source(mariadb_server, mariadb_database) as source:
        start = _stream_start(source)
    driver.insert([{"id": 1, "name": "before", "amount": Decimal("1.00")}])
    driver.run("ALTER TABLE items ADD COLUMN note varchar(10) NOT NULL DEFAULT 'x' AFTER id")
    driver.insert([{"id": 2, "name": "after add", "amount": Decimal("2.00"), "note": "n2"}])
    driver.run("ALTER TABLE items MODIFY COLUMN amount decimal(14,2), DROP COLUMN name")
    driver.insert([{"id": 3, "amount": Decimal("3.00"), "note": "n3"}])
    driver.run("ALTER TABLE items CHANGE COLUMN note remark varchar(20)")
    driver.run("ALTER TABLE items RENAME COLUMN remark TO label, ADD COLUMN qty bigint unsigned FIRST")
    driver.insert([{"id": 4, "amount": Decimal("4.00"), "label": "n4", "qty": 18446744073709551615}])
    driver.run("ALTER TABLE items ADD INDEX by_amount (amount), ENGINE=InnoDB")  # no column change
    driver.run("ALTER TABLE items ADD COLUMN (extra1 int, extra2 int)")  # syntax the parser does not read: re-read
    driver.insert([{"id": 5, "amount": Decimal("5.00"), "label": "n5", "qty": 1, "extra2": 7}])
    with make_source(mariadb_server, mariadb_database) as source:
        batches = _read_until(source, start, lambda bs: any(e.after and e.after.get("id") == 5 for b in bs for e in b.events))
    steps: list[Any] = []
    for b in batches:
        steps += [str(c) for c in b.schema_changes]
        steps += [(e.op.name, dict(e.after or {})) for e in b.events]  # type: ignore[misc]
    T = str(t)
    assert steps == [
        f"create table {T} (id int32, name string(64), amount decimal(12,2))",
        ("INSERT", {'id': 1, 'name': 'before', 'amount': Decimal('1.00')}),
        f"add column {T}.note string(10) not null after id",
        ("INSERT", {'id': 2, 'note': 'n2', 'name': 'after add', 'amount': Decimal('2.00')}),
        f"alter column {T}.amount type decimal(12,2) -> decimal(14,2)",
        f"drop column {T}.name",
        ("INSERT", {'id': 3, 'note': 'n3', 'amount': Decimal('3.00')}),
        f"rename column {T}.note to remark",
        f"alter column {T}.remark type string(10) -> string(20)",
        f"alter column {T}.remark drop not null",
        f"rename column {T}.remark to label",
        f"add column {T}.qty decimal(20,0)",
        ("INSERT", {'id': 4, 'label': 'n4', 'amount': Decimal('4.00'), 'qty': Decimal(18446744073709551615)}),
        f"add column {T}.extra1 int32 after amount",
        f"add column {T}.extra2 int32 after extra1",
        ("INSERT", {'id': 5, 'label': 'n5', 'amount': Decimal('5.00'), 'extra1': None, 'extra2': 7, 'qty': Decimal(1)}),
    ], "\n".join(map(str, steps))


def test_create_rename_truncate_drop_table(mariadb_server: MariaDBServer, mariadb_database: str, driver: Driver) -> None:
    db = mariadb_database
    with make_source(mariadb_server, db) as source:
        start = _stream_start(source)
    driver.run("CREATE TABLE fresh (id bigint PRIMARY KEY, v json)")
    driver.run("INSERT INTO fresh VALUES (1, '[1]'), (2, '{}')")
    driver.run("TRUNCATE TABLE fresh")
    driver.run("RENAME TABLE fresh TO renamed")
    driver.run("INSERT INTO renamed VALUES (3, 'null')")
    driver.run("DROP TABLE renamed")
    driver.run("CREATE TABLE marker (id int PRIMARY KEY)")
    with make_source(mariadb_server, db) as source:
        batches = _read_until(source, start, lambda bs: any(isinstance(c, CreateTable) and c.table.name == "marker" for b in bs for c in b.schema_changes))
    seen: list[str] = []
    for b in batches:
        seen += [type(c).__name__ + " " + c.table.name for c in b.schema_changes]
        seen += [f"{e.op.name} {e.table.name} {(e.row or {}).get('id')}" for e in b.events]
    assert seen == [
        "CreateTable fresh", "INSERT fresh 1", "INSERT fresh 2", "TRUNCATE fresh None",
        "DropTable fresh", "CreateTable renamed", "INSERT renamed 3", "DropTable renamed", "CreateTable marker",
    ]
    created = next(c for b in batches for c in b.schema_changes if isinstance(c, CreateTable))
    assert [str(f.type) for f in created.schema.fields] == ["int64", "json"] and created.schema.primary_key == ("id",)
    assert isinstance(next(c for b in batches for c in b.schema_changes if isinstance(c, DropTable)), DropTable)


# -- positions, restarts, purged binlogs, preflight ----------------------------------------


def test_resume_inside_busy_stream_gives_each_transaction_once(mariadb_server: MariaDBServer, mariadb_database: str, driver: Driver) -> None:
    driver.create()
    with make_source(mariadb_server, mariadb_database, max_batch_rows=7) as source:
        start = _stream_start(source)
    for txn in range(20):
        driver.insert([{"id": txn * 10 + k, "name": "r", "amount": Decimal(k)} for k in range(5)])
    with make_source(mariadb_server, mariadb_database, max_batch_rows=7) as source:
        first = _read_until(source, start, lambda bs: sum(len(b.events) for b in bs) >= 40)
    # every batch holds whole transactions
    for b in first:
        ids = [e.after["id"] for e in b.events]  # type: ignore[index]
        assert len(ids) % 5 == 0, ids
    cut = first[2].end_position
    before_cut = {e.after["id"] for b in first[:3] for e in b.events}  # type: ignore[index]
    with make_source(mariadb_server, mariadb_database) as source:
        rest = _read_until(source, cut, lambda bs: any(e.after and e.after["id"] == 194 for b in bs for e in b.events))
    after_cut = [e.after["id"] for b in rest for e in b.events]  # type: ignore[index]
    assert sorted(before_cut | set(after_cut)) == sorted(t * 10 + k for t in range(20) for k in range(5))
    assert not before_cut & set(after_cut) and len(after_cut) == len(set(after_cut)), "no duplicate"


def test_resume_by_file_and_offset_without_gtid(mariadb_server: MariaDBServer, mariadb_database: str, driver: Driver) -> None:
    driver.create()
    with make_source(mariadb_server, mariadb_database) as source:
        start = _stream_start(source)
    driver.insert([{"id": 1, "name": "a", "amount": 1}])
    with make_source(mariadb_server, mariadb_database) as source:
        batches = _read_until(source, start, lambda bs: any(b.events for b in bs))
    end = next(b.end_position for b in batches if b.events)
    assert isinstance(end, MySQLPosition) and end.gtid
    driver.insert([{"id": 2, "name": "b", "amount": 2}])
    without_gtid = MySQLPosition(end.file, end.pos, None)
    with make_source(mariadb_server, mariadb_database) as source:
        batches = _read_until(source, without_gtid, lambda bs: any(b.events for b in bs))
    assert [e.after["id"] for b in batches for e in b.events] == [2]  # type: ignore[index]


def test_purged_binlog_needs_attention_or_resnapshots(mariadb_server: MariaDBServer, mariadb_database: str, driver: Driver) -> None:
    driver.create()
    driver.insert([{"id": 1, "name": "a", "amount": 1}])
    with make_source(mariadb_server, mariadb_database) as source:
        start = _stream_start(source)
    mariadb_server.sql("FLUSH BINARY LOGS")
    current = mariadb_server.sql("SHOW MASTER STATUS").split()[0]
    deadline = time.monotonic() + 20
    while mariadb_server.sql("SHOW BINARY LOGS").split()[0] != current:
        # MariaDB keeps a binlog until its binlog checkpoint passed it (a fraction of a second)
        assert time.monotonic() < deadline, "the purge must happen for this test to mean anything"
        mariadb_server.sql(f"PURGE BINARY LOGS TO '{current}'")
        time.sleep(0.1)
    with make_source(mariadb_server, mariadb_database) as source:
        with pytest.raises(NeedsAttentionError, match="no longer on MySQL.*zetl reset it-.*snapshot: when_needed"):
            next(iter(source.read(start)))
    with make_source(mariadb_server, mariadb_database, snapshot="when_needed") as source:
        batches = _read_until(source, start, lambda bs: any(c for b in bs for c in b.chunks))
    assert [r["id"] for b in batches for c in b.chunks for r in c.rows.to_pylist()] == [1]


def test_preflight_names_each_setting_with_its_fix(mariadb_server: MariaDBServer, mariadb_database: str) -> None:
    mariadb_server.sql("SET GLOBAL binlog_row_metadata = 'MINIMAL'; SET GLOBAL binlog_row_image = 'MINIMAL'")
    try:
        with pytest.raises(SourceError) as info:
            make_source(mariadb_server, mariadb_database).open()
        inspecting = make_source(mariadb_server, mariadb_database)
        inspecting.context.read_only = True  # zetl drift: reading schemas needs no binlog
        with inspecting:
            assert inspecting.discover() == []
    finally:
        mariadb_server.sql("SET GLOBAL binlog_row_metadata = 'FULL'; SET GLOBAL binlog_row_image = 'FULL'")
    text = str(info.value)
    assert "binlog_row_metadata is 'MINIMAL', needs FULL: run SET GLOBAL binlog_row_metadata = 'FULL';" in text
    assert "binlog_row_image is 'MINIMAL', needs FULL: run SET GLOBAL binlog_row_image = 'FULL';" in text
    assert not info.value.retryable


def test_snapshot_resumes_after_the_last_chunk(mariadb_server: MariaDBServer, mariadb_database: str, driver: Driver) -> None:
    driver.create()
    driver.insert([{"id": i, "name": f"n{i}", "amount": i} for i in range(1, 26)])
    driver.run("CREATE TABLE other (a varchar(5), b varchar(5), v int, PRIMARY KEY (a, b))")
    driver.run("INSERT INTO other VALUES ('x', '1', 1), ('x', '2', 2), ('y', '1', 3)")
    progress: list[tuple[str, int, int | None]] = []
    with make_source(mariadb_server, mariadb_database, snapshot_chunk_rows=10, snapshot="initial_only") as source:
        source.context.progress = lambda table, done, total: progress.append((table.name, done, total))
        batches = list(source.read(None))
    chunks = [(c.table.name, [r.get("id", r.get("v")) for r in c.rows.to_pylist()]) for b in batches for c in b.chunks]
    assert chunks == [("items", list(range(1, 11))), ("items", list(range(11, 21))), ("items", list(range(21, 26))), ("other", [1, 2, 3])]
    assert progress[-1][:2] == ("other", 3) and ("items", 25, 25) in progress
    cut = batches[1].end_position  # after the second chunk of items
    with make_source(mariadb_server, mariadb_database, snapshot_chunk_rows=2, snapshot="initial_only") as source:
        resumed = list(source.read(cut))
    rest = [r.get("id", r.get("v")) for b in resumed for c in b.chunks for r in c.rows.to_pylist()]
    assert rest == [21, 22, 23, 24, 25, 1, 2, 3]
    ends = [b.end_position for b in batches + resumed if b.end_position is not None]
    assert ends[-1] is not None and not ends[-1].in_snapshot  # type: ignore[attr-defined]


def test_row_decoder_matches_the_library_on_edge_values(mariadb_server: MariaDBServer, mariadb_database: str, driver: Driver) -> None:
    driver.run(
        "CREATE TABLE edge (id int PRIMARY KEY, d1 decimal(5,2), d2 decimal(30,10), d3 decimal(10,0), d4 decimal(65,30),"
        " m mediumint, mu mediumint unsigned, s set('a','b'), e enum('x','y'), dt3 datetime(3), ts1 timestamp(1) NULL, y year, c char(200), vc varchar(300))"
    )
    with make_source(mariadb_server, mariadb_database) as source:
        start = _stream_start(source)
    values = [
        "(1, 0.05, -0.0000000001, 0, -12345678901234567890123456789012345.123456789012345678901234567890, -1, 0, '', 'x', '2000-01-01 00:00:00.001', '1970-01-01 00:00:01.5', 1901, 'é', REPEAT('v', 300))",
        "(2, -999.99, 12345678901234567890.0123456789, -9999999999, 0.000000000000000000000000000001, 8388607, 16777215, 'a,b', 'y', '9999-12-31 23:59:59.999', '2038-01-19 03:14:07.9', 2155, '', '')",
        "(3, -0.5, 1, 1, -1, -8388608, 1, 'b', NULL, NULL, NULL, NULL, NULL, NULL)",
    ]
    driver.run("SET time_zone = '+00:00'")
    driver.run("INSERT INTO edge VALUES " + ", ".join(values))
    driver.run("UPDATE edge SET d1 = -d1, d2 = d2 * 2 WHERE id < 3")
    decoded = []
    for fast in (True, False):
        with make_source(mariadb_server, mariadb_database) as source:
            source._fast_rows = fast
            batches = _read_until(source, start, lambda bs: sum(len(b.events) for b in bs) >= 5)
        decoded.append([(e.op, e.before, e.after) for b in batches for e in b.events])
    fast_rows, library_rows = decoded
    # the library reads an empty SET as NULL; zetl's decoder and the snapshot give ''
    assert fast_rows[0][2]["s"] == "" and library_rows[0][2]["s"] is None  # type: ignore[index]
    for (_, *fast_images), (_, *library_images) in zip(fast_rows, library_rows):
        for f_img, l_img in zip(fast_images, library_images):
            if f_img is not None and f_img["s"] == "" and l_img["s"] is None:
                l_img["s"] = ""
    assert fast_rows == library_rows
    assert repr(fast_rows) == repr(library_rows)  # the same decimal exponents and time zones too
    assert fast_rows[0][2]["d4"] == Decimal("-12345678901234567890123456789012345.123456789012345678901234567890")  # type: ignore[index]
    assert fast_rows[1][2]["d1"] == Decimal("-999.99") and fast_rows[3][1]["d1"] == Decimal("0.05")  # type: ignore[index]
    assert fast_rows[1][2]["ts1"] == dt.datetime(2038, 1, 19, 3, 14, 7, 900000, tzinfo=UTC)  # type: ignore[index]


def test_binlog_read_ahead_gives_the_same_events_and_positions(mariadb_server: MariaDBServer, mariadb_database: str, driver: Driver) -> None:
    driver.run("CREATE TABLE ahead (id int PRIMARY KEY, doc json, note text)")
    with make_source(mariadb_server, mariadb_database) as source:
        start = _stream_start(source)
    for first in (1, 301, 601):  # transactions of 300 rows: several row events each
        driver.run(f"INSERT INTO ahead SELECT seq, JSON_OBJECT('k', seq), REPEAT('n', seq % 50) FROM seq_{first}_to_{first + 299}")
    driver.run("UPDATE ahead SET note = 'u' WHERE id % 100 = 0")
    driver.run("DELETE FROM ahead WHERE id > 850")
    seen = []
    for prefetch in (True, False):
        with make_source(mariadb_server, mariadb_database) as source:
            source._prefetch = prefetch
            batches = _read_until(source, start, lambda bs: sum(len(b.events) for b in bs) >= 959)
            assert any(t.name == "zetl-binlog-reader" for t in threading.enumerate()) is prefetch
        seen.append(([(e.op, e.before, e.after, e.position, e.txid) for b in batches for e in b.events], [b.end_position for b in batches]))
        assert not any(t.name == "zetl-binlog-reader" for t in threading.enumerate())  # closed with the source
    (ahead_events, ahead_ends), (plain_events, plain_ends) = seen
    assert len(ahead_events) == 959 and ahead_events == plain_events
    # batches may be cut at other transactions (timing), but end where the last transaction ends
    assert [e for e in ahead_ends if e is not None][-1] == [e for e in plain_ends if e is not None][-1] == ahead_events[-1][3]


def test_values_converted_while_decoding_match_the_library(mariadb_server: MariaDBServer, mariadb_database: str, driver: Driver) -> None:
    # columns whose values zetl converts (JSON text, BIT, BIGINT UNSIGNED as decimal), with NULLs
    driver.run("CREATE TABLE conv (id int PRIMARY KEY, doc json, b bit(1), bits bit(10), big bigint unsigned, n int, t text, at datetime)")
    with make_source(mariadb_server, mariadb_database) as source:
        start = _stream_start(source)
    driver.run(
        "INSERT INTO conv VALUES (1, '{\"a\": [1, 2.5], \"s\": \"é\"}', b'1', b'1010', 18446744073709551615, 5, 'x', '2024-01-02 03:04:05'),"
        " (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
    )
    driver.run("UPDATE conv SET doc = '[1]', n = NULL, b = b'0' WHERE id = 1")
    driver.run("DELETE FROM conv WHERE id = 2")
    decoded = []
    for fast in (True, False):
        with make_source(mariadb_server, mariadb_database) as source:
            source._fast_rows = fast
            batches = _read_until(source, start, lambda bs: sum(len(b.events) for b in bs) >= 4)
        decoded.append([(e.op, e.before, e.after) for b in batches for e in b.events])
        assert gc.isenabled()  # paused only while a batch is being read
    fast_rows, library_rows = decoded
    assert fast_rows == library_rows
    assert repr(fast_rows) == repr(library_rows)
    assert [op for op, _, _ in fast_rows] == [Op.INSERT, Op.INSERT, Op.UPDATE, Op.DELETE]
    assert fast_rows[0][2] == {  # type: ignore[comparison-overlap]
        "id": 1, "doc": JsonText('{"a": [1, 2.5], "s": "é"}'), "b": True, "bits": 10, "big": Decimal(18446744073709551615), "n": 5, "t": "x",
        "at": dt.datetime(2024, 1, 2, 3, 4, 5),
    }
    assert fast_rows[1][2] == dict.fromkeys(("doc", "b", "bits", "big", "n", "t", "at")) | {"id": 2}  # type: ignore[comparison-overlap]
    assert fast_rows[2][2]["doc"] == JsonText("[1]") and fast_rows[2][2]["b"] is False and fast_rows[2][2]["n"] is None  # type: ignore[index]


def test_zero_dates_arrive_as_null_in_snapshot_and_stream(mariadb_server: MariaDBServer, mariadb_database: str, driver: Driver) -> None:
    driver.run("CREATE TABLE z (id int PRIMARY KEY, d date, t datetime(6), ok date)")
    driver.run("SET SESSION sql_mode = ''")
    driver.run("INSERT INTO z VALUES (1, '0000-00-00', '0000-00-00 00:00:00', '2024-05-06')")

    inserted = threading.Event()

    def late_insert(batch: Batch, events: list[ChangeEvent]) -> None:
        if not inserted.is_set() and batch.end_position is not None and not batch.end_position.in_snapshot:  # type: ignore[attr-defined]
            inserted.set()
            driver.run("INSERT INTO z VALUES (2, '0000-00-00', '0000-00-00 00:00:00', '2024-05-06')")

    with make_source(mariadb_server, mariadb_database) as source:
        events, _ = collect_events(source, None, until=lambda ev: any(e.op is Op.INSERT for e in ev), on_batch=late_insert)
    rows = {e.after["id"]: dict(e.after) for e in events if e.after is not None}  # type: ignore[index]
    assert rows[1] == rows[2] | {"id": 1} == {"id": 1, "d": None, "t": None, "ok": dt.date(2024, 5, 6)}


def test_initial_only_stops_after_the_snapshot_and_stays_stopped(mariadb_server: MariaDBServer, mariadb_database: str, driver: Driver) -> None:
    driver.create()
    driver.insert([{"id": 1, "name": "a", "amount": 1}])
    with make_source(mariadb_server, mariadb_database, snapshot="initial_only") as source:
        batches = list(source.read(None))
        assert source.status()["phase"] == "done"
    end = batches[-1].end_position
    assert isinstance(end, MySQLPosition) and not end.in_snapshot
    driver.insert([{"id": 2, "name": "b", "amount": 2}])
    with make_source(mariadb_server, mariadb_database, snapshot="initial_only") as source:
        assert list(source.read(end)) == []


def test_connection_errors_say_what_and_whether_to_retry(mariadb_server: MariaDBServer, mariadb_database: str) -> None:
    from zetl.errors import SourceConnectionError
    from zetl.testing.servers import free_port

    bad_password = MySQLSource(MySQLConfig(port=mariadb_server.port, user="zetl", password="wrong"), PluginContext(integration="x"))  # type: ignore[arg-type]
    with pytest.raises(SourceError, match=r"access denied for user 'zetl'.*check the password") as info:
        bad_password.open()
    assert not info.value.retryable and "wrong" not in str(info.value)
    nobody_home = MySQLSource(MySQLConfig(port=free_port(), user="zetl", password="zetl", connect_timeout=2), PluginContext(integration="x"))  # type: ignore[arg-type]
    with pytest.raises(SourceConnectionError, match=r"MySQL 127\.0\.0\.1:\d+ \(connecting\)") as info2:
        nobody_home.open()
    assert info2.value.retryable


def test_tls_with_a_verified_server_certificate(tmp_path: Any) -> None:
    import os
    import subprocess

    server = MariaDBServer()
    cert, key = server.dir / "cert.pem", server.dir / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    os.chmod(key, 0o644)  # read by the server's own user
    server.settings.update({"ssl_cert": str(cert), "ssl_key": str(key), "require_secure_transport": "ON"})
    server.start()
    try:
        server.sql("CREATE DATABASE sec; CREATE TABLE sec.t (id int PRIMARY KEY, v varchar(5)); INSERT INTO sec.t VALUES (1, 'a')")

        def source(**tls: Any) -> MySQLSource:
            config = MySQLConfig(port=server.port, user="zetl", password="zetl", tls=tls or None)  # type: ignore[arg-type]
            state = server.dir / "state"
            state.mkdir(exist_ok=True)
            return MySQLSource(config, PluginContext(integration="tls", tables=TableSelection.of(["sec.*"]), state_dir=state))

        with pytest.raises(SourceError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            source(ca=None).open()  # verification is on: the system CAs do not know this self-signed certificate
        inserted = threading.Event()

        def insert(batch: Batch, events: list[ChangeEvent]) -> None:
            if not inserted.is_set() and batch.end_position is not None and not batch.end_position.in_snapshot:  # type: ignore[attr-defined]
                inserted.set()
                server.sql("INSERT INTO sec.t VALUES (2, 'b')")

        with source(ca=str(cert)) as src:
            events, _ = collect_events(src, None, until=lambda ev: any(e.op is Op.INSERT for e in ev), on_batch=insert)
        assert [(e.op, e.after["id"]) for e in events] == [(Op.READ, 1), (Op.INSERT, 2)]  # type: ignore[index]
    finally:
        server.stop()
