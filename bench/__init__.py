"""Benchmark of the real bot process (``python -m bench``); see bench/cli.py and README "Performance"."""
