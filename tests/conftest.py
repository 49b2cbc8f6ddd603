"""Root conftest: fixtures live in tests/support/ and are registered here as plugins."""

pytest_plugins: list[str] = [
    # "tests.support.<module>" for each fixture module; keep this list sorted.
    "tests.support.api_server",
    "tests.support.cluster",
    "tests.support.e2e",
    "tests.support.images",
    "tests.support.prometheus",
    "tests.support.tgi_fake",
    "tests.support.weaviate",
]
