"""LM judge over an OpenAI-compatible endpoint, tested against a local HTTP server the test starts."""
import http.server
import json
import threading

import pytest

from sciriff_jax.scoring import judge as judge_lib
from sciriff_jax.scoring import metrics


class FakeJudgeServer:
    """A chat-completions server on 127.0.0.1 that rates 5 when the model answer mentions BERT, else 1."""

    def __init__(self, status=200, reply=None):
        """`reply`: prompt -> the judge's text (default: the BERT rule, answered "Rating: N")."""
        self.requests = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if status != 200:
                    self.send_response(status)
                    self.end_headers()
                    return
                prompt = body["messages"][0]["content"]
                tail = prompt.rsplit("Model", 1)[-1]
                text = reply(prompt) if reply else f"Explanation: ok.\nRating: {5 if 'BERT' in tail else 1}"
                data = {"choices": [{"message": {"role": "assistant", "content": text}}]}
                data = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


QASPER_INPUT = "Paper:\n" + "-" * 40 + "\nA Paper Title\n\nBody.\n\nQuestion: What do they compare to?\n"
REF = json.dumps({"answer": "BERT", "evidence": ["We compare against BERT."]})


def test_qasper_judge_rates_answers_and_missing_answers_get_the_lowest_rating():
    examples = [{"input": QASPER_INPUT, "output": REF, "prediction": '{"answer": "BERT", "evidence": []}'},
                {"input": QASPER_INPUT, "output": REF, "prediction": '{"answer": "GPT-2", "evidence": []}'},
                {"input": QASPER_INPUT, "output": REF, "prediction": "no json"}]
    with FakeJudgeServer() as server:
        judge = judge_lib.Judge(server.url, "judge-model", api_key="k123", timeout=5, max_retries=0)
        res = metrics.score("qasper_abstractive_qa", examples, judge=judge)
    # ratings 5, 1 and 1 (no answer: no call) -> mean 7/3 -> (7/3 - 1) / 4
    assert res["headline"]["lm_judge_answer"] == pytest.approx((7 / 3 - 1) / 4)
    assert len(server.requests) == 2 and res["judge"]["n_called"] == 2
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer k123"
    assert request["body"]["model"] == "judge-model"
    prompt = request["body"]["messages"][0]["content"]
    assert "Title: A Paper Title" in prompt and "Question: What do they compare to?" in prompt


def test_lenient_mup_judge_keeps_ratings_of_one():
    examples = [{"input": "Paper title:\nT\nPaper body:\nB", "output": "A summary.", "prediction": "About BERT."},
                {"input": "Paper title:\nT\nPaper body:\nB", "output": "A summary.", "prediction": "Unrelated."}]
    with FakeJudgeServer() as server:
        res = metrics.score("mup_single_document_summarization", examples, judge=judge_lib.Judge(server.url, "m", max_retries=0, protocol="lenient"))
    assert res["headline"]["lm_judge_reference"] == pytest.approx(0.5)  # ratings 5 and 1, not 5 alone
    assert res["judge"]["n_rated"] == 2


def test_failing_judge_reports_failure_not_zero():
    examples = [{"output": "A summary.", "prediction": "About BERT."}]
    with FakeJudgeServer(status=500) as server:
        res = metrics.score("mup_single_document_summarization", examples,
                            judge=judge_lib.Judge(server.url, "m", timeout=5, max_retries=0))
    assert res["headline"]["lm_judge_reference"] is None and res["judge"]["status"] == "failed"
    assert len(server.requests) == 1


