"""Parity with the release's own eval stack: lm-eval 0.4.4 (543617f) running the release's `tulu` task files
(allenai/SciRIFF e396d00, sciriff/eval/eleuther_templates/tulu/) against `sciriff-jax eval` on the same Hugging Face
directory and instances (protocol release, template tulu, float32, greedy), counting predictions equal as text.

lm-eval needs its own environment (transformers 4.x); make it once:
    python3 -m venv /tmp/lmeval-venv
    /tmp/lmeval-venv/bin/pip install "lm-eval==0.4.4" "transformers>=4.40,<5" "torch==2.13.0" sentencepiece protobuf
Then, from the repository root with the project's venv:
    .venv/bin/python benchmarks/lmeval_parity.py --model random --limit 8 --max_new_tokens 48
    .venv/bin/python benchmarks/lmeval_parity.py --model /path/to/hf_dir --name demo --limit 8
`--model random` builds a small random Llama (seeded) with a real Llama-2 style tokenizer (tokenizer.json: BPE over
`▁`-joined words with byte fallback, <s> </s> <unk>, trained here on the release sample's text) with the lm-eval
venv's transformers, so the directory is a 4.x one. The release folder is ../shared/sciriff/hub_layout (the hub's
`4096/validation-00000-of-00001.parquet`; SCIRIFF_RELEASE_DIR elsewhere): lm-eval reads it through the `parquet` builder (the only change to the
release's task files: dataset_path/dataset_kwargs point at it), sciriff-jax through SCIRIFF_JAX_DATA_DIR.
lm-eval runs its HF backend (the release ran vLLM; both: no BOS, left truncation to max_length - max_gen_toks,
greedy, stop at the few-shot delimiter and EOS), batch size 1, on CPU. The result goes to
benchmarks/results/lmeval_parity_<name>.json: per task, instances, prompts equal (as text and as the token ids each
side feeds its model), predictions equal, predictions equal when transformers is fed sciriff-jax's own prompt ids
(the model side alone), and the first differences.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
RELEASE_DIR = pathlib.Path(os.environ.get("SCIRIFF_RELEASE_DIR", REPO.parent / "shared" / "sciriff" / "hub_layout"))
# The release's tulu/_default_template.yaml, dataset lines pointed at the local release folder.
DEFAULT_TEMPLATE = """\
group:
  - science_adapt
dataset_path: parquet
dataset_kwargs:
  data_files:
    validation: {parquet}
validation_split: validation
doc_to_text: "<|user|>\\n{{{{ input }}}}\\n<|assistant|>"
doc_to_target: output
target_delimiter: "\\n"
fewshot_delimiter: "\\n\\n--------------------\\n\\n"
metric_list:
  - metric: bleu
    aggregation: mean
    higher_is_better: true
    hf_evaluate: true
"""
# The release's per-task files: evidence_inference is 1-shot with its own delimiter, the rest 0-shot.
TASK_EXTRA = {"evidence_inference": 'num_fewshot: 1\nfewshot_delimiter: "\\n\\n\\n"\n'}
UTILS = """\
from functools import partial


def filter_task(ds, task):
    return ds.filter(lambda inst: inst["_instance_id"].split(":")[0] == task)


for _task in {tasks!r}:
    globals()[f"filter_{{_task}}"] = partial(filter_task, task=_task)
"""


def write_tasks(folder: pathlib.Path, tasks: list[str], parquet: pathlib.Path) -> None:
    """The release's tulu task files for `tasks`, reading `parquet`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "_default_template.yaml").write_text(DEFAULT_TEMPLATE.format(parquet=parquet))
    (folder / "utils.py").write_text(UTILS.format(tasks=tasks))
    for task in tasks:
        (folder / f"{task}.yaml").write_text(f"include: _default_template.yaml\ntask: {task}\n"
                                              f"process_docs: !function utils.filter_{task}\n"
                                              + TASK_EXTRA.get(task, ""))


