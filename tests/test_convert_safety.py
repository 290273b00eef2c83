"""`convert` and `export` never write over what they did not make: not their input, a parent of it, a MODEL_DIR or a
non-empty directory (exit 2, nothing touched); `--overwrite` replaces only a previous output of the same command;
an interrupted write leaves the old directory as it was. `convert` checks the tokenizer against the embedding."""
import json
import shutil

import pytest

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sciriff_jax.io import checkpoint, convert, hf, tokenizer_files  # noqa: E402
from sciriff_jax.run import cli  # noqa: E402
from tests import hf_dirs  # noqa: E402
from tests.test_paths import bucket  # noqa: E402, F401  (the in-memory s3:// fixture)


def _hf_dir(path, vocab_size=512):
    import torch

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    hf_dirs.byte_bpe_tokenizer(path)  # 400 tokens
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny HF directory and its conversion (read only: tests copy what they change)."""
    root = tmp_path_factory.mktemp("models")
    _hf_dir(root / "hf")
    assert cli.main(["convert", str(root / "hf"), str(root / "ckpt")]) == 0
    return root


def _snapshot(path):
    """Every file under `path` with its bytes: what "nothing changed" compares."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _training_run(path):
    (path / "checkpoints" / "5").mkdir(parents=True)
    (path / "checkpoints" / "5" / "params").write_text("weights")
    (path / "metrics.jsonl").write_text('{"step": 5, "loss": 1.0}\n')
    return path


def _refused(argv, capsys, *phrases):
    capsys.readouterr()  # what building the test's directories printed
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) <= 2, err
    for phrase in phrases:
        assert phrase in err, err


def test_convert_into_its_own_input_is_refused_and_the_source_model_is_intact(models, tmp_path, capsys):
    src = shutil.copytree(models / "hf", tmp_path / "hf")
    before = _snapshot(src)
    _refused(["convert", str(src), str(src)], capsys, f"the output {src} is the input {src}", "does not exist")
    assert _snapshot(src) == before


def test_convert_into_the_parent_of_its_input_is_refused_and_the_sibling_is_intact(models, tmp_path, capsys):
    src = shutil.copytree(models / "hf", tmp_path / "p" / "smol")
    sibling = _training_run(tmp_path / "p" / "other")
    before, sibling_before = _snapshot(src), _snapshot(sibling)
    _refused(["convert", str(src), str(tmp_path / "p")], capsys, f"the output {tmp_path / 'p'} holds the input")
    assert _snapshot(src) == before and _snapshot(sibling) == sibling_before


def test_convert_into_a_training_run_is_refused_and_the_run_is_intact(models, tmp_path, capsys):
    run = _training_run(tmp_path / "myrun")
    before = _snapshot(run)
    _refused(["convert", str(models / "hf"), str(run)], capsys, f"the output {run} is a MODEL_DIR",
             "checkpoints/, metrics.jsonl")
    _refused(["convert", str(models / "hf"), str(run), "--overwrite"], capsys, "is a MODEL_DIR")
    _refused(["convert", str(models / "hf"), str(run / "checkpoints" / "7")], capsys, f"inside the MODEL_DIR {run}")
    assert _snapshot(run) == before