def test_without_a_judge_judge_metrics_are_skipped_and_the_rest_is_scored(monkeypatch):
    for var in ("SCIRIFF_JUDGE_URL", "SCIRIFF_JUDGE_MODEL", "SCIRIFF_JUDGE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    assert judge_lib.judge_from_env() is None
    res = metrics.score("qasper_abstractive_qa", [{"output": REF, "prediction": REF}], judge=judge_lib.judge_from_env())
    assert res["headline"] == {"lm_judge_answer": "skipped", "f1_evidence": 1.0}


def test_judge_is_configured_from_the_environment(monkeypatch):
    monkeypatch.setenv("SCIRIFF_JUDGE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("SCIRIFF_JUDGE_MODEL", "gpt-x")
    monkeypatch.setenv("SCIRIFF_JUDGE_API_KEY", "secret")
    judge = judge_lib.judge_from_env()
    assert judge.endpoint == "http://127.0.0.1:9/v1/chat/completions" and judge.model == "gpt-x"
    assert "secret" not in repr(judge)


def test_lenient_rating_is_read_from_the_last_rating_line():
    assert judge_lib.extract_rating("Explanation: a 3 would be unfair.\nRating: 4") == 4
    assert judge_lib.extract_rating("Decision: 1") == 1
    assert judge_lib.extract_rating("Rating: 9") is None and judge_lib.extract_rating("no rating") is None


def test_an_unreachable_judge_warns_once_on_stderr_and_score_counts_the_failed_judgments(tmp_path, capsys):
    import socket

    from sciriff_jax.scoring import score

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rows = [{"_instance_id": f"mup_single_document_summarization:validation:{i}", "input": "Paper title:\nT",
             "output": "A summary.", "prediction": "About BERT."} for i in range(3)]
    path = tmp_path / "mup.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    judge = judge_lib.Judge(f"http://127.0.0.1:{port}", "m", timeout=2, max_retries=0)
    assert score.main(["--task", "mup_single_document_summarization", "--predictions", str(path),
                       "--judge_url", judge.endpoint, "--judge_model", "m"]) == 0
    out, err = capsys.readouterr()
    assert err.count(f"warning: judge at {judge.endpoint}") == 1  # the first failure, not one per prompt
    assert "3 of 3 judgments failed (3 judge calls failed" in err
    verdict = json.loads(out)["judge"]
    assert verdict["status"] == "failed" and verdict["n_failed"] == 3 and verdict["n_errors"] == 3


def test_release_judge_settings_are_the_default_and_configurable(monkeypatch):
    for var in ("SCIRIFF_JUDGE_MODEL", "SCIRIFF_JUDGE_TEMPERATURE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SCIRIFF_JUDGE_URL", "http://127.0.0.1:9/v1")
    judge = judge_lib.judge_from_env()
    assert judge.model == "gpt-4o-2024-08-06" and judge.temperature is None  # what the release's code sends
    assert judge.mup_sample == 100 and not judge.keep_rating_one  # the release's synchronous path drops 1s
    assert judge_lib.judge_from_env(temperature=0.0, mup_sample=None).temperature == 0.0


def test_lenient_mup_is_judged_on_the_releases_seeded_sample_and_rating_one_handling_is_a_choice():
    import random

    examples = [{"input": "Paper title:\nT\nPaper body:\nB", "output": "A summary.", "prediction": f"About BERT {i}."
                 if i % 2 else "Unrelated."} for i in range(6)]
    with FakeJudgeServer() as server:
        res = metrics.score("mup_single_document_summarization", examples,
                            judge=judge_lib.Judge(server.url, "m", max_retries=0, mup_sample=3, protocol="lenient"))
        random.seed(42)
        chosen = sorted(random.sample(range(6), 3))  # the release: random.seed(42); sorted(random.sample(...))
        assert len(server.requests) == 3 and res["judge"]["n_judged"] == 3
        sent = [r["body"]["messages"][0]["content"] for r in server.requests]
        assert sorted(sent) == sorted(judge_lib.mup_prompt(examples[i]["input"], "A summary.", examples[i]["prediction"])
                                      for i in chosen)
        assert "temperature" not in server.requests[0]["body"]
        dropped = metrics.score("mup_single_document_summarization", examples[:2],
                                judge=judge_lib.Judge(server.url, "m", max_retries=0, keep_rating_one=False,
                                                                    protocol="lenient"))
    assert dropped["headline"]["lm_judge_reference"] == pytest.approx(1.0)  # the 1 is dropped, the 5 stays
