"""The MySQL source's pure parts: positions, GTID states, DDL interpretation, and the binlog
assembler fed with MySQL 8 events as pymysqlreplication decodes them (no MySQL server here:
MariaDB paths are covered against the real server in tests/integration/test_mysql_source.py)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from zetl_connectors.mysql.config import MySQLConfig, default_server_id
from zetl_connectors.mysql.ddl import interpret, strip_comments
from zetl_connectors.mysql.gtid import MariaDBGtidState, MySQLGtidSet
from zetl_connectors.mysql.position import MySQLPosition, SnapshotProgress
from zetl_connectors.mysql.preflight import ServerInfo, check_settings
from zetl_connectors.mysql.stream import BinlogAssembler, diff_schemas
from zetl_connectors.mysql.typemap import canonical_type

from zetl.jsonvalue import JsonText
from zetl.errors import NeedsAttentionError, SourceConnectionError
from zetl.events import Op, Position, TableId
from zetl.schema.types import Field, Schema
from zetl.tables import TableSelection

SHOP = TableId("shop", "orders")
UUID = "3e11fa47-71ca-11e1-9e33-c80aa9429562"


def _schema(table: TableId = SHOP, **cols: str) -> Schema:
    cols = cols or {"id": "int(11)", "note": "varchar(10)", "doc": "json"}
    return Schema.of(table, [Field(n, canonical_type(t), source_type=t) for n, t in cols.items()], ["id"])


# -- positions and GTIDs --------------------------------------------------------------------


def test_position_json_round_trip_and_order() -> None:
    snap = MySQLPosition("binlog.000009", 120, f"{UUID}:1-5", SnapshotProgress(("shop.a",), "shop.b", (7, b"\x00", Decimal("1.5"), dt.datetime(2024, 1, 1)), 99))
    back = Position.from_json(snap.to_json())
    assert isinstance(back, MySQLPosition) and back == snap and back.snapshot == snap.snapshot
    assert back.snapshot is not None and back.snapshot.after == (7, b"\x00", Decimal("1.5"), dt.datetime(2024, 1, 1))
    stream = snap.streaming()
    later_file = MySQLPosition("binlog.000010", 4)
    assert snap < stream < MySQLPosition("binlog.000009", 121) < later_file
    assert MySQLPosition("binlog.000009", 120, None, SnapshotProgress(rows=1)) < snap
    assert str(stream) == f"binlog.000009:120 gtid={UUID}:1-5"


def test_gtid_sets_merge_intervals() -> None:
    s = MySQLGtidSet(f"{UUID}:1-3:7,\n4e11fa47-71ca-11e1-9e33-c80aa9429562:5")
    s.add(f"{UUID}:4")
    s.add(f"{UUID}:6")
    s.add(f"{UUID.upper()}:9")
    assert str(s) == f"{UUID}:1-4:6-7:9,4e11fa47-71ca-11e1-9e33-c80aa9429562:5"
    s.add(f"{UUID}:5")
    assert str(s).startswith(f"{UUID}:1-7:9,")
    assert f"{UUID}:5" in s and f"{UUID}:8" not in s
    m = MariaDBGtidState("1-2-7,0-1-42")
    m.add("0-1-43")
    m.add("2-5-1")
    assert str(m) == "0-1-43,1-2-7,2-5-1"


def test_default_server_id_is_stable_and_large() -> None:
    assert default_server_id("orders") == default_server_id("orders") != default_server_id("orders2")
    assert 1_000_000 <= default_server_id("x") < 2**32
    assert MySQLConfig(password="s3cret").model_dump_json().count("s3cret") == 0


# -- preflight ------------------------------------------------------------------------------


def test_preflight_lists_every_problem_with_its_fix() -> None:
    info = ServerInfo("8.0.36", False, {"log_bin": "ON", "binlog_format": "MIXED", "binlog_row_image": "MINIMAL", "binlog_row_metadata": "MINIMAL", "binlog_expire_logs_seconds": "3600"})
    problems = [str(p) for p in check_settings(info, 86400)]
    assert problems == [
        "binlog_format is 'MIXED', needs ROW: run SET GLOBAL binlog_format = 'ROW'; and add binlog_format=ROW under [mysqld] in the server's configuration file (RDS/Aurora: set binlog_format = ROW in the DB parameter group)",
        "binlog_row_image is 'MINIMAL', needs FULL: run SET GLOBAL binlog_row_image = 'FULL'; and add binlog_row_image=FULL under [mysqld] in the server's configuration file (RDS/Aurora: set binlog_row_image = FULL in the DB parameter group)",
        "binlog_row_metadata is 'MINIMAL', needs FULL: run SET GLOBAL binlog_row_metadata = 'FULL'; and add binlog_row_metadata=FULL under [mysqld] in the server's configuration file (RDS/Aurora: set binlog_row_metadata = FULL in the DB parameter group)",
        "binlog_expire_logs_seconds is '3600 s', needs >= 86400 s of binlog retention: run SET GLOBAL binlog_expire_logs_seconds = '86400'; and add binlog_expire_logs_seconds=86400 under [mysqld] in the server's configuration file (RDS/Aurora: set binlog_expire_logs_seconds = 86400 in the DB parameter group) (RDS: CALL mysql.rds_set_configuration('binlog retention hours', 24))",
    ]
    partial = ServerInfo("8.0.36", False, {"log_bin": "ON", "binlog_format": "ROW", "binlog_row_image": "FULL", "binlog_row_metadata": "FULL", "binlog_row_value_options": "PARTIAL_JSON"})
    assert [str(p) for p in check_settings(partial, 0)] == [
        "binlog_row_value_options is 'PARTIAL_JSON', needs '': run SET GLOBAL binlog_row_value_options = ''; and remove binlog_row_value_options from the server's configuration file (RDS/Aurora: clear it in the DB parameter group)"
    ]
    ok = ServerInfo("10.11.6-MariaDB", True, {"log_bin": "ON", "binlog_format": "ROW", "binlog_row_image": "FULL", "binlog_row_metadata": "FULL", "expire_logs_days": "0"})
    assert check_settings(ok, 86400) == []
    off = ServerInfo("10.11.6-MariaDB", True, {"log_bin": "OFF", "binlog_format": "ROW", "binlog_row_image": "FULL"})
    assert [p.setting for p in check_settings(off, 0)] == ["log_bin", "binlog_row_metadata"]


# -- DDL ------------------------------------------------------------------------------------

ALL = TableSelection.of(["shop.*"])


def _ddl(sql: str, schemas: dict[TableId, Schema] | None = None) -> list[str]:
    r = interpret(sql, "shop", schemas if schemas is not None else {SHOP: _schema()}, ALL)
    return [str(c) for c in r.changes] + [f"truncate {t}" for t in r.truncated] + [f"reread {t}" for t in r.reread] + [f"created {t}" for t in r.created]


@pytest.mark.parametrize(
    "sql, expected",
    [
        ("ALTER TABLE orders ADD COLUMN qty int unsigned NOT NULL AFTER id", ["add column shop.orders.qty int64 not null after id"]),
        ("alter table `shop`.`orders` add `q``t` decimal(5,2), drop column note", ["add column shop.orders.q`t decimal(5,2)", "drop column shop.orders.note"]),
        ("ALTER TABLE orders MODIFY note varchar(20) NOT NULL", ["alter column shop.orders.note type string(10) -> string(20)"]),
        ("ALTER TABLE orders CHANGE note remark text", ["rename column shop.orders.note to remark", "alter column shop.orders.remark type string(10) -> string"]),
        ("ALTER TABLE orders RENAME COLUMN note TO remark", ["rename column shop.orders.note to remark"]),
        ("ALTER TABLE orders ADD INDEX i (note), ALGORITHM=INPLACE, LOCK=NONE", []),
        ("ALTER TABLE orders ALTER COLUMN note SET DEFAULT 'x'", []),
        ("ALTER TABLE other.orders ADD COLUMN x int", []),
        ("ALTER TABLE orders ADD COLUMN (a int, b int)", ["reread shop.orders"]),
        ("ALTER TABLE orders RENAME TO archive", ["drop table shop.orders", "create table shop.archive (id int32, note string(10), doc json)"]),
        ("RENAME TABLE orders TO old_orders, `shop`.`x` TO shop.y", ["drop table shop.orders", "create table shop.old_orders (id int32, note string(10), doc json)", "created shop.y"]),
        ("TRUNCATE orders", ["truncate shop.orders"]),
        ("DROP TABLE IF EXISTS `orders`, nothere /* generated by server */", ["drop table shop.orders"]),
        ("DROP DATABASE shop", ["drop table shop.orders"]),
        ("CREATE TABLE IF NOT EXISTS orders (id int)", []),
        ("CREATE TABLE fresh (id bigint PRIMARY KEY, v json)", ["created shop.fresh"]),
        ("CREATE TEMPORARY TABLE tmp (id int)", []),
        ("CREATE INDEX i ON orders (note)", []),
        ("CREATE DEFINER=`root`@`%` TRIGGER t BEFORE INSERT ON orders FOR EACH ROW SET NEW.note = 'x'", []),
        ("GRANT SELECT ON shop.* TO 'u'@'%'", []),
        ("/* comment */ ALTER /*!50100 ONLINE */ TABLE orders DROP COLUMN doc -- trailing", ["drop column shop.orders.doc"]),
        ("OPTIMIZE TABLE orders", []),
        ("SOMETHING NEW orders", ["reread shop.orders"]),
    ],
)
def test_ddl(sql: str, expected: list[str]) -> None:
    assert _ddl(sql) == expected


def test_ddl_already_applied_is_not_reported_twice() -> None:
    have = {SHOP: _schema(id="int(11)", note="varchar(10)", qty="int(11)")}
    assert _ddl("ALTER TABLE orders ADD COLUMN qty int", have) == []


def test_strip_comments_keeps_versioned_bodies() -> None:
    assert strip_comments("/*!40000 ALTER TABLE t DISABLE KEYS */;") == "ALTER TABLE t DISABLE KEYS"


def test_diff_schemas_when_a_statement_is_not_understood() -> None:
    old = _schema(id="int(11)", a="int(11)", b="varchar(5)")
    new = _schema(id="bigint(20)", b="varchar(5)", c="date")
    assert [str(c) for c in diff_schemas(old, new, SHOP)] == [
        "drop column shop.orders.a",
        "alter column shop.orders.id type int32 -> int64",
        "add column shop.orders.c date after b",
    ]


# -- the assembler on MySQL 8 events ---------------------------------------------------------


@dataclass
class Packet:
    log_pos: int


@dataclass
class Ev:
    packet: Packet
    timestamp: int = 1_700_000_000


@dataclass
class GtidEvent(Ev):
    gtid: str = ""


@dataclass
class QueryEvent(Ev):
    query: str = ""
    schema: bytes = b"shop"


@dataclass
class XidEvent(Ev):
    xid: int = 0


@dataclass
class RotateEvent(Ev):
    next_binlog: str = ""
    position: int = 4


@dataclass
class WriteRowsEvent(Ev):
    schema: str = "shop"
    table: str = "orders"
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class UpdateRowsEvent(WriteRowsEvent):
    pass


@dataclass
class DeleteRowsEvent(WriteRowsEvent):
    pass


@dataclass
class HeartbeatLogEvent(Ev):
    pass


# A MySQL 8.0 binlog as pymysqlreplication 1.0 decodes it (GTID mode, binary JSON, FULL metadata):
# connect, one 2-row insert, an update and a delete in one transaction, a DDL, a row in the new
# shape, a transaction on another table, and an idle heartbeat.
def mysql8_events() -> list[Ev]:
    return [
        RotateEvent(Packet(0), timestamp=0, next_binlog="binlog.000007", position=4),
        GtidEvent(Packet(300), gtid=f"{UUID}:11"),
        QueryEvent(Packet(380), query="BEGIN"),
        WriteRowsEvent(Packet(500), rows=[{"values": {"id": 1, "note": "a", "doc": {b"k": [b"v"]}}}, {"values": {"id": 2, "note": None, "doc": None}}]),
        XidEvent(Packet(531)),
        GtidEvent(Packet(610), gtid=f"{UUID}:12"),
        QueryEvent(Packet(690), query="BEGIN"),
        UpdateRowsEvent(Packet(800), rows=[{"before_values": {"id": 1, "note": "a", "doc": {b"k": [b"v"]}}, "after_values": {"id": 1, "note": "b", "doc": {b"k": [b"v"]}}}]),
        DeleteRowsEvent(Packet(880), rows=[{"values": {"id": 2, "note": None, "doc": None}}]),
        XidEvent(Packet(911)),
        GtidEvent(Packet(990), gtid=f"{UUID}:13"),
        QueryEvent(Packet(1100), query="ALTER TABLE orders ADD COLUMN qty bigint unsigned AFTER id"),
        GtidEvent(Packet(1180), gtid=f"{UUID}:14"),
        QueryEvent(Packet(1260), query="BEGIN"),
        WriteRowsEvent(Packet(1360), rows=[{"values": {"id": 3, "qty": 18446744073709551615, "note": "c", "doc": {b"n": 1}}}]),
        XidEvent(Packet(1391)),
        GtidEvent(Packet(1470), gtid=f"{UUID}:15"),
        QueryEvent(Packet(1550), query="BEGIN"),
        WriteRowsEvent(Packet(1650), schema="other", table="logs", rows=[{"values": {"id": 1}}]),
        XidEvent(Packet(1681)),
        HeartbeatLogEvent(Packet(1681)),
    ]


def _assembler(**kw: Any) -> BinlogAssembler:
    recorded: list[Any] = []
    a = BinlogAssembler(
        mariadb=False,
        start=MySQLPosition("binlog.000007", 4, f"{UUID}:1-10"),
        schemas={SHOP: _schema()},
        selector=TableSelection.of(["shop.*"]),
        reread=lambda t: None,
        on_schema_change=lambda pos, schemas: recorded.append((str(pos), {str(t): str(s) for t, s in schemas.items()})),
        **kw,
    )
    a.recorded = recorded  # type: ignore[attr-defined]
    return a


def test_mysql8_stream_gives_whole_transactions_with_gtid_positions() -> None:
    a = _assembler(max_batch_delay=3600)
    batches = [b for e in mysql8_events() for b in a.feed(e)]
    got = [([str(c) for c in b.schema_changes], [(e.op.name, dict(e.before or {}), dict(e.after or {}), e.txid) for e in b.events], str(b.end_position)) for b in batches]
    assert got == [
        (
            ["create table shop.orders (id int32, note string(10), doc json)"],
            [
                ("INSERT", {}, {"id": 1, "note": "a", "doc": JsonText('{"k": ["v"]}')}, f"{UUID}:11"),
                ("INSERT", {}, {"id": 2, "note": None, "doc": None}, f"{UUID}:11"),
            ],
            f"binlog.000007:531 gtid={UUID}:1-11",
        ),
        # a batch with schema changes goes out at once; the next one waits for more rows or time
        (
            [],
            [
                ("UPDATE", {"id": 1, "note": "a", "doc": JsonText('{"k": ["v"]}')}, {"id": 1, "note": "b", "doc": JsonText('{"k": ["v"]}')}, f"{UUID}:12"),
                ("DELETE", {"id": 2, "note": None, "doc": None}, {}, f"{UUID}:12"),
            ],
            f"binlog.000007:911 gtid={UUID}:1-12",
        ),
        (["add column shop.orders.qty decimal(20,0) after id"], [], f"binlog.000007:1100 gtid={UUID}:1-13"),
        # the heartbeat hands out what is complete (the other table's transaction moves the position)
        ([], [("INSERT", {}, {"id": 3, "qty": Decimal(18446744073709551615), "note": "c", "doc": JsonText('{"n": 1}')}, f"{UUID}:14")], f"binlog.000007:1681 gtid={UUID}:1-15"),
    ]
    assert batches[0].events[0].position == MySQLPosition("binlog.000007", 531)
    assert batches[0].events[0].commit_ts == dt.datetime.fromtimestamp(1_700_000_000, dt.UTC)
    assert a.recorded == [(f"binlog.000007:1100 gtid={UUID}:1-13", {"shop.orders": "table shop.orders (primary key: id)\n  id: int32 not null  -- int(11)\n  qty: decimal(20,0)  -- bigint unsigned\n  note: string(10)  -- varchar(10)\n  doc: json  -- json"})]  # type: ignore[attr-defined]
    # idle: nothing new, then an empty batch each tick
    assert [b.is_empty and b.end_position is None for b in a.tick()] == [True]


def test_batches_never_split_a_transaction_and_grow_to_the_row_limit() -> None:
    a = _assembler(max_batch_rows=3, max_batch_delay=3600)
    events: list[Ev] = [RotateEvent(Packet(0), timestamp=0, next_binlog="binlog.000007")]
    pos = 100
    for txn in range(4):
        pos += 100
        events += [GtidEvent(Packet(pos), gtid=f"{UUID}:{11 + txn}"), QueryEvent(Packet(pos + 10), query="BEGIN")]
        events += [WriteRowsEvent(Packet(pos + 20), rows=[{"values": {"id": txn * 10 + k, "note": None, "doc": None}} for k in range(2)])]
        events += [XidEvent(Packet(pos + 30))]
    batches = [b for e in events for b in a.feed(e)]
    # the first batch carries the table's CreateTable and goes out at once
    assert [[e.after["id"] for e in b.events] for b in batches] == [[0, 1], [10, 11, 20, 21]]  # type: ignore[index]
    assert [str(b.end_position) for b in batches] == [f"binlog.000007:230 gtid={UUID}:1-11", f"binlog.000007:430 gtid={UUID}:1-13"]
    assert [[e.after["id"] for e in b.events] for b in a.tick()] == [[30, 31]]  # type: ignore[index]


def test_a_silent_reconnect_is_refused_rather_than_resumed_mid_transaction() -> None:
    a = _assembler()
    a.feed(RotateEvent(Packet(0), timestamp=0, next_binlog="binlog.000007"))
    a.feed(GtidEvent(Packet(300), gtid=f"{UUID}:11"))
    a.feed(QueryEvent(Packet(380), query="BEGIN"))
    with pytest.raises(SourceConnectionError, match="restarting from the last checkpoint"):
        a.feed(RotateEvent(Packet(0), timestamp=0, next_binlog="binlog.000007"))


def test_moving_to_the_next_binlog_file_is_not_a_reconnect() -> None:
    a = _assembler()
    a.feed(RotateEvent(Packet(0), timestamp=0, next_binlog="binlog.000007"))
    a.feed(RotateEvent(Packet(900), next_binlog="binlog.000008", position=4))
    a.feed(RotateEvent(Packet(0), timestamp=0, next_binlog="binlog.000008", position=4))
    assert a.position == MySQLPosition("binlog.000008", 4)
    with pytest.raises(SourceConnectionError):
        a.feed(RotateEvent(Packet(0), timestamp=0, next_binlog="binlog.000008", position=4))


def test_rows_of_an_unknown_table_that_is_gone_need_attention() -> None:
    a = BinlogAssembler(mariadb=False, start=MySQLPosition("binlog.000001", 4), schemas={}, selector=TableSelection.of([]), reread=lambda t: None)
    a.feed(QueryEvent(Packet(10), query="BEGIN"))
    with pytest.raises(NeedsAttentionError, match="copy the tables again with `zetl reset"):
        a.feed(WriteRowsEvent(Packet(20), rows=[{"values": {"id": 1}}]))


def test_file_and_offset_positions_without_gtids_and_real_rotates() -> None:
    a = BinlogAssembler(mariadb=True, start=MySQLPosition("binlog.000001", 4), schemas={SHOP: _schema()}, selector=ALL, reread=lambda t: None, max_batch_delay=0)
    out = []
    for e in [
        RotateEvent(Packet(0), timestamp=0, next_binlog="binlog.000001", position=4),
        QueryEvent(Packet(100), query="BEGIN"),
        WriteRowsEvent(Packet(150), rows=[{"values": {"id": 1, "note": "x", "doc": '{"a": 1}'}}]),
        QueryEvent(Packet(200), query="COMMIT"),
        RotateEvent(Packet(250), next_binlog="binlog.000002", position=4),
        QueryEvent(Packet(300), query="TRUNCATE TABLE orders"),
    ]:
        out += a.feed(e)
    assert [(str(b.end_position), [(e.op.name, e.txid) for e in b.events]) for b in out] == [
        ("binlog.000001:200", [("INSERT", "binlog.000001:200")]),
        ("binlog.000002:300", [("TRUNCATE", "binlog.000002:300")]),
    ]
    assert out[0].events[0].after == {"id": 1, "note": "x", "doc": JsonText('{"a": 1}')}
    assert out[1].events[0].op is Op.TRUNCATE


def test_iam_auth_makes_an_rds_token_and_turns_tls_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from zetl_connectors.mysql.connection import connection_settings

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    settings = connection_settings(MySQLConfig(host="db.example.com", port=3306, user="repl", iam_auth=True, region="eu-west-1"))
    assert settings["password"].startswith("db.example.com:3306/?Action=connect&DBUser=repl")
    assert "X-Amz-Signature=" in settings["password"]
    import ssl

    ctx = settings["ssl"]
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    plain = connection_settings(MySQLConfig(password="pw"))
    assert "ssl" not in plain and plain["password"] == "pw"


def test_event_builder_makes_ordinary_change_events() -> None:
    import dataclasses
    import pickle

    from zetl_connectors.mysql.stream import event_builder

    from zetl.events import ChangeEvent

    build = event_builder()
    assert build is not ChangeEvent  # the fast path is in use for the current ChangeEvent
    table, at = TableId("shop", "orders"), dt.datetime(2024, 1, 2, tzinfo=dt.UTC)
    position = MySQLPosition("binlog.000001", 4, "0-1-5")
    for op, before, after in ((Op.INSERT, None, {"id": 1}), (Op.UPDATE, {"id": 1}, {"id": 2}), (Op.DELETE, {"id": 2}, None), (Op.TRUNCATE, None, None)):
        fast = build(table, op, before, after, position, at, "0-1-5")
        slow = ChangeEvent(table, op, before, after, position, at, "0-1-5")
        assert type(fast) is ChangeEvent
        assert fast == slow and repr(fast) == repr(slow) and str(fast) == str(slow)
        assert dataclasses.replace(fast, txid="x") == dataclasses.replace(slow, txid="x")
        assert pickle.loads(pickle.dumps(fast)) == slow
        with pytest.raises(dataclasses.FrozenInstanceError):
            fast.op = Op.READ  # type: ignore[misc]


def _reader_threads() -> list[Any]:
    import threading

    return [t for t in threading.enumerate() if t.name == "zetl-binlog-reader"]


def test_prefetch_buffer_gives_the_socket_bytes_in_order_then_the_end() -> None:
    import socket
    import threading
    import time

    from zetl_connectors.mysql.prefetch import PrefetchBuffer

    ours, peer = socket.socketpair()
    try:
        rfile = ours.makefile("rb")
        buffer = PrefetchBuffer(rfile.read1, close=rfile.close, block=7, max_buffered=20)
        buffer.start()
        payload = bytes(range(256)) * 40  # 10,240 bytes: many blocks, more than the bound
        sender = threading.Thread(target=lambda: (peer.sendall(payload), peer.shutdown(socket.SHUT_WR)))
        sender.start()
        got = [buffer.read(4)]
        deadline = time.monotonic() + 30
        while buffer._buffered < 20:  # the thread receives ahead up to the bound...
            assert time.monotonic() < deadline, "the reader thread received nothing"
            time.sleep(0.01)
        assert buffer._buffered <= 20 + 7  # ...and no further while nobody reads
        got += [buffer.read(n) for n in (1, 3000, 0, 7000)]
        assert b"".join(got) == payload[:10005] and [len(g) for g in got] == [4, 1, 3000, 0, 7000]
        assert buffer.read(1000) == payload[10005:]  # the end of the stream: a short read
        assert buffer.read(4) == b""
        sender.join(10)
        buffer.close()
        assert not buffer.running and rfile.closed
    finally:
        ours.close()
        peer.close()


def test_prefetch_buffer_raises_the_receive_error_after_the_bytes_before_it() -> None:
    import socket

    from zetl_connectors.mysql.prefetch import PrefetchBuffer

    ours, peer = socket.socketpair()
    try:
        ours.settimeout(0.2)  # nothing follows the first bytes: the receive times out
        rfile = ours.makefile("rb")
        buffer = PrefetchBuffer(rfile.read1, close=rfile.close)
        peer.sendall(b"abcdef")
        buffer.start()
        assert buffer.read(6) == b"abcdef"
        with pytest.raises(OSError):
            buffer.read(1)
        buffer.close()
        assert not buffer.running
    finally:
        ours.close()
        peer.close()


def test_prefetch_thread_ends_when_the_socket_is_shut_down() -> None:
    import socket

    from zetl_connectors.mysql.prefetch import PrefetchBuffer

    ours, peer = socket.socketpair()
    try:
        rfile = ours.makefile("rb")
        buffer = PrefetchBuffer(rfile.read1, close=rfile.close)
        buffer.start()
        assert buffer.running and _reader_threads()
        ours.shutdown(socket.SHUT_RDWR)  # what the connection does when it closes
        buffer.close()
        assert not buffer.running and buffer.read(1) == b""
    finally:
        ours.close()
        peer.close()


def test_prefetch_from_a_closed_file_is_the_end_of_the_stream() -> None:
    import socket

    from zetl_connectors.mysql.prefetch import PrefetchBuffer

    ours, peer = socket.socketpair()
    try:
        rfile = ours.makefile("rb")
        rfile.close()
        buffer = PrefetchBuffer(rfile.read1)
        buffer.start()
        assert buffer.read(4) == b""  # a short read: PyMySQL reports the connection lost
        buffer.close()
        assert not buffer.running
    finally:
        ours.close()
        peer.close()
