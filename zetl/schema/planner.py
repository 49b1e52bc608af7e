"""The schema planner: the only place that decides which DDL a sink receives.

``plan(source, sink, policy)`` is pure: it compares the source's schema of a table with the
sink's, and returns a ``SchemaPlan`` whose steps say, for every difference, what will be done and
why. The daemon applies the plan's changes; ``zetl drift`` prints the same plan without applying.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Literal, Sequence

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
from zetl.schema.types import DataType, Field, Schema, TypeKind

__all__ = ["Classification", "Decision", "PlanStep", "SchemaPlan", "apply_change", "can_widen", "plan"]

Classification = Literal["safe", "lossy", "breaking"]
Decision = Literal["apply", "skip", "fail"]


@dataclass(frozen=True)
class PlanStep:
    """One difference and what is done about it.

    ``change`` is what the sink is asked to apply (None when nothing is applied), ``detected``
    what differs between source and sink.
    """

    detected: SchemaChange
    decision: Decision
    classification: Classification
    reason: str
    change: SchemaChange | None = None

    def __str__(self) -> str:
        return f"{self.decision}: {self.detected} [{self.classification}] ({self.reason})"


@dataclass(frozen=True)
class SchemaPlan:
    """The plan for one table. ``target`` is the sink's schema once the plan is applied;
    ``column_map`` sends a source column's values to another target column (None: dropped)."""

    table: TableId
    steps: tuple[PlanStep, ...]
    target: Schema | None
    column_map: dict[str, str | None] = field(default_factory=dict)

    @property
    def changes(self) -> list[SchemaChange]:
        return [s.change for s in self.steps if s.decision == "apply" and s.change is not None]

    @property
    def failures(self) -> list[PlanStep]:
        return [s for s in self.steps if s.decision == "fail"]

    @property
    def in_sync(self) -> bool:
        return not self.steps

    def raise_for_failures(self) -> None:
        if self.failures:
            first = self.failures[0]
            column = getattr(first.detected, "column", None) or getattr(getattr(first.detected, "field", None), "name", None)
            raise SchemaError(
                f"schema change refused on {self.table}: {first.detected} ({first.reason})",
                table=str(self.table),
                column=column,
            )


_INT_ORDER = {TypeKind.INT16: 0, TypeKind.INT32: 1, TypeKind.INT64: 2}


