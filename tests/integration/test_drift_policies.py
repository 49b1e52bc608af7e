"""Schema evolution end to end through the runner: every policy mode, filters, masks and
flattening, then `zetl drift` on the result (in-process sources and sinks; no server needed)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Iterator

import pyarrow as pa
import pytest

from zetl.arrow import arrow_schema
from zetl.config.load import Integration
from zetl.config.model import IntegrationConfig
from zetl.drift import drift_report
from zetl.events import Batch, ChangeEvent, Op, Position, RowChunk, SequencePosition, TableId
from zetl.filters.apply import mask_hash
from zetl.pipeline import SchemaHistory
from zetl.runner import IntegrationRunner
from zetl.schema.planner import apply_change
from zetl.schema.changes import AddColumn, AlterColumnType, CreateTable, DropColumn, DropTable, RenameColumn, SchemaChange
from zetl.schema.types import Field, Schema, T
from zetl.sink import Sink, SinkCapabilities, SinkConfig
from zetl.source import Source, SourceConfig
from zetl.statedb import StateDB
from zetl.status import State
from zetl.testing.plugins import MemorySink

TABLE = TableId("shop", "items")


# -- a scripted source and a shared in-process sink --------------------------------------------
class ScriptConfig(SourceConfig):
    script: str
    """Key of the script in ScriptSource.scripts."""


class ScriptSource(Source[ScriptConfig]):
    """Yields the batches of a script given in Python. Like a database, discover() gives the
    schemas as they are now: the script's starting schemas with the changes read so far."""

    name = "script"
    config_class = ScriptConfig
    scripts: ClassVar[dict[str, tuple[list[Schema], list[Batch]]]] = {}
    current: ClassVar[dict[str, dict[TableId, Schema | None]]] = {}

    def discover(self) -> list[Schema]:
        now = self.current.setdefault(self.config.script, {s.table: s for s in self.scripts[self.config.script][0]})
        return [s for s in now.values() if s is not None]

    def read(self, start: Position | None) -> Iterator[Batch]:
        now = self.current.setdefault(self.config.script, {s.table: s for s in self.scripts[self.config.script][0]})
        for batch in self.scripts[self.config.script][1]:
            if start is not None and batch.end_position is not None and batch.end_position <= start:
                continue
            for change in batch.schema_changes:
                now[change.table] = apply_change(now.get(change.table), change)
            yield batch


class SharedConfig(SinkConfig):
    store: str
    """Name of the shared store (same name, same tables)."""
    cannot: list[str] = []
    """Change kinds this sink refuses."""


class SharedSink(MemorySink):
    """A memory sink whose tables outlive the instance (shared by store name), so that a
    restarted run and `zetl drift` see what an earlier run wrote."""

    name = "shared"
    config_class = SharedConfig  # type: ignore[assignment]
    stores: ClassVar[dict[str, dict[TableId, Any]]] = {}

    def __init__(self, config: SharedConfig, context: Any = None) -> None:
        super().__init__(None, context)
        self.config = config  # type: ignore[assignment]
        self.tables = SharedSink.stores.setdefault(config.store, {})

    def can_apply(self, change: SchemaChange) -> bool:
        return change.kind not in self.config.cannot  # type: ignore[attr-defined]


SharedSink.capabilities = SinkCapabilities(schema_changes=MemorySink.capabilities.schema_changes, nested_types=True)


def make_integration(tmp_path: Path, name: str, script: str, store: str, cannot: list[str] = [], **sections: Any) -> Integration:
    config = IntegrationConfig.model_validate(
        {
            "name": name,
            "source": {"type": "script"},
            "sink": {"type": "shared"},
            "checkpoint": {"path": str(tmp_path / "state.db")},
            "retry": {"max_attempts": 1},
            **sections,
        }
    )
    return Integration(config, tmp_path / f"{name}.yaml", ScriptSource, ScriptConfig(script=script), SharedSink, SharedConfig(store=store, cannot=cannot))


def pos(n: int) -> SequencePosition:
    return SequencePosition("stream", n)


