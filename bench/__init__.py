"""Benchmarks (make bench): not part of the timed test suite."""
