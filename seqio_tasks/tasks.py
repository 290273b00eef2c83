"""Registers one SeqIO task per SciRIFF task x context config, the built-in sample's tasks and chat data.

Every task yields SeqIO's standard features: `inputs` (the rendered prompt through the assistant header, with
BOS where the vocabulary has one), `targets` (the answer + EOS), their `*_pretokenized` text, `inputs_loss_mask`
(earlier assistant turns of multi-turn chats, read by our converter only) and the release fields
(`_instance_id`, `input`, `output`, `metadata`). Eval tasks carry their SciRIFF-Eval metrics.
"""
import dataclasses
import os

import numpy as np

import seqio
import tensorflow as tf

from sciriff_jax.scoring import judge as judge_lib
from sciriff_jax.scoring import metrics
from sciriff_jax.chat import render
from sciriff_jax.chat.format import ChatFormat
from seqio_tasks import catalog, lists, sample, sources
from seqio_tasks.converter import INPUTS_LOSS_MASK
from seqio_tasks.vocab import MissingVocabulary, SampleVocabulary, configured_vocabulary

TULU_PATH_ENV = "SCIRIFF_JAX_TULU_PATH"
TRAIN_MIX_PATH_ENV = "SCIRIFF_JAX_TRAIN_MIX_PATH"
SCITULU_PER_TASK = 1000  # the SciTulu recipe: first 1,000 train instances of each non-eval task
DEFAULT_PREFIX = "sciriff"


@dataclasses.dataclass
class DataSettings:
    """Where data comes from and which rows are kept; read when a dataset is built, so `configure` applies to
    registered tasks. Tokens are not decided here: each TaskSet carries its ChatFormat."""

    overlong: str = "truncate"    # our converter: "truncate" (keep the start), "drop" rows longer than the length,
    # or "truncate_trained" (truncate, then drop a row left without any trained token: open-instruct)
    tulu_path: str | None = None  # general chat data for the SciTulu mixtures (else $SCIRIFF_JAX_TULU_PATH)
    train_mix_path: str | None = None  # allenai/SciRIFF-train-mix parquet (else $SCIRIFF_JAX_TRAIN_MIX_PATH, else hub)
    scitulu_per_task: int = SCITULU_PER_TASK  # SciTulu: 1,000 = the release's instances (train-mix ids); else the first N
    chat_ratio: float = 1.0  # SciTulu: general chat rows per science instance
    train_rate_cap: int | None = 5000  # <prefix>_<ctx>_train: examples-proportional rate, capped


SETTINGS = DataSettings()


@dataclasses.dataclass(frozen=True)
class TaskSet:
    """A registered family of tasks and mixtures: its name prefix and the ChatFormat of its tasks (the built-in
    sample's tasks have their own, `sample_format`, where the set has no vocabulary configured)."""

    prefix: str
    chat_format: ChatFormat
    sample_format: ChatFormat

    @property
    def vocabulary(self) -> seqio.Vocabulary:
        return self.chat_format.vocabulary


TASK_SETS: dict[str, TaskSet] = {}


def sciriff_task_name(config: int, task: str, prefix: str = DEFAULT_PREFIX) -> str:
    """SeqIO name of a SciRIFF task in a context config, e.g. sciriff_4096_scierc_ner."""
    return f"{prefix}_{config}_{task}"


def sample_task_name(name: str, prefix: str = DEFAULT_PREFIX) -> str:
    """SeqIO name of a built-in sample task: sample_ner -> sciriff_sample_ner."""
    return f"{prefix}_{name}"


def scitulu_task_name(config: int, task: str, n: int = SCITULU_PER_TASK, prefix: str = DEFAULT_PREFIX) -> str:
    """SeqIO name of the first-n-train-instances variant used by the SciTulu mixture."""
    return f"{prefix}_{config}_{task}_first{n}"


def chat_task_name(prefix: str = DEFAULT_PREFIX) -> str:
    """SeqIO name of the general chat data (Tulu v2) of a task set."""
    return f"{prefix}_tulu_v2_chat"


def train_mix_task_name(prefix: str = DEFAULT_PREFIX) -> str:
    """SeqIO name of the published SciRIFF-train-mix rows of a task set."""
    return f"{prefix}_train_mix"


