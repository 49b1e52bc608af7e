"""``zetl drift``: how far the target's schema is from the source's, and what the daemon would do.

The report connects to the source (``discover``) and to the sink (``current_schema``), derives
each table's target schema exactly as the daemon does (filters, flattening) and runs the same
planner with the integration's policy. It never applies anything.

Tables that exist only in the target (``Sink.managed_tables``: created by this integration, but
dropped in the source, renamed away or no longer selected) are planned as a ``drop.table``: the
policy keeps them (lenient, try_evolve on a sink that cannot drop, ...), drops them (evolve, on
a sink that can drop tables; evolve on one that cannot, such as Iceberg, fails) or refuses (fail,
ignore, an excluded kind); they count for the exit code like any other table, while the
``summary`` counts ``in_sync``/``drift``/``rejected`` stay those of ``tables``.
A sink that cannot list its tables (``managed_tables`` returns None) is reported as such.

Exit codes (``DriftReport.exit_code``):

* 0: in sync (nothing left to do, or only differences below ``--fail-on``);
* 1: drift the policy applies (the daemon would change the target, or keep a difference on
  purpose it has not recorded yet);
* 2: drift the policy rejects (the daemon would stop on it, or the policy refuses to apply it:
  ``ignore``, an excluded change kind);
* 3: error (configuration, connection, ...).

A target-only table follows the same rules: kept by the policy and recorded in the history: in
sync; kept but not recorded (the daemon never saw the drop, e.g. it happened while stopped) or
dropped by the policy: 1; refused (fail, ignore, excluded ``drop.table``): 2.

A difference the policy keeps on purpose (``kept_by_policy``: a column dropped in the source that a
lenient policy keeps, or one try_evolve keeps because the sink cannot drop it) and that the daemon has already recorded in the
schema history is reported as ``kept`` and does not count as drift. ``--fail-on lossy|breaking`` counts only steps of that classification or worse.

JSON format (``--format json``), stable for CI: one object per integration (a list of them when
the paths hold several integrations)::

    {
      "integration": "shop-to-lake",
      "status": "in_sync" | "drift" | "rejected" | "error",
      "exit_code": 0 | 1 | 2 | 3,
      "fail_on": "any" | "lossy" | "breaking",
      "error": null | "message",
      "summary": {"tables": 3, "in_sync": 2, "drift": 1, "rejected": 0,
                  "target_only": 1 | null},              (added: null when the sink cannot tell)
      "tables": [{
        "table": "shop.orders",
        "status": "in_sync" | "drift" | "rejected",
        "source_exists": true,                           (added: false in "target_only")
        "target_exists": true,
        "only_in_source": ["coupon"],
        "only_in_target": ["legacy_flag"],
        "type_differences": [{"column": "amount", "source": "decimal(14,2)", "target": "decimal(12,2)"}],
        "routed": {"price": "price__string", "legacy": null},   (source column -> target column;
                                                                 null: its values are not written)
        "steps": [{"kind": "add.column", "column": "coupon", "detected": "add column ...",
                   "decision": "apply" | "skip" | "fail", "classification": "safe" | "lossy" | "breaking",
                   "reason": "...", "changes": ["add column ..."], "kept_by_policy": false, "kept": false}]
      }],
      "target_only": null | [{                          (added; null: the sink cannot list its tables)
        "table": "shop.legacy_orders",                  (a table of this integration that is in the
        "status": "in_sync" | "drift" | "rejected",      target only; same fields as in "tables",
        "source_exists": false, "target_exists": true,   with one drop.table step)
        "daemon_would": "keep" | "drop" | "fail" | "skip",
        "recorded": true,                                (the history holds this decision already)
        ...
      }],
      "history": [{"at": 1732480000.0, "table": "...", "change": "...", "position": "...",
                   "decision": "...", "reason": "..."}]     (only with --history)
    }
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from zetl.config.load import Integration
from zetl.events import TableId
from zetl.pipeline import SchemaHistory, SchemaPipeline
from zetl.plugin import PluginContext
from zetl.schema.changes import DropTable
from zetl.schema.planner import CLASSIFICATION_RANK, PlanStep, SchemaPlan
from zetl.schema.types import Schema
from zetl.sink import Sink
from zetl.statedb import StateDB

__all__ = ["DriftReport", "FailOn", "TableDrift", "drift_report", "render_table"]

FailOn = Literal["any", "lossy", "breaking"]

EXIT_IN_SYNC, EXIT_DRIFT, EXIT_REJECTED, EXIT_ERROR = 0, 1, 2, 3


@dataclass
class TableDrift:
    """The drift of one table: column differences and the plan's steps."""

    table: TableId
    source: Schema | None
    target: Schema | None
    plan: SchemaPlan
    kept: set[int] = field(default_factory=set)  # indexes of steps already decided (history)
    recorded: bool = False  # target-only tables: the history holds the drop.table decision

    @property
    def only_in_source(self) -> list[str]:
        if self.source is None:
            return []
        return [n for n in self.source.names if self.target is None or n not in self.target]

    @property
    def only_in_target(self) -> list[str]:
        if self.target is None:
            return []
        return [n for n in self.target.names if self.source is None or n not in self.source]

    @property
    def type_differences(self) -> list[dict[str, str]]:
        if self.source is None or self.target is None:
            return []
        out = []
        for f in self.source.fields:
            other = self.target.get(f.name)
            if other is not None and other.type != f.type:
                out.append({"column": f.name, "source": str(f.type), "target": str(other.type)})
        return out

    def counted(self, fail_on: FailOn) -> list[PlanStep]:
        """The steps that count for the exit code (at or above ``fail_on``, not yet kept)."""
        threshold = 0 if fail_on == "any" else CLASSIFICATION_RANK[fail_on]
        return [s for i, s in enumerate(self.plan.steps) if i not in self.kept and CLASSIFICATION_RANK[s.classification] >= threshold]

    def status(self, fail_on: FailOn = "any") -> str:
        """``rejected``: a step fails, or is skipped because the policy refuses it (ignore,
        excluded kind); ``drift``: a step the daemon would apply, or keep on purpose without
        having recorded it yet; ``in_sync`` otherwise."""
        steps = self.counted(fail_on)
        if any(s.decision == "fail" or (s.decision == "skip" and not s.kept) for s in steps):
            return "rejected"
        return "drift" if steps else "in_sync"

    @property
    def daemon_would(self) -> str:
        """For a target-only table: ``keep``, ``drop``, ``fail`` or ``skip`` (the policy refuses
        to decide: ignore, excluded kind; the table stays)."""
        step = next((s for s in self.plan.steps if isinstance(s.detected, DropTable)), None)
        if step is None:
            return "keep"
        if step.decision == "apply":
            return "drop"
        if step.decision == "skip":
            return "keep" if step.kept else "skip"
        return "fail"

    def to_json(self, fail_on: FailOn = "any") -> dict[str, Any]:
        data: dict[str, Any] = {
            "table": str(self.table),
            "status": self.status(fail_on),
            "source_exists": self.source is not None,
            "target_exists": self.target is not None,
            "only_in_source": self.only_in_source,
            "only_in_target": self.only_in_target,
            "type_differences": self.type_differences,
            "routed": {k: v for k, v in sorted(self.plan.column_map.items())},
            "steps": [{**s.to_json(), "kept": i in self.kept} for i, s in enumerate(self.plan.steps)],
        }
        if self.source is None:
            data["daemon_would"] = self.daemon_would
            data["recorded"] = self.recorded
        return data


