"""Performance comparisons against the peer tools (see benchmarks/README.md); never run by the tests."""
