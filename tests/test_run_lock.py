"""One run per MODEL_DIR: a second run is refused by name, stale leases are taken over with a log line, a run that
lost its lease stops before writing; local disk (real processes) and an object store (fsspec's in-memory s3://)."""
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO_ROOT
from sciriff_jax.io import run_lock
from test_paths import bucket  # noqa: F401 (the in-memory s3:// fixture)

HOLD = """
import sys, time
from sciriff_jax.io import run_lock
lock = run_lock.RunLock(sys.argv[1], lease_s=float(sys.argv[2]), host=sys.argv[3] or None).acquire()
print("holding", flush=True)
time.sleep(600)
"""


def _hold_in_subprocess(model_dir, lease_s=60.0, host=""):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(model_dir), str(lease_s), host], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_a_second_run_is_refused_with_a_message_naming_the_holder(tmp_path):
    proc = _hold_in_subprocess(tmp_path)
    try:
        with pytest.raises(run_lock.RunLockedError) as err:
            run_lock.RunLock(tmp_path).acquire()
        message = str(err.value)
        assert f"pid {proc.pid}" in message and f"host {os.uname().nodename}" in message and "started 20" in message
        holder = run_lock.read_holder(tmp_path)
        assert holder["pid"] == proc.pid and not holder["released"]
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_of_a_killed_run_on_this_host_is_taken_over_with_a_log_line(tmp_path):
    proc = _hold_in_subprocess(tmp_path)
    proc.kill()  # SIGKILL: no release, the lease file stays
    proc.wait()
    logs = []
    with run_lock.RunLock(tmp_path, log=logs.append):
        assert run_lock.read_holder(tmp_path)["pid"] == os.getpid()
    (line,) = logs
    assert f"pid {proc.pid}" in line and f"process {proc.pid} is gone" in line


def test_a_lease_from_another_host_holds_until_it_expires_then_is_taken_over(tmp_path):
    proc = _hold_in_subprocess(tmp_path, lease_s=1.5, host="other-host")
    proc.kill()  # a dead process on "another host": only its lease can tell
    proc.wait()
    with pytest.raises(run_lock.RunLockedError, match="host other-host"):
        run_lock.RunLock(tmp_path).acquire()
    time.sleep(1.6)
    logs = []
    with run_lock.RunLock(tmp_path, log=logs.append):
        pass
    assert "host other-host" in logs[0] and "lease expired" in logs[0]


def test_a_live_holder_renews_its_lease_so_it_is_never_taken_over(tmp_path):
    with run_lock.RunLock(tmp_path, lease_s=0.4, host="other-host"):
        time.sleep(1.0)  # more than twice the lease: renewals keep it
        with pytest.raises(run_lock.RunLockedError, match="host other-host"):
            run_lock.RunLock(tmp_path).acquire()


def test_a_released_lock_is_taken_without_a_takeover(tmp_path):
    with run_lock.RunLock(tmp_path):
        pass
    logs = []
    with run_lock.RunLock(tmp_path, log=logs.append):
        pass
    assert logs == [] and run_lock.read_holder(tmp_path)["released"]


def test_of_many_simultaneous_contenders_exactly_one_wins(tmp_path):
    # Local disk only: fsspec's in-memory filesystem checks "xb" at open, not atomically at commit as gcsfs
    # (ifGenerationMatch=0) and s3fs (If-None-Match) do on the server.
    model_dir = tmp_path
    won, refused, start = [], [], threading.Barrier(8)

    def contend(i):
        lock = run_lock.RunLock(model_dir, host=f"host-{i}")  # distinct hosts: only the lease decides
        start.wait()
        try:
            won.append(lock.acquire())
        except run_lock.RunLockedError:
            refused.append(i)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 7
    won[0].release()


def test_an_expired_lease_on_an_object_store_is_taken_over(bucket):  # noqa: F811
    import fsspec

    dead = {"holder": "d" * 32, "host": "tpu-worker-0", "pid": 4242, "started": "2026-01-01T00:00:00+00:00",
            "renewed": time.time() - 600, "lease_s": 120.0, "released": False}
    fsspec.filesystem("s3").pipe_file(f"{bucket}/run.lock/00000001.json", json.dumps(dead).encode())
    logs = []
    with run_lock.RunLock(bucket, log=logs.append):
        assert run_lock.read_holder(bucket)["pid"] == os.getpid()
        with pytest.raises(run_lock.RunLockedError, match=f"pid {os.getpid()}"):
            run_lock.RunLock(bucket, host="another").acquire()
    assert "host tpu-worker-0" in logs[0] and "lease expired" in logs[0]


def test_a_run_whose_lease_was_taken_over_stops_before_its_next_checkpoint(tmp_path):
    from sciriff_jax.io import checkpoint

    lock = run_lock.RunLock(tmp_path, lease_s=60).acquire()
    # What a takeover leaves after this run stalled past its lease: the next lease file, by another run.
    other = {"holder": "e" * 32, "host": "elsewhere", "pid": 1, "started": "now", "renewed": time.time(),
             "lease_s": 60.0, "released": False}
    (tmp_path / "run.lock" / f"{lock.number + 1:08d}.json").write_text(json.dumps(other))
    ckpt = checkpoint.TrainCheckpointer(tmp_path, period=1, before_save=lock.check)
    with pytest.raises(run_lock.LockLostError, match="host elsewhere"):
        ckpt.save(1, {"w": 1.0}, {}, {"batches_consumed": 1})
    ckpt.close()
    lock.release()
    assert not (tmp_path / "checkpoints" / "1").exists()
    assert run_lock.read_holder(tmp_path)["host"] == "elsewhere"  # the release left the new holder's lease alone


def test_finetune_refuses_a_model_dir_another_run_holds(tmp_path):
    from sciriff_jax.data.batches import DataConfig
    from sciriff_jax.model.config import LlamaConfig
    from sciriff_jax.train import finetune as ft

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                         num_kv_heads=1, dtype="float32")
    proc = _hold_in_subprocess(tmp_path)
    try:
        with pytest.raises(run_lock.RunLockedError, match=f"pid {proc.pid}"):
            ft.finetune(ft.TrainConfig(model_dir=str(tmp_path), train_steps=2, batch_size=8, tensorboard=False),
                        DataConfig("sciriff_sample", {"targets": 16}, source="synthetic"), config)
    finally:
        proc.kill()
        proc.wait()
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.jsonl").exists()
