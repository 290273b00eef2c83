"""`data stats` and `data show`: per-task counts with over-long instances, examples with the loss mask."""
import io

import seqio_tasks
from sciriff_jax.chat import render
from seqio_tasks import tools


def test_data_show_marks_exactly_the_answer_and_eos_as_trained():
    buf = io.StringIO()
    tools.data_show("sample_classification", n=1, split="validation", out=buf)
    (ex,) = seqio_tasks.raw_examples("sample_classification", "validation", max_examples=1)
    text = buf.getvalue()
    assert ex["_instance_id"] in text
    assert text.count("[[") == 1 and f"{ex['output']}</s>]]" in text
    assert "<|assistant|>\n[[" in text


def test_data_stats_counts_instances_and_overlong_per_task():
    vocab = seqio_tasks.get_vocabulary()
    rows = seqio_tasks.raw_examples("sample_summarization", "validation")
    lengths = [len(render.tokenize_messages(render.single_turn(r["input"], r["output"]), vocab)[0]) for r in rows]
    limit = sorted(lengths)[len(lengths) // 2]
    (stats,) = tools.data_stats("sciriff_sample_summarization", "validation", length=limit, pack_rows=2,
                                out=io.StringIO())
    assert stats["instances"] == len(rows)
    assert stats["truncated"] == sum(n > limit for n in lengths) > 0
    assert stats["tokens"] == sum(min(n, limit) for n in lengths)
    assert 0 < stats["fill"] <= 1


def test_data_stats_exits_non_zero_naming_the_file_of_an_unavailable_source(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "tulu.jsonl"
    monkeypatch.setenv("SCIRIFF_JAX_TULU_PATH", str(missing))
    monkeypatch.setattr(seqio_tasks.SETTINGS, "tulu_path", None)  # another test may have configured one
    seqio_tasks.register(prefix="toolsvocab", vocabulary=seqio_tasks.get_vocabulary())  # chat data needs a vocabulary
    assert tools.main(["stats", "toolsvocab_tulu_v2_chat", "--pack_rows", "0"]) == 1
    out, err = capsys.readouterr()
    assert "unavailable" in out and f"error: toolsvocab_tulu_v2_chat: chat data not found at '{missing}'" in err


def test_data_show_prints_the_trained_spans_of_a_hugging_face_vocabulary(tmp_path):
    from seqio_tasks.hf_vocab import HFTokenizerVocabulary
    from tests import hf_dirs

    vocab = HFTokenizerVocabulary(hf_dirs.byte_bpe_tokenizer(tmp_path))
    chat = render.single_turn("List the genes.", "BRCA1")
    ids, mask = render.tokenize_messages(chat, vocab, "model")
    text = tools.format_masked(ids, mask, vocab)
    assert "[[BRCA1<|im_end|>" in text and "List the genes." in text
