"""The compare step that keeps a steady state free of writes."""

from __future__ import annotations

from typing import Any

from h2ogpt_operator import builders, naming
from h2ogpt_operator.builders import Stack
from h2ogpt_operator.config import OperatorConfig
from h2ogpt_operator.models import H2oGPTDeploymentSpec
from h2ogpt_operator.reconcile import (
    APPLIED_HASH_ANNOTATION,
    _hold_templates_missing_a_secret,
    _stamp,
    is_subset,
    needs_apply,
)


def test_subset_tolerates_server_defaults_and_quantity_forms() -> None:
    desired = {"spec": {"replicas": 1, "resources": {"limits": {"nvidia.com/gpu": 2}}}}
    live = {
        "spec": {"replicas": 1, "revisionHistoryLimit": 10, "resources": {"limits": {"nvidia.com/gpu": "2"}}}
    }
    assert is_subset(desired, live)
    assert not is_subset({"spec": {"replicas": 2}}, live)
    assert not is_subset({"a": [1, 2]}, {"a": [1]})
    assert not is_subset({"a": True}, {"a": "True"})


def test_needs_apply_on_edit_on_removal_and_not_at_rest() -> None:
    desired = _stamp(
        {"metadata": {"name": "x", "labels": {"a": "1"}}, "spec": {"replicas": 1, "paused": False}}
    )
    live: dict[str, Any] = {
        "metadata": {
            "name": "x",
            "labels": {"a": "1"},
            "annotations": dict(desired["metadata"]["annotations"]),
        },
        "spec": {"replicas": 1, "paused": False, "extra": "default"},
    }
    assert not needs_apply(desired, live)
    assert needs_apply(desired, None)
    edited = {**live, "spec": {**live["spec"], "replicas": 5}}
    assert needs_apply(desired, edited)
    # A field dropped from the spec: the live object still has it, only the hash tells.
    smaller = _stamp({"metadata": {"name": "x", "labels": {"a": "1"}}, "spec": {"replicas": 1}})
    assert (
        smaller["metadata"]["annotations"][APPLIED_HASH_ANNOTATION]
        != live["metadata"]["annotations"][APPLIED_HASH_ANNOTATION]
    )
    assert needs_apply(smaller, live)


def test_a_deleted_secret_keeps_the_running_templates_and_its_return_rolls_only_on_a_new_value() -> None:
    stack = Stack(name="demo", namespace="ns")
    spec = H2oGPTDeploymentSpec.model_validate(
        {"model": {"name": "org/model"}, "retrieval": {"apiKeySecretRef": {"name": "wkey"}}}
    )
    present = {"wkey": {"WEAVIATE_API_KEY": "w1"}, "demo-auth": {"H2OGPT_H2OGPT_API_KEYS": "a1"}}

    def checksums(digests: builders.SecretDigests, live: dict[tuple[str, str], Any]) -> dict[str, str]:
        desired = builders.build_children(stack, spec, OperatorConfig(), digests)
        _hold_templates_missing_a_secret(desired, live, builders.workload_secrets(desired), digests)
        return {
            c["metadata"]["name"]: c["spec"]["template"]["metadata"]["annotations"][
                naming.CHECKSUM_ANNOTATION
            ]
            for c in desired
            if c["kind"] in ("Deployment", "StatefulSet")
        }

    running = checksums(present, {})
    live = {
        (kind, name): {
            "spec": {"template": {"metadata": {"annotations": {naming.CHECKSUM_ANNOTATION: value}}}}
        }
        for name, value in running.items()
        for kind in ("Deployment", "StatefulSet")
    }
    deleted = {"demo-auth": present["demo-auth"]}
    # Weaviate and the api pods read wkey: they keep their running template; inference never read it.
    assert checksums(deleted, live) == running
    # Not created yet: no template to keep, the missing key counts as empty.
    assert checksums(deleted, {})["demo-weaviate"] != running["demo-weaviate"]
    assert checksums(present, live) == running  # back with the same value: nothing rolls
    rotated = checksums({**present, "wkey": {"WEAVIATE_API_KEY": "w2"}}, live)
    assert {n for n in running if rotated[n] != running[n]} == {"demo-weaviate", "demo-openai", "demo-gradio"}
