"""Raw data: the SciRIFF release as a TFDS builder (local hub layout or download), chat data, the built-in sample.

Every source yields the release's fields as strings: `input`, `output`, `_instance_id`, `metadata`
(JSON text); chat sources yield `messages_role` / `messages_content` (1-D string lists), `id`, `dataset`.
"""
import functools
import glob
import hashlib
import json
import os
import random
import re
import urllib.request

import numpy as np
import pyarrow.parquet as pq
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from sciriff_jax.scoring import jsonl
from seqio_tasks import catalog, sample
from seqio_tasks.vocab import cache_dir

DATA_DIR_ENV = "SCIRIFF_JAX_DATA_DIR"
# Set (not 0) by `sciriff-jax --verbose` (sciriff_jax.run.quiet): TFDS's own banner and progress bars are shown.
VERBOSE_ENV = "SCIRIFF_JAX_VERBOSE"
# HF_ENDPOINT is the Hugging Face hub's own variable for mirrors; tests point it at a local server.
HUB_ENDPOINT_ENV = "HF_ENDPOINT"


def hub_url(repo: str, path: str) -> str:
    """The download URL of a file in a hub dataset repository."""
    return f"{hub_endpoint()}/datasets/{repo}/resolve/main/{path}"


def hub_endpoint() -> str:
    return os.environ.get(HUB_ENDPOINT_ENV, "https://huggingface.co").rstrip("/")
RELEASE_FIELDS = ("input", "output", "metadata", "_instance_id")
SPLITS = ("train", "validation", "test")
_SHARD_RE = re.compile(r"^(?P<split>[a-z]+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.(?P<ext>parquet|jsonl)$")


# --- reading files ---------------------------------------------------------------------------------


def read_jsonl(path, required=RELEASE_FIELDS) -> list[dict]:
    """Rows of a JSONL file; a malformed line or missing field fails naming file:line and what was expected."""
    rows = []
    for lineno, row in jsonl.read_objects(path):
        _check_fields(row, required, f"{path}:{lineno}")
        rows.append(row)
    return rows


