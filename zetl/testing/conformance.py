"""Conformance suites every source and sink plugin runs (``pytest`` base classes).

A plugin's test module subclasses a suite and provides two fixtures::

    class TestMySink(SinkConformance):
        @pytest.fixture
        def sink_factory(self, tmp_path):
            return lambda: MySink(MySinkConfig(path=str(tmp_path / "target")))

        @pytest.fixture
        def read_rows(self, tmp_path):
            return lambda table: read_my_target(tmp_path / "target", table)

``sink_factory`` returns a new, unopened sink on the same target each call (a second call is "the
same sink after a restart"); ``read_rows`` reads a table back independently of the sink, as a list
of dicts keyed by source column names.

    class TestMySource(SourceConformance):
        @pytest.fixture
        def source_factory(self, ...): return lambda: MySource(MySourceConfig(...), context)
        @pytest.fixture
        def source_driver(self, ...): return MyDriver(...)   # see SourceDriver

What the suites check: writes equal the source's state; re-writing a batch after a restart is
idempotent; the position reported durable survives a restart; schema changes the sink declares
work; unchanged markers keep values; snapshot then stream in commit order; resuming from any
batch boundary gives no gap and no duplicate; idle sources still yield; close is clean.
"""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from typing import Any, Callable, Protocol

import pytest

from zetl.events import UNCHANGED, Batch, ChangeEvent, Op, Position, RowChunk, SequencePosition, TableId
from zetl.schema.changes import AddColumn, AlterColumnType, CreateTable, DropTable, MakeColumnNullable, SchemaChange
from zetl.schema.planner import can_widen
from zetl.schema.types import Field, Schema, T
from zetl.sink import Sink
from zetl.source import Source

__all__ = ["SinkConformance", "SourceConformance", "SourceDriver", "collect_events"]

CONFORMANCE_TABLE = TableId("zetl_conformance", "items")


def _schema() -> Schema:
    return Schema.of(
        CONFORMANCE_TABLE,
        [Field("id", T.int64, nullable=False), Field("name", T.string()), Field("amount", T.decimal(12, 2)), Field("qty", T.int32)],
        ["id"],
    )


def _row(i: int, name: str | None = None, amount: str = "1.50", qty: int = 1) -> dict[str, Any]:
    return {"id": i, "name": name or f"n{i}", "amount": Decimal(amount), "qty": qty}


def _pos(n: int) -> SequencePosition:
    return SequencePosition("stream", n)


