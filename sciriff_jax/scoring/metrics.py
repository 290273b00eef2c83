"""SciRIFF-Eval answer parsing and metrics in pure Python (no TF, no JAX), so scoring runs anywhere.

`score(task_or_scorer, examples)` scores a list of {"output": reference, "prediction": raw model
text, "_instance_id"?, "input"?} dicts with the metrics of one of the nine SciRIFF-Eval tasks
(or a generic scorer: "label_f1", "token_f1"). Differences from the release's evaluation code
are listed in the README's Evaluation section.
"""
from __future__ import annotations

import collections
import json
import math
import random
import re
import string
from typing import Mapping

from sciriff_jax.scoring import judge as judge_lib

# Chat-template end markers a decoder may leave at the end of its text; removed as whole strings
# (the release's `str.strip("</s>")` treats them as a character set and eats a final "s").
END_MARKERS = ("</s>", "<|eot_id|>", "<|im_end|>", "<|end_of_text|>", "<|endoftext|>", "<|end|>")
PARSE_STATUSES = ("valid_json", "null_json", "extract_success", "extract_failure")
SKIPPED = "skipped"


def clean_prediction(text) -> str:
    """Strip whitespace and trailing end-of-turn markers (as whole strings) from a model's raw text."""
    text = "" if text is None else str(text)
    text = text.strip()
    changed = True
    while changed:
        changed = False
        for marker in END_MARKERS:
            if text.endswith(marker):
                text = text[: -len(marker)].rstrip()
                changed = True
    return text


# ----------------------------------------------------------------------------- answer parsing


MAX_DEPTH = 100  # deeper answers count as parse failures: no SciRIFF answer nests more than a few levels


MAX_INT_DIGITS = 4000  # longer integers are parse failures (README), under Python's 4,300-digit int() limit


class _IntTooLong(Exception):
    pass


def _parse_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise _IntTooLong
    return int(digits)


def _loads(text: str):
    """json.loads where hostile text fails only as JSONDecodeError: an integer longer than MAX_INT_DIGITS (past
    Python's int() limit; no answer holds one) and nesting past MAX_DEPTH (or the recursion limit) are errors."""
    try:
        value = json.loads(text, parse_int=_parse_int)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, 0) from None
    except _IntTooLong:
        raise json.JSONDecodeError(f"an integer longer than {MAX_INT_DIGITS} digits", text, 0) from None
    if _depth(value) > MAX_DEPTH:
        raise json.JSONDecodeError(f"nested deeper than {MAX_DEPTH} levels", text, 0)
    return value


def _depth(value) -> int:
    """Nesting depth of a JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (list, dict)):
            deepest = max(deepest, depth)
            if depth <= MAX_DEPTH:  # past the bound the exact depth does not matter
                stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def find_json(text: str, shape: str):
    """The first balanced {...} (shape "dict") or [...] (shape "list") in `text` that parses, else None."""
    open_ch, close_ch = ("{", "}") if shape == "dict" else ("[", "]")
    depth, start = 0, -1
    for i, ch in enumerate(text):
        if ch == open_ch:
            if depth == 0:
                start = i
            depth += 1
        elif ch == close_ch:
            depth -= 1
            if depth == 0 and start != -1:
                try:
                    return _loads(text[start : i + 1]), True
                except json.JSONDecodeError:
                    start = -1  # as the release: keep scanning for a later balanced span
    return None, False


def parse_answer(text, default, *, fix_closing_brace: bool = False):
    """Parse a model answer with the release's rules -> (value, status in PARSE_STATUSES)."""
    text = clean_prediction(text)
    if fix_closing_brace and text.endswith("}"):
        # The release's Evidence Inference quirk (Tulu models close a list with "}"): kept as convention.
        text = text[:-1] + "]"
    try:
        value = _loads(text)
    except json.JSONDecodeError:
        value, ok = find_json(text, "dict" if isinstance(default, dict) else "list")
        return (value, "extract_success") if ok else (_copy(default), "extract_failure")
    if value is None or value == "null":
        return _copy(default), "null_json"
    return value, "valid_json"


def parse_counts(statuses) -> dict:
    """Counts of each parse status plus `frac_success` = (valid + extracted) / all, as the release."""
    counts = {s: 0 for s in PARSE_STATUSES}
    for s in statuses:
        counts[s] += 1
    total = sum(counts.values())
    counts["frac_success"] = (counts["valid_json"] + counts["extract_success"]) / total if total else 0.0
    return counts


