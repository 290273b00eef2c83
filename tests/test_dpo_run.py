"""Preference tasks and the DPO run: pairs rendered by the checkpoint's chat format, loss on assistant turns only;
a run from an HF directory logs rewards and starts at ln 2; a run from a finetune run's MODEL_DIR, full or LoRA (its adapters merged into its base); SimPO."""
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sciriff_jax.data.preferences import PreferenceDataConfig  # noqa: E402
from sciriff_jax.io import loader  # noqa: E402
from sciriff_jax.parallel.sharding import MeshConfig  # noqa: E402
from sciriff_jax.train.dpo import dpo  # noqa: E402
from sciriff_jax.train.dpo_loss import DPOConfig  # noqa: E402
from sciriff_jax.train.finetune import TrainConfig  # noqa: E402
from sciriff_jax.train.optim import OptimizerConfig  # noqa: E402
from tests import hf_dirs  # noqa: E402

PAIRS = [("List the genes.", '["BRCA1", "TP53"]', '["hello"]'),
         ("Is the claim supported?", '{"verdict": "SUPPORT", "evidence": [1]}', "Nothing else."),
         ("Return a JSON array of entities.", '["EGFR"]', "And what else?"),
         ("hello world", "The claim is supported by the evidence.", "world")]


def write_prefs(folder, task="demo_task", split="train"):
    path = folder / task / f"{split}-00000-of-00001.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i, (prompt, chosen, rejected) in enumerate(PAIRS):
            f.write(json.dumps({"_instance_id": f"{task}:{split}:{i}", "input": prompt, "chosen": chosen,
                                "rejected": rejected}) + "\n")
    return folder


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return hf_dirs.tiny_llama_dir(tmp_path_factory.mktemp("hf"))


def test_pairs_are_rendered_by_the_checkpoints_chat_format_with_loss_on_the_assistant_turn(hf_dir, tmp_path):
    from seqio_tasks import preferences

    fmt = loader.resolve_chat_format(hf_dir)
    name = preferences.register(write_prefs(tmp_path / "prefs"), fmt)
    batch = next(preferences.get_pair_dataset(name, split="train", length=64, pairs=4, shuffle=False)
                 .as_numpy_iterator())
    assert batch["decoder_target_tokens"].shape == (8, 64)
    for i, (prompt, chosen, rejected) in enumerate(PAIRS):
        for row, answer in ((2 * i, chosen), (2 * i + 1, rejected)):
            enc = fmt.encode_chat([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}])
            n = len(enc.ids) - 1
            np.testing.assert_array_equal(batch["decoder_input_tokens"][row, :n], enc.ids[:-1])
            np.testing.assert_array_equal(batch["decoder_target_tokens"][row, :n], enc.ids[1:])
            np.testing.assert_array_equal(batch["decoder_loss_weights"][row, :n], enc.mask[1:])
            assert batch["decoder_loss_weights"][row, n:].sum() == 0 and batch["decoder_segment_ids"][row, n:].sum() == 0
            answer_ids = [t for t, m in zip(enc.ids, enc.mask) if m]
            assert fmt.decode(answer_ids).startswith(answer)  # the answer and its end of turn, nothing of the prompt
    assert preferences.count_pairs(name, split="train", length=64) == (4, 0)
    assert preferences.count_pairs(name, split="train", length=12)[1] > 0  # longer pairs are counted, left out


def _run(model_dir, initial, prefs, preference=DPOConfig(beta=0.1), steps=3, lora=None):
    return dpo(TrainConfig(model_dir=str(model_dir), train_steps=steps, batch_size=4, initial_checkpoint_path=str(initial),
                           checkpoint_period=steps, log_every=1, tensorboard=False, async_checkpoints=False),
               PreferenceDataConfig(path=str(prefs), length=64), preference,
               optimizer=OptimizerConfig(learning_rate=1e-2, warmup_ratio=0.0, schedule="constant"),
               mesh=MeshConfig(layout="fsdp"), lora=lora)  # 8 rows over the 8 test devices


