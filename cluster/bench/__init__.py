"""Benchmarks: programs that print JSON (``make bench``), never timed tests."""
