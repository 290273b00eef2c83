"""The decoding engine shared by evaluation and rollouts: `generate` (greedy or sampled, stops on EOS / strings),
the continuous batcher over a paged KV cache, its slot scheduler and the KV-cache memory plan."""
