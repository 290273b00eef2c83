"""Plot a GRPO run's reward curve from its MODEL_DIR/metrics.jsonl (matplotlib, Agg): the mean reward of each
update's sampled answers (and a running mean), per task, and the eval's mean before/after when given.

  python scripts/grpo_curve.py runs/demo_grpo docs/grpo_demo_curve.png --before 51.1 --after 55.0
"""
from __future__ import annotations

import argparse
import json
import pathlib


def read(model_dir) -> list[dict]:
    path = pathlib.Path(model_dir) / "metrics.jsonl"
    return [r for r in map(json.loads, path.read_text().splitlines()) if "reward_mean" in r]


def running_mean(values: list[float], window: int) -> list[float]:
    out = []
    for i in range(len(values)):
        part = values[max(0, i - window + 1):i + 1]
        out.append(sum(part) / len(part))
    return out


def plot(records: list[dict], out, *, window: int = 8, before: float | None = None, after: float | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    rewards = [r["reward_mean"] for r in records]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    ax.plot(steps, rewards, ".", alpha=0.4, label="mean reward of the update's samples")
    ax.plot(steps, running_mean(rewards, window), "-", label=f"running mean ({window} updates)")
    ax.set(xlabel="GRPO update", ylabel="reward (SciRIFF metric, 0-1)", title="GRPO on the built-in sample")
    ax.legend(loc="lower right", fontsize=8)
    tasks = sorted({k.split("/")[1] for r in records for k in r if k.startswith("reward/") and k.endswith("/mean")})
    for task in tasks:
        pts = [(r["step"], r[f"reward/{task}/mean"]) for r in records if f"reward/{task}/mean" in r]
        xs, ys = zip(*pts)
        bx.plot(xs, running_mean(list(ys), window), "-", label=task.replace("sciriff_sample_", ""))
    bx.set(xlabel="GRPO update", ylabel="reward, running mean", title="per task")
    bx.legend(fontsize=8)
    if before is not None and after is not None:
        fig.suptitle(f"held-out eval (sciriff-jax eval, validation, greedy): mean {before:.1f} before -> "
                     f"{after:.1f} after", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("out")
    p.add_argument("--window", type=int, default=8)
    p.add_argument("--before", type=float, default=None, help="eval mean before GRPO (for the title)")
    p.add_argument("--after", type=float, default=None, help="eval mean after GRPO")
    args = p.parse_args(argv)
    print(plot(read(args.model_dir), args.out, window=args.window, before=args.before, after=args.after))


if __name__ == "__main__":
    main()