@dataclass
class DriftReport:
    integration: str
    tables: list[TableDrift] = field(default_factory=list)
    fail_on: FailOn = "any"
    error: str | None = None
    history: list[dict[str, Any]] | None = None
    target_only: list[TableDrift] | None = field(default_factory=list)
    """Tables of this integration that exist only in the target (sorted); None: the sink cannot tell."""
    sink_name: str = ""

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return EXIT_ERROR
        statuses = {t.status(self.fail_on) for t in self.tables + (self.target_only or [])}
        if "rejected" in statuses:
            return EXIT_REJECTED
        return EXIT_DRIFT if "drift" in statuses else EXIT_IN_SYNC

    @property
    def status(self) -> str:
        return {EXIT_IN_SYNC: "in_sync", EXIT_DRIFT: "drift", EXIT_REJECTED: "rejected", EXIT_ERROR: "error"}[self.exit_code]

    def to_json(self) -> dict[str, Any]:
        statuses = [t.status(self.fail_on) for t in self.tables]
        data: dict[str, Any] = {
            "integration": self.integration,
            "status": self.status,
            "exit_code": self.exit_code,
            "fail_on": self.fail_on,
            "error": self.error,
            "summary": {
                "tables": len(self.tables),
                "in_sync": statuses.count("in_sync"),
                "drift": statuses.count("drift"),
                "rejected": statuses.count("rejected"),
                "target_only": None if self.target_only is None else len(self.target_only),
            },
            "tables": [t.to_json(self.fail_on) for t in self.tables],
            "target_only": None if self.target_only is None else [t.to_json(self.fail_on) for t in self.target_only],
        }
        if self.history is not None:
            data["history"] = self.history
        return data


