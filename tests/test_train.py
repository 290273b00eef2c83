"""The train step: per-token loss normalisation, accumulation == one big batch, sharding, NaN guard, schedule."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from sciriff_jax.data import batches as data
from sciriff_jax.train import optim
from sciriff_jax.parallel.sharding import Sharding, make_mesh
from sciriff_jax.train import loop
from sciriff_jax.train import step as train

VOCAB, LENGTH = 16, 12


class ToyLM(nn.Module):
    """Embed -> dense -> logits; divides by (max token - 5) so an all-<=5 batch yields Inf (NaN-guard tests)."""

    @nn.compact
    def __call__(self, tokens, segment_ids=None, positions=None):
        x = nn.Embed(VOCAB, 8)(tokens)
        x = x + 0.01 * positions[..., None].astype(jnp.float32)
        x = x / (jnp.max(tokens) - 5).astype(jnp.float32)
        return nn.Dense(VOCAB)(jnp.tanh(x))


def _setup(batch_size=8, microbatches=1, lr=1e-2, mesh=None):
    model = ToyLM()
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, LENGTH), jnp.int32),
                        positions=jnp.zeros((1, LENGTH), jnp.int32))["params"]
    tx, sched = optim.make_optimizer(lr, 10, warmup_ratio=0.0)
    return model, params, tx, sched


def _batch(batch_size=8, seed=0, i=0):
    it = data.synthetic_local_batches(vocab_size=VOCAB, length=LENGTH, rows=(0, batch_size), seed=seed, skip=i)
    b = next(it)
    b["decoder_input_tokens"][:, -1] = VOCAB - 1  # keeps the toy model finite
    return {k: jnp.asarray(v) for k, v in b.items()}


def test_loss_is_mean_over_target_tokens_not_over_rows():
    logits = jax.random.normal(jax.random.PRNGKey(1), (2, 4, VOCAB))
    targets = jnp.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    weights = jnp.array([[1, 0, 0, 0], [1, 1, 1, 1]])  # 1 target token in row 0, 4 in row 1
    loss_sum, w = train.token_loss_sums(logits, targets, weights)
    ce = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), np.asarray(targets)[..., None], -1)[..., 0]
    np.testing.assert_allclose(loss_sum / w, (ce[0, 0] + ce[1].sum()) / 5, rtol=1e-6)
    per_row_mean = (ce[0, 0] + ce[1].mean()) / 2
    assert abs(float(loss_sum / w) - per_row_mean) > 1e-3


def test_step_loss_equals_weighted_token_mean_of_the_batch():
    model, params, tx, _ = _setup()
    batch = _batch()
    expected_sum, expected_w = train.make_loss_fn(model)(params, batch)
    step = train.make_train_step(model, tx, donate=False)
    _, _, m = step(params, tx.init(params), batch)
    np.testing.assert_allclose(m["loss"], expected_sum / expected_w, rtol=1e-6)
    assert float(m["target_tokens"]) == float(batch["decoder_loss_weights"].sum())


def test_gradient_accumulation_equals_one_big_batch():
    model, params, tx, _ = _setup()
    batch = _batch()
    one = train.make_train_step(model, tx, microbatches=1, donate=False)
    four = train.make_train_step(model, tx, microbatches=4, donate=False)
    p1, o1, m1 = one(params, tx.init(params), batch)
    p4, o4, m4 = four(params, tx.init(params), batch)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # and the params really moved
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(params)))


def test_microbatches_must_divide_the_batch():
    model, params, tx, _ = _setup()
    step = train.make_train_step(model, tx, microbatches=3, donate=False)
    with pytest.raises(ValueError, match="microbatches=3"):
        step(params, tx.init(params), _batch())


def test_sharded_step_on_8_devices_matches_single_device():
    model, params, tx, _ = _setup()
    batch = _batch()
    mesh = make_mesh("data", devices=jax.devices()[:8])
    rep = NamedSharding(mesh, P())
    sharding = Sharding("data", mesh, jax.tree.map(lambda _: rep, params)).with_optimizer(tx, params)
    bsh = sharding.batch
    sharded = train.make_train_step(model, tx, microbatches=2, sharding=sharding, donate=False)
    plain = train.make_train_step(model, tx, donate=False)
    gbatch = {k: jax.device_put(v, bsh) for k, v in batch.items()}
    ps, _, ms = sharded(jax.device_put(params, rep), jax.device_put(tx.init(params), rep), gbatch)
    pp, _, mp = plain(params, tx.init(params), batch)
    np.testing.assert_allclose(ms["loss"], mp["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ps), jax.tree.leaves(pp)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _nan_batch():
    b = _batch()
    return {k: (jnp.minimum(v, 5) if k == "decoder_input_tokens" else v) for k, v in b.items()}


class _Batches:
    def __init__(self, batches):
        self.batches, self.n = batches, 0

    def __next__(self):
        self.n += 1
        return self.batches[self.n - 1]

    def state(self):
        return {"batches_consumed": self.n, "seed": 0}


def test_nonfinite_loss_stops_naming_step_and_batch():
    model, params, tx, sched = _setup()
    step = train.make_train_step(model, tx, donate=False)
    batches = _Batches([_batch(i=0), _batch(i=1), _nan_batch(), _batch(i=3)])
    with pytest.raises(loop.NonFiniteLossError, match=r"at step 3 .*batch index 2.*last good checkpoint: none"):
        loop.train_loop(step_fn=step, params=params, opt_state=tx.init(params), batches=batches,
                        settings=loop.LoopConfig(train_steps=4))


def test_nonfinite_loss_skip_policy_leaves_params_unchanged_and_continues():
    model, params, tx, sched = _setup()
    step = train.make_train_step(model, tx, donate=False)
    opt_state = tx.init(params)
    p2, o2, m = step(params, opt_state, _nan_batch())
    assert not bool(m["finite"])
    for a, b in zip(jax.tree.leaves((p2, o2)), jax.tree.leaves((params, opt_state))):
        np.testing.assert_array_equal(a, b)
    batches = _Batches([_batch(i=0), _nan_batch(), _batch(i=2)])
    out = loop.train_loop(step_fn=step, params=params, opt_state=tx.init(params), batches=batches,
                           settings=loop.LoopConfig(train_steps=3, on_nonfinite="skip"))
    assert out["skipped_steps"] == [2] and out["steps"] == 3 and np.isfinite(out["last_loss"])


def test_the_guarded_update_runs_in_place_without_copying_the_donated_optimizer_state():
    # With the NaN guard as jnp.where over the update's results, XLA copied every moment of the donated state before
    # updating it (0.50 s of a step at SmolLM2-135M on a 2-core CPU, BENCHMARKS.md section 9.8); as a cond it
    # updates in place.
    model, params, tx, _ = _setup()
    opt_state = tx.init(params)
    step = train.make_train_step(model, tx)
    hlo = step.jitted.lower(params, opt_state, _batch()).compile().as_text()
    assert "opt_state" in hlo  # the state's parameters are named in the HLO, so the search below can find a copy
    moments = [n for n in re.findall(r"= f32\[[^\]]*\]\{[^}]*\} copy\(%?([\w.]+)\)", hlo) if "opt_state" in n]
    assert moments == [], moments
    assert "conditional" in hlo


def test_schedule_warms_up_linearly_then_decays_to_zero():
    sched = optim.make_schedule(1.0, 100, warmup_ratio=0.1, schedule="linear")
    assert float(sched(0)) == 0.0 and abs(float(sched(5)) - 0.5) < 1e-6 and abs(float(sched(10)) - 1.0) < 1e-6
    assert abs(float(sched(55)) - 0.5) < 1e-6 and abs(float(sched(100))) < 1e-6
    cos = optim.make_schedule(1.0, 100, warmup_ratio=0.0, schedule="cosine")
    assert abs(float(cos(50)) - 0.5) < 1e-6
    assert float(optim.make_schedule(1.0, 100, warmup_ratio=0.0, schedule="constant")(99)) == 1.0
    with pytest.raises(ValueError, match="schedule='step'"):
        optim.make_schedule(1.0, 100, schedule="step")


def test_training_modules_import_without_tensorflow_or_seqio():
    import subprocess
    import sys

    code = ("import sys; import sciriff_jax.train.step, sciriff_jax.io.checkpoint, sciriff_jax.train.optim, sciriff_jax.data.batches, "
            "sciriff_jax.train.run_log, sciriff_jax.parallel.distributed, sciriff_jax.train.setup, "
            "sciriff_jax.train.finetune; "
            "bad = [m for m in ('tensorflow', 'seqio', 'seqio_tasks') if m in sys.modules]; "
            "assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_weight_decay_skips_norm_scales_and_biases():
    params = {"layers": {"attn_norm": {"scale": jnp.ones((2, 4))}, "mlp": {"kernel": jnp.ones((2, 4, 4))}},
              "dense": {"bias": jnp.ones((4,))}}
    mask = optim.decay_mask(params)
    assert mask == {"layers": {"attn_norm": {"scale": False}, "mlp": {"kernel": True}}, "dense": {"bias": False}}
    tx, _ = optim.make_optimizer(0.1, 10, warmup_ratio=0.0, weight_decay=0.5, schedule="constant")
    zero = jax.tree.map(jnp.zeros_like, params)
    upd, _ = tx.update(zero, tx.init(params), params)
    assert float(jnp.abs(upd["layers"]["mlp"]["kernel"]).max()) > 0
    assert float(jnp.abs(upd["layers"]["attn_norm"]["scale"]).max()) == 0


def test_a_finetune_run_on_synthetic_rows_never_loads_tensorflow_or_seqio(tmp_path):
    """What a JAX-only machine (the GPU box) runs: the whole run, not only the imports."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from sciriff_jax.data.batches import DataConfig\n"
            "from sciriff_jax.model.config import LlamaConfig\n"
            "from sciriff_jax.train import finetune as ft\n"
            "cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, "
            "num_kv_heads=1, dtype='float32')\n"
            f"out = ft.finetune(ft.TrainConfig(model_dir={str(tmp_path / 'run')!r}, train_steps=2, batch_size=8, "
            "tensorboard=False, log_every=1), DataConfig('synthetic', {'targets': 16}, source='synthetic'), cfg)\n"
            "assert out['final_step'] == 2, out\n"
            "bad = [m for m in ('tensorflow', 'seqio', 'seqio_tasks') if m in sys.modules]; assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