def json_parse_rate(predictions, shape: str = "dict") -> float:
    """Fraction of raw predictions that parse as JSON (whole, or an extracted {...}/[...] span)."""
    if shape not in ("dict", "list"):
        raise ValueError(f"json_parse_rate: shape must be 'dict' or 'list', not {shape!r}")
    default = {} if shape == "dict" else []
    return parse_counts(parse_answer(p, default)[1] for p in predictions)["frac_success"]


def _copy(value):
    return json.loads(json.dumps(value))


# ----------------------------------------------------------------------------- shared primitives


def flatten(value) -> list:
    """Flatten nested lists; a scalar becomes a one-element list (never iterated character-wise)."""
    if not isinstance(value, list):
        return [value]
    out = []
    for item in value:
        out.extend(flatten(item))
    return out


def normalize_entry(entry) -> str:
    """Lowercase/strip strings, print numbers (floats to 2 places), join nested lists, dump objects."""
    if entry is None:
        return ""
    if isinstance(entry, str):
        return entry.strip().lower()
    if isinstance(entry, bool):
        return str(entry).lower()
    if isinstance(entry, int):
        return str(entry)
    if isinstance(entry, float):
        return str(round(entry, 2))
    if isinstance(entry, list):
        return " ".join(normalize_entry(x) for x in flatten(entry))
    return json.dumps(entry, sort_keys=True).lower()  # an object where a string belongs: never crash


def prf(correct: float, preds: float, refs: float, prefix: str = "") -> dict:
    """Precision, recall and F1 from counts (0 where undefined)."""
    p = correct / preds if preds else 0.0
    r = correct / refs if refs else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {f"{prefix}p": p, f"{prefix}r": r, f"{prefix}f1": f1}


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, squeeze whitespace."""
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


_PUNCT = frozenset(string.punctuation)


def token_f1(pred: str, ref: str) -> float:
    """SQuAD-style token F1 between two strings."""
    pred_toks, ref_toks = normalize_answer(pred).split(), normalize_answer(ref).split()
    same = sum((collections.Counter(pred_toks) & collections.Counter(ref_toks)).values())
    if same == 0:
        return 0.0
    p, r = same / len(pred_toks), same / len(ref_toks)
    return 2 * p * r / (p + r)


def tokenize_13a(line: str) -> list[str]:
    """The mteval-v13a tokenizer (sacrebleu's default, used by the release's `evaluate` BLEU)."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    line = re.sub(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])", r" \1 ", line)
    line = re.sub(r"([^0-9])([\.,])", r"\1 \2 ", line)
    line = re.sub(r"([\.,])([^0-9])", r" \1 \2", line)
    line = re.sub(r"([0-9])(-)", r"\1 \2 ", line)
    return line.split()


def bleu(predictions: list[str], references: list[str], max_order: int = 4) -> float:
    """Corpus BLEU (one reference each, no smoothing, 13a tokens), as HF `evaluate`'s "bleu"."""
    matches, possible = [0] * max_order, [0] * max_order
    pred_len = ref_len = 0
    for pred, ref in zip(predictions, references):
        p_toks, r_toks = tokenize_13a(pred), tokenize_13a(ref)
        pred_len, ref_len = pred_len + len(p_toks), ref_len + len(r_toks)
        for n in range(1, max_order + 1):
            p_ngrams = collections.Counter(tuple(p_toks[i : i + n]) for i in range(len(p_toks) - n + 1))
            r_ngrams = collections.Counter(tuple(r_toks[i : i + n]) for i in range(len(r_toks) - n + 1))
            matches[n - 1] += sum((p_ngrams & r_ngrams).values())
            possible[n - 1] += max(len(p_toks) - n + 1, 0)
    precisions = [m / p if p else 0.0 for m, p in zip(matches, possible)]
    if pred_len == 0 or min(precisions) <= 0:
        return 0.0
    geo_mean = math.exp(sum(math.log(p) for p in precisions) / max_order)
    ratio = pred_len / ref_len if ref_len else float("inf")
    return geo_mean * (1.0 if ratio > 1.0 else math.exp(1 - 1 / ratio))


# ----------------------------------------------------------------------------- per-task metrics
# Each takes a list of (prediction value, reference value) pairs and returns a flat metric dict.


def list_f1(pairs) -> dict:
    """Exact-match list F1, micro over instances (BioASQ list QA, MultiCite)."""
    correct = preds = refs = 0
    for pred, ref in pairs:
        pred_set = {normalize_entry(x) for x in _as_list(pred)}
        ref_set = {normalize_entry(x) for x in _as_list(ref)}
        correct, preds, refs = correct + len(pred_set & ref_set), preds + len(pred_set), refs + len(ref_set)
    return prf(correct, preds, refs)


