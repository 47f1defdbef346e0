"""Benchmarks: run one as ``python -m bench.<name>``; each prints its numbers side by side."""
