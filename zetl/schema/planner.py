"""The schema planner: the only place that decides which DDL a sink receives.

``plan(source, sink, policy)`` is pure: it compares the source's schema of a table with the
sink's and returns a ``SchemaPlan`` whose steps say, for every difference, what is done and why.
The daemon applies the plan's changes; ``zetl drift`` prints the same plan without applying it,
so the report can never disagree with the daemon.

Every step is classified by what the *source* did, whatever the policy makes of it:

* ``safe``: readers of the target keep working (create table, add column, widening, drop NOT NULL).
* ``lossy``: data stops arriving or disappears (drop column).
* ``breaking``: readers of the target break (rename, incompatible type change, drop table).

How each behaviour treats a difference (an ``include``/``exclude`` miss always skips):

==================  =========================================================================
fail                every difference fails (``create.table`` of a missing table excepted)
ignore              every difference is skipped; rows are written to the columns that exist
evolve              the change is applied as the source made it; fails if the sink cannot
try_evolve          like evolve; what the sink cannot apply is skipped with a warning
lenient (default)   add nullable; a dropped column is kept (made nullable); a rename keeps the
                    old column and adds the new one; an incompatible type change adds a column
                    ``<name>__<type>`` (e.g. ``price__string``) and routes the values there
==================  =========================================================================

A table missing in the sink is created under every behaviour unless ``create.table`` is
excluded: the behaviours govern how an existing target evolves. Added columns are always
nullable in the target, because existing rows have no value for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal, Sequence

from zetl.errors import SchemaError
from zetl.events import TableId
from zetl.schema.changes import (
    AddColumn,
    AlterColumnType,
    CreateTable,
    DropColumn,
    DropTable,
    MakeColumnNullable,
    RenameColumn,
    SchemaChange,
    TruncateTable,
)
from zetl.schema.policy import EvolutionPolicy
from zetl.schema.types import Field, Schema
from zetl.schema.widening import can_widen, type_suffix

__all__ = [
    "Classification",
    "Decision",
    "PlanStep",
    "SchemaPlan",
    "apply_change",
    "can_widen",
    "plan",
    "redirect_column_name",
]

Classification = Literal["safe", "lossy", "breaking"]
Decision = Literal["apply", "skip", "fail"]

CLASSIFICATION_RANK: dict[str, int] = {"safe": 0, "lossy": 1, "breaking": 2}


def _column_of(change: SchemaChange) -> str | None:
    if isinstance(change, AddColumn):
        return change.field.name
    if isinstance(change, RenameColumn):
        return change.new_name
    return getattr(change, "column", None)


@dataclass(frozen=True)
class PlanStep:
    """One difference between source and sink, and what is done about it.

    ``detected`` is what differs (in source terms), ``changes`` what the sink is asked to apply
    (empty unless ``decision`` is ``apply``), ``reason`` why, in words for logs and reports.
    """

    detected: SchemaChange
    decision: Decision
    classification: Classification
    reason: str
    changes: tuple[SchemaChange, ...] = ()
    kept: bool = False
    """A skipped difference the target may stay in for good: a column or table dropped in the
    source that the policy keeps (lenient, or try_evolve when the sink cannot drop). Other skips
    lose values or are refusals (ignore, excluded kinds)."""

    @property
    def change(self) -> SchemaChange | None:
        """The first change applied (None when nothing is applied)."""
        return self.changes[0] if self.changes else None

    @property
    def column(self) -> str | None:
        return _column_of(self.detected)

    def __str__(self) -> str:
        text = f"{self.decision}: {self.detected} [{self.classification}] ({self.reason})"
        if self.changes and (len(self.changes) > 1 or self.changes[0] != self.detected):
            text += " -> " + "; ".join(str(c) for c in self.changes)
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.detected.kind,
            "column": self.column,
            "detected": str(self.detected),
            "decision": self.decision,
            "classification": self.classification,
            "reason": self.reason,
            "changes": [str(c) for c in self.changes],
            "kept_by_policy": self.kept,
        }


@dataclass(frozen=True)
class SchemaPlan:
    """The plan for one table.

    ``target`` is the sink's schema once the plan is applied (None: no table). ``column_map``
    sends a source column's values to another target column, or drops them (None); columns not
    in it keep their name.
    """

    table: TableId
    steps: tuple[PlanStep, ...]
    target: Schema | None
    column_map: dict[str, str | None] = field(default_factory=dict)

    @property
    def changes(self) -> list[SchemaChange]:
        """Every change to apply, in order."""
        return [c for s in self.steps if s.decision == "apply" for c in s.changes]

    @property
    def failures(self) -> list[PlanStep]:
        return [s for s in self.steps if s.decision == "fail"]

    @property
    def in_sync(self) -> bool:
        return not self.steps

    def raise_for_failures(self) -> None:
        """Raise ``SchemaError`` for the first step the policy refuses."""
        if self.failures:
            first = self.failures[0]
            raise SchemaError(
                f"schema change refused on {self.table}: {first.detected} ({first.reason}). "
                "Change schema_evolution.behavior (or include/exclude) in the integration file, "
                "or bring the target in line by hand; `zetl drift` shows every difference.",
                table=str(self.table),
                column=first.column,
            )


def redirect_column_name(column: str, new_type: Any) -> str:
    """The column a lenient policy adds for an incompatible type change: ``price__string``."""
    return f"{column}__{type_suffix(new_type)}"


def apply_change(schema: Schema | None, change: SchemaChange) -> Schema | None:
    """The schema after ``change`` (pure). Raises SchemaError when it does not fit."""
    if isinstance(change, CreateTable):
        return change.schema
    if isinstance(change, DropTable):
        return None
    if schema is None:
        raise SchemaError(f"{change}: table {change.table} does not exist", table=str(change.table))
    if isinstance(change, TruncateTable):
        return schema
    fields = list(schema.fields)
    names = [f.name for f in fields]
    if isinstance(change, AddColumn):
        if change.field.name in names:
            return schema
        index = names.index(change.after) + 1 if change.after in names else len(fields)
        fields.insert(index, change.field)
    elif isinstance(change, DropColumn):
        fields = [f for f in fields if f.name != change.column]
    elif isinstance(change, RenameColumn):
        fields = [replace(f, name=change.new_name) if f.name == change.old_name else f for f in fields]
        pk = tuple(change.new_name if c == change.old_name else c for c in schema.primary_key)
        return Schema(schema.table, tuple(fields), pk, schema.version + 1)
    elif isinstance(change, AlterColumnType):
        fields = [f.with_type(change.new_type) if f.name == change.column else f for f in fields]
    elif isinstance(change, MakeColumnNullable):
        fields = [replace(f, nullable=True) if f.name == change.column else f for f in fields]
    return schema.replace_fields(fields)


class _Planner:
    def __init__(self, table: TableId, policy: EvolutionPolicy, can_apply: Callable[[SchemaChange], bool]) -> None:
        self.table = table
        self.policy = policy
        self.can_apply = can_apply
        self.steps: list[PlanStep] = []
        self.column_map: dict[str, str | None] = {}
        self.present: set[str] = set()  # target columns, including those added by this plan

    # -- helpers --------------------------------------------------------------------------
    def step(
        self, detected: SchemaChange, decision: Decision, classification: Classification, reason: str, changes: Sequence[SchemaChange] = (), *, kept: bool = False
    ) -> PlanStep:
        made = PlanStep(detected, decision, classification, reason, tuple(changes) if decision == "apply" else (), kept and decision == "skip")
        self.steps.append(made)
        return made

    def gate(self, detected: SchemaChange, classification: Classification, outcome: str) -> PlanStep | None:
        """The step for the policy-wide refusals (excluded kind, fail, ignore); None when the
        behaviour's own rule decides. ``outcome`` says what happens when it is skipped."""
        if not self.policy.allows(detected.kind):
            return self.step(detected, "skip", classification, f"{detected.kind} is excluded by the policy; {outcome}")
        if self.policy.behavior == "ignore":
            return self.step(detected, "skip", classification, f"policy 'ignore'; {outcome}")
        if self.policy.behavior == "fail":
            return self.step(detected, "fail", classification, "policy 'fail' refuses every schema change")
        return None

    def appliable(self, changes: Sequence[SchemaChange]) -> SchemaChange | None:
        """The first change the sink cannot apply (None: it can apply all)."""
        return next((c for c in changes if not self.can_apply(c)), None)

    def exact(self, detected: SchemaChange, classification: Classification, changes: Sequence[SchemaChange], outcome: str) -> PlanStep:
        """evolve / try_evolve: apply as the source did, or fail / skip."""
        refused = self.appliable(changes)
        behavior = self.policy.behavior
        if refused is None:
            return self.step(detected, "apply", classification, f"policy '{behavior}'", changes)
        if behavior == "evolve":
            return self.step(detected, "fail", classification, f"policy 'evolve' and the sink cannot apply '{refused.kind}'")
        # Only a kept column or table is a state the target can stay in; anything else loses values.
        kept = isinstance(detected, (DropColumn, DropTable))
        return self.step(detected, "skip", classification, f"the sink cannot apply '{refused.kind}'; {outcome}", kept=kept)

    # -- table level ----------------------------------------------------------------------
    def drop_table(self, sink: Schema) -> Schema | None:
        detected = DropTable(self.table)
        outcome = "the table is kept in the target"
        step = self.gate(detected, "breaking", outcome)
        if step is None:
            if self.policy.behavior == "lenient":
                step = self.step(detected, "skip", "breaking", f"policy 'lenient' never drops; {outcome}", kept=True)
            else:
                step = self.exact(detected, "breaking", [detected], outcome)
        return None if step.decision == "apply" else sink

    def create_table(self, source: Schema) -> Schema | None:
        detected = CreateTable(self.table, source)
        if not self.policy.allows(detected.kind):
            self.step(detected, "skip", "safe", "create.table is excluded by the policy; rows of this table are not written")
            return None
        if not self.can_apply(detected):
            self.step(detected, "fail", "safe", "the sink cannot create tables; create it by hand")
            return None
        self.step(detected, "apply", "safe", "the table does not exist in the target", [detected])
        return source

    # -- column level ---------------------------------------------------------------------
    def add_column(self, source: Schema, f: Field, target: Schema) -> None:
        detected = AddColumn(self.table, f, _after(source, f.name, self.present))
        self.present.add(f.name)
        change = AddColumn(self.table, replace(f, nullable=True, primary_key=False), detected.after)
        outcome = f"the values of {f.name} are not written"
        step = self.gate(detected, "safe", outcome)
        if step is None:
            if self.policy.behavior == "lenient":
                refused = self.appliable([change])
                if refused is None:
                    step = self.step(detected, "apply", "safe", "policy 'lenient': added as a nullable column", [change])
                else:
                    step = self.step(detected, "skip", "safe", f"the sink cannot apply 'add.column'; {outcome}")
            else:
                step = self.exact(detected, "safe", [change], outcome)
        if step.decision != "apply":
            self.column_map[f.name] = None

    def rename_column(self, old: Field, new: Field, source: Schema, target: Schema) -> None:
        detected = RenameColumn(self.table, old.name, new.name)
        outcome = f"{old.name} is kept; the values of {new.name} are not written"
        step = self.gate(detected, "breaking", outcome)
        if step is None:
            rename_ok = self.policy.behavior in ("evolve", "try_evolve") and self.can_apply(detected)
            if rename_ok:
                step = self.step(detected, "apply", "breaking", f"policy '{self.policy.behavior}'", [detected])
            elif self.policy.behavior == "evolve":
                step = self.step(detected, "fail", "breaking", "policy 'evolve' and the sink cannot apply 'rename.column'")
            else:
                changes: list[SchemaChange] = [AddColumn(self.table, replace(new, nullable=True, primary_key=False), _after(source, new.name, self.present))]
                self.present.add(new.name)
                if not old.nullable:
                    changes.append(MakeColumnNullable(self.table, old.name))
                refused = self.appliable(changes)
                why = "policy 'lenient'" if self.policy.behavior == "lenient" else "the sink cannot rename columns"
                if refused is None:
                    step = self.step(detected, "apply", "breaking", f"{why}: {old.name} is kept (null from now on) and {new.name} is added", changes)
                else:
                    step = self.step(detected, "fail", "breaking", f"{why}, and the sink cannot apply '{refused.kind}'")
        if step.decision != "apply":
            self.column_map[new.name] = None

    def change_type(self, f: Field, existing: Field, sink: Schema) -> bool:
        """Plan a type difference; returns True when the values now go to another column."""
        detected = AlterColumnType(self.table, f.name, f.type, existing.type)
        behavior = self.policy.behavior
        if can_widen(existing.type, f.type):
            outcome = f"values are written into the narrower {existing.type} column"
            step = self.gate(detected, "safe", outcome)
            if step is not None:
                return False
            if behavior != "lenient" or self.can_apply(detected):
                self.exact(detected, "safe", [detected], outcome)
                return False
            return self.redirect(detected, f, existing, sink, "safe", "the sink cannot widen the column")
        outcome = f"the values of {f.name} are not written"
        step = self.gate(detected, "breaking", outcome)
        if step is None:
            if behavior == "lenient":
                return self.redirect(detected, f, existing, sink, "breaking", "incompatible type change")
            step = self.exact(detected, "breaking", [detected], outcome)
        if step.decision != "apply":
            self.column_map[f.name] = None
        return False

    def redirect(self, detected: AlterColumnType, f: Field, existing: Field, sink: Schema, classification: Classification, why: str) -> bool:
        name = redirect_column_name(f.name, f.type)
        present = sink.get(name)
        if present is not None:
            if can_widen(f.type, present.type):
                self.column_map[f.name] = name  # planned before: nothing left to do
                return True
            self.step(detected, "fail", classification, f"{why}, and column {name} already exists with type {present.type}")
            return False
        changes: list[SchemaChange] = [AddColumn(self.table, Field(name, f.type, nullable=True), existing.name)]
        if not existing.nullable:
            changes.append(MakeColumnNullable(self.table, existing.name))
        refused = self.appliable(changes)
        if refused is not None:
            self.step(detected, "fail", classification, f"{why}, and the sink cannot apply '{refused.kind}'")
            return False
        reason = f"policy 'lenient', {why}: values go to the new column {name}; {existing.name} is kept (null from now on)"
        self.step(detected, "apply", classification, reason, changes)
        self.column_map[f.name] = name
        return True

    def relax(self, f: Field) -> None:
        detected = MakeColumnNullable(self.table, f.name)
        step = self.gate(detected, "safe", "NULL values of this column will be refused by the target")
        if step is None:
            if self.policy.behavior == "lenient" and not self.can_apply(detected):
                self.step(detected, "skip", "safe", "the sink cannot drop NOT NULL; NULL values of this column will be refused")
            else:
                self.exact(detected, "safe", [detected], "NULL values of this column will be refused by the target")

    def drop_column(self, f: Field) -> None:
        detected = DropColumn(self.table, f.name)
        outcome = f"{f.name} is kept in the target"
        if self.gate(detected, "lossy", outcome) is not None:
            return
        if self.policy.behavior != "lenient":
            self.exact(detected, "lossy", [detected], outcome)
            return
        if f.nullable:
            self.step(detected, "skip", "lossy", f"policy 'lenient' never drops: {f.name} is kept and is null in new rows", kept=True)
            return
        relax = MakeColumnNullable(self.table, f.name)
        if self.can_apply(relax):
            self.step(detected, "apply", "lossy", f"policy 'lenient' never drops: {f.name} is kept and becomes nullable", [relax])
        else:
            self.step(detected, "fail", "lossy", f"{f.name} is NOT NULL in the target and the sink can neither drop it nor drop NOT NULL")


