"""Golden test of the canonical -> Iceberg type mapping (tests/golden/iceberg_typemap.txt)."""

from __future__ import annotations

from golden_util import Case, check, params
from zetl.schema.types import DataType, TypeKind
from zetl_sinks.iceberg.typemap import CANONICAL_TO_ICEBERG, describe, same_storage, to_iceberg


@params("iceberg_typemap.txt", 2)
def test_type_mapping(case: Case) -> None:
    iceberg, back = describe(DataType.parse(case.inputs[0]))
    check(case, f"{iceberg} -> {back}")


def test_every_canonical_kind_has_a_mapping() -> None:
    assert set(CANONICAL_TO_ICEBERG) == set(TypeKind)


def test_recorded_type_is_trusted_only_for_its_storage() -> None:
    ids = iter(range(1, 100))
    assert same_storage(DataType.parse("json"), to_iceberg(DataType.parse("string"), lambda: next(ids)))
    assert not same_storage(DataType.parse("int64"), to_iceberg(DataType.parse("int32"), lambda: next(ids)))
