"""LM-judge for SciRIFF-Eval (Qasper answers, MUP summaries) over an OpenAI-compatible chat endpoint.

Standard library only (urllib), so scoring runs anywhere. Configure with arguments or the
environment: SCIRIFF_JUDGE_URL, SCIRIFF_JUDGE_MODEL, SCIRIFF_JUDGE_API_KEY.
"""
from __future__ import annotations

import concurrent.futures
import json
import os
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


class Judge:
    """A chat-completions client: `complete(prompt) -> text`, `rate_all(prompts) -> [1..5 or None]`.

    `temperature`: None sends none (the API's default, as the release did). `mup_sample`: how many MUP summaries
    are judged (the release's 100, drawn with random.seed(42); None: all). `keep_rating_one`: a rating of 1 counts
    (the release's batch path); False drops it, as the release's synchronous path did."""

    def __init__(self, url: str, model: str = RELEASE_JUDGE_MODEL, api_key: str | None = None, *,
                 timeout: float = 120.0, max_retries: int = 2, max_tokens: int = 1024, workers: int = 8,
                 temperature: float | None = None, mup_sample: int | None = RELEASE_MUP_SAMPLE,
                 keep_rating_one: bool = True):
        if not url or not model:
            raise ValueError("Judge needs both a URL (SCIRIFF_JUDGE_URL / --judge_url) and a model name "
                             "(SCIRIFF_JUDGE_MODEL / --judge_model)")
        self.endpoint = chat_endpoint(url)
        self.model, self.api_key = model, api_key
        self.timeout, self.max_retries, self.max_tokens, self.workers = timeout, max_retries, max_tokens, workers
        self.temperature, self.mup_sample, self.keep_rating_one = temperature, mup_sample, keep_rating_one
        self.errors = 0  # calls of the last rate_all that failed (unreachable, HTTP errors, unusable answers)
        self._warned = threading.Event()

    def __repr__(self):
        return f"Judge({self.endpoint!r}, model={self.model!r})"  # never shows the key

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

    def rate_all(self, prompts: list[str]) -> list[int | None]:
        """A 1-5 rating per prompt (None where the call failed or no rating could be read)."""
        errors = []

        def rate(prompt):
            try:
                return extract_rating(self.complete(prompt))
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
    """A Judge from the arguments, falling back to SCIRIFF_JUDGE_* (SCIRIFF_JUDGE_TEMPERATURE too); None when no URL
    is set. The model defaults to the release's; `settings` are Judge's (temperature, mup_sample, keep_rating_one)."""
    url = url or os.environ.get("SCIRIFF_JUDGE_URL")
    model = model or os.environ.get("SCIRIFF_JUDGE_MODEL") or RELEASE_JUDGE_MODEL
    api_key = api_key or os.environ.get("SCIRIFF_JUDGE_API_KEY")
    if not url:
        return None
    if settings.get("temperature") is None and os.environ.get("SCIRIFF_JUDGE_TEMPERATURE"):
        settings["temperature"] = float(os.environ["SCIRIFF_JUDGE_TEMPERATURE"])
    return Judge(url, model, api_key, **{k: v for k, v in settings.items() if v is not None or k == "mup_sample"})


def extract_rating(text: str) -> int | None:
    """The integer after the last "Rating:" or "Decision:" if it is 1-5, else None."""
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
    """Judge prompt rating a Qasper answer against the reference (title, question, evidence as context)."""
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
    """Judge prompt rating a MUP paper summary against the reference summary."""
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