def test_convert_into_a_non_empty_directory_is_refused_even_with_overwrite(models, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    _refused(["convert", str(models / "hf"), str(tmp_path / "out")], capsys, "is not empty (notes.txt)")
    _refused(["convert", str(models / "hf"), str(tmp_path / "out"), "--overwrite"], capsys,
             "--overwrite replaces only a previous `convert` output")
    assert _snapshot(tmp_path / "out") == {"notes.txt": b"mine"}


def test_convert_writes_into_an_empty_directory_and_leaves_no_temporary_sibling(models, tmp_path):
    (tmp_path / "out").mkdir()
    assert cli.main(["convert", str(models / "hf"), str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert checkpoint.verify_step(tmp_path / "out") is None  # the checksums cover tokenizer and marker
    params, _ = checkpoint.load_params(tmp_path / "out")
    assert params is not None


def test_a_previous_convert_output_needs_overwrite_and_is_then_replaced(models, tmp_path, capsys):
    out = shutil.copytree(models / "ckpt", tmp_path / "ckpt")
    before = _snapshot(out)
    _refused(["convert", str(models / "hf"), str(out)], capsys, "holds a previous `convert` output",
             "pass --overwrite")
    assert _snapshot(out) == before
    assert cli.main(["convert", str(models / "hf"), str(out), "--overwrite", "--dtype", "bfloat16"]) == 0
    _, config = checkpoint.load_params(out)
    assert config.param_dtype == "bfloat16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_an_interrupted_convert_leaves_the_previous_output_as_it_was(models, tmp_path, monkeypatch):
    out = shutil.copytree(models / "ckpt", tmp_path / "ckpt")
    before = _snapshot(out)
    real = tokenizer_files.write

    def write_then_interrupt(*args, **kwargs):  # the weights are written, the tokenizer half-way
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(tokenizer_files, "write", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["convert", str(models / "hf"), str(out), "--overwrite"])
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no partial sibling left behind


def test_a_tokenizer_larger_than_the_embedding_is_refused_by_convert(tmp_path, capsys):
    src = _hf_dir(tmp_path / "hf", vocab_size=101)  # a 400-token tokenizer, 101 embedding rows
    _refused(["convert", str(src), str(tmp_path / "ckpt")], capsys, "tokens but the model",
             "has 101 embedding rows",
             f"Put the tokenizer this model was trained with into {src}.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_export_into_an_existing_hugging_face_directory_is_refused_and_it_is_intact(models, tmp_path, capsys):
    other = shutil.copytree(models / "hf", tmp_path / "other")
    before = _snapshot(other)
    _refused(["export", str(models / "ckpt"), str(other)], capsys, f"the output {other} is not empty")
    assert _snapshot(other) == before


def test_export_into_its_input_or_a_model_dir_is_refused(models, tmp_path, capsys):
    run = _training_run(tmp_path / "run")
    ckpt = shutil.copytree(models / "ckpt", tmp_path / "ckpt")
    before, run_before = _snapshot(ckpt), _snapshot(run)
    _refused(["export", str(ckpt), str(ckpt)], capsys, "is the input")
    _refused(["export", str(ckpt), str(ckpt / "hf")], capsys, "is inside the input")
    _refused(["export", str(ckpt), str(run / "export")], capsys, f"inside the MODEL_DIR {run}")
    assert _snapshot(ckpt) == before and _snapshot(run) == run_before


def test_a_previous_export_is_replaced_with_overwrite_and_an_interrupted_one_leaves_it(models, tmp_path, capsys,
                                                                                        monkeypatch):
    out = tmp_path / "export"
    assert cli.main(["export", str(models / "ckpt"), str(out)]) == 0
    assert json.loads((out / convert.MARKER).read_text())["command"] == "export"
    assert transformers.AutoTokenizer.from_pretrained(out) is not None
    before = _snapshot(out)
    _refused(["export", str(models / "ckpt"), str(out)], capsys, "holds a previous `export` output", "--overwrite")
    real = hf.write_hf

    def write_then_interrupt(params, config, hf_dir, **kwargs):
        real(params, config, hf_dir, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(hf, "write_hf", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["export", str(models / "ckpt"), str(out), "--overwrite"])
    assert _snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    monkeypatch.undo()
    (out / "config.json").write_text("{}")  # an old file the new export replaces
    assert cli.main(["export", str(models / "ckpt"), str(out), "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 512


def test_a_url_output_is_checked_the_same_way(bucket):
    from etils import epath

    assert convert.check_output(bucket, command="convert", source="/models/hf") is False  # does not exist
    epath.Path(bucket, "metrics.jsonl").write_text("{}\n")
    with pytest.raises(convert.OutputPathError, match=f"the output {bucket} is a MODEL_DIR"):
        convert.check_output(bucket, command="convert", source="/models/hf")
    with pytest.raises(convert.OutputPathError, match=f"inside the MODEL_DIR {bucket}"):
        convert.check_output(bucket + "/ckpt", command="convert", source="/models/hf")
    with pytest.raises(convert.OutputPathError, match="holds the input"):
        convert.check_output("s3://bucket", command="export", source=bucket + "/")
