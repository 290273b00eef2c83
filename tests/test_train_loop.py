"""The training loop: metrics.jsonl + TensorBoard, eval hook schedule, periodic checkpoints, SIGTERM -> save + exit."""
import json
import os
import signal
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from sciriff_jax.io import checkpoint
from sciriff_jax.data import batches as data
from sciriff_jax.train import run_log as logging_utils
from sciriff_jax.train import optim
from sciriff_jax.train import loop
from sciriff_jax.train.preemption import PreemptionGuard
from sciriff_jax.train import step as train

VOCAB, LENGTH, BATCH = 32, 16, 4


class TinyLM(nn.Module):
    @nn.compact
    def __call__(self, tokens, segment_ids=None, positions=None):
        return nn.Dense(VOCAB)(nn.Embed(VOCAB, 8)(tokens))


def _run(tmp_path, train_steps=6, eval_fn=None, preemption=None, start=None, log_every=2):
    model = TinyLM()
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("data",))
    bsh = NamedSharding(mesh, P("data"))
    tx, sched = optim.make_optimizer(1e-2, train_steps, warmup_ratio=0.5)
    params = jax.device_put(model.init(jax.random.PRNGKey(0), jnp.zeros((1, LENGTH), jnp.int32))["params"],
                            NamedSharding(mesh, P()))
    opt_state = tx.init(params)
    batches = data.synthetic_batches(sharding=bsh, global_batch_size=BATCH, length=LENGTH, vocab_size=VOCAB)
    ckpt = checkpoint.TrainCheckpointer(tmp_path, period=3, keep=5)
    start_step = 0
    if start == "resume":
        rep = NamedSharding(mesh, P())
        start_step, params, opt_state, st = ckpt.restore_latest(
            params, opt_state, jax.tree.map(lambda _: rep, params), jax.tree.map(lambda _: rep, opt_state))
        batches.restore(st)
    logger = logging_utils.RunLogger(tmp_path, total_steps=train_steps, start_step=start_step,
                                     tokens_per_step=BATCH * LENGTH, flops_per_token=100.0, log_every=log_every)
    try:
        return loop.train_loop(step_fn=train.make_train_step(model, tx), params=params, opt_state=opt_state,
                                batches=batches, settings=loop.LoopConfig(
                                    train_steps=train_steps, start_step=start_step, eval_every=4 if eval_fn else None,
                                    eval_at_start=eval_fn is not None),
                                schedule=sched, checkpointer=ckpt, logger=logger, eval_fn=eval_fn,
                                preemption=preemption)
    finally:
        logger.close()
        ckpt.close()


def test_loop_writes_metrics_jsonl_tensorboard_and_checkpoints(tmp_path):
    calls = []
    out = _run(tmp_path, eval_fn=lambda p, step: calls.append(step) or {"loss": 1.0 + step, "nested": {"f1": 0.5}})
    recs = logging_utils.read_metrics(tmp_path)
    train_recs = [r for r in recs if "loss" in r]
    assert [r["step"] for r in train_recs] == [1, 2, 4, 6]
    for r in train_recs:
        assert {"step", "loss", "learning_rate", "grad_norm", "tokens_per_s"} <= set(r)
        assert np.isfinite(r["loss"]) and r["tokens_per_s"] > 0
    assert train_recs[0]["learning_rate"] == 0.0 and train_recs[1]["learning_rate"] > 0
    assert calls == [0, 4, 6]  # at start, every 4 steps, and at the end
    evals = [r for r in recs if "eval/loss" in r]
    assert [r["step"] for r in evals] == [0, 4, 6] and evals[0]["eval/nested/f1"] == 0.5
    assert out["initial_eval"]["loss"] == 1.0 and out["final_eval"]["loss"] == 7.0
    assert out["first_loss"] == train_recs[0]["loss"] and out["last_loss"] == train_recs[-1]["loss"]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
    assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()) == [3, 6]


