"""Schema-constrained decoding: each prompt's answer can only be JSON that validates against its task's schema.

A `Constraint` holds the tokenizer (as the grammar library sees it) and one JSON schema per prompt (None: free
text, never masked). During a run, `Matchers` keeps one matcher per constrained slot on the host: it gives the
allowed-token bitmask [slots, ceil(V / 32)] uint32 of every slot's next token (all ones for a free-text or empty
slot) and advances a slot's matcher by the token drawn. EOS is allowed only where the JSON is complete (the
matcher accepts), and once the JSON is complete only EOS is. The batcher applies the mask inside its compiled
programs (`apply_mask` before `sample`) and, inside the decode loop, asks the host for the next mask through
`jax.experimental.io_callback` (`next_mask`): one compiled program serves every row and every schema. The loop
waits for that callback each step (the matchers took 0.1 s of a 24 s run at the 135M shape, and a decode step cost
+2% in the median: BENCHMARKS.md), so the host's work is not overlapped with the device's.

Library: llguidance (Microsoft's Low-level Guidance, Rust), chosen over xgrammar and outlines-core
(BENCHMARKS.md, "Schema-constrained decoding"; `python -m benchmarks.constrained --libraries`):
- fit with our vocabularies: it reads a Hugging Face tokenizer.json itself (byte-level BPE and Llama-2 style
  byte fallback alike) and takes a SentencePiece model as its pieces' bytes (`TokenizerWrapper`); for xgrammar and
  outlines-core we would decode every vocabulary to token strings ourselves (xgrammar's own loader goes through
  transformers);
- JSON schema: compiled to a grammar with the references' style (", " / ": " separators, \\uXXXX escapes), wrapped
  in a Lark rule for the leading whitespace; outlines-core turns a schema into one regex whose strings take no
  \\u escape, so it refused an evidence_inference reference (178 of 250 hold one);
- speed on a 32,000-piece byte-level BPE (walking four tasks' references, this loaded 2-core CPU): median per-token
  mask 2.7-9.9 us (xgrammar 13.5-26 us, outlines-core 39-44 us), grammar compile 2-6 ms;
- install weight: one 7.7 MB wheel, no dependencies; xgrammar requires torch, triton (a 286 MB wheel) and
  apache-tvm-ffi; outlines-core is small (5.3 MB) but gives only the regex index.
Install with `pip install 'sciriff-jax[constrained]'`.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
import weakref
from importlib import metadata

import jax
import jax.numpy as jnp
import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as spm_pb
from jax.experimental import io_callback

LIBRARY = "llguidance"
INSTALL = "pip install 'sciriff-jax[constrained]'"
# The references' JSON (json.dumps defaults): what a trained model writes, so the mask does not fight it.
# No whitespace elsewhere: a random or weak model would otherwise fill its budget with it.
JSON_OPTIONS = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False,
                "json_allow_general_unicode_escapes": True}  # json.dumps writes non-ASCII as \uXXXX


def library(where: str = "CONSTRAINED = True"):
    """The llguidance module, or an ImportError saying what needs it and how to install it."""
    try:
        import llguidance  # optional (the constrained extra): only constrained decoding needs it
    except ImportError:
        raise ImportError(f"{where} needs the grammar library {LIBRARY}, which is not installed: "
                          f"{INSTALL} (or set CONSTRAINED = False).") from None
    return llguidance


def library_version() -> str:
    """'llguidance <version>' (what summary.json records)."""
    return f"{LIBRARY} {metadata.version(LIBRARY)}"


class _SentencePieceTokens:
    """A SentencePiece model as llguidance's TokenizerWrapper wants it: every id's bytes (`▁` a space, `<0xNN>`
    its byte, control and unknown pieces marked special with a leading 0xFF) and an encoder of text as it stands:
    llguidance tokenizes text that continues other text (e.g. the bytes a schema forces), so the encoder must not
    add SentencePiece's dummy prefix `▁` or drop spaces."""

    def __init__(self, model_file, vocab_size: int, eos_id: int):
        proto = spm_pb.ModelProto.FromString(pathlib.Path(model_file).read_bytes())
        proto.normalizer_spec.add_dummy_prefix = False
        proto.normalizer_spec.remove_extra_whitespaces = False
        self.sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        self.eos_token_id, self.bos_token_id = eos_id, None
        self.tokens, self.special_token_ids = [], []
        for i in range(self.sp.get_piece_size()):
            piece = self.sp.id_to_piece(i)
            if self.sp.is_byte(i):
                self.tokens.append(bytes([int(piece[3:5], 16)]))
            elif self.sp.is_control(i) or self.sp.is_unknown(i):
                self.tokens.append(b"\xff" + piece.encode())
                self.special_token_ids.append(i)
            else:
                self.tokens.append(piece.replace("\u2581", " ").encode())
        self.tokens += [b""] * max(0, vocab_size - len(self.tokens))  # padded model rows: never allowed

    def __call__(self, text):
        return self.sp.encode(text.decode("utf-8", "replace") if isinstance(text, bytes) else text)


