"""GRPO's rollouts: the prompt stream, sampling G answers per prompt with the continuous batcher on the training
params, their rewards, group-normalised advantages, and the training rows built from them.

The sampler reads the params the optimizer updates (same process, same sharding: no copy, no server) and returns
each drawn token's log-probability (`decoding.batcher.token_logprobs`), which the first inner update's ratio
divides by. No TensorFlow or SeqIO here: prompts arrive as token ids with their task, scorer and reference.
"""
from __future__ import annotations

import dataclasses
import time
from typing import NamedTuple

import jax
import numpy as np

from sciriff_jax.decoding.batcher import ContinuousBatcher, Sampling
from sciriff_jax.scoring import rewards

ROW_MULTIPLE = 64  # the shortest training row; longer rows are padded to a power of two (few compiled shapes)


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One RL prompt: its task, the scorer its reward uses, the reference answer and the prompt's token ids."""

    task: str
    scorer: str
    reference: str
    tokens: tuple


class PromptStream:
    """An endless, seeded stream of prompts: each pass over them in a new order (numpy, seed + pass). Its position
    (prompts handed out) goes into checkpoints, so a resumed run draws exactly the prompts it would have."""

    def __init__(self, prompts: list[Prompt], seed: int):
        if not prompts:
            raise ValueError("GRPO: the RL mixture has no prompts with a reward (see the tasks named above)")
        self.prompts, self.seed, self.consumed = prompts, int(seed), 0

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.prompts))

    def take(self, n: int) -> list[Prompt]:
        out = []
        for k in range(self.consumed, self.consumed + n):
            epoch, i = divmod(k, len(self.prompts))
            out.append(self.prompts[int(self._order(epoch)[i])])
        self.consumed += n
        return out

    def state(self) -> dict:
        return {"prompts_consumed": self.consumed, "batches_consumed": self.consumed}

    def restore(self, state: dict) -> None:
        self.consumed = int(state.get("prompts_consumed", 0))

    def close(self) -> None:
        pass


class LoraPolicy(NamedTuple):
    """A LoRA policy for the sampler: {"params": base, "lora": adapters} and its model/lora.py LoraConfig (the
    adapters applied beside the frozen base, never merged into a copy)."""

    variables: dict
    lora: object


@dataclasses.dataclass
class Samples:
    """One update's rollouts: per answer its prompt index, response tokens (EOS included when drawn), their
    log-probabilities as sampled, its text and reward; and the rollout's wall time."""

    prompt_index: list
    responses: list
    logprobs: list
    texts: list
    rewards: list
    seconds: float = 0.0

    @property
    def tokens(self) -> int:
        return sum(len(r) for r in self.responses)


def sample_answers(config, params, prompts: list[Prompt], group: int, *, sampling: Sampling, max_new_tokens: int,
                   chat_format, rng, slots: int = 32, sharding=None):
    """`group` answers per prompt from the policy `params` (the training arrays themselves, or a LoraPolicy);
    returns Samples without rewards. The answers of prompt p are rows p*group .. p*group+group-1."""
    start = time.time()
    rows = [list(p.tokens) for p in prompts for _ in range(group)]
    lora = params.lora if isinstance(params, LoraPolicy) else None
    batcher = ContinuousBatcher(config, params.variables if lora is not None else params, eos_id=chat_format.eos_id,
                                slots=slots, sampling=sampling, sharding=sharding, log=None)
    batcher.lora = lora
    tokens = batcher.run(rows, [max_new_tokens] * len(rows), rng=rng, logprobs=True)
    responses = [t + [chat_format.eos_id] if len(lp) == len(t) + 1 else list(t)
                 for t, lp in zip(tokens, batcher.logprobs)]
    texts = [chat_format.decode(t) for t in tokens]
    index = [p for p in range(len(prompts)) for _ in range(group)]
    return Samples(index, responses, list(batcher.logprobs), texts, [], time.time() - start)


def score_answers(samples: Samples, prompts: list[Prompt], *, format_weight: float = 0.0, judge=None,
                  variant: str = "metric") -> Samples:
    """Fill in each answer's reward (scoring.rewards: the task's SciRIFF-Eval metric on this one instance, or its
    `variant`)."""
    samples.rewards = [rewards.reward(prompts[p].scorer, prompts[p].reference, text, format_weight=format_weight,
                                      judge=judge, variant=variant)
                       for p, text in zip(samples.prompt_index, samples.texts)]
    return samples


