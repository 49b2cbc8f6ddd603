"""Prometheus metrics of the operator (names fixed by docs/architecture.md, "Metrics contract")."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("h2ogpt_operator_reconciles_total", "Reconciles of H2oGPTDeployments.", ["result"])
RECONCILE_DURATION = Histogram(
    "h2ogpt_operator_reconcile_duration_seconds",
    "Duration of one reconcile.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STACKS = Gauge("h2ogpt_operator_stacks", "Managed H2oGPTDeployments by readiness.", ["ready"])
STACK_READY = Gauge(
    "h2ogpt_operator_stack_ready",
    "1 while the H2oGPTDeployment's Ready condition is True, else 0 (one series per stack).",
    ["namespace", "name"],
)
API_WRITES = Counter(
    "h2ogpt_operator_api_writes_total", "Writes the operator sent to the apiserver.", ["verb", "kind"]
)
API_READS = Counter(
    "h2ogpt_operator_api_reads_total",
    "Reads (GET, LIST) the operator sent to the apiserver; its watches are not counted.",
    ["verb", "kind"],
)
LEADER = Gauge("h2ogpt_operator_leader", "1 while this replica holds the leader Lease.")
WORKQUEUE_DEPTH = Gauge("h2ogpt_operator_workqueue_depth", "Stacks waiting for a reconcile worker.")
WORKQUEUE_RETRYING = Gauge(
    "h2ogpt_operator_workqueue_retrying", "Stacks waiting out their retry backoff (not settled)."
)
WORKQUEUE_RETRIES = Counter(
    "h2ogpt_operator_workqueue_retries_total", "Retries scheduled for stacks that did not settle."
)
WORKQUEUE_QUEUE_DURATION = Histogram(
    "h2ogpt_operator_workqueue_queue_duration_seconds",
    "Time a stack waited in the work queue before a worker took it.",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EVENTS_DROPPED = Counter(
    "h2ogpt_operator_events_dropped_total",
    "Events not sent because the queue of Events waiting for the apiserver was full.",
)
AUTOSCALER_DESIRED = Gauge(
    "h2ogpt_operator_autoscaler_desired_replicas",
    "Inference replicas the autoscaler last decided on (stacks with spec.inference.autoscaling).",
    ["namespace", "name"],
)
AUTOSCALER_LOOKS = Counter(
    "h2ogpt_operator_autoscaler_looks_total",
    "Looks at an autoscaled stack, by what started them: the interval (poll), its api pods' Lease (demand).",
    ["trigger"],
)
AUTOSCALER_CURRENT = Gauge(
    "h2ogpt_operator_autoscaler_current_replicas",
    "Inference replicas the Deployment had when the autoscaler last looked.",
    ["namespace", "name"],
)


def publish_autoscaling(namespace: str, name: str, replicas: tuple[int, int] | None) -> None:
    """One autoscaled stack's (desired, current); None (not autoscaled any more, or gone) removes them."""
    for gauge, value in zip((AUTOSCALER_DESIRED, AUTOSCALER_CURRENT), replicas or (None, None), strict=True):
        if value is None:
            with contextlib.suppress(KeyError):  # never published
                gauge.remove(namespace, name)
        else:
            gauge.labels(namespace=namespace, name=name).set(value)


def count_write(verb: str, kind: str) -> None:
    API_WRITES.labels(verb=verb, kind=kind).inc()


def count_read(verb: str, kind: str) -> None:
    API_READS.labels(verb=verb, kind=kind).inc()


def publish_readiness(readiness: dict[tuple[str, str], bool]) -> None:
    ready = sum(1 for value in readiness.values() if value)
    STACKS.labels(ready="true").set(ready)
    STACKS.labels(ready="false").set(len(readiness) - ready)


def publish_stack_ready(namespace: str, name: str, ready: bool | None) -> None:
    """One stack's series; None (the stack is gone) removes it, so deleted stacks do not linger."""
    if ready is None:
        try:
            STACK_READY.remove(namespace, name)
        except KeyError:
            return
    else:
        STACK_READY.labels(namespace=namespace, name=name).set(1 if ready else 0)
