"""Training: the optimizer, the step, the loop, run logging, one setup shared by `finetune` and `aot`, the run."""
