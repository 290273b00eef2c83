"""The Llama module: config round trips, parameter layout, packed rows, scan/remat equivalence."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sciriff_jax.model import Llama, LlamaConfig, init_params, logical_axes, param_shapes
from sciriff_jax.model.llama import swiglu


@functools.lru_cache(maxsize=None)
def _jitted_forward(config):
    return jax.jit(lambda p, t, s, q: Llama(config).apply({"params": p}, t, segment_ids=s, positions=q))


def forward(config, params, tokens, segment_ids=None, positions=None):
    """Jitted forward, one compile per config and shape (op-by-op dispatch would be far slower)."""
    return _jitted_forward(config)(params, tokens, segment_ids, positions)


def tiny(**kw):
    base = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                num_kv_heads=2, dtype="float32")
    base.update(kw)
    return LlamaConfig(**base)


def test_config_dict_round_trip_preserves_every_field():
    c = tiny(rope_scaling={"rope_type": "linear", "factor": 2.0}, tie_embeddings=True)
    assert LlamaConfig.from_dict(c.to_dict()) == c


def test_config_hf_round_trip_preserves_shape_and_rope():
    c = tiny(rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    back = LlamaConfig.from_hf_config(c.to_hf_config(), dtype="float32")
    assert back == c


@pytest.mark.parametrize("name,billions", [("tinyllama_1b", 1.10), ("llama2_7b", 6.74), ("llama2_13b", 13.02),
                                           ("llama2_70b", 68.98)])
def test_gin_model_configs_have_the_published_parameter_counts(name, billions):
    import pathlib

    import gin

    import sciriff_jax.run.gin_setup  # noqa: F401  (registers LlamaConfig)

    gin.clear_config()
    gin.parse_config_file(str(pathlib.Path(__file__).parents[1] / "gin_configs" / "models" / f"{name}.gin"))
    try:
        config = gin.get_configurable("LlamaConfig")()
    finally:
        gin.clear_config()
    assert config.num_params() / 1e9 == pytest.approx(billions, abs=0.01)
    assert (config.dtype, config.param_dtype) == ("bfloat16", "float32")


def test_config_rejects_kv_heads_that_do_not_divide_heads():
    with pytest.raises(ValueError, match="num_kv_heads"):
        tiny(num_kv_heads=3)


def test_num_params_counts_the_initialised_parameters():
    for tie in (False, True):
        c = tiny(tie_embeddings=tie)
        shapes = param_shapes(c)  # abstract init: the same tree init_params builds, without compiling it
        assert sum(x.size for x in jax.tree.leaves(shapes)) == c.num_params()


def test_params_are_float32_and_logits_float32_under_bf16_compute():
    c = tiny(dtype="bfloat16")
    params = init_params(c, jax.random.PRNGKey(0))
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype("float32")}
    logits = forward(c, params, jnp.ones((2, 5), jnp.int32))
    assert logits.shape == (2, 5, 61) and logits.dtype == jnp.float32


def test_logical_axes_name_every_parameter_dimension():
    c = tiny()
    shapes = jax.tree.map(lambda x: x.shape, param_shapes(c))
    axes = logical_axes(c)
    for shape, spec in zip(jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, tuple)),
                           jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))):
        assert len(spec) == len(shape) and all(name is not None for name in spec)
    assert axes["layers"]["mlp"]["gate_proj"] == jax.sharding.PartitionSpec("layers", "embed", "mlp")


@pytest.mark.parametrize("kv_heads", [1, 4])
def test_packed_row_equals_documents_run_separately(kv_heads):
    c = tiny(num_kv_heads=kv_heads)
    params = init_params(c, jax.random.PRNGKey(1))
    rng = np.random.default_rng(0)
    doc_a, doc_b = rng.integers(1, 61, 5), rng.integers(1, 61, 3)
    packed = np.concatenate([doc_a, doc_b, [0, 0]])[None]
    seg = np.array([[1] * 5 + [2] * 3 + [0, 0]])
    pos = np.array([[0, 1, 2, 3, 4, 0, 1, 2, 0, 1]])
    out = forward(c, params, packed, seg, pos)
    # Each document alone, right-padded to the packed row's shape (causal: padding after it is invisible).
    alone_a = forward(c, params, np.pad(doc_a, (0, 5))[None])[:, :5]
    alone_b = forward(c, params, np.pad(doc_b, (0, 7))[None])[:, :3]
    np.testing.assert_allclose(out[0, :5], alone_a[0], atol=1e-5)
    np.testing.assert_allclose(out[0, 5:8], alone_b[0], atol=1e-5)
    # Positions default to per-document positions derived from the segment ids.
    np.testing.assert_allclose(forward(c, params, packed, seg), out, atol=1e-6)


def test_scan_and_unrolled_layers_compute_the_same_function():
    c = tiny()
    params = init_params(c, jax.random.PRNGKey(2))
    unrolled = {k: v for k, v in params.items() if k != "layers"}
    for i in range(c.num_layers):
        unrolled[f"layers_{i}"] = jax.tree.map(lambda x: x[i], params["layers"])
    tokens = jnp.arange(12).reshape(2, 6) % 61
    a = forward(c, params, tokens)
    b = forward(c.replace(scan_layers=False), unrolled, tokens)
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_swiglu_hand_written_gradient_equals_autodiff(dtype):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    gate, up, d_out = (jax.random.normal(k, (4, 32), jnp.float32).astype(dtype) * 3 for k in keys)
    ours = jax.vjp(swiglu, gate, up)
    plain = jax.vjp(lambda g, u: jax.nn.silu(g.astype(jnp.float32)) * u.astype(jnp.float32), gate, up)
    tol = 1e-6 if dtype == "float32" else 2e-2
    np.testing.assert_allclose(ours[0].astype(jnp.float32), plain[0], rtol=tol, atol=tol)
    for a, b in zip(ours[1](d_out), plain[1](d_out.astype(jnp.float32))):
        assert a.dtype == jnp.dtype(dtype)
        np.testing.assert_allclose(a.astype(jnp.float32), b, rtol=tol, atol=tol * 3)


@pytest.mark.parametrize("policy", ["full", "dots_no_batch"])
def test_dots_no_batch_keeps_the_blockwise_output_so_the_backward_skips_its_forward(policy, capsys):
    c = tiny(attention_backend="blockwise", remat_policy=policy, scan_layers=False)
    params = init_params(c, jax.random.PRNGKey(0))
    tokens = jnp.arange(16).reshape(2, 8) % 61
    jax.ad_checkpoint.print_saved_residuals(lambda p: Llama(c).apply({"params": p}, tokens).sum(), params)
    saved = capsys.readouterr().out
    for name in ("'blockwise_out'", "'blockwise_lse'"):
        assert (saved.count(name) == c.num_layers) == (policy == "dots_no_batch"), saved


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_policies_leave_loss_and_gradients_unchanged(policy):
    c = tiny(attention_backend="blockwise")  # dots_no_batch also saves its named output and log-sum-exp
    params = init_params(c, jax.random.PRNGKey(3))
    tokens = jnp.arange(16).reshape(2, 8) % 61

    def loss(p, cfg):
        logits = Llama(cfg).apply({"params": p}, tokens)
        return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    l0, g0 = grad(params, c)
    l1, g1 = grad(params, c.replace(remat_policy=policy))
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g0, g1)


def test_tied_embeddings_share_the_input_matrix_with_the_output_head():
    c = tiny(tie_embeddings=True)
    params = init_params(c, jax.random.PRNGKey(4))
    assert "lm_head" not in params
    tokens = jnp.array([[3, 4, 5]])
    base = forward(c, params, tokens)
    bumped = dict(params, embedding=params["embedding"].at[7].add(1.0))
    # Changing a row that is never an input only moves the logit for that vocabulary entry.
    diff = np.abs(np.asarray(forward(c, bumped, tokens) - base)).max(axis=(0, 1))
    assert diff[7] > 1e-3 and np.delete(diff, 7).max() < 1e-6


def test_a_kv_cache_is_the_paged_pool_and_needs_its_page_table():
    config = tiny()
    params = init_params(config, jax.random.PRNGKey(0))
    pool = {k: jnp.zeros((config.num_layers, 2, 64, config.num_kv_heads, config.head_dim)) for k in ("k", "v")}
    with pytest.raises(ValueError, match="page_table"):
        Llama(config).apply({"params": params}, jnp.zeros((1, 4), jnp.int32), cache=pool, cache_index=jnp.zeros(1, jnp.int32))


def test_a_profile_reads_like_the_model():
    config = tiny(scan_layers=False, attention_backend="reference")
    params = init_params(config, jax.random.PRNGKey(0))
    hlo = jax.jit(lambda p, t: Llama(config).apply({"params": p}, t)).lower(
        params, jnp.zeros((1, 8), jnp.int32)).as_text(debug_info=True)
    for scope in ("Llama/embed/", "Llama/decoder/layers_0/input_norm/", "Llama/decoder/layers_1/attn/qkv_proj/",
                  "/attn/rope/", "/attn/attention/", "/attn/o_proj/", "Llama/decoder/layers_1/mlp/",
                  "Llama/final_norm/", "Llama/lm_head/"):
        assert scope in hlo, scope
