"""train/losses: chunked token log-probabilities equal the plain full-logits ones, values and gradients; the two
loss normalisations computed by hand."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sciriff_jax.model.config import LlamaConfig
from sciriff_jax.model.llama import Llama, init_params
from sciriff_jax.train import losses

B, L, D, V = 2, 13, 16, 37


def _inputs(dtype=jnp.float32):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    hidden = jax.random.normal(k1, (B, L, D), dtype)
    head = jax.random.normal(k2, (D, V), jnp.float32) * 0.5
    targets = jax.random.randint(k3, (B, L), 0, V)
    return hidden, head, targets


def _plain_logprobs(hidden, head, targets):
    logits = jnp.einsum("bld,dv->blv", hidden, head.astype(hidden.dtype), preferred_element_type=jnp.float32)
    return jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]


@pytest.mark.parametrize("chunk", [1, 4, 5, 13, 64])  # 4, 5: the last chunk is padded
def test_chunked_logprobs_and_gradients_equal_the_plain_ones(chunk):
    hidden, head, targets = _inputs()
    got = losses.token_logprobs(hidden, head, targets, chunk_size=chunk)
    np.testing.assert_allclose(got, _plain_logprobs(hidden, head, targets), rtol=1e-6, atol=1e-5)
    g = jax.random.normal(jax.random.PRNGKey(5), (B, L))  # any cotangent, as DPO / GRPO give

    def f(fn):
        return jax.grad(lambda h, w: jnp.sum(fn(h, w) * g), argnums=(0, 1))(hidden, head)
    got_grads = f(lambda h, w: losses.token_logprobs(h, w, targets, chunk_size=chunk))
    want_grads = f(lambda h, w: _plain_logprobs(h, w, targets))
    for a, b in zip(got_grads, want_grads):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_chunked_loss_holds_no_full_logits_in_its_gradient():
    """The compiled gradient's temporaries stay below one [B, L, V] float32 array (the plain loss needs several)."""
    b, length, d, v = 2, 512, 32, 4096
    hidden = jax.ShapeDtypeStruct((b, length, d), jnp.float32)
    head = jax.ShapeDtypeStruct((d, v), jnp.float32)
    targets = jax.ShapeDtypeStruct((b, length), jnp.int32)
    full = b * length * v * 4

    def temp_bytes(fn):
        grad = jax.jit(jax.grad(lambda h, w, t: -jnp.sum(fn(h, w, t)), argnums=(0, 1)))
        return grad.lower(hidden, head, targets).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes(_plain_logprobs) >= full
    assert temp_bytes(lambda h, w, t: losses.token_logprobs(h, w, t, chunk_size=32)) < full / 4


def test_auto_chunk_size_bounds_the_chunk_logits():
    assert losses.auto_chunk_size(4, 1024, 49152) * 4 * 49152 <= losses.CHUNK_ELEMENTS
    assert losses.auto_chunk_size(1, 16, 100) == 16


def test_bfloat16_hidden_states_stay_close_to_float32():
    hidden, head, targets = _inputs()
    got = losses.token_logprobs(hidden.astype(jnp.bfloat16), head, targets, chunk_size=4)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, _plain_logprobs(hidden, head, targets), atol=0.1)


