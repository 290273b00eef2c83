"""The chat format: a vocabulary + a chat template as one value (`format.ChatFormat`), their rendering to token ids
with the loss mask (`render`), and models' own Jinja templates (`jinja`). Pure Python: no TensorFlow, no SeqIO."""