def _as_list(value) -> list:
    # A JSON object where a list belongs contributes its values; a string is one entry.
    if isinstance(value, dict):
        return flatten(list(value.values()))
    return flatten(value)


def ner_f1(pairs) -> dict:
    """Typed (mention, type) and untyped (mention) exact-match NER F1, micro over instances."""
    counts = {k: [0, 0, 0] for k in ("typed", "untyped")}
    not_object = 0
    for pred, ref in pairs:
        if not isinstance(pred, dict):
            not_object += 1
        for kind, (p, r) in zip(("typed", "untyped"), zip(_entities(pred), _entities(ref))):
            c = counts[kind]
            c[0], c[1], c[2] = c[0] + len(p & r), c[1] + len(p), c[2] + len(r)
    out = {}
    for kind, (correct, preds, refs) in counts.items():
        out.update(prf(correct, preds, refs, prefix=f"{kind}_"))
    out["answer_not_object"] = not_object
    return out


def _entities(value):
    typed, untyped = set(), set()
    # A JSON list instead of {type: [mentions]} (the release crashes here) gives untyped mentions only.
    items = value.items() if isinstance(value, dict) else [(None, value)]
    for ent_type, mentions in items:
        for mention in flatten(mentions):
            m = normalize_entry(mention)
            typed.add((m, ent_type))
            untyped.add(m)
    return typed, untyped


def relation_f1(pairs, tuple_len: int = 5, overlap_threshold: float = 0.3) -> dict:
    """Relation-tuple F1 with exact, substring and token-overlap (every field F1 >= threshold) matching."""
    counts = collections.Counter()
    for pred, ref in pairs:
        pred_tuples = _relation_tuples(pred, tuple_len, counts)
        ref_tuples = _relation_tuples(ref, tuple_len, collections.Counter())
        counts["preds"] += len(pred_tuples)
        counts["refs"] += len(ref_tuples)
        counts["exact"] += _greedy_matches(pred_tuples, ref_tuples, lambda p, r: p == r)
        counts["substring"] += _greedy_matches(pred_tuples, ref_tuples, _is_substring_match)
        counts["overlap"] += _greedy_matches(
            pred_tuples, ref_tuples, lambda p, r: all(x != "" and token_f1(x, y) >= overlap_threshold for x, y in zip(p, r))
        )
    out = {}
    for kind in ("exact", "substring", "overlap"):
        out.update(prf(counts[kind], counts["preds"], counts["refs"], prefix=f"{kind}_"))
    shape = sum(counts[k] for k in ("good_tuple", "bad_tuple", "wrong_length", "entry_not_list", "answer_not_list"))
    out["frac_valid_tuples"] = counts["good_tuple"] / shape if shape else 0.0
    for k in ("good_tuple", "bad_tuple", "wrong_length", "entry_not_list", "answer_not_list"):
        out[k] = counts[k]
    return out


def _relation_tuples(value, tuple_len, counts) -> list[tuple]:
    if not isinstance(value, list):
        counts["answer_not_list"] += 1  # e.g. an object (the release crashes on this)
        return []
    if value and not isinstance(value[0], list):
        value = [value]  # a single un-nested tuple, as the release accepts
    out = []
    for entry in value:
        if not isinstance(entry, list):
            counts["entry_not_list"] += 1
        elif len(entry) != tuple_len:
            counts["wrong_length"] += 1
        elif any(isinstance(x, dict) for x in entry):
            counts["bad_tuple"] += 1
        else:
            counts["good_tuple"] += 1
            out.append(tuple(normalize_entry(x) for x in entry))
    return out


def _is_substring_match(pred, ref) -> bool:
    return all(p != "" and (p in r or r in p) for p, r in zip(pred, ref))


def _greedy_matches(preds, refs, same) -> int:
    # Each reference is used once; tracked by position so duplicate reference tuples can each match.
    used, n = set(), 0
    for p in preds:
        for j, r in enumerate(refs):
            if j not in used and same(p, r):
                used.add(j)
                n += 1
                break
    return n


