"""Checkpoints and files: run paths (local or URL), JSON Lines, Orbax checkpoints, Hugging Face import/export,
and the one loader (`loader.load`) that every caller uses to get a model, its params and its vocabulary."""