def _vocabulary_file(vocabulary) -> pathlib.Path:
    """The tokenizer file behind a vocabulary object (seqio_tasks' HF or SentencePiece vocabularies, a ChatFormat's)
    or a path (tokenizer.json, a SentencePiece .model, or a directory holding one)."""
    for attr in ("tokenizer_file", "sentencepiece_model_file"):
        if getattr(vocabulary, attr, None):
            return pathlib.Path(getattr(vocabulary, attr))
    path = pathlib.Path(vocabulary)
    if path.is_dir():
        found = [path / n for n in ("tokenizer.json", "tokenizer.model") if (path / n).is_file()]
        if not found:
            raise FileNotFoundError(f"constrained decoding: {path} holds no tokenizer.json or tokenizer.model")
        path = found[0]
    return path


def tokenizer_for(vocabulary, *, vocab_size: int, eos_id: int):
    """llguidance's tokenizer for a vocabulary (see `_vocabulary_file`), `vocab_size` wide (the model's rows; ids
    past the tokenizer's are never allowed) with `eos_id` the token that ends an answer."""
    llg = library()
    path = _vocabulary_file(vocabulary)
    if path.suffix == ".json":
        return llg.LLTokenizer(path.read_text(encoding="utf-8"), n_vocab=vocab_size, eos_token=int(eos_id))
    wrapper = llg.TokenizerWrapper(_SentencePieceTokens(path, vocab_size, int(eos_id)))
    return llg.LLTokenizer(wrapper, n_vocab=vocab_size, eos_token=int(eos_id))


@dataclasses.dataclass(frozen=True, eq=False)
class Constraint:
    """What a generation is constrained to: the tokenizer (`tokenizer_for`) and one JSON schema per prompt (None:
    free text). `create` compiles every schema before anything is decoded, so a bad one fails first."""

    tokenizer: object
    schemas: tuple
    compiled: dict = dataclasses.field(default_factory=dict, repr=False)  # schema JSON -> grammar

    @classmethod
    def create(cls, vocabulary, schemas, *, vocab_size: int, eos_id: int) -> "Constraint":
        """A Constraint over `vocabulary` (see `tokenizer_for`) with `schemas` (one per prompt, None: free)."""
        constraint = cls(tokenizer_for(vocabulary, vocab_size=vocab_size, eos_id=eos_id), tuple(schemas))
        for schema in constraint.schemas:
            if schema is not None:
                constraint.grammar(schema)
        return constraint

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.vocab_size)

    def grammar(self, schema: dict) -> str:
        """llguidance's grammar for a JSON schema (compiled once); raises ValueError naming the schema when it
        cannot compile."""
        key = json.dumps(schema, sort_keys=True)
        if key not in self.compiled:
            self.compiled[key] = self._compile(schema)
        return self.compiled[key]

    def _compile(self, schema: dict) -> str:
        llg = library()
        # Up to 3 spaces / newlines first: the release prompt ends at '<|assistant|>' and the model writes the newline,
        # and a SentencePiece model (add_dummy_prefix) learned its answers as '▁[' / '▁{'.
        lark = ('start: LEAD? answer\nLEAD: /[ \\n]{1,3}/\nanswer: %json '
                + json.dumps(dict(schema, **{"x-guidance": JSON_OPTIONS})))
        grammar = llg.LLMatcher.grammar_from_lark(lark)
        is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer)
        if is_error:
            raise ValueError(f"constrained decoding: the JSON schema {json.dumps(schema)[:200]} does not compile "
                             f"({messages[0].splitlines()[0][:300]}); fix the schema or decode that task "
                             "unconstrained.")
        return grammar


