"""The built-in sample (data/sample/*.jsonl): its five tasks, their scorers, and path helpers."""
import hashlib
import json
import pathlib

from sciriff_jax.scoring import metrics
from seqio_tasks.sample_generator import generate

SAMPLE_DIR = pathlib.Path(__file__).resolve().parent / "data" / "sample"
SPLITS = ("train", "validation")
# Instances per task and split; 5 tasks x (360 + 30) = 1,800 train / 150 validation, under 2 MB on disk.
SIZES = {"train": 360, "validation": 30}

# name -> metadata; "scorer" is the SciRIFF-Eval scorer (scoring.metrics.SCORERS) the eval scores the task with.
SAMPLE_TASKS = {
    "sample_ner": dict(family="ie.named_entity_recognition", output_context="json",
                       domains=("artificial_intelligence",), scorer="scierc_ner"),
    "sample_list_qa": dict(family="qa.abstractive", output_context="json", domains=("biomedicine",),
                           scorer="bioasq_list_qa"),
    "sample_classification": dict(family="classification", output_context="label",
                                  domains=("artificial_intelligence",), scorer="label_f1"),
    "sample_entailment": dict(family="entailment", output_context="json", domains=("biomedicine", "clinical_medicine"),
                              scorer="scifact_entailment"),
    "sample_summarization": dict(family="summarization", output_context="sentence",
                                 domains=("artificial_intelligence",), scorer="token_f1"),
}
SAMPLE_SCORERS = {name: meta["scorer"] for name, meta in SAMPLE_TASKS.items()}


def resolve_scorer(task_name: str) -> str:
    """The scorer of a task: metrics.resolve_scorer, knowing the sample's tasks (sciriff_sample_ner -> scierc_ner)."""
    return metrics.resolve_scorer(task_name, SAMPLE_SCORERS)


def sample_path(split: str) -> pathlib.Path:
    """Path of the built-in sample's JSONL file for `split` ("train" or "validation")."""
    if split not in SPLITS:
        raise ValueError(f"the built-in sample has splits {SPLITS}, not {split!r}")
    path = SAMPLE_DIR / f"{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"built-in sample missing at {path}; regenerate it with `python scripts/make_sample.py`")
    return path


def sample_fingerprint() -> str:
    """Short sha256 of the sample's files: names caches derived from it (e.g. the trained vocabulary)."""
    h = hashlib.sha256()
    for split in SPLITS:
        h.update(sample_path(split).read_bytes())
    return h.hexdigest()[:12]


def write_sample(out_dir: pathlib.Path = SAMPLE_DIR, seed: int = 0) -> dict:
    """Generate the sample deterministically and write {split}.jsonl under out_dir; returns {split: path}."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in generate(SIZES, seed=seed).items():
        path = out_dir / f"{split}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.replace(path)
        paths[split] = path
    return paths
