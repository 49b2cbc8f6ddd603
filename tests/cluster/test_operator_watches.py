"""The operator reads from its watches, backs off per stack, and prunes what it no longer wants.

Each test runs its own operator (limited to the test's namespace) so that the counters it reads,
the operator's and the apiserver's, are not shared with another test's operator.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.operator_harness import (
    ALL_NAMESPACES_RELEASE,
    NAMESPACED_RELEASE,
    OperatorProcess,
    audit_events,
    get_json_or_none,
    install_crd,
    items,
    operator_user,
    provide_volumes,
    remove_volumes,
    wait_ready,
)
from tests.support.cluster import Cluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

INSTANCE = "app.kubernetes.io/instance"


@pytest.fixture(scope="module")
def volumes(cluster: Cluster) -> Iterator[None]:
    install_crd(cluster)
    tag = uuid.uuid4().hex[:6]
    provide_volumes(cluster, 8, tag)
    yield
    remove_volumes(cluster, tag)


@pytest.fixture
def start_operator(
    cluster: Cluster, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    started: list[OperatorProcess] = []

    def start(*extra: str) -> OperatorProcess:
        lease = f"h2ogpt-operator-{uuid.uuid4().hex[:6]}"
        operator = OperatorProcess(
            cluster, tmp_path_factory.mktemp("watches"), lease, "--namespace", namespace, *extra
        )
        operator.start()
        started.append(operator)
        wait_for(operator.is_leader, 30, "the Lease")
        return operator

    yield start
    for operator in started:
        operator.stop()


def stack(name: str, **spec: Any) -> str:
    return json.dumps({
        "apiVersion": "h2ogpt.dev/v1alpha1", "kind": "H2oGPTDeployment", "metadata": {"name": name},
        "spec": {"model": {"name": "org/model"}, **spec},
    })  # fmt: skip


def reads_besides_the_lease(operator: OperatorProcess) -> float:
    return sum(
        value
        for key, value in operator.metrics().items()
        if key.startswith("h2ogpt_operator_api_reads_total") and 'kind="Lease"' not in key
    )


def operator_reads_in_audit_log(cluster: Cluster) -> int:
    """GET and LIST requests by the operator's ServiceAccounts, besides the Lease, as the apiserver
    recorded them (its audit log): the operator's own counter checked from the other side."""
    users = {operator_user(ALL_NAMESPACES_RELEASE), operator_user(NAMESPACED_RELEASE)}
    return sum(
        1
        for event in audit_events(cluster, users)
        if event.get("verb") in ("get", "list") and (event.get("objectRef") or {}).get("resource") != "leases"
    )


def test_steady_state_reads_nothing_but_the_lease(
    cluster: Cluster, namespace: str, volumes: None, start_operator: Any
) -> None:
    operator: OperatorProcess = start_operator()
    names = ["rest-a", "rest-b"]
    for name in names:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=stack(name))
    for name in names:
        wait_ready(cluster, namespace, name)
    wait_for(
        lambda: all(p["status"].get("phase") == "Running" for p in items(cluster, "pods", namespace)),
        20,
        "all pods Running",
    )
    # One series per stack, named, for alerts that say which stack is not Ready.
    samples = operator.metrics()
    for name in names:
        assert samples[f'h2ogpt_operator_stack_ready{{name="{name}",namespace="{namespace}"}}'] == 1.0

    reads = reads_besides_the_lease(operator)
    served = operator_reads_in_audit_log(cluster)
    reconciles = operator.metric_sum("h2ogpt_operator_reconciles_total")
    # Several resyncs (3 s each in the harness) of both stacks, shown by the counter, not assumed;
    # nothing in this window reads the CRs (the test polls only the operator's /metrics).
    wait_for(
        lambda: operator.metric_sum("h2ogpt_operator_reconciles_total") >= reconciles + 3 * len(names),
        30,
        "three resyncs of each stack",
    )
    assert reads_besides_the_lease(operator) == reads
    assert operator_reads_in_audit_log(cluster) == served

    # A deleted stack's series goes with it.
    cluster.kubectl("delete", "h2ogpt", "rest-b", "-n", namespace)
    wait_for(
        lambda: not any('name="rest-b"' in key for key in operator.metrics()),
        20,
        "the deleted stack's readiness series to go",
    )