class Matchers:
    """One run's matchers, one per slot (None: unconstrained), and every slot's next-token bitmask (host side)."""

    def __init__(self, constraint: Constraint, slots: int, vocab_size: int):
        if constraint.vocab_size < vocab_size:
            raise ValueError(f"constrained decoding: the tokenizer covers {constraint.vocab_size} ids but the model "
                             f"has {vocab_size}; build the Constraint with vocab_size={vocab_size}.")
        self.constraint = constraint
        self.width = -(-vocab_size // 32)
        self.masks = np.full((slots, self.width), -1, np.int32)  # llguidance writes int32 words; read as uint32
        self.matchers: list = [None] * slots
        self.errors: dict[int, str] = {}  # prompt index -> the matcher's error (never expected: tokens are masked)
        self.index: list = [None] * slots

    def start(self, slot: int, index: int) -> None:
        """Slot `slot` now holds prompt `index`: a fresh matcher for its schema (none for free text)."""
        schema = self.constraint.schemas[index]
        self.index[slot] = index
        self.matchers[slot] = None
        self.masks[slot] = -1
        if schema is None:
            return
        self.matchers[slot] = library().LLMatcher(self.constraint.tokenizer, self.constraint.grammar(schema))
        self._fill(slot)

    def _fill(self, slot: int) -> None:
        matcher = self.matchers[slot]
        row = self.masks[slot]
        matcher.unsafe_compute_mask_ptr(row.ctypes.data, row.nbytes)
        if matcher.is_error():
            self.errors.setdefault(self.index[slot], matcher.get_error())

    def consume(self, slot: int, token: int) -> None:
        """Advance slot `slot`'s matcher by the token drawn there and compute its next mask."""
        matcher = self.matchers[slot]
        if matcher is None:
            return
        if not matcher.consume_token(int(token)):
            self.errors.setdefault(self.index[slot], matcher.get_error())
        self._fill(slot)

    def advance(self, tokens, ran) -> np.ndarray:
        """Consume `tokens` [slots] in the slots that `ran` [slots]; every slot's next mask [slots, W] uint32."""
        for slot in np.flatnonzero(np.asarray(ran)):
            self.consume(slot, tokens[slot])
        return self.masks.view(np.uint32).copy()

    def stop(self, slot: int) -> None:
        """Slot `slot` finished: drop its matcher (its mask goes back to all ones)."""
        self.matchers[slot], self.index[slot] = None, None
        self.masks[slot] = -1

    def rows(self, slots) -> np.ndarray:
        """The current masks of `slots` (a list of slot numbers) [len, W] uint32."""
        return self.masks[list(slots)].view(np.uint32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Allowed:
    """A constrained program's input: every row's next-token bitmask [B, W] uint32 and the run's handle (int32
    scalar: which `Matchers` the in-loop callback advances)."""

    bits: object
    handle: object


# Live runs' matchers by handle; an entry goes with its run (weak values).
_RUNS: "weakref.WeakValueDictionary[int, Matchers]" = weakref.WeakValueDictionary()
_HANDLES = itertools.count(1)


def register(matchers: Matchers) -> int:
    """A handle for `matchers`, which the compiled decode loop passes back to the host callback."""
    handle = next(_HANDLES)
    _RUNS[handle] = matchers
    return handle


def _host_advance(handle, tokens, ran):
    return _RUNS[int(handle)].advance(np.asarray(tokens), np.asarray(ran))


def next_mask(handle, tokens, ran, width: int):
    """On the device: the host advances the run's matchers by `tokens` [B] where `ran` [B] and returns every
    row's next mask [B, width] uint32 (`jax.experimental.io_callback`)."""
    shape = jax.ShapeDtypeStruct((tokens.shape[0], width), jnp.uint32)
    return io_callback(_host_advance, shape, handle, tokens, ran, ordered=True)


def apply_mask(logits, bits):
    """logits [B, V] with every token whose bit is 0 in `bits` [B, ceil(V / 32)] uint32 set to -inf."""
    shifts = jnp.arange(32, dtype=jnp.uint32)
    allowed = ((bits[:, :, None] >> shifts) & 1).reshape(bits.shape[0], -1)[:, :logits.shape[-1]]
    return jnp.where(allowed.astype(bool), logits, -jnp.inf)
