"""Orbax checkpoints: params+config roundtrip, latest-step resolution, atomic commits, keep-N, training restore."""
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sciriff_jax.io import checkpoint as ck


def _params():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return {"dense": {"kernel": jax.random.normal(k1, (8, 4)), "bias": jnp.zeros((4,))},
            "embed": jax.random.normal(k2, (16, 8)).astype(jnp.bfloat16)}


def _assert_tree_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))


def _tiny_config():
    cfg_mod = pytest.importorskip("sciriff_jax.model.config")
    return cfg_mod.LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2,
                               num_kv_heads=1)


def test_save_params_then_load_params_returns_same_params_and_config(tmp_path):
    cfg = _tiny_config()
    p = _params()
    ck.save_params(tmp_path / "ckpt", p, cfg)
    p2, cfg2 = ck.load_params(tmp_path / "ckpt")
    _assert_tree_equal(p, p2)
    assert cfg2 == cfg


def test_relative_checkpoint_paths_load_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ck.save_params("run/ckpt", _params(), _tiny_config())
    params, _ = ck.load_params("run/ckpt")
    _assert_tree_equal(_params(), params)


def test_load_params_onto_shardings_places_arrays_on_the_mesh(tmp_path):
    cfg = _tiny_config()
    p = _params()
    ck.save_params(tmp_path / "ckpt", p, cfg)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("data",))
    sh = jax.tree.map(lambda x: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")), p)
    p2, _ = ck.load_params(tmp_path / "ckpt", shardings=sh)
    assert p2["dense"]["kernel"].sharding == sh["dense"]["kernel"]
    _assert_tree_equal(p, p2)


def test_resolve_takes_latest_committed_step_and_ignores_half_written_ones(tmp_path):
    ck.save_params(tmp_path / "checkpoints" / "3", _params(), {"vocab_size": 16})
    ck.save_params(tmp_path / "checkpoints" / "10", _params(), {"vocab_size": 16})
    # What a crash during an Orbax save leaves behind: a temporary directory, never "<step>".
    half = tmp_path / "checkpoints" / "20.orbax-checkpoint-tmp-1234"
    (half / "params").mkdir(parents=True)
    assert ck.resolve_checkpoint_dir(tmp_path) == tmp_path / "checkpoints" / "10"
    assert ck.resolve_checkpoint_dir(tmp_path / "checkpoints" / "3") == tmp_path / "checkpoints" / "3"
    mgr = ck.TrainCheckpointer(tmp_path, period=1)
    assert mgr.latest_step() == 10
    mgr.close()


def test_missing_checkpoint_error_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        ck.resolve_checkpoint_dir(tmp_path)


def test_train_checkpointer_keeps_n_and_restores_params_optimizer_and_data_position(tmp_path):
    p = _params()
    tx = optax.adamw(1e-2)
    opt = tx.init(p)
    mgr = ck.TrainCheckpointer(tmp_path, period=2, keep=2, config={"vocab_size": 16})
    saved = {}
    for step in range(1, 7):
        g = jax.tree.map(lambda x: jnp.ones_like(x) * step, p)
        upd, opt = tx.update(g, opt, p)
        p = optax.apply_updates(p, upd)
        if mgr.should_save(step):
            mgr.save(step, p, opt, {"batches_consumed": step * 3, "seed": 7})
            saved[step] = (p, opt)
    mgr.close()
    assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == [4, 6]
    mgr2 = ck.TrainCheckpointer(tmp_path, period=2, keep=2)
    step, p2, opt2, state = mgr2.restore_latest(_params(), tx.init(_params()))
    mgr2.close()
    assert step == 6 and state == {"batches_consumed": 18, "seed": 7, "step": 6}
    _assert_tree_equal(saved[6][0], p2)
    _assert_tree_equal(saved[6][1], opt2)


def test_restore_latest_returns_none_on_a_fresh_model_dir(tmp_path):
    mgr = ck.TrainCheckpointer(tmp_path, period=5)
    assert mgr.restore_latest(_params(), None) is None
    mgr.close()


def test_preemption_guard_turns_sigterm_into_a_request():
    with ck.PreemptionGuard() as guard:
        assert not guard.requested()
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.requested()
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.default_int_handler) or callable(
        signal.getsignal(signal.SIGTERM))