def _error_reconcile_times(operator: OperatorProcess, seconds: float) -> list[float]:
    """When the operator's failed-reconcile counter went up, polling its /metrics every 50 ms."""
    times: list[float] = []
    last = operator.metric_sum('h2ogpt_operator_reconciles_total{result="error"}')
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        now = operator.metric_sum('h2ogpt_operator_reconciles_total{result="error"}')
        if now > last:
            times.append(time.monotonic() - start)
            last = now
        time.sleep(0.05)
    return times


def test_a_refused_child_is_retried_with_growing_delays(
    cluster: Cluster, namespace: str, volumes: None, start_operator: Any
) -> None:
    # A quota of zero Deployments: every apply of the stack's Deployments is refused (403).
    quota = {
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-deployments"},
        "spec": {"hard": {"count/deployments.apps": "0"}},
    }  # fmt: skip
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(quota))
    operator: OperatorProcess = start_operator("--retry-seconds", "0.5", "--retry-max-seconds", "4")
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=stack("refused"))

    def refused() -> dict[str, Any] | None:
        cr = get_json_or_none(cluster, "h2ogpt", "refused", "-n", namespace)
        ready = next(
            (c for c in (cr or {}).get("status", {}).get("conditions", []) if c["type"] == "Ready"), None
        )
        return cr if ready and "refused" in ready["message"] else None

    # Watched from the first refusal on (under load the status may show it only after the growth).
    retries_before = operator.metric_sum("h2ogpt_operator_workqueue_retries_total")
    times = _error_reconcile_times(operator, 18)
    cr = wait_for(refused, 30, "the refusal in the status")
    assert "exceeded quota" in json.dumps(cr["status"])
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # A fixed 0.5 s retry would fail about 36 times in 18 s; doubling up to 4 s, about 6 retries,
    # plus the reconciles that watch events (the CR, its other children) bring at the start.
    assert 3 <= len(times) <= 16, times
    assert gaps[-1] >= 3.5, gaps  # at the cap
    # Never beyond it: the cap plus a reconcile's own time and the timer's lateness on a loaded
    # machine (4.59 s seen once in `make test`); a doubling without a cap would reach 8 s.
    assert max(gaps) <= 5.5, gaps
    assert gaps[-1] > 2 * min(gaps), gaps  # it grew
    # The first refusals come from watch events (the CR, its children); the capped ones are retries.
    capped = [gap for gap in gaps if gap >= 3.5]
    assert operator.metric_sum("h2ogpt_operator_workqueue_retries_total") >= retries_before + len(capped)
    assert operator.metrics()["h2ogpt_operator_workqueue_retrying"] == 1.0

    # Fixed: the next retry (at most the cap away) finds it, and the backoff is reset.
    cluster.kubectl("delete", "resourcequota", "no-deployments", "-n", namespace)
    started = time.monotonic()
    wait_ready(cluster, namespace, "refused", timeout=30)
    assert time.monotonic() - started < 15
    wait_for(
        lambda: operator.metrics()["h2ogpt_operator_workqueue_retrying"] == 0.0,
        10,
        "no stack waiting out a backoff",
    )


def test_service_monitor_is_pruned_when_monitoring_is_turned_off(
    cluster: Cluster, namespace: str, volumes: None, prometheus_operator_crds: None, start_operator: Any
) -> None:
    start_operator()
    monitored = {"monitoring": {"serviceMonitor": {"enabled": True}}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=stack("watched", **monitored))
    wait_ready(cluster, namespace, "watched")

    def monitors() -> list[dict[str, Any]]:
        return items(cluster, "servicemonitors", namespace, f"{INSTANCE}=watched")

    (monitor,) = wait_for(monitors, 20, "the stack's ServiceMonitor")
    assert monitor["metadata"]["ownerReferences"][0]["kind"] == "H2oGPTDeployment"

    unmonitored = {"monitoring": {"serviceMonitor": {"enabled": False}}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=stack("watched", **unmonitored))
    wait_for(lambda: not monitors(), 20, "the ServiceMonitor to be pruned")
    wait_ready(cluster, namespace, "watched")

    def told_of_the_prune() -> bool:
        # Events are sent after the reconcile that made them, by the operator's event thread.
        return any(
            e.get("reason") == "Deleted" and "ServiceMonitor/watched-" in e.get("message", "")
            for e in items(cluster, "events", namespace, "")
        )

    wait_for(told_of_the_prune, 10, "a Deleted Event naming the ServiceMonitor")
