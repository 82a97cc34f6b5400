"""Benchmark scripts whose recorded output is in BENCHMARKS.md; run them as `python -m benchmarks.NAME`."""