def plan(
    source: Schema | None,
    sink: Schema | None,
    policy: EvolutionPolicy,
    *,
    can_apply: Callable[[SchemaChange], bool] = lambda change: True,
    hints: Sequence[SchemaChange] = (),
) -> SchemaPlan:
    """Plan how to bring ``sink`` in line with ``source`` under ``policy``.

    Args:
        source: the source's schema (None: the table was dropped in the source).
        sink: the sink's schema (None: the table does not exist there).
        policy: the table's evolution policy.
        can_apply: the sink's ``can_apply``; the planner asks only for changes it accepts.
        hints: the changes the source reported (they let a rename be told from drop + add).

    Guarantees: pure and deterministic (same inputs, same plan); steps follow the source's column
    order, then the target-only columns in the target's order; ``target`` is ``sink`` with every
    applied change.
    """
    if source is None and sink is None:
        raise ValueError("plan() needs a source or a sink schema")
    table = (source or sink).table  # type: ignore[union-attr]
    planner = _Planner(table, policy, can_apply)
    planner.present = set(sink.names) if sink is not None else set()
    if source is None:
        assert sink is not None
        target = planner.drop_table(sink)
        return SchemaPlan(table, tuple(planner.steps), target)
    if sink is None:
        target = planner.create_table(source)
        return SchemaPlan(table, tuple(planner.steps), target, {} if target is not None else {n: None for n in source.names})

    renames = {
        h.new_name: h.old_name
        for h in hints
        if isinstance(h, RenameColumn) and h.table == table and h.old_name in sink and h.old_name not in source and h.new_name not in sink
    }
    kept_by_rename: set[str] = set()
    for f in source.fields:
        existing = sink.get(f.name)
        if existing is None:
            old = renames.get(f.name)
            if old is not None:
                planner.rename_column(sink.field(old), f, source, sink)
                kept_by_rename.add(old)
            else:
                planner.add_column(source, f, sink)
            continue
        redirected = False
        if existing.type != f.type and not can_widen(f.type, existing.type):
            redirected = planner.change_type(f, existing, sink)
        if not redirected and not existing.nullable and f.nullable:
            planner.relax(f)
    routed = {v for v in planner.column_map.values() if v is not None}
    for f in sink.fields:
        if f.name not in source and f.name not in kept_by_rename and f.name not in routed:
            planner.drop_column(f)
    target: Schema | None = sink
    for step in planner.steps:
        if step.decision == "apply":
            for change in step.changes:
                target = apply_change(target, change)
    return SchemaPlan(table, tuple(planner.steps), target, planner.column_map)


def _after(source: Schema, name: str, present: set[str]) -> str | None:
    """The nearest column before ``name`` in the source that the target has (None: first)."""
    names = source.names
    i = names.index(name)
    for prev in reversed(names[:i]):
        if prev in present:
            return prev
    return None
