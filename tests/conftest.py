"""Root conftest: fixtures live in tests/support/ and are registered here as plugins."""

from __future__ import annotations

from typing import Any

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
# and one build of the images: under pytest-xdist (`make test` runs two workers) one worker takes
# them all, in order. Every other test file is a unit of its own, so that its module-scoped
# servers start once, on one worker.
ONE_CLUSTER_TIERS = ("tests/cluster/", "tests/e2e/", "tests/images/")


def pytest_xdist_make_scheduler(config: Any, log: Any) -> Any:
    """pytest-xdist's scope scheduling with our units of work. (Its `--dist loadgroup` is meant to
    do this from `xdist_group` marks, but with pytest 9.2 and xdist 3.8 it did not group here: the
    tests of one marked group went to both workers.)"""
    from xdist.scheduler import LoadScopeScheduling  # noqa: PLC0415 (only where xdist runs)

    class OneClusterScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(ONE_CLUSTER_TIERS):
                return "one-cluster"
            return nodeid.split("::", 1)[0]

    return OneClusterScheduling(config, log)
