"""Rotating a Secret the CR references rolls exactly the pods that read it, within a stated bound.

Each kind of referenced Secret (the API keys, the users, the Weaviate key, the HF token) is changed
on the real apiserver; the operator's Secret watch enqueues the stacks whose pods read it, and the
reconcile puts a new digest of the key into those pod templates' checksum (never the value). The
module's operator re-checks stacks only every 600 s (resync and retry), so within the bound only the
watch event can have done it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.operator_harness import (
    OperatorProcess,
    apply_manifest,
    condition,
    get_json_or_none,
    items,
    running_operator,
    wait_for,
    wait_ready,
)
from tests.support.cluster import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

INSTANCE = "app.kubernetes.io/instance"
CHECKSUM = "h2ogpt.dev/config-checksum"
# Watch event -> patched workload: one reconcile (milliseconds to a second here) after the event
# reaches the operator. The bound leaves room for a loaded 2-core test machine.
ROTATION_BOUND_SECONDS = 10.0
NEVER = "600"  # seconds: the module operator's resync and retry, far beyond the bound


@pytest.fixture(scope="module")
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    never = ("--resync-seconds", NEVER, "--retry-seconds", NEVER, "--retry-max-seconds", NEVER)
    log_dir = tmp_path_factory.mktemp("operator")
    with running_operator(cluster, log_dir, "h2ogpt-rotation", 4, *never) as process:
        yield process


def put_secret(cluster: Cluster, namespace: str, name: str, key: str, value: str) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {key: value}}
    apply_manifest(cluster, namespace, secret)


def referencing_stack(name: str, hf_token_from: str = "hf") -> dict[str, Any]:  # noqa: S107 - a Secret name
    """TGI (it downloads the model, so it reads the HF token) with every Secret the CR can reference."""
    return {
        "apiVersion": "h2ogpt.dev/v1alpha1",
        "kind": "H2oGPTDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "org/model", "hfTokenSecretRef": {"name": hf_token_from}},
            "inference": {"engine": "tgi", "modelCache": {"enabled": False}},
            "retrieval": {"apiKeySecretRef": {"name": "weaviate"}},
            "auth": {"apiKeysSecretRef": {"name": "keys"}, "usersSecretRef": {"name": "users"}},
        },
    }


def checksums(cluster: Cluster, namespace: str, name: str) -> dict[str, str]:
    """Each workload's pod-template checksum, by workload name."""
    return {
        w["metadata"]["name"]: w["spec"]["template"]["metadata"]["annotations"][CHECKSUM]
        for w in items(cluster, "deployments,statefulsets", namespace, f"{INSTANCE}={name}")
    }


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {name for name in before if after.get(name) != before[name]}


def wait_for_roll(
    cluster: Cluster, namespace: str, name: str, before: dict[str, str], expected: set[str]
) -> tuple[float, dict[str, str]]:
    """Seconds from now until every expected workload has a new checksum, and the checksums then."""
    started = time.monotonic()

    def rolled() -> dict[str, str] | None:
        now = checksums(cluster, namespace, name)
        return now if changed(before, now) >= expected else None

    after = wait_for(rolled, ROTATION_BOUND_SECONDS, f"{sorted(expected)} to roll", interval=0.1)
    return time.monotonic() - started, after


def test_rotating_each_referenced_secret_rolls_only_its_readers_within_the_bound(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    put_secret(cluster, namespace, "keys", "H2OGPT_H2OGPT_API_KEYS", '["key-1"]')
    put_secret(cluster, namespace, "users", "auth.json", '{"alice": {"password": "one"}}')
    put_secret(cluster, namespace, "weaviate", "WEAVIATE_API_KEY", "weaviate-1")
    put_secret(cluster, namespace, "hf", "HF_TOKEN", "hf-1")
    apply_manifest(cluster, namespace, referencing_stack("rot"))
    wait_ready(cluster, namespace, "rot", timeout=90)
    api = {"rot-openai", "rot-gradio"}
    cases = [
        ("keys", "H2OGPT_H2OGPT_API_KEYS", '["key-2"]', api),
        ("users", "auth.json", '{"alice": {"password": "two"}}', api),
        ("weaviate", "WEAVIATE_API_KEY", "weaviate-2", {"rot-weaviate", *api}),
        ("hf", "HF_TOKEN", "hf-2", {"rot-inference"}),
    ]
    assert set(checksums(cluster, namespace, "rot")) == {"rot-inference", "rot-weaviate", *api}
    for secret_name, key, value, readers in cases:
        before = checksums(cluster, namespace, "rot")
        put_secret(cluster, namespace, secret_name, key, value)
        seconds, after = wait_for_roll(cluster, namespace, "rot", before, readers)
        print(f"rotated {secret_name}: {sorted(readers)} rolled after {seconds:.2f}s")
        # One reconcile writes every workload it changes: the others are already final here.
        assert changed(before, after) == readers, secret_name
    # No value reached a workload (only digests, hashed again into the checksum).
    workloads = json.dumps(items(cluster, "deployments,statefulsets", namespace, f"{INSTANCE}=rot"))
    assert [v for v in ("key-2", "alice", "weaviate-2", "hf-2") if v in workloads] == []


def test_a_missing_secret_is_reported_and_rolls_its_readers_when_it_appears(
    cluster: Cluster, namespace: str, operator: OperatorProcess
) -> None:
    put_secret(cluster, namespace, "keys", "H2OGPT_H2OGPT_API_KEYS", '["key-1"]')
    put_secret(cluster, namespace, "users", "auth.json", "{}")
    put_secret(cluster, namespace, "weaviate", "WEAVIATE_API_KEY", "weaviate-1")
    late = referencing_stack("late", hf_token_from="late-hf")
    apply_manifest(cluster, namespace, late)

    missing = "Secret 'late-hf' (spec.model.hfTokenSecretRef) not found"

    def reported_missing() -> dict[str, Any] | None:
        ready = condition(get_json_or_none(cluster, "h2ogpt", "late", "-n", namespace), "Ready")
        return ready if ready and missing in ready["message"] else None

    wait_for(reported_missing, 60, "the status to name the missing Secret")

    def warned() -> bool:  # sent just after the status, by the operator's event thread
        events = items(cluster, "events", namespace)
        return any("late-hf" in e["message"] for e in events if e.get("reason") == "NotReady")

    wait_for(warned, 10, "a NotReady Event naming the missing Secret")

    def all_workloads() -> dict[str, str] | None:
        found = checksums(cluster, namespace, "late")
        return found if len(found) == 4 else None

    before = wait_for(all_workloads, 30, "the workloads")

    put_secret(cluster, namespace, "late-hf", "HF_TOKEN", "hf-1")
    seconds, after = wait_for_roll(cluster, namespace, "late", before, {"late-inference"})
    print(f"late-hf appeared: late-inference rolled after {seconds:.2f}s")
    assert changed(before, after) == {"late-inference"}

    # Deleting it again keeps the running pods (a StatefulSet would replace its pod with one that
    # cannot start): the status says it is missing, the templates stay.
    cluster.kubectl("delete", "secret", "late-hf", "-n", namespace)
    wait_for(reported_missing, 30, "the status to name the deleted Secret")
    assert checksums(cluster, namespace, "late") == after