def read_parquet(path, required=RELEASE_FIELDS) -> list[dict]:
    """Rows of a parquet file as dicts; a missing column fails naming the file, a bad value file: row N."""
    table = pq.read_table(path)
    missing = [f for f in required if f not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {list(required)}, found {table.column_names}")
    rows = table.to_pylist()
    for i, row in enumerate(rows):
        _check_types(row, required, f"{path}: row {i + 1}")
    return rows


def read_rows(path, required=RELEASE_FIELDS) -> list[dict]:
    """Rows of a .jsonl or .parquet file."""
    return (read_parquet if str(path).endswith(".parquet") else read_jsonl)(path, required)


def _check_fields(row, required, where):
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object with fields {list(required)}, got {type(row).__name__}")
    missing = [f for f in required if f not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}; expected {list(required)}")
    _check_types(row, required, where)


# Release fields that must be text: a null or a number would be trained on as the text "None" / "3", or (an id)
# file the instance under a task named "None". A null `output` is allowed here: skip_empty_outputs skips it.
_TEXT_FIELDS = {"_instance_id": "the instance id, 'task:split:index'", "input": "the prompt text",
                "output": "the answer text (or null / empty: the instance is skipped and counted)"}


def _check_types(row, required, where):
    for field, what in _TEXT_FIELDS.items():
        if field not in required or isinstance(row[field], str) or (field == "output" and row[field] is None):
            continue
        found = "null" if row[field] is None else f"{type(row[field]).__name__} {json.dumps(row[field], default=str)[:40]}"
        raise ValueError(f"{where}: {field!r} is {found}, not a string ({what}); fix or remove the row")


def release_row(row: dict) -> dict:
    """A release row with every field as str (metadata as JSON text) plus its task name."""
    meta = row["metadata"]
    return {"input": str(row["input"]), "output": str(row["output"]), "_instance_id": str(row["_instance_id"]),
            "metadata": meta if isinstance(meta, str) else json.dumps(meta, sort_keys=True),
            "task": task_of(str(row["_instance_id"]))}


def task_of(instance_id: str) -> str:
    """The task name in an `_instance_id` (`task:split:index`)."""
    return instance_id.split(":", 1)[0]


def find_release_files(root, config, split) -> list[str]:
    """`<root>/<config>/<split>-NNNNN-of-NNNNN.{parquet,jsonl}`, in shard order (empty if none); a split in two
    formats or with shards missing is an error listing its files."""
    files = sorted(glob.glob(os.path.join(str(root), str(config), f"{split}-*-of-*.*")))
    files = [f for f in files if _SHARD_RE.match(os.path.basename(f))]
    check_shard_set([os.path.basename(f) for f in files], os.path.join(str(root), str(config)))
    return files


def check_shard_set(names: list[str], where: str) -> None:
    """One format and every shard 0..N-1 of N among a split's file names, else ValueError listing them."""
    if not names:
        return
    matches = [_SHARD_RE.match(n) for n in names]
    formats = sorted({m["ext"] for m in matches})
    if len(formats) > 1:
        raise ValueError(f"{where}: split {matches[0]['split']!r} has files in {' and '.join(formats)}: "
                         f"{', '.join(names)}. Keep one format (reading both would count every row twice).")
    counts = sorted({int(m["n"]) for m in matches})
    present = {int(m["i"]) for m in matches}
    missing = [i for i in range(counts[-1]) if i not in present]
    if len(counts) > 1 or missing or len(present) != len(names):
        raise ValueError(f"{where}: incomplete or inconsistent shard set for split {matches[0]['split']!r}: found "
                         f"{', '.join(names)}" + (f"; missing shard(s) {missing} of {counts[-1]}" if missing else "")
                         + ". Copy every shard of the split.")


def skip_empty_outputs(rows: list[dict], where: str) -> tuple[list[dict], dict[str, int]]:
    """`rows` without those whose `output` is empty or null, and how many were skipped per task (with a log line).

    The documented choice (README, Data): such an instance has nothing to train on or to score against, so it is
    skipped, not rendered as the text "None" or an empty answer, and counted per task (`sciriff-jax data stats`).
    """
    kept, skipped = [], {}
    for row in rows:
        if row["output"] is None or not str(row["output"]).strip():
            skipped.setdefault(task_of(str(row["_instance_id"])), []).append(str(row["_instance_id"]))
        else:
            kept.append(row)
    for task, ids in sorted(skipped.items()):
        print(f"sciriff-jax: {task}: skipped {len(ids)} instance(s) with an empty or null output in {where} "
              f"(e.g. {ids[0]})", flush=True)
    return kept, {task: len(ids) for task, ids in skipped.items()}


# --- the SciRIFF release as a TFDS builder ---------------------------------------------------------


class Sciriff(tfds.core.GeneratorBasedBuilder):
    """allenai/SciRIFF: configs 4096/8192/16384, splits train/validation/test, examples grouped by task."""

    VERSION = tfds.core.Version("1.1.0")  # 1.1.0: empty / null outputs are skipped (data prepared before differs)
    # No checksums file ships with this builder (hub files are fetched by URL); also spares TFDS the
    # importlib_resources lookup that locating one needs.
    code_path = None
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=str(c), description=f"max {c} Llama-2 tokens")
                       for c in catalog.CONTEXT_CONFIGS]

    def __init__(self, *, source_dir=None, **kwargs):
        self._source_dir = source_dir
        self.empty_outputs: dict[str, dict[str, int]] = {}  # split -> task -> skipped (filled while preparing)
        super().__init__(**kwargs)

    def _log_download_bytes(self):  # TFDS's "Downloading and preparing dataset Unknown size ...": get_builder says it
        if _verbose():
            super()._log_download_bytes()

    def _log_download_done(self):
        if _verbose():
            super()._log_download_done()

    def _info(self):
        text = tfds.features.Text()
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({k: text for k in (*RELEASE_FIELDS, "task")}),
            homepage="https://huggingface.co/datasets/allenai/SciRIFF",
            disable_shuffling=True)  # keep each task's examples contiguous (read by slicing)

    def _split_generators(self, dl_manager):
        config = self.builder_config.name
        if self._source_dir:
            files = {s: find_release_files(self._source_dir, config, s) for s in SPLITS}
            if not any(files.values()):
                raise FileNotFoundError(
                    f"no SciRIFF files under {self._source_dir}/{config}/ (expected "
                    f"<split>-NNNNN-of-NNNNN.parquet or .jsonl, as on the hub); set ${DATA_DIR_ENV} to the "
                    "folder holding 4096/, 8192/, 16384/")
        else:
            files = {s: dl_manager.download(hub_files("allenai/SciRIFF", config, s)) for s in SPLITS}
        return {s: self._generate_examples(f, s) for s, f in files.items() if f}

    def _generate_examples(self, files, split):
        rows, self.empty_outputs[split] = skip_empty_outputs([r for f in files for r in read_rows(f)],
                                                             f"SciRIFF {self.builder_config.name}/{split}")
        rows = [release_row(r) for r in rows]
        order = sorted(range(len(rows)), key=lambda i: (rows[i]["task"], i))  # stable: release order within task
        for key, i in enumerate(order):
            yield key, rows[i]


