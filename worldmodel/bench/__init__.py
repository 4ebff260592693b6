"""Benchmarks: `python -m worldmodel.bench`."""
