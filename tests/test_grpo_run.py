"""A real GRPO run as a user starts it (`sciriff-jax train --gin_file=runs/grpo.gin`) from a tiny SFT run on the
built-in sample: every metric of an update is logged, and a SIGKILLed run resumes with the same rewards and
losses as an uninterrupted one (fixed sampling seed)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT
from tests.subprocess_runs import cpu_env, run_ok

STEPS, PERIOD, KILL_AT = 4, 2, 3
TINY = ["--gin_bindings=LlamaConfig.num_layers=1", "--gin_bindings=LlamaConfig.hidden_size=32",
        "--gin_bindings=LlamaConfig.intermediate_size=64", "--gin_bindings=LlamaConfig.num_heads=2",
        "--gin_bindings=LlamaConfig.num_kv_heads=1"]


def _run(cmd):
    return run_ok(cmd, cpu_env(devices=2))


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
    """A tiny SFT run on the real sample (its tokenizer and template recorded in MODEL_DIR/tokenizer)."""
    model_dir = tmp_path_factory.mktemp("sft") / "model"
    _run([sys.executable, "-m", "sciriff_jax.main", "--gin_file=gin_configs/models/tiny.gin",
          "--gin_file=gin_configs/runs/finetune.gin", f'--gin.MODEL_DIR="{model_dir}"',
          '--gin.MIXTURE_OR_TASK_NAME="sciriff_sample"', "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=2",
          '--gin.TASK_FEATURE_LENGTHS={"targets": 128}', "--gin.CHECKPOINT_PERIOD=2",
          "--gin_bindings=TrainConfig.tensorboard=False", *TINY])
    return model_dir


def _grpo(model_dir, sft_dir, *extra):
    return [sys.executable, "-m", "sciriff_jax.run.cli", "train", "--gin_file=gin_configs/runs/grpo.gin",
            f'--gin.MODEL_DIR="{model_dir}"', f'--gin.INITIAL_CHECKPOINT_PATH="{sft_dir}"',
            '--gin.MIXTURE_OR_TASK_NAME="sciriff_sample"', "--gin.MAX_EXAMPLES=8", f"--gin.TRAIN_STEPS={STEPS}",
            "--gin.PROMPTS_PER_UPDATE=2", "--gin.SAMPLES_PER_PROMPT=2", "--gin.MAX_NEW_TOKENS=12",
            "--gin.ROLLOUT_BATCH_SIZE=4", "--gin.LEARNING_RATE=1e-3", "--gin.INNER_STEPS=2", "--gin.KL_COEF=0.05",
            "--gin.FORMAT_REWARD_WEIGHT=0.5", f"--gin.CHECKPOINT_PERIOD={PERIOD}", *extra]


def _records(model_dir):
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "reward_mean" in r]


def _run_to_kill(cmd, model_dir):
    """SIGKILL the run during step KILL_AT, once checkpoint PERIOD is sealed: the save is asynchronous, so the
    "step KILL_AT" line alone can come while PERIOD is still being written (a kill then leaves nothing to resume)."""
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=cpu_env(devices=2), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if f"step {KILL_AT}/{STEPS}" in line:
            break
    sealed = model_dir / "checkpoints" / str(PERIOD)
    deadline = time.monotonic() + 120
    while proc.poll() is None and not list(sealed.glob("sciriff_checksums-*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # only committed, sealed checkpoints survive
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-30:])


@pytest.mark.slow  # three real runs in subprocesses
def test_grpo_logs_every_metric_and_a_killed_run_resumes_exactly(sft_dir, tmp_path):
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    done = _run(_grpo(full, sft_dir))
    records = _records(full)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for key in ("reward_mean", "reward_std", "task_reward_mean", "parse_rate", "response_length_mean", "kl",
                "clip_fraction", "entropy", "rollout_tokens_per_s", "train_tokens_per_s", "rollout_s", "train_s",
                "loss", "grad_norm", "learning_rate", "ratio_first"):
        assert all(key in r for r in records), key
    # per task: the tasks of the update's prompts
    assert all(any(k.startswith("reward/sciriff_sample_") and k.endswith("/mean") for k in r) for r in records)
    assert all(abs(r["ratio_first"] - 1.0) < 1e-4 for r in records)  # the sampler's log-probs are the policy's
    assert "reward 0." in done.stdout and "rollout" in done.stdout  # the progress line reads like an RL run
    assert (full / "tensorboard").is_dir()
    summary = json.loads((full / "train_summary.json").read_text())
    assert summary["trainer"] == "grpo" and summary["final_step"] == STEPS

    _run_to_kill(_grpo(crashed, sft_dir), crashed)
    again = _run(_grpo(crashed, sft_dir))
    assert f"resumed from {crashed}/checkpoints/{PERIOD}" in again.stdout
    got = {r["step"]: (r["reward_mean"], r["loss"], r["kl"]) for r in _records(crashed)}
    assert got == {r["step"]: (r["reward_mean"], r["loss"], r["kl"]) for r in records}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tests import hf_dirs

    return hf_dirs.tiny_llama_dir(tmp_path_factory.mktemp("hf"))


def test_grpo_from_an_hf_directory_on_the_fake_mesh(hf_dir, tmp_path):
    """In process, the way a library user calls it: an HF directory (its own byte-level BPE tokenizer and ChatML
    template render the sample's prompts), FSDP over the 8 fake devices, KL to the start, DAPO's aggregation."""
    from sciriff_jax.parallel.sharding import MeshConfig
    from sciriff_jax.train.finetune import TrainConfig
    from sciriff_jax.train.grpo import GRPOConfig, grpo
    from sciriff_jax.train.optim import OptimizerConfig

    rl = GRPOConfig("sciriff_sample", max_examples=2, prompts_per_update=4, samples_per_prompt=2, max_new_tokens=8,
                    rollout_batch_size=8, kl_coef=0.1, loss_aggregation="token", clip_eps_high=0.28)
    train = TrainConfig(model_dir=str(tmp_path / "run"), train_steps=2, initial_checkpoint_path=str(hf_dir),
                        checkpoint_period=2, tensorboard=False, log_every=1)
    summary = grpo(rl, train, optimizer=OptimizerConfig(learning_rate=1e-3, warmup_ratio=0.0),
                   mesh=MeshConfig("fsdp"))
    assert summary["final_step"] == 2 and summary["trainer"] == "grpo"
    records = _records(tmp_path / "run")
    assert [r["step"] for r in records] == [1, 2]
    assert all(abs(r["ratio_first"] - 1.0) < 1e-4 and r["kl"] >= 0 for r in records)
    assert records[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the first update's policy is the reference
    assert (tmp_path / "run" / "tokenizer").is_dir()  # eval and export of this run use the HF dir's format


def test_lora_grpo_from_an_hf_directory_trains_adapters_over_the_base(hf_dir, tmp_path):
    """LoRA GRPO: adapters over the frozen base of an HF directory; the first update's policy is the base itself
    (B = 0: KL 0 to the reference, the base without adapters), and a later one has moved away from it."""
    from sciriff_jax.model.lora import LoraConfig
    from sciriff_jax.train.finetune import TrainConfig
    from sciriff_jax.train.grpo import GRPOConfig, grpo
    from sciriff_jax.train.optim import OptimizerConfig

    rl = GRPOConfig("sciriff_sample", max_examples=2, prompts_per_update=4, samples_per_prompt=2, max_new_tokens=8,
                    rollout_batch_size=8, kl_coef=0.1)
    train = TrainConfig(model_dir=str(tmp_path / "run"), train_steps=2, initial_checkpoint_path=str(hf_dir),
                        checkpoint_period=2, tensorboard=False, log_every=1)
    summary = grpo(rl, train, optimizer=OptimizerConfig(learning_rate=5e-2, warmup_ratio=0.0),
                   lora=LoraConfig(rank=4, alpha=8.0))
    assert summary["final_step"] == 2
    records = _records(tmp_path / "run")
    assert all(abs(r["ratio_first"] - 1.0) < 1e-4 for r in records)
    assert records[0]["kl"] == pytest.approx(0.0, abs=1e-7)
    # A random model's answers mostly score alike (no advantage, no update); when one group differed, the adapters
    # moved and the policy left the base.
    if records[0]["zero_advantage_groups"] < 1:
        assert records[1]["kl"] > 0
