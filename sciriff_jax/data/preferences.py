"""Preference pairs -> global batches: 2 rows per pair (chosen even, rejected odd), one conversation per row.

The stream is a `GlobalBatches` like the SFT one (restorable position, per-host shards), read from a preference
SeqIO task (seqio_tasks/preferences.py) registered for the run's ChatFormat. TensorFlow / SeqIO are imported only
inside functions, as in batches.py.
"""
from __future__ import annotations

import dataclasses

from sciriff_jax.data.batches import SPLITS, GlobalBatches, host_shard


@dataclasses.dataclass(frozen=True)
class PreferenceDataConfig:
    """Where a preference run's pairs come from (gin: `PreferenceDataConfig.*`, runs/dpo.gin's PREFERENCE_DATA).

    `path`: a preference folder (`sciriff-jax data prefs` writes one: <task>/<split>-00000-of-00001.jsonl with
    _instance_id, input, chosen, rejected); `task`: one of its task folders, or None for all of them. `length`:
    tokens per row; a pair whose chosen or rejected conversation is longer is left out (and counted).
    """

    path: str
    task: str | None = None
    length: int = dataclasses.field(default=1024, metadata={"min": 2})
    split: str = dataclasses.field(default="train", metadata={"choices": SPLITS})
    shuffle: bool = True


def register(data: PreferenceDataConfig, chat_format) -> str:
    """The SeqIO task name of `data` tokenized with `chat_format` (registered now)."""
    from seqio_tasks import preferences  # the data layer (TensorFlow, SeqIO)

    name = preferences.register(data.path, chat_format)
    if data.task is None:
        return name
    tasks = [p.rsplit("/", 1)[-1] for p in preferences.task_folders(data.path)]
    if data.task not in tasks:
        raise ValueError(f"PREFERENCE_TASK={data.task!r} is not a task folder of {data.path} (it has {tasks})")
    return f"{name}_{data.task}"


def count_pairs(name: str, data: PreferenceDataConfig) -> tuple[int, int]:
    """(pairs that fit a row, pairs left out as longer) of the task's split."""
    from seqio_tasks import preferences  # the data layer (TensorFlow, SeqIO)

    return preferences.count_pairs(name, split=data.split, length=data.length)


def pair_batches(name: str, data: PreferenceDataConfig, *, sharding, pairs: int, seed: int,
                 epochs: int | None = None) -> GlobalBatches:
    """Global batches of `pairs` pairs (2 x pairs rows) of the preference task `name`; each host reads its shard."""
    shard = host_shard(sharding, 2 * pairs)
    if shard.rows % 2:
        raise ValueError(f"BATCH_SIZE={pairs} pairs = {2 * pairs} rows give {shard.rows} rows per host: a pair's two "
                         "rows must stay on one host; use an even number of rows per host")

    def make_local(skip):
        import seqio  # SeqIO (TensorFlow)
        from seqio_tasks import preferences  # the data layer (TensorFlow, SeqIO)

        ds = preferences.get_pair_dataset(name, split=data.split, length=data.length, pairs=shard.rows // 2,
                                          shuffle=data.shuffle, seed=seed, num_epochs=epochs,
                                          shard=seqio.ShardInfo(index=shard.index, num_shards=shard.num_shards))
        return iter(ds.skip(skip).as_numpy_iterator()) if skip else ds.as_numpy_iterator()

    return GlobalBatches(make_local, sharding=sharding, global_batch_size=2 * pairs, seed=seed,
                         description=f"{name}:{data.split}:pairs={pairs}:length={data.length}"
                                     + (f":epochs={epochs}" if epochs else ""))
