"""Reusable field types for configuration models."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

__all__ = ["Duration", "parse_duration"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``5`` or ``"5s"`` -> 5.0 seconds; ``"250ms"``, ``"2m"``, ``"1h"``, ``"1d"`` likewise."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 5s, 250ms or 2m")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"expected a duration such as 5s, 250ms or 2m, got {value!r}")


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds; YAML may say ``5``, ``"5s"``, ``"250ms"``, ``"2m"``, ``"1h"`` or ``"1d"``."""
