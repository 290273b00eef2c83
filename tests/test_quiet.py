"""Quiet start-up (issue 26, point 1): a command's stderr holds nothing from TensorFlow, absl, XLA or TFDS that a
user cannot act on; --verbose / SCIRIFF_JAX_VERBOSE=1 brings it all back."""
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from sciriff_jax.run import quiet
from tests.test_report import check_report

SCRIPT = os.path.join(os.path.dirname(sys.executable), "sciriff-jax")
needs_script = pytest.mark.skipif(not os.path.exists(SCRIPT), reason="sciriff-jax is not installed (pip install -e .)")

# A line from one of those libraries, recognised independently of quiet.is_noise: absl's log format (C++ and
# Python), TensorFlow's own, their start-up words, TFDS's banner and progress bars.
LIBRARY_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ |^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] |"
                          r"absl::InitializeLog|oneDNN|cuInit|cuda drivers|TensorFlow binary|"
                          r"Downloading and preparing dataset|downloaded and prepared to|Generating splits|"
                          r"Generating \w+ examples|Shuffling .*tfrecord")

# Real lines this machine's TensorFlow 2.21 / XLA / tf.data printed before quiet existed.
REAL_NOISE = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1796538477.984819    9072 port.cc:153] oneDNN custom operations are on. You may see slightly "
    b"different numerical results due to floating-point round-off errors from different computation orders.\n",
    b"I0000 00:00:1796538477.986099    9072 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will "
    b"not be used.\n",
    b"E0000 00:00:1796538494.269797    9072 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed "
    b"call to cuInit: UNKNOWN ERROR (303)\n",
    b"W0000 00:00:1796538871.605893   14534 cache_dataset_ops.cc:912] The calling iterator did not fully read the "
    b"dataset being cached. In order to avoid unexpected truncation of the dataset, the partially cached contents "
    b"of the dataset  will be discarded.\n",
    b"2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not find cuda drivers "
    b"on your machine, GPU will not be used.\n",
]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", quiet.VERBOSE_ENV)}
    return {**env, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1", **extra}


def _library_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if LIBRARY_LINE.search(line)]


@pytest.mark.parametrize("line", REAL_NOISE)
def test_the_libraries_start_up_lines_are_noise(line):
    assert quiet.is_noise(line)


@pytest.mark.parametrize("line", [
    b"error: sciriff_4096_discomat_te: no 'validation' instances\n",
    b"Traceback (most recent call last):\n",
    b"E0000 00:00:1796538494.269797    9072 some_op.cc:52] INTERNAL: out of memory allocating 1.5GiB\n",
    b"W1206 06:31:01.123456  1234 checkpoint_manager.py:12] could not remove step 3: permission denied\n",
])
def test_our_errors_and_their_other_warnings_pass(line):
    assert not quiet.is_noise(line)


def test_the_data_layer_reads_the_same_variable():
    from seqio_tasks import sources

    assert sources.VERBOSE_ENV == quiet.VERBOSE_ENV


def _filtered(code: str, **env) -> subprocess.CompletedProcess:
    prog = f"from sciriff_jax.run import quiet\nquiet.start()\n{code}"
    return subprocess.run([sys.executable, "-c", prog], capture_output=True, timeout=120, env=_env(**env))


def test_the_filter_keeps_order_partial_lines_and_a_crash_s_last_words():
    lines = b"".join(REAL_NOISE)
    done = _filtered(f"import os\nos.write(2, {lines!r} + b'first\\n')\nos.write(2, b'no newline')\n"
                     "os.abort()")  # SIGABRT: the filter outlives the command and still writes what it got
    assert done.returncode != 0
    assert done.stderr == b"first\nno newline"


def test_verbose_variable_leaves_stderr_untouched():
    lines = b"".join(REAL_NOISE)
    done = _filtered(f"import os\nos.write(2, {lines!r})", **{quiet.VERBOSE_ENV: "1"})
    assert done.stderr == lines


@needs_script
def test_help_prints_no_library_line():
    done = subprocess.run([SCRIPT, "--help"], capture_output=True, text=True, timeout=120, env=_env())
    assert done.returncode == 0 and "--verbose" in done.stdout
    assert _library_lines(done.stderr) == [] and done.stderr == ""


@needs_script
@pytest.mark.parametrize("verbose", [False, True])
def test_a_command_that_loads_tensorflow_is_quiet_unless_verbose(verbose):
    done = subprocess.run([SCRIPT, "data", "show", "sciriff_sample_ner", "-n", "1", *(["--verbose"] * verbose)],
                          capture_output=True, text=True, timeout=300, env=_env(), cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "=== " in done.stdout
    if verbose:  # TensorFlow's import banner is back for debugging
        assert any("absl::InitializeLog" in line or "cuda" in line for line in _library_lines(done.stderr))
    else:
        assert _library_lines(done.stderr) == [], done.stderr[-3000:]


@needs_script
def test_a_two_step_demo_prints_no_library_line_and_ends_with_its_report(tmp_path):
    model_dir = tmp_path / "demo"
    done = subprocess.run([SCRIPT, "demo", f'--gin.MODEL_DIR="{model_dir}"', "--gin.TRAIN_STEPS=2",
                           "--gin.CHECKPOINT_PERIOD=2", "--gin.LOG_EVERY=1", "--gin.MAX_EXAMPLES=1",
                           "--gin.MAX_NEW_TOKENS=16", "--gin.EVAL_EVERY=2"], capture_output=True, text=True,
                          timeout=600, env=_env(), cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "=== summary ===" in done.stdout
    assert _library_lines(done.stderr) == [], done.stderr[-3000:]
    # Issue 26, point 5 on the demo itself: its decoding evals over steps (0 and 2) and the eval after training.
    assert f"[sciriff-jax] report: {model_dir / 'report' / 'index.html'}" in done.stdout
    page = check_report(model_dir)
    assert "decode_eval.png" in page.images and "loss.png" in page.images
    assert {"Decoding eval at step 0", "Decoding eval at step 2", "Eval sciriff_sample"} <= set(page.headings)
