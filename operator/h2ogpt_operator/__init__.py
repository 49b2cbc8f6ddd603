"""h2ogpt-platform."""
