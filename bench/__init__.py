"""Benchmarks of the served model against the original design (`make bench`, `python -m bench --quick`)."""
