"""The vocabulary: trained once from the sample (lazily, cached atomically) or loaded from a path."""
import os

import pytest

from seqio_tasks import vocab as vocab_lib


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory):
    """A private cache dir, so this module really trains the sample vocabulary once."""
    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get(vocab_lib.CACHE_ENV)
    os.environ[vocab_lib.CACHE_ENV] = str(cache)
    yield cache
    if old is None:
        os.environ.pop(vocab_lib.CACHE_ENV)
    else:
        os.environ[vocab_lib.CACHE_ENV] = old


@pytest.fixture(scope="module")
def trained(fresh_cache):
    v = vocab_lib.get_vocabulary()
    v.load_model()
    return v


def test_creating_the_sample_vocabulary_does_not_train(fresh_cache, monkeypatch):
    monkeypatch.delenv(vocab_lib.VOCAB_ENV, raising=False)
    path = vocab_lib.sample_vocab_path()
    if path.exists():
        pytest.skip("already trained by another test in this module")
    vocab_lib.get_vocabulary()
    assert not path.exists()


def test_sample_vocabulary_has_the_declared_special_ids(trained):
    assert trained.vocab_size == vocab_lib.TRAINER_SETTINGS["vocab_size"]
    assert (trained.pad_id, trained.eos_id, trained.unk_id) == (0, 1, 2)
    assert trained.tokenizer.bos_id() == -1


def test_chat_markers_are_single_tokens(trained):
    for marker in vocab_lib.CHAT_MARKERS:
        pieces = [trained.tokenizer.id_to_piece(i) for i in trained.encode(marker)]
        assert marker in pieces


def test_text_round_trips_including_newlines_and_unseen_characters(trained):
    text = '<|user|>\nExtract "Method" entities.\n\n<|assistant|>\n{"Method": ["CRF"]} café 中'
    assert trained.decode(trained.encode(text)) == text


def test_second_use_reuses_the_cached_file_without_training(trained, capsys):
    path = vocab_lib.sample_vocab_path()
    mtime = path.stat().st_mtime_ns
    again = vocab_lib.get_vocabulary()
    assert again.encode("scientific claim") == trained.encode("scientific claim")
    assert path.stat().st_mtime_ns == mtime
    assert "training" not in capsys.readouterr().out


def test_explicit_path_and_env_var_load_that_model(trained, monkeypatch):
    path = str(vocab_lib.sample_vocab_path())
    assert vocab_lib.get_vocabulary(path).encode("abstract") == trained.encode("abstract")
    monkeypatch.setenv(vocab_lib.VOCAB_ENV, path)
    assert vocab_lib.get_vocabulary().sentencepiece_model_file == path


def test_missing_vocabulary_names_the_path(tmp_path):
    missing = tmp_path / "nope.model"
    with pytest.raises(FileNotFoundError, match="nope.model"):
        vocab_lib.get_vocabulary(str(missing))


def test_corrupt_vocabulary_names_the_path(tmp_path):
    bad = tmp_path / "garbage.model"
    bad.write_bytes(b"this is not a sentencepiece model")
    with pytest.raises(ValueError, match="garbage.model"):
        vocab_lib.get_vocabulary(str(bad))
