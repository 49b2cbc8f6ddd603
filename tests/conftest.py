"""Root conftest: fixtures live in tests/support/ and are registered here as plugins."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins: list[str] = [
    # "tests.support.<module>" for each fixture module; keep this list sorted.
    "tests.support.api_server",
    "tests.support.cluster",
    "tests.support.e2e",
    "tests.support.images",
    "tests.support.prometheus",
    "tests.support.tgi_fake",
    "tests.support.timings",
    "tests.support.weaviate",
]

# These tiers share one session's local cluster (a control plane and the machine's one real node)
# and one build of the images: under `pytest -n N --dist loadgroup` (what `make test` runs) one
# worker takes them all, in order. Every other test file is a group of its own, so that its
# module-scoped servers start once, on one worker.
ONE_CLUSTER_TIERS = frozenset({"cluster", "e2e", "images"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_dir = Path(__file__).parent
    for item in items:
        parts = item.path.relative_to(tests_dir).parts
        group = "one-cluster" if parts[0] in ONE_CLUSTER_TIERS else "/".join(parts)
        item.add_marker(pytest.mark.xdist_group(group))
