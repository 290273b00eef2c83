"""Registers the mixtures: the sample, and per context config train / SciTulu / eval / per-family."""
import seqio

from seqio_tasks import catalog, sample
from seqio_tasks.tasks import SCITULU_PER_TASK, sample_task_name, sciriff_task_name, scitulu_task_name

TRAIN_RATE_CAP = 5000  # default of SETTINGS.train_rate_cap: examples-proportional, capped


def capped_rate(n: int, cap: int | None = TRAIN_RATE_CAP) -> float:
    """Mixing rate of a task with n examples: n, capped (t5-style examples-proportional mixing)."""
    return float(min(n, cap) if cap else n)


def family_mixture_name(config: int, family: str) -> str:
    """SeqIO name of a per-family mixture, e.g. sciriff_4096_family_ie_named_entity_recognition."""
    return f"sciriff_{config}_family_{family.replace('.', '_')}"


def _add(name, tasks_and_rates):
    if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, [(t, r) for t, r in tasks_and_rates if r > 0])


def register_all(cap: int | None = TRAIN_RATE_CAP, scitulu_per_task: int = SCITULU_PER_TASK,
                 chat_ratio: float = 1.0) -> None:
    """(Re-)register every mixture. Rates come from tasks.tsv counts, so registering reads no data."""
    _add("sciriff_sample", [(sample_task_name(n), sample.SIZES["train"]) for n in sample.SAMPLE_TASKS])
    for config in catalog.CONTEXT_CONFIGS:
        infos = list(catalog.TASKS.values())
        _add(f"sciriff_{config}_train", [(sciriff_task_name(config, t.name), capped_rate(t.n_train, cap))
                                         for t in infos])
        # SciTulu: the first N train instances of each non-eval task + chat rows (chat_ratio x as many).
        science = [(scitulu_task_name(config, t.name, scitulu_per_task), float(min(t.n_train, scitulu_per_task)))
                   for t in infos if not t.eval_task]
        _add(f"sciriff_{config}_scitulu", science + [("tulu_v2_chat", chat_ratio * sum(r for _, r in science))])
        _add(f"sciriff_{config}_scitulu_science", science)
        _add(f"sciriff_{config}_eval", [(sciriff_task_name(config, n), float(catalog.TASKS[n].n_validation))
                                        for n in catalog.EVAL_TASKS])
        for family, names in catalog.FAMILIES.items():
            _add(family_mixture_name(config, family),
                 [(sciriff_task_name(config, n), capped_rate(catalog.TASKS[n].n_train, cap)) for n in names])