# -- every policy mode ---------------------------------------------------------------------------
BEFORE = Schema.of(
    TABLE,
    [Field("id", T.int64), Field("name", T.string(), nullable=False), Field("price", T.int64), Field("old", T.string())],
    ["id"],
)
AFTER = Schema.of(TABLE, [Field("id", T.int64), Field("full_name", T.string()), Field("price", T.string()), Field("extra", T.int32)], ["id"])
CHANGES: tuple[SchemaChange, ...] = (
    RenameColumn(TABLE, "name", "full_name"),
    DropColumn(TABLE, "old"),
    AlterColumnType(TABLE, "price", T.string(), T.int64),
    AddColumn(TABLE, Field("extra", T.int32), "price"),
)


def evolution_script(key: str) -> None:
    ScriptSource.scripts[key] = (
        [BEFORE],
        [
            Batch(schema_changes=(CreateTable(TABLE, BEFORE),), end_position=pos(1)),
            Batch(events=(ChangeEvent.insert(TABLE, {"id": 1, "name": "ann", "price": 10, "old": "x"}, pos(2)),), end_position=pos(2)),
            Batch(
                schema_changes=CHANGES,
                events=(
                    ChangeEvent.insert(TABLE, {"id": 2, "full_name": "bob", "price": "n/a", "extra": 7}, pos(3)),
                    ChangeEvent.update(TABLE, None, {"id": 1, "full_name": "ann b", "price": "12", "extra": None}, pos(3)),
                ),
                end_position=pos(3),
            ),
        ],
    )


EXPECTED: dict[str, tuple[State, tuple[str, ...] | None, dict[int, dict[str, Any]] | None]] = {
    "lenient": (
        State.STOPPED,
        ("id", "full_name", "name", "price", "extra", "price__string", "old"),
        {  # name and old are kept and null from the change on; price's new values go to price__string
            1: {"id": 1, "full_name": "ann b", "name": None, "price": None, "extra": None, "price__string": "12", "old": None},
            2: {"id": 2, "full_name": "bob", "name": None, "price": None, "extra": 7, "price__string": "n/a", "old": None},
        },
    ),
    "evolve": (
        State.STOPPED,
        ("id", "full_name", "price", "extra"),
        {1: {"id": 1, "full_name": "ann b", "price": "12", "extra": None}, 2: {"id": 2, "full_name": "bob", "price": "n/a", "extra": 7}},
    ),
    "try_evolve": (  # this sink refuses rename and drop: the old columns are kept
        State.STOPPED,
        ("id", "full_name", "name", "price", "extra", "old"),
        {
            1: {"id": 1, "full_name": "ann b", "name": None, "price": "12", "extra": None, "old": None},
            2: {"id": 2, "full_name": "bob", "name": None, "price": "n/a", "extra": 7, "old": None},
        },
    ),
    "ignore": (
        State.STOPPED,
        ("id", "name", "price", "old"),
        None,  # name is NOT NULL in the untouched target: checked separately below
    ),
    "fail": (State.FAILED, ("id", "name", "price", "old"), {1: {"id": 1, "name": "ann", "price": 10, "old": "x"}}),
}


@pytest.mark.parametrize("behavior", list(EXPECTED))
def test_every_policy_mode(tmp_path: Path, behavior: str) -> None:
    evolution_script(f"evolve-{behavior}")
    cannot = ["rename.column", "drop.column"] if behavior == "try_evolve" else []
    it = make_integration(tmp_path, f"p-{behavior}", f"evolve-{behavior}", f"store-{behavior}", cannot, schema_evolution={"behavior": behavior})
    runner = IntegrationRunner(it)
    state, names, rows = EXPECTED[behavior]
    assert runner.run() is state, runner.status.last_error
    store = SharedSink.stores[f"store-{behavior}"][TABLE]
    assert store.schema.names == names
    if rows is not None:
        assert {k[0]: v for k, v in store.rows.items()} == rows, {k[0]: v for k, v in store.rows.items()}
    history = SchemaHistory(StateDB(tmp_path / "state.db"), it.name).entries()
    changes = {e["change"]: e["decision"] for e in history}
    if behavior == "fail":
        assert "policy 'fail' refuses" in (runner.status.last_error or "") and "shop.items" in (runner.status.last_error or "")
        assert changes["rename column shop.items.name to full_name"] == "fail"
    if behavior == "ignore":
        assert set(changes.values()) == {"apply", "skip"}  # create table applied; every change skipped
        # price changed to an incompatible type and is not evolved: its new values are not written.
        assert {k[0]: v["price"] for k, v in store.rows.items()} == {1: None, 2: None}
    report = drift_report(it)
    if behavior in ("lenient", "evolve", "try_evolve"):
        # After the daemon dealt with the changes, the drift report agrees: nothing left to do.
        assert report.exit_code == 0, report.to_json()
        if behavior == "lenient":
            assert report.to_json()["tables"][0]["routed"] == {"price": "price__string"}
    elif behavior == "ignore":
        assert report.exit_code == 2 and report.tables[0].status() == "rejected"
    else:
        assert report.exit_code == 2 and report.to_json()["status"] == "rejected"


