"""Real Hugging Face tokenizer / model directories built offline for tests (tokenizers + transformers).

`byte_bpe_tokenizer`: a Llama-3 / Qwen style byte-level BPE tokenizer.json with ChatML special tokens;
`sentencepiece_tokenizer`: a Llama-2 style one (Metaspace `▁`, byte fallback, <s> </s> <unk>). Both are trained
here with the `tokenizers` trainers on a few SciRIFF-like sentences, then saved with their config files.
"""
from __future__ import annotations

import json
import pathlib

CORPUS = ["List the genes and proteins mentioned in the abstract.", "BRCA1 TP53 EGFR are genes.",
          '{"verdict": "SUPPORT", "evidence": [1, 2]}', "And what else? Nothing else.", "hello world",
          "Return a JSON array of entities.", "The claim is supported by the evidence."] * 10
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
          "{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
          "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")


def _write_json(path: pathlib.Path, value) -> None:
    path.write_text(json.dumps(value, indent=1))


def byte_bpe_tokenizer(directory, *, bos: bool = True, template: str | None = CHATML, eos: str = "<|im_end|>",
                       add_bos_token=None, vocab_size: int = 400) -> pathlib.Path:
    """A byte-level BPE tokenizer.json (+ tokenizer_config.json with `template`) in `directory`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos:
        bos_id = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                                           special_tokens=[("<|begin_of_text|>", bos_id)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>" if bos else None,
              "eos_token": eos, "pad_token": "<|end_of_text|>", "model_max_length": 4096}
    if add_bos_token is not None:
        config["add_bos_token"] = add_bos_token
    if template is not None:
        config["chat_template"] = template
    _write_json(directory / "tokenizer_config.json", config)
    return directory


def sentencepiece_tokenizer(directory, *, template: str | None = None, vocab_size: int = 300,
                            corpus: list[str] | None = None) -> pathlib.Path:
    """A Llama-2 style tokenizer.json: BPE with byte fallback over `▁`-joined words, BOS added first; trained on
    `corpus` (default: CORPUS)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    byte_pieces = [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(corpus or CORPUS, trainers.BpeTrainer(vocab_size=vocab_size + 256,
                                                                  special_tokens=["<unk>", "<s>", "</s>"] + byte_pieces))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tok.save(str(directory / "tokenizer.json"))
    # The byte pieces were trained in as special tokens so they get ids; in Llama-2's tokenizer.json they are plain
    # vocabulary entries, not added tokens (else decoding would skip them).
    data = json.loads((directory / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in byte_pieces]
    _write_json(directory / "tokenizer.json", data)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
              "unk_token": "<unk>", "model_max_length": 4096}
    if template is not None:
        config["chat_template"] = template
    _write_json(directory / "tokenizer_config.json", config)
    return directory


def tiny_llama_dir(directory) -> pathlib.Path:
    """A random 2-layer LlamaForCausalLM (vocab 400, 128 positions, tied embeddings, seed 0) saved by transformers,
    with the byte-level BPE tokenizer and its ChatML template: a whole HF model directory."""
    import torch
    import transformers

    directory = pathlib.Path(directory)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                      tie_word_embeddings=True)
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    byte_bpe_tokenizer(directory)
    return directory
