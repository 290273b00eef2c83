"""Evaluation: the eval protocol, prompts, predictions kept as they finish, progress and the eval / infer runs.
Decoding is `sciriff_jax.decoding`'s; the metrics, judge and `score` are `sciriff_jax.scoring`'s."""
