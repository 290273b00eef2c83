"""Every layout on the 8-device fake CPU mesh computes the one-device loss and gradients, sharded as its table says."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from sciriff_jax.parallel import sharding as partitioning
from sciriff_jax.model import Llama, LlamaConfig, init_params

CONFIG = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                     num_kv_heads=2, dtype="float32")


def batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 64, (8, 16)).astype(np.int32)
    segments = np.array([[1] * 9 + [2] * 7] * 4 + [[1] * 16] * 4, np.int32)
    return tokens, segments


def make_loss(mesh=None):
    model = Llama(CONFIG, mesh=mesh)

    def loss(params, tokens, segments):
        logits = model.apply({"params": params}, tokens, segment_ids=segments)
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp[:, :-1], tokens[:, 1:, None], axis=-1))

    return loss


@pytest.fixture(scope="module")
def one_device():
    params = init_params(CONFIG, jax.random.PRNGKey(0))
    tokens, segments = batch()
    return params, jax.jit(jax.value_and_grad(make_loss()))(params, tokens, segments)


@pytest.mark.parametrize("layout", partitioning.LAYOUTS)
def test_layout_gives_the_one_device_loss_and_gradients(layout, one_device):
    params, (want_loss, want_grads) = one_device
    sharding = partitioning.Sharding.create(CONFIG, partitioning.MeshConfig(layout))
    mesh, shardings = sharding.mesh, sharding.params
    tokens, segments = (jax.device_put(x, sharding.batch) for x in batch())
    sharded = jax.device_put(params, shardings)
    with sharding.context():
        step = jax.jit(jax.value_and_grad(make_loss(mesh)), out_shardings=(None, shardings))
        loss, grads = step(sharded, tokens, segments)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), grads, want_grads)


@pytest.mark.parametrize("layout,gate_spec,embed_spec", [
    ("data", P(None, None, None), P(None, None)),
    ("fsdp", P(None, "fsdp", None), P(None, "fsdp")),
    ("fsdp_tp", P(None, "fsdp", "tensor"), P("tensor", "fsdp")),
    ("fsdp_tp_cp", P(None, "fsdp", "tensor"), P("tensor", "fsdp")),
])
def test_params_are_sharded_as_the_layout_table_says(layout, gate_spec, embed_spec):
    sharding = partitioning.Sharding.create(CONFIG, partitioning.MeshConfig(layout))
    mesh, shardings = sharding.mesh, sharding.params
    assert shardings["layers"]["mlp"]["gate_proj"].spec == gate_spec
    assert shardings["embedding"].spec == embed_spec
    params = jax.device_put(init_params(CONFIG, jax.random.PRNGKey(0)), shardings)
    gate = params["layers"]["mlp"]["gate_proj"]  # [layers, embed, mlp]
    shard_shape = gate.addressable_shards[0].data.shape
    expected = [2, 32 // mesh.shape["fsdp"] if gate_spec[1] else 32, 64 // mesh.shape["tensor"] if gate_spec[2] else 64]
    assert list(shard_shape) == expected


def test_make_mesh_sizes_layouts_and_validates_shapes():
    assert dict(partitioning.make_mesh("data").shape) == {"data": 8, "fsdp": 1, "tensor": 1, "context": 1}
    assert dict(partitioning.make_mesh("fsdp_tp_cp").shape) == {"data": 1, "fsdp": 2, "tensor": 2, "context": 2}
    assert dict(partitioning.make_mesh("fsdp", {"data": 2}).shape) == {"data": 2, "fsdp": 4, "tensor": 1,
                                                                      "context": 1}
    with pytest.raises(ValueError, match="devices"):
        partitioning.make_mesh("fsdp", {"fsdp": 3, "data": 2})
    with pytest.raises(ValueError, match="layout"):
        partitioning.logical_rules("pipeline")
