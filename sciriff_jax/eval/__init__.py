"""Evaluation: prompts, decoding, SciRIFF-Eval metrics, the LM judge, scoring and the eval runs.

metrics.py, judge.py and score.py are pure Python (no JAX, no TensorFlow): `seqio_tasks` and `sciriff-jax score`
import them directly. This package's __init__ stays empty of imports so that holds.
"""
