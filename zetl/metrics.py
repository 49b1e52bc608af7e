"""Prometheus metrics of the daemon (``zetl run --metrics-port N`` serves them on /metrics).

Per integration: rows and batches written, schema changes applied, errors, replication lag, and
the current state as a 0/1 gauge per state name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

if TYPE_CHECKING:
    from zetl.status import IntegrationStatus

__all__ = ["Metrics"]


class Metrics:
    """Counters and gauges, fed from each runner's status after every write."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        label = ["integration"]
        self.rows = Counter("zetl_rows_written", "Rows written to the sink", label, registry=self.registry)
        self.batches = Counter("zetl_batches_written", "Batches written to the sink", label, registry=self.registry)
        self.schema_changes = Counter("zetl_schema_changes_applied", "Schema changes applied to the sink", label, registry=self.registry)
        self.errors = Counter("zetl_errors", "Errors that stopped or restarted the integration", label, registry=self.registry)
        self.lag = Gauge("zetl_lag_seconds", "Seconds between the source commit of the last written change and its write", label, registry=self.registry)
        self.state = Gauge("zetl_state", "1 for the integration's current state", ["integration", "state"], registry=self.registry)
        self._seen: dict[str, tuple[int, int, int]] = {}

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)

    def observe(self, status: IntegrationStatus) -> None:
        from zetl.status import State

        name = status.integration
        rows, batches, changes = self._seen.get(name, (0, 0, 0))
        # Counters only go up: a runner's totals are cumulative across its retries.
        self.rows.labels(name).inc(max(0, status.rows_written - rows))
        self.batches.labels(name).inc(max(0, status.batches_written - batches))
        self.schema_changes.labels(name).inc(max(0, status.schema_changes - changes))
        self._seen[name] = (max(rows, status.rows_written), max(batches, status.batches_written), max(changes, status.schema_changes))
        if status.lag_seconds is not None:
            self.lag.labels(name).set(status.lag_seconds)
        for state in State:
            self.state.labels(name, state.value).set(1 if status.state is state else 0)

    def error(self, integration: str) -> None:
        self.errors.labels(integration).inc()
