"""The whole path, offline: an HF directory (tiny Llama + byte-level BPE tokenizer.json + ChatML template) ->
`sciriff-jax train` from it with no model gin file -> eval on the built-in sample -> export -> transformers reloads
the export and greedy-generates the tokens our decoder does."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tests import hf_dirs  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    transformers.LlamaForCausalLM(config).save_pretrained(d)
    hf_dirs.byte_bpe_tokenizer(d, bos=False, template=hf_dirs.CHATML, eos="<|im_end|>")
    return d


def test_hf_directory_trains_evaluates_and_exports_with_its_own_tokenizer_and_template(hf_dir, tmp_path):
    from sciriff_jax.decoding.generate import GenerationConfig, generate
    from sciriff_jax.eval import evaluate
    from sciriff_jax.io import convert, loader

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "sciriff_jax.main", "--gin_file=gin_configs/runs/finetune.gin",
           f'--gin.MODEL_DIR="{run}"', '--gin.MIXTURE_OR_TASK_NAME="sciriff_sample"',
           f'--gin.INITIAL_CHECKPOINT_PATH="{hf_dir}"', "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=8",
           '--gin.TASK_FEATURE_LENGTHS={"targets": 256}', "--gin.CHECKPOINT_PERIOD=2"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert f"is read as sciriff_f" in out.stdout and f"the vocabulary {hf_dir / 'tokenizer.json'}" in out.stdout
    record = json.loads((run / "tokenizer" / "sciriff_tokenizer.json").read_text())
    assert record["template"] == "model"

    # Eval of the run: its recorded tokenizer and ChatML template, no flags (the default release protocol).
    eval_config = evaluate.EvalConfig("sciriff_sample_list_qa", max_examples=2, max_new_tokens=8, batch_size=2)
    summary = evaluate.evaluate_run(checkpoint_path=str(run), eval_config=eval_config,
                                    output_dir=str(tmp_path / "eval"), dtype="float32")
    assert "its chat template" in summary["settings"]["tokenizer"]
    assert len((tmp_path / "eval" / "predictions" / "sciriff_sample_list_qa.jsonl").read_text().splitlines()) == 2

    # Export; transformers loads tokenizer + model and greedy-generates our tokens (fp32).
    convert.export_hf(str(run), tmp_path / "export")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32).eval()
    ours = loader.load(str(run), dtype="float32")
    chat = [{"role": "user", "content": "List the genes in: BRCA1 and TP53 are genes."}]
    prompt = ours.chat_format.prompt_ids(chat[0]["content"])
    assert prompt == tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
    mine = generate(ours.config, ours.params, [prompt], GenerationConfig(12, ours.chat_format.eos_id), batch_size=1)[0]
    with torch.no_grad():
        theirs = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    theirs = theirs[0, len(prompt):].tolist()
    if tokenizer.eos_token_id in theirs:
        theirs = theirs[: theirs.index(tokenizer.eos_token_id)]
    assert mine == theirs and len(mine) > 0
    np.testing.assert_equal(tokenizer.eos_token_id, ours.chat_format.eos_id)
