"""Flax Llama-family decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU; scan over layers; KV-cache decode.

The family's variations are config switches: q/k/v biases (Qwen2), q/k RMSNorm per head (Qwen3) or over the
projection (OLMo 2), norms after each sublayer instead of before (OLMo 2).

Every parameter and key activation carries logical axis names; `sciriff_jax.parallel.sharding` maps them
to mesh axes per layout. Parameters live in `param_dtype` (fp32 by default), compute runs in `dtype`.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sciriff_jax.model import attention_blockwise, attention_paged, lora as lora_lib
from sciriff_jax.model.attention import attention
from sciriff_jax.model.config import LlamaConfig
from sciriff_jax.model.rope import apply_rope, inverse_frequencies, positions_from_segments

_INIT = nn.initializers.normal(0.02)  # Hugging Face's initializer_range default

_REMAT = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    # The projections' outputs, and the blockwise attention's output and log-sum-exp: its backward pass then does
    # not rerun its forward (8-layer SmolLM2-135M step on the 2-core CPU: 10.77 -> 10.22 s).
    "dots_no_batch": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names(*attention_blockwise.SAVED_NAMES)),
}


def _constrain(x, axes):
    return nn.with_logical_constraint(x, axes)


def _param(module: nn.Module, name: str, shape, axes, init=_INIT):
    c = module.config
    # A QLoRA base holds its kernels quantized (model/lora.py): they are dequantized here, one layer at a time.
    return lora_lib.dense(module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.dtype(c.param_dtype)))


def _matmul(x, w, n_in: int, dtype):
    """x [..., in...] @ w [in..., out...] -> [..., out...] in `dtype`, as one matmul of two matrices.

    Every leading axis of x is folded into one: a [batch, length, ...] matmul contracts both batch and length in
    the weight's gradient, which XLA:CPU runs 1.5x slower than the same matmul over [batch * length] (SwiGLU MLP
    at SmolLM2-135M's shape, 4 x 1,024 tokens, 2-core CPU)."""
    lead, w_in = x.shape[:x.ndim - n_in], math.prod(w.shape[:n_in])
    y = x.reshape(-1, w_in) @ w.astype(dtype).reshape(w_in, -1)
    return y.reshape(*lead, *w.shape[n_in:])


