"""The 54 SciRIFF tasks and their metadata, read from the packaged data/tasks.tsv."""
import csv
import dataclasses
import difflib
import pathlib

TASKS_TSV = pathlib.Path(__file__).resolve().parent / "data" / "tasks.tsv"
CONTEXT_CONFIGS = (4096, 8192, 16384)


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """One SciRIFF task: family, domains, contexts, 4096-config instance counts, eval flag and metrics."""

    name: str
    family: str
    domains: tuple[str, ...]
    source_type: str
    input_context: str
    output_context: str
    n_train: int
    n_validation: int
    n_test: int
    eval_task: bool
    eval_metrics: str


def load_catalog(path: pathlib.Path = TASKS_TSV) -> dict[str, TaskInfo]:
    """Parse a tasks.tsv (the release's task table) into {name: TaskInfo}, in file order."""
    tasks = {}
    with open(path, newline="", encoding="utf-8") as f:
        for lineno, row in enumerate(csv.DictReader(f, delimiter="\t"), start=2):
            try:
                tasks[row["name"]] = TaskInfo(
                    name=row["name"], family=row["task"],
                    domains=tuple(d.strip() for d in row["domains"].split(",") if d.strip()),
                    source_type=row["source_type"], input_context=row["input_context"],
                    output_context=row["output_context"], n_train=int(row["n_train"]),
                    n_validation=int(row["n_validation"]), n_test=int(row["n_test"]),
                    eval_task=row["eval_task"].strip() == "yes", eval_metrics=(row["eval_metrics"] or "").strip())
            except (KeyError, ValueError, AttributeError) as e:
                raise ValueError(f"{path}:{lineno}: bad task row ({e}); expected the columns of tasks.tsv") from e
    return tasks


TASKS: dict[str, TaskInfo] = load_catalog()
EVAL_TASKS: tuple[str, ...] = tuple(n for n, t in TASKS.items() if t.eval_task)
TRAIN_TASKS: tuple[str, ...] = tuple(n for n, t in TASKS.items() if not t.eval_task)
FAMILIES: dict[str, tuple[str, ...]] = {}
for _t in TASKS.values():
    FAMILIES[_t.family] = FAMILIES.get(_t.family, ()) + (_t.name,)


def get_task_info(name: str) -> TaskInfo:
    """The TaskInfo of a SciRIFF task name; unknown names fail listing close matches."""
    if name not in TASKS:
        raise KeyError(unknown_name_message("SciRIFF task", name, TASKS))
    return TASKS[name]


def unknown_name_message(kind: str, name: str, known) -> str:
    """'unknown <kind> <name>; did you mean ...' with close matches among `known`."""
    close = difflib.get_close_matches(name, list(known), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; {len(list(known))} are known"
    return f"unknown {kind} {name!r}{hint}"
