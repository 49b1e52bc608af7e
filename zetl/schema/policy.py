"""The ``schema_evolution`` section: what the planner may do when the source's schema changes.

Behaviours (the Flink CDC vocabulary):

* ``fail``: any change the target does not already have stops the integration.
* ``evolve``: apply every change as the source made it; a change the sink cannot apply fails.
* ``try_evolve``: like evolve, but a change the sink cannot apply is skipped with a warning.
* ``lenient`` (default): add columns nullable; never drop (a dropped source column becomes
  nullable in the target); a rename keeps the old column and adds the new one; an incompatible
  type change adds a new column instead of breaking readers.
* ``ignore``: never change the target; rows are written to the columns that exist.

``include``/``exclude`` restrict the change kinds considered (``add.column``, ``drop.column``,
``rename.column``, ``alter.column.type``, ``create.table``, ``drop.table``, ``truncate.table``);
an excluded kind is skipped (an excluded ``truncate.table`` keeps the target's rows). ``tables``
overrides the policy for tables matching a pattern (first match wins).

Under every behaviour a table missing in the target is created (unless ``create.table`` is
excluded): the behaviours govern how an existing target evolves. The decision table is in
``zetl.schema.planner``; ``zetl drift`` shows what it means for each table.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from zetl.tables import compile_pattern

__all__ = ["Behavior", "ChangeKind", "EvolutionPolicy", "SchemaEvolutionConfig"]

Behavior = Literal["fail", "evolve", "try_evolve", "lenient", "ignore"]
ChangeKind = Literal["add.column", "drop.column", "rename.column", "alter.column.type", "create.table", "drop.table", "truncate.table"]


class EvolutionPolicy(BaseModel):
    """The policy of one table."""

    model_config = {"extra": "forbid", "frozen": True}

    behavior: Behavior = "lenient"
    """What to do when the source's schema changes."""
    include: list[ChangeKind] = Field(default_factory=list)
    """Only these change kinds are considered (all when empty)."""
    exclude: list[ChangeKind] = Field(default_factory=list)
    """These change kinds are skipped."""

    def allows(self, kind: str) -> bool:
        """Whether changes of ``kind`` are considered (dropping NOT NULL always is: it is how the
        other kinds keep the target writable)."""
        if self.include and kind not in self.include and kind != "alter.column.nullability":
            return False
        return kind not in self.exclude


class SchemaEvolutionConfig(EvolutionPolicy):
    """The ``schema_evolution`` section: the integration's policy and per-table overrides."""

    tables: dict[str, EvolutionPolicy] = Field(default_factory=dict)
    """Per-table overrides: table pattern -> policy (first matching pattern wins)."""

    @field_validator("tables")
    @classmethod
    def _patterns(cls, value: dict[str, EvolutionPolicy]) -> dict[str, EvolutionPolicy]:
        for pattern in value:
            compile_pattern(pattern)
        return value

    def for_table(self, table: object) -> EvolutionPolicy:
        for pattern, policy in self.tables.items():
            if compile_pattern(pattern).matches(table):
                return policy
        return EvolutionPolicy(behavior=self.behavior, include=self.include, exclude=self.exclude)
