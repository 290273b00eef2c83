"""`python -m sciriff_jax.main --gin_file=RUN.gin --gin.MACRO=value`: the t5x-style command (see run/main.py)."""
import sys

from sciriff_jax.run.main import main

if __name__ == "__main__":
    sys.exit(main())
