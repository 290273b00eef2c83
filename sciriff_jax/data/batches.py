"""SeqIO mixtures -> per-host numpy batches -> global jax.Arrays on the mesh, with a restorable position.

The only module on the training path that touches SeqIO/TensorFlow, and only inside functions, so
`import sciriff_jax.data.batches` works on a box without TensorFlow (synthetic batches need only numpy).
A run's input position is (seed, batches consumed): a restarted run rebuilds the same deterministic
stream and skips what was consumed, so it sees exactly the batches it would have seen.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Mapping, NamedTuple

import jax
import numpy as np

from sciriff_jax.data.pack_examples import pack_rows

BATCH_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
              "decoder_segment_ids", "decoder_positions")


SOURCES = ("seqio", "synthetic")
SPLITS = ("train", "validation", "test")


def feature_lengths_problem(lengths) -> str | None:
    """None for usable task_feature_lengths, else what they must be (the gin macro check reads it from the field)."""
    if not isinstance(lengths, dict) or "targets" not in lengths or not all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in lengths.values()):
        return 'a dict of positive integer lengths with "targets", e.g. {"targets": 4096}'
    return None


OVERLONG = (None, "truncate", "drop", "truncate_trained")  # seqio_tasks.OVERLONG_POLICIES, and None


def _configure_overlong(data) -> None:
    import seqio_tasks  # lazy: TensorFlow is only needed when a SeqIO stream is actually read

    if data.overlong is not None:
        seqio_tasks.configure(overlong=data.overlong)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where a run's batches come from: a SeqIO mixture or task (or synthetic rows), its split and row layout.

    gin scopes it by use: `train/DataConfig` for the training stream, `train_eval/DataConfig` for the
    teacher-forced eval stream (no mixture: no such eval).
    """

    # None: no such stream, which only an eval stream may be.
    mixture_or_task_name: str | None = dataclasses.field(default=None, metadata={"optional_in": ("train_eval",)})
    task_feature_lengths: Mapping[str, int] = dataclasses.field(default_factory=lambda: {"targets": 4096},
                                                                metadata={"check": feature_lengths_problem})
    split: str = dataclasses.field(default="train", metadata={"choices": SPLITS})
    pack: bool = True
    shuffle: bool = True
    use_cached_tasks: bool = False
    # "seqio", or "synthetic" rows (tests, benchmarks: no TensorFlow needed).
    source: str = dataclasses.field(default="seqio", metadata={"choices": SOURCES})
    # Packed, with a fixed number of examples per update (the recipe's 128) laid into the update's rows; None:
    # SeqIO's packer fills the rows from the stream (the examples per update vary).
    examples_per_update: int | None = dataclasses.field(default=None, metadata={"min": 1})
    # A row longer than the length (seqio_tasks' converter): "truncate" (keep its start), "drop" it, or
    # "truncate_trained" (truncate, then drop a row left without any trained token, as open-instruct; counted).
    # None: seqio_tasks.configure's setting ("truncate" unless changed).
    overlong: str | None = dataclasses.field(default=None, metadata={"choices": OVERLONG})

    def __post_init__(self):
        if self.examples_per_update is not None and (not self.pack or self.examples_per_update < 1):
            raise ValueError(f"DataConfig.examples_per_update={self.examples_per_update} needs pack=True and a "
                             "positive count (unpacked, the examples per update are BATCH_SIZE)")
        if self.source not in SOURCES:
            raise ValueError(f"DataConfig.source={self.source!r}; choose one of {SOURCES}.")
        if "targets" not in self.task_feature_lengths:
            raise ValueError(f"DataConfig.task_feature_lengths needs a 'targets' length, got {self.task_feature_lengths}")

    @property
    def length(self) -> int:
        """Tokens per row."""
        return int(dict(self.task_feature_lengths)["targets"])

    def batches(self, *, sharding, global_batch_size: int, seed: int, vocab_size: int,
                epochs: int | None = None) -> "GlobalBatches":
        """The restorable stream of global batches this config describes: `epochs` passes over the mixture (every
        example once per pass, in an order fixed by the seed), or an endless stream with None."""
        if self.source == "synthetic":
            return synthetic_batches(sharding=sharding, global_batch_size=global_batch_size, length=self.length,
                                     vocab_size=vocab_size, seed=seed)
        return seqio_batches(self, global_batch_size=global_batch_size, sharding=sharding, seed=seed, epochs=epochs)

    def steps_per_epoch(self, global_batch_size: int) -> int:
        """Full global batches in one pass over the mixture."""
        if self.examples_per_update:  # an update is that many examples, whatever rows they take
            return count_batches(self, self.examples_per_update, pack=False)
        return count_batches(self, global_batch_size, pack=self.pack)