def hub_files(repo: str, folder: str, split: str) -> list[str]:
    """URLs of a split's shard files in a hub dataset folder (lists the folder through the hub API)."""
    url = f"{hub_endpoint()}/api/datasets/{repo}/tree/main/{folder}"
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            listing = json.load(r)
    except OSError as e:
        raise ConnectionError(f"could not list {url} ({e}); download the release yourself and set "
                              f"${DATA_DIR_ENV} to its folder") from e
    names = sorted(os.path.basename(x["path"]) for x in listing if x.get("type") == "file")
    names = [n for n in names if _SHARD_RE.match(n) and n.startswith(split + "-")]
    check_shard_set(names, url)
    return [hub_url(repo, f"{folder}/{n}") for n in names]


LOCAL_RELEASE = {"dir": None}  # set by seqio_tasks.configure(source_dir=...)


def download_to_cache(url: str, name: str) -> str:
    """Download `url` once into the cache (atomically) and return the local path."""
    path = cache_dir() / "downloads" / name / os.path.basename(url)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"sciriff-jax: downloading {url} -> {path}", flush=True)
        try:
            urllib.request.urlretrieve(url, str(path) + ".tmp")
        except OSError as e:
            raise ConnectionError(f"could not download {url} ({e}); download it yourself and point "
                                  "seqio_tasks.configure(...) or the matching $SCIRIFF_JAX_* variable at it") from e
        os.replace(str(path) + ".tmp", path)
    return str(path)


def release_source_dir(source_dir=None):
    """The local release folder: the argument, configure(source_dir=), $SCIRIFF_JAX_DATA_DIR, else None (hub)."""
    found = source_dir or LOCAL_RELEASE["dir"] or os.environ.get(DATA_DIR_ENV) or None
    return str(found) if found else None


def _tfds_data_dir(source_dir) -> str:
    if source_dir is None:
        return str(cache_dir() / "tfds" / "hub")
    # Prepared data is keyed by the source folder and its files' sizes/mtimes, so edits re-prepare.
    stamp = [(f, os.path.getsize(f), int(os.path.getmtime(f)))
             for f in sorted(glob.glob(os.path.join(source_dir, "*", "*")))]
    key = hashlib.sha256(json.dumps([os.path.abspath(source_dir), stamp]).encode()).hexdigest()[:12]
    return str(cache_dir() / "tfds" / f"local-{key}")


@functools.lru_cache(maxsize=None)
def get_builder(config: int, source_dir=None) -> Sciriff:
    """The prepared SciRIFF builder for a context config (prepares on first use, with a progress line)."""
    source_dir = release_source_dir(source_dir)
    builder = Sciriff(config=str(config), source_dir=source_dir, data_dir=_tfds_data_dir(source_dir))
    if not tf.io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json")):
        print(f"sciriff-jax: preparing SciRIFF {config} from {source_dir or 'the Hugging Face hub'} "
              f"-> {builder.data_dir}", flush=True)
        tfds.display_progress_bar(_verbose() or source_dir is None)  # bars for a download, not for local seconds
        builder.download_and_prepare()
        with tf.io.gfile.GFile(os.path.join(builder.data_dir, EMPTY_OUTPUTS_FILE), "w") as f:
            f.write(json.dumps(builder.empty_outputs))
    return builder


