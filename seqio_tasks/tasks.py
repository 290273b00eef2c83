"""Registers one SeqIO task per SciRIFF task x context config, the built-in sample's tasks and chat data."""
import dataclasses
import logging
import os
import threading

import seqio
import tensorflow as tf

from seqio_tasks import catalog, render, sample, sources
from seqio_tasks.converter import LOSS_MASK
from seqio_tasks.vocab import get_vocabulary

TULU_PATH_ENV = "SCIRIFF_JAX_TULU_PATH"
TRAIN_MIX_PATH_ENV = "SCIRIFF_JAX_TRAIN_MIX_PATH"
SCITULU_PER_TASK = 1000  # the SciTulu recipe: first 1,000 train instances of each non-eval task


@dataclasses.dataclass
class DataSettings:
    """How instances become tokens; read when a dataset is built, so `configure` applies to registered tasks."""

    template: str = "tulu"        # chat template (render.TEMPLATES)
    overlong: str = "truncate"    # "truncate" (keep the start) or "drop" instances longer than the length
    tulu_path: str | None = None  # general chat data for the SciTulu mixtures (else $SCIRIFF_JAX_TULU_PATH)
    train_mix_path: str | None = None  # allenai/SciRIFF-train-mix parquet (else $SCIRIFF_JAX_TRAIN_MIX_PATH, else hub)
    vocab_path: str | None = None  # SentencePiece model for every task (else $SCIRIFF_JAX_VOCAB, else sample-trained)
    scitulu_per_task: int = SCITULU_PER_TASK  # SciTulu: first N train instances per non-eval task
    chat_ratio: float = 1.0  # SciTulu: general chat rows per science instance
    train_rate_cap: int | None = 5000  # sciriff_<ctx>_train: examples-proportional rate, capped


SETTINGS = DataSettings()
# (task name, "truncated" | "dropped") -> count of over-long instances seen by this process's pipelines.
OVERLONG_COUNTS: dict[tuple[str, str], int] = {}
_counts_lock = threading.Lock()


def sciriff_task_name(config: int, task: str) -> str:
    """SeqIO name of a SciRIFF task in a context config, e.g. sciriff_4096_scierc_ner."""
    return f"sciriff_{config}_{task}"


def sample_task_name(name: str) -> str:
    """SeqIO name of a built-in sample task: sample_ner -> sciriff_sample_ner."""
    return "sciriff_" + name


def scitulu_task_name(config: int, task: str, n: int = SCITULU_PER_TASK) -> str:
    """SeqIO name of the first-n-train-instances variant used by the SciTulu mixture."""
    return f"sciriff_{config}_{task}_first{n}"


# --- preprocessors ------------------------------------------------------------------------------------