def local_rows(sharding, global_batch_size: int) -> tuple[int, int]:
    """[start, stop) of the global batch rows this process feeds under `sharding` (batch = dim 0)."""
    width = jax.device_count()  # a stand-in length any length-sharding divides
    idx = sharding.addressable_devices_indices_map((global_batch_size, width))
    starts = [s[0].start or 0 for s in idx.values()]
    stops = [global_batch_size if s[0].stop is None else s[0].stop for s in idx.values()]
    start, stop = min(starts), max(stops)
    covered = sum(b - a for a, b in {(a, b) for a, b in zip(starts, stops)})
    if covered != stop - start:
        raise ValueError(f"this process's batch rows under {sharding} are not one contiguous block; "
                         "use a mesh whose data axes follow the process order (parallel.sharding.make_mesh does).")
    cols = {(s[1].start or 0, width if s[1].stop is None else s[1].stop) for s in idx.values()}
    if sum(b - a for a, b in cols) < width:
        raise ValueError(f"the sequence axis of {sharding} is split across hosts; the data feed needs each host "
                         "to hold whole rows (keep the 'context' mesh axis within one host).")
    return start, stop


class HostShard(NamedTuple):
    """The input shard one host reads: shard `index` of `num_shards`, `rows` rows of every global batch."""

    index: int
    num_shards: int
    rows: int


