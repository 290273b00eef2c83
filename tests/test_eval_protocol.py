"""The release's eval prompts (allenai/SciRIFF e396d00 eleuther_templates/tulu + lm-eval 543617f), pinned as text."""
import json
import random

import pytest

from sciriff_jax.chat.format import ChatFormat, resolve_template
from sciriff_jax.eval.protocol import Protocol

RELEASE = Protocol("release")
TULU = ChatFormat(None, "tulu")  # the release's fixed tulu prompt text: no vocabulary needed
NINE = ["bioasq_list_qa", "biored_ner", "discomat_te", "evidence_inference", "multicite_intent_classification",
        "mup_single_document_summarization", "qasper_abstractive_qa", "scierc_ner", "scifact_entailment"]


def _built(task, n=2):
    return [{"input": f"{task} instruction.\n\nText {i}: cells  \n", "output": f'{{"answer": {i}}}',
             "_instance_id": f"{task}:validation:{i}"} for i in range(n)]


@pytest.mark.parametrize("task", [t for t in NINE if t != "evidence_inference"])
def test_zero_shot_tasks_prompt_the_input_between_the_tulu_markers_with_no_trailing_newline(task):
    (prompt, _) = RELEASE.prompts(_built(task), TULU, 0, task)
    assert prompt == f"<|user|>\n{task} instruction.\n\nText 0: cells  \n\n<|assistant|>"


def test_evidence_inference_is_one_shot_with_the_other_instance_and_its_own_delimiter():
    ex = _built("evidence_inference")
    first, second = RELEASE.prompts(ex, TULU, 1, "evidence_inference")
    assert first == ("<|user|>\nevidence_inference instruction.\n\nText 1: cells  \n\n<|assistant|>\n"
                     '{"answer": 1}\n\n\n'
                     "<|user|>\nevidence_inference instruction.\n\nText 0: cells  \n\n<|assistant|>")
    assert second.endswith("Text 1: cells  \n\n<|assistant|>") and second.startswith(
        "<|user|>\nevidence_inference instruction.\n\nText 0")


def test_answers_stop_at_the_few_shot_delimiter_and_no_bos_is_added():
    assert not RELEASE.adds_bos and Protocol("train").adds_bos
    assert RELEASE.cut('{"a": 1}\n\n--------------------\n\n<|user|>', "scierc_ner") == '{"a": 1}'
    assert RELEASE.cut("Conclusion: x\n\n\n<|user|>\nmore", "evidence_inference") == "Conclusion: x"
    assert RELEASE.cut("a\n\n\nb", "scierc_ner") == "a\n\n\nb"  # only the task's own delimiter stops it
    assert Protocol("train").cut("a\n\n--------------------\n\nb", "scierc_ner") == "a\n\n--------------------\n\nb"


def _lm_eval_context(docs, doc, num_fewshot, rnd, delimiter):
    """lm-eval 543617f's context for one doc: doc_to_text, target_delimiter "\\n", doc_to_target, the sampler
    drawing num_fewshot + 1 docs of the same split and dropping the doc itself (written from its rules)."""
    doc_to_text = lambda d: "<|user|>\n" + d["input"] + "\n<|assistant|>"  # noqa: E731  tulu/_default_template.yaml
    if not num_fewshot:
        return doc_to_text(doc)
    selected = [x for x in rnd.sample(docs, num_fewshot + 1) if x != doc][:num_fewshot]
    shots = delimiter.join(doc_to_text(d) + "\n" + d["output"] for d in selected) + delimiter
    return shots + doc_to_text(doc)


@pytest.mark.parametrize("task", ["bioasq_list_qa", "biored_ner", "evidence_inference", "qasper_abstractive_qa",
                                  "scierc_ner", "scifact_entailment"])
def test_real_instances_get_exactly_lm_evals_context(shared_sciriff, task):
    docs = [json.loads(line) for line in (shared_sciriff / "eval_sample" / f"{task}.jsonl").read_text().splitlines()]
    shots = 1 if task == "evidence_inference" else 0
    rnd = random.Random(1234)
    delimiter = "\n\n\n" if task == "evidence_inference" else "\n\n--------------------\n\n"
    want = [_lm_eval_context(docs, d, shots, rnd, delimiter) for d in docs]
    assert RELEASE.prompts(docs, TULU, shots, task) == want
    assert all(not p.endswith("\n") for p in want)


def test_the_release_protocol_has_the_release_templates_only():
    with pytest.raises(ValueError, match="plain. has none"):
        RELEASE.prompts(_built("scierc_ner"), ChatFormat(None, "plain"), 0, "scierc_ner")
    with pytest.raises(ValueError, match="protocol"):
        Protocol("paper")


def test_a_model_with_its_own_chat_template_is_prompted_in_that_format_as_the_releases_llama3_qwen_ones(tmp_path):
    from sciriff_jax.chat import render
    from seqio_tasks.hf_vocab import HFTokenizerVocabulary
    from tests import hf_dirs

    vocab = HFTokenizerVocabulary(hf_dirs.byte_bpe_tokenizer(tmp_path, bos=False))  # a ChatML template
    ex = _built("evidence_inference")
    for template in ("auto", "model"):
        fmt = ChatFormat(vocab, resolve_template(template, bool(vocab.chat_template)))
        first, _ = RELEASE.prompts(ex, fmt, 1, "evidence_inference")
        shot, question = render.render_prompt(ex[1]["input"], "model", vocab), render.render_prompt(
            ex[0]["input"], "model", vocab)
        assert question.startswith("<|im_start|>") and first == shot + "\n" + ex[1]["output"] + "\n\n\n" + question


def test_the_releases_fixed_prompts_need_neither_tensorflow_nor_the_task_registry():
    import subprocess
    import sys

    code = ("import sys; from sciriff_jax.eval.protocol import Protocol\n"
            "from sciriff_jax.chat.format import ChatFormat\n"
            "Protocol('release').prompts([{'input': 'a', 'output': 'b'}, {'input': 'c', 'output': 'd'}], "
            "ChatFormat(None, 'tulu'), 1, "
            "'evidence_inference')\n"
            "heavy = [m for m in ('tensorflow', 'seqio', 'seqio_tasks') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
