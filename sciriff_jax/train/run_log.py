"""Run logging: progress lines with ETA and MFU, MODEL_DIR/metrics.jsonl, TensorBoard events, operative config."""
from __future__ import annotations

import json
import math
import time

import jax

from sciriff_jax.eval.progress import format_duration
from sciriff_jax.io import paths, writes

# Dense bf16 peak FLOP/s per device (vendor figures); MFU is reported only where the device is known.
PEAK_FLOPS = {
    "h100": 989e12, "h200": 989e12, "a100": 312e12, "l4": 121e12, "a10": 125e12,
    "tpu v4": 275e12, "tpu v5 lite": 197e12, "tpu v5e": 197e12, "tpu v5p": 459e12, "tpu v5": 459e12,
    "tpu v6 lite": 918e12, "tpu v6e": 918e12,
}


def device_peak_flops(device=None) -> float | None:
    """Peak bf16 FLOP/s of `device` (default: the first device), or None when unknown (e.g. CPU)."""
    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "").lower()
    for name, flops in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
        if name in kind:
            return flops
    return None


def save_operative_config(model_dir, text: str | None) -> str | None:
    """Write the gin operative config to MODEL_DIR/operative_config.gin (process 0 only)."""
    if text is None or jax.process_index() != 0:
        return None
    path = paths.resolve(model_dir) / "operative_config.gin"
    with writes.naming(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    writes.write_text(path, text)  # whole or not at all: a failed write leaves the previous run's
    return str(path)


class RunLogger:
    """Every `log_every` steps: a progress line, one metrics.jsonl object and TensorBoard scalars."""

    def __init__(self, model_dir, *, total_steps: int, start_step: int = 0, tokens_per_step: int,
                 flops_per_token: float | None = None, log_every: int = 10, tensorboard: bool = True):
        self.model_dir = paths.resolve(model_dir)
        self.total_steps, self.start_step, self.log_every = total_steps, start_step, max(int(log_every), 1)
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.is_writer = jax.process_index() == 0
        peak = device_peak_flops()
        self.peak_total = peak * jax.device_count() if peak else None
        self._t0 = self._last_t = time.time()
        self._last_step = start_step
        self._writer = None
        self._failed = False
        if self.is_writer:
            self.model_dir.mkdir(parents=True, exist_ok=True)
            self._metrics_path = self.model_dir / "metrics.jsonl"
            with self._metrics_path.open("a"):  # created at the start, as before the first record
                pass
            self._drop_records_after(start_step)
            if tensorboard and paths.is_url(self.model_dir):
                # tensorboardX reaches gs:// / s3:// only through google-cloud-storage / boto3, which we do not install.
                print(f"[sciriff-jax] TensorBoard events are written for a local MODEL_DIR only: skipped for "
                      f"{self.model_dir}; metrics go to {self._metrics_path}", flush=True)
            elif tensorboard:
                from tensorboardX import SummaryWriter  # lazy: it imports torch where torch is installed (~1 s)

                self._writer = SummaryWriter(str(self.model_dir / "tensorboard"))

    def _drop_records_after(self, start_step: int) -> None:
        """Keep one record per logged step across a resume: drop what an interrupted run logged past the restored
        step (those steps run again), and a half-written last line."""
        numbered = [(n, line) for n, line in enumerate(self._metrics_path.read_text().splitlines(), start=1)
                    if line.strip()]
        lines = [line for _, line in numbered]
        kept = []
        for i, (n, line) in enumerate(numbered):
            try:
                record = json.loads(line)
            except ValueError:
                if start_step == 0:
                    continue  # a fresh start drops every record anyway
                if i == len(numbered) - 1:  # cut short by a kill mid-write: that step runs again
                    print(f"[sciriff-jax] {self._metrics_path}:{n}: dropped a last line cut short by an interrupted "
                          f"write ({line[:80]!r})", flush=True)
                    continue
                raise ValueError(f"{self._metrics_path}:{n}: not a JSON record ({line[:80]!r}); a resume keeps "
                                 "every record up to the restored step, so fix or delete that line and rerun")
            # A fresh start (0) redoes everything, the evaluation at step 0 included.
            if isinstance(record, dict) and start_step > 0 and record.get("step", 0) <= start_step:
                kept.append(line)
        if len(kept) == len(lines):
            return
        writes.write_text(self._metrics_path, "".join(line + "\n" for line in kept))
        print(f"[sciriff-jax] {self._metrics_path}: dropped {len(lines) - len(kept)} record(s) past step {start_step} "
              "left by an interrupted run (those steps run again)", flush=True)

    def _write(self, record: dict) -> None:
        if not self.is_writer:
            return
        try:
            # A failed write (disk full) names the file and leaves it with exactly the records before this one.
            writes.append_text(self._metrics_path, json.dumps(finite_record(record)) + "\n")
            if self._writer is not None:
                with writes.naming(self.model_dir / "tensorboard"):
                    for k, v in record.items():
                        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                            self._writer.add_scalar(k, v, record["step"])
                    self._writer.flush()
        except OSError:
            self._failed = True  # close() must not replace this error with the event file's failing flush
            raise

    def log_train(self, step: int, metrics: dict) -> None:
        """Record a training step's metrics (logged every `log_every` steps, and the first and last)."""
        if not (step % self.log_every == 0 or step == self.total_steps or step == self.start_step + 1):
            return
        now = time.time()
        steps = step - self._last_step
        dt = max(now - self._last_t, 1e-9)
        tokens_per_s = steps * self.tokens_per_step / dt
        record = {"step": step, **{k: v for k, v in metrics.items() if v is not None},
                  "tokens_per_s": tokens_per_s, "steps_per_s": steps / dt, "elapsed_s": now - self._t0}
        if self.flops_per_token and self.peak_total:
            record["mfu"] = tokens_per_s * self.flops_per_token / self.peak_total
        self._write(record)
        # The first step includes compilation, and evaluations pause the clock (log_eval): estimate the rest of the
        # run from the latest interval's pace, as the tokens/s shown.
        first = step == self.start_step + 1
        eta = "-- (first step compiles)" if first else format_duration(dt / max(steps, 1) * (self.total_steps - step))
        pct = 100.0 * step / max(self.total_steps, 1)
        bar = "#" * int(pct // 5) + "." * (20 - int(pct // 5))
        extra = f" mfu {100 * record['mfu']:.1f}%" if "mfu" in record else ""
        lr = metrics.get("learning_rate")
        lr_s = f" lr {lr:.3g}" if lr is not None else ""
        if self.is_writer:
            print(f"[{bar}] step {step}/{self.total_steps} loss {metrics['loss']:.4f}{lr_s} "
                  f"gnorm {metrics.get('grad_norm', float('nan')):.3f} {tokens_per_s:,.0f} tok/s{extra} "
                  f"eta {eta}", flush=True)
        self._last_t, self._last_step = now, step

    def log_eval(self, step: int, results: dict) -> None:
        """Record evaluation results under `eval/<name>`; non-numeric values go to jsonl only."""
        flat = {f"eval/{k}": v for k, v in _flatten(results).items()}
        self._write({"step": step, **flat})
        if self.is_writer:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in flat.items() if isinstance(v, float))[:300]
            print(f"[sciriff-jax] eval at step {step}: {shown}", flush=True)
        self._last_t = time.time()  # evaluation time is not training throughput

    def close(self) -> None:
        """Close the TensorBoard writer (metrics.jsonl is closed after every record)."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                with writes.naming(self.model_dir / "tensorboard"):
                    writer.close()
            except OSError:
                if not self._failed:
                    raise


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        elif hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
            out[key] = v.item()
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
    return out


NONFINITE = "nonfinite"  # record key: {field: "nan" | "inf" | "-inf"} for the fields written as null


def finite_record(record: dict) -> dict:
    """`record` as strict JSON can hold it: a NaN or infinite number becomes null and is named, with its value, under
    NONFINITE ({"loss": null, "nonfinite": {"loss": "nan"}}), so every line parses in any JSON reader."""
    bad = {k: str(v) for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)}
    if not bad:
        return record
    return {**{k: None if k in bad else v for k, v in record.items()}, NONFINITE: bad}


def restore_nonfinite(record):
    """The record as logged: the fields finite_record wrote as null get their NaN / inf back."""
    bad = record.get(NONFINITE) if isinstance(record, dict) else None
    if not isinstance(bad, dict):
        return record
    return {**{k: v for k, v in record.items() if k != NONFINITE}, **{k: float(v) for k, v in bad.items()}}


def read_metrics(model_dir) -> list[dict]:
    """All records of MODEL_DIR/metrics.jsonl, in order (NaN / inf as floats again: restore_nonfinite)."""
    path = paths.resolve(model_dir) / "metrics.jsonl"
    records = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(restore_nonfinite(json.loads(line)))
            except ValueError:
                raise ValueError(f"{path}:{n}: not a JSON record ({line[:80]!r})") from None
    return records
