"""Benchmarks: each runs as `python -m bench.<name>` from the project root and prints a table."""
