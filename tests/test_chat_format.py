"""The one chat format: "auto" resolved in one place, identity by vocabulary and template text, one set per format,
and EvalConfig.template honoured wherever prompts are written."""
import pytest

from sciriff_jax.chat.format import ChatFormat, resolve_template
from tests import hf_dirs


def test_auto_is_the_recorded_template_else_the_vocabularys_own_else_tulu_and_a_format_refuses_it():
    assert resolve_template("auto", has_own_template=True, recorded="llama2") == "llama2"
    assert resolve_template(None, has_own_template=True) == "model"
    assert resolve_template("", has_own_template=False) == "tulu"
    assert resolve_template("plain", has_own_template=True, recorded="tulu") == "plain"  # a named one stays
    with pytest.raises(ValueError, match="resolve the template first"):
        ChatFormat(None, "auto")


def test_two_templates_over_one_tokenizer_are_two_formats_and_two_task_sets(tmp_path):
    import seqio_tasks
    from seqio_tasks.hf_vocab import HFTokenizerVocabulary

    a = HFTokenizerVocabulary(hf_dirs.byte_bpe_tokenizer(tmp_path / "a", template=hf_dirs.CHATML))
    b = HFTokenizerVocabulary(hf_dirs.byte_bpe_tokenizer(tmp_path / "b", template=hf_dirs.LLAMA3))
    assert a.fingerprint == b.fingerprint  # the same tokenizer.json
    fa, fb = ChatFormat(a, "model"), ChatFormat(b, "model")
    assert fa != fb and fa == ChatFormat(a, "model") and len({fa, fb, ChatFormat(a, "model")}) == 2
    name_a = seqio_tasks.name_for("sciriff_sample_ner", fa)
    name_b = seqio_tasks.name_for("sciriff_sample_ner", fb)
    assert name_a != name_b and name_a == seqio_tasks.name_for("sciriff_sample_ner", fa)
    assert seqio_tasks.chat_format_of(name_a) == fa and seqio_tasks.chat_format_of(name_b) == fb
    assert seqio_tasks.chat_format_of("sciriff_sample_ner") not in (fa, fb)  # the default set is left as it was
    assert not seqio_tasks.is_configured("sciriff_4096_scierc_ner") and seqio_tasks.is_configured(name_a)
    real = seqio_tasks.name_for("sciriff_4096_scierc_ner", fa)  # a real task of the unconfigured default set
    assert real.endswith("_4096_scierc_ner") and seqio_tasks.chat_format_of(real) == fa


def test_eval_prompts_follow_eval_config_template_over_the_models_own():
    from sciriff_jax.eval import evaluate
    from seqio_tasks.vocab import get_vocabulary

    fmt = ChatFormat(get_vocabulary(), "tulu")
    assert evaluate.prompt_format(evaluate.EvalConfig(template="auto"), fmt) is fmt
    other = evaluate.prompt_format(evaluate.EvalConfig(template="llama2"), fmt)
    assert other.template == "llama2" and other.vocabulary is fmt.vocabulary
    assert other.generation_prompt("Q?").startswith("[INST]") and fmt.generation_prompt("Q?").startswith("<|user|>")


def test_the_format_checks_its_vocabulary_against_the_embedding():
    from seqio_tasks.vocab import get_vocabulary

    fmt = ChatFormat(get_vocabulary(), "tulu")
    assert fmt.check_fits(fmt.vocabulary.vocab_size, "m") is fmt
    with pytest.raises(ValueError, match=r"has \d+ tokens but the model m has 10 embedding rows"):
        fmt.check_fits(10, "m")


def test_a_format_without_a_vocabulary_yet_compares_without_reading_it():
    import seqio_tasks
    from seqio_tasks.vocab import MissingVocabulary

    missing = seqio_tasks.chat_format_of("sciriff_4096_scierc_ner")  # the default set, no $SCIRIFF_JAX_VOCAB
    assert isinstance(missing.vocabulary, MissingVocabulary)
    assert missing == missing and missing != ChatFormat(missing.vocabulary, "llama2")