def fact_checking(pairs) -> dict:
    """SciFact: label F1 over non-NEI verdicts, evidence sentence F1 and evidence token F1 (micro)."""
    label, sent, tok = [0, 0, 0], [0, 0, 0], [0, 0, 0]
    not_object = 0
    for pred, ref in pairs:
        if not isinstance(pred, dict):
            not_object += 1  # scored as the default; the release skipped the reference counts here
            pred = {}
        verdict_pred, verdict_ref = pred.get("verdict") or "NEI", ref.get("verdict") or "NEI"
        if verdict_ref != "NEI":
            label[2] += 1
            label[0] += int(verdict_pred == verdict_ref)
        label[1] += int(verdict_pred != "NEI")
        ev_pred = [normalize_entry(x) for x in flatten(pred.get("evidence") or [])]
        ev_ref = [normalize_entry(x) for x in flatten(ref.get("evidence") or [])]
        p_set, r_set = set(ev_pred), set(ev_ref)
        sent[0], sent[1], sent[2] = sent[0] + len(p_set & r_set), sent[1] + len(p_set), sent[2] + len(r_set)
        p_toks, r_toks = normalize_answer(" ".join(ev_pred)).split(), normalize_answer(" ".join(ev_ref)).split()
        common = sum((collections.Counter(p_toks) & collections.Counter(r_toks)).values())
        tok[0], tok[1], tok[2] = tok[0] + common, tok[1] + len(p_toks), tok[2] + len(r_toks)
    return {**prf(*label, prefix="label_"), **prf(*sent, prefix="evidence_sent_"),
            **prf(*tok, prefix="evidence_token_"), "answer_not_object": not_object}


def attributed_qa(pairs) -> dict:
    """Qasper: mean answer token F1 and mean evidence token F1 (a missing field scores 0)."""
    f1_answer, f1_evidence, missing_answer, missing_evidence = [], [], 0, 0
    for pred, ref in pairs:
        answer, evidence = _qasper_fields(pred)
        ref_answer, ref_evidence = _qasper_fields(ref)
        missing_answer += answer is None
        missing_evidence += evidence is None
        f1_answer.append(0.0 if answer is None else token_f1(answer, ref_answer or ""))
        f1_evidence.append(0.0 if evidence is None else token_f1(evidence, ref_evidence or ""))
    n = len(pairs)
    return {"answer_f1": sum(f1_answer) / n if n else 0.0, "evidence_f1": sum(f1_evidence) / n if n else 0.0,
            "missing_answer": missing_answer, "missing_evidence": missing_evidence}


def _qasper_fields(value):
    if not isinstance(value, dict):
        return None, None
    answer, evidence = value.get("answer"), value.get("evidence")
    if answer is not None and not isinstance(answer, str):
        answer = " ".join(str(x) for x in flatten(answer)) if isinstance(answer, list) else json.dumps(answer)
    if evidence is not None:
        evidence = " ".join(str(x) for x in flatten(evidence))
    return answer, evidence


def label_f1(pairs) -> dict:
    """Single-label classification: accuracy and macro F1 over the labels seen in references or predictions."""
    per_label = collections.defaultdict(lambda: [0, 0, 0])
    correct = 0
    for pred, ref in pairs:
        p, r = _label(pred), _label(ref)
        correct += p == r
        per_label[r][2] += 1
        per_label[p][1] += 1
        per_label[p][0] += p == r
    labels = [lab for lab in per_label if per_label[lab][2] > 0]
    macro = sum(prf(*per_label[lab])["f1"] for lab in labels) / len(labels) if labels else 0.0
    return {"accuracy": correct / len(pairs) if pairs else 0.0, "f1": macro}


def _label(text) -> str:
    text = clean_prediction(text)
    try:  # a label written as JSON ("Uses" or ["Uses"]) counts as the label itself
        value = _loads(text)
        if isinstance(value, (str, list)) and value:
            text = str(flatten(value)[0])
    except json.JSONDecodeError:
        pass
    return text.strip().strip(".").strip().lower()


def mean_token_f1(pairs) -> dict:
    """Mean SQuAD token F1 between prediction and reference text."""
    scores = [token_f1(clean_prediction(p), r) for p, r in pairs]
    return {"f1": sum(scores) / len(scores) if scores else 0.0}


# ----------------------------------------------------------------------------- tasks and `score`

_NER_BIORED = {"CellLine": [], "Chemical": [], "Disease": [], "Gene": [], "Species": [], "Variant": []}
_NER_SCIERC = {"Task": [], "Method": [], "Metric": [], "Material": [], "OtherScientificTerm": [], "Generic": []}
JUDGE = object()  # marks a headline metric computed by the LM judge

