"""Entry points: the gin run (`main`), the `sciriff-jax` CLI, ahead-of-time compilation, and gin registration."""