@pytest.mark.parametrize("tied", [True, False])
def test_model_token_logprobs_equal_the_models_logits(tied):
    config = LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=24, num_layers=2, num_heads=2,
                         num_kv_heads=1, dtype="float32", tie_embeddings=tied)
    params = init_params(config, jax.random.PRNGKey(1))
    _, _, targets = _inputs()
    tokens = jnp.roll(targets, 1, axis=1)
    logits = Llama(config).apply({"params": params}, tokens)
    want = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
    got = losses.model_token_logprobs(Llama(config), params, tokens, targets, chunk_size=4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_loss_sums_from_hidden_equal_the_sums_from_logits():
    hidden, head, targets = _inputs()
    weights = (jax.random.uniform(jax.random.PRNGKey(3), (B, L)) > 0.4).astype(jnp.int32)
    logits = jnp.einsum("bld,dv->blv", hidden, head)
    want = losses.loss_sums_from_logits(logits, targets, weights)
    got = losses.token_loss_sums(hidden, head, targets, weights, chunk_size=3)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def _plain_loss(hidden, head, targets, weights):
    logits = jnp.einsum("bld,dv->blv", hidden, head.astype(hidden.dtype), preferred_element_type=jnp.float32)
    return losses.loss_sums_from_logits(logits, targets, weights)[0]


@pytest.mark.parametrize("chunk", [1, 5, 13])  # 5: the last chunk is padded
def test_loss_gradient_computed_in_the_forward_equals_the_plain_gradient(chunk):
    hidden, head, targets = _inputs()
    weights = jax.random.uniform(jax.random.PRNGKey(4), (B, L)) * (jax.random.uniform(jax.random.PRNGKey(5), (B, L)) > 0.3)
    fused = lambda h, w: 2.5 * losses.token_loss_sums(h, w, targets, weights, chunk_size=chunk)[0]  # noqa: E731
    plain = lambda h, w: 2.5 * _plain_loss(h, w, targets, weights)  # noqa: E731
    np.testing.assert_allclose(fused(hidden, head), plain(hidden, head), rtol=1e-6)
    got, want = jax.grad(fused, (0, 1))(hidden, head), jax.grad(plain, (0, 1))(hidden, head)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    # Under jit and with the head frozen (LoRA): the same hidden-state gradient.
    np.testing.assert_allclose(jax.jit(jax.grad(fused))(hidden, head), want[0], rtol=1e-5, atol=1e-6)


def test_loss_runs_the_head_twice_per_chunk_and_once_less_when_the_head_is_frozen():
    """Logits and the hidden states' gradient; the head's gradient only when the head is differentiated. The
    log-probability path (DPO, GRPO: any cotangent) recomputes the logits in its backward pass instead."""
    hidden, head, targets = _inputs()
    weights = jnp.ones((B, L))
    loss = lambda h, w: losses.token_loss_sums(h, w, targets, weights, chunk_size=4)[0]  # noqa: E731
    dots = lambda f, *a: str(jax.make_jaxpr(f)(*a)).count("dot_general")  # noqa: E731
    assert dots(jax.grad(loss, (0, 1)), hidden, head) == 3
    assert dots(jax.grad(loss), hidden, head) == 2
    logprob_loss = lambda h, w: -jnp.sum(losses.token_logprobs(h, w, targets, chunk_size=4))  # noqa: E731
    assert dots(jax.grad(logprob_loss, (0, 1)), hidden, head) == 4
    with pytest.raises(NotImplementedError, match="weights are data"):
        jax.grad(lambda w: losses.token_loss_sums(hidden, head, targets, w)[0])(weights)


def test_the_two_normalisations_by_hand():
    # microbatch 0: 2 target tokens with CE 1 and 3; microbatch 1: 1 target token with CE 8
    sums, counts = jnp.array([4.0, 8.0]), jnp.array([2.0, 1.0])
    assert float(losses.normalized_loss(sums, counts, "tokens")) == pytest.approx(12.0 / 3)
    assert float(losses.normalized_loss(sums, counts, "microbatch")) == pytest.approx((4.0 / 2 + 8.0 / 1) / 2)
    with pytest.raises(ValueError, match="LOSS_NORMALIZATION"):
        losses.normalized_loss(sums, counts, "rows")


def test_outsider_torch_cross_entropy_agrees():
    """Public import only, PyTorch on the other side: the loss sums and their gradients (computed in our forward
    pass) equal torch's cross_entropy and autograd's."""
    torch = pytest.importorskip("torch")
    from sciriff_jax.train.losses import token_loss_sums

    hidden, head, targets = _inputs()
    weights = np.ones((B, L), np.float32)
    got, count = token_loss_sums(hidden, head, targets, weights, chunk_size=4)
    t_hidden = torch.tensor(np.asarray(hidden), requires_grad=True)
    t_head = torch.tensor(np.asarray(head), requires_grad=True)
    want = torch.nn.functional.cross_entropy((t_hidden @ t_head).reshape(-1, V),
                                             torch.from_numpy(np.asarray(targets)).long().reshape(-1), reduction="sum")
    assert float(count) == B * L
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
    want.backward()
    grads = jax.grad(lambda h, w: token_loss_sums(h, w, targets, weights, chunk_size=4)[0], (0, 1))(hidden, head)
    np.testing.assert_allclose(grads[0], t_hidden.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads[1], t_head.grad.numpy(), rtol=1e-5, atol=1e-6)


def _llama_batch(config, b=4, length=8, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, (b, length + 1)).astype(np.int32)
    weights = (rng.random((b, length)) > 0.3).astype(np.int32)
    weights[1] = 0  # a row without target tokens (its group still has row 0's)
    return {"decoder_input_tokens": jnp.asarray(tokens[:, :-1]), "decoder_target_tokens": jnp.asarray(tokens[:, 1:]),
            "decoder_loss_weights": jnp.asarray(weights), "decoder_segment_ids": jnp.ones((b, length), jnp.int32),
            "decoder_positions": jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))}


@pytest.mark.parametrize("normalization", ["tokens", "microbatch"])
def test_step_loss_is_each_normalisation_computed_by_hand(normalization):
    import optax

    from sciriff_jax.train.step import make_train_step

    config = LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=24, num_layers=1, num_heads=2,
                         num_kv_heads=1, dtype="float32")
    params = init_params(config, jax.random.PRNGKey(2))
    batch = _llama_batch(config)
    logits = Llama(config).apply({"params": params}, batch["decoder_input_tokens"])
    ce = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), np.asarray(batch["decoder_target_tokens"])[..., None],
                             -1)[..., 0]
    w = np.asarray(batch["decoder_loss_weights"], np.float64)
    if normalization == "tokens":
        want = (ce * w).sum() / w.sum()
    else:  # groups of 2 rows: rows (0, 1) and (2, 3), each its own token mean, then their mean
        want = np.mean([(ce[r] * w[r]).sum() / w[r].sum() for r in (slice(0, 2), slice(2, 4))])
    assert abs(want - (ce * w).sum() / w.sum()) > 1e-4 or normalization == "tokens"  # the two really differ
    tx = optax.sgd(0.1)
    results = []
    for mb in (1, 2):
        step = make_train_step(Llama(config), tx, microbatches=mb, donate=False, loss_normalization=normalization,
                               loss_group_rows=2)
        new_params, _, m = step(params, tx.init(params), batch)
        np.testing.assert_allclose(float(m["loss"]), want, rtol=1e-5)
        assert float(m["target_tokens"]) == w.sum()
        results.append(new_params)
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):  # accumulation == one pass
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_loss_weights_refuse_an_unknown_normalisation_and_uneven_groups():
    from sciriff_jax.train.step import loss_weights

    w = jnp.ones((4, 3), jnp.int32)
    with pytest.raises(ValueError, match="LOSS_NORMALIZATION"):
        loss_weights(w, "rows")
    with pytest.raises(ValueError, match="LOSS_MICROBATCH_ROWS=3"):
        loss_weights(w, "microbatch", 3)
    np.testing.assert_allclose(jnp.sum(loss_weights(w, "microbatch", 2)), 1.0)  # two groups of 6 tokens, averaged