def _rms(x, scale, eps: float, dtype, axes=(-1,)):
    """x / rms(x over `axes`) * scale, in float32 (a learned-scale RMSNorm over any trailing axes)."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=axes, keepdims=True) + eps)
    return (y * scale.astype(jnp.float32)).astype(dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale; statistics in float32."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x):
        scale = _param(self, "scale", (x.shape[-1],), ("norm",), nn.initializers.ones)
        return _rms(x, scale, self.config.rms_norm_eps, jnp.dtype(self.config.dtype))


class Attention(nn.Module):
    """Grouped-query self-attention with rotary embeddings; optional KV cache for decoding."""

    config: LlamaConfig
    mesh: Any = None
    lora: Any = None  # model/lora.py's LoraConfig: adapters on this module's kernels

    @nn.compact
    def __call__(self, x, positions, segment_ids, cache=None, cache_index=None, page_table=None, layer=None):
        c = self.config
        dt = jnp.dtype(c.dtype)
        d, h, kvh, hd = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim
        wq = _param(self, "q_proj", (d, h, hd), ("embed", "heads", "head_dim"))
        wk = _param(self, "k_proj", (d, kvh, hd), ("embed", "kv_heads", "head_dim"))
        wv = _param(self, "v_proj", (d, kvh, hd), ("embed", "kv_heads", "head_dim"))
        wo = _param(self, "o_proj", (h, hd, d), ("heads", "head_dim", "embed"))
        with jax.named_scope("qkv_proj"):
            q, k, v = _project(self, x, wq, wk, wv)
        with jax.named_scope("rope"):
            inv_freq = inverse_frequencies(hd, c.rope_theta, c.rope_scaling)
            q = apply_rope(q, positions, inv_freq)
            k = apply_rope(k, positions, inv_freq)
        new_cache = None
        if cache is None:
            with jax.named_scope("attention"):
                out = attention(q, k, v, segment_ids=segment_ids, backend=c.attention_backend, mesh=self.mesh)
        else:
            # Paged decoding: cache is every layer's pool; rows start at their own positions (cache_index [B]).
            with jax.named_scope("paged_attention"):
                pk = attention_paged.write(cache[0], layer, k, page_table, cache_index)
                pv = attention_paged.write(cache[1], layer, v, page_table, cache_index)
                out = attention_paged.attend(q, pk, pv, layer, page_table, cache_index)
            new_cache = (pk, pv)
        with jax.named_scope("o_proj"):
            out = _constrain(out, ("activation_batch", "activation_length", "activation_heads", "activation_head_dim"))
            y = _matmul(out, wo, 2, dt)
            y = lora_lib.adapt(self, "o_proj", out, y, wo.shape, ("heads", "head_dim", "embed"), 2)
        return y, new_cache


def _project(module: Attention, x, wq, wk, wv):
    """q, k, v [B, L, heads, head_dim] with the family's biases and q/k norms, constrained to their axes."""
    # A function, not a method of the module: Flax would add a method's name to each of its ops' profile scopes.
    c = module.config
    dt = jnp.dtype(c.dtype)
    h, kvh, hd = c.num_heads, c.num_kv_heads, c.head_dim
    q, k, v = (_matmul(x, w, 1, dt) for w in (wq, wk, wv))
    q = lora_lib.adapt(module, "q_proj", x, q, wq.shape, ("embed", "heads", "head_dim"), 1)
    k = lora_lib.adapt(module, "k_proj", x, k, wk.shape, ("embed", "kv_heads", "head_dim"), 1)
    v = lora_lib.adapt(module, "v_proj", x, v, wv.shape, ("embed", "kv_heads", "head_dim"), 1)
    if c.attention_bias:  # Qwen2
        zeros = nn.initializers.zeros
        q = q + _param(module, "q_bias", (h, hd), ("heads", "head_dim"), zeros).astype(dt)
        k = k + _param(module, "k_bias", (kvh, hd), ("kv_heads", "head_dim"), zeros).astype(dt)
        v = v + _param(module, "v_bias", (kvh, hd), ("kv_heads", "head_dim"), zeros).astype(dt)
    if c.qk_norm == "head":  # Qwen3: each head's query/key normalized over head_dim, before RoPE
        ones = nn.initializers.ones
        q = _rms(q, _param(module, "q_norm", (hd,), ("head_dim",), ones), c.rms_norm_eps, dt)
        k = _rms(k, _param(module, "k_norm", (hd,), ("head_dim",), ones), c.rms_norm_eps, dt)
    elif c.qk_norm == "projection":  # OLMo 2: over the whole q / k projection (all heads), before RoPE
        ones = nn.initializers.ones
        q = _rms(q, _param(module, "q_norm", (h, hd), ("heads", "head_dim"), ones), c.rms_norm_eps, dt, (-2, -1))
        k = _rms(k, _param(module, "k_norm", (kvh, hd), ("kv_heads", "head_dim"), ones), c.rms_norm_eps, dt,
                 (-2, -1))
    q = _constrain(q, ("activation_batch", "activation_length", "activation_heads", "activation_head_dim"))
    k = _constrain(k, ("activation_batch", "activation_length", "activation_kv_heads", "activation_head_dim"))
    v = _constrain(v, ("activation_batch", "activation_length", "activation_kv_heads", "activation_head_dim"))
    return q, k, v


@jax.custom_vjp
def swiglu(gate, up):
    """silu(gate) * up, with its gradient written out by hand: both input gradients from one pass over the saved
    inputs. XLA:CPU's own derivative of it recomputes parts in the transposed layout of the weight-gradient
    matmuls: 0.045 s per layer slower at SmolLM2-135M's shape, 4 x 1,024 tokens, on a 2-core CPU. The same
    function either way (tests/test_model.py)."""
    return jax.nn.silu(gate) * up


def _swiglu_fwd(gate, up):
    return swiglu(gate, up), (gate, up)


