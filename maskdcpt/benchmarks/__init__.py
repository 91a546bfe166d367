"""Benchmarks behind ``python tools/benchmark.py SUBJECT``: each module has ``main(argv)``."""
