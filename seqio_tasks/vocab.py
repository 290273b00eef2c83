"""Vocabularies: a configured SentencePiece .model, a Hugging Face tokenizer.json (hf_vocab.py) or a directory
holding either, or a seqio.Vocabulary; the one trained from the built-in sample (reused) serves only the sample."""
import hashlib
import json
import os
import pathlib
import tempfile

import seqio
import sentencepiece as spm

from sciriff_jax.chat.jinja import read_template
from seqio_tasks import sample
from seqio_tasks.hf_vocab import HFTokenizerVocabulary

VOCAB_ENV = "SCIRIFF_JAX_VOCAB"
CACHE_ENV = "SCIRIFF_JAX_CACHE"
CHAT_MARKERS = ("<|user|>", "<|assistant|>")
# Settings of the sample-trained vocabulary; part of the cache key, so changing one retrains.
TRAINER_SETTINGS = dict(vocab_size=1500, model_type="bpe", byte_fallback=True, pad_id=0, eos_id=1, unk_id=2,
                        bos_id=-1, character_coverage=1.0, split_digits=True, num_threads=1,
                        user_defined_symbols=",".join(CHAT_MARKERS),
                        normalization_rule_name="identity", remove_extra_whitespaces=False)


def cache_dir() -> pathlib.Path:
    """Root of sciriff-jax's caches: $SCIRIFF_JAX_CACHE, else ~/.cache/sciriff-jax."""
    return pathlib.Path(os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "sciriff-jax")


def sample_vocab_path() -> pathlib.Path:
    """Where the sample-trained vocabulary lives: named by a hash of the sample and the trainer settings."""
    key = hashlib.sha256((sample.sample_fingerprint() + json.dumps(TRAINER_SETTINGS, sort_keys=True)).encode())
    return cache_dir() / "vocab" / f"sample-{key.hexdigest()[:12]}.model"


def _sample_sentences():
    """Every input and output of the sample's train split, one line at a time (the trainer's corpus)."""
    for line in open(sample.sample_path("train"), encoding="utf-8"):
        row = json.loads(line)
        for text in (row["input"], row["output"]):
            yield from (s for s in text.split("\n") if s.strip())


