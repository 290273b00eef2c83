"""A SentencePiece tokenizer.model as a Hugging Face tokenizer.json (sciriff_jax/io/spm_json.py): the same ids as
SentencePiece on every text of the built-in sample, for the sample's own vocabulary and for SentencePiece's default
settings; and, as a transformers user sees it, `sciriff-jax export` of a run trained with a SentencePiece vocabulary
writes a tokenizer.json that AutoTokenizer reads and that encodes chat prompts to the run's ids."""
import io
import json
import sys

import pytest
import sentencepiece as spm

from conftest import REPO_ROOT
from sciriff_jax.io import spm_json
from tests.subprocess_runs import run_ok

SAMPLE = REPO_ROOT / "seqio_tasks" / "data" / "sample"


def _texts(split="validation"):
    rows = [json.loads(line) for line in open(SAMPLE / f"{split}.jsonl", encoding="utf-8")]
    chats = [f"<|user|>\n{r['input']}\n<|assistant|>\n{r['output']}" for r in rows]
    return chats + [r["output"] for r in rows]


def _train(**settings) -> bytes:
    lines = (s for t in _texts("train") for s in t.split("\n") if s.strip())
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=lines, model_writer=out, vocab_size=600, minloglevel=2,
                                   num_threads=1, **settings)
    return out.getvalue()


@pytest.mark.parametrize("settings", [
    # the sample vocabulary's kind (seqio_tasks/vocab.py): BPE, byte fallback, chat markers as user-defined pieces
    dict(model_type="bpe", byte_fallback=True, split_digits=True, user_defined_symbols="<|user|>,<|assistant|>",
         normalization_rule_name="identity", remove_extra_whitespaces=False, character_coverage=1.0),
    # SentencePiece's defaults: unigram, NFKC rules, extra spaces removed
    dict(model_type="unigram", character_coverage=0.9995),
], ids=["bpe-markers", "unigram-defaults"])
def test_conversion_encodes_every_sample_text_as_sentencepiece_does(settings):
    model = _train(**settings)
    tok = spm_json.convert(model)
    texts = _texts()
    assert spm_json.mismatch(model, tok, texts) is None
    sp = spm.SentencePieceProcessor(model_proto=model)
    assert tok.decode(sp.encode(texts[0])) == sp.decode(sp.encode(texts[0]))


def test_a_tokenizer_that_differs_is_named_with_the_text():
    bpe = _train(model_type="bpe", byte_fallback=True)
    other = spm_json.convert(_train(model_type="unigram", character_coverage=0.9995))
    found = spm_json.mismatch(bpe, other, _texts()[:5])
    assert found is not None and "sentencepiece [" in found and "tokenizer.json [" in found


def test_word_models_are_refused_by_name():
    with pytest.raises(spm_json.ConversionError, match="model_type 3"):
        spm_json.convert(_train(model_type="word"), where="x/tokenizer.model")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """`sciriff-jax export` of a one-step run on the sample, whose recorded tokenizer is the SentencePiece model."""
    root = tmp_path_factory.mktemp("spm_export")
    run = root / "run"
    cmd = [sys.executable, "-m", "sciriff_jax.main", "--gin_file=gin_configs/models/tiny.gin",
           "--gin_file=gin_configs/runs/finetune.gin", f'--gin.MODEL_DIR="{run}"',
           '--gin.MIXTURE_OR_TASK_NAME="sciriff_sample"', "--gin.TRAIN_STEPS=1", "--gin.BATCH_SIZE=2",
           '--gin.TASK_FEATURE_LENGTHS={"targets": 64}', "--gin.CHECKPOINT_PERIOD=1",
           "--gin_bindings=TrainConfig.tensorboard=False", "--gin_bindings=LlamaConfig.num_layers=1"]
    for argv in (cmd, [sys.executable, "-m", "sciriff_jax.run.cli", "export", str(run), str(root / "hf")]):
        run_ok(argv)
    return run, root / "hf"


def test_exported_tokenizer_json_gives_transformers_the_runs_ids(export_dir):
    transformers = pytest.importorskip("transformers")
    run, hf = export_dir
    assert (hf / "tokenizer.json").is_file() and (hf / "tokenizer.model").is_file()
    sp = spm.SentencePieceProcessor(model_file=str(run / "tokenizer" / "tokenizer.model"))
    tok = transformers.AutoTokenizer.from_pretrained(hf)
    for text in _texts()[:60]:
        ids = sp.encode(text)
        assert tok(text, add_special_tokens=False)["input_ids"] == ids, text[:60]
        assert tok.decode(ids) == sp.decode(ids)
    assert tok.convert_tokens_to_ids("<|user|>") == sp.piece_to_id("<|user|>")
    assert tok.eos_token_id == sp.eos_id() and tok.bos_token is None