# scorer -> (default answer or None for free text, metric fn, {headline name: key in the metric dict})
SCORERS = {
    "bioasq_list_qa": ([], list_f1, {"f1": "f1"}),
    "multicite_intent_classification": ([], list_f1, {"f1": "f1"}),
    "biored_ner": (_NER_BIORED, ner_f1, {"f1": "typed_f1"}),
    "scierc_ner": (_NER_SCIERC, ner_f1, {"f1": "typed_f1"}),
    "evidence_inference": ([], relation_f1, {"f1_overlap": "overlap_f1"}),
    "scifact_entailment": ({"verdict": "NEI", "evidence": []}, fact_checking,
                           {"f1_label": "label_f1", "f1_evidence_token": "evidence_token_f1"}),
    "qasper_abstractive_qa": ({"answer": None, "evidence": None}, attributed_qa,
                              {"lm_judge_answer": JUDGE, "f1_evidence": "evidence_f1"}),
    "discomat_te": (None, None, {"bleu": "bleu"}),
    "mup_single_document_summarization": (None, None, {"lm_judge_reference": JUDGE}),
    "label_f1": (None, label_f1, {"f1": "f1"}),
    "token_f1": (None, mean_token_f1, {"f1": "f1"}),
}
EVAL_SCORERS = tuple(list(SCORERS)[:9])  # the nine SciRIFF-Eval tasks' own scorers, in paper order; then generic ones


def resolve_scorer(name: str, declared: Mapping[str, str] | None = None) -> str:
    """The one scorer lookup: a scorer name; a task whose scorer the data layer declares in `declared` ({task:
    scorer}, e.g. seqio_tasks.sample.SAMPLE_SCORERS), also under a registered prefix (sample_ner, sciriff_sample_ner);
    or a registered task name containing an eval task's name (sciriff_4096_scifact_entailment -> scifact_entailment)."""
    if name in SCORERS:
        return name
    for key, scorer in (declared or {}).items():
        if name == key or name.endswith("_" + key):
            return scorer
    matches = [key for key in EVAL_SCORERS if key in name]
    if matches:
        return max(matches, key=len)
    raise ValueError(f"no SciRIFF-Eval scorer for {name!r}: evaluate the eval mixture's tasks (names containing one "
                     f"of {', '.join(EVAL_SCORERS)}) or a sciriff_sample_* task (its predictions carry their 'scorer'); "
                     f"known scorers: {', '.join(SCORERS)}")


def score(task_or_scorer: str, examples: list[dict], *, judge=None) -> dict:
    """Score examples ({output, prediction, _instance_id?, input?}) with a task's SciRIFF-Eval metrics."""
    name = resolve_scorer(task_or_scorer)
    default, metric_fn, headline_keys = SCORERS[name]
    for i, ex in enumerate(examples):
        missing = [k for k in ("output", "prediction") if k not in ex]
        if missing:
            raise ValueError(f"{task_or_scorer}: example {i} ({_where(ex)}) "
                             f"lacks {', '.join(missing)}; each needs 'output' (reference) and 'prediction'")
    preds_text = [clean_prediction(ex["prediction"]) for ex in examples]
    refs_text = [str(ex["output"]).strip() for ex in examples]
    result = {"task": task_or_scorer, "scorer": name, "n": len(examples)}
    metrics_all: dict = {}
    if default is not None:
        refs = [_parse_reference(ex, default, task_or_scorer) for ex in examples]
        parsed = [parse_answer(p, default, fix_closing_brace=name == "evidence_inference") for p in preds_text]
        pairs = [(value, ref) for (value, _), ref in zip(parsed, refs)]
        ok_pairs = [pair for pair, (_, status) in zip(pairs, parsed) if status != "extract_failure"]
        counts = parse_counts(status for _, status in parsed)
        metrics_all = metric_fn(pairs)
        result.update(parse=counts, json_parse_rate=counts["frac_success"], parsed=metric_fn(ok_pairs))
    else:
        pairs = list(zip(preds_text, refs_text))
        if metric_fn is not None:
            metrics_all = metric_fn(pairs)
        result["json_parse_rate"] = None
    metrics_all["bleu"] = bleu(preds_text, refs_text)
    if JUDGE in headline_keys.values():
        metrics_all.update(_judge_scores(name, examples, pairs, judge, result))
    headline = {h: (metrics_all.get(h, SKIPPED) if key is JUDGE else metrics_all[key]) for h, key in headline_keys.items()}
    # Headline first, so a reader of the printed JSON sees the table numbers before the details.
    ordered = {"task": result.pop("task"), "scorer": result.pop("scorer"), "n": result.pop("n"), "headline": headline,
               "json_parse_rate": result.pop("json_parse_rate")}
    return {**ordered, **result, "all": metrics_all}


