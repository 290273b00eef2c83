"""What the rest of the project calls: batched training datasets and raw release examples."""
import os

import seqio
import tensorflow as tf

from seqio_tasks.converter import INPUTS_LOSS_MASK, ChatFeatureConverter
from seqio_tasks.sources import RELEASE_FIELDS
from seqio_tasks.tasks import SETTINGS, get_provider

TF_GPUS_ENV = "SCIRIFF_JAX_TF_GPUS"


def hide_gpus_from_tensorflow() -> None:
    """Keep TensorFlow (our host-side input pipeline) off the GPUs, whose memory belongs to JAX.

    Called where our input pipeline starts, never at import; set SCIRIFF_JAX_TF_GPUS=1 to leave TensorFlow's
    devices alone (e.g. a project of yours that runs TensorFlow models on the GPU in the same process).
    """
    if os.environ.get(TF_GPUS_ENV, "") not in ("", "0"):
        return
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow already initialised its devices in this process: too late to change
        pass


def get_dataset(mixture_or_task_name: str, split: str, feature_lengths: dict, batch_size: int,
                shuffle: bool = True, seed: int = 0, shard: seqio.ShardInfo | None = None,
                pack: bool = True, num_epochs: int | None = None, use_cached: bool = False) -> tf.data.Dataset:
    """Batches of the batch contract (docs/design.md) for this host's shard; deterministic for a seed.

    shard: which of the input's shards this host reads (None: all of it, one shard).
    feature_lengths: {"targets": L} for rows of L tokens (prompt + answer), or SeqIO's {"inputs": a,
    "targets": b} for rows of a + b. use_cached reads tasks preprocessed offline by `seqio_cache_tasks`
    (pass its output directory to seqio.add_global_cache_dirs first).
    """
    hide_gpus_from_tensorflow()
    if "targets" not in feature_lengths:
        raise ValueError(f"feature_lengths needs a 'targets' length (tokens per row), got {feature_lengths}")
    if "inputs" in feature_lengths:
        lengths, row = {"inputs": int(feature_lengths["inputs"]), "targets": int(feature_lengths["targets"])}, None
    else:
        row = int(feature_lengths["targets"])
        # With overlong="truncate_trained", prompts are trimmed to row + 1 tokens: one longer than the row leaves it
        # no answer token, so the converter drops it (as open-instruct drops rows whose labels truncation removed),
        # while a prompt of exactly `row` tokens keeps its first answer token, as open-instruct's would.
        lengths = {"inputs": row + (SETTINGS.overlong == "truncate_trained"), "targets": row}
    provider = get_provider(mixture_or_task_name)
    # What seqio.get_dataset does, plus the multi-turn loss mask through mixtures (an extra field, see tasks.py).
    extra = {"passthrough_features": [INPUTS_LOSS_MASK]} if isinstance(provider, seqio.Mixture) else {}
    ds = provider.get_dataset(lengths, split=split, use_cached=use_cached, shuffle=shuffle, seed=seed,
                              shard_info=shard or seqio.ShardInfo(index=0, num_shards=1),
                              num_epochs=num_epochs, **extra)
    converter = ChatFeatureConverter(pack=pack, row_length=row, overlong=SETTINGS.overlong, label=mixture_or_task_name)
    ds = converter(ds, task_feature_lengths=lengths)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def task_names(name: str) -> list[str]:
    """The task names of a registered mixture, or [name] for a task (through `get_provider`)."""
    provider = get_provider(name)
    tasks = getattr(provider, "tasks", None)
    return [t.name for t in tasks] if tasks is not None else [provider.name]


def resolve_task_name(name: str) -> str:
    """One task: a registered task name, or a bare sample name (sample_ner -> sciriff_sample_ner)."""
    if name not in seqio.TaskRegistry.names() and "sciriff_" + name in seqio.TaskRegistry.names():
        name = "sciriff_" + name
    provider = get_provider(name)  # unknown names raise with close matches
    if isinstance(provider, seqio.Mixture):
        raise KeyError(f"{name!r} is a mixture; raw_examples needs one task (e.g. one of its tasks: "
                       f"{task_names(name)[:5]}...)")
    return name


def raw_examples(task_name: str, split: str, max_examples: int | None = None) -> list[dict]:
    """The release fields (python str input/output/_instance_id/metadata JSON) of a task's split, in order."""
    task = get_provider(resolve_task_name(task_name))
    ds = task.source.get_dataset(split=split, shuffle=False)
    if max_examples is not None:
        ds = ds.take(max_examples)
    return [{k: ex[k].decode("utf-8") for k in RELEASE_FIELDS} for ex in ds.as_numpy_iterator()]
