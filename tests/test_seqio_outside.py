"""SciRIFF tasks as an outside t5x/SeqIO user sees them: only `seqio` and `seqio_tasks` are imported, and SeqIO's
own converters, Evaluator and cache tool are on the other side."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import seqio

import seqio_tasks

TASK = "sciriff_sample_ner"  # the built-in sample's tasks carry their own vocabulary
LENGTHS = {"inputs": 1024, "targets": 256}


def _examples(name, split="validation", lengths=LENGTHS):
    task = seqio.get_mixture_or_task(name)
    return list(task.get_dataset(lengths, split, shuffle=False, num_epochs=1).as_numpy_iterator())


def _mixture_examples(name, split="validation"):
    return [ex for t in seqio.get_mixture_or_task(name).tasks for ex in _examples(t.name, split)]


def _run(code: str, **env) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (process-wide state: imports, environment)."""
    full_env = {k: v for k, v in os.environ.items() if k != "SCIRIFF_JAX_VOCAB"}  # no vocabulary unless given
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=full_env)


def test_a_task_yields_the_prompt_as_inputs_and_the_answer_with_eos_as_targets():
    ex = _examples(TASK)[0]
    vocab = seqio.get_mixture_or_task(TASK).output_features["targets"].vocabulary
    assert ex["inputs_pretokenized"].decode().startswith("<|user|>\n") and ex["inputs_pretokenized"].decode().endswith(
        "\n<|assistant|>\n")
    assert ex["targets"][-1] == vocab.eos_id
    assert vocab.decode(ex["targets"].tolist()) == ex["targets_pretokenized"].decode() == ex["output"].decode()
    assert ex["_instance_id"].decode().startswith("sample_ner:")


@pytest.mark.parametrize("pack", [False, True])
def test_prefix_lm_converter_puts_the_loss_on_the_answers_only(pack):
    ds = seqio.get_dataset("sciriff_sample", task_feature_lengths=LENGTHS, dataset_split="validation",
                           shuffle=False, num_epochs=1, feature_converter=seqio.PrefixLMFeatureConverter(pack=pack))
    rows = list(ds.as_numpy_iterator())
    answer_tokens = sum(len(ex["targets"]) for ex in _mixture_examples("sciriff_sample"))
    assert sum(int(r["decoder_loss_weights"].sum()) for r in rows) == answer_tokens
    # t5x's DecoderOnlyModel.predict_batch generates from the causal-attention prefix
    assert all("decoder_causal_attention" in r for r in rows)


def test_decoder_feature_converter_runs_prefix_lm_and_trains_on_answers_only():
    ds = seqio.get_dataset(TASK, task_feature_lengths=LENGTHS, dataset_split="validation", shuffle=False,
                           num_epochs=1, feature_converter=seqio.DecoderFeatureConverter(pack=False))
    rows = list(ds.as_numpy_iterator())
    examples = _examples(TASK)
    assert len(rows) == len(examples)
    for row, ex in zip(rows, examples):
        weights = row["decoder_loss_weights"].astype(bool)
        assert row["decoder_target_tokens"][weights].tolist() == ex["targets"].tolist()


def test_encoder_decoder_converter_reads_inputs_into_the_encoder():
    ds = seqio.get_dataset(TASK, task_feature_lengths=LENGTHS, dataset_split="validation", shuffle=False,
                           num_epochs=1, feature_converter=seqio.EncDecFeatureConverter(pack=False))
    (row, *_), ex = list(ds.as_numpy_iterator()), _examples(TASK)[0]
    n_in, n_out = len(ex["inputs"]), len(ex["targets"])
    assert row["encoder_input_tokens"][:n_in].tolist() == ex["inputs"].tolist()
    assert row["decoder_target_tokens"][:n_out].tolist() == ex["targets"].tolist()


def test_our_converter_trains_on_exactly_the_answer_tokens():
    ds = seqio.get_dataset(TASK, task_feature_lengths=LENGTHS, dataset_split="validation", shuffle=False,
                           num_epochs=1, feature_converter=seqio_tasks.ChatFeatureConverter(pack=False))
    for row, ex in zip(ds.as_numpy_iterator(), _examples(TASK)):
        weights = row["decoder_loss_weights"].astype(bool)
        assert row["decoder_target_tokens"][weights].tolist() == ex["targets"].tolist()
        tokens = ex["inputs"].tolist() + ex["targets"].tolist()  # the first token is an input only (position 0)
        assert row["decoder_input_tokens"][: len(tokens) - 1].tolist() == tokens[:-1]
        assert row["decoder_target_tokens"][: len(tokens) - 1].tolist() == tokens[1:]