def _normalise(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> dict[Any, dict[str, Any]]:
    out = {}
    for r in rows:
        norm = {c: r.get(c) for c in columns}
        if isinstance(norm.get("amount"), (float, str)):
            norm["amount"] = Decimal(str(norm["amount"]))
        out[int(r["id"])] = norm
    return out


class SinkConformance:
    """Tests every sink must pass. Subclasses provide ``sink_factory`` and ``read_rows``."""

    @pytest.fixture
    def sink_factory(self) -> Callable[[], Sink]:
        pytest.fail("a SinkConformance subclass must define the sink_factory fixture")

    @pytest.fixture
    def read_rows(self) -> Callable[[TableId], list[dict[str, Any]]]:
        pytest.fail("a SinkConformance subclass must define the read_rows fixture")

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _write_durably(sink: Sink, batch: Batch) -> Position | None:
        durable = sink.write(batch)
        flushed = sink.flush(force=True)
        return flushed or durable

    def _create(self, sink: Sink) -> Schema:
        schema = _schema()
        sink.apply(CreateTable(schema.table, schema))
        return schema

    def _rows(self, read_rows: Callable[[TableId], list[dict[str, Any]]], columns: tuple[str, ...] = ("id", "name", "amount", "qty")) -> dict[Any, dict[str, Any]]:
        return _normalise(read_rows(CONFORMANCE_TABLE), columns)

    # -- tests --------------------------------------------------------------------------------
    def test_create_table_reports_schema(self, sink_factory: Callable[[], Sink]) -> None:
        with sink_factory() as sink:
            schema = self._create(sink)
            got = sink.current_schema(schema.table)
            assert got is not None, "current_schema must return the table just created"
            assert list(got.names) == list(schema.names)
            assert tuple(got.primary_key) == schema.primary_key
            for f in schema.fields:
                assert can_widen(f.type, got.field(f.name).type), f"column {f.name}: created as {f.type}, reported as {got.field(f.name).type}"
            sink.apply(CreateTable(schema.table, schema))  # idempotent

    def test_insert_update_delete(self, sink_factory: Callable[[], Sink], read_rows: Callable[[TableId], list[dict[str, Any]]]) -> None:
        t = CONFORMANCE_TABLE
        with sink_factory() as sink:
            self._create(sink)
            self._write_durably(sink, Batch(events=tuple(ChangeEvent.insert(t, _row(i), _pos(i)) for i in range(1, 6)), end_position=_pos(5)))
            self._write_durably(
                sink,
                Batch(
                    events=(
                        ChangeEvent.update(t, _row(2), _row(2, "two", "2.25", 7), _pos(6)),
                        ChangeEvent.delete(t, {"id": 3}, _pos(7)),
                        ChangeEvent.insert(t, _row(6), _pos(8)),
                        ChangeEvent.update(t, _row(6), _row(6, "six-b"), _pos(9)),
                        ChangeEvent.delete(t, {"id": 5}, _pos(10)),
                        ChangeEvent.insert(t, _row(5, "five-again"), _pos(11)),
                    ),
                    end_position=_pos(11),
                ),
            )
        expected = {i: _row(i) for i in (1, 4)}
        expected[2] = _row(2, "two", "2.25", 7)
        expected[6] = _row(6, "six-b")
        expected[5] = _row(5, "five-again")
        assert self._rows(read_rows) == expected

    def test_snapshot_chunk_rows(self, sink_factory: Callable[[], Sink], read_rows: Callable[[TableId], list[dict[str, Any]]]) -> None:
        import pyarrow as pa

        from zetl.arrow import arrow_schema

        schema = _schema()
        rows = [_row(i) for i in range(1, 201)]
        table = pa.Table.from_pylist(rows, schema=arrow_schema(schema))
        with sink_factory() as sink:
            self._create(sink)
            chunk = RowChunk(schema.table, Op.READ, table, SequencePosition("snapshot", 200))
            self._write_durably(sink, Batch(chunks=(chunk,), end_position=SequencePosition("snapshot", 200)))
        assert self._rows(read_rows) == {r["id"]: r for r in rows}

    def test_rewrite_after_restart_is_idempotent(self, sink_factory: Callable[[], Sink], read_rows: Callable[[TableId], list[dict[str, Any]]]) -> None:
        t = CONFORMANCE_TABLE
        first = Batch(events=tuple(ChangeEvent.insert(t, _row(i), _pos(i)) for i in range(1, 4)), end_position=_pos(3))
        second = Batch(
            events=(ChangeEvent.update(t, _row(1), _row(1, "one-b"), _pos(4)), ChangeEvent.delete(t, {"id": 2}, _pos(5))),
            end_position=_pos(5),
        )
        with sink_factory() as sink:
            self._create(sink)
            self._write_durably(sink, first)
            self._write_durably(sink, second)
        # A crash before the checkpoint was saved: the runner delivers both batches again.
        with sink_factory() as sink:
            self._write_durably(sink, first)
            self._write_durably(sink, second)
        assert self._rows(read_rows) == {1: _row(1, "one-b"), 3: _row(3)}

    def test_durable_position_survives_restart(self, sink_factory: Callable[[], Sink], read_rows: Callable[[TableId], list[dict[str, Any]]]) -> None:
        t = CONFORMANCE_TABLE
        with sink_factory() as sink:
            self._create(sink)
            batch = Batch(events=(ChangeEvent.insert(t, _row(1), _pos(1)),), end_position=_pos(1))
            durable = sink.write(batch)
            assert durable is None or durable <= _pos(1), "write() must not report a position beyond the batch"
            durable = sink.flush(force=True) or durable
            assert durable == _pos(1), "after flush(force=True) everything written must be durable"
        # The runner saves `durable` as the checkpoint: the data must be there after a restart.
        assert 1 in self._rows(read_rows)
        with sink_factory() as sink:
            if sink.capabilities.stores_checkpoint:
                assert sink.stored_position() == _pos(1)
            else:
                assert sink.stored_position() is None

    def test_truncate(self, sink_factory: Callable[[], Sink], read_rows: Callable[[TableId], list[dict[str, Any]]]) -> None:
        t = CONFORMANCE_TABLE
        with sink_factory() as sink:
            self._create(sink)
            self._write_durably(sink, Batch(events=tuple(ChangeEvent.insert(t, _row(i), _pos(i)) for i in range(1, 4)), end_position=_pos(3)))
            self._write_durably(sink, Batch(events=(ChangeEvent.truncate(t, _pos(4)), ChangeEvent.insert(t, _row(9), _pos(5))), end_position=_pos(5)))
        assert self._rows(read_rows) == {9: _row(9)}

    def test_unchanged_value_is_kept(self, sink_factory: Callable[[], Sink], read_rows: Callable[[TableId], list[dict[str, Any]]]) -> None:
        t = CONFORMANCE_TABLE
        with sink_factory() as sink:
            self._create(sink)
            self._write_durably(sink, Batch(events=(ChangeEvent.insert(t, _row(1, "big value"), _pos(1)),), end_position=_pos(1)))
            after = {"id": 1, "name": UNCHANGED, "amount": Decimal("9.99"), "qty": 2}
            self._write_durably(sink, Batch(events=(ChangeEvent.update(t, {"id": 1}, after, _pos(2)),), end_position=_pos(2)))
        assert self._rows(read_rows) == {1: {"id": 1, "name": "big value", "amount": Decimal("9.99"), "qty": 2}}

    def test_declared_schema_changes_apply(self, sink_factory: Callable[[], Sink], read_rows: Callable[[TableId], list[dict[str, Any]]]) -> None:
        t = CONFORMANCE_TABLE
        with sink_factory() as sink:
            self._create(sink)
            self._write_durably(sink, Batch(events=(ChangeEvent.insert(t, _row(1), _pos(1)),), end_position=_pos(1)))
            changes: list[SchemaChange] = [
                AddColumn(t, Field("note", T.string()), "qty"),
                AlterColumnType(t, "qty", T.int64, T.int32),
                MakeColumnNullable(t, "name"),
            ]
            applied = []
            for change in changes:
                if change.kind in sink.capabilities.schema_changes and sink.can_apply(change):
                    sink.apply(change)
                    sink.apply(change)  # idempotent
                    applied.append(change)
            got = sink.current_schema(t)
            assert got is not None
            row = _row(2, qty=3)
            columns = ("id", "name", "amount", "qty")
            for change in applied:
                if isinstance(change, AddColumn):
                    assert "note" in got, "an applied AddColumn must show in current_schema"
                    row["note"] = "hello"
                    columns += ("note",)
                if isinstance(change, AlterColumnType):
                    assert can_widen(T.int64, got.field("qty").type), f"qty should be int64 now, is {got.field('qty').type}"
                    row["qty"] = 2**40
            self._write_durably(sink, Batch(events=(ChangeEvent.insert(t, row, _pos(2)),), end_position=_pos(2)))
        rows = self._rows(read_rows, columns)
        assert rows[2] == {c: row.get(c) for c in columns}
        assert rows[1]["id"] == 1 and (("note" not in columns) or rows[1]["note"] is None)

    def test_managed_tables_and_drop_table(self, sink_factory: Callable[[], Sink]) -> None:
        """``managed_tables`` (what ``zetl drift`` lists as target-only) names the tables this
        integration wrote, or says it cannot tell (None); a sink declaring ``drop.table`` drops
        idempotently and stops listing the table."""
        t = CONFORMANCE_TABLE
        with sink_factory() as sink:
            self._create(sink)
            self._write_durably(sink, Batch(events=(ChangeEvent.insert(t, _row(1), _pos(1)),), end_position=_pos(1)))
            managed = sink.managed_tables()
            if managed is not None:
                assert t in managed, f"managed_tables() must list {t} after writing to it; got {managed}"
            drop = DropTable(t)
            if drop.kind in sink.capabilities.schema_changes and sink.can_apply(drop):
                sink.apply(drop)
                sink.apply(drop)  # idempotent: a drop replayed after a crash
                assert sink.current_schema(t) is None, "a dropped table has no schema"
                after = sink.managed_tables()
                assert after is None or t not in after, f"managed_tables() still lists the dropped {t}"

    def test_close_is_idempotent(self, sink_factory: Callable[[], Sink]) -> None:
        sink = sink_factory()
        sink.close()  # closing a sink that was never opened is harmless
        sink = sink_factory()
        sink.open()
        sink.close()
        sink.close()


class SourceDriver(Protocol):
    """Makes changes in the real source database for ``SourceConformance``.

    ``table`` is the conformance table; ``create`` makes it with columns ``id`` (integer primary
    key), ``name`` (text) and ``amount`` (decimal(12,2)); each other method is one committed
    transaction.
    """

    table: TableId

    def create(self) -> None: ...

    def insert(self, rows: list[dict[str, Any]]) -> None: ...

    def update(self, id: int, values: dict[str, Any]) -> None: ...

    def delete(self, id: int) -> None: ...


def collect_events(
    source: Source,
    start: Position | None,
    *,
    until: Callable[[list[ChangeEvent]], bool],
    timeout: float = 30.0,
    on_batch: Callable[[Batch, list[ChangeEvent]], None] | None = None,
) -> tuple[list[ChangeEvent], list[Batch]]:
    """Read from ``source`` until ``until(events)`` holds; returns the events and batches read.

    Raises AssertionError when ``timeout`` passes first (with what was read so far).
    """
    events: list[ChangeEvent] = []
    batches: list[Batch] = []
    deadline = time.monotonic() + timeout
    for batch in source.read(start):
        batches.append(batch)
        events.extend(batch.iter_events())
        if on_batch is not None:
            on_batch(batch, events)
        if until(events):
            return events, batches
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"timed out after {timeout}s; read {len(events)} events: {[str(e) for e in events[-10:]]}")