EMPTY_OUTPUTS_FILE = "empty_outputs.json"


def _verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def empty_outputs(config: int, split: str, source_dir=None) -> dict[str, int]:
    """{task: instances skipped for an empty or null output} of a prepared split (see skip_empty_outputs)."""
    path = os.path.join(get_builder(config, source_dir).data_dir, EMPTY_OUTPUTS_FILE)
    return json.loads(tf.io.gfile.GFile(path).read()).get(split, {}) if tf.io.gfile.exists(path) else {}


@functools.lru_cache(maxsize=None)
def task_ranges(config: int, split: str, source_dir=None) -> dict[str, tuple[int, int]]:
    """{task: (start, stop)} of each task's contiguous examples in a prepared split (cached as JSON)."""
    builder = get_builder(config, source_dir)
    if split not in builder.info.splits:
        return {}
    path = os.path.join(builder.data_dir, f"task_ranges-{split}.json")
    if tf.io.gfile.exists(path):
        return {k: tuple(v) for k, v in json.loads(tf.io.gfile.GFile(path).read()).items()}
    ranges = {}
    for i, task in enumerate(builder.as_dataset(split=split).map(lambda x: x["task"]).as_numpy_iterator()):
        start, _ = ranges.get(task.decode(), (i, i))
        ranges[task.decode()] = (start, i + 1)
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        f.write(json.dumps(ranges))
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
    return ranges


def _shuffled_shard(n: int, shuffle: bool, seed, shard_info) -> np.ndarray:
    """Indices of this host's shard of n examples; a seeded permutation when shuffling (same on every host)."""
    idx = np.arange(n)
    if shuffle:
        idx = np.random.RandomState(0 if seed is None else seed % 2**32).permutation(n)
    if shard_info is not None:
        idx = idx[shard_info.index::shard_info.num_shards]
    return idx


def missing_task_message(config: int, task: str, split: str, source_dir=None) -> str:
    """Why a task cannot be read, with what the release copy holds: for a SciRIFF-Eval task, which of the nine are
    missing and the task list that names the ones present (a run takes it as MIXTURE_OR_TASK_NAME)."""
    where = (f"{source_dir}/{config}/{split}-*-of-*" if source_dir else
             f"allenai/SciRIFF on the hub ({hub_endpoint()}), config {config}")
    present = task_ranges(config, split, source_dir)
    text = f"SciRIFF task {task!r} has no {split!r} instances in {where}"
    if task in catalog.EVAL_TASKS:
        missing = [t for t in catalog.EVAL_TASKS if t not in present]
        there = [f"sciriff_{config}_{t}" for t in catalog.EVAL_TASKS if t in present]
        text += f", which lacks {len(missing)} of the {len(catalog.EVAL_TASKS)} SciRIFF-Eval tasks ({', '.join(missing)})"
        if there:
            text += (f"; to evaluate the {len(there)} it holds, name them: --gin.MIXTURE_OR_TASK_NAME="
                     f"\\\"{','.join(there)}\\\"")
    else:
        text += f" (it holds {len(present)} of the {len(catalog.TASKS)} tasks; `sciriff-jax data stats` lists them)"
    return (text + f"; or point ${DATA_DIR_ENV} (or seqio_tasks.configure(source_dir=...)) at a complete copy of "
            "the release.")