# -- filters, masks and flattening ---------------------------------------------------------------
ORDERS = TableId("shop", "orders")
ORDERS_SCHEMA = Schema.of(
    ORDERS,
    [
        Field("id", T.int64),
        Field("email", T.string()),
        Field("status", T.string()),
        Field("amount", T.decimal(12, 2)),
        Field("notes", T.string()),
        Field("doc", T.json),
    ],
    ["id"],
)


def orders_script(key: str) -> None:
    snapshot = [
        {"id": 1, "email": "a@x.io", "status": "open", "amount": Decimal("150.00"), "notes": "n1", "doc": '{"a": 1, "b": "x"}'},
        {"id": 2, "email": "b@x.io", "status": "deleted", "amount": Decimal("500.00"), "notes": "n2", "doc": '{"a": 2}'},
        {"id": 3, "email": "c@x.io", "status": "open", "amount": Decimal("5.00"), "notes": "n3", "doc": None},
    ]
    chunk = RowChunk(ORDERS, Op.READ, pa.Table.from_pylist(snapshot, schema=arrow_schema(ORDERS_SCHEMA)), pos(1))
    row = lambda i, status, amount, doc: {"id": i, "email": f"{i}@x.io", "status": status, "amount": Decimal(amount), "notes": "-", "doc": doc}  # noqa: E731
    ScriptSource.scripts[key] = (
        [ORDERS_SCHEMA],
        [
            Batch(schema_changes=(CreateTable(ORDERS, ORDERS_SCHEMA),), chunks=(chunk,), end_position=pos(1)),
            Batch(
                events=(
                    ChangeEvent.insert(ORDERS, row(4, "open", "100", {"a": 3, "c": True}), pos(2)),  # new key c
                    ChangeEvent.insert(ORDERS, row(5, "open", "99.99", {"a": 4}), pos(2)),  # filtered out
                    # moves out of the filter -> delete; into the filter -> insert
                    ChangeEvent.update(ORDERS, row(1, "open", "150", {"a": 1}), row(1, "deleted", "150", {"a": 1}), pos(2)),
                    ChangeEvent.update(ORDERS, row(3, "open", "5", None), row(3, "open", "300", {"a": 7}), pos(2)),
                    # stays out: dropped; stays in: update
                    ChangeEvent.update(ORDERS, row(2, "deleted", "500", {}), row(2, "deleted", "600", {}), pos(2)),
                    ChangeEvent.update(ORDERS, row(4, "open", "100", {"a": 3}), row(4, "open", "101", {"a": 3, "c": False}), pos(2)),
                    ChangeEvent.delete(ORDERS, row(5, "open", "99.99", None), pos(2)),
                ),
                end_position=pos(2),
            ),
        ],
    )