def _parse_reference(example, default, task):
    value, status = parse_answer(example["output"], default)
    if status not in ("valid_json", "null_json"):
        raise ValueError(f"{task}: reference 'output' of {_where(example)} is not JSON (or nested deeper than "
                         f"{MAX_DEPTH} levels) ({str(example['output'])[:80]!r}); is this the right task for the file?")
    if not isinstance(value, type(default)):  # the metrics read a reference's fields: its shape must be the task's
        raise ValueError(f"{task}: reference 'output' of {_where(example)} is a JSON {type(value).__name__}, but this "
                         f"task's answers are JSON {'objects' if isinstance(default, dict) else 'arrays'}; is this "
                         "the right task for the file?")
    return value


def _where(example) -> str:
    # `_source` (file:line) is set by readers of prediction files; else the SciRIFF instance id.
    return example.get("_source") or example.get("_instance_id") or "no _instance_id"


def _judge_scores(name, examples, pairs, judge, result) -> dict:
    """LM-judge ratings rescaled to 0-1 as (rating - 1) / 4; "skipped" without a judge. The judge's protocol decides
    how: "release" (judge.release_scores), else the lenient variant below."""
    if judge is None:
        result["judge"] = {"status": SKIPPED, "reason": "no judge configured (set SCIRIFF_JUDGE_URL and SCIRIFF_JUDGE_MODEL)"}
        return {}
    key = "lm_judge_answer" if name == "qasper_abstractive_qa" else "lm_judge_reference"
    if getattr(judge, "protocol", "lenient") == "release":  # the release's prompts, readings and defaults
        value, result["judge"] = judge_lib.release_scores(judge, name, examples, pairs)
        return {key: value}
    ratings: list = [None] * len(examples)
    chosen = range(len(examples))
    sample = getattr(judge, "mup_sample", None)
    if name == "mup_single_document_summarization" and sample is not None and sample < len(examples):
        # The release judged MUP on a sample: random.seed(42); sorted(random.sample(range(n), 100)).
        chosen = sorted(random.Random(getattr(judge_lib, "RELEASE_SAMPLE_SEED", 42)).sample(range(len(examples)), sample))
    prompts, where = [], []
    for i in chosen:
        ex, (pred, ref) = examples[i], pairs[i]
        if name == "qasper_abstractive_qa":
            answer, _ = _qasper_fields(pred)
            ref_answer, _ = _qasper_fields(ref)
            if answer is None:
                ratings[i] = 1  # no answer gets the lowest rating without a call, as the release
                continue
            ref_evidence = ref.get("evidence") if isinstance(ref, dict) else []
            prompts.append(judge_lib.qasper_prompt(ex.get("input", ""), ref_answer, flatten(ref_evidence or []), answer))
        else:
            prompts.append(judge_lib.mup_prompt(ex.get("input", ""), ref, pred))
        where.append(i)
    for i, rating in zip(where, judge.rate_all(prompts)):
        ratings[i] = rating
    keep_one = getattr(judge, "keep_rating_one", True)  # False: as the release's synchronous path, which dropped 1s
    rated = [ratings[i] for i in chosen if ratings[i] is not None and (keep_one or ratings[i] != 1)]
    result["judge"] = {"status": "done", "protocol": "lenient", "model": getattr(judge, "model", None), "n_rated": len(rated),
                       "n_failed": sum(ratings[i] is None for i in chosen), "n_called": len(prompts),
                       "n_judged": len(chosen), "n_errors": getattr(judge, "errors", 0),
                       "temperature": getattr(judge, "temperature", None), "keep_rating_one": keep_one}
    if not rated:
        result["judge"]["status"] = "failed"
        return {key: None}
    return {key: (sum(rated) / len(rated) - 1) / 4}


def table_row(results: dict) -> dict:
    """Headline numbers of per-task results {task: score(...)} in paper order (judge metrics may be "skipped")."""
    row = {}
    for task, res in results.items():
        for metric, value in res["headline"].items():
            row[f"{task}/{metric}"] = value
    return row


def table_mean(row: dict) -> float | None:
    """Mean of the numeric headline numbers (skipped / failed judge metrics left out)."""
    values = [v for v in row.values() if isinstance(v, (int, float))]
    return sum(values) / len(values) if values else None
