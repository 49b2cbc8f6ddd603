"""The compare step that keeps a steady state free of writes."""

from __future__ import annotations

from typing import Any

from h2ogpt_operator.reconcile import APPLIED_HASH_ANNOTATION, _stamp, is_subset, needs_apply


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