RANDOM_LLAMA = """
import json, sys, torch, transformers
out, seed = sys.argv[1], int(sys.argv[2])
vocab = len(json.load(open(out + "/tokenizer.json"))["model"]["vocab"])
torch.manual_seed(seed)
config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                                  rms_norm_eps=1e-5, rope_theta=10000.0, initializer_range=0.2, bos_token_id=1,
                                  eos_token_id=2, tie_word_embeddings=False, torch_dtype="float32")
model = transformers.LlamaForCausalLM(config)
model.save_pretrained(out, safe_serialization=True)
print(transformers.__version__, sum(p.numel() for p in model.parameters()))
"""


def random_llama(out: pathlib.Path, lmeval_python: str, seed: int) -> pathlib.Path:
    """A small random Llama (transformers 4.x, float32) with a Llama-2 style tokenizer trained on the sample."""
    import pyarrow.parquet as pq  # in-function: only this benchmark needs the release parquet

    sys.path.insert(0, str(REPO))
    from tests import hf_dirs

    text = [row for col in ("input", "output") for row in pq.read_table(PARQUET).column(col).to_pylist()]
    hf_dirs.sentencepiece_tokenizer(out, vocab_size=4000, corpus=text)
    done = subprocess.run([lmeval_python, "-c", RANDOM_LLAMA, str(out), str(seed)], check=True, capture_output=True,
                          text=True)
    print(f"[parity] random Llama at {out}: transformers {done.stdout.strip()}", flush=True)
    return out


PARQUET = RELEASE_DIR / "4096" / "validation-00000-of-00001.parquet"


def run_lmeval(args, model: pathlib.Path, work: pathlib.Path) -> dict:
    """{task: {_instance_id: (prompt, prediction)}} from lm-eval's logged samples."""
    tasks_dir, out = work / "lmeval_tasks", work / "lmeval_out"
    if all(_samples(out, task) for task in args.tasks):  # a rerun into the same --work: lm-eval's side is done
        return {task: _read_samples(_samples(out, task)) for task in args.tasks}
    write_tasks(tasks_dir, args.tasks, PARQUET)
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [args.lmeval_python, "-m", "lm_eval", "--model", "hf", "--model_args",
               f"pretrained={model},dtype=float32", "--device", "cpu", "--batch_size", "1",
               "--include_path", str(tasks_dir), "--tasks", ",".join(args.tasks), "--limit", str(args.limit),
               "--gen_kwargs", f"max_gen_toks={args.max_new_tokens}", "--predict_only", "--log_samples",
               "--output_path", str(out)]
    start = time.time()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"lm-eval failed ({done.returncode}):\n{done.stderr[-4000:]}")
    print(f"[parity] lm-eval: {time.time() - start:.0f} s", flush=True)
    return {task: _read_samples(_samples(out, task)) for task in args.tasks}


def _samples(out: pathlib.Path, task: str) -> str | None:
    files = sorted(glob.glob(str(out / "**" / f"samples_{task}_*.jsonl"), recursive=True))
    return files[-1] if files else None


def _read_samples(path: str) -> dict:
    rows = [json.loads(line) for line in open(path)]
    return {r["doc"]["_instance_id"]: (r["arguments"]["gen_args_0"]["arg_0"], r["resps"][0][0]) for r in rows}


def run_sciriff(args, model: pathlib.Path, work: pathlib.Path) -> dict:
    """{task: {_instance_id: (prompt, prediction)}} from `sciriff-jax eval` (one process per task, as a user runs
    it) and the prompts its protocol writes (eval.task_prompts, the text eval tokenizes)."""
    env = {**os.environ, "SCIRIFF_JAX_DATA_DIR": str(RELEASE_DIR), "JAX_PLATFORMS": "cpu"}
    found = {}
    for task in args.tasks:
        out = work / "sciriff" / task
        command = [sys.executable, "-m", "sciriff_jax.main", "--gin_file=gin_configs/runs/eval.gin",
                   f'--gin.CHECKPOINT_PATH="{model}"', f'--gin.MIXTURE_OR_TASK_NAME="sciriff_4096_{task}"',
                   f"--gin.MAX_EXAMPLES={args.limit}", f"--gin.MAX_NEW_TOKENS={args.max_new_tokens}",
                   '--gin.TEMPLATE="tulu"', '--gin.PROTOCOL="release"', '--gin.DTYPE="float32"',
                   f"--gin.BATCH_SIZE={args.batch_size}", f'--gin.OUTPUT_DIR="{out}"']
        start = time.time()
        done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"sciriff-jax eval failed ({done.returncode}):\n{done.stderr[-4000:]}")
        print(f"[parity] sciriff-jax eval {task}: {time.time() - start:.0f} s", flush=True)
        rows = [json.loads(line) for line in open(out / "predictions" / f"sciriff_4096_{task}.jsonl")]
        prompts = our_prompts(model, task, args.limit, env)
        found[task] = {r["_instance_id"]: (*prompts.get(r["_instance_id"], (None, None)), r["prediction"])
                       for r in rows}
        CUTS[task] = json.loads((out / "summary.json").read_text())["prompts"]
    return found


