"""Chat rendering: the Tulu format by default, other templates, loss only on assistant turns."""
import pytest
import tensorflow as tf

from seqio_tasks import render
from seqio_tasks.vocab import get_vocabulary

CHAT = [{"role": "user", "content": "List the genes."}, {"role": "assistant", "content": '["BRCA1"]'},
        {"role": "user", "content": "And proteins?"}, {"role": "assistant", "content": "[]"}]


@pytest.fixture(scope="module")
def vocab():
    return get_vocabulary()


def test_tulu_is_the_default_and_matches_the_release_format():
    text = render.render_text(render.single_turn("Q", "A"))
    assert text == "<|user|>\nQ\n<|assistant|>\nA</s>"


def test_prompt_ends_where_the_answer_starts_in_every_template():
    for name in render.TEMPLATES:
        full = render.render_text(render.single_turn("Question?", "Answer."), name, eos="")
        prompt = render.render_prompt("Question?", name)
        assert full == prompt + "Answer."


def test_llama2_template_wraps_the_user_turn_in_inst():
    assert render.render_prompt("Q", "llama2") == "[INST] Q [/INST] "


def test_loss_mask_covers_assistant_turns_and_their_eos_only(vocab):
    ids, mask = render.tokenize_messages(CHAT, vocab)
    assert len(ids) == len(mask)
    trained = [i for i, m in zip(ids, mask) if m]
    eos_positions = [k for k, i in enumerate(ids) if i == vocab.eos_id]
    assert len(eos_positions) == 2 and all(mask[k] for k in eos_positions)
    answer_ids = vocab.encode('["BRCA1"]') + [vocab.eos_id] + vocab.encode("[]") + [vocab.eos_id]
    assert trained == answer_ids
    assert vocab.decode([i for i, m in zip(ids, mask) if not m]).startswith("<|user|>\nList the genes.")


def test_prompt_tokens_are_the_encoded_prompt(vocab):
    assert render.prompt_ids("Find entities.", vocab) == vocab.encode(render.render_prompt("Find entities."))
    ids, mask = render.tokenize_messages(render.single_turn("Find entities.", "{}"), vocab)
    n_prompt = mask.index(1)
    assert ids[:n_prompt] == vocab.encode(render.render_prompt("Find entities."))


@pytest.mark.parametrize("template", sorted(render.TEMPLATES))
def test_tensorflow_rendering_equals_python_rendering(vocab, template):
    texts, is_assistant = render.render_segments_tf(tf.constant([m["role"] for m in CHAT]),
                                                    tf.constant([m["content"] for m in CHAT]), template)
    ids, mask = render.tokenize_segments_tf(texts, is_assistant, vocab)
    assert (ids.numpy().tolist(), mask.numpy().tolist()) == render.tokenize_messages(CHAT, vocab, template)


def test_unknown_template_and_role_are_refused():
    with pytest.raises(ValueError, match="tulu"):
        render.render_prompt("Q", "chatml")
    with pytest.raises(ValueError, match="role"):
        render.render_segments([{"role": "tool", "content": "x"}])


@pytest.fixture(scope="module")
def vocab_with_bos(tmp_path_factory):
    """A tiny Llama-style vocabulary (BOS=1, EOS=2) trained here with the real SentencePiece trainer."""
    import sentencepiece as spm

    from seqio_tasks.vocab import SentencePieceFileVocabulary

    prefix = str(tmp_path_factory.mktemp("spm") / "llama_like")
    text = ["List the genes and proteins.", "And what else?", "BRCA1 TP53 EGFR", "hello world"] * 20
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_prefix=prefix, vocab_size=290,
                                   pad_id=0, bos_id=1, eos_id=2, unk_id=3, byte_fallback=True, minloglevel=2,
                                   hard_vocab_limit=False)
    return SentencePieceFileVocabulary(prefix + ".model")


def test_vocabularies_with_bos_start_every_chat_and_prompt_with_it(vocab_with_bos):
    ids, mask = render.tokenize_messages(CHAT, vocab_with_bos)
    assert ids[0] == vocab_with_bos.bos_id == 1 and mask[0] == 0
    n_prompt = mask.index(1)
    assert ids[:n_prompt] == render.prompt_ids(CHAT[0]["content"], vocab_with_bos)
    texts, is_assistant = render.render_segments_tf(tf.constant([m["role"] for m in CHAT]),
                                                    tf.constant([m["content"] for m in CHAT]), "tulu")
    tf_ids, tf_mask = render.tokenize_segments_tf(texts, is_assistant, vocab_with_bos)
    assert (tf_ids.numpy().tolist(), tf_mask.numpy().tolist()) == (ids, mask)