def train_sample_vocab(path: pathlib.Path) -> pathlib.Path:
    """Train the sample vocabulary with SentencePiece and write it atomically to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"sciriff-jax: training a {TRAINER_SETTINGS['vocab_size']}-piece SentencePiece vocabulary "
          f"from the built-in sample -> {path} (once; reused afterwards)", flush=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        prefix = os.path.join(tmp, "spm")
        spm.SentencePieceTrainer.train(sentence_iterator=_sample_sentences(), model_prefix=prefix,
                                       minloglevel=2, **TRAINER_SETTINGS)
        os.replace(prefix + ".model", path)  # atomic: a concurrent reader sees the old file or the whole new one
    return path


class SentencePieceFileVocabulary(seqio.SentencePieceVocabulary):
    """seqio.SentencePieceVocabulary whose load errors name the file and say what to do."""

    def _model_context(self):
        if self._model is None:
            self._ensure_file()
            try:
                return super()._model_context()
            except Exception as e:  # sentencepiece / gfile raise bare RuntimeError / OSError without the path
                raise ValueError(
                    f"could not load SentencePiece vocabulary {self._sentencepiece_model_file!r}: {e}. Expected "
                    f"a SentencePiece .model file (e.g. Llama-2's tokenizer.model); set ${VOCAB_ENV} or pass "
                    "a valid path, or unset it to use the vocabulary trained from the built-in sample.") from e
        return self._model

    def _ensure_file(self):
        pass

    @property
    def fingerprint(self) -> str:
        """sha256 of the .model file: equal for the same vocabulary."""
        self._ensure_file()
        return hashlib.sha256(pathlib.Path(self._sentencepiece_model_file).read_bytes()).hexdigest()

    @property
    def chat_template(self) -> "str | None":
        """A chat template kept beside the .model file (a recorded checkpoint tokenizer), or None."""
        return read_template(pathlib.Path(self._sentencepiece_model_file).parent)


class SampleVocabulary(SentencePieceFileVocabulary):
    """The sample-trained vocabulary: trains (once, cached) on first use, so creating it is free."""

    def __init__(self):
        super().__init__(str(sample_vocab_path()))

    def _ensure_file(self):
        path = pathlib.Path(self._sentencepiece_model_file)
        if not path.exists():
            train_sample_vocab(path)


class MissingVocabulary(seqio.Vocabulary):
    """The vocabulary of the real SciRIFF tasks until one is configured: any use stops with how to set one.

    The sample-trained vocabulary (1,500 pieces) serves the built-in sample and the demo only; real tasks would
    train a model no checkpoint can use, so they never fall back to it.
    """

    def __init__(self, tasks: str = "sciriff_<ctx>_*"):
        self._tasks = tasks
        super().__init__(extra_ids=0)

    def _fail(self, *_args, **_kwargs):
        raise ValueError(
            f"no vocabulary is configured for the {self._tasks} tasks: set ${VOCAB_ENV} to the model's tokenizer "
            "(e.g. Llama-2's tokenizer.model) before `import seqio_tasks`, or register a task set for your own "
            "vocabulary with seqio_tasks.register(prefix=..., vocabulary=...), or train from a checkpoint that has "
            "its own tokenizer (INITIAL_CHECKPOINT_PATH). (Only the built-in sample, sciriff_sample_*, has a "
            "vocabulary of its own.)")

    _encode = _decode = _encode_tf = _decode_tf = check = _fail

    @property
    def _base_vocab_size(self):
        self._fail()

    @property
    def eos_id(self):
        self._fail()

    @property
    def unk_id(self):
        self._fail()

    def __eq__(self, other):
        return isinstance(other, MissingVocabulary)

    def __hash__(self):
        return hash(MissingVocabulary)


def get_vocabulary(path: "str | seqio.Vocabulary | None" = None) -> seqio.Vocabulary:
    """The vocabulary at `path` (or `path` itself when it is a seqio.Vocabulary), else at $SCIRIFF_JAX_VOCAB, else
    the one trained from the built-in sample.

    `path` may be a SentencePiece .model file, a Hugging Face tokenizer.json, or a directory holding either
    (an HF model directory: tokenizer.json is preferred, as transformers does)."""
    if isinstance(path, seqio.Vocabulary):
        return path
    path = path or os.environ.get(VOCAB_ENV)
    if not path:
        return SampleVocabulary()
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"a vocabulary is a path (.model, tokenizer.json or a tokenizer directory) or a "
                        f"seqio.Vocabulary, not {type(path).__name__}")
    path = os.fspath(path)
    where = f"${VOCAB_ENV}" if path == os.environ.get(VOCAB_ENV) else "the vocabulary path"
    if "://" not in path and not os.path.exists(path):
        raise FileNotFoundError(f"vocabulary not found: {path!r} (from {where}). Expected a SentencePiece .model "
                                "file, a Hugging Face tokenizer.json or a model directory holding one.")
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "tokenizer.json")):
            path = os.path.join(path, "tokenizer.json")
        elif os.path.isfile(os.path.join(path, "tokenizer.model")):
            path = os.path.join(path, "tokenizer.model")
        else:
            raise FileNotFoundError(f"{path} (from {where}) has no tokenizer: expected tokenizer.json or "
                                    "tokenizer.model in it. Copy the model's tokenizer files there, or name the file.")
    if path.endswith(".json"):
        return HFTokenizerVocabulary(path)
    vocab = SentencePieceFileVocabulary(path)
    vocab.load_model()  # fail here, naming the path, rather than deep inside a tf.data pipeline
    return vocab


def describe(vocab) -> str:
    """A vocabulary as a user would name it: its file, or its type."""
    return str(getattr(vocab, "tokenizer_file", None) or getattr(vocab, "sentencepiece_model_file", None)
               or type(vocab).__name__)


def configured_vocabulary(path=None) -> seqio.Vocabulary | None:
    """The vocabulary a user configured (`path`, else $SCIRIFF_JAX_VOCAB), or None when there is none."""
    if path is None and not os.environ.get(VOCAB_ENV):
        return None
    return get_vocabulary(path)