def release_to_chat(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Release fields -> one user turn (`input`) and one assistant turn (`output`), keeping the raw fields."""
    return ds.map(lambda x: {**x, "messages_role": tf.constant(["user", "assistant"]),
                             "messages_content": tf.stack([x["input"], x["output"]])},
                  num_parallel_calls=tf.data.AUTOTUNE)


def tokenize_chat(ds: tf.data.Dataset, output_features) -> tf.data.Dataset:
    """Render `messages_*` with SETTINGS.template and tokenise: `targets` ids and their `loss_mask` (1/2)."""
    vocab, template = output_features["targets"].vocabulary, SETTINGS.template

    def fn(x):
        texts, is_assistant = render.render_segments_tf(x["messages_role"], x["messages_content"], template)
        ids, mask = render.tokenize_segments_tf(texts, is_assistant, vocab)
        return {"targets": ids, LOSS_MASK: mask + 1}  # 1/2, see converter.LOSS_MASK

    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def _count(task: str, kind: str):
    def bump():
        with _counts_lock:
            first = (task, kind) not in OVERLONG_COUNTS
            OVERLONG_COUNTS[(task, kind)] = OVERLONG_COUNTS.get((task, kind), 0) + 1
        if first:
            logging.warning("%s: over-long instances are %s (see `sciriff-jax data stats`); "
                            "set seqio_tasks.configure(overlong=...) to change", task, kind)
        return True

    return bump


def handle_overlong(ds: tf.data.Dataset, sequence_length, task: str) -> tf.data.Dataset:
    """Count instances longer than sequence_length["targets"]; drop them (overlong="drop") or cut them."""
    max_len = (sequence_length or {}).get("targets")
    mode = SETTINGS.overlong
    if mode not in ("truncate", "drop"):
        raise ValueError(f"seqio_tasks.SETTINGS.overlong is {mode!r}; expected 'truncate' or 'drop'")
    if not max_len:
        return ds
    kind = "dropped" if mode == "drop" else "truncated"

    def count(x):
        too_long = tf.size(x["targets"]) > max_len
        # The Python counter runs only for over-long instances, so the common path stays in-graph.
        tf.cond(too_long, lambda: tf.py_function(_count(task, kind), [], tf.bool), lambda: tf.constant(True))
        return tf.logical_not(too_long) if mode == "drop" else tf.constant(True)

    ds = ds.filter(count)
    if mode == "truncate":  # keep the start: the prompt and the beginning of the answer
        ds = ds.map(lambda x: {k: v[:max_len] for k, v in x.items()}, num_parallel_calls=tf.data.AUTOTUNE)
    return ds


# --- registration -------------------------------------------------------------------------------------


def output_features(vocab=None) -> dict:
    """targets (the chat's token ids; EOS is added by rendering) and the per-token loss mask."""
    vocab = vocab or get_vocabulary()
    return {"targets": seqio.Feature(vocab, add_eos=False, dtype=tf.int32),
            LOSS_MASK: seqio.Feature(seqio.PassThroughVocabulary(3), add_eos=False, dtype=tf.int32)}


def _chat_preprocessors(name):
    def overlong(ds, sequence_length):
        return handle_overlong(ds, sequence_length, name)

    return [tokenize_chat, overlong]


def _add(name, source, features, pre=(), metadata=None):
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    task = seqio.TaskRegistry.add(name, source=source, output_features=features,
                                  preprocessors=[*pre, *_chat_preprocessors(name)],
                                  shuffle_buffer_size=512)  # sources shuffle fully; this mixes epochs
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


def _train_mix_path() -> str:
    path = SETTINGS.train_mix_path or os.environ.get(TRAIN_MIX_PATH_ENV)
    return path or sources.download_to_cache(
        sources.hub_url("allenai/SciRIFF-train-mix", "data/train-00000-of-00001.parquet"), "train-mix")


def register_all(vocab=None, scitulu_per_task: int = SCITULU_PER_TASK, chat_rows: int | None = None) -> None:
    """(Re-)register every task: the sample, SciRIFF x {4096, 8192, 16384}, their SciTulu slices, chat data.

    chat_rows: how many general chat rows `tulu_v2_chat` reads (the first ones; default: as many as the
    SciTulu science part, the recipe's 1:1 ratio).
    """
    chat_rows = scitulu_science_rows(scitulu_per_task) if chat_rows is None else chat_rows
    features = output_features(vocab)
    for name, meta in sample.SAMPLE_TASKS.items():
        _add(sample_task_name(name), sources.sample_source(name), features, [release_to_chat],
             dict(meta, task=name, config="sample"))
    for config in catalog.CONTEXT_CONFIGS:
        for info in catalog.TASKS.values():
            src = sources.SciriffTaskSource(config, info.name)
            meta = dict(dataclasses.asdict(info), task=info.name, config=config)
            _add(sciriff_task_name(config, info.name), src, features, [release_to_chat], meta)
            if not info.eval_task:
                _add(scitulu_task_name(config, info.name, scitulu_per_task), _FirstN(src, scitulu_per_task), features,
                     [release_to_chat], meta)
    _add("tulu_v2_chat", sources.chat_source(lambda: SETTINGS.tulu_path or os.environ.get(TULU_PATH_ENV),
                                             lambda: chat_rows), features,
         metadata={"task": "tulu_v2_chat", "config": "chat", "rows": chat_rows})
    _add("sciriff_train_mix", sources.chat_source(_train_mix_path), features,
         metadata={"task": "sciriff_train_mix", "config": "chat"})
