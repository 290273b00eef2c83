"""Schema-constrained decoding's cost: new tokens/s with and without constraints in one run, and the grammar
libraries' per-token mask time on the same tokenizer.

The tokenizer is real: a byte-level BPE tokenizer.json (`--vocab` pieces, Llama-3 / SmolLM style) trained here with
`tokenizers` on the shared SciRIFF instances' text (../shared/sciriff/eval_sample), or `--tokenizer` a tokenizer.json.
Speed case: the SmolLM-135M shape (random init, fp32, vocab = the tokenizer's rounded up to 64), `--prompts` real
shared prompts (bioasq_list_qa, scifact_entailment, biored_ner, evidence_inference in turn, each cut to its last
`--prompt_len` tokens), `--new` new tokens, one slot per prompt; constrained rows use `scoring.schemas.schema_for`
of their task. A random model writes endless strings inside the JSON, so both runs generate (nearly) the same number
of tokens; reported per run: new tokens/s end to end (prefill included) and the host time spent in the matchers.
The two systems alternate (unconstrained, constrained, ...) after one untimed call each (compilation).

  python -m benchmarks.constrained --out benchmarks/results/constrained_cpu.json
  python -m benchmarks.constrained --libraries --out benchmarks/results/constrained_libraries.json
  python -m benchmarks.constrained --tiny --out /tmp/constrained.json

`--libraries` times llguidance, xgrammar and outlines-core where importable (xgrammar and outlines-core are not
dependencies: put them on PYTHONPATH, e.g. `pip install --target /tmp/xg xgrammar apache-tvm-ffi --no-deps`).
"""
from __future__ import annotations

import json
import os
import pathlib
import statistics
import tempfile
import time

from benchmarks import common
from benchmarks.decode import SMOLLM_135M

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "sciriff" / "eval_sample"
TASKS = ("bioasq_list_qa", "scifact_entailment", "biored_ner", "evidence_inference")
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]


def _rows(task: str) -> list[dict]:
    return [json.loads(line) for line in (SHARED / f"{task}.jsonl").open()]


def train_tokenizer(vocab: int, directory: pathlib.Path) -> pathlib.Path:
    """A byte-level BPE tokenizer.json trained on the shared instances' inputs and outputs (EOS <|im_end|>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = [r[k] for f in sorted(SHARED.glob("*.jsonl")) for r in _rows(f.stem) for k in ("input", "output")]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIALS,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path = directory / "tokenizer.json"
    tok.save(str(path))
    return path


def work(tokenizer, n: int, prompt_len: int) -> tuple[list[list[int]], list[str], list[str]]:
    """(prompt ids, tasks, reference answers) of `n` shared instances, the TASKS in turn."""
    prompts, tasks, answers = [], [], []
    rows = {t: _rows(t) for t in TASKS}
    for i in range(n):
        task = TASKS[i % len(TASKS)]
        row = rows[task][i // len(TASKS)]
        prompts.append(tokenizer.encode(row["input"]).ids[-prompt_len:])
        tasks.append(task)
        answers.append(row["output"])
    return prompts, tasks, answers


class _TimedMatchers:
    """Adds up the host seconds of every Matchers.advance (the in-loop callback) and start / consume."""

    def __init__(self):
        self.seconds = 0.0

    def __enter__(self):
        from sciriff_jax.decoding import constrain

        self.saved = {name: getattr(constrain.Matchers, name) for name in ("advance", "start", "consume")}
        for name, fn in self.saved.items():
            setattr(constrain.Matchers, name, self._timed(fn))
        return self

    def _timed(self, fn):
        def wrapper(*args, **kwargs):
            began = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - began
        return wrapper

    def __exit__(self, *exc):
        from sciriff_jax.decoding import constrain

        for name, fn in self.saved.items():
            setattr(constrain.Matchers, name, fn)


def speed_case(args, tokenizer_path: pathlib.Path) -> dict:
    import jax
    from tokenizers import Tokenizer

    from sciriff_jax.decoding import constrain
    from sciriff_jax.decoding.generate import DecodeHooks, GenerationConfig, generate
    from sciriff_jax.model import init_params
    from sciriff_jax.model.config import LlamaConfig
    from sciriff_jax.scoring.schemas import schema_for

    tok = Tokenizer.from_file(str(tokenizer_path))
    eos = tok.token_to_id("<|im_end|>")
    vocab = -(-tok.get_vocab_size(with_added_tokens=True) // 64) * 64
    shape = dict(common.TINY if args.tiny else SMOLLM_135M, vocab_size=vocab)
    config = LlamaConfig(**shape, dtype="float32", max_position=4096)
    params = init_params(config, jax.random.PRNGKey(0))
    prompts, tasks, _ = work(tok, args.prompts, args.prompt_len)
    constraint = constrain.Constraint.create(tokenizer_path, [schema_for(t) for t in tasks], vocab_size=vocab,
                                             eos_id=eos)
    # The third isolates the mechanism (masks in the program, the host callback each step) from the matchers' work.
    systems = {"unconstrained": None, "constrained": constraint,
               "constrained program, no schema": constrain.Constraint(constraint.tokenizer, (None,) * len(prompts))}

    def run(name):
        generation = GenerationConfig(args.new, eos, constraint=systems[name])
        seen = {}
        hooks = DecodeHooks(log=None, on_step=lambda w: seen.update(work=w))
        with _TimedMatchers() as timer:
            began = time.perf_counter()
            out = generate(config, params, prompts, generation, batch_size=len(prompts), hooks=hooks)
            seconds = time.perf_counter() - began
        w = seen["work"]
        steps = w.decode_computed / len(prompts)  # decode steps (every slot computes each step)
        return {"seconds": seconds, "new_tokens": sum(map(len, out)), "matcher_s": timer.seconds,
                "prefill_s": w.prefill_s, "decode_s": w.decode_s, "decode_steps": steps,
                "decode_ms_per_step": 1e3 * w.decode_s / steps if steps else None}, out

    for name in systems:  # compile
        run(name)
    calls: dict[str, list] = {name: [] for name in systems}
    outputs = {}
    for _ in range(args.iters):
        for name in systems:
            result, outputs[name] = run(name)
            calls[name].append(result)
            print(f"  {name}: {result['seconds']:.2f}s, {result['new_tokens']} new tokens, matchers "
                  f"{result['matcher_s']:.3f}s (load {os.getloadavg()[0]:.1f})", flush=True)
    result = summarise(calls, {name: [tok.decode(o) for o in out] for name, out in outputs.items()}, tasks)
    return {**result, "shape": shape, "prompts": len(prompts), "prompt_tokens": sum(map(len, prompts)),
            "tasks": tasks, "new": args.new}


def summarise(calls: dict, texts: dict, tasks: list[str]) -> dict:
    """Per system: median time, new tokens/s, decode ms per step (median and min), matcher time, answers valid
    under their schema; and the constrained system's cost against the unconstrained one."""
    from sciriff_jax.scoring.schemas import schema_for

    rows = []
    for name, runs in calls.items():
        rows.append({"system": name, "median_s": statistics.median(r["seconds"] for r in runs),
                     "new_tokens": runs[0]["new_tokens"],
                     "new_tokens_per_s": statistics.median(r["new_tokens"] / r["seconds"] for r in runs),
                     "decode_ms_per_step": statistics.median(r["decode_ms_per_step"] for r in runs),
                     "decode_ms_per_step_min": min(r["decode_ms_per_step"] for r in runs),
                     "matcher_s": statistics.median(r["matcher_s"] for r in runs),
                     "answers_valid": sum(_valid(t, schema_for(task)) for t, task in zip(texts[name], tasks)),
                     "runs": runs})
    return {"rows": rows, "slowdown": 1.0 - rows[1]["new_tokens_per_s"] / rows[0]["new_tokens_per_s"],
            "decode_step_cost": rows[1]["decode_ms_per_step"] / rows[0]["decode_ms_per_step"] - 1.0,
            "constrained_answer_starts": [t.lstrip()[:1] for t in texts["constrained"]]}


