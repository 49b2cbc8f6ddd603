"""Prometheus metrics of the operator (names fixed by docs/architecture.md, "Metrics contract")."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("h2ogpt_operator_reconciles_total", "Reconciles of H2oGPTDeployments.", ["result"])
RECONCILE_DURATION = Histogram(
    "h2ogpt_operator_reconcile_duration_seconds",
    "Duration of one reconcile.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STACKS = Gauge("h2ogpt_operator_stacks", "Managed H2oGPTDeployments by readiness.", ["ready"])
API_WRITES = Counter(
    "h2ogpt_operator_api_writes_total", "Writes the operator sent to the apiserver.", ["verb", "kind"]
)
LEADER = Gauge("h2ogpt_operator_leader", "1 while this replica holds the leader Lease.")


def count_write(verb: str, kind: str) -> None:
    API_WRITES.labels(verb=verb, kind=kind).inc()


def publish_readiness(readiness: dict[tuple[str, str], bool]) -> None:
    ready = sum(1 for value in readiness.values() if value)
    STACKS.labels(ready="true").set(ready)
    STACKS.labels(ready="false").set(len(readiness) - ready)
