"""Data: SeqIO mixtures (`seqio_tasks`) -> per-host numpy rows -> global batches on the mesh (batches.py)."""
