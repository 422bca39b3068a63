"""Benchmarks and load scenarios: `make bench`, `make reliability`."""