def _valid(text: str, schema: dict) -> bool:
    """Whether `text` parses as JSON valid under `schema` (jsonschema)."""
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def mask_times(tokenizer_path: pathlib.Path, tasks=TASKS) -> list[dict]:
    """Per-token mask time of each installed library walking the reference answers (their first 64 tokens)."""
    from tokenizers import Tokenizer

    from sciriff_jax.scoring.schemas import schema_for

    tok = Tokenizer.from_file(str(tokenizer_path))
    walks = [(t, schema_for(t), tok.encode(_rows(t)[0]["output"]).ids[:64]) for t in tasks]
    rows = []
    for library, walker in (("llguidance", _llguidance_walk), ("xgrammar", _xgrammar_walk),
                            ("outlines-core", _outlines_walk)):
        try:
            make = walker(tok, tokenizer_path)
        except ImportError as e:
            rows.append({"library": library, "status": f"not installed ({e})"})
            continue
        for task, schema, ids in walks:
            try:
                compile_s, times = make(schema, ids)
            except Exception as e:  # noqa: BLE001 - a library that cannot take a schema is a finding
                rows.append({"library": library, "task": task, "status": f"failed: {str(e)[:160]}"})
                continue
            rows.append({"library": library, "task": task, "status": "ok", "compile_ms": compile_s * 1e3,
                         "mask_us_median": statistics.median(times) * 1e6, "mask_us_p90":
                         sorted(times)[int(0.9 * len(times))] * 1e6, "tokens": len(times)})
            print(f"  {rows[-1]}", flush=True)
    return rows


def _llguidance_walk(tok, tokenizer_path):
    import llguidance
    import llguidance.numpy as lnp

    from sciriff_jax.decoding import constrain

    eos = tok.token_to_id("<|im_end|>")
    lt = llguidance.LLTokenizer(tokenizer_path.read_text(), eos_token=eos)
    constraint = constrain.Constraint(lt, ())

    def make(schema, ids):
        began = time.perf_counter()
        matcher = llguidance.LLMatcher(lt, constraint.grammar(schema))
        compile_s = time.perf_counter() - began
        mask, times = lnp.allocate_token_bitmask(1, lt.vocab_size), []
        for t in ids:
            began = time.perf_counter()
            lnp.fill_next_token_bitmask(matcher, mask, 0)
            times.append(time.perf_counter() - began)
            if not matcher.consume_token(t):
                raise ValueError(matcher.get_error())
        return compile_s, times
    return make


