"""A SentencePiece `tokenizer.model` as a Hugging Face `tokenizer.json` that encodes every text to the same ids.

Why: a directory with only `tokenizer.model` is converted by transformers itself (its legacy Llama conversion),
which makes user-defined pieces such as `<|user|>` added tokens: a prompt starting with `<|user|>` then loses
SentencePiece's `▁` before it and the text after each marker gains one (measured in BENCHMARKS §10: every demo
prompt's ids differed). An export that also writes this file is read by transformers, lm-eval and vLLM as we read it.

How SentencePiece encodes, and how each step is written here with `tokenizers` parts:
- normalize (the model's precompiled rules unless "identity"), collapse and strip spaces when
  `remove_extra_whitespaces`, put `▁` before the text when `add_dummy_prefix`, spaces become `▁`: a normalizer;
- user-defined pieces are whole symbols wherever they occur: a pre-tokenizer isolates them (not added tokens,
  which transformers matches before the `▁` prefix is added);
- BPE merges adjacent symbols, the pair whose merged piece scores highest first (every split of a piece into two
  pieces is a merge ranked by that score; a pre-token that is itself a piece is emitted whole, as a user-defined
  piece must be); Unigram finds the best-scoring segmentation; characters outside the vocabulary become their
  UTF-8 bytes' `<0xNN>` pieces with byte fallback;
- control pieces (`<s>`, `</s>`, `<pad>`) are special added tokens, as transformers has them (it adds them anyway
  from tokenizer_config.json): the one difference left is a text that spells one out, which SentencePiece encodes
  as characters and transformers as the control id (the probes leave it out).

`convert` checks its result on a probe text (every piece in context, chat markers, digits, spaces, newlines, non-Latin
text) and raises `ConversionError` naming the first text that encodes differently, so a model it cannot mirror is
never exported with a tokenizer.json that disagrees with its tokenizer.model.
"""
from __future__ import annotations

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as spm_pb
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

_NORMAL, _UNKNOWN, _CONTROL, _USER, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_UNIGRAM, _BPE = 1, 2
SPACE = "\u2581"
_PROBES = ("<|user|>\nHello, world!\n<|assistant|>\n[\"a\", \"b\"]", "  two  spaces\t\ttab\n\n\nnewlines  ",
           "Digits 1234567890 and 3.14e-10, 50% (n=12).", "unicode: αβγ δ → ∑ 中文 日本語 😀 café naïve",
           "{\"verdict\": \"SUPPORT\", \"evidence\": [\"x\"]}", "", " ", "\n", "a<|user|>b <|assistant|> c",
           "<|assistant|>", "trailing space ")


class ConversionError(ValueError):
    """A SentencePiece model this module cannot mirror exactly; the message says what and where."""


def _load(model_bytes: bytes):
    proto = spm_pb.ModelProto()
    proto.ParseFromString(model_bytes)
    return proto


def _normalizer(proto):
    spec, steps = proto.normalizer_spec, []
    if spec.name not in ("identity", "") and spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip(left=True, right=True)]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend(SPACE))
    if spec.escape_whitespaces or not spec.HasField("escape_whitespaces"):
        steps.append(normalizers.Replace(" ", SPACE))
    return normalizers.Sequence(steps)


def _bpe(proto, unk: str | None):
    pieces = proto.pieces
    vocab = {p.piece: i for i, p in enumerate(pieces)}
    mergeable = {p.piece: (p.score, i) for i, p in enumerate(pieces) if p.type in (_NORMAL, _USER)}
    merges = []
    for piece, (score, i) in mergeable.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in mergeable and right in mergeable:
                merges.append(((-score, i, cut), (left, right)))
    merges.sort()
    return models.BPE(vocab=vocab, merges=[m for _, m in merges], unk_token=unk,
                      byte_fallback=proto.trainer_spec.byte_fallback, ignore_merges=True, fuse_unk=True)


def _unigram(proto):
    vocab = [(p.piece, 0.0 if p.type == _USER else p.score) for p in proto.pieces]
    unk = next((i for i, p in enumerate(proto.pieces) if p.type == _UNKNOWN), None)
    return models.Unigram(vocab, unk_id=unk, byte_fallback=proto.trainer_spec.byte_fallback)


def _build(proto) -> Tokenizer:
    kind = proto.trainer_spec.model_type
    if kind not in (_UNIGRAM, _BPE):
        raise ConversionError(f"SentencePiece model_type {kind} (word/char) has no tokenizer.json counterpart here; "
                              "only unigram (1) and bpe (2) models convert")
    unk = next((p.piece for p in proto.pieces if p.type == _UNKNOWN), None)
    tok = Tokenizer(_bpe(proto, unk) if kind == _BPE else _unigram(proto))
    tok.normalizer = _normalizer(proto)
    user = [p.piece for p in proto.pieces if p.type == _USER]
    if user:
        alternatives = "|".join(_regex_escape(u) for u in sorted(user, key=len, reverse=True))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(alternatives), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
                                    + ([decoders.Strip(" ", 1, 0)] if proto.normalizer_spec.add_dummy_prefix else []))
    tok.add_special_tokens([AddedToken(p.piece, special=True, normalized=False)
                            for p in proto.pieces if p.type == _CONTROL])
    return tok


def _regex_escape(text: str) -> str:
    return "".join("\\" + c if c in r".^$*+?{}[]\|()" else c for c in text)


def probe_texts(proto) -> list[str]:
    """The texts `convert` checks: fixed probes, then every mergeable piece alone and between words."""
    words = [p.piece.replace(SPACE, " ") for p in proto.pieces if p.type in (_NORMAL, _USER)]
    return list(_PROBES) + words + [" ".join(words[i:i + 40]) for i in range(0, len(words), 40)]


def mismatch(model_bytes: bytes, tok: Tokenizer, texts) -> str | None:
    """The first text SentencePiece and `tok` encode differently, with both id lists; None when all agree."""
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    for text in texts:
        want, got = sp.encode(text), tok.encode(text, add_special_tokens=False).ids
        if want != got:
            return f"{text[:80]!r}: sentencepiece {want[:12]}, tokenizer.json {got[:12]}"
    return None


def convert(model_bytes: bytes, where: str = "tokenizer.model") -> Tokenizer:
    """The `tokenizers.Tokenizer` equal to this SentencePiece model on every probe text (raises otherwise)."""
    proto = _load(model_bytes)
    tok = _build(proto)
    bad = mismatch(model_bytes, tok, probe_texts(proto))
    if bad is not None:
        raise ConversionError(f"{where}: its tokenizer.json conversion encodes {bad}; the export keeps "
                              "tokenizer.model alone (transformers converts it its own way)")
    return tok


def tokenizer_config(model_bytes: bytes, max_length: int) -> dict:
    """tokenizer_config.json for the converted tokenizer: the plain fast class (no BOS added, since a SentencePiece
    model's BOS is the chat template's business here), the special pieces by name, no clean-up of spaces on decode
    (it would change answers' text)."""
    proto = _load(model_bytes)
    spec = proto.trainer_spec
    named = {"bos_token": spec.bos_id, "eos_token": spec.eos_id, "pad_token": spec.pad_id, "unk_token": spec.unk_id}
    config = {k: (proto.pieces[i].piece if 0 <= i < len(proto.pieces) else None) for k, i in named.items()}
    return {"tokenizer_class": "PreTrainedTokenizerFast", **config, "add_bos_token": False, "add_eos_token": False,
            "clean_up_tokenization_spaces": False, "model_max_length": int(max_length)}
