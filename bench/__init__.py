"""Benchmarks run by `make bench`: each module named ``*_bench.py`` exposes ``run() -> str`` (a markdown section)."""