def test_dpo_from_an_hf_directory_starts_at_ln2_logs_rewards_and_learns(hf_dir, tmp_path):
    summary = _run(tmp_path / "run", hf_dir, write_prefs(tmp_path / "prefs"))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, last = records[0], records[-1]
    assert abs(first["loss"] - math.log(2)) < 1e-5 and first["rewards/margins"] == 0.0
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracy", "grad_norm"):
        assert key in last
    assert last["loss"] < math.log(2) and last["rewards/margins"] > 0
    assert summary["preference"]["reference"].startswith("INITIAL_CHECKPOINT_PATH=")
    assert summary["preference"]["pairs"] == 4
    # The run's MODEL_DIR records the checkpoint's format: eval / export use it as for a finetune run.
    assert loader.resolve_chat_format(tmp_path / "run") == loader.resolve_chat_format(hf_dir)
    resumed = _run(tmp_path / "run", hf_dir, write_prefs(tmp_path / "prefs"), steps=4)  # resumes: reference reloaded
    assert resumed["start_step"] == 3 and resumed["steps"] == 1


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_lora_dpo_trains_adapters_only_with_the_base_without_adapters_as_reference(hf_dir, tmp_path, quantize):
    import jax

    from sciriff_jax.model.lora import LoraConfig

    if quantize:
        pytest.importorskip("qwix")
    lora = LoraConfig(rank=4, alpha=8.0, quantize=quantize)
    summary = _run(tmp_path / "run", hf_dir, write_prefs(tmp_path / "prefs"), lora=lora)
    assert summary["preference"]["reference"] == "the base without adapters"
    assert abs(summary["first_loss"] - math.log(2)) < 1e-5  # B = 0: the starting policy is the reference
    assert summary["last_loss"] < summary["first_loss"]
    # The trained (and checkpointed, optimizer-stated) tree is the adapters only, not a copy of the base.
    base = sum(x.size for x in jax.tree.leaves(loader.load(hf_dir, with_tokenizer=False).params))
    assert 0 < summary["num_params"] < base / 5, (summary["num_params"], base)


def test_simpo_needs_no_reference_and_learns(hf_dir, tmp_path):
    summary = _run(tmp_path / "run", hf_dir, write_prefs(tmp_path / "prefs"), DPOConfig("simpo", beta=2.0))
    assert summary["preference"]["reference"].startswith("none")
    assert summary["last_loss"] < summary["first_loss"]


def test_dpo_gin_checks_its_macros_against_the_config_fields():
    from sciriff_jax.run import main as main_lib

    required = ['MODEL_DIR="/x"', 'INITIAL_CHECKPOINT_PATH="/y"', 'PREFERENCE_DATA="/z"']
    main_lib.parse_gin([str(main_lib.GIN_CONFIGS_DIR / "runs" / "dpo.gin")], required)
    with pytest.raises(main_lib.GinConfigError, match="LOSS='ipo': expected one of 'dpo', 'simpo'"):
        main_lib.parse_gin([str(main_lib.GIN_CONFIGS_DIR / "runs" / "dpo.gin")], required + ['LOSS="ipo"'])


def test_sciriff_jax_dpo_runs_runs_dpo_gin_with_lora_from_an_hf_directory(hf_dir, tmp_path):
    from sciriff_jax.run import cli

    prefs = write_prefs(tmp_path / "prefs")
    assert cli.main(["dpo", f'--gin.MODEL_DIR="{tmp_path / "run"}"', f'--gin.INITIAL_CHECKPOINT_PATH="{hf_dir}"',
                     f'--gin.PREFERENCE_DATA="{prefs}"', "--gin.PREFERENCE_LENGTH=64", "--gin.TRAIN_STEPS=2",
                     "--gin.BATCH_SIZE=4", '--gin.MESH_LAYOUT="fsdp"', "--gin.LEARNING_RATE=1e-2",
                     "--gin.LORA=@LoraConfig()", "--gin.LoraConfig.rank=4", "--gin.LOG_EVERY=1"]) == 0
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["preference"]["lora"]["rank"] == 4 and summary["steps"] == 2
    assert "rewards/accuracy" in json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])


def test_dpo_trains_from_a_lora_finetune_runs_model_dir_whose_merged_model_is_the_reference(hf_dir, tmp_path):
    import jax

    from sciriff_jax.data.batches import DataConfig
    from sciriff_jax.model.lora import LoraConfig
    from sciriff_jax.train.finetune import finetune

    lora_run = tmp_path / "lora_run"
    finetune(TrainConfig(model_dir=str(lora_run), train_steps=2, batch_size=8, initial_checkpoint_path=str(hf_dir),
                         checkpoint_period=2, log_every=1, tensorboard=False, async_checkpoints=False),
             DataConfig("sciriff_sample", {"targets": 64}),  # the built-in sample, in the HF tokenizer: recorded
             optimizer=OptimizerConfig(learning_rate=1e-1, warmup_ratio=0.0, schedule="constant"),
             lora=LoraConfig(rank=4, alpha=8.0))
    merged = loader.load(lora_run, with_tokenizer=False).params  # the LoRA run's adapters merged into its base
    base = loader.load(hf_dir, with_tokenizer=False).params
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(base)))
    summary = _run(tmp_path / "dpo", lora_run, write_prefs(tmp_path / "prefs"), steps=2)
    assert abs(summary["first_loss"] - math.log(2)) < 1e-5 and summary["steps"] == 2
