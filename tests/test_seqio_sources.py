"""The SciRIFF release source: TFDS builder over the hub layout, per-task slicing, bad-input errors."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import seqio

import seqio_tasks
from seqio_tasks import sources


@pytest.fixture(autouse=True, scope="module")
def private_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("SCIRIFF_JAX_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


def _row(task, split, i, text="Abstract: graphs."):
    return {"input": f"{text} #{i}", "output": json.dumps({"Method": [f"m{i}"]}), "_instance_id": f"{task}:{split}:{i}",
            "metadata": {"domains": ["artificial_intelligence"], "input_context": "paragraph",
                         "output_context": "json", "source_type": "single_source",
                         "task_family": "ie.named_entity_recognition"}}


def _write_release(root, config="8192"):
    """A two-task release in the hub's layout: train as two parquet shards, validation as JSONL."""
    (root / config).mkdir(parents=True)
    rows = [_row("scierc_ner" if i % 2 else "biored_ner", "train", i) for i in range(10)]
    pq.write_table(pa.Table.from_pylist(rows[:6]), root / config / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[6:]), root / config / "train-00001-of-00002.parquet")
    with open(root / config / "validation-00000-of-00001.jsonl", "w") as f:
        for i in range(3):
            f.write(json.dumps(_row("scierc_ner", "validation", i)) + "\n")
    return rows


def test_hub_layout_is_read_into_one_contiguous_range_per_task(shared_sciriff):
    root = str(shared_sciriff / "hub_layout")
    ranges = sources.task_ranges(4096, "validation", root)
    expected = {}
    for r in pq.read_table(shared_sciriff / "hub_layout/4096/validation-00000-of-00001.parquet").to_pylist():
        expected[sources.task_of(r["_instance_id"])] = expected.get(sources.task_of(r["_instance_id"]), 0) + 1
    assert {t: b - a for t, (a, b) in ranges.items()} == expected
    assert sorted(ranges.values()) == sorted(ranges.values(), key=lambda r: r[0])


def test_task_source_yields_the_release_fields_of_that_task_in_order(shared_sciriff):
    src = sources.SciriffTaskSource(4096, "scierc_ner", source_dir=str(shared_sciriff / "hub_layout"))
    got = list(src.get_dataset("validation", shuffle=False).as_numpy_iterator())
    want = [json.loads(line) for line in open(shared_sciriff / "eval_sample/scierc_ner.jsonl")]
    assert [g["_instance_id"].decode() for g in got] == [w["_instance_id"] for w in want]
    assert got[0]["output"].decode() == want[0]["output"]
    assert json.loads(got[0]["metadata"]) == want[0]["metadata"]


def test_parquet_shards_and_jsonl_written_by_the_test_are_loaded(tmp_path):
    rows = _write_release(tmp_path)
    src = sources.SciriffTaskSource(8192, "scierc_ner", source_dir=str(tmp_path))
    train = [x["_instance_id"].decode() for x in src.get_dataset("train", shuffle=False).as_numpy_iterator()]
    assert train == [r["_instance_id"] for r in rows if r["_instance_id"].startswith("scierc_ner")]
    assert src.num_input_examples("validation") == 3
    assert src.num_input_examples("test") == 0


def test_shards_partition_a_task_and_shuffling_is_seeded(tmp_path):
    _write_release(tmp_path)
    src = sources.SciriffTaskSource(8192, "biored_ner", source_dir=str(tmp_path))

    def ids(**kw):
        return [x["_instance_id"].decode() for x in src.get_dataset("train", **kw).as_numpy_iterator()]

    shards = [ids(shuffle=False, shard_info=seqio.ShardInfo(i, 2)) for i in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(ids(shuffle=False)) and not set(shards[0]) & set(shards[1])
    assert ids(shuffle=True, seed=3) == ids(shuffle=True, seed=3)


def test_missing_release_folder_says_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="NNNNN-of-NNNNN"):
        sources.get_builder(16384, str(tmp_path))


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "validation-00000-of-00001.jsonl"
    path.write_text(json.dumps(_row("scierc_ner", "validation", 0)) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"validation-00000-of-00001.jsonl:2"):
        sources.read_jsonl(path)


def test_missing_field_is_named(tmp_path):
    path = tmp_path / "x.jsonl"
    row = _row("scierc_ner", "validation", 0)
    del row["output"]
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"x.jsonl:1: missing field\(s\) \['output'\]"):
        sources.read_jsonl(path)


def test_chat_rows_keep_every_turn(tmp_path):
    path = tmp_path / "tulu.jsonl"
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"}, {"role": "assistant", "content": "ciao"}]
    path.write_text(json.dumps({"dataset": "oasst", "id": "a", "messages": msgs}) + "\n")
    (row,) = sources.load_chat_rows(str(path))
    assert row["messages_role"] == ["user", "assistant", "user", "assistant"]
    assert row["messages_content"] == ["hi", "hello", "bye", "ciao"]


