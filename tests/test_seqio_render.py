"""Chat rendering: one text per conversation, tokenized in one pass; loss on assistant turns and their end of turn.

The Tulu template is checked against open-instruct's encode_with_messages_format (re-written below from its
documented behaviour), the model's own templates against transformers' apply_chat_template.
"""
import pytest
import tensorflow as tf

from sciriff_jax.chat import render
from seqio_tasks import tasks
from sciriff_jax.chat.jinja import TemplateError
from seqio_tasks.hf_vocab import HFTokenizerVocabulary
from seqio_tasks.vocab import get_vocabulary
from tests import hf_dirs

CHAT = [{"role": "user", "content": "List the genes."}, {"role": "assistant", "content": '["BRCA1"]'},
        {"role": "user", "content": "And proteins?"}, {"role": "assistant", "content": "[]"}]
SYSTEM_CHAT = [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "  List the genes.\n"},
               {"role": "assistant", "content": ' ["BRCA1"] '}, {"role": "user", "content": "And proteins?"},
               {"role": "assistant", "content": "[]\n"}]


def open_instruct_text(messages, eos="</s>"):
    """open-instruct's encode_with_messages_format text: stripped contents, <|system|>/<|user|>/<|assistant|>
    blocks each ending in a newline (assistant: EOS then newline), the whole text stripped."""
    out = ""
    for m in messages:
        if m["role"] == "assistant":
            out += "<|assistant|>\n" + m["content"].strip() + eos + "\n"
        else:
            out += f"<|{m['role']}|>\n" + m["content"].strip() + "\n"
    return out.strip()


@pytest.fixture(scope="module")
def vocab():
    return get_vocabulary()


@pytest.fixture(scope="module")
def llama2_like(tmp_path_factory):
    return HFTokenizerVocabulary(hf_dirs.sentencepiece_tokenizer(tmp_path_factory.mktemp("sp")))


@pytest.fixture(scope="module")
def chatml(tmp_path_factory):
    return HFTokenizerVocabulary(hf_dirs.byte_bpe_tokenizer(tmp_path_factory.mktemp("bpe"), bos=False))


@pytest.fixture(scope="module")
def llama3_like(tmp_path_factory):
    return HFTokenizerVocabulary(hf_dirs.byte_bpe_tokenizer(tmp_path_factory.mktemp("l3"), template=hf_dirs.LLAMA3,
                                                            eos="<|eot_id|>"))


def test_tulu_text_is_open_instructs():
    assert render.render_text(SYSTEM_CHAT) == open_instruct_text(SYSTEM_CHAT)
    assert render.render_text(render.single_turn("Q", "A")) == "<|user|>\nQ\n<|assistant|>\nA</s>"
    assert "Be brief.\n<|user|>" in render.render_text(SYSTEM_CHAT)  # no blank line after the system prompt


def open_instruct_mask(messages, tokenize, eos="</s>"):
    """open-instruct's labels as a 0/1 mask: each non-assistant message (and the next assistant header) is -100,
    its boundaries found by tokenizing the unstripped text of the messages so far."""
    def concat(ms):
        return open_instruct_text(ms, eos) + ("\n" if ms else "")  # unstripped, as it measures prefixes

    full = len(tokenize(open_instruct_text(messages, eos)))
    mask = [1] * full
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            continue
        start = len(tokenize(concat(messages[:i]))) if i else 0
        header = "<|assistant|>\n" if i + 1 < len(messages) and messages[i + 1]["role"] == "assistant" else ""
        end = min(len(tokenize(concat(messages[: i + 1]) + header)), full)
        mask[start:end] = [0] * (end - start)
    return mask


def test_tulu_ids_and_loss_are_open_instructs_with_the_hf_tokenizer(llama2_like):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(llama2_like.directory)
    tokenize = lambda text: hf(text)["input_ids"]  # noqa: E731 - BOS added by the tokenizer, as open-instruct
    want = tokenize(open_instruct_text(SYSTEM_CHAT))
    ids, mask = render.tokenize_messages(SYSTEM_CHAT, llama2_like, "tulu")
    assert ids == want and ids[0] == hf.bos_token_id
    theirs = open_instruct_mask(SYSTEM_CHAT, tokenize)
    # The same tokens are trained, the newline open-instruct trains after an earlier turn's EOS included.
    assert mask == theirs
    after_eos = [k for k in range(1, len(ids)) if ids[k - 1] == hf.eos_token_id or (k > 1 and ids[k - 2] ==
                 hf.eos_token_id and hf.convert_ids_to_tokens(ids[k - 1]) == "▁")]
    assert after_eos and all(mask[k] and hf.convert_ids_to_tokens(ids[k]) in ("▁", "<0x0A>") for k in after_eos)


@pytest.mark.parametrize("template", sorted(render.TEMPLATES))
def test_training_ids_are_the_whole_conversation_tokenized_in_one_pass(vocab, llama2_like, template):
    for v in (vocab, llama2_like):
        inputs, targets, _ = render.split_ids(CHAT, v, template)
        whole = render.bos_ids(v, template) + render.encode_text(v, render.render_text(CHAT, template, v))
        assert inputs + targets == whole[: len(inputs) + len(targets)]
        assert targets[-1] == v.eos_id


def test_answers_do_not_start_with_a_spurious_sentencepiece_space(vocab):
    answer = '["BRCA1"]'
    alone = vocab.encode(answer)  # a segment tokenized by itself gets SentencePiece's dummy-prefix piece
    assert vocab.tokenizer.id_to_piece(alone[0]).startswith("▁")
    _, targets, _ = render.split_ids(render.single_turn("List the genes.", answer), vocab)
    assert not vocab.tokenizer.id_to_piece(targets[0]).startswith("▁")
    assert vocab.decode(targets) == answer