def _perfect_predictions(ds, model_feature_shapes=None):
    """What a model that answers every example exactly would return: the answer tokens of each row."""
    out = []
    for index, row in ds.as_numpy_iterator():
        weights = row["decoder_loss_weights"].astype(bool)
        out.append((int(index), row["decoder_target_tokens"][weights].tolist()))
    width = max(len(tokens) for _, tokens in out)  # a model returns one padded array (0 = padding, after EOS)
    return [(i, tokens + [0] * (width - len(tokens))) for i, tokens in out]


def _evaluate(name):
    # sequence_length=None: SeqIO measures the examples (no preprocessor depends on lengths), so nothing is cut.
    evaluator = seqio.Evaluator(name, feature_converter=seqio.PrefixLMFeatureConverter(pack=False),
                                eval_split="validation", sequence_length=None, async_compute_metrics=False)
    metrics, _ = evaluator.evaluate(compute_metrics=True, predict_fn=_perfect_predictions)
    return metrics.result() if hasattr(metrics, "result") else metrics


def test_seqio_evaluator_scores_perfect_answers_one_exactly_as_sciriff_jax_score(tmp_path):
    by_task = _evaluate("sciriff_sample")
    assert set(by_task) == {f"sciriff_{name}" for name in seqio_tasks.SAMPLE_TASKS}
    for task, values in by_task.items():
        assert values and all(v == 1.0 for v in values.values()), (task, values)
    rows = [{"task": t.name, "_instance_id": ex["_instance_id"].decode(), "output": ex["output"].decode(),
             "prediction": ex["output"].decode()}
            for t in seqio.get_mixture_or_task("sciriff_sample").tasks for ex in _examples(t.name)]
    predictions = tmp_path / "perfect.jsonl"
    predictions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = subprocess.run([sys.executable, "-m", "sciriff_jax.run.cli", "score", "--predictions", str(predictions)],
                          capture_output=True, text=True, timeout=120, check=True)
    scored = json.loads(done.stdout)["tasks"]
    assert {t: {k: float(v) for k, v in r["headline"].items()} for t, r in scored.items()} == by_task


