"""Benchmarks: sockrace against minimal reference servers and clients, measured in the same run."""