def host_shard(sharding, global_batch_size: int) -> HostShard:
    """Which input shard this host reads under `sharding` (hosts with equal rows share one)."""
    start, stop = local_rows(sharding, global_batch_size)
    rows = stop - start
    if global_batch_size % rows:
        raise ValueError(f"global batch {global_batch_size} does not split into per-host blocks of {rows} rows.")
    return HostShard(start // rows, global_batch_size // rows, rows)


class GlobalBatches:
    """Iterator of global batches (dict of jax.Array [B, L]) assembled from this host's numpy rows.

    `make_local(skip)` returns an iterator of this host's numpy batches, starting after `skip` batches.
    """

    def __init__(self, make_local: Callable[[int], Iterator[dict]], *, sharding, global_batch_size: int,
                 seed: int, description: str = "", batches_consumed: int = 0):
        self.make_local, self.sharding = make_local, sharding
        self.global_batch_size, self.seed, self.description = global_batch_size, seed, description
        self.batches_consumed = batches_consumed
        self._it = None

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._it is None:
            self._it = iter(self.make_local(self.batches_consumed))
        local = next(self._it)
        self.batches_consumed += 1
        return {k: jax.make_array_from_process_local_data(
                    self.sharding, np.asarray(local[k], np.int32), (self.global_batch_size, *local[k].shape[1:]))
                for k in BATCH_KEYS}

    def state(self) -> dict:
        """JSON position: batches consumed + seed (+ what the stream is, to refuse a mismatched restore)."""
        return {"batches_consumed": self.batches_consumed, "seed": self.seed, "data": self.description}

    def restore(self, state: dict) -> None:
        """Continue from a saved `state()`: the next batch is the one after the last consumed."""
        if state.get("seed") != self.seed or state.get("data", self.description) != self.description:
            raise ValueError(
                f"the checkpoint's input stream ({state}) differs from this run's (seed={self.seed}, "
                f"data={self.description!r}); resume with the same mixture, lengths, batch size and seed, "
                "or start in a new MODEL_DIR.")
        self.batches_consumed = int(state["batches_consumed"])
        self.close()

    def close(self) -> None:
        """Stop reading: end this host's stream now (the next batch, if asked for, starts a new one). A TF iterator
        left open when a run fails can keep the process from exiting."""
        it, self._it = self._it, None
        if hasattr(it, "close"):  # a generator: its frame, and the TF iterator it holds, go now
            it.close()


def synthetic_local_batches(*, vocab_size: int, length: int, rows: tuple[int, int], seed: int,
                            skip: int = 0) -> Iterator[dict]:
    """Deterministic packed batches for tests/benchmarks: row r of batch i depends only on (seed, i, r)."""
    i = skip
    while True:
        out = {k: [] for k in BATCH_KEYS}
        for r in range(*rows):
            rng = np.random.default_rng([seed, i, r])
            cut = int(rng.integers(2, length - 1))
            seg = np.where(np.arange(length) < cut, 1, 2)
            pos = np.where(seg == 1, np.arange(length), np.arange(length) - cut)
            targets = rng.integers(1, vocab_size, size=length)
            inputs = np.where(pos == 0, 0, np.roll(targets, 1))
            prompt = rng.integers(1, max(cut // 2, 2))
            weights = ((pos >= prompt) & (seg > 0)).astype(np.int32)
            for k, v in zip(BATCH_KEYS, (inputs, targets, weights, seg, pos)):
                out[k].append(v)
        yield {k: np.stack(v).astype(np.int32) for k, v in out.items()}
        i += 1


def synthetic_batches(*, sharding, global_batch_size: int, length: int, vocab_size: int, seed: int = 0) -> GlobalBatches:
    """A GlobalBatches over `synthetic_local_batches` (same global batch whatever the process count)."""
    rows = local_rows(sharding, global_batch_size)
    return GlobalBatches(
        lambda skip: synthetic_local_batches(vocab_size=vocab_size, length=length, rows=rows, seed=seed, skip=skip),
        sharding=sharding, global_batch_size=global_batch_size, seed=seed,
        description=f"synthetic:v{vocab_size}:l{length}:b{global_batch_size}")


def seqio_local_batches(data: DataConfig, *, shard: HostShard, seed: int, skip: int = 0, epochs: int | None = None,
                        examples_per_host: int | None = None) -> Iterator[dict]:
    """This host's numpy batches of `data`'s SeqIO mixture (`epochs` passes, or forever), after skipping `skip` batches.

    With `examples_per_host`, each batch is exactly that many examples packed into `shard.rows` rows."""
    # Both lazy: TensorFlow / SeqIO are only needed when a SeqIO stream is actually read (the GPU box has neither).
    import seqio  # SeqIO (TensorFlow)
    import seqio_tasks  # the data layer (TensorFlow, SeqIO)

    _configure_overlong(data)
    ds = seqio_tasks.get_dataset(data.mixture_or_task_name, split=data.split, feature_lengths=data.task_feature_lengths,
                                 batch_size=examples_per_host or shard.rows, shuffle=data.shuffle, seed=seed,
                                 shard=seqio.ShardInfo(index=shard.index, num_shards=shard.num_shards),
                                 pack=data.pack and not examples_per_host, num_epochs=epochs,
                                 use_cached=data.use_cached_tasks)
    if skip:
        ds = ds.skip(skip)
    for batch in ds.as_numpy_iterator():
        if examples_per_host:
            batch = pack_rows(batch, shard.rows)
        yield {k: batch[k] for k in BATCH_KEYS}


def seqio_batches(data: DataConfig, *, global_batch_size: int, sharding, seed: int = 0,
                  epochs: int | None = None) -> GlobalBatches:
    """A GlobalBatches over `data`'s SeqIO mixture; each host reads only its shard of every global batch."""
    shard = host_shard(sharding, global_batch_size)
    examples_per_host = None
    if data.examples_per_update:
        if data.examples_per_update % shard.num_shards:
            raise ValueError(f"EXAMPLES_PER_UPDATE={data.examples_per_update} does not split over the "
                             f"{shard.num_shards} input shards (hosts); use a multiple of it")
        examples_per_host = data.examples_per_update // shard.num_shards

    def make_local(skip):
        return seqio_local_batches(data, shard=shard, seed=seed, skip=skip, epochs=epochs,
                                   examples_per_host=examples_per_host)

    lengths = ",".join(f"{k}={v}" for k, v in sorted(dict(data.task_feature_lengths).items()))
    return GlobalBatches(make_local, sharding=sharding, global_batch_size=global_batch_size, seed=seed,
                         description=f"{data.mixture_or_task_name}:{data.split}:{lengths}:b{global_batch_size}"
                                     f":pack={data.pack}"
                                     + (f":epochs={epochs}" if epochs else "")
                                     + (f":examples={data.examples_per_update}" if data.examples_per_update else ""))


def count_batches(data: DataConfig, batch_size: int, *, pack: bool) -> int:
    """Full batches of `batch_size` rows (packed or not) in one pass over `data`'s mixture (counted by reading it
    once, so packing is exact)."""
    import seqio_tasks  # lazy: TensorFlow is only needed when a SeqIO stream is actually read

    name, split = data.mixture_or_task_name, data.split
    print(f"[sciriff-jax] counting the batches of one epoch of {name}:{split} ...", flush=True)
    _configure_overlong(data)
    ds = seqio_tasks.get_dataset(name, split=split, feature_lengths=data.task_feature_lengths, batch_size=batch_size,
                                 shuffle=False, seed=0, pack=pack, num_epochs=1, use_cached=data.use_cached_tasks)
    n = int(ds.reduce(0, lambda count, _: count + 1).numpy())
    if n == 0:
        raise ValueError(f"{name}:{split} has fewer packed rows than BATCH_SIZE={batch_size}; "
                         "lower BATCH_SIZE or set TRAIN_STEPS.")
    return n
