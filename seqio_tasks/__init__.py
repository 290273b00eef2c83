"""SciRIFF as SeqIO tasks and mixtures: `import seqio_tasks` registers everything.

The default task set is named `sciriff_*` and tokenizes with the vocabulary of $SCIRIFF_JAX_VOCAB (read once, at
import) and the tulu template; `register(prefix=..., vocabulary=..., template=...)` (or `chat_format=...`) adds
another set next to it, and `name_for(name, chat_format)` gives the name of the same task or mixture tokenized with
a ChatFormat (registering its set on first use; only the unconfigured default set is re-tokenized). No registration rewrites another set, and no module-level setting
decides tokens. Importing changes no process-wide state (our own input pipeline, `get_dataset`, hides the GPUs
from TensorFlow when it starts).
"""
import hashlib

import seqio

from sciriff_jax.chat import render
from sciriff_jax.chat.format import ChatFormat, resolve_template
from sciriff_jax.chat.render import render_prompt, split_chat, tokenize_messages
from seqio_tasks import lists, mixtures, sources, tasks
from seqio_tasks.catalog import EVAL_TASKS, FAMILIES, TASKS, TaskInfo, get_task_info
from seqio_tasks.converter import OVERLONG_COUNTS, OVERLONG_POLICIES, ChatFeatureConverter
from seqio_tasks.datasets import get_dataset, get_provider, raw_examples, task_names
from seqio_tasks.hf_vocab import HFTokenizerVocabulary
from seqio_tasks.sample import SAMPLE_TASKS, sample_path
from seqio_tasks.tasks import SETTINGS, TASK_SETS, TaskSet, chat_format_of, task_set_of
from seqio_tasks.vocab import MissingVocabulary, describe, get_vocabulary


def register(prefix: str, vocabulary=None, template: str | None = None, *,
             chat_format: ChatFormat | None = None) -> TaskSet:
    """Register every task and mixture again under `prefix` (e.g. `mymodel_4096_scierc_ner`, `mymodel_sample`)
    tokenized with `chat_format`, or with `vocabulary` (a seqio.Vocabulary, a SentencePiece .model, a Hugging Face
    tokenizer.json or a directory holding one) and `template` (render.TEMPLATES, "model" for the vocabulary's own
    chat template, "auto" for its own where it has one, or a .jinja path; None: tulu). Other sets are left as they
    are."""
    if not prefix or not prefix.replace("_", "").isalnum():
        raise ValueError(f"register(prefix={prefix!r}): use letters, digits and underscores")
    if chat_format is None:
        if vocabulary is None:
            raise ValueError(f"register(prefix={prefix!r}) needs a vocabulary (a seqio.Vocabulary, a .model or "
                             "tokenizer.json path, or a tokenizer directory) or a chat_format")
        vocab = get_vocabulary(vocabulary)
        chat_format = ChatFormat(vocab, resolve_template(template or "tulu", bool(getattr(vocab, "chat_template", None))),
                                 f"registered as {prefix}_*")
    chat_format.check()  # fails early: a typo, no assistant turns
    task_set = TaskSet(prefix, chat_format, chat_format)
    _register(task_set)
    return task_set


def name_for(mixture_or_task_name: str, chat_format: ChatFormat) -> str:
    """The name of `mixture_or_task_name` tokenized with `chat_format`: the name itself when it already is, else
    the same task or mixture of a task set registered for that format (`sciriff_4096_scitulu` ->
    `sciriff_f<hash>_4096_scitulu`, registered on first use). A task list gets each of its names so
    (`a,b:2` -> `A,B:2`), and a mixture registered outside the task sets from their tasks becomes the task list of
    its tasks so, at its rates: the format is chosen when the data is read, whatever was registered first. A task
    registered outside the task sets cannot be re-tokenized: that stops, naming both. Whether a run may re-tokenize
    a set someone configured is the caller's decision (a finetune re-tokenizes only the unconfigured default set;
    see is_configured)."""
    if chat_format_of(mixture_or_task_name) == chat_format:
        return mixture_or_task_name
    name = _name_for(mixture_or_task_name, chat_format)
    print(f"seqio_tasks: {mixture_or_task_name} is read as {name}: the vocabulary {describe(chat_format.vocabulary)}, "
          f"template {chat_format.template!r}", flush=True)
    return name


def _name_for(name: str, chat_format: ChatFormat) -> str:
    if lists.is_list(name):
        return lists.SEPARATOR.join(_name_for(item, chat_format) + ("" if rate is None else f":{rate:g}")
                                    for item, rate in lists.parse(name))
    task_set = task_set_of(name)
    if task_set is None:
        raise ValueError(
            f"{name} was registered outside seqio_tasks' task sets and tokenizes with "
            f"{chat_format_of(name).describe()}, not {chat_format.describe()}: register it for that "
            "format (seqio_tasks.register(prefix=..., chat_format=...)) or use one of the sciriff_* names.")
    key = hashlib.sha256(repr(chat_format.identity).encode()).hexdigest()[:8]
    prefix = f"{tasks.DEFAULT_PREFIX}_f{key}"
    if prefix not in TASK_SETS:
        _register(TaskSet(prefix, chat_format, chat_format))
    if name.startswith(task_set.prefix + "_"):
        same = prefix + name[len(task_set.prefix):]
        if same in seqio.TaskRegistry.names() or same in seqio.MixtureRegistry.names():
            return same
    provider = get_provider(name)  # a mixture of someone's, of task-set tasks: its tasks, each in the format
    return lists.SEPARATOR.join(f"{_name_for(t.name, chat_format)}:{provider.get_rate(t):g}" for t in provider.tasks)


def is_configured(mixture_or_task_name: str) -> bool:
    """Whether the task set of a task or mixture has a vocabulary someone chose ($SCIRIFF_JAX_VOCAB, register):
    False for the default set without one (its real tasks have MissingVocabulary, its sample the sample's own)."""
    task_set = task_set_of(mixture_or_task_name)
    return task_set is None or not isinstance(task_set.chat_format.vocabulary, MissingVocabulary)


def configure(*, overlong=None, tulu_path=None, train_mix_path=None, source_dir=None, scitulu_per_task=None,
              train_rate_cap=None, chat_ratio=None) -> None:
    """Change where the data comes from, which over-long rows are kept, and the SciTulu sizes of the default set
    (re-registered with its own format). The vocabulary and template are the task sets' ChatFormats: register a
    set for another one."""
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
    if scitulu_per_task is not None:
        SETTINGS.scitulu_per_task = scitulu_per_task
    if train_rate_cap is not None:
        SETTINGS.train_rate_cap = train_rate_cap
    if chat_ratio is not None:
        SETTINGS.chat_ratio = chat_ratio
    current = TASK_SETS[tasks.DEFAULT_PREFIX]  # as before: the default set; sets registered later take these too
    if any(v is not None for v in (scitulu_per_task, chat_ratio)):
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
