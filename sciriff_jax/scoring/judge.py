"""LM-judge for SciRIFF-Eval (Qasper answers, MUP summaries) over an OpenAI-compatible chat endpoint.

Standard library only (urllib), so scoring runs anywhere. Configure with arguments or the
environment: SCIRIFF_JUDGE_URL, SCIRIFF_JUDGE_MODEL, SCIRIFF_JUDGE_API_KEY.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import random
import re
import sys
import threading
import time
import urllib.error
import urllib.request


class JudgeError(RuntimeError):
    """The judge endpoint could not be reached or answered something unusable."""


# The release's judge settings (allenai/SciRIFF e396d00, sciriff/eval/metrics/summary_comparison.py): the model it
# names, no temperature sent (the API's default, 1.0), MUP judged on 100 instances drawn with random.seed(42).
# The paper-era code used gpt-3.5-turbo; gpt-4o-2024-08-06 arrived in commit b8c5530 (2024-10-23).
RELEASE_JUDGE_MODEL = "gpt-4o-2024-08-06"
RELEASE_MUP_SAMPLE = 100
RELEASE_SAMPLE_SEED = 42
# release: the release's prompts, rating extraction, missing-rating defaults and MUP sample, exactly (the functions
# named release_* below; pinned by tests/fixtures/judge_release, made with the release's own functions).
# lenient: our earlier variant (one shared prompt block asking for "Rating:", the last 1-5 rating after "Rating:" or
# "Decision:", an unreadable reply left out and counted, MUP ratings of 1 kept).
JUDGE_PROTOCOLS = ("release", "lenient")


class Judge:
    """A chat-completions client: `complete(prompt) -> text`, `rate_all(prompts) -> [1..5 or None]`.

    `protocol`: "release" (the release's prompts, rating extraction and defaults) or "lenient" (JUDGE_PROTOCOLS).
    `temperature`: None sends none (the API's default, as the release did). `mup_sample`: how many MUP summaries
    are judged (the release's 100, drawn with random.seed(42); None: all). `keep_rating_one`: whether a MUP rating
    of 1 counts; None: the protocol's (release: dropped, as the release's default synchronous path drops a
    rescaled 0; lenient: kept, as the release's batch path). `max_tokens`: the reply's cap sent with each call."""

    max_tokens = 1024

    def __init__(self, url: str, model: str = RELEASE_JUDGE_MODEL, api_key: str | None = None, *,
                 timeout: float = 120.0, max_retries: int = 2, workers: int = 8,
                 temperature: float | None = None, mup_sample: int | None = RELEASE_MUP_SAMPLE,
                 keep_rating_one: bool | None = None, protocol: str = "release"):
        if not url or not model:
            raise ValueError("Judge needs both a URL (SCIRIFF_JUDGE_URL / --judge_url) and a model name "
                             "(SCIRIFF_JUDGE_MODEL / --judge_model)")
        if protocol not in JUDGE_PROTOCOLS:
            raise ValueError(f"judge protocol {protocol!r} (SCIRIFF_JUDGE_PROTOCOL / JUDGE_PROTOCOL / "
                             f"--judge_protocol): choose one of {JUDGE_PROTOCOLS}")
        self.protocol = protocol
        keep_rating_one = protocol == "lenient" if keep_rating_one is None else keep_rating_one
        self.endpoint = chat_endpoint(url)
        self.model, self.api_key = model, api_key
        self.timeout, self.max_retries, self.workers = timeout, max_retries, workers
        self.temperature, self.mup_sample, self.keep_rating_one = temperature, mup_sample, keep_rating_one
        self.errors = 0  # calls of the last rate_all that failed (unreachable, HTTP errors, unusable answers)
        self._warned = threading.Event()

    def __repr__(self):
        return f"Judge({self.endpoint!r}, model={self.model!r}, protocol={self.protocol!r})"  # never shows the key

    def complete(self, prompt: str) -> str:
        """One user turn -> the assistant's text; retries transient failures."""
        request_body = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                        "max_tokens": self.max_tokens}
        if self.temperature is not None:
            request_body["temperature"] = self.temperature
        body = json.dumps(request_body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = None
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = json.loads(response.read().decode("utf-8"))
                return payload["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as err:
                last = f"HTTP {err.code} {err.reason}"
                if err.code < 500 and err.code != 429:
                    break  # a client error (bad key, unknown model) will not fix itself
            except (urllib.error.URLError, TimeoutError, OSError) as err:
                last = str(err)
            except (KeyError, IndexError, TypeError, json.JSONDecodeError) as err:
                raise JudgeError(f"judge at {self.endpoint} answered without choices[0].message.content: {err!r}")
            if attempt < self.max_retries:
                time.sleep(min(2.0 ** attempt, 10.0))
        raise JudgeError(f"judge at {self.endpoint} (model {self.model}) failed: {last}")

    def rate_all(self, prompts: list[str], read=None) -> list[int | None]:
        """A rating per prompt, read from the reply by `read` (default extract_rating, the lenient reading); None
        where the call failed (or `read` found no rating)."""
        errors = []
        read = read or extract_rating

        def rate(prompt):
            try:
                return read(self.complete(prompt))
            except JudgeError as err:
                errors.append(err)  # list.append is atomic: the pool's threads share it
                if not self._warned.is_set():
                    self._warned.set()  # once per judge: a dead endpoint would otherwise print for every prompt
                    print(f"warning: {err}; judgments that fail are left out of the judge metric and counted "
                          "(judge.n_failed)", file=sys.stderr, flush=True)
                return None

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            ratings = list(pool.map(rate, prompts))
        self.errors = len(errors)
        return ratings


def chat_endpoint(url: str) -> str:
    """Accept a server root, a .../v1 base URL or the full .../chat/completions URL."""
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


def judge_from_env(url: str | None = None, model: str | None = None, api_key: str | None = None,
                   **settings) -> Judge | None:
    """A Judge from the arguments, falling back to SCIRIFF_JUDGE_* (SCIRIFF_JUDGE_TEMPERATURE and
    SCIRIFF_JUDGE_PROTOCOL too); None when no URL is set. The model defaults to the release's; `settings` are
    Judge's (temperature, mup_sample, keep_rating_one, protocol)."""
    url = url or os.environ.get("SCIRIFF_JUDGE_URL")
    if settings.get("protocol") is None and os.environ.get("SCIRIFF_JUDGE_PROTOCOL"):
        settings["protocol"] = os.environ["SCIRIFF_JUDGE_PROTOCOL"]
    model = model or os.environ.get("SCIRIFF_JUDGE_MODEL") or RELEASE_JUDGE_MODEL
    api_key = api_key or os.environ.get("SCIRIFF_JUDGE_API_KEY")
    if not url:
        return None
    if settings.get("temperature") is None and os.environ.get("SCIRIFF_JUDGE_TEMPERATURE"):
        settings["temperature"] = float(os.environ["SCIRIFF_JUDGE_TEMPERATURE"])
    return Judge(url, model, api_key, **{k: v for k, v in settings.items() if v is not None or k == "mup_sample"})


def extract_rating(text: str) -> int | None:
    """The lenient reading: the integer after the last "Rating:" or "Decision:" if it is 1-5, else None."""
    found = re.findall(r"(?:Rating|Decision)\s*:\s*\**\s*\"?([0-9]+)", text or "")
    if not found:
        return None
    value = int(found[-1])
    return value if 1 <= value <= 5 else None


_SCALE = """\
- 5: The model answer includes all important information found in the reference.
- 3: The model answer is somewhat similar to the reference, but not completely accurate.
- 1: The model answer is totally inaccurate or is unrelated to the reference.
In your response, give an explanation for your rating, followed by your rating.

Response format:
Explanation: Your explanation here.
Rating: A single integer between 1 and 5.

_Do not_ include any additional text after the rating."""


def qasper_prompt(input_text: str, ref_answer: str, ref_evidence: list, pred_answer: str) -> str:
    """The lenient protocol's judge prompt rating a Qasper answer against the reference (title, question, evidence as context)."""
    lines = (input_text or "").split("\n")
    title = ""
    if "-" * 40 in lines:
        index = lines.index("-" * 40)
        title = lines[index + 1] if index + 1 < len(lines) else ""
    questions = [line[len("Question:"):].strip() for line in lines if line.startswith("Question:")]
    question = questions[-1] if questions else ""
    excerpts = "\n".join(str(x) for x in (ref_evidence or []))
    return (
        "Below you will be shown a paper title, an excerpt from the paper, and a question about the excerpt. "
        "Then, you will be given a reference answer written by an expert, followed by a model-generated answer. "
        "Please rate the similarity of the model answer to the reference on a 1-5 scale. Do not penalize the "
        "model for including additional information that is not in the reference.\n\n"
        f"{_SCALE}\n\nHere's the article, question, and answers:\n\nTitle: {title}\n\nExcerpts:\n{excerpts}\n\n"
        f"Question: {question}\n\nReference answer: {ref_answer}\n\nModel answer: {pred_answer}\n"
    )


def mup_prompt(input_text: str, reference: str, prediction: str) -> str:
    """The lenient protocol's judge prompt rating a MUP paper summary against the reference summary."""
    text = input_text or ""
    match = re.search(r"Paper title:\n(.*?)(?=\n)", text)
    title = match.group(1) if match else ""
    body = text[text.find("Paper body:") + len("Paper body:"):] if "Paper body:" in text else text
    if "sentence paper summary" in body:
        body = body[: body.find("sentence paper summary") - 2]
    return (
        "Below you will be shown the title and body text of a computer science research paper. Then, you will "
        "be given a reference summary of that paper that was written by an expert, followed by a model-generated "
        "summary. Please rate the similarity of the model summary to the reference summary on an overall 1-5 "
        "scale. Do not penalize the model for including additional information that is not in the reference.\n\n"
        f"{_SCALE}\n\nHere's the paper title and body text:\nTitle: {title}\n\nBody text:\n{body.strip()}\n\n"
        f"Here are the summaries:\nReference summary:\n{reference}\n\nModel summary:\n{prediction}\n"
    )


# ----------------------------------------------------------------------------- the release protocol
# The release's judge (allenai/SciRIFF e396d00): Qasper, sciriff/eval/metrics/attributed_qa_eval.py (make_prompt,
# extract_rating, AttributedQAEval._evaluate_one); MUP, sciriff/eval/metrics/summary_comparison.py (make_prompt
# with eval_type "reference_comparison", parse_model_response, SummaryComparison._evaluate_reference_comparison,
# evaluate's sample). Its prompts are indented f-strings whose indentation is removed by replacing every run of 4
# (Qasper) or 8 (MUP) spaces with nothing, the interpolated text included; so are these.

RELEASE_QASPER_TEMPLATE = """\
Below you will be shown a paper title, an excerpt from the paper, and a question
about the excerpt. Then, you will be given a reference answer written by an expert,
followed by a model-generated answer. Please rate the similarity of the model answer
to the reference on a 1-5 scale. Do not penalize the model for including additional
information that is not in the reference.

- 5: The model answer includes all important information found in the reference.
- 3: The model answer is somewhat similar to the reference, but not completely accurate.
- 1: The model answer is totally inaccurate or is unrelated to the reference.
In your response, give an explanation for your rating, followed by your rating.

Response format:
Explanation: Your explanation here.
Rating: A single integer between 1 and 5.

_Do not_ include any additional text after the rating.

Here's the article, question, and answers:

Title: {title}

Excerpts:
{excerpts}

Question: {question}

Reference answer: {reference}

Model answer: {answer}
"""

RELEASE_MUP_TEMPLATE = """\
Below you will be shown the title and body text of a computer
science research paper. Then, you will be given a reference summary of that
paper that was written by an expert, followed by a model-generated summary.
Please rate the similarity of the model summary to the reference summary on an
overall 1-5 scale. Do not penalize the model for including additional
information that is not in the reference.

- 5: The model answer includes all important information found in the reference.
- 3: The model answer is somewhat similar to the reference, but not completely accurate.
- 1: The model answer is totally inaccurate or is unrelated to the reference.
In your response, give an explanation for your rating, followed by your rating.

Response format:
Explanation: "Your explanation here"
Decision: A single integer between 1 and 5.
_Do not_ include any additional text after the rating.

Here's the paper title and body text:
Title: {title}

Body text:
{body}

Here are the summaries:
Reference summary:
{reference}

Model summary:
{prediction}
"""
RELEASE_QASPER_MISSING = 3  # the release's rating for a reply without a readable 1-5 rating
RELEASE_QASPER_NO_ANSWER = 1  # an instance whose parsed prediction has no answer: rated 1 without a call


def release_qasper_prompt(prompt_text: str, reference: dict, answer) -> str:
    """The release's Qasper judge prompt. `prompt_text`: the instance's prompt (its title follows the line of 40
    dashes, its one "Question:" line); `reference`: the parsed reference ({"answer", "evidence": [str]});
    `answer`: the parsed prediction's "answer" as it is (a list shows as Python writes it, as the release's)."""
    lines = prompt_text.split("\n")
    if "-" * 40 not in lines:
        raise ValueError("no line of 40 dashes before the title (the release's make_prompt fails here too)")
    questions = [line for line in lines if re.match("^Question:", line)]
    if len(questions) != 1:
        raise ValueError(f"{len(questions)} 'Question:' lines, not one (the release's make_prompt fails here too)")
    text = RELEASE_QASPER_TEMPLATE.format(
        title=lines[lines.index("-" * 40) + 1], excerpts="\n".join(reference["evidence"]),
        question=questions[0].replace("Question: ", ""), reference=reference["answer"], answer=answer)
    return text.replace(" " * 4, "")


def release_qasper_rating(text: str) -> int:
    """The release's reading: the first "Rating:" and its digits; 1-5 is the rating, anything else (no such tag,
    a number outside 1-5) rates 3."""
    match = re.search(r"Rating:\s*(\d+)", text or "")
    score = int(match.group(1)) if match else None
    return score if score in (1, 2, 3, 4, 5) else RELEASE_QASPER_MISSING


def release_mup_prompt(prompt_text: str, reference: str, prediction: str) -> str:
    """The release's MUP judge prompt. `prompt_text`: the instance's prompt (the title after "Paper title:\\n",
    the body after "Paper body:" up to two characters before "sentence paper summary"; what is not found shows as
    None, as the release's); `reference` and `prediction` as the release passes them (release_mup_prediction)."""
    match = re.search(r"Paper title:\n(.*?)(?=\n)", prompt_text)
    body = None
    if "Paper body:" in prompt_text:
        body = prompt_text[prompt_text.find("Paper body:") + 11:]
        if "sentence paper summary" in body:
            body = body[: body.find("sentence paper summary") - 2]
        body = body.strip()
    text = RELEASE_MUP_TEMPLATE.format(title=match.group(1) if match else None, body=body, reference=reference,
                                       prediction=prediction)
    return text.replace(" " * 8, "")


def release_mup_prediction(raw: str) -> str:
    """A MUP prediction as the release passes it to the judge: the raw answer with the characters <, /, s and >
    stripped from both ends (the release's `.strip("</s>")`, meant for a trailing </s>)."""
    return (raw or "").strip("</s>")


def release_mup_rating(text: str) -> int | None:
    """The release's reading: everything after the first "Decision:" (else the first "Rating:"), stripped, must be a
    bare digit 1-5; anything else is an error (None: the instance is left out)."""
    text = text or ""
    for tag in ("Decision:", "Rating:"):
        if tag in text:
            decision = text[text.find(tag) + len(tag):].strip()
            return int(decision) if decision in ("1", "2", "3", "4", "5") else None
    return None


def release_sample(n: int, sample: int | None) -> list[int]:
    """The instances the release judges: random.seed(42); sorted(random.sample(range(n), min(sample, n)))."""
    if sample is None:
        return list(range(n))
    return sorted(random.Random(RELEASE_SAMPLE_SEED).sample(range(n), min(sample, n)))


def release_scores(judge, task: str, examples: list[dict], parsed: list) -> tuple[float | None, dict]:
    """(the judge metric, its record) as the release computes it for `task` (qasper_abstractive_qa: every instance,
    the mean rating rescaled (r - 1) / 4; mup_single_document_summarization: the 100-instance sample, the mean of
    the rescaled ratings kept). `examples`: records with input, output and prediction; `parsed`: per example the
    (parsed prediction, parsed reference) pair for Qasper. A call that fails, or an instance the release's prompt
    code would stop at, is left out and counted (n_failed): the release has no number there."""
    qasper = task == "qasper_abstractive_qa"
    chosen = list(range(len(examples))) if qasper else release_sample(len(examples), judge.mup_sample)
    ratings: dict[int, int | None] = {}
    prompts, where, bad = [], [], 0
    for i in chosen:
        ex = examples[i]
        try:
            if qasper:
                pred, ref = parsed[i]
                answer = pred.get("answer") if isinstance(pred, dict) else None
                if answer is None:
                    ratings[i] = RELEASE_QASPER_NO_ANSWER
                    continue
                prompts.append(release_qasper_prompt(ex.get("input", ""), ref, answer))
            else:
                prompts.append(release_mup_prompt(ex.get("input", ""), ex["output"],
                                                  release_mup_prediction(ex["prediction"])))
        except (ValueError, KeyError, TypeError) as err:
            ratings[i], bad = None, bad + 1
            print(f"warning: {task}: {ex.get('_instance_id', i)}: no judge prompt ({err}); left out and counted",
                  file=sys.stderr, flush=True)
            continue
        where.append(i)
    for i, rating in zip(where, judge.rate_all(prompts, release_qasper_rating if qasper else release_mup_rating)):
        ratings[i] = rating
    keep_one = qasper or judge.keep_rating_one
    kept = [r for r in (ratings[i] for i in chosen) if r is not None and (keep_one or r != 1)]
    record = {"status": "done" if kept else "failed", "protocol": "release", "model": judge.model,
              "n_judged": len(chosen), "n_called": len(prompts), "n_rated": len(kept),
              "n_failed": sum(ratings[i] is None for i in chosen), "n_errors": judge.errors, "n_no_prompt": bad,
              "temperature": judge.temperature, "keep_rating_one": keep_one}
    if not qasper:
        record["n_dropped_rating_one"] = sum(ratings[i] == 1 for i in chosen) if not keep_one else 0
    if not kept:
        return None, record
    if qasper:  # the mean rating, rescaled
        return (sum(kept) / len(kept) - 1) / 4, record
    return sum((r - 1) / 4 for r in kept) / len(kept), record  # the mean of the rescaled ratings