def test_loss_mask_covers_assistant_turns_their_eos_and_tulus_newline_after_a_non_final_one(vocab):
    enc = render.encode_chat(CHAT, vocab)
    assert [vocab.decode(enc.ids[s:e]).strip() for s, e in enc.spans] == ['["BRCA1"]', "[]"]
    (_, first), (_, last) = enc.spans
    eos_at = enc.ids.index(vocab.eos_id)
    assert eos_at < first - 1 and vocab.decode(enc.ids[eos_at + 1:first]).strip(" ") == "\n"  # open-instruct's
    assert enc.ids[last - 1] == vocab.eos_id and last == len(enc.ids)
    assert sum(enc.mask) == sum(e - s for s, e in enc.spans)
    plain = render.encode_chat(CHAT, vocab, "plain")  # a template that does not train it: content + EOS only
    assert [plain.ids[e - 1] for _, e in plain.spans] == [vocab.eos_id] * 2
    inputs, targets, in_mask = render.split_ids(CHAT, vocab)
    assert vocab.decode([i for i, m in zip(inputs, in_mask) if m]) == '["BRCA1"]'
    assert vocab.decode(targets) == "[]"


def test_prompt_tokens_are_what_training_puts_before_the_answer(vocab, llama2_like):
    for v in (vocab, llama2_like):
        inputs, _, _ = render.split_ids(render.single_turn("Find entities.", "{}"), v)
        assert render.prompt_ids("Find entities.", v) == inputs


def test_llama2_template_is_its_hf_chat_format(llama2_like):
    assert render.render_prompt("Q", "llama2") == "[INST] Q [/INST]"
    text = render.render_text([{"role": "system", "content": "S"}] + render.single_turn("Q", "A"), "llama2",
                              llama2_like)
    assert text == "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nQ [/INST] A </s>"
    assert render.bos_ids(llama2_like, "llama2") == []  # the template writes <s> itself


def test_model_template_renders_as_transformers(chatml):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(chatml.directory)
    text = render.render_text(CHAT, "model", chatml)
    assert text == hf.apply_chat_template(CHAT, tokenize=False)
    ids, mask = render.tokenize_messages(CHAT, chatml, "model")
    assert ids == hf.apply_chat_template(CHAT, tokenize=True, return_dict=False)
    prompt = render.prompt_ids("List the genes.", chatml, "model")
    assert prompt == hf.apply_chat_template(CHAT[:1], tokenize=True, add_generation_prompt=True, return_dict=False)
    im_end = hf.convert_tokens_to_ids("<|im_end|>")
    trained = [i for i, m in zip(ids, mask) if m]
    assert trained == hf('["BRCA1"]<|im_end|>[]<|im_end|>', add_special_tokens=False)["input_ids"]
    assert trained.count(im_end) == 2


def test_model_template_writing_bos_gets_it_once(llama3_like):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(llama3_like.directory)
    ids, _ = render.tokenize_messages(CHAT, llama3_like, "model")
    assert ids == hf.apply_chat_template(CHAT, tokenize=True, return_dict=False)
    assert ids.count(hf.bos_token_id) == 1 and ids[0] == hf.bos_token_id
    _, targets, _ = render.split_ids(CHAT, llama3_like, "model")
    assert targets[-1] == hf.convert_tokens_to_ids("<|eot_id|>")


@pytest.mark.parametrize("template", sorted(render.TEMPLATES) + ["model"])
def test_tensorflow_pipeline_equals_python(chatml, template):
    got = tasks.split_chat_tf(tf.constant([m["role"] for m in CHAT]), tf.constant([m["content"] for m in CHAT]),
                               chatml, template)
    want = render.split_chat(CHAT, chatml, template)
    assert [x.numpy().tolist() for x in got[:3]] == [list(x) for x in want[:3]]
    assert [x.numpy().decode() for x in got[3:]] == list(want[3:])


def test_templates_that_cannot_train_are_refused(tmp_path, vocab, chatml):
    with pytest.raises(TemplateError, match="ships none"):
        render.resolve("model", vocab)
    no_answers = tmp_path / "drops_answers.jinja"
    no_answers.write_text("{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}"
                          "{% endfor %}")
    with pytest.raises(TemplateError, match="end-of-turn"):
        render.check_template(str(no_answers), chatml)
    rewrites = tmp_path / "rewrites.jinja"
    rewrites.write_text("{{ messages | length }}{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}")
    with pytest.raises(TemplateError, match="cannot be located"):
        render.check_template(str(rewrites), chatml)


def test_unknown_template_and_role_are_refused(vocab):
    with pytest.raises(ValueError, match="tulu"):
        render.render_prompt("Q", "chatml")
    with pytest.raises(ValueError, match="role"):
        render.tokenize_messages([{"role": "tool", "content": "x"}], vocab)


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


def test_sentencepiece_vocabularies_with_bos_start_every_chat_with_it_and_read_eos_text(vocab_with_bos):
    ids, mask = render.tokenize_messages(CHAT, vocab_with_bos)
    assert ids[0] == vocab_with_bos.bos_id == 1 and mask[0] == 0
    assert ids.count(vocab_with_bos.eos_id) == 2  # "</s>" in the text is the EOS id, not the characters
    inputs, _, _ = render.split_ids(CHAT[:2], vocab_with_bos)
    assert inputs == render.prompt_ids(CHAT[0]["content"], vocab_with_bos)
