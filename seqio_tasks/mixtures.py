"""Registers the mixtures of a task set: the sample, and per context config train / SciTulu / eval / per-family.

Every mixture samples by rate but does not stop when one task runs out (SeqIO's default does), so with
`num_epochs=N` each example of each task is read exactly N times; rates only decide the interleaving.
"""
import seqio

from seqio_tasks import catalog, sample
from seqio_tasks.lists import SAMPLE_FN, TRAIN_RATE_CAP, capped_rate
from seqio_tasks.tasks import (DEFAULT_PREFIX, SCITULU_PER_TASK, chat_task_name, sample_task_name, sciriff_task_name,
                               scitulu_task_name)

__all__ = ["SAMPLE_FN", "TRAIN_RATE_CAP", "capped_rate", "family_mixture_name", "register_all"]


def family_mixture_name(config: int, family: str, prefix: str = DEFAULT_PREFIX) -> str:
    """SeqIO name of a per-family mixture, e.g. sciriff_4096_family_ie_named_entity_recognition."""
    return f"{prefix}_{config}_family_{family.replace('.', '_')}"


def _add(name, tasks_and_rates):
    if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, [(t, r) for t, r in tasks_and_rates if r > 0], sample_fn=SAMPLE_FN)


def register_all(cap: int | None = TRAIN_RATE_CAP, scitulu_per_task: int = SCITULU_PER_TASK,
                 chat_ratio: float = 1.0, prefix: str = DEFAULT_PREFIX) -> None:
    """(Re-)register every mixture of a task set. Rates come from tasks.tsv counts, so registering reads no data.

    `<prefix>_<ctx>_train` holds every task's train split, the nine SciRIFF-Eval tasks' included: a model trained
    on it has seen the eval tasks (their train splits), so its SciRIFF-Eval numbers are not held-out ones. `<prefix>_<ctx>_scitulu` (the paper's recipe) leaves the eval tasks out.
    """
    _add(f"{prefix}_sample", [(sample_task_name(n, prefix), sample.SIZES["train"]) for n in sample.SAMPLE_TASKS])
    for config in catalog.CONTEXT_CONFIGS:
        infos = list(catalog.TASKS.values())
        _add(f"{prefix}_{config}_train", [(sciriff_task_name(config, t.name, prefix), capped_rate(t.n_train, cap))
                                          for t in infos])
        # SciTulu: the first N train instances of each non-eval task + chat rows (chat_ratio x as many).
        science = [(scitulu_task_name(config, t.name, scitulu_per_task, prefix),
                    float(min(t.n_train, scitulu_per_task))) for t in infos if not t.eval_task]
        _add(f"{prefix}_{config}_scitulu", science + [(chat_task_name(prefix), chat_ratio * sum(r for _, r in science))])
        _add(f"{prefix}_{config}_scitulu_science", science)
        _add(f"{prefix}_{config}_eval", [(sciriff_task_name(config, n, prefix), float(catalog.TASKS[n].n_validation))
                                         for n in catalog.EVAL_TASKS])
        for family, names in catalog.FAMILIES.items():
            _add(family_mixture_name(config, family, prefix),
                 [(sciriff_task_name(config, n, prefix), capped_rate(catalog.TASKS[n].n_train, cap)) for n in names])