def test_resumed_loop_logs_the_same_losses_as_an_uninterrupted_one(tmp_path):
    full = _run(tmp_path / "full", log_every=1)
    first = _run(tmp_path / "part", train_steps=6, log_every=1)
    # drop everything after step 3, as if the run had died right after its step-3 checkpoint
    import shutil
    shutil.rmtree(tmp_path / "part" / "checkpoints" / "6")
    resumed = _run(tmp_path / "part", start="resume", log_every=1)
    assert resumed["start_step"] == 3
    assert [resumed["losses"][s] for s in (4, 5, 6)] == [full["losses"][s] for s in (4, 5, 6)]
    assert first["losses"] == full["losses"]


class _SigtermAtStep:
    """A PreemptionGuard that delivers SIGTERM to this process during step `at`."""

    def __init__(self, guard, at):
        self.guard, self.at, self.n = guard, at, 0

    def requested(self):
        self.n += 1
        if self.n == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return self.guard.requested()


def test_sigterm_saves_a_checkpoint_then_exits(tmp_path):
    with PreemptionGuard() as guard:
        with pytest.raises(loop.Preempted) as err:
            _run(tmp_path, train_steps=10, preemption=_SigtermAtStep(guard, 2))
    assert err.value.code == 143 and err.value.step == 2
    mgr = checkpoint.TrainCheckpointer(tmp_path, period=3)
    assert mgr.latest_step() == 2
    mgr.close()
    st = json.load(open(tmp_path / "checkpoints" / "2" / "train_state" / "metadata"))
    assert st["batches_consumed"] == 2 and st["step"] == 2


def test_mfu_is_reported_only_for_known_devices():
    assert logging_utils.device_peak_flops(type("D", (), {"device_kind": "NVIDIA H100 80GB HBM3"})()) == 989e12
    assert logging_utils.device_peak_flops(type("D", (), {"device_kind": "TPU v5 lite"})()) == 197e12
    assert logging_utils.device_peak_flops(type("D", (), {"device_kind": "cpu"})()) is None


def test_operative_config_is_saved_in_model_dir(tmp_path):
    path = logging_utils.save_operative_config(tmp_path, "finetune.batch_size = 8\n")
    assert open(path).read() == "finetune.batch_size = 8\n"


def test_progress_eta_follows_the_latest_pace_not_the_compile_time(tmp_path, monkeypatch, capsys):
    from sciriff_jax.train import run_log as logging_utils

    clock = iter([0.0, 100.0, 110.0])  # start; step 1 after a 100 s compile; step 10 ten seconds later
    # Only logging_utils's view of the clock changes (other threads keep the real time.time).
    monkeypatch.setattr(logging_utils, "time", types.SimpleNamespace(time=lambda: next(clock)))
    logger = logging_utils.RunLogger(tmp_path, total_steps=111, tokens_per_step=10, log_every=10, tensorboard=False)
    logger.log_train(1, {"loss": 1.0})
    logger.log_train(10, {"loss": 0.5})
    first, second = capsys.readouterr().out.strip().splitlines()
    assert "eta -- (first step compiles)" in first
    assert second.endswith("eta 01:52")  # 9 steps took 10 s; 101 steps left take 112 s


def test_after_a_resume_metrics_jsonl_has_exactly_one_record_per_logged_step(tmp_path, capsys):
    import shutil

    fresh = tmp_path / "fresh"
    _run(fresh, train_steps=6)
    want = [r["step"] for r in logging_utils.read_metrics(fresh)]
    interrupted = tmp_path / "interrupted"
    _run(interrupted, train_steps=6)
    shutil.rmtree(interrupted / "checkpoints" / "6")  # as if killed after logging step 6, before its checkpoint
    with open(interrupted / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "loss"')  # and mid-way through writing a line
    _run(interrupted, train_steps=6, start="resume")  # restores step 3, runs 4..6 again
    got = [r["step"] for r in logging_utils.read_metrics(interrupted)]
    assert got == want and len(set(got)) == len(got)
    assert "dropped 3 record(s) past step 3" in capsys.readouterr().out  # steps 4 and 6, and the cut line