def _xgrammar_walk(tok, tokenizer_path):
    import xgrammar as xg

    vocab = tok.get_vocab_size(with_added_tokens=True)
    info = xg.TokenizerInfo([tok.id_to_token(i) for i in range(vocab)], vocab_type=xg.VocabType.BYTE_LEVEL,
                            vocab_size=vocab, stop_token_ids=[tok.token_to_id("<|im_end|>")])
    compiler = xg.GrammarCompiler(info)

    def make(schema, ids):
        began = time.perf_counter()
        matcher = xg.GrammarMatcher(compiler.compile_json_schema(json.dumps(schema), any_whitespace=False,
                                                                 separators=(", ", ": ")))
        compile_s = time.perf_counter() - began
        mask, times = xg.allocate_token_bitmask(1, vocab), []
        for t in ids:
            began = time.perf_counter()
            matcher.fill_next_token_bitmask(mask, 0)
            times.append(time.perf_counter() - began)
            if not matcher.accept_token(t):
                raise ValueError(f"token {t} refused")
        return compile_s, times
    return make


def _byte_level_strings(tok) -> dict:
    """{token text (bytes as latin-1): [ids]} of a byte-level BPE vocabulary (GPT-2's byte-to-unicode map undone)."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars = {chr(b): b for b in printable}
    chars.update({chr(256 + i): b for i, b in enumerate(b for b in range(256) if b not in printable)})
    specials = {t.content for t in tok.get_added_tokens_decoder().values()}
    out: dict = {}
    for i in range(tok.get_vocab_size(with_added_tokens=True)):
        piece = tok.id_to_token(i)
        if piece not in specials:
            out.setdefault(bytes(chars[c] for c in piece).decode("latin-1"), []).append(i)
    return out


def _outlines_walk(tok, tokenizer_path):
    import numpy as np
    import outlines_core as oc

    eos = tok.token_to_id("<|im_end|>")
    vocabulary = oc.Vocabulary(eos, _byte_level_strings(tok))
    width = -(-tok.get_vocab_size(with_added_tokens=True) // 32)

    def make(schema, ids):
        began = time.perf_counter()
        guide = oc.Guide(oc.Index(oc.json_schema.build_regex_from_schema(json.dumps(schema), whitespace_pattern=" ?"),
                                  vocabulary))
        compile_s = time.perf_counter() - began
        mask, times = np.zeros(width, np.int32), []
        for t in ids:
            began = time.perf_counter()
            guide.write_mask_into(mask.ctypes.data, mask.size, 4)
            times.append(time.perf_counter() - began)
            guide.advance(t)
        return compile_s, times
    return make


def main(argv=None) -> dict:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--libraries", action="store_true", help="time the grammar libraries' masks instead")
    p.add_argument("--tokenizer", default=None, help="a tokenizer.json (default: train one on the shared text)")
    p.add_argument("--vocab", type=int, default=None, help="pieces of the trained tokenizer (default 32000; tiny 600)")
    p.add_argument("--prompts", type=int, default=None, help="prompts = slots (default 8; tiny 4)")
    p.add_argument("--prompt_len", type=int, default=None, help="prompt tokens kept (default 512; tiny 64)")
    p.add_argument("--new", type=int, default=None, help="new tokens per prompt (default 64; tiny 16)")
    args = p.parse_args(argv)
    tiny = args.tiny
    args.vocab = args.vocab or (600 if tiny else 32000)
    args.prompts = args.prompts or (4 if tiny else 8)
    args.prompt_len = args.prompt_len or (64 if tiny else 512)
    args.new = args.new or (16 if tiny else 64)
    args.iters = args.iters or (1 if tiny else 2)
    result = {"environment": common.environment(), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(args.tokenizer) if args.tokenizer else train_tokenizer(args.vocab, pathlib.Path(tmp))
        result["tokenizer"] = {"path": str(args.tokenizer or f"trained: byte-level BPE, {args.vocab} pieces"),
                               "vocab": json.loads(path.read_text())["model"]["vocab"].__len__()}
        if args.libraries:
            result["libraries"] = mask_times(path)
            print(common.format_table([r for r in result["libraries"] if r.get("status") == "ok"],
                                      ["library", "task", "compile_ms", "mask_us_median", "mask_us_p90", "tokens"]))
        else:
            result.update(speed_case(args, path))
            print(common.format_table(result["rows"], ["system", "median_s", "new_tokens", "new_tokens_per_s",
                                                       "decode_ms_per_step", "decode_ms_per_step_min",
                                                       "matcher_s", "answers_valid"]))
            print(f"constrained: {100 * result['slowdown']:.1f}% fewer new tokens/s end to end, each decode step "
                  f"{100 * result['decode_step_cost']:+.1f}% (target: <= 10% slower)")
    result["load_after"] = os.getloadavg()
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
