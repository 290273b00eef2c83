"""KV-cache memory for decoding: bytes per token, the memory a device has left, and the page pool to allocate.

The pool is sized before anything is allocated, to the work and no larger: the pages the `slots` longest
sequences (prompt + new tokens) need at once, rounded up to one of 8 sizes per power of two (at most 1/8
more, so pools of similar work share compiled programs). When that exceeds the budget it gets the budget
(then prompts wait for pages: the batch is split over time), and when even the longest single sequence does
not fit it refuses with the numbers. So decoding never runs out of memory halfway through an eval, and a
small model on a few prompts never holds a pool sized for the device.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from sciriff_jax.decoding.scheduler import pages_for

# Share of the free memory the cache may take by default: prefill activations and XLA's scratch need the rest.
DEFAULT_BUDGET_SHARE = 0.5
# On a CPU the cache is host memory the whole machine shares, and a decode step reads the weights once plus every
# live row's cache, so past a cache the size of the weights more rows add less and less speed (tokens/step grow
# with the rows, and so does the step's time) but all their memory; and a CPU eval's time goes mostly to prefill.
# So a CPU's default budget is this many weights (a 135M model's eval on the shared tasks: about 2 GB in all).
CPU_BUDGET_WEIGHTS = 1
CPU_BUDGET_MIN = 256 * 2 ** 20


def bytes_per_token(config, dtype) -> int:
    """KV-cache bytes of one token position: keys and values of every layer."""
    return 2 * config.num_layers * config.num_kv_heads * config.head_dim * np.dtype(dtype).itemsize


def free_device_bytes(device=None) -> int | None:
    """Bytes one device can still allocate: the allocator's limit minus use (GPU/TPU), MemAvailable (CPU)."""
    device = device or jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def default_budget(weight_bytes: int, device=None) -> tuple[int | None, str]:
    """(the KV cache's budget per device when none is set, and why): half of what the device has free; on a CPU
    at most CPU_BUDGET_WEIGHTS x the weights (at least CPU_BUDGET_MIN)."""
    device = device or jax.devices()[0]
    free = free_device_bytes(device)
    share = None if free is None else int(free * DEFAULT_BUDGET_SHARE)
    if device.platform != "cpu":
        return share, "half of the free device memory"
    cap = max(CPU_BUDGET_WEIGHTS * int(weight_bytes), CPU_BUDGET_MIN)
    if share is not None and share < cap:
        return share, "half of the free host memory"
    return cap, (f"{CPU_BUDGET_WEIGHTS} x the weights on a CPU, where more cache adds little speed; "
                 "EvalConfig.kv_cache_bytes sets another")


@dataclasses.dataclass(frozen=True)
class PoolPlan:
    """The page pool decided for one decode: its size, what it costs, and what it holds."""

    num_pages: int              # including scratch page 0
    page_size: int
    bytes_per_token: int
    budget_bytes: int | None
    concurrent_needed: int      # pages for the `slots` longest sequences at once (+ scratch)
    shards: int = 1             # devices the pool is split over (kv heads over tensor)
    budget_note: str = ""       # where the budget came from

    @property
    def bytes(self) -> int:
        """Whole-pool bytes (all devices)."""
        return self.num_pages * self.page_size * self.bytes_per_token

    def describe(self, slots: int) -> str:
        """The log line: the pool's size, and why it is that size (the work, or the budget)."""
        gib = 2.0 ** 30
        budget = "no budget known" if self.budget_bytes is None else f"budget {self.budget_bytes / gib:.2f} GiB/device"
        if self.budget_note:
            budget += f": {self.budget_note}"
        line = (f"KV cache: {self.num_pages} pages x {self.page_size} tokens x {self.bytes_per_token / 1024:.1f} KiB "
                f"= {self.bytes / gib:.3f} GiB ({self.bytes / self.shards / gib:.3f} GiB/device; {budget}); {slots} slots")
        if self.num_pages < self.concurrent_needed:
            return line + (f"; capped by the budget: the {slots} longest sequences at once would need "
                           f"{self.concurrent_needed} pages, so rows wait for pages (the batch is split over time)")
        return line + (f"; sized to the work: the {slots} longest sequences (prompt + new tokens) at once need "
                       f"{self.concurrent_needed} pages")


def round_pool(pages: int) -> int:
    """`pages` rounded up to one of 8 sizes per power of two (its top three bits): at most 1/8 more than the work
    needs, and a bounded number of pool shapes (each shape compiles its own decode programs)."""
    low_bits = max(0, int(pages).bit_length() - 3)
    return -(-int(pages) >> low_bits) << low_bits


def plan_pool(config, needs: list[int], *, slots: int, page_size: int, dtype, budget_bytes: int | None,
              shards: int = 1, budget_note: str = "") -> PoolPlan:
    """The pool for sequences of `needs` positions (prompt + new tokens each), at most `slots` at a time.

    `budget_bytes` is per device (the pool is split over `shards` devices). Raises ValueError, naming the
    numbers and the fixes, when the longest sequence alone does not fit.
    """
    per_token = bytes_per_token(config, dtype)
    pages = sorted((pages_for(n, page_size) for n in needs), reverse=True)
    concurrent = 1 + sum(pages[:slots])
    wanted = round_pool(concurrent)
    if budget_bytes is None:
        return PoolPlan(wanted, page_size, per_token, None, concurrent, shards, budget_note)
    affordable = int(budget_bytes * shards // (page_size * per_token))
    if affordable < 1 + pages[0]:
        need = (1 + pages[0]) * page_size * per_token / shards
        raise ValueError(
            f"decode: the KV cache of the longest sequence ({max(needs)} positions: prompt + max_new_tokens) needs "
            f"{need / 2**30:.2f} GiB per device, but the budget is {budget_bytes / 2**30:.2f} GiB "
            f"({per_token / 1024:.1f} KiB per token for {config.num_layers} layers x {config.num_kv_heads} KV heads "
            f"x {config.head_dim} in {np.dtype(dtype).name}). Lower max_new_tokens or the model's max_position "
            "(prompts are cut to max_position - max_new_tokens), shard the model over more devices "
            "(MESH_LAYOUT with a tensor axis), or raise kv_cache_bytes if more memory is free.")
    return PoolPlan(min(wanted, affordable), page_size, per_token, budget_bytes, concurrent, shards, budget_note)
