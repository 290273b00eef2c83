"""Task lists: several task or mixture names wherever one name is taken, with optional rates.

`"sciriff_4096_scierc_ner,sciriff_4096_biored_ner:2"` (a gin list `["a", "b:2"]` is joined to that at the gin edge,
run/main.py) is read as one SeqIO mixture of those tasks, registered under that very text the first time it is read,
in whatever process reads it: a run's records name it and any later command resolves it again. A listed mixture
contributes its tasks at its own relative rates, scaled to the rate given; without a rate a task counts its train
examples (capped, as the `_train` mixtures do) and a mixture the sum of its rates. Rates only decide the interleaving:
like every mixture here, a list reads each task's examples exactly once per epoch (SAMPLE_FN).
"""
from __future__ import annotations

import functools
import re
from typing import Callable

import seqio
import tensorflow as tf

from seqio_tasks import sample

SEPARATOR = ","
TRAIN_RATE_CAP = 5000  # default of SETTINGS.train_rate_cap: examples-proportional, capped
# Exact epochs: keep sampling from the tasks that still have examples when another one is exhausted.
SAMPLE_FN = functools.partial(tf.data.Dataset.sample_from_datasets, stop_on_empty_dataset=False)
_RATE = re.compile(r"^(?P<name>.+):(?P<rate>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$")


def capped_rate(n: int, cap: int | None = TRAIN_RATE_CAP) -> float:
    """Mixing rate of a task with n examples: n, capped (t5-style examples-proportional mixing)."""
    return float(min(n, cap) if cap else n)


def is_list(name: str) -> bool:
    """Whether `name` is written as a task list (names separated by commas, or one name with a `:rate`)."""
    return SEPARATOR in name or _RATE.match(name.strip()) is not None


def parse(spec: str) -> list[tuple[str, float | None]]:
    """[(name, rate or None)] of a task list; an empty item or a rate <= 0 stops, naming the list."""
    items = []
    for part in spec.split(SEPARATOR):
        part = part.strip()
        match = _RATE.match(part)
        name, rate = (match["name"].strip(), float(match["rate"])) if match else (part, None)
        if not name:
            raise ValueError(f"task list {spec!r}: an empty name; write several tasks or mixtures as "
                             "'name,name' or with rates 'name:2,name:1'")
        if rate is not None and rate <= 0:
            raise ValueError(f"task list {spec!r}: the rate of {name} is {rate:g}; a rate must be above 0 "
                             "(leave a task out by not naming it)")
        items.append((name, rate))
    return items


def join(names) -> str:
    """The task-list text of a gin list: ["a", "b:2"] or [("a", 1), ("b", 2)] -> "a,b:2" (a string stays as is)."""
    if isinstance(names, str):
        return names
    parts = []
    for item in names:
        if isinstance(item, (list, tuple)) and len(item) == 2:
            parts.append(f"{item[0]}:{float(item[1]):g}")
        elif isinstance(item, str):
            parts.append(item)
        else:
            raise ValueError(f"task list {list(names)!r}: {item!r} is neither a name nor a (name, rate) pair")
    return SEPARATOR.join(parts)


def default_rate(provider, cap: int | None = TRAIN_RATE_CAP) -> float:
    """A listed name's rate when none is given: a mixture's total, a task's train examples (capped)."""
    if isinstance(provider, seqio.Mixture):
        return float(sum(provider.get_rate(t) for t in provider.tasks))
    meta = getattr(provider, "sciriff_metadata", {}) or {}
    n = sample.SIZES["train"] if meta.get("config") == "sample" else meta.get("n_train") or meta.get("rows")
    return capped_rate(n, cap) if n else 1.0


def rates(spec: str, lookup: Callable[[str], object], cap: int | None = TRAIN_RATE_CAP) -> dict[str, float]:
    """{task name: rate} of a task list; `lookup` finds each listed name (unknown names fail with close matches)."""
    out: dict[str, float] = {}
    for name, rate in parse(spec):
        provider = lookup(name)
        total = default_rate(provider, cap)
        scale = 1.0 if rate is None else rate / total
        own = ({t.name: provider.get_rate(t) for t in provider.tasks} if isinstance(provider, seqio.Mixture)
               else {provider.name: total})
        for task, r in own.items():
            out[task] = out.get(task, 0.0) + r * scale
    return out


def register(spec: str, lookup: Callable[[str], object], cap: int | None = TRAIN_RATE_CAP) -> seqio.Mixture:
    """Register the task list `spec` as a mixture named `spec` (tasks.chat_format_of refuses one whose tasks are
    tokenized differently; a finetune first maps every name to the checkpoint's format)."""
    task_rates = rates(spec, lookup, cap)
    seqio.MixtureRegistry.remove(spec)
    return seqio.MixtureRegistry.add(spec, list(task_rates.items()), sample_fn=SAMPLE_FN)
