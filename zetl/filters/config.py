"""The ``filters`` section of an integration."""

from __future__ import annotations

from pydantic import BaseModel

__all__ = ["FiltersConfig"]


class FiltersConfig(BaseModel):
    """Column and row filters per table."""

    model_config = {"extra": "forbid", "frozen": True}