def test_filters_masks_and_flattening_end_to_end(tmp_path: Path) -> None:
    orders_script("orders")
    sections = {
        "filters": {
            "salt": "pepper",
            "tables": {"shop.orders": {"columns": {"exclude": ["notes"], "mask": {"email": "hash"}}, "rows": "status != 'deleted' and amount >= 100"}},
        },
        "flatten": {"unnest": "top_level"},
    }
    it = make_integration(tmp_path, "orders", "orders", "orders", **sections)
    runner = IntegrationRunner(it)
    assert runner.run() is State.STOPPED, runner.status.last_error
    store = SharedSink.stores["orders"][ORDERS]
    assert store.schema.names == ("id", "email", "status", "amount", "doc", "doc.a", "doc.b", "doc.c")
    assert str(store.schema.field("email").type) == "string(64)"
    assert [str(store.schema.field(n).type) for n in ("doc.a", "doc.b", "doc.c")] == ["int64", "string", "boolean"]
    rows = {k[0]: v for k, v in store.rows.items()}
    assert sorted(rows) == [3, 4]  # 1 moved out, 2 and 5 never in
    assert rows[3]["amount"] == Decimal("300") and rows[3]["doc.a"] == 7 and rows[3]["doc"] is None
    assert rows[4]["doc.c"] is False and rows[4]["email"] == mask_hash(b"pepper", "4@x.io")
    assert "notes" not in store.schema
    history = SchemaHistory(StateDB(tmp_path / "state.db"), "orders").entries()
    assert any(e["change"].startswith("add column shop.orders.doc.c boolean") and e["decision"] == "apply" for e in history)
    report = drift_report(it, with_history=True)
    assert report.exit_code == 0, report.to_json()
    assert report.history and len(report.history) == len(history)


def test_excluding_a_primary_key_column_is_a_clear_error(tmp_path: Path) -> None:
    orders_script("orders-pk")
    it = make_integration(tmp_path, "pk", "orders-pk", "pk", filters={"tables": {"shop.*": {"columns": {"exclude": ["id"]}}}})
    runner = IntegrationRunner(it)
    assert runner.run() is State.FAILED
    assert "'id' is part of the primary key of shop.orders and cannot be excluded" in (runner.status.last_error or "")


@pytest.mark.parametrize("exclude, rows_left", [([], 0), (["truncate.table"], 2)])
def test_truncate_follows_the_policy(tmp_path: Path, exclude: list[str], rows_left: int) -> None:
    key = f"truncate-{len(exclude)}"
    ScriptSource.scripts[key] = (
        [BEFORE],
        [
            Batch(schema_changes=(CreateTable(TABLE, BEFORE),), end_position=pos(1)),
            Batch(
                events=(
                    ChangeEvent.insert(TABLE, {"id": 1, "name": "a", "price": 1, "old": None}, pos(2)),
                    ChangeEvent.insert(TABLE, {"id": 2, "name": "b", "price": 2, "old": None}, pos(2)),
                ),
                end_position=pos(2),
            ),
            Batch(events=(ChangeEvent.truncate(TABLE, pos(3)),), end_position=pos(3)),
        ],
    )
    it = make_integration(tmp_path, key, key, key, schema_evolution={"exclude": exclude})
    assert IntegrationRunner(it).run() is State.STOPPED
    assert len(SharedSink.stores[key][TABLE].rows) == rows_left
    history = SchemaHistory(StateDB(tmp_path / "state.db"), key).entries()
    assert [e["decision"] for e in history if e["change"].startswith("truncate")] == (["skip"] if exclude else [])


def test_lenient_routes_snapshot_chunks_to_the_new_column(tmp_path: Path) -> None:
    # The target has price int64 from an earlier run; the source now says string: chunks are
    # reshaped column-wise (price -> price__string, missing target columns as nulls).
    target = Schema.of(TABLE, [Field("id", T.int64), Field("price", T.int64, nullable=False), Field("legacy", T.string())], ["id"])
    source = Schema.of(TABLE, [Field("id", T.int64), Field("price", T.string())], ["id"])
    SharedSink.stores["chunks"] = {}
    sink = SharedSink(SharedConfig(store="chunks"))
    sink.apply(CreateTable(TABLE, target))
    rows = pa.Table.from_pylist([{"id": 1, "price": "12.5"}, {"id": 2, "price": None}], schema=arrow_schema(source))
    ScriptSource.scripts["chunks"] = ([source], [Batch(chunks=(RowChunk(TABLE, Op.READ, rows, pos(1)),), end_position=pos(1))])
    it = make_integration(tmp_path, "chunks", "chunks", "chunks")
    assert IntegrationRunner(it).run() is State.STOPPED
    store = SharedSink.stores["chunks"][TABLE]
    assert store.schema.names == ("id", "price", "price__string", "legacy") and store.schema.field("price").nullable
    assert {k[0]: v for k, v in store.rows.items()} == {
        1: {"id": 1, "price": None, "price__string": "12.5", "legacy": None},
        2: {"id": 2, "price": None, "price__string": None, "legacy": None},
    }


