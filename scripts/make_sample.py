"""Regenerate the built-in SciRIFF-format sample at seqio_tasks/data/sample/{train,validation}.jsonl."""
import argparse
import pathlib

from seqio_tasks.sample import SAMPLE_DIR, write_sample


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out_dir", default=str(SAMPLE_DIR), help="where to write {train,validation}.jsonl")
    parser.add_argument("--seed", type=int, default=0, help="generator seed (the committed sample uses 0)")
    args = parser.parse_args()
    for split, path in write_sample(pathlib.Path(args.out_dir), seed=args.seed).items():
        n = sum(1 for _ in open(path, encoding="utf-8"))
        print(f"{split}: {n} instances, {path.stat().st_size / 1e6:.2f} MB -> {path}")


if __name__ == "__main__":
    main()
