"""Golden tests of the schema planner and the widening rules (tests/golden/planner/*.txt)."""

from __future__ import annotations

import pytest

from golden_util import Case, check, params
from zetl.errors import SchemaError
from zetl.events import TableId
from zetl.schema.changes import RenameColumn, SchemaChange
from zetl.schema.planner import SchemaPlan, plan
from zetl.schema.policy import EvolutionPolicy, SchemaEvolutionConfig
from zetl.schema.types import DataType, Field, Schema
from zetl.schema.widening import can_widen, unify

TABLE = TableId("", "t")


def parse_schema(text: str) -> Schema | None:
    """``id int64 pk, name string(20), price decimal(12,2) not null`` (``-`` for no table)."""
    if text == "-":
        return None
    fields: list[Field] = []
    pk: list[str] = []
    for spec in text.split(", "):
        words = spec.split()
        name, type_text, flags = words[0], words[1], " ".join(words[2:])
        if "pk" in flags:
            pk.append(name)
        fields.append(Field(name, DataType.parse(type_text), nullable="not null" not in flags and "pk" not in flags))
    return Schema.of(TABLE, fields, pk)


def parse_policy(text: str) -> tuple[EvolutionPolicy, set[str]]:
    """``lenient include=add.column exclude=drop.column sink-cannot=alter.column.type``."""
    words = text.split()
    options: dict[str, list[str]] = {}
    for word in words[1:]:
        key, _, value = word.partition("=")
        options[key] = value.split(",")
    policy = EvolutionPolicy(behavior=words[0], include=options.get("include", []), exclude=options.get("exclude", []))  # type: ignore[arg-type]
    return policy, set(options.get("sink-cannot", []))


def parse_hints(text: str) -> list[SchemaChange]:
    hints: list[SchemaChange] = []
    for spec in text.split(", "):
        if spec.startswith("rename "):
            old, new = spec[len("rename ") :].split("->")
            hints.append(RenameColumn(TABLE, old, new))
    return hints


def render(result: SchemaPlan) -> str:
    parts: list[str] = []
    for step in result.steps:
        text = f"{step.decision}{' (kept)' if step.kept else ''} {step.detected} [{step.classification}]"
        if step.changes and list(step.changes) != [step.detected]:
            text += " => " + ", ".join(str(c) for c in step.changes)
        parts.append(text)
    for source_column, target_column in sorted(result.column_map.items()):
        parts.append(f"map {source_column}->{target_column or '(dropped)'}")
    return " ; ".join(parts) or "in sync"


@params("planner/plans.txt", 5)
def test_plan(case: Case) -> None:
    policy_text, source_text, sink_text, hints_text = case.inputs
    policy, cannot = parse_policy(policy_text)
    result = plan(
        parse_schema(source_text),
        parse_schema(sink_text),
        policy,
        can_apply=lambda change: change.kind not in cannot,
        hints=parse_hints(hints_text),
    )
    check(case, render(result))


@params("planner/widening.txt", 3)
def test_widening(case: Case) -> None:
    old, new = (DataType.parse(t) for t in case.inputs)
    check(case, f"{'widens' if can_widen(old, new) else 'incompatible'}, unify={unify(old, new)}")


def test_plan_is_deterministic_and_target_matches_changes() -> None:
    source = parse_schema("id int64 pk, name string, price string, added int32")
    sink = parse_schema("id int64 pk, name string(20) not null, price int64 not null, gone int16 not null")
    policy = EvolutionPolicy()
    first = plan(source, sink, policy)
    assert first == plan(source, sink, policy)
    assert first.target is not None
    assert first.target.names == ("id", "name", "price", "added", "price__string", "gone")
    assert all(f.nullable for f in first.target.fields if f.name != "id")
    # Planning again against the new target leaves only the steps that stay by design.
    again = plan(source, first.target, policy)
    assert [s.decision for s in again.steps] == ["skip"]
    assert again.column_map == {"price": "price__string"}


def test_raise_for_failures_names_table_column_and_what_to_do() -> None:
    result = plan(parse_schema("id int64 pk, price string"), parse_schema("id int64 pk, price int64"), EvolutionPolicy(behavior="fail"))
    with pytest.raises(SchemaError) as info:
        result.raise_for_failures()
    assert info.value.column == "price" and info.value.table == "t"
    assert "schema_evolution.behavior" in info.value.message and "zetl drift" in info.value.message


def test_per_table_override_first_matching_pattern_wins() -> None:
    config = SchemaEvolutionConfig.model_validate(
        {"behavior": "evolve", "exclude": ["drop.table"], "tables": {"shop.audit_*": {"behavior": "ignore"}, "re:shop\\..*": {"behavior": "fail"}}}
    )
    assert config.for_table(TableId("shop", "audit_log")).behavior == "ignore"
    assert config.for_table(TableId("shop", "orders")).behavior == "fail"
    default = config.for_table(TableId("crm", "users"))
    assert default.behavior == "evolve" and default.exclude == ["drop.table"]
