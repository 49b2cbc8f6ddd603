"""Benchmarks of h2ogpt-platform; `make bench` runs them all (see bench/README.md)."""
