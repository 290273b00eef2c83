"""Task lists as first-class values (issue 26, point 2): several tasks or mixtures with optional rates wherever a
mixture name is taken, tokenized with the format chosen when they are read, whatever was registered first."""
import pytest
import seqio

import seqio_tasks
from sciriff_jax.chat.format import ChatFormat
from seqio_tasks import lists, sources
from seqio_tasks.hf_vocab import HFTokenizerVocabulary
from tests import hf_dirs


def test_a_list_parses_names_and_optional_rates():
    assert lists.parse("a, b:2,c:0.5") == [("a", None), ("b", 2.0), ("c", 0.5)]
    assert lists.join(["a", "b:2", ("c", 3)]) == "a,b:2,c:3"
    assert lists.is_list("a,b") and lists.is_list("a:2") and not lists.is_list("sciriff_4096_eval")
    with pytest.raises(ValueError, match="empty name"):
        lists.parse("a,,b")
    with pytest.raises(ValueError, match="rate of b is 0"):
        lists.parse("a,b:0")


def test_a_list_of_tasks_is_read_as_one_mixture_with_its_rates():
    name = "sciriff_sample_ner,sciriff_sample_list_qa:2"
    mixture = seqio_tasks.get_provider(name)
    assert isinstance(mixture, seqio.Mixture) and mixture.name == name
    assert {t.name: mixture.get_rate(t) for t in mixture.tasks} == {"sciriff_sample_ner": 360.0,
                                                                    "sciriff_sample_list_qa": 2.0}
    assert seqio_tasks.task_names(name) == ["sciriff_sample_list_qa", "sciriff_sample_ner"]
    batch = next(seqio_tasks.get_dataset(name, "train", {"targets": 128}, batch_size=2).as_numpy_iterator())
    assert batch["decoder_target_tokens"].shape == (2, 128)


def test_a_listed_mixture_brings_its_tasks_at_their_relative_rates_scaled_to_its_rate():
    rates = lists.rates("sciriff_sample:10,sciriff_sample_ner:5", seqio_tasks.get_provider)
    assert rates["sciriff_sample_ner"] == pytest.approx(10 / 5 + 5) and len(rates) == 5
    assert sum(rates.values()) == pytest.approx(15)


def test_a_misspelt_name_in_a_list_is_refused_with_close_matches():
    with pytest.raises(KeyError, match="'sciriff_sampel_ner'; did you mean sciriff_sample_ner"):
        seqio_tasks.get_provider("sciriff_sample_list_qa,sciriff_sampel_ner")


def test_a_list_mixing_tokenizations_is_refused_by_name():
    with pytest.raises(ValueError, match="mixes tasks tokenized with different vocabularies"):
        seqio_tasks.chat_format_of("sciriff_sample_ner,sciriff_4096_scierc_ner")


def test_a_mixture_registered_before_its_tasks_were_registered_again_reads_the_current_tasks():
    seqio.MixtureRegistry.remove("user_mix_order")
    seqio.MixtureRegistry.add("user_mix_order", [("sciriff_sample_ner", 1.0), ("sciriff_sample_list_qa", 3.0)])
    before = seqio.MixtureRegistry.get("user_mix_order").tasks
    seqio_tasks.configure(chat_ratio=seqio_tasks.SETTINGS.chat_ratio)  # re-registers the default set's tasks
    now = seqio_tasks.get_provider("user_mix_order")
    assert [t.name for t in now.tasks] == [t.name for t in before]
    assert all(t is seqio.TaskRegistry.get(t.name) for t in now.tasks) and now.tasks[0] is not before[0]
    assert {t.name: now.get_rate(t) for t in now.tasks} == {"sciriff_sample_list_qa": 3.0, "sciriff_sample_ner": 1.0}


def test_a_list_and_a_users_mixture_take_the_format_chosen_when_read(tmp_path):
    # A module of the user's registers a mixture of task-set tasks at import, before any vocabulary is chosen.
    seqio.MixtureRegistry.remove("user_mix_format")
    seqio.MixtureRegistry.add("user_mix_format", [("sciriff_sample_ner", 1.0), ("sciriff_sample_list_qa", 2.0)])
    fmt = ChatFormat(HFTokenizerVocabulary(hf_dirs.byte_bpe_tokenizer(tmp_path / "tok")), "model")
    for name in ("user_mix_format", "sciriff_sample_ner:1,sciriff_sample_list_qa:2"):
        read_as = seqio_tasks.name_for(name, fmt)
        assert seqio_tasks.chat_format_of(read_as) == fmt, read_as
        mixture = seqio_tasks.get_provider(read_as)
        assert {t.name.split("_sample_")[1]: mixture.get_rate(t) for t in mixture.tasks} == {"ner": 1.0, "list_qa": 2.0}
        batch = next(seqio_tasks.get_dataset(read_as, "train", {"targets": 64}, batch_size=1).as_numpy_iterator())
        assert batch["decoder_target_tokens"].max() < fmt.vocabulary.vocab_size
    assert seqio_tasks.chat_format_of("user_mix_format") != fmt  # the user's mixture itself is left as it was


@pytest.fixture
def hub_layout(shared_sciriff, monkeypatch):
    monkeypatch.setitem(sources.LOCAL_RELEASE, "dir", None)  # restored after the test
    seqio_tasks.configure(source_dir=str(shared_sciriff / "hub_layout"))
    return shared_sciriff / "hub_layout"


def test_the_eval_mixture_over_a_partial_release_names_the_missing_tasks_and_the_list_of_those_present(hub_layout):
    with pytest.raises(ValueError) as err:
        [seqio_tasks.raw_examples(t, "validation", 1) for t in seqio_tasks.task_names("sciriff_4096_eval")]
    text = str(err.value)
    assert "lacks 3 of the 9 SciRIFF-Eval tasks (discomat_te, multicite_intent_classification, " \
           "mup_single_document_summarization)" in text
    named = text.split('MIXTURE_OR_TASK_NAME=\\"')[1].split('\\"')[0]
    assert len(named.split(",")) == 6
    rows = {t: seqio_tasks.raw_examples(t, "validation", 1) for t in seqio_tasks.task_names(named)}
    assert len(rows) == 6 and all(len(r) == 1 for r in rows.values())


def test_a_gin_list_is_the_same_task_list():
    import gin

    from sciriff_jax.run import main

    main.parse_gin(["gin_configs/runs/demo.gin"], ['MODEL_DIR="/tmp/unused"', 'MIXTURE_OR_TASK_NAME=["sciriff_sample_ner", '
                                                   '("sciriff_sample_list_qa", 2)]'])
    assert gin.query_parameter("MIXTURE_OR_TASK_NAME/gin.macro.value") == "sciriff_sample_ner,sciriff_sample_list_qa:2"
    assert gin.query_parameter("train/DataConfig.mixture_or_task_name").selector == "gin.macro"
    gin.clear_config()
