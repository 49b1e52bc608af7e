"""Column and row filters applied between the source and the sink."""

from zetl.filters.config import FiltersConfig

__all__ = ["FiltersConfig"]