# --- preprocessors ------------------------------------------------------------------------------------


def release_to_chat(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Release fields -> one user turn (`input`) and one assistant turn (`output`), keeping the raw fields."""
    return ds.map(lambda x: {**x, "messages_role": tf.constant(["user", "assistant"]),
                             "messages_content": tf.stack([x["input"], x["output"]])},
                  num_parallel_calls=tf.data.AUTOTUNE)


def make_tokenize(chat_format: ChatFormat):
    """The tokenizing preprocessor: `messages_*` rendered with `chat_format` -> the task's features."""
    def tokenize_chat(ds: tf.data.Dataset, output_features) -> tf.data.Dataset:
        vocab = chat_format.vocabulary
        if isinstance(vocab, MissingVocabulary):
            vocab.check()  # fails here, with how to configure one, not inside a traced tf.data function
        chat_format.check()  # fails at build time, naming the template

        def fn(x):
            inputs, targets, in_mask, in_text, tg_text = split_chat_tf(
                x["messages_role"], x["messages_content"], vocab, chat_format.renderer)
            keep = {k: v for k, v in x.items() if not k.startswith("messages_")}
            return {**keep, "inputs": inputs, "targets": targets, INPUTS_LOSS_MASK: in_mask + 1,  # 1/2
                    "inputs_pretokenized": in_text, "targets_pretokenized": tg_text}

        return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)

    return tokenize_chat


def split_chat_tf(roles, contents, vocab, template):
    """tf.data version of render.split_chat for 1-D role/content strings: (inputs, targets, inputs loss mask int32 [n],
    inputs text, targets text). Runs split_chat itself, so the pipeline and Python can never disagree."""
    t = render.resolve(template, vocab)

    def run(r, c):
        messages = [{"role": a.decode("utf-8"), "content": b.decode("utf-8")} for a, b in zip(r, c)]
        inputs, targets, mask, in_text, tg_text = render.split_chat(messages, vocab, t)
        return (np.asarray(inputs, np.int32), np.asarray(targets, np.int32), np.asarray(mask, np.int32),
                np.asarray(in_text.encode("utf-8"), object), np.asarray(tg_text.encode("utf-8"), object))

    out = tf.numpy_function(run, [roles, contents], (tf.int32, tf.int32, tf.int32, tf.string, tf.string),
                            stateful=False)
    for x in out[:3]:
        x.set_shape([None])
    for x in out[3:]:
        x.set_shape([])
    return out


# --- metrics inside the eval tasks ----------------------------------------------------------------------


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def postprocess(output_or_target, example=None, is_target=False):
    """A target becomes the reference row the metrics read (answer, instance id, input text for the judge);
    a prediction stays the model's raw text."""
    if not is_target:
        return _text(output_or_target)
    example = example or {}
    row = {"output": _text(output_or_target)}
    for key in ("_instance_id", "input"):
        if key in example:
            row[key] = _text(example[key])
    return row


def make_metric_fn(scorer: str):
    """A SeqIO metric function: the SciRIFF-Eval headline numbers of `scorer` (as `sciriff-jax score` gives them).

    LM-judge metrics need a judge (SCIRIFF_JUDGE_URL / SCIRIFF_JUDGE_MODEL); without one they are left out,
    never reported as 0.
    """
    def sciriff_eval(targets, predictions):
        rows = [dict(t, prediction=p) for t, p in zip(targets, predictions)]
        result = metrics.score(scorer, rows, judge=judge_lib.judge_from_env())
        return {k: float(v) for k, v in result["headline"].items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}

    sciriff_eval.__name__ = f"sciriff_eval_{scorer}"
    return sciriff_eval


# --- registration -------------------------------------------------------------------------------------


def output_features(vocab) -> dict:
    """inputs and targets (EOS is added by rendering). `inputs_loss_mask` is an extra field, not an output
    feature, so SeqIO's converters and Evaluator never see it; our get_dataset passes it through mixtures."""
    return {"inputs": seqio.Feature(vocab, add_eos=False, dtype=tf.int32),
            "targets": seqio.Feature(vocab, add_eos=False, dtype=tf.int32)}


