"""A run as pictures (issue 26, point 5): `sciriff-jax report MODEL_DIR`, and the end of every training run, write
PNG plots and one HTML page showing them with the run's config and summary. The demo run with decoding evals over
steps is rendered in tests/test_quiet.py (one real demo serves both); here a real tiny run."""
import html.parser
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.tiny_run import finished_tiny_run

SCRIPT = os.path.join(os.path.dirname(sys.executable), "sciriff-jax")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.headings, self._in_heading = [], [], False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        self._in_heading = tag in ("h1", "h2")

    def handle_data(self, data):
        if self._in_heading:
            self.headings.append(data)
            self._in_heading = False


def check_report(model_dir) -> _Page:
    """The report's page parses, every image it shows is a PNG beside it, and (where a headless browser is
    installed) the browser renders it; returns the parsed page."""
    report = pathlib.Path(model_dir) / "report"
    page = _Page()
    page.feed((report / "index.html").read_text())
    assert page.images, "the page shows no picture"
    for src in page.images:
        assert (report / src).read_bytes().startswith(PNG_MAGIC), src
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser:  # rarely installed here; where it is, the page must render with its pictures
        dom = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", "--dump-dom",
                              (report / "index.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
        assert dom.count("<img") == len(page.images)
    return page


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return finished_tiny_run(tmp_path_factory)


def test_a_finished_training_run_writes_its_report(tiny_run):
    page = check_report(tiny_run)
    assert {"loss.png", "learning_rate.png", "grad_norm.png", "tokens_per_s.png"} <= set(page.images)
    assert "Summary (train_summary.json)" in page.headings and "Config (operative_config.gin)" in page.headings
    assert (tiny_run / "report" / "overview.png").read_bytes().startswith(PNG_MAGIC)
    text = (tiny_run / "report" / "index.html").read_text()
    assert "first_loss" in text and "TRAIN_STEPS = 2" in text and "TrainConfig.train_steps = %TRAIN_STEPS" in text


@pytest.mark.skipif(not os.path.exists(SCRIPT), reason="sciriff-jax is not installed (pip install -e .)")
def test_the_report_command_writes_it_again_and_says_where(tiny_run):
    shutil.rmtree(tiny_run / "report")
    done = subprocess.run([SCRIPT, "report", str(tiny_run)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"wrote {tiny_run / 'report' / 'index.html'}"
    check_report(tiny_run)


def test_a_folder_that_is_no_run_is_one_error_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sciriff_jax.run.cli", "report", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {tmp_path}: no metrics.jsonl or train_summary.json; "
                                                "`sciriff-jax report` takes the MODEL_DIR of a training run"]


def test_a_report_that_cannot_be_written_is_said_and_does_not_fail_the_finished_run(tmp_path, capsys):
    from sciriff_jax.run import main

    (tmp_path / "train_summary.json").write_text('{"final_step": 2}')
    (tmp_path / "report").write_text("a file where the report folder goes")
    main.write_run_report({"train": {"model_dir": str(tmp_path)}})  # returns: the run's exit status stays 0
    err = capsys.readouterr().err
    assert err.startswith("[sciriff-jax] the run's report was not written (") and str(tmp_path / "report") in err
    assert f"`sciriff-jax report {tmp_path}` writes it" in err