def drift_report(integration: Integration, *, fail_on: FailOn = "any", with_history: bool = False) -> DriftReport:
    """Compare source and target of ``integration`` (read only). Errors end up in
    ``DriftReport.error`` (exit code 3), never raised."""
    report = DriftReport(integration.name, fail_on=fail_on, sink_name=getattr(integration.sink_class, "name", integration.sink_class.__name__))
    report.target_only = None  # unknown until the sink has listed its tables
    config = integration.config
    state_path = config.state_path(integration.file)
    history = SchemaHistory(StateDB(state_path), integration.name) if state_path.exists() else SchemaHistory(None, integration.name)
    context = PluginContext(
        integration=integration.name,
        tables=config.tables.selection(),
        columns=config.filters,
        state_dir=state_path.parent / integration.name,
        config_file=integration.file,
        read_only=True,
    )
    source = integration.source_class(integration.source_config, context)
    sink = integration.sink_class(integration.sink_config, context)
    try:
        source.open()
        sink.open()
        schemas = sorted(source.discover(), key=lambda s: s.table)
        pipeline = SchemaPipeline(config, sink, None)
        selection = config.tables.selection()
        selected: set[TableId] = set()
        for schema in schemas:
            if not selection.matches(schema.table):
                continue
            selected.add(schema.table)
            pipeline.set_source_schema(schema)
            plan = pipeline.plan_table(schema.table)
            kept = {i for i, step in enumerate(plan.steps) if step.kept and history.has(schema.table, str(step.detected), "skip")}
            report.tables.append(TableDrift(schema.table, pipeline.effective_schema(schema.table), sink.current_schema(schema.table), plan, kept))
        report.target_only = _target_only(sink, pipeline, history, selected)
        if with_history:
            report.history = history.entries()
    except Exception as exc:  # reported with exit code 3: drift must explain, not crash
        message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        report.error = message
    finally:
        for plugin in (source, sink):
            try:
                plugin.close()
            except Exception:
                pass
    return report


def _target_only(sink: Sink, pipeline: SchemaPipeline, history: SchemaHistory, selected: set[TableId]) -> list[TableDrift] | None:
    """The drift of the sink's managed tables that are not among the source's selected tables:
    each planned as the source dropping it (None when the sink cannot list its tables)."""
    managed = sink.managed_tables()
    if managed is None:
        return None
    out: list[TableDrift] = []
    for table in sorted(set(managed) - selected):
        target = sink.current_schema(table)
        if target is None:  # listed but not reachable under the current table names: nothing to plan
            continue
        plan = pipeline.plan_table(table)
        decided = {i: history.has(table, str(step.detected), step.decision) for i, step in enumerate(plan.steps)}
        kept = {i for i, step in enumerate(plan.steps) if step.kept and decided[i]}
        out.append(TableDrift(table, None, target, plan, kept, recorded=bool(decided) and all(decided.values())))
    return out


_STYLE = {"in_sync": "green", "drift": "yellow", "rejected": "red", "error": "bold red"}
_DECISION_STYLE = {"apply": "yellow", "skip": "cyan", "fail": "red"}


def render_table(report: DriftReport, console: Any) -> None:
    """Print the report for a terminal (rich console): one block per table and a summary line."""
    from rich.markup import escape
    from rich.table import Table

    if report.error is not None:
        console.print(f"[bold red]error[/] {escape(report.integration)}: {escape(report.error)}", highlight=False)
    for t in report.tables + (report.target_only or []):
        status = t.status(report.fail_on)
        where = "  (not in the target)" if t.target is None else "  (only in the target)" if t.source is None else ""
        console.print(f"[{_STYLE[status]}]{status.replace('_', ' ')}[/]  [bold]{escape(str(t.table))}[/]" + where)
        if not t.plan.steps:
            continue
        grid = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for name in ("column", "difference", "class", "daemon would", "why"):
            grid.add_column(name)
        for i, step in enumerate(t.plan.steps):
            decision = "keep (recorded)" if i in t.kept else t.daemon_would if isinstance(step.detected, DropTable) else step.decision
            style = "green" if i in t.kept else _DECISION_STYLE[step.decision]
            what = str(step.detected)
            if step.changes and list(step.changes) != [step.detected]:
                what += "\n-> " + "\n-> ".join(str(c) for c in step.changes)
            grid.add_row(escape(step.column or ""), escape(what), step.classification, f"[{style}]{decision}[/]", escape(step.reason))
        console.print(grid)
    data = report.to_json()["summary"]
    console.print(
        f"[{_STYLE[report.status]}]{report.status.replace('_', ' ')}[/]: {data['tables']} table(s), {data['in_sync']} in sync, "
        f"{data['drift']} drifted, {data['rejected']} rejected"
        + ("" if report.target_only is None else f", {len(report.target_only)} only in the target")
        + f" (exit code {report.exit_code})"
    )
    if report.target_only is None and report.error is None:
        console.print(f"target-only tables: not known for sink {escape(report.sink_name)}", highlight=False)
    if report.history is not None:
        console.print("[bold]schema history[/]")
        if not report.history:
            console.print("  (no schema decisions recorded yet)")
        for entry in report.history:
            import datetime as dt

            at = dt.datetime.fromtimestamp(entry["at"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            console.print(f"  {at}  {entry['table']}  {entry['decision']}: {entry['change']}  ({entry['reason']})", markup=False)
