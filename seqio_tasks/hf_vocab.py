"""A seqio.Vocabulary over a Hugging Face `tokenizer.json`, through the `tokenizers` library.

Ids equal `transformers.AutoTokenizer`'s on the same text: special tokens written in the text (`<|im_end|>`, `</s>`)
become their ids, and BOS is put first where the Hugging Face tokenizer adds it (tokenizer.json's post-processor
decides, as in transformers 5). BOS, EOS, PAD and UNK come from tokenizer_config.json / special_tokens_map.json; the end-of-turn tokens also from generation_config.json.
"""
from __future__ import annotations

import hashlib
import json
import pathlib

import numpy as np
import seqio
import tensorflow as tf
from tokenizers import Tokenizer

from sciriff_jax.chat.jinja import read_template

# The files a Hugging Face tokenizer is made of (copied beside checkpoints and exported models).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                   "chat_template.jinja", "chat_template.json")


def _read_json(path: pathlib.Path) -> dict:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err}); re-download or re-save it") from None
    return value if isinstance(value, dict) else {}


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


class HFTokenizerVocabulary(seqio.Vocabulary):
    """seqio.Vocabulary over `tokenizer.json` (a file, or a directory holding it and its config files)."""

    def __init__(self, path):
        path = pathlib.Path(path)
        self.directory = path if path.is_dir() else path.parent
        self.tokenizer_file = path / "tokenizer.json" if path.is_dir() else path
        if not self.tokenizer_file.is_file():
            raise FileNotFoundError(f"{self.tokenizer_file}: no tokenizer.json there")
        try:
            self._tokenizer = Tokenizer.from_file(str(self.tokenizer_file))
        except Exception as err:  # tokenizers raises a bare Exception for a broken file
            raise ValueError(f"could not load Hugging Face tokenizer {self.tokenizer_file}: {err}. Expected the "
                             "tokenizer.json of a Hugging Face model; re-download or re-save it.") from None
        config = _read_json(self.directory / "tokenizer_config.json")
        special = _read_json(self.directory / "special_tokens_map.json")
        self.generation_config = _read_json(self.directory / "generation_config.json")
        self.tokenizer_config = config

        def token(name):
            text = _token_text(config.get(name)) or _token_text(special.get(name))
            return None if text is None else self._tokenizer.token_to_id(text)

        self._bos, self._eos, self._pad, self._unk = (token(n) for n in ("bos_token", "eos_token", "pad_token",
                                                                        "unk_token"))
        if self._eos is None:
            ids = self.generation_config.get("eos_token_id")
            ids = ids if isinstance(ids, list) else [ids]
            self._eos = next((i for i in ids if isinstance(i, int)), None)
        if self._eos is None:
            raise ValueError(f"{self.directory}: the tokenizer names no EOS token (tokenizer_config.json "
                             "'eos_token', special_tokens_map.json or generation_config.json 'eos_token_id'); "
                             "add one so answers can end.")
        # As transformers 5: tokenizer.json's post-processor decides whether BOS goes first (tokenizer_config.json's
        # add_bos_token does not override it there).
        plain = self._tokenizer.encode("a", add_special_tokens=False).ids
        full = self._tokenizer.encode("a", add_special_tokens=True).ids
        self.adds_bos = self._bos is not None and full[:1] == [self._bos] and plain[:1] != [self._bos]
        super().__init__(extra_ids=0)

    # --- identity ------------------------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """sha256 of tokenizer.json: equal for the same tokens (as a checkpoint records it)."""
        return hashlib.sha256(self.tokenizer_file.read_bytes()).hexdigest()

    def __eq__(self, other):
        return isinstance(other, HFTokenizerVocabulary) and other.fingerprint == self.fingerprint

    def __hash__(self):
        return hash(self.fingerprint)

    def __repr__(self):
        return f"HFTokenizerVocabulary({str(self.tokenizer_file)!r})"

    # --- special tokens ---------------------------------------------------------------------------------

    @property
    def bos_id(self):
        return self._bos

    @property
    def eos_id(self):
        return self._eos

    @property
    def pad_id(self):
        return self._pad if self._pad is not None else 0

    @property
    def unk_id(self):
        return self._unk

    def end_of_turn_ids(self) -> list[int]:
        """Ids that end a turn: EOS and generation_config.json's eos_token_id(s)."""
        ids = self.generation_config.get("eos_token_id")
        ids = ids if isinstance(ids, list) else [ids]
        return list(dict.fromkeys([self._eos] + [i for i in ids if isinstance(i, int)]))

    def token_text(self, token_id: int | None) -> str:
        """The text of a token id ("" for None), e.g. EOS's "</s>" for rendering templates."""
        return "" if token_id is None else self._tokenizer.id_to_token(int(token_id))

    def special_texts(self) -> list[str]:
        """The text of every special added token (what `encode` turns into a single id wherever it appears)."""
        return [t.content for t in self._tokenizer.get_added_tokens_decoder().values() if t.special]

    @property
    def chat_template(self) -> str | None:
        """The model's own chat template (chat_template.jinja or tokenizer_config.json's), or None."""
        return read_template(self.directory)

    # --- encode / decode --------------------------------------------------------------------------------

    @property
    def _base_vocab_size(self):
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def _encode(self, s):
        return self._tokenizer.encode(s, add_special_tokens=False).ids

    def _decode(self, ids):
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def decode(self, ids):
        """Text up to the first EOS (excluded), special tokens left out (as generation output is read)."""
        ids = [int(i) for i in (ids.numpy().tolist() if hasattr(ids, "numpy") else ids)]
        if self._eos in ids:
            ids = ids[: ids.index(self._eos)]
        return self._decode(ids)

    def _encode_tf(self, s):
        # tokenizers runs in Python: one tf.numpy_function per call, flat ids + row lengths rebuilt as ragged.
        def run(strings):
            rows = [self._encode(x.decode("utf-8")) for x in np.atleast_1d(strings)]
            flat = np.asarray([i for r in rows for i in r], np.int32)
            return flat, np.asarray([len(r) for r in rows], np.int64)

        flat, lengths = tf.numpy_function(run, [s], (tf.int32, tf.int64), stateful=False)
        flat.set_shape([None])
        if s.shape.rank == 0:
            return flat
        ragged = tf.RaggedTensor.from_row_lengths(flat, tf.reshape(lengths, [-1]))
        return ragged if s.shape.rank == 1 else tf.RaggedTensor.from_uniform_row_length(ragged, tf.shape(s)[-1])

    def _decode_tf(self, ids):
        def run(rows):
            rows = np.atleast_2d(rows)
            return np.asarray([self._decode([i for i in r if i != self.pad_id]).encode("utf-8") for r in rows],
                              dtype=object)

        out = tf.numpy_function(run, [ids], tf.string, stateful=False)
        return tf.reshape(out, []) if ids.shape.rank == 1 else tf.reshape(out, tf.shape(ids)[:-1])
