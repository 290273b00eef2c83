"""SciRIFF as SeqIO tasks and mixtures: `import seqio_tasks` registers everything."""
import tensorflow as tf

# The input pipeline runs on the host: keep TensorFlow off the GPUs, whose memory belongs to JAX.
tf.config.set_visible_devices([], "GPU")

from seqio_tasks import mixtures, tasks
from seqio_tasks.catalog import EVAL_TASKS, FAMILIES, TASKS, TaskInfo, get_task_info
from seqio_tasks.datasets import get_dataset, get_provider, raw_examples, task_names
from seqio_tasks.render import render_prompt, tokenize_messages
from seqio_tasks.sample import SAMPLE_TASKS, sample_path
from seqio_tasks.tasks import OVERLONG_COUNTS, SETTINGS
from seqio_tasks.vocab import get_vocabulary


def configure(*, template=None, overlong=None, tulu_path=None, train_mix_path=None, source_dir=None,
              vocab_path=None, scitulu_per_task=None, train_rate_cap=None, chat_ratio=None) -> None:
    """Change data settings; vocabulary / SciTulu / rate changes re-register every task and mixture."""
    from seqio_tasks import render, sources

    if template is not None:
        render.get_template(template)  # fails early on a typo
        SETTINGS.template = template
    if overlong is not None:
        if overlong not in ("truncate", "drop"):
            raise ValueError(f"overlong={overlong!r}; expected 'truncate' or 'drop'")
        SETTINGS.overlong = overlong
    if tulu_path is not None:
        SETTINGS.tulu_path = str(tulu_path)
    if train_mix_path is not None:
        SETTINGS.train_mix_path = str(train_mix_path)
    if source_dir is not None:
        sources.LOCAL_RELEASE["dir"] = str(source_dir)
    changes = dict(vocab_path=vocab_path, scitulu_per_task=scitulu_per_task, train_rate_cap=train_rate_cap,
                   chat_ratio=chat_ratio)
    if any(v is not None for v in changes.values()):
        for key, value in changes.items():
            if value is not None:
                setattr(SETTINGS, key, value)
        _register()


def _register() -> None:
    n = SETTINGS.scitulu_per_task
    vocab = get_vocabulary(SETTINGS.vocab_path) if SETTINGS.vocab_path else None
    tasks.register_all(vocab, scitulu_per_task=n,
                       chat_rows=int(round(SETTINGS.chat_ratio * tasks.scitulu_science_rows(n))))
    mixtures.register_all(cap=SETTINGS.train_rate_cap, scitulu_per_task=n, chat_ratio=SETTINGS.chat_ratio)


_register()
