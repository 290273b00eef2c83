"""Parallelism: the device mesh and one `Sharding` object (rules, param/batch/optimizer shardings), multi-host start."""