def _add(name, source, chat_format: ChatFormat, pre=(), metadata=None, scorer=None):
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    extra = dict(postprocess_fn=postprocess, metric_fns=[make_metric_fn(scorer)]) if scorer else {}
    task = seqio.TaskRegistry.add(name, source=source, output_features=output_features(chat_format.vocabulary),
                                  preprocessors=[*pre, make_tokenize(chat_format), seqio.CacheDatasetPlaceholder()],
                                  shuffle_buffer_size=512,  # sources shuffle fully; this mixes epochs
                                  **extra)
    task.sciriff_metadata = metadata or {}
    return task


class _FirstN(seqio.DataSource):
    """The first n instances of another source, read in order (what SciTulu takes), then shuffled/sharded."""

    def __init__(self, inner, n):
        self._inner, self._n = inner, n
        super().__init__(splits=inner.splits)

    @property
    def supports_arbitrary_sharding(self):
        return True

    def list_shards(self, split):
        return self._inner.list_shards(split)

    def num_input_examples(self, split):
        return min(self._inner.num_input_examples(split) or 0, self._n)

    def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, *, sequence_length=None,
                    use_cached=False, num_epochs=1):
        ds = self._inner.get_dataset(split, shuffle=False).take(self._n)
        if shard_info is not None and shard_info.num_shards > 1:
            ds = ds.shard(shard_info.num_shards, shard_info.index)
        return ds.shuffle(self._n, seed=seed) if shuffle else ds


def scitulu_science_rows(per_task: int = SCITULU_PER_TASK) -> int:
    """Science instances in the SciTulu recipe: min(n_train, per_task) over the 45 non-eval tasks (35,357)."""
    return sum(min(t.n_train, per_task) for t in catalog.TASKS.values() if not t.eval_task)


def _release_science_ids() -> dict:
    return sources.release_science_ids(sources.load_chat_rows(_train_mix_path()))


def _train_mix_path() -> str:
    path = SETTINGS.train_mix_path or os.environ.get(TRAIN_MIX_PATH_ENV)
    return path or sources.download_to_cache(
        sources.hub_url("allenai/SciRIFF-train-mix", "data/train-00000-of-00001.parquet"), "train-mix")


def default_task_set() -> TaskSet:
    """The `sciriff` set: the vocabulary of $SCIRIFF_JAX_VOCAB (read once, at import) with the tulu template for
    every task; without one the real tasks stop at first use (MissingVocabulary) and the sample uses its own."""
    vocab = configured_vocabulary()
    return TaskSet(DEFAULT_PREFIX, ChatFormat(vocab or MissingVocabulary(), "tulu"),
                   ChatFormat(vocab or SampleVocabulary(), "tulu"))


def register_tasks(task_set: TaskSet, scitulu_per_task: int = SCITULU_PER_TASK, chat_rows: int | None = None) -> None:
    """(Re-)register a task set's tasks: the sample, SciRIFF x {4096, 8192, 16384}, their SciTulu slices, chat data.

    chat_rows: how many general chat rows the chat task serves, sampled as the release did (non-science rows,
    shuffled with seed 76; default: as many as the SciTulu science part, the recipe's 1:1 ratio).
    """
    chat_rows = scitulu_science_rows(scitulu_per_task) if chat_rows is None else chat_rows
    prefix, fmt = task_set.prefix, task_set.chat_format
    for name, meta in sample.SAMPLE_TASKS.items():
        _add(sample_task_name(name, prefix), sources.sample_source(name), task_set.sample_format,
             [release_to_chat], dict(meta, task=name, config="sample"), scorer=meta["scorer"])
    for config in catalog.CONTEXT_CONFIGS:
        for info in catalog.TASKS.values():
            src = sources.SciriffTaskSource(config, info.name)
            meta = dict(dataclasses.asdict(info), task=info.name, config=config)
            scorer = metrics.resolve_scorer(info.name) if info.eval_task else None
            _add(sciriff_task_name(config, info.name, prefix), src, fmt, [release_to_chat], meta,
                 scorer=scorer)
            if not info.eval_task:
                # The recipe's 1,000: the very instances the release picked; another N: the first N (our choice).
                selection = (sources.ReleaseSelection(src, _release_science_ids) if scitulu_per_task == SCITULU_PER_TASK
                             else _FirstN(src, scitulu_per_task))
                _add(scitulu_task_name(config, info.name, scitulu_per_task, prefix), selection,
                     fmt, [release_to_chat], meta)
    _add(chat_task_name(prefix), sources.chat_source(lambda: SETTINGS.tulu_path or os.environ.get(TULU_PATH_ENV),
                                                     lambda rows: sources.release_tulu_sample(rows, chat_rows)),
         fmt, metadata={"task": "tulu_v2_chat", "config": "chat", "rows": chat_rows})
    _add(train_mix_task_name(prefix), sources.chat_source(_train_mix_path), fmt, metadata={"task": "train_mix", "config": "chat"})
    TASK_SETS[prefix] = task_set