class SciriffTaskSource(seqio.DataSource):
    """One SciRIFF task of one context config, read from the prepared TFDS dataset by slicing."""

    def __init__(self, config: int, task: str, source_dir=None):
        self.config, self.task, self._source_dir = config, task, source_dir
        super().__init__(splits=SPLITS)

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split):
        return [f"{self.config}/{split}/{self.task}"]

    def num_input_examples(self, split):
        start, stop = task_ranges(self.config, split, release_source_dir(self._source_dir)).get(self.task, (0, 0))
        return stop - start

    def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, *, sequence_length=None,
                    use_cached=False, num_epochs=1):
        source_dir = release_source_dir(self._source_dir)
        start, stop = task_ranges(self.config, split, source_dir).get(self.task, (0, 0))
        builder = get_builder(self.config, source_dir)
        if stop == start:
            raise ValueError(missing_task_message(self.config, self.task, split, source_dir))
        # Slicing reads only this task's records; sharding and shuffling act on those indices.
        ds = builder.as_dataset(split=f"{split}[{start}:{stop}]", shuffle_files=False)
        ds = ds.map(lambda x: {k: x[k] for k in RELEASE_FIELDS})
        if shard_info is not None and shard_info.num_shards > 1:
            ds = ds.shard(shard_info.num_shards, shard_info.index)
        if shuffle:
            ds = ds.shuffle(min(stop - start, 10_000), seed=seed, reshuffle_each_iteration=True)
        return ds


# --- in-memory sources: the built-in sample, local JSONL/parquet, chat data ----------------------------


def _rows_dataset(rows: list[dict], keys=RELEASE_FIELDS) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices({k: np.array([r[k] for r in rows], dtype=object).astype(str)
                                               if rows else tf.zeros([0], tf.string) for k in keys})


class RowsSource(seqio.DataSource):
    """A source over rows loaded in Python (small data): deterministic seeded shuffling and per-host shards."""

    def __init__(self, load_split, splits, keys=RELEASE_FIELDS, describe=lambda split: "this source"):
        self._load_split, self._keys, self._describe = load_split, keys, describe
        super().__init__(splits=splits)

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split):
        return [split]

    def num_input_examples(self, split):
        return len(self._load_split(split))

    def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, *, sequence_length=None,
                    use_cached=False, num_epochs=1):
        if split not in self.splits:
            raise ValueError(f"split {split!r} not available; this source has {list(self.splits)}")
        rows = self._load_split(split)
        if not rows:
            raise ValueError(f"{self._describe(split)} has no {split!r} rows; check the file it reads")
        idx = _shuffled_shard(len(rows), shuffle, seed, shard_info)
        if self._keys == CHAT_KEYS:
            return _chat_dataset([rows[i] for i in idx])
        return _rows_dataset([rows[i] for i in idx], self._keys)


@functools.lru_cache(maxsize=None)
def _sample_rows(split: str) -> dict[str, list[dict]]:
    by_task = {}
    rows, _ = skip_empty_outputs(read_jsonl(sample.sample_path(split)), sample.sample_path(split))
    for row in rows:
        r = release_row(row)
        by_task.setdefault(r["task"], []).append(r)
    return by_task


def sample_source(task: str) -> RowsSource:
    """One task of the built-in sample (splits train, validation)."""
    return RowsSource(lambda split: _sample_rows(split).get(task, []), splits=sample.SPLITS,
                      describe=lambda split: f"built-in sample task {task!r} ({sample.SAMPLE_DIR}/{split}.jsonl)")


CHAT_KEYS = ("messages_role", "messages_content", "id", "dataset")


@functools.lru_cache(maxsize=None)
def load_chat_rows(path: str) -> list[dict]:
    """Tulu-v2 `messages` rows from a .jsonl/.parquet file (or a folder of them), in file order."""
    files = sorted(glob.glob(os.path.join(path, "*.jsonl")) + glob.glob(os.path.join(path, "*.parquet"))) \
        if os.path.isdir(path) else [path]
    if not files or not all(os.path.exists(f) for f in files):
        raise FileNotFoundError(f"chat data not found at {path!r}; expected a .jsonl/.parquet file with a "
                                "`messages` column (Tulu-v2 format) or a folder of them")
    out = []
    for f in files:
        for i, row in enumerate(read_rows(f, required=("messages",))):
            msgs = row["messages"]
            if not msgs or any(m.get("role") not in ("system", "user", "assistant") for m in msgs):
                raise ValueError(f"{f}: row {i + 1}: `messages` must be a non-empty list of "
                                 "{role: system|user|assistant, content} dicts")
            out.append({"messages_role": [m["role"] for m in msgs],
                        "messages_content": [str(m["content"]) for m in msgs],
                        "id": str(row.get("id", f"{os.path.basename(f)}:{i}")), "dataset": str(row.get("dataset", ""))})
    return out


