"""Helpers for table-driven golden files: one case per line, ``input | ... | expected``.

Lines starting with ``#`` and blank lines are ignored. With ``ZETL_UPDATE_GOLDEN=1`` a test
rewrites the expected column of its file with what the code produces now (review the diff).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

GOLDEN = Path(__file__).resolve().parent.parent / "golden"


@dataclass(frozen=True)
class Case:
    file: Path
    line: int
    inputs: tuple[str, ...]
    expected: str

    @property
    def id(self) -> str:
        return f"{self.file.name}:{self.line}"


def cases(relative: str, columns: int) -> list[Case]:
    """The cases of ``tests/golden/<relative>``, each split in ``columns`` fields on `` | ``."""
    path = GOLDEN / relative
    out: list[Case] = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        parts = [p.strip() for p in raw.split(" | ")]
        if len(parts) != columns:
            raise AssertionError(f"{path}:{number}: expected {columns} fields separated by ' | ', got {len(parts)}")
        out.append(Case(path, number, tuple(parts[:-1]), parts[-1]))
    return out


def check(case: Case, actual: str) -> None:
    """Assert ``actual == case.expected``, or record it when updating golden files."""
    if os.environ.get("ZETL_UPDATE_GOLDEN") == "1":
        lines = case.file.read_text().splitlines()
        head = lines[case.line - 1].rsplit(" | ", 1)[0]
        lines[case.line - 1] = f"{head} | {actual}"
        case.file.write_text("\n".join(lines) + "\n")
        return
    assert actual == case.expected, f"{case.id}\n  inputs:   {case.inputs}\n  expected: {case.expected}\n  actual:   {actual}"


def params(relative: str, columns: int) -> Callable[..., object]:
    import pytest

    found = cases(relative, columns)
    return pytest.mark.parametrize("case", found, ids=[c.id for c in found])
