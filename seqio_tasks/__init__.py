"""SciRIFF as SeqIO tasks and mixtures: `import seqio_tasks` registers everything."""
