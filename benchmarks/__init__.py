"""Speed benchmarks for sciriff-jax (run as `python -m benchmarks.<name>` from the repository root)."""
