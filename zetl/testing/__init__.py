"""zetl's test kit: in-memory and file-backed plugins, conformance suites, private servers.

Writing a custom sink? Subclass ``zetl.Sink``, then make its tests inherit
``zetl.testing.conformance.SinkConformance``: the suite checks the guarantees the runner relies on.
"""

from zetl.testing.plugins import FileSink, ListSource, MemorySink, MemorySource, MemorySourceConfig, expected_rows

__all__ = ["FileSink", "ListSource", "MemorySink", "MemorySource", "MemorySourceConfig", "expected_rows"]
