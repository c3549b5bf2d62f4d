"""Benchmarks: each bench_<name>.run(quick) measures a figure and its baseline in the same run."""
