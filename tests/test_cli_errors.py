"""Every CLI error a user can hit ends in one `error:` line and exit 2, never a traceback (but with --debug), and
never hangs: the command as a user types it, its exit code and its message."""
import errno
import os
import subprocess
import sys
import textwrap

import pytest

from sciriff_jax.run import cli
from sciriff_jax.run import main as main_lib
from sciriff_jax.train import run_log, setup

DEMO = "--gin_file=gin_configs/runs/demo.gin"
QUICK = ["--gin.TRAIN_STEPS=2", "--gin.EVAL_AT_START=False", "--mode=train"]
# An error raised inside the training step, after the input stream started flowing.
STEP_FAILS = textwrap.dedent("""
    import sys
    from sciriff_jax.train import finetune

    def failing_step(step, vocab_size):
        def step_fn(params, opt_state, batch):
            raise RuntimeError("the step failed on purpose")
        return step_fn

    finetune._check_vocab = failing_step
    from sciriff_jax.run import main
    sys.exit(main.main(sys.argv[1:]))
""")


def _run(args, timeout=300):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_a_backend_the_platform_lacks_is_refused_at_start_and_the_process_exits(tmp_path):
    done = _run(["-m", "sciriff_jax.main", DEMO, f'--gin.MODEL_DIR="{tmp_path}/run"',
                 "--gin.ATTENTION_BACKEND=\"splash\"", "--gin.TRAIN_STEPS=2"])
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    (line,) = _errors(done.stderr)
    assert "'splash' runs only on tpu and this run is on cpu" in line and "'blockwise'" in line
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before the first step


def test_an_error_inside_the_step_after_batches_flowed_exits_promptly(tmp_path):
    done = _run(["-c", STEP_FAILS, DEMO, f'--gin.MODEL_DIR="{tmp_path}/run"', *QUICK], timeout=240)
    assert done.returncode == 2, done.stderr[-2000:]
    assert _errors(done.stderr) == ["error: the step failed on purpose"]
    assert "Traceback" not in done.stderr


def test_debug_shows_the_traceback(tmp_path, capsys):
    argv = [DEMO, f'--gin.MODEL_DIR="{tmp_path}/run"', '--gin.ATTENTION_BACKEND="cudnn"', *QUICK]
    assert main_lib.main(argv) == 2
    assert "'cudnn' runs only on gpu" in capsys.readouterr().err
    with pytest.raises(setup.RunConfigError, match="cudnn"):
        main_lib.main([*argv, "--debug"])


def test_a_gin_syntax_error_names_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "broken.gin"
    path.write_text("include 'runs/demo.gin'\nTRAIN_STEPS = (3\n")
    assert main_lib.main([f"--gin_file={path}"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert str(path) in line and "line 3" in line and "EOF in multi-line statement" in line


def test_a_misspelt_mixture_gets_suggestions(tmp_path, capsys):
    argv = [DEMO, f'--gin.MODEL_DIR="{tmp_path}/run"', '--gin.MIXTURE_OR_TASK_NAME="sciriff_sampel"', *QUICK]
    assert main_lib.main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "unknown SeqIO task or mixture 'sciriff_sampel'; did you mean sciriff_sample" in line


def test_a_model_dir_that_cannot_be_made_names_the_path_and_the_os_error(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    assert main_lib.main([DEMO, f'--gin.MODEL_DIR="{tmp_path}/a_file/run"', *QUICK]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and f"{tmp_path}/a_file" in line and "Not a directory" in line


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_disk_full_read_only_or_forbidden_is_one_line_with_the_path(tmp_path, capsys, monkeypatch, code):
    def fails(model_dir, text):
        raise OSError(code, os.strerror(code), f"{model_dir}/config.gin")

    monkeypatch.setattr(run_log, "save_operative_config", fails)
    assert main_lib.main([DEMO, f'--gin.MODEL_DIR="{tmp_path}/run"', *QUICK]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == f"error: {tmp_path}/run/config.gin: {errno.errorcode[code]}: {os.strerror(code)}"


def test_a_subcommand_error_is_one_line_and_debug_gives_the_traceback(tmp_path, capsys, monkeypatch):
    def broken(argv):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out"))

    monkeypatch.setitem(cli.TOOLS, "verify", broken)
    assert cli.main(["verify", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'out'}: ENOSPC: No space left on device\n"
    with pytest.raises(OSError):
        cli.main(["verify", str(tmp_path), "--debug"])


def test_an_unexpected_error_says_where_to_see_more(capsys, monkeypatch):
    def broken(argv):
        raise TypeError("bad\noperand")

    monkeypatch.setitem(cli.TOOLS, "verify", broken)
    assert cli.main(["verify", "x"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: TypeError: bad", "(an unexpected error: rerun with --debug for the traceback)"]