def get_provider(name: str):
    """The SeqIO task or mixture `name`, or the mixture of a task list ("a,b:2", see lists.py), as the registry holds
    it now: a mixture built before its tasks were registered again is rebuilt from their names and rates, so the
    order of registrations never matters. Unknown names fail listing close matches."""
    if name in seqio.MixtureRegistry.names():
        return _current(seqio.MixtureRegistry.get(name))
    if name in seqio.TaskRegistry.names():
        return seqio.TaskRegistry.get(name)
    if lists.is_list(name):
        return lists.register(name, get_provider, SETTINGS.train_rate_cap)
    known = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
    raise KeyError(catalog.unknown_name_message("SeqIO task or mixture", name, known)
                   + " (`import seqio_tasks` registers sciriff_sample, sciriff_<4096|8192|16384>_<task>, "
                   "sciriff_<ctx>_train|scitulu|eval|family_<family>; several: 'name,name' or 'name:2,name:1')")


def _current(mixture: seqio.Mixture) -> seqio.Mixture:
    registered = seqio.TaskRegistry.names()
    if all(t.name in registered and seqio.TaskRegistry.get(t.name) is t for t in mixture.tasks):
        return mixture
    task_rates = [(t.name, mixture.get_rate(t)) for t in mixture.tasks]
    sample_fn = getattr(mixture, "_sample_fn", lists.SAMPLE_FN)  # seqio keeps it private; the mixture's own choice
    seqio.MixtureRegistry.remove(mixture.name)
    return seqio.MixtureRegistry.add(mixture.name, task_rates, sample_fn=sample_fn)


def task_set_of(mixture_or_task_name: str) -> TaskSet | None:
    """The registered TaskSet a task or mixture belongs to (by its first task's name prefix), or None."""
    provider = get_provider(mixture_or_task_name)  # an unknown name fails listing close matches
    first = provider.tasks[0].name if hasattr(provider, "tasks") else provider.name
    return next((s for p, s in sorted(TASK_SETS.items(), key=lambda kv: -len(kv[0])) if first.startswith(p + "_")),
                None)


def chat_format_of(mixture_or_task_name: str) -> ChatFormat:
    """The ChatFormat a registered task or mixture tokenizes with: what a checkpoint trained on it records."""
    task_set = task_set_of(mixture_or_task_name)
    provider = get_provider(mixture_or_task_name)
    vocabs = {id(t.output_features["targets"].vocabulary): t.name for t in getattr(provider, "tasks", [provider])}
    if len(vocabs) > 1:
        raise ValueError(f"{mixture_or_task_name} mixes tasks tokenized with different vocabularies (e.g. "
                         f"{', '.join(vocabs.values())}): list tasks of one task set; the built-in sample's tasks "
                         "have a vocabulary of their own unless $SCIRIFF_JAX_VOCAB or a checkpoint gives one")
    vocab = provider.output_features["targets"].vocabulary
    if task_set is None:  # a task registered outside seqio_tasks.register: its vocabulary, the tulu template
        return ChatFormat(vocab, "tulu", f"{mixture_or_task_name}: its vocabulary, template 'tulu'")
    return task_set.sample_format if vocab is task_set.sample_format.vocabulary else task_set.chat_format