def test_judge_metrics_are_left_out_offline_never_zero(shared_sciriff, monkeypatch):
    from seqio_tasks import sources

    for var in ("SCIRIFF_JUDGE_URL", "SCIRIFF_JUDGE_MODEL", "JUDGE_URL", "JUDGE_MODEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setitem(sources.LOCAL_RELEASE, "dir", str(shared_sciriff / "hub_layout"))
    seqio_tasks.register(prefix="outside", vocabulary=seqio_tasks.get_vocabulary())
    values = _evaluate("outside_4096_qasper_abstractive_qa")["outside_4096_qasper_abstractive_qa"]
    assert values == {"f1_evidence": 1.0}  # lm_judge_answer needs a judge: skipped, not 0


def test_a_split_without_rows_stops_seqio_itself_naming_task_split_and_place(shared_sciriff, monkeypatch):
    from seqio_tasks import sources

    monkeypatch.setitem(sources.LOCAL_RELEASE, "dir", str(shared_sciriff / "hub_layout"))
    seqio_tasks.register(prefix="outside", vocabulary=seqio_tasks.get_vocabulary())
    task = seqio.get_mixture_or_task("outside_4096_discomat_te")  # not among the shared instances
    with pytest.raises(ValueError, match=r"'discomat_te' has no 'validation' instances in .*hub_layout/4096"):
        task.get_dataset(LENGTHS, "validation")
    with pytest.raises(ValueError, match=r"has no 'train' instances"):
        seqio.get_dataset("outside_4096_train", task_feature_lengths=LENGTHS, dataset_split="train",
                          feature_converter=seqio.PrefixLMFeatureConverter())


def test_num_epochs_reads_every_example_of_every_task_once():
    mixture = seqio.get_mixture_or_task("sciriff_sample")
    ds = mixture.get_dataset(LENGTHS, "train", shuffle=True, seed=3, num_epochs=1, passthrough_features=["_instance_id"])
    ids = [ex["_instance_id"].decode() for ex in ds.as_numpy_iterator()]
    assert len(ids) == len(set(ids)) == sum(t.num_input_examples("train") for t in mixture.tasks) == 1800


def test_real_tasks_without_a_vocabulary_stop_at_first_read_saying_how_to_set_one():
    done = _run("import seqio, seqio_tasks\n"
                "seqio.get_mixture_or_task('sciriff_4096_scierc_ner').output_features['targets'].vocabulary.encode('x')")
    assert done.returncode != 0
    assert "no vocabulary is configured" in done.stderr and "SCIRIFF_JAX_VOCAB" in done.stderr


def test_register_adds_a_task_set_for_another_vocabulary_and_template_next_to_the_default():
    sample_vocab = seqio_tasks.get_vocabulary()
    seqio_tasks.register(prefix="plainvocab", vocabulary=sample_vocab, template="plain")
    ex = _examples("plainvocab_sample_ner")[0]
    assert not ex["inputs_pretokenized"].decode().startswith("<|user|>")  # the plain template
    assert _examples(TASK)[0]["inputs_pretokenized"].decode().startswith("<|user|>")  # the default set is unchanged
    assert seqio.get_mixture_or_task("plainvocab_4096_scierc_ner").output_features["targets"].vocabulary is sample_vocab
    assert "plainvocab_4096_scitulu" in seqio.MixtureRegistry.names()


def test_register_takes_a_vocabulary_object_and_later_changes_keep_it():
    done = _run(
        "import seqio, seqio_tasks\n"
        "from seqio_tasks.vocab import MissingVocabulary, SentencePieceFileVocabulary, sample_vocab_path, SampleVocabulary\n"
        "SampleVocabulary().load_model()\n"
        "vocab = SentencePieceFileVocabulary(str(sample_vocab_path()))\n"
        "seqio_tasks.register('mine', vocabulary=vocab)\n"
        "seqio_tasks.configure(train_rate_cap=100)\n"
        "seqio_tasks.configure(scitulu_per_task=10)\n"
        "t = seqio.get_mixture_or_task('mine_4096_scierc_ner')\n"
        "assert t.output_features['targets'].vocabulary is vocab, t.output_features['targets'].vocabulary\n"
        "assert seqio.get_mixture_or_task('mine_4096_acl_arc_intent_classification_first1000')"
        ".output_features['targets'].vocabulary is vocab\n"
        "assert seqio.get_mixture_or_task('sciriff_4096_acl_arc_intent_classification_first10')  # the default set's\n"
        "other = seqio.get_mixture_or_task('sciriff_4096_scierc_ner').output_features['targets'].vocabulary\n"
        "assert isinstance(other, MissingVocabulary), other  # registering a set rewrites no other set\n")
    assert done.returncode == 0, done.stderr[-2000:]


def test_import_changes_no_tensorflow_device_settings_and_our_pipeline_does_with_an_opt_out():
    code = ("import tensorflow as tf\ncalls = []\n"
            "tf.config.set_visible_devices = lambda *a, **k: calls.append(a)\n"
            "import seqio_tasks\nassert calls == [], calls\n"
            "next(seqio_tasks.get_dataset('sciriff_sample', 'validation', {'targets': 128}, 1).as_numpy_iterator())\n"
            "print('calls', calls)\n")
    assert "calls [([], 'GPU')]" in _run(code).stdout
    assert "calls []" in _run(code, SCIRIFF_JAX_TF_GPUS="1").stdout


def test_chat_data_has_a_prefixed_name():
    names = set(seqio.TaskRegistry.names())
    assert "sciriff_tulu_v2_chat" in names and "tulu_v2_chat" not in names


def test_seqio_cache_tasks_caches_a_task_and_use_cached_reads_the_same_examples(tmp_path):
    pytest.importorskip("apache_beam", reason="the `cache` extra (apache-beam) is not installed")
    cache = tmp_path / "cache"
    done = subprocess.run(
        [sys.executable, "-m", "seqio.scripts.cache_tasks_main", "--module_import=seqio_tasks",  # = seqio_cache_tasks
         f"--tasks={TASK}", f"--output_cache_dir={cache}", "--pipeline_options=--runner=DirectRunner",
         "--alsologtostderr"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    task = seqio.get_mixture_or_task(TASK)
    assert task.supports_caching
    seqio.add_global_cache_dirs([str(cache)])
    try:
        fresh = _examples(TASK)
        cached = list(task.get_dataset(LENGTHS, "validation", shuffle=False, num_epochs=1,
                                       use_cached=True).as_numpy_iterator())
    finally:
        seqio.set_global_cache_dirs([])
    key = lambda ex: ex["_instance_id"]  # noqa: E731  the cache keeps the examples, not necessarily their order
    assert len(cached) == len(fresh)
    for a, b in zip(sorted(fresh, key=key), sorted(cached, key=key)):
        assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