def advantages(totals: np.ndarray, group: int, *, scale: bool = True, eps: float = 1e-6) -> np.ndarray:
    """Group-normalised advantages: (r - mean of its group) / (std of its group + eps) (GRPO), or without the std
    division (`scale=False`, Dr.GRPO). A group whose answers all scored the same gets 0 (no signal)."""
    r = np.asarray(totals, np.float64).reshape(-1, group)
    centred = r - r.mean(axis=1, keepdims=True)
    if scale:
        centred = centred / (r.std(axis=1, keepdims=True) + eps)
    return centred.reshape(-1).astype(np.float32)


def row_length(samples: Samples, prompts: list[Prompt], max_position: int) -> int:
    """Training row length: the longest prompt + answer (less one: inputs stop before the last token), rounded up
    to a power of two of at least ROW_MULTIPLE (so the update compiles for a handful of shapes only), at most the
    model's context."""
    longest = max(len(prompts[p].tokens) + len(r) - 1 for p, r in zip(samples.prompt_index, samples.responses))
    return min(max(ROW_MULTIPLE, 1 << (longest - 1).bit_length()), max_position)


def token_weights(lengths: np.ndarray, aggregation: str, max_new_tokens: int) -> np.ndarray:
    """Each answer's per-token weight in the loss sum: 1/(its length * rows) ("sequence": GRPO's mean of per-answer
    means), 1/(all answer tokens) ("token": DAPO), 1/(rows * max_new_tokens) ("constant": Dr.GRPO)."""
    lengths = np.maximum(np.asarray(lengths, np.float64), 1)
    n = len(lengths)
    if aggregation == "sequence":
        return (1.0 / (lengths * n)).astype(np.float32)
    if aggregation == "token":
        return np.full(n, 1.0 / lengths.sum(), np.float32)
    if aggregation == "constant":
        return np.full(n, 1.0 / (n * max_new_tokens), np.float32)
    raise ValueError(f"GRPO: loss_aggregation={aggregation!r}; choose sequence (GRPO), token (DAPO) or constant "
                     "(Dr.GRPO) (LOSS_AGGREGATION)")


def training_rows(samples: Samples, prompts: list[Prompt], adv: np.ndarray, weights: np.ndarray,
                  length: int) -> dict:
    """[rows, length] arrays: inputs / positions / segment ids of prompt + answer, targets, the answer-only mask,
    the sampler's log-probabilities of those targets, each token's advantage and its loss weight."""
    n = len(samples.responses)
    out = {k: np.zeros((n, length), np.int32) for k in ("inputs", "positions", "segment_ids", "targets")}
    out.update({k: np.zeros((n, length), np.float32) for k in ("mask", "old_logprobs", "advantages", "weights")})
    for i, (p, resp, lps) in enumerate(zip(samples.prompt_index, samples.responses, samples.logprobs)):
        prompt = list(prompts[p].tokens)
        seq = (prompt + resp)[:length + 1]
        m = len(seq) - 1
        out["inputs"][i, :m], out["targets"][i, :m] = seq[:-1], seq[1:]
        out["positions"][i, :m], out["segment_ids"][i, :m] = np.arange(m), 1
        first = len(prompt) - 1  # the target at input position len(prompt) - 1 is the answer's first token
        k = m - first
        out["mask"][i, first:m] = 1.0
        out["old_logprobs"][i, first:m] = lps[:k]
        out["advantages"][i, first:m] = adv[i]
        out["weights"][i, first:m] = weights[i]
    return out


def reward_metrics(samples: Samples, prompts: list[Prompt]) -> dict:
    """Mean / std reward (total, task term, format term = parse rate), per task, and the mean answer length."""
    totals = np.array([r.total for r in samples.rewards])
    out = {"reward_mean": float(totals.mean()), "reward_std": float(totals.std()),
           "task_reward_mean": float(np.mean([r.task for r in samples.rewards])),
           "parse_rate": float(np.mean([r.format for r in samples.rewards])),
           "response_length_mean": float(np.mean([len(r) for r in samples.responses]))}
    by_task: dict[str, list] = {}
    for p, r in zip(samples.prompt_index, samples.rewards):
        by_task.setdefault(prompts[p].task, []).append(r.total)
    for task, values in sorted(by_task.items()):
        out[f"reward/{task}/mean"] = float(np.mean(values))
        out[f"reward/{task}/std"] = float(np.std(values))
    return out


def rollout_key(seed: int, step: int):
    """The sampling key of update `step`: a function of the seed and the step only, so a resumed run samples the
    same answers as an uninterrupted one."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), step)
