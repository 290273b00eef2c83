"""Scoring: the SciRIFF-Eval answer parsing and metrics, the LM judge client, JSON Lines with file:line errors, and
`sciriff-jax score`. Pure Python, the leaf of the import graph: it imports nothing of `seqio_tasks` or of the rest
of `sciriff_jax`, so SeqIO tasks, eval and `score` use it without JAX or TensorFlow."""
