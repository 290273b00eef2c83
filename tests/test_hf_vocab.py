"""The Hugging Face tokenizer.json vocabulary: transformers' ids, special tokens, tf ops, accepted wherever a
vocabulary is named."""
import json
import shutil

import pytest
import seqio
import tensorflow as tf

from seqio_tasks import vocab as vocab_lib
from seqio_tasks.hf_vocab import HFTokenizerVocabulary
from tests import hf_dirs

TEXTS = ["List the genes.\n<|im_start|>assistant\nBRCA1<|im_end|>", "a</s>\nb é ☃ 中文", "  hello  world ",
         '{"verdict": "SUPPORT"}<|eot_id|><|begin_of_text|>x', ""]


@pytest.fixture(scope="module", params=["byte_bpe", "byte_bpe_no_bos", "sentencepiece", "no_bos_by_config"])
def hf_dir(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    if request.param == "sentencepiece":
        return hf_dirs.sentencepiece_tokenizer(d)
    return hf_dirs.byte_bpe_tokenizer(d, bos=request.param != "byte_bpe_no_bos",
                                      add_bos_token=False if request.param == "no_bos_by_config" else None)


def test_ids_equal_transformers_autotokenizer_special_tokens_included(hf_dir):
    from transformers import AutoTokenizer

    hf, ours = AutoTokenizer.from_pretrained(hf_dir), HFTokenizerVocabulary(hf_dir)
    for text in TEXTS:
        assert ours.encode(text) == hf(text, add_special_tokens=False)["input_ids"]
        assert ([ours.bos_id] if ours.adds_bos else []) + ours.encode(text) == hf(text)["input_ids"]
    assert (ours.bos_id, ours.eos_id, ours.unk_id) == (hf.bos_token_id, hf.eos_token_id, hf.unk_token_id)
    assert ours.vocab_size == len(hf)


def test_decode_is_transformers_decode_without_special_tokens(hf_dir):
    from transformers import AutoTokenizer

    hf, ours = AutoTokenizer.from_pretrained(hf_dir), HFTokenizerVocabulary(hf_dir)
    ids = ours.encode("BRCA1 and TP53 é<|im_start|> genes")
    assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True)
    assert ours.decode(ids + [ours.eos_id] + ours.encode("after")) == hf.decode(ids, skip_special_tokens=True)


def test_special_tokens_come_from_the_config_files(tmp_path):
    d = hf_dirs.byte_bpe_tokenizer(tmp_path, eos="<|im_end|>")
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [3, 6]}))
    v = HFTokenizerVocabulary(d)
    assert v.token_text(v.bos_id) == "<|begin_of_text|>" and v.token_text(v.eos_id) == "<|im_end|>"
    assert v.token_text(v.pad_id) == "<|end_of_text|>" and v.end_of_turn_ids() == [3, 6]
    assert v.adds_bos and "<|eot_id|>" in v.special_texts()
    config = json.loads((d / "tokenizer_config.json").read_text())
    del config["eos_token"]
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    (d / "special_tokens_map.json").write_text(json.dumps({"eos_token": {"content": "<|eot_id|>"}}))
    assert HFTokenizerVocabulary(d).token_text(HFTokenizerVocabulary(d).eos_id) == "<|eot_id|>"


def test_tf_ops_equal_python_inside_a_tf_data_pipeline(hf_dir):
    v = HFTokenizerVocabulary(hf_dir)
    ds = tf.data.Dataset.from_tensor_slices(TEXTS).map(v.encode_tf)
    assert [x.numpy().tolist() for x in ds] == [v.encode(t) for t in TEXTS]
    batch = v.encode_tf(tf.constant(TEXTS[:2]))
    assert batch.to_list() == [v.encode(t) for t in TEXTS[:2]]
    ids = tf.constant(v.encode("hello world"), tf.int32)
    assert v.decode_tf(ids).numpy().decode() == v.decode(v.encode("hello world"))


def test_every_way_of_naming_a_vocabulary_is_accepted(tmp_path):
    d = hf_dirs.byte_bpe_tokenizer(tmp_path / "model")
    shutil.copy(vocab_lib.sample_vocab_path() if vocab_lib.sample_vocab_path().exists() else
                vocab_lib.train_sample_vocab(vocab_lib.sample_vocab_path()), tmp_path / "tokenizer.model")
    assert isinstance(vocab_lib.get_vocabulary(str(d)), HFTokenizerVocabulary)
    assert isinstance(vocab_lib.get_vocabulary(str(d / "tokenizer.json")), HFTokenizerVocabulary)
    assert isinstance(vocab_lib.get_vocabulary(str(tmp_path / "tokenizer.model")), seqio.SentencePieceVocabulary)
    v = HFTokenizerVocabulary(d)
    assert vocab_lib.get_vocabulary(v) is v
    assert vocab_lib.get_vocabulary(str(d)) == v and v.fingerprint == vocab_lib.get_vocabulary(str(d)).fingerprint


def test_a_directory_without_a_tokenizer_names_the_fix(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="tokenizer.json or tokenizer.model"):
        vocab_lib.get_vocabulary(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        vocab_lib.get_vocabulary(str(tmp_path))


def test_tasks_registered_with_an_hf_directory_yield_transformers_chat_ids(tmp_path):
    import seqio_tasks
    from transformers import AutoTokenizer

    d = hf_dirs.byte_bpe_tokenizer(tmp_path / "chatml", bos=False)
    seqio_tasks.register(prefix="hfchatml", vocabulary=str(d), template="model")
    ds = seqio.get_mixture_or_task("hfchatml_sample_ner").get_dataset(
        {"inputs": 4096, "targets": 4096}, split="validation", shuffle=False, num_epochs=1)
    ex = next(ds.as_numpy_iterator())
    chat = [{"role": "user", "content": ex["input"].decode()}, {"role": "assistant", "content": ex["output"].decode()}]
    want = AutoTokenizer.from_pretrained(d).apply_chat_template(chat, tokenize=True, return_dict=False)
    got = ex["inputs"].tolist() + ex["targets"].tolist()
    assert got == want[: len(got)] and want[len(got):] == AutoTokenizer.from_pretrained(d)("\n")["input_ids"]
    assert ex["targets_pretokenized"].decode() == ex["output"].decode()