# -- tables dropped in the source: target-only tables in `zetl drift` ---------------------------
GONE = TableId("shop", "gone")


def drop_table_script(key: str) -> None:
    gone = Schema.of(GONE, [Field("id", T.int64), Field("v", T.string())], ["id"])
    ScriptSource.scripts[key] = (
        [BEFORE, gone],
        [
            Batch(schema_changes=(CreateTable(TABLE, BEFORE), CreateTable(GONE, gone)), end_position=pos(1)),
            Batch(events=(ChangeEvent.insert(GONE, {"id": 1, "v": "x"}, pos(2)),), end_position=pos(2)),
            Batch(schema_changes=(DropTable(GONE),), end_position=pos(3)),
        ],
    )
    ScriptSource.current.pop(key, None)


@pytest.mark.parametrize(
    "behavior, exclude, in_target, daemon_would, recorded, exit_code",
    [
        ("lenient", [], True, "keep", True, 0),  # kept on purpose and recorded: in sync
        ("try_evolve", [], True, "keep", True, 0),  # this sink cannot drop tables: kept, recorded
        ("evolve", [], False, None, None, 0),  # dropped by the daemon: nothing left in the target
        ("evolve", ["drop.table"], True, "skip", True, 2),  # the policy refuses to decide: rejected
    ],
)
def test_tables_dropped_in_the_source_are_reported(
    tmp_path: Path, behavior: str, exclude: list[str], in_target: bool, daemon_would: str | None, recorded: bool | None, exit_code: int
) -> None:
    key = f"drop-{behavior}-{len(exclude)}"
    drop_table_script(key)
    SharedSink.stores[key] = {}
    cannot = ["drop.table"] if behavior == "try_evolve" else []
    it = make_integration(tmp_path, key, key, key, cannot, schema_evolution={"behavior": behavior, "exclude": exclude})
    runner = IntegrationRunner(it)
    assert runner.run() is State.STOPPED, runner.status.last_error
    assert (GONE in SharedSink.stores[key]) is in_target
    report = drift_report(it)
    data = report.to_json()
    assert report.exit_code == exit_code and data["summary"]["target_only"] == int(in_target), data
    assert [t["table"] for t in data["tables"]] == ["shop.items"]
    if not in_target:
        assert data["target_only"] == []
        return
    [entry] = data["target_only"]
    assert (entry["table"], entry["source_exists"], entry["target_exists"], entry["daemon_would"], entry["recorded"]) == (
        "shop.gone", False, True, daemon_would, recorded
    ), entry
    assert [(s["kind"], s["classification"]) for s in entry["steps"]] == [("drop.table", "breaking")]

    # The same target seen by a report whose policy differs from the daemon's: nothing recorded
    # for that decision, so the policy's answer counts as drift (1) or a refusal (2).
    strict = make_integration(tmp_path, key, key, key, cannot, schema_evolution={"behavior": "fail"})
    report = drift_report(strict)
    [table] = report.target_only or []
    assert (table.daemon_would, table.recorded, report.exit_code) == ("fail", False, 2), report.to_json()


class BareSink(MemorySink):
    """A custom sink written before ``managed_tables`` existed: it keeps the contract's default."""

    name = "bare"

    managed_tables = Sink.managed_tables  # the contract's default: cannot tell


def test_sinks_that_cannot_list_their_tables_are_reported_as_such(tmp_path: Path) -> None:
    from rich.console import Console

    from zetl.drift import render_table

    ScriptSource.scripts["bare"] = ([BEFORE], [])
    config = IntegrationConfig.model_validate(
        {"name": "bare", "source": {"type": "script"}, "sink": {"type": "bare"}, "checkpoint": {"path": str(tmp_path / "state.db")}}
    )
    it = Integration(config, tmp_path / "bare.yaml", ScriptSource, ScriptConfig(script="bare"), BareSink, None)
    report = drift_report(it)
    assert report.error is None and report.target_only is None and report.to_json()["target_only"] is None
    assert report.to_json()["summary"]["target_only"] is None
    assert report.exit_code == 1  # shop.items is not in the target yet: the daemon would create it
    console = Console(record=True, width=200)
    render_table(report, console)
    assert "target-only tables: not known for sink bare" in console.export_text()
