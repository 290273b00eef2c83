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


def resolve_task_name(name: str) -> str:
    """Accept a registered task name, or a bare sample name (sample_ner -> sciriff_sample_ner)."""
    if name in seqio.TaskRegistry.names():
        return name
    if "sciriff_" + name in seqio.TaskRegistry.names():
        return "sciriff_" + name
    get_provider(name)  # raises with close matches
    raise KeyError(f"{name!r} is a mixture; raw_examples needs one task (e.g. one of its tasks: "
                   f"{[t.name for t in seqio.get_mixture_or_task(name).tasks][:5]}...)")


def raw_examples(task_name: str, split: str, max_examples: int | None = None) -> list[dict]:
    """The release fields (python str input/output/_instance_id/metadata JSON) of a task's split, in order."""
    task = seqio.get_mixture_or_task(resolve_task_name(task_name))
    ds = task.source.get_dataset(split=split, shuffle=False)
    if max_examples is not None:
        ds = ds.take(max_examples)
    return [{k: ex[k].decode("utf-8") for k in RELEASE_FIELDS} for ex in ds.as_numpy_iterator()]