def _swiglu_bwd(residuals, d_out):
    gate, up = (x.astype(jnp.float32) for x in residuals)
    d_out = d_out.astype(jnp.float32)
    sig = jax.nn.sigmoid(gate)
    d_gate = d_out * up * sig * (1 + gate * (1 - sig))
    return d_gate.astype(residuals[0].dtype), (d_out * gate * sig).astype(residuals[1].dtype)


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    config: LlamaConfig
    lora: Any = None  # model/lora.py's LoraConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        dt = jnp.dtype(c.dtype)
        gate = _param(self, "gate_proj", (c.hidden_size, c.intermediate_size), ("embed", "mlp"))
        up = _param(self, "up_proj", (c.hidden_size, c.intermediate_size), ("embed", "mlp"))
        down = _param(self, "down_proj", (c.intermediate_size, c.hidden_size), ("mlp", "embed"))
        g = lora_lib.adapt(self, "gate_proj", x, _matmul(x, gate, 1, dt), gate.shape, ("embed", "mlp"), 1)
        u = lora_lib.adapt(self, "up_proj", x, _matmul(x, up, 1, dt), up.shape, ("embed", "mlp"), 1)
        hidden = _constrain(swiglu(g, u), ("activation_batch", "activation_length", "activation_mlp"))
        return lora_lib.adapt(self, "down_proj", hidden, _matmul(hidden, down, 1, dt), down.shape, ("mlp", "embed"), 1)


class DecoderLayer(nn.Module):
    """Pre-norm transformer block over the carry (x, pool); returns (carry, None) so it can sit inside nn.scan.

    `pool` is the paged KV cache of every layer while decoding (carried whole, so each layer's write updates it in
    place instead of copying a per-layer slice in and out of the scan), None otherwise; `layer` is this layer's
    index into it.
    """

    config: LlamaConfig
    mesh: Any = None
    lora: Any = None  # model/lora.py's LoraConfig

    @nn.compact
    def __call__(self, carry, layer, positions, segment_ids, cache_index=None, page_table=None):
        x, pool = carry
        c = self.config
        h = x if c.post_norms else RMSNorm(c, name="input_norm")(x)
        a, pool = Attention(c, self.mesh, self.lora, name="attn")(h, positions, segment_ids, pool, cache_index, page_table, layer)
        if c.post_norms:  # OLMo 2: each sublayer's output is normalized before the residual add
            x = x + RMSNorm(c, name="attn_out_norm")(a)
            x = x + RMSNorm(c, name="mlp_out_norm")(MLP(c, self.lora, name="mlp")(x))
        else:
            x = x + a
            x = x + MLP(c, self.lora, name="mlp")(RMSNorm(c, name="post_attn_norm")(x))
        x = _constrain(x, ("activation_batch", "activation_length", "activation_embed"))
        return (x, pool), None


def _layer_class(config: LlamaConfig):
    if config.remat_policy == "none":
        return DecoderLayer
    return nn.remat(DecoderLayer, policy=_REMAT[config.remat_policy], prevent_cse=not config.scan_layers)


