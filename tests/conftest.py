"""Root conftest: fixtures live in tests/support/ and are registered here as plugins."""

pytest_plugins: list[str] = [
    # "tests.support.<module>" for each fixture module; keep this list sorted.
]
