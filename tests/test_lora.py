"""LoRA (model/lora.py): adapters on the linear maps compute the merged model, start as the base, are sharded by the
layout tables, and every layout's LoRA step equals the one-device step on the fake 8-device mesh; QLoRA's base."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sciriff_jax.model import Llama, LlamaConfig, init_params
from sciriff_jax.model import lora as lora_lib
from sciriff_jax.model.llama import logical_axes, param_shapes
from sciriff_jax.parallel import sharding as partitioning

CONFIG = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                     num_kv_heads=2, dtype="float32")
LORA = lora_lib.LoraConfig(rank=4, alpha=8.0)
ARCHITECTURES = {
    "llama": {},
    "llama_unscanned_tied": dict(scan_layers=False, tie_embeddings=True),
    "qwen2": dict(model_type="qwen2", attention_bias=True),
    "qwen3": dict(model_type="qwen3", qk_norm="head"),
    "olmo2": dict(model_type="olmo2", qk_norm="projection", post_norms=True),
}
TOKENS = jnp.asarray(np.random.default_rng(0).integers(1, 64, (2, 12)), jnp.int32)


def trained_like(adapters, seed=3):
    """Adapters with a nonzero B, as after some training (fresh ones compute the base exactly)."""
    leaves, treedef = jax.tree.flatten(adapters)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(treedef, [x + 0.05 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_adapters_compute_the_merged_model_for_every_architecture(arch):
    config = CONFIG.replace(**ARCHITECTURES[arch])
    base = init_params(config, jax.random.PRNGKey(1))
    adapters = trained_like(lora_lib.init_adapters(param_shapes(config), LORA, jax.random.PRNGKey(2)))
    with_lora = Llama(config, lora=LORA).apply(lora_lib.with_adapters(base, adapters), TOKENS)
    merged = Llama(config).apply({"params": lora_lib.merge(base, adapters, LORA)}, TOKENS)
    plain = Llama(config).apply({"params": base}, TOKENS)
    scale = float(jnp.abs(plain).max())
    assert float(jnp.abs(with_lora - plain).max()) > 1e-3 * scale  # the adapters change the model...
    np.testing.assert_allclose(with_lora, merged, atol=1e-5 * scale)  # ...as their merge into the kernels does


def test_fresh_adapters_compute_the_base_and_without_adapters_the_module_is_the_base():
    base = init_params(CONFIG, jax.random.PRNGKey(1))
    fresh = lora_lib.init_adapters(param_shapes(CONFIG), LORA, jax.random.PRNGKey(2))
    model = Llama(CONFIG, lora=LORA)
    plain = Llama(CONFIG).apply({"params": base}, TOKENS)
    np.testing.assert_array_equal(model.apply(lora_lib.with_adapters(base, fresh), TOKENS), plain)
    variables = lora_lib.with_adapters(base, trained_like(fresh))
    np.testing.assert_array_equal(model.apply(lora_lib.base_of(variables), TOKENS), plain)  # the DPO reference


@pytest.mark.parametrize("scan_layers", [True, False])
def test_pure_adapter_tree_is_the_one_flax_creates(scan_layers):
    config = CONFIG.replace(scan_layers=scan_layers)
    lora = lora_lib.LoraConfig(rank=3, targets=("q_proj", "o_proj", "down_proj"))
    boxed = Llama(config, lora=lora).init(jax.random.PRNGKey(0), TOKENS)
    flax_shapes = jax.tree.map(lambda x: x.shape, nn.meta.unbox(boxed)[lora_lib.COLLECTION])
    assert flax_shapes == jax.tree.map(lambda x: x.shape, lora_lib.adapter_shapes(param_shapes(config), lora))
    assert nn.get_partition_spec(boxed)[lora_lib.COLLECTION] == lora_lib.adapter_axes(logical_axes(config), lora)
    a = lora_lib.adapter_shapes(param_shapes(config), lora)
    layer = a["layers"] if scan_layers else a["layers_0"]
    assert set(layer["attn"]) == {"q_proj_a", "q_proj_b", "o_proj_a", "o_proj_b"} and set(layer["mlp"]) == {
        "down_proj_a", "down_proj_b"}


def test_bad_lora_config_says_what_it_must_be():
    with pytest.raises(ValueError, match="LORA_TARGETS"):
        lora_lib.LoraConfig(targets=("q_proj", "lm_head_typo"))
    with pytest.raises(ValueError, match="LORA_RANK"):
        lora_lib.LoraConfig(rank=0)
    with pytest.raises(ValueError, match="LORA_QUANTIZE"):
        lora_lib.LoraConfig(quantize="int3")


def _lora_loss(config, lora, mesh=None):
    model = Llama(config, mesh=mesh, lora=lora)

    def loss(adapters, base, tokens):
        logits = model.apply(lora_lib.with_adapters(base, adapters), tokens)
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp[:, :-1], tokens[:, 1:, None], axis=-1))
    return loss


@pytest.fixture(scope="module")
def one_device_lora():
    base = lora_lib.freeze_base(init_params(CONFIG, jax.random.PRNGKey(0)), CONFIG)
    adapters = trained_like(lora_lib.init_adapters(param_shapes(CONFIG), LORA, jax.random.PRNGKey(1)))
    tokens = jnp.asarray(np.random.default_rng(1).integers(1, 64, (8, 16)), jnp.int32)
    return base, adapters, tokens, jax.jit(jax.value_and_grad(_lora_loss(CONFIG, LORA)))(adapters, base, tokens)


@pytest.mark.parametrize("layout", partitioning.LAYOUTS)
def test_every_layout_gives_the_one_device_lora_loss_and_adapter_gradients(layout, one_device_lora):
    base, adapters, tokens, (want_loss, want_grads) = one_device_lora
    sharding = partitioning.Sharding.create(CONFIG, partitioning.MeshConfig(layout)).for_lora(CONFIG, LORA)
    assert len(sharding.mesh.devices.flat) == 8
    placed_base = jax.device_put(base, sharding.base)
    placed = jax.device_put(adapters, sharding.params)
    with sharding.context():
        step = jax.jit(jax.value_and_grad(_lora_loss(CONFIG, LORA, sharding.mesh)), out_shardings=(None, sharding.params))
        loss, grads = step(placed, placed_base, jax.device_put(tokens, sharding.batch))
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), grads, want_grads)


@pytest.mark.parametrize("layout,a_spec,b_spec", [
    ("data", (None, None, None), (None, None, None, None)),
    ("fsdp", (None, "fsdp", None), (None, None, None, None)),
    ("fsdp_tp", (None, "fsdp", None), (None, None, "tensor", None)),
])
def test_adapters_follow_their_kernels_axes_with_the_rank_replicated(layout, a_spec, b_spec):
    sharding = partitioning.Sharding.create(CONFIG, partitioning.MeshConfig(layout)).for_lora(CONFIG, LORA)
    q = sharding.params["layers"]["attn"]
    assert tuple(q["q_proj_a"].spec) + (None,) * (3 - len(q["q_proj_a"].spec)) == a_spec
    assert tuple(q["q_proj_b"].spec) + (None,) * (4 - len(q["q_proj_b"].spec)) == b_spec
    assert sharding.base["layers"]["attn"]["q_proj"] == partitioning.Sharding.create(
        CONFIG, partitioning.MeshConfig(layout)).params["layers"]["attn"]["q_proj"]


@pytest.mark.parametrize("qtype,bound", [("int8", 0.01), ("int4", 0.15)])
def test_quantized_base_stays_close_to_the_base_and_shards(qtype, bound):
    base = init_params(CONFIG, jax.random.PRNGKey(1))
    adapters = trained_like(lora_lib.init_adapters(param_shapes(CONFIG), LORA, jax.random.PRNGKey(2)))
    model = Llama(CONFIG, lora=LORA)
    want = model.apply(lora_lib.with_adapters(base, adapters), TOKENS)
    quantized = lora_lib.quantize_base(base, qtype)
    assert quantized["layers"]["mlp"]["up_proj"].qvalue.dtype == {"int8": jnp.int8, "int4": jnp.int4}[qtype]
    got = model.apply(lora_lib.with_adapters(quantized, adapters), TOKENS)
    err = float(jnp.abs(got - want).max()) / float(jnp.abs(want).max())
    assert 0 < err < bound
    sharding = partitioning.Sharding.create(CONFIG, partitioning.MeshConfig("fsdp_tp")).for_lora(CONFIG, LORA)
    shardings = sharding.quantized(jax.eval_shape(lambda: quantized))
    placed = jax.device_put(quantized, shardings)
    with sharding.context():
        sharded = jax.jit(lambda b, a, t: Llama(CONFIG, mesh=sharding.mesh, lora=LORA).apply(
            lora_lib.with_adapters(b, a), t))(placed, jax.device_put(adapters, sharding.params), TOKENS)
    np.testing.assert_allclose(sharded, got, atol=1e-5)