CUTS: dict = {}  # per task: sciriff-jax's summary.json "prompts" (budget, prompts cut)
SAME: dict = {}  # per task: transformers' answers to sciriff-jax's prompt ids


OUR_PROMPTS = """
import json, sys
from sciriff_jax.eval import evaluate
from sciriff_jax.io import loader
model, name, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
fmt = loader.resolve_chat_format(model, template="tulu")
loaded = evaluate.load_examples([name], "validation")
examples, texts = evaluate.task_prompts(loaded, fmt, evaluate.EvalConfig(name, max_examples=limit))[name]
print(json.dumps({ex["_instance_id"]: [t, fmt.encode(t)] for ex, t in zip(examples, texts)}))
"""
# lm-eval's HF backend tokenizes a context so (tok_batch_encode: no special tokens for a causal model).
THEIR_TOKENS = """
import json, sys
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1], use_fast=True)
texts = json.load(sys.stdin)
print(json.dumps({k: tok(t, add_special_tokens=False).input_ids for k, t in texts.items()}))
"""


def our_prompts(model, task: str, limit: int, env: dict) -> dict:
    """{_instance_id: [prompt text, its token ids]} as sciriff-jax eval writes and tokenizes them."""
    done = subprocess.run([sys.executable, "-c", OUR_PROMPTS, str(model), f"sciriff_4096_{task}", str(limit)],
                          env=env, cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# transformers' greedy decoding fed sciriff-jax's own prompt ids (the model side alone, tokenization set aside),
# cut as lm-eval cuts an answer: at the stop strings, then EOS's text.
SAME_IDS = """
import json, sys, torch, transformers
model_dir, max_new, stops = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
tok = transformers.AutoTokenizer.from_pretrained(model_dir, use_fast=True)
model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
out = {}
for key, ids in json.load(sys.stdin).items():
    gen = model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id
                         if tok.pad_token_id is not None else tok.eos_token_id)
    text = tok.decode(gen[0, len(ids):], skip_special_tokens=True)
    for stop in stops + [tok.decode(tok.eos_token_id, skip_special_tokens=False)]:
        text = text.split(stop)[0]
    out[key] = text
print(json.dumps(out))
"""


def same_ids_predictions(args, model, task: str, ours: dict) -> dict:
    """{_instance_id: transformers' answer to sciriff-jax's prompt ids (the last `budget`)}."""
    budget = CUTS.get(task, {}).get("budget") or 0
    stops = ["\n\n\n"] if task == "evidence_inference" else ["\n\n--------------------\n\n"]
    done = subprocess.run([args.lmeval_python, "-c", SAME_IDS, str(model), str(args.max_new_tokens), json.dumps(stops)],
                          input=json.dumps({i: r[1][-budget:] for i, r in ours.items()}), capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def their_tokens(args, model, texts: dict) -> dict:
    """{_instance_id: token ids} of lm-eval's contexts as its HF backend tokenizes them."""
    done = subprocess.run([args.lmeval_python, "-c", THEIR_TOKENS, str(model)], input=json.dumps(texts),
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(theirs: dict, ours: dict, tokens: dict) -> dict:
    """Per task: instances, prompts equal (as text, and as the tokens each feeds its model: the last `budget`
    ids), predictions equal (as text), and the first differences. theirs: {task: {id: (prompt, prediction)}};
    ours: {task: {id: (prompt, ids, prediction)}}; tokens: lm-eval's ids {task: {id: ids}}."""
    report = {}
    for task, rows in theirs.items():
        ids = [i for i in rows if i in ours.get(task, {})]
        budget = CUTS.get(task, {}).get("budget") or 0
        same_prompt = [i for i in ids if rows[i][0] == ours[task][i][0]]
        same_tokens = [i for i in ids if (ours[task][i][1] or [])[-budget:] == tokens[task].get(i, [])[-budget:]]
        same_pred = [i for i in ids if rows[i][1] == ours[task][i][2]]
        same_model = [i for i in ids if SAME[task].get(i) == ours[task][i][2]]
        diffs = [{"_instance_id": i, "lm_eval": rows[i][1][:300], "sciriff_jax": ours[task][i][2][:300],
                  "prompt_tokens_equal": i in same_tokens} for i in ids if i not in same_pred][:3]
        cuts = CUTS.get(task, {})
        report[task] = {"instances": len(ids), "only_lm_eval": len(rows) - len(ids),
                        "prompt_budget": cuts.get("budget"),
                        "prompts_cut": sum(t.get("n_cut", 0) for t in cuts.get("tasks", {}).values()),
                        "only_sciriff_jax": len(ours.get(task, {})) - len(ids), "prompts_equal": len(same_prompt),
                        "prompt_tokens_equal": len(same_tokens),
                        "predictions_equal_fed_the_same_ids": len(same_model),
                        "predictions_equal": len(same_pred), "first_differences": diffs}
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an HF model directory, or 'random' (a small random Llama)")
    parser.add_argument("--name", default=None, help="result name (default: random / the directory's name)")
    parser.add_argument("--tasks", default="evidence_inference,scierc_ner,bioasq_list_qa")
    parser.add_argument("--limit", type=int, default=8, help="instances per task (lm-eval --limit, MAX_EXAMPLES)")
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--batch_size", type=int, default=8, help="sciriff-jax decoding slots (lm-eval runs 1)")
    parser.add_argument("--seed", type=int, default=0, help="the random Llama's torch seed")
    parser.add_argument("--lmeval_python", default="/tmp/lmeval-venv/bin/python")
    parser.add_argument("--work", default=None, help="scratch folder (default: a new one under /tmp)")
    args = parser.parse_args(argv)
    args.tasks = args.tasks.split(",")
    work = pathlib.Path(args.work or f"/tmp/lmeval_parity_{int(time.time())}")
    work.mkdir(parents=True, exist_ok=True)
    name = args.name or ("random" if args.model == "random" else pathlib.Path(args.model).name)
    if args.model != "random":
        model = pathlib.Path(args.model).resolve()
    elif (work / "random_llama" / "model.safetensors").is_file():  # a rerun into the same --work
        model = work / "random_llama"
    else:
        model = random_llama(work / "random_llama", args.lmeval_python, args.seed)
    theirs = run_lmeval(args, model, work)
    ours = run_sciriff(args, model, work)
    version = subprocess.run([args.lmeval_python, "-c", "from importlib.metadata import version as v; "
                              "print(*(v(p) for p in ('lm_eval', 'transformers', 'torch')))"],
                             capture_output=True, text=True).stdout
    tokens = {task: their_tokens(args, model, {i: r[0] for i, r in rows.items()}) for task, rows in theirs.items()}
    SAME.update({task: same_ids_predictions(args, model, task, ours[task]) for task in args.tasks})
    result = {"benchmark": "lmeval_parity", "model": name, "tasks": compare(theirs, ours, tokens), "limit": args.limit,
              "max_new_tokens": args.max_new_tokens, "lm_eval_backend": "hf, float32, batch 1, cpu",
              "sciriff_jax": "eval, protocol release, template tulu, float32",
              "lm_eval/transformers/torch": version.strip(), "load": os.getloadavg()[0],
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = REPO / "benchmarks" / "results" / f"lmeval_parity_{name}.json"
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    for task, r in result["tasks"].items():
        print(f"{task}: {r['predictions_equal']}/{r['instances']} predictions equal, "
              f"{r['prompts_equal']}/{r['instances']} prompts equal as text, "
              f"{r['prompt_tokens_equal']}/{r['instances']} as tokens; fed sciriff-jax's ids, transformers "
              f"answers {r['predictions_equal_fed_the_same_ids']}/{r['instances']} as sciriff-jax does")
    print(f"[parity] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