def can_widen(old: DataType, new: DataType) -> bool:
    """Whether every value of ``old`` is a value of ``new`` (the widening rules, in one place)."""
    if old == new:
        return True
    if old.kind in _INT_ORDER and new.kind in _INT_ORDER:
        return _INT_ORDER[old.kind] <= _INT_ORDER[new.kind]
    if old.kind is TypeKind.FLOAT32 and new.kind is TypeKind.FLOAT64:
        return True
    if old.kind is TypeKind.DECIMAL and new.kind is TypeKind.DECIMAL:
        return new.scale == old.scale and (new.precision or 0) >= (old.precision or 0)
    if old.kind is TypeKind.STRING and new.kind is TypeKind.STRING:
        return new.length is None or (old.length is not None and new.length >= old.length)
    if old.kind is TypeKind.DATE and new.kind in (TypeKind.TIMESTAMP,):
        return True
    return False


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
    """
    table = (source or sink).table  # type: ignore[union-attr]
    steps: list[PlanStep] = []
    column_map: dict[str, str | None] = {}
    if source is None:
        if sink is None:
            return SchemaPlan(table, (), None)
        detected = DropTable(table)
        steps.append(_decide(detected, detected, "breaking", policy, can_apply, keep="table kept in the target"))
        target = None if steps[-1].decision == "apply" else sink
        return SchemaPlan(table, tuple(steps), target)
    if sink is None:
        detected = CreateTable(table, source)
        steps.append(_decide(detected, detected, "safe", policy, can_apply, keep="table not created"))
        return SchemaPlan(table, tuple(steps), source if steps[-1].decision == "apply" else None)

    renames = {h.old_name: h.new_name for h in hints if isinstance(h, RenameColumn) and h.table == table}
    target = sink
    for f in source.fields:
        existing = sink.get(f.name)
        if existing is None:
            old_name = next((o for o, n in renames.items() if n == f.name and o in sink and o not in source), None)
            if old_name is not None and policy.behavior in ("evolve", "try_evolve"):
                step = _decide(RenameColumn(table, old_name, f.name), RenameColumn(table, old_name, f.name), "breaking", policy, can_apply)
            else:
                add = AddColumn(table, replace(f, nullable=True, primary_key=False) if policy.behavior == "lenient" else f, _after(source, f.name, target))
                step = _decide(add, add, "safe", policy, can_apply, keep="column not added; its values are not written")
                if step.decision != "apply":
                    column_map[f.name] = None
            steps.append(step)
            continue
        if existing.type != f.type:
            if can_widen(existing.type, f.type):
                alter = AlterColumnType(table, f.name, f.type, existing.type)
                step = _decide(alter, alter, "safe", policy, can_apply, keep="values written into the narrower column")
            elif can_widen(f.type, existing.type):
                continue  # the target is already wider: nothing to do
            else:
                alter = AlterColumnType(table, f.name, f.type, existing.type)
                step = _decide(alter, alter, "breaking", policy, can_apply)
            steps.append(step)
        if existing.nullable is False and f.nullable is True:
            relax = MakeColumnNullable(table, f.name)
            steps.append(_decide(relax, relax, "safe", policy, can_apply))
    for f in sink.fields:
        if f.name not in source and f.name not in renames:
            if not f.nullable:
                relax = MakeColumnNullable(table, f.name)
                drop = DropColumn(table, f.name)
                if policy.behavior == "lenient":
                    steps.append(_decide(drop, relax, "safe", policy, can_apply, reason="lenient: the column is kept and becomes nullable"))
                else:
                    steps.append(_decide(drop, drop, "lossy", policy, can_apply, keep="column kept in the target"))
            elif policy.behavior not in ("lenient",):
                drop = DropColumn(table, f.name)
                steps.append(_decide(drop, drop, "lossy", policy, can_apply, keep="column kept in the target"))
    for step in steps:
        if step.decision == "apply" and step.change is not None:
            target = apply_change(target, step.change)  # type: ignore[assignment]
    return SchemaPlan(table, tuple(steps), target, column_map)


def _after(source: Schema, name: str, target: Schema) -> str | None:
    names = source.names
    i = names.index(name)
    for prev in reversed(names[:i]):
        if prev in target:
            return prev
    return None


def _decide(
    detected: SchemaChange,
    change: SchemaChange,
    classification: Classification,
    policy: EvolutionPolicy,
    can_apply: Callable[[SchemaChange], bool],
    *,
    keep: str = "",
    reason: str | None = None,
) -> PlanStep:
    behavior = policy.behavior
    if not policy.allows(detected.kind):
        return PlanStep(detected, "skip", classification, f"{detected.kind} excluded by the policy" + (f"; {keep}" if keep else ""))
    if behavior == "ignore":
        return PlanStep(detected, "skip", classification, "policy 'ignore'" + (f"; {keep}" if keep else ""))
    if behavior == "fail":
        return PlanStep(detected, "fail", classification, "policy 'fail' refuses every schema change")
    if classification == "breaking" and behavior == "lenient":
        return PlanStep(detected, "fail", classification, "incompatible change; the lenient policy does not break readers")
    if not can_apply(change):
        if behavior == "evolve":
            return PlanStep(detected, "fail", classification, f"the sink cannot apply '{change.kind}'")
        return PlanStep(detected, "skip", classification, f"the sink cannot apply '{change.kind}'" + (f"; {keep}" if keep else ""))
    return PlanStep(detected, "apply", classification, reason or f"policy '{behavior}'", change)