class Llama(nn.Module):
    """Decoder-only Llama. __call__(tokens, segment_ids, positions) -> float32 logits [B, L, V].

    With `cache`, a paged pool {"k", "v"} [layers, pages, page_size, KV, D], its `page_table` ([B, pages], see
    attention_paged) and `cache_index` [B] (each row's first position), it returns (logits, new_cache) instead:
    the decode path (decoding/batcher.py). `logits_index` [B]: only that position's logits ([B, 1, V]), as prefill
    needs. `return_hidden`: the final-normed hidden states [B, L, D] in the compute dtype instead of logits, for
    losses that apply the output head a chunk at a time (train/losses.py).
    """

    config: LlamaConfig
    mesh: Any = None
    lora: Any = None  # model/lora.py's LoraConfig: apply to {"params": base, "lora": adapters}; without "lora", the base

    @nn.compact
    def __call__(self, tokens, segment_ids=None, positions=None, *, cache=None, cache_index=None, page_table=None,
                 logits_index=None, return_hidden=False):
        c = self.config
        dt = jnp.dtype(c.dtype)
        if positions is None:
            if segment_ids is not None:
                positions = positions_from_segments(segment_ids)
            else:
                positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
        embedding = _param(self, "embedding", (c.vocab_size, c.hidden_size), ("vocab", "embed"))
        with jax.named_scope("embed"):
            x = jnp.take(embedding.astype(dt), tokens, axis=0)
            x = _constrain(x, ("activation_batch", "activation_length", "activation_embed"))
        pool = None
        if cache is not None:
            if page_table is None:
                raise ValueError("Llama: a KV cache is a paged pool and needs its page_table (see decoding/batcher.py)")
            pool = (cache["k"], cache["v"])
        with jax.named_scope("decoder"):
            x, pool = _decoder_layers(self, x, pool, positions, segment_ids, cache_index, page_table)
        if logits_index is not None:
            x = jnp.take_along_axis(x, logits_index[:, None, None], axis=1)
        x = RMSNorm(c, name="final_norm")(x)
        if return_hidden:
            if not c.tie_embeddings:  # the head is a parameter: created here too, so the tree is the same
                _param(self, "lm_head", (c.hidden_size, c.vocab_size), ("embed", "vocab"))
            return x
        with jax.named_scope("lm_head"):
            if c.tie_embeddings:
                logits = jnp.einsum("bld,vd->blv", x, embedding.astype(dt), preferred_element_type=jnp.float32)
            else:
                head = _param(self, "lm_head", (c.hidden_size, c.vocab_size), ("embed", "vocab"))
                logits = jnp.einsum("bld,dv->blv", x, head.astype(dt), preferred_element_type=jnp.float32)
            logits = _constrain(logits.astype(jnp.float32),
                                ("activation_batch", "activation_length", "activation_vocab"))
        if cache is None:
            return logits
        return logits, {"k": pool[0], "v": pool[1]}


def _decoder_layers(module: Llama, x, pool, positions, segment_ids, cache_index, page_table):
    """The decoder layers over the carry (x, pool), scanned or one module per layer (`layers` / `layers_i`
    in parameter paths and profiles). Decoding passes the pool and each layer's index into it."""
    # A function, not a method of Llama, for the same reason as _project.
    c = module.config
    layer_cls = _layer_class(c)
    args = (positions, segment_ids) if pool is None else (positions, None, cache_index, page_table)
    if c.scan_layers:
        index = None if pool is None else jnp.arange(c.num_layers, dtype=jnp.int32)
        scanned = nn.scan(
            layer_cls, variable_axes={"params": 0, lora_lib.COLLECTION: 0}, split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast if index is None else 0,) + (nn.broadcast,) * len(args), length=c.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"})
        (x, pool), _ = scanned(c, module.mesh, module.lora, name="layers")((x, pool), index, *args)
        return x, pool
    for i in range(c.num_layers):
        (x, pool), _ = layer_cls(c, module.mesh, module.lora, name=f"layers_{i}")((x, pool), None if pool is None else i, *args)
    return x, pool


def _boxed_init(config: LlamaConfig, rng):
    tokens = jnp.zeros((1, 8), jnp.int32)
    # Shapes do not depend on the attention backend; the reference one accepts any dummy row length.
    return Llama(config.replace(attention_backend="reference")).init(rng, tokens)


def init_params(config: LlamaConfig, rng) -> dict:
    """Random parameters (the plain pytree under "params", in param_dtype)."""
    variables = jax.jit(_boxed_init, static_argnums=0)(config, rng)
    return nn.meta.unbox(variables)["params"]


def logical_axes(config: LlamaConfig) -> dict:
    """Pytree (same structure as params) of logical PartitionSpecs, e.g. P("layers", "embed", "mlp")."""
    abstract = jax.eval_shape(lambda rng: _boxed_init(config, rng), jax.random.PRNGKey(0))
    return nn.get_partition_spec(abstract)["params"]


def param_shapes(config: LlamaConfig) -> dict:
    """Pytree of jax.ShapeDtypeStruct for params, without allocating them."""
    abstract = jax.eval_shape(lambda rng: _boxed_init(config, rng), jax.random.PRNGKey(0))
    return nn.meta.unbox(abstract)["params"]
