"""Orbax checkpoints: params+config roundtrip, latest-step resolution, atomic commits, keep-N, training restore."""
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sciriff_jax.io import checkpoint as ck
from sciriff_jax.train.preemption import PreemptionGuard


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
    with PreemptionGuard() as guard:
        assert not guard.requested()
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.requested()
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.default_int_handler) or callable(
        signal.getsignal(signal.SIGTERM))


# ----------------------------------------------------------------------------- verified checkpoints


def _train_dir(tmp_path, steps=(2, 4, 6)):
    """A MODEL_DIR with real training checkpoints at `steps`; returns the params saved at each step."""
    p, tx = _params(), optax.adamw(1e-2)
    opt, saved = tx.init(p), {}
    mgr = ck.TrainCheckpointer(tmp_path, period=2, keep=5, config=_tiny_config())
    for step in steps:
        p = jax.tree.map(lambda x: x + step, p)
        mgr.save(step, p, opt, {"batches_consumed": step})
        saved[step] = p
    mgr.close()
    return saved, tx


def _largest_file(folder):
    files = [os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs]
    return max(files, key=os.path.getsize)


def _flip_bytes(path):
    data = bytearray(open(path, "rb").read())
    for i in range(0, len(data), max(len(data) // 8, 1)):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))  # same size, different bytes


def _restore(tmp_path, tx, logs):
    mgr = ck.TrainCheckpointer(tmp_path, period=2, log=logs.append)
    try:
        return mgr.restore_latest(_params(), tx.init(_params()))
    finally:
        mgr.close()


def test_every_saved_step_records_checksums_that_verify(tmp_path):
    _train_dir(tmp_path)
    for step in (2, 4, 6):
        step_dir = tmp_path / "checkpoints" / str(step)
        assert any(n.startswith("sciriff_checksums-") for n in os.listdir(step_dir))
        assert ck.verify_step(step_dir) is None


@pytest.mark.parametrize("damage", ["flip bytes", "truncate", "delete metadata"])
def test_a_damaged_newest_step_is_skipped_with_a_log_line_and_the_next_older_restored(tmp_path, damage):
    saved, tx = _train_dir(tmp_path)
    newest = tmp_path / "checkpoints" / "6"
    target = _largest_file(newest / "params") if damage != "delete metadata" else newest / "params" / "_METADATA"
    if damage == "flip bytes":
        _flip_bytes(target)
    elif damage == "truncate":
        os.truncate(target, os.path.getsize(target) // 2)
    else:
        os.remove(target)
    logs = []
    step, params, _, state = _restore(tmp_path, tx, logs)
    assert step == 4 and state["batches_consumed"] == 4
    _assert_tree_equal(saved[4], params)
    (line,) = logs
    assert line.startswith("skipping checkpoint step 6:") and os.path.relpath(target, newest) in line
    assert {"flip bytes": "contents changed", "truncate": "truncated", "delete metadata": "missing"}[damage] in line
    assert not newest.exists() and os.listdir(tmp_path / "checkpoints_corrupt")[0].startswith("6-")
    # the run goes on from step 4 and can save step 6 again
    mgr = ck.TrainCheckpointer(tmp_path, period=2)
    assert mgr.latest_step() == 4
    mgr.save(6, params, tx.init(params), {"batches_consumed": 6})
    mgr.close()
    assert ck.verify_step(newest) is None


def test_a_step_without_checksums_is_not_restored(tmp_path):
    saved, tx = _train_dir(tmp_path, steps=(2, 4))
    os.remove(next((tmp_path / "checkpoints" / "4").glob("sciriff_checksums-*")))  # killed before the seal
    logs = []
    step, params, _, _ = _restore(tmp_path, tx, logs)
    assert step == 2 and "no checksums recorded" in logs[0]


def test_when_no_step_verifies_nothing_is_moved_and_the_error_lists_each_step(tmp_path):
    _, tx = _train_dir(tmp_path, steps=(2, 4))
    for step in (2, 4):
        _flip_bytes(_largest_file(tmp_path / "checkpoints" / str(step) / "params"))
    with pytest.raises(ck.CorruptCheckpointError, match=r"no checkpoint .* verifies: step 4: .*; step 2: "):
        _restore(tmp_path, tx, [])
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]


def test_loading_a_corrupt_checkpoint_for_eval_or_export_is_an_error_naming_the_file(tmp_path):
    from sciriff_jax.io import loader

    _train_dir(tmp_path, steps=(2, 4))
    bad = _largest_file(tmp_path / "checkpoints" / "4" / "params")
    _flip_bytes(bad)
    with pytest.raises(ck.CorruptCheckpointError) as err:
        loader.load(tmp_path)
    assert os.path.basename(bad) in str(err.value) and f"{tmp_path}/checkpoints/2" in str(err.value)
    params, _ = ck.load_params(tmp_path / "checkpoints" / "2")  # the older step, named explicitly, still loads
    assert params is not None


def test_nonfinite_stop_names_the_newest_checkpoint_that_still_verifies(tmp_path):
    from sciriff_jax.train import loop

    p, tx = _params(), optax.adamw(1e-2)
    mgr = ck.TrainCheckpointer(tmp_path, period=2, keep=5)

    def step_fn(params, opt_state, batch):
        if batch == 5:  # steps 2 and 4 are saved; step 4 is damaged on disk before step 5 fails
            mgr.wait()
            _flip_bytes(_largest_file(tmp_path / "checkpoints" / "4" / "params"))
            return params, opt_state, {"finite": False, "loss": float("nan"), "grad_norm": 0.0, "target_tokens": 1.0}
        return params, opt_state, {"finite": True, "loss": 1.0, "grad_norm": 0.0, "target_tokens": 1.0}

    class Batches:
        n = 0

        def __next__(self):
            self.n += 1
            return self.n

        def state(self):
            return {"batches_consumed": self.n}

    with pytest.raises(loop.NonFiniteLossError, match=rf"last good checkpoint: {tmp_path}/checkpoints/2 \(checksums"):
        loop.train_loop(step_fn=step_fn, params=p, opt_state=tx.init(p), batches=Batches(),
                        settings=loop.LoopConfig(train_steps=6), checkpointer=mgr)
    mgr.close()


def test_eval_and_export_of_a_corrupt_checkpoint_exit_with_an_error_naming_the_file(tmp_path, capsys):
    from sciriff_jax.run import cli

    _train_dir(tmp_path / "run", steps=(2,))
    bad = _largest_file(tmp_path / "run" / "checkpoints" / "2" / "params")
    _flip_bytes(bad)
    assert cli.main(["export", str(tmp_path / "run"), str(tmp_path / "hf")]) == 2
    assert f"{os.path.relpath(bad, tmp_path / 'run' / 'checkpoints' / '2')}: contents changed" in capsys.readouterr().err
    assert not (tmp_path / "hf" / "config.json").exists()
    assert cli.main(["eval", f'--gin.CHECKPOINT_PATH="{tmp_path / "run"}"', '--gin.MIXTURE_OR_TASK_NAME="sciriff_sample"',
                     "--gin.MAX_EXAMPLES=1", f'--gin.OUTPUT_DIR="{tmp_path / "eval"}"']) == 2
    assert "failed verification" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


def test_verify_lists_each_step_and_fails_on_a_corrupt_one(tmp_path, capsys):
    from sciriff_jax.run import cli

    _train_dir(tmp_path, steps=(2, 4))
    assert cli.main(["verify", str(tmp_path)]) == 0
    _flip_bytes(_largest_file(tmp_path / "checkpoints" / "4" / "params"))
    assert cli.main(["verify", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path}/checkpoints/2: ok" in out and f"{tmp_path}/checkpoints/4: CORRUPT: " in out
