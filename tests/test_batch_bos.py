"""The batch the model receives, with a Llama-style vocabulary: each document starts with <s> at position 0 and
its tokens are open-instruct's (the whole rendered conversation, tokenized in one pass, BOS added)."""
import numpy as np
import pytest

import seqio_tasks
from sciriff_jax.chat import render
from seqio_tasks.hf_vocab import HFTokenizerVocabulary
from tests import hf_dirs


@pytest.fixture(scope="module")
def llama_vocab(tmp_path_factory):
    vocab = HFTokenizerVocabulary(hf_dirs.sentencepiece_tokenizer(tmp_path_factory.mktemp("sp")))
    seqio_tasks.register(prefix="llamabos", vocabulary=vocab, template="tulu")
    return vocab


def test_every_packed_document_starts_with_bos_at_position_0_and_no_other_start_token(llama_vocab):
    (batch,) = list(seqio_tasks.get_dataset("llamabos_sample_ner", "validation", {"targets": 4096}, 1,
                                            shuffle=False, num_epochs=1).take(1).as_numpy_iterator())
    inputs, seg, pos = batch["decoder_input_tokens"][0], batch["decoder_segment_ids"][0], batch["decoder_positions"][0]
    starts = (pos == 0) & (seg > 0)
    assert starts.sum() > 1  # packed: several documents in the row
    assert set(inputs[starts].tolist()) == {llama_vocab.bos_id}
    assert not (inputs[seg > 0] == 0).any()  # no <unk>/pad start token anywhere in a document


def test_the_documents_are_the_release_instances_tokenized_in_one_pass(llama_vocab):
    rows = seqio_tasks.raw_examples("sample_ner", "validation", max_examples=3)
    (batch,) = list(seqio_tasks.get_dataset("llamabos_sample_ner", "validation", {"targets": 4096}, 1,
                                            shuffle=False, num_epochs=1, pack=False).take(1).as_numpy_iterator())
    ids, mask = render.tokenize_messages(render.single_turn(rows[0]["input"], rows[0]["output"]), llama_vocab, "tulu")
    whole = render.bos_ids(llama_vocab, "tulu") + render.encode_text(
        llama_vocab, render.render_text(render.single_turn(rows[0]["input"], rows[0]["output"]), "tulu", llama_vocab))
    assert ids == whole and ids[0] == llama_vocab.bos_id
    n = len(ids) - 1
    np.testing.assert_array_equal(batch["decoder_input_tokens"][0, :n], ids[:-1])
    np.testing.assert_array_equal(batch["decoder_target_tokens"][0, :n], ids[1:])
    np.testing.assert_array_equal(batch["decoder_loss_weights"][0, :n], mask[1:])


def _open_instruct_text(messages):
    """open-instruct's encode_with_messages_format text (stripped contents, role blocks, </s> after answers)."""
    out = ""
    for m in messages:
        end = "</s>\n" if m["role"] == "assistant" else "\n"
        out += f"<|{m['role']}|>\n" + m["content"].strip() + end
    return out.strip()


@pytest.mark.parametrize("task", ["bioasq_list_qa", "evidence_inference", "qasper_abstractive_qa", "scifact_entailment"])
def test_real_sciriff_instances_get_open_instructs_ids_and_loss(shared_sciriff, llama_vocab, task):
    import json

    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(llama_vocab.directory)
    lines = (shared_sciriff / "eval_sample" / f"{task}.jsonl").read_text().splitlines()[:3]
    for row in map(json.loads, lines):
        chat = render.single_turn(row["input"], row["output"])
        ids, mask = render.tokenize_messages(chat, llama_vocab, "tulu")
        assert ids == hf(_open_instruct_text(chat))["input_ids"]  # BOS added by the tokenizer, one pass
        # open-instruct's labels: everything through "<|assistant|>\n" is -100, the answer and </s> are trained.
        prompt = len(hf(_open_instruct_text(chat[:1]) + "\n<|assistant|>\n")["input_ids"])
        assert mask == [0] * prompt + [1] * (len(ids) - prompt)
