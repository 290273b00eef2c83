"""What the rest of the project calls: batched training datasets and raw release examples."""
import seqio
import tensorflow as tf

from seqio_tasks import catalog
from seqio_tasks.converter import LOSS_MASK, ChatFeatureConverter
from seqio_tasks.sources import RELEASE_FIELDS


def get_provider(name: str):
    """The registered SeqIO task or mixture `name`; unknown names fail listing close matches."""
    try:
        return seqio.get_mixture_or_task(name)
    except ValueError:
        known = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
        raise KeyError(catalog.unknown_name_message("SeqIO task or mixture", name, known)
                       + " (`import seqio_tasks` registers sciriff_sample, sciriff_<4096|8192|16384>_<task>, "
                       "sciriff_<ctx>_train|scitulu|eval|family_<family>)") from None


def get_dataset(mixture_or_task_name: str, split: str, feature_lengths: dict, batch_size: int,
                shuffle: bool = True, seed: int = 0, shard_index: int = 0, num_shards: int = 1,
                pack: bool = True, num_epochs: int | None = None, use_cached: bool = False) -> tf.data.Dataset:
    """Batches of the batch contract (docs/design.md) for this host's shard; deterministic for a seed.

    use_cached reads tasks preprocessed offline by SeqIO's cache_tasks_main (seqio.add_global_cache_dirs).
    """
    provider = get_provider(mixture_or_task_name)
    if isinstance(provider, seqio.Mixture):
        _check_no_empty_tasks(provider, split)
    if "targets" not in feature_lengths:
        raise ValueError(f"feature_lengths needs a 'targets' length (tokens per row), got {feature_lengths}")
    lengths = {"targets": int(feature_lengths["targets"]), LOSS_MASK: int(feature_lengths["targets"])}
    ds = seqio.get_dataset(mixture_or_task_name, task_feature_lengths=lengths, dataset_split=split,
                           shuffle=shuffle, num_epochs=num_epochs, seed=seed, use_cached=use_cached,
                           shard_info=seqio.ShardInfo(index=shard_index, num_shards=num_shards),
                           feature_converter=ChatFeatureConverter(pack=pack))
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _check_no_empty_tasks(mixture: seqio.Mixture, split: str) -> None:
    # SeqIO's mixture sampling stops at the first exhausted task, so one empty task would end the stream.
    empty = [t.name for t in mixture.tasks if split in t.splits and not t.num_input_examples(split)]
    if empty:
        raise ValueError(f"mixture {mixture.name!r} split {split!r}: no instances for {len(empty)} task(s): "
                         f"{', '.join(empty[:6])}{' ...' if len(empty) > 6 else ''}. Point $SCIRIFF_JAX_DATA_DIR at "
                         "a complete copy of the release, or train on a task or mixture whose tasks all have data.")


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