def _summary(events: list[ChangeEvent]) -> list[tuple[str, int]]:
    out = []
    for e in events:
        row = e.row or {}
        out.append((e.op.name, int(row["id"])))
    return out


class SourceConformance:
    """Tests every source must pass. Subclasses provide ``source_factory`` and ``source_driver``."""

    @pytest.fixture
    def source_factory(self) -> Callable[[], Source]:
        pytest.fail("a SourceConformance subclass must define the source_factory fixture")

    @pytest.fixture
    def source_driver(self) -> SourceDriver:
        pytest.fail("a SourceConformance subclass must define the source_driver fixture")

    def _table_events(self, events: list[ChangeEvent], table: TableId) -> list[ChangeEvent]:
        return [e for e in events if e.table == table and e.op is not Op.TRUNCATE]

    def test_discover_reports_the_table(self, source_factory: Callable[[], Source], source_driver: SourceDriver) -> None:
        source_driver.create()
        with source_factory() as source:
            schemas = {s.table: s for s in source.discover()}
        assert source_driver.table in schemas, f"discover() returned {list(schemas)}"
        schema = schemas[source_driver.table]
        assert schema.primary_key == ("id",)
        assert {"id", "name", "amount"} <= set(schema.names)

    def test_snapshot_then_stream_then_resume(self, source_factory: Callable[[], Source], source_driver: SourceDriver) -> None:
        t = source_driver.table
        source_driver.create()
        source_driver.insert([{"id": i, "name": f"n{i}", "amount": Decimal("1.50")} for i in (1, 2, 3)])
        changed = threading.Event()

        def make_changes(batch: Batch, events: list[ChangeEvent]) -> None:
            mine = self._table_events(events, t)
            if not changed.is_set() and len([e for e in mine if e.op is Op.READ]) >= 3:
                changed.set()
                source_driver.insert([{"id": 4, "name": "n4", "amount": Decimal("4.00")}])
                source_driver.update(1, {"name": "one"})
                source_driver.delete(2)
                source_driver.insert([{"id": 5, "name": "n5", "amount": Decimal("5.00")}, {"id": 6, "name": "n6", "amount": Decimal("6.00")}])

        with source_factory() as source:
            events, batches = collect_events(source, None, until=lambda ev: len([e for e in self._table_events(ev, t) if e.op is not Op.READ]) >= 5, on_batch=make_changes)
        mine = self._table_events(events, t)
        creates = [c for b in batches for c in b.schema_changes if isinstance(c, CreateTable) and c.table == t]
        assert creates, "the first batch about a table must carry CreateTable"
        first_batch_with_rows = next(i for i, b in enumerate(batches) if any(e.table == t for e in b.iter_events()))
        first_create = next(i for i, b in enumerate(batches) if any(isinstance(c, CreateTable) and c.table == t for c in b.schema_changes))
        assert first_create <= first_batch_with_rows
        assert sorted(_summary([e for e in mine if e.op is Op.READ])) == [("READ", 1), ("READ", 2), ("READ", 3)]
        stream = [e for e in mine if e.op is not Op.READ]
        assert _summary(stream) == [("INSERT", 4), ("UPDATE", 1), ("DELETE", 2), ("INSERT", 5), ("INSERT", 6)]
        assert stream[1].after is not None and stream[1].after["name"] == "one"
        ends = [b.end_position for b in batches if b.end_position is not None]
        assert all(a <= b for a, b in zip(ends, ends[1:])), "end positions must never go backwards"

        # Resume from the batch that delivered INSERT 4: exactly what came after it, then new changes.
        boundary = next(i for i, b in enumerate(batches) if any(e.table == t and e.op is Op.INSERT and (e.row or {}).get("id") == 4 for e in b.events))
        resume_at = batches[boundary].end_position
        assert resume_at is not None
        expected_after = _summary([e for b in batches[boundary + 1 :] for e in self._table_events(list(b.iter_events()), t)])
        source_driver.insert([{"id": 7, "name": "n7", "amount": Decimal("7.00")}])
        with source_factory() as source:
            resumed, _ = collect_events(source, resume_at, until=lambda ev: any((e.row or {}).get("id") == 7 for e in self._table_events(ev, t)))
        assert _summary(self._table_events(resumed, t)) == expected_after + [("INSERT", 7)], "no gap and no duplicate after a resume"

    def test_idle_source_keeps_yielding(self, source_factory: Callable[[], Source], source_driver: SourceDriver) -> None:
        source_driver.create()
        with source_factory() as source:
            gaps: list[float] = []
            last = time.monotonic()
            started = time.monotonic()
            for _ in source.read(None):
                now = time.monotonic()
                gaps.append(now - last)
                last = now
                if now - started > 5:
                    break
        # the contract is about a second; the margin absorbs a busy machine's scheduling delays
        assert len(gaps) >= 3 and max(gaps[1:]) <= 3.5, f"an idle source must yield at least every second or so; gaps: {gaps}"

    def test_close_stops_reading(self, source_factory: Callable[[], Source], source_driver: SourceDriver) -> None:
        source_driver.create()
        source = source_factory()
        source.open()
        finished = threading.Event()

        def reader() -> None:
            try:
                for _ in source.read(None):
                    pass
            except Exception:
                pass
            finally:
                finished.set()

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        time.sleep(1.5)
        source.close()
        assert finished.wait(10), "read() must end (or raise) soon after close()"
        source.close()