def _chat_dataset(rows: list[dict]) -> tf.data.Dataset:
    def gen():
        for r in rows:
            yield {k: r[k] for k in CHAT_KEYS}

    sig = {"messages_role": tf.TensorSpec([None], tf.string), "messages_content": tf.TensorSpec([None], tf.string),
           "id": tf.TensorSpec([], tf.string), "dataset": tf.TensorSpec([], tf.string)}
    return tf.data.Dataset.from_generator(gen, output_signature=sig)


def chat_source(path_fn, select=lambda rows: rows) -> RowsSource:
    """General chat data (Tulu-v2 `messages`) from the path `path_fn()` returns when the data is first read;
    `select(rows)` picks the rows the task serves (e.g. `release_tulu_sample`)."""
    def load(split):
        path = path_fn()
        if not path:
            raise ValueError("no chat data configured: set $SCIRIFF_JAX_TULU_PATH (or call "
                             "seqio_tasks.configure(tulu_path=...)) to a Tulu-v2 `messages` .jsonl/.parquet")
        return select(load_chat_rows(path))

    return RowsSource(load, splits=("train",), keys=CHAT_KEYS, describe=lambda split: f"chat data at {path_fn()!r}")


# --- the release's selection (allenai/SciRIFF script/instructions/create_mixture.py at e396d00) -----------

TULU_SEED = 76  # create_mixture: random.seed(76), then the Tulu rows are the first thing shuffled


def release_tulu_sample(rows: list[dict], n: int) -> list[dict]:
    """The release's Tulu half: the rows whose `dataset` is not `science.*`, in file order, shuffled as
    `random.seed(76); random.shuffle(rows)` does, then the first n."""
    kept = [r for r in rows if r["dataset"].split(".")[0] != "science"]
    random.Random(TULU_SEED).shuffle(kept)
    return kept[:n]


def release_science_ids(train_mix_rows: list[dict]) -> dict[str, frozenset[str]]:
    """{task: instance indices} of the science rows of the published train mix (`id` = science.<task>.<index>)."""
    out: dict[str, set[str]] = {}
    for r in train_mix_rows:
        if r["dataset"].startswith("science."):
            task = r["dataset"][len("science."):]
            prefix = f"science.{task}."
            if not r["id"].startswith(prefix):
                raise ValueError(f"train-mix row {r['id']!r} of dataset {r['dataset']!r}: expected an id "
                                 f"{prefix}<index>")
            out.setdefault(task, set()).add(r["id"][len(prefix):])
    return {k: frozenset(v) for k, v in out.items()}


class ReleaseSelection(seqio.DataSource):
    """The train instances of one task that the release put in SciTulu's mix: those whose `_instance_id` index
    the published train mix lists (the release took the first 1,000 of its own instance order, which the hub,
    sorted by id, does not keep)."""

    def __init__(self, inner: "SciriffTaskSource", ids_fn):
        self._inner, self._ids_fn = inner, ids_fn
        super().__init__(splits=("train",))

    @property
    def supports_arbitrary_sharding(self):
        return True

    def list_shards(self, split):
        return self._inner.list_shards(split)

    def _ids(self) -> frozenset:
        ids = self._ids_fn().get(self._inner.task)
        if not ids:
            raise ValueError(f"the published SciRIFF-train-mix lists no instances of {self._inner.task!r}; "
                             "point $SCIRIFF_JAX_TRAIN_MIX_PATH at allenai/SciRIFF-train-mix's parquet")
        return ids

    def num_input_examples(self, split):
        return len(self._ids())

    def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, *, sequence_length=None,
                    use_cached=False, num_epochs=1):
        ids = sorted(self._ids())
        table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(ids, [True] * len(ids)), False)
        index = lambda x: tf.strings.split(x["_instance_id"], ":")[-1]  # noqa: E731  task:split:index
        ds = self._inner.get_dataset(split, shuffle=False).filter(lambda x: table.lookup(index(x)))
        if shard_info is not None and shard_info.num_shards > 1:
            ds = ds.shard(shard_info.num_shards, shard_info.index)
        return ds.shuffle(len(ids), seed=seed) if shuffle else ds
