"""The one attention entry point; backends live in attention_*.py and are picked here.

Shapes: q [B, Lq, H, D], k and v [B, Lk, KV, D] with KV dividing H (grouped-query attention);
segment_ids [B, L] (packed rows: tokens attend only within their own segment). Output [B, Lq, H, D].
"""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp

from sciriff_jax.model.attention_blockwise import blockwise_attention
from sciriff_jax.model.attention_cudnn import cudnn_attention  # its cuDNN internals load on first call
from sciriff_jax.model.attention_ring import ring_attention
from sciriff_jax.model.attention_splash import splash_attention  # its Pallas kernels load on first call
from sciriff_jax.model.config import ATTENTION_BACKENDS
from sciriff_jax.model.online_softmax import MASK_VALUE

log = logging.getLogger(__name__)

BACKENDS = ATTENTION_BACKENDS  # declared once, with the config field
# The fused kernels and the one platform each runs on (the others are XLA and run anywhere).
_KERNEL_PLATFORMS = {"cudnn": "gpu", "splash": "tpu"}
# Up to this many tokens per row, materialising S x S is cheaper than blockwise bookkeeping, and the blockwise
# tile that is fastest, per platform (measured on a 2-core CPU, fwd+bwd at 4,096 tokens per call, 9 heads of 64:
# blockwise 256 beats the reference 1.1x at 512 tokens, 2.4x at 1,024 and 3.6x at 2,048, and the 128 / 512 tiles
# at every length from 512; BENCHMARKS.md section 9.5, `python -m benchmarks.train_parts --sweep ...`).
# Per platform: (reference up to this many tokens per row, blockwise tile); other platforms take the default.
_XLA_CHOICE = {"cpu": (256, 256)}
_XLA_DEFAULT = (2048, 512)


def make_mask(q_len: int, k_len: int, segment_ids=None, kv_segment_ids=None, causal: bool = True,
              q_offset=0) -> jnp.ndarray:
    """Boolean [B or 1, Lq, Lk] mask: causal (query i sees keys <= i + q_offset) and same segment."""
    qi = jnp.arange(q_len)[:, None] + q_offset
    ki = jnp.arange(k_len)[None, :]
    mask = (qi >= ki) if causal else jnp.ones((q_len, k_len), bool)
    mask = mask[None]
    if segment_ids is not None:
        kv_seg = segment_ids if kv_segment_ids is None else kv_segment_ids
        mask = mask & (segment_ids[:, :, None] == kv_seg[:, None, :])
    return mask


def reference_attention(q, k, v, mask=None) -> jnp.ndarray:
    """Plain XLA attention materialising the [Lq, Lk] scores; softmax in float32. mask: [B|1, Lq, Lk]."""
    b, lq, h, d = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, lq, kv, h // kv, d)
    scores = jnp.einsum("bqkgd,bskd->bkgqs", qg, k, preferred_element_type=jnp.float32)
    scores = scores * (d ** -0.5)
    if mask is not None:
        scores = jnp.where(mask[:, None, None], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgqs,bskd->bqkgd", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(b, lq, h, d).astype(q.dtype)


def _context_size(mesh) -> int:
    return 1 if mesh is None or "context" not in mesh.shape else int(mesh.shape["context"])


def select_backend(backend: str, q, segment_ids=None, mesh=None, platform: str | None = None) -> str:
    """Resolve "auto" to a concrete backend for this platform/dtype/mesh, logging why others were skipped.

    `platform` ("cpu", "gpu", "tpu") is the one the program will run on; None means `jax.default_backend()`.
    Ahead-of-time compilation passes the target's, since the compiling host may be a CPU. Given a platform, a
    backend whose kernel does not run there is refused (a run checks at start, before data or compilation).
    """
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"attention backend {backend!r} is unknown; choose one of {BACKENDS}.")
        needs = _KERNEL_PLATFORMS.get(backend)
        if platform is not None and needs is not None and platform != needs:
            runs = [b for b in BACKENDS if _KERNEL_PLATFORMS.get(b, platform) == platform]
            raise ValueError(f"attention backend {backend!r} runs only on {needs} and this run is on {platform}; "
                             f"choose one of {runs} ('auto' picks the fastest that runs here).")
        return backend
    if _context_size(mesh) > 1:
        return "ring"
    platform = jax.default_backend() if platform is None else platform
    length = q.shape[1]
    if platform == "gpu":
        if q.dtype in (jnp.bfloat16, jnp.float16) and q.shape[-1] <= 128 and q.shape[-1] % 8 == 0:
            return "cudnn"
        log.info("attention auto: cuDNN needs bf16/fp16 and head_dim <= 128 (a multiple of 8); got %s, "
                 "head_dim %d; falling back to XLA.", q.dtype, q.shape[-1])
    elif platform == "tpu":
        if length % 128 == 0:
            return "splash"
        log.info("attention auto: splash needs rows that are a multiple of 128 tokens (got %d); "
                 "falling back to XLA.", length)
    else:
        log.debug("attention auto: no fused attention kernel on platform %r; using XLA.", platform)
    if length > _XLA_CHOICE.get(platform, _XLA_DEFAULT)[0]:
        return "blockwise"
    return "reference"


def blockwise_tile(platform: str | None = None) -> int:
    """The blockwise backend's query / key tile on `platform` (None: `jax.default_backend()`)."""
    return _XLA_CHOICE.get(jax.default_backend() if platform is None else platform, _XLA_DEFAULT)[1]


def platform_of(mesh) -> str | None:
    """The platform of a mesh's devices (ahead-of-time compilation: the target's, not the compiling host's); None
    without a mesh (then the host's, `jax.default_backend()`)."""
    devices = getattr(mesh, "devices", None)
    return None if devices is None else devices.flat[0].platform


def attention(q, k, v, *, segment_ids=None, causal: bool = True, backend: str = "auto", mesh=None):
    """Causal (packed-aware) grouped-query attention through the chosen backend, for the platform of `mesh`'s
    devices (without a mesh, this host's)."""
    platform = platform_of(mesh)
    name = select_backend(backend, q, segment_ids, mesh, platform)
    if name == "reference":
        return reference_attention(q, k, v, make_mask(q.shape[1], k.shape[1], segment_ids, causal=causal))
    if name == "blockwise":
        tile = blockwise_tile(platform)
        return blockwise_attention(q, k, v, segment_ids=segment_ids, causal=causal, block_q=tile, block_k=tile)
    if name == "cudnn":
        return cudnn_attention(q, k, v, segment_ids=segment_ids, causal=causal)
    if name == "splash":
        return splash_attention(q, k, v, segment_ids=segment_ids, causal=causal, mesh=mesh)
    if name == "ring":
        if mesh is None:
            raise ValueError("attention backend 'ring' needs a mesh with a 'context' axis (pass mesh=...).")
        return ring_attention(q, k, v, segment_ids=segment_ids, causal=causal, mesh=mesh)
    raise AssertionError(name)
