"""SciRIFF as SeqIO tasks and mixtures: `import seqio_tasks` registers everything.

The default task set is named `sciriff_*`; `register(prefix=..., vocabulary=..., template=...)` adds another
for a vocabulary and template of your choosing, next to it. Importing changes no process-wide state (our
own input pipeline, `get_dataset`, hides the GPUs from TensorFlow when it starts).
"""
from seqio_tasks import mixtures, tasks
from seqio_tasks.catalog import EVAL_TASKS, FAMILIES, TASKS, TaskInfo, get_task_info
from seqio_tasks.converter import OVERLONG_COUNTS, ChatFeatureConverter
from seqio_tasks.datasets import get_dataset, get_provider, raw_examples, task_names
from seqio_tasks.hf_vocab import HFTokenizerVocabulary
from seqio_tasks.render import render_prompt, split_chat, tokenize_messages
from seqio_tasks.sample import SAMPLE_TASKS, sample_path
from seqio_tasks.tasks import SETTINGS, TASK_SETS, TaskSet, tokenizer_of
from seqio_tasks.vocab import get_vocabulary


def register(prefix: str, vocabulary, template: str | None = None) -> TaskSet:
    """Register every task and mixture again under `prefix` (e.g. `mymodel_4096_scierc_ner`, `mymodel_sample`)
    with `vocabulary` (a seqio.Vocabulary, a SentencePiece .model, a Hugging Face tokenizer.json or a directory
    holding one) and `template` (render.TEMPLATES, "model" for the vocabulary's own chat template, or a .jinja
    path; None: SETTINGS.template). The default `sciriff_*` set is left as it is."""
    from seqio_tasks import render

    if not prefix or not prefix.replace("_", "").isalnum():
        raise ValueError(f"register(prefix={prefix!r}): use letters, digits and underscores")
    vocab = get_vocabulary(vocabulary) if vocabulary is not None else None
    if vocab is None:
        raise ValueError(f"register(prefix={prefix!r}) needs a vocabulary (a seqio.Vocabulary, a .model or "
                         "tokenizer.json path, or a tokenizer directory)")
    if template is not None:
        render.check_template(render.resolve(template, vocab), vocab)  # fails early: a typo, no assistant turns
    task_set = TaskSet(prefix, vocab, vocab, template)
    _register(task_set)
    return task_set


def configure(*, template=None, overlong=None, tulu_path=None, train_mix_path=None, source_dir=None,
              vocab_path=None, scitulu_per_task=None, train_rate_cap=None, chat_ratio=None) -> None:
    """Change data settings of the default `sciriff_*` set. A new vocabulary (a path or a seqio.Vocabulary)
    re-registers its tasks, saying so; SciTulu / rate changes re-register tasks or mixtures with the same
    vocabulary."""
    from seqio_tasks import render, sources
    from seqio_tasks import vocab as vocab_lib
    from seqio_tasks.converter import OVERLONG_POLICIES

    if template is not None:
        render.check_template_name(template)  # fails early on a typo
        SETTINGS.template = template
    if overlong is not None:
        if overlong not in OVERLONG_POLICIES:
            raise ValueError(f"overlong={overlong!r}; expected one of {OVERLONG_POLICIES}")
        SETTINGS.overlong = overlong
    if tulu_path is not None:
        SETTINGS.tulu_path = str(tulu_path)
    if train_mix_path is not None:
        SETTINGS.train_mix_path = str(train_mix_path)
    if source_dir is not None:
        sources.LOCAL_RELEASE["dir"] = str(source_dir)
    current = TASK_SETS[tasks.DEFAULT_PREFIX]
    if vocab_path is not None:
        SETTINGS.vocab_path = vocab_path
        current = tasks.default_task_set()
        print(f"seqio_tasks: sciriff_* tasks now use the vocabulary {vocab_lib.describe(current.vocabulary)}",
              flush=True)
    if scitulu_per_task is not None:
        SETTINGS.scitulu_per_task = scitulu_per_task
    if train_rate_cap is not None:
        SETTINGS.train_rate_cap = train_rate_cap
    if chat_ratio is not None:
        SETTINGS.chat_ratio = chat_ratio
    if any(v is not None for v in (vocab_path, scitulu_per_task, chat_ratio)):
        _register(current)
    elif train_rate_cap is not None:
        _register_mixtures(current.prefix)


def _register(task_set: TaskSet) -> None:
    n = SETTINGS.scitulu_per_task
    tasks.register_tasks(task_set, scitulu_per_task=n,
                         chat_rows=int(round(SETTINGS.chat_ratio * tasks.scitulu_science_rows(n))))
    _register_mixtures(task_set.prefix)


def _register_mixtures(prefix: str) -> None:
    mixtures.register_all(cap=SETTINGS.train_rate_cap, scitulu_per_task=SETTINGS.scitulu_per_task,
                          chat_ratio=SETTINGS.chat_ratio, prefix=prefix)


_register(tasks.default_task_set())