def test_a_mixture_with_tasks_missing_from_the_local_copy_is_refused_by_name(shared_sciriff, monkeypatch):
    monkeypatch.setitem(sources.LOCAL_RELEASE, "dir", None)  # restored after the test
    seqio_tasks.configure(source_dir=str(shared_sciriff / "hub_layout"))
    seqio_tasks.register(prefix="testvocab", vocabulary=seqio_tasks.get_vocabulary())
    with pytest.raises(ValueError, match="discomat_te.*no 'validation' instances in .*hub_layout/4096/validation"):
        seqio_tasks.get_dataset("testvocab_4096_eval", "validation", {"targets": 512}, 1)


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """A hub stand-in on 127.0.0.1: the tree API and resolve/main downloads over a release written by the test."""
    import http.server
    import threading

    root = tmp_path / "hub"
    rows = _write_release(root)
    requested = []

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            requested.append(self.path)
            tree, resolve = "/api/datasets/allenai/SciRIFF/tree/main/", "/datasets/allenai/SciRIFF/resolve/main/"
            if self.path.startswith(tree):
                folder = root / self.path[len(tree):]
                body = json.dumps([{"type": "file", "path": f"{folder.name}/{f.name}"} for f in folder.iterdir()]).encode()
            elif self.path.startswith(resolve) and (root / self.path[len(resolve):]).is_file():
                body = (root / self.path[len(resolve):]).read_bytes()
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("SCIRIFF_JAX_DATA_DIR", raising=False)
    monkeypatch.setitem(sources.LOCAL_RELEASE, "dir", None)
    sources.get_builder.cache_clear()
    try:
        yield rows, requested
    finally:
        sources.get_builder.cache_clear()
        server.shutdown()
        server.server_close()


def test_without_a_local_copy_the_release_is_listed_and_downloaded_from_the_hub(local_hub):
    rows, requested = local_hub
    src = sources.SciriffTaskSource(8192, "scierc_ner")
    train = [x["_instance_id"].decode() for x in src.get_dataset("train", shuffle=False).as_numpy_iterator()]
    assert train == [r["_instance_id"] for r in rows if r["_instance_id"].startswith("scierc_ner")]
    assert any(p.endswith("/tree/main/8192") for p in requested)
    assert any(p.endswith("/8192/train-00001-of-00002.parquet") for p in requested)


def test_a_split_in_two_formats_stops_listing_its_files(tmp_path):
    _write_release(tmp_path)
    with open(tmp_path / "8192" / "train-00000-of-00001.jsonl", "w") as f:
        f.write(json.dumps(_row("scierc_ner", "train", 99)) + "\n")
    with pytest.raises(ValueError, match=r"split 'train' has files in jsonl and parquet: train-00000-of-00001.jsonl, "
                                         r"train-00000-of-00002.parquet, train-00001-of-00002.parquet"):
        sources.find_release_files(tmp_path, 8192, "train")


def test_an_incomplete_shard_set_stops_listing_what_is_there_and_missing(tmp_path):
    _write_release(tmp_path)
    (tmp_path / "8192" / "train-00001-of-00002.parquet").unlink()
    with pytest.raises(ValueError, match=r"found train-00000-of-00002.parquet; missing shard\(s\) \[1\] of 2"):
        sources.find_release_files(tmp_path, 8192, "train")
    with pytest.raises(ValueError, match="incomplete"):
        sources.get_builder(8192, str(tmp_path))


def test_empty_and_null_outputs_are_skipped_and_counted_per_task(tmp_path, capsys):
    (tmp_path / "4096").mkdir()
    rows = [_row("scierc_ner", "validation", i) for i in range(4)] + [_row("biored_ner", "validation", 0)]
    rows[1]["output"], rows[2]["output"], rows[4]["output"] = "", None, "  "
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "4096" / "validation-00000-of-00001.parquet")
    src = sources.SciriffTaskSource(4096, "scierc_ner", source_dir=str(tmp_path))
    got = [x["_instance_id"].decode() for x in src.get_dataset("validation", shuffle=False).as_numpy_iterator()]
    assert got == ["scierc_ner:validation:0", "scierc_ner:validation:3"]
    assert sources.empty_outputs(4096, "validation", str(tmp_path)) == {"scierc_ner": 2, "biored_ner": 1}
    printed = capsys.readouterr().out
    assert "scierc_ner: skipped 2 instance(s) with an empty or null output" in printed
    assert "biored_ner: skipped 1 instance(s)" in printed
