"""What the online kNN costs a pretraining run: the demo recipe with and without `eval.every_steps`.

    OMP_NUM_THREADS=1 python benchmarks/online_knn.py [--steps 400 --every 200 --bank 512 --val 256]

Writes synthetic labelled shards, trains the same run twice (interleaved is not possible for whole
runs: the two run back to back), and prints a markdown row: wall time of each run, the seconds the
evaluations took (from `eval/seconds`) and their share of the run with them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jepa.data.write import write_synthetic


def train(run: Path, args: argparse.Namespace, data: Path, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "jepa.cli", "train", "small/demo", f"output_dir={run}",
           f"data.sources=[{{urls: '{data}/train/shard-{{000000..000003}}.tar', kind: image}}]",
           f"optim.total_steps={args.steps}", "optim.warmup_steps=10", "logging.every_steps=50",
           f"checkpoint.every_steps={args.steps}", *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--every", type=int, default=200)
    p.add_argument("--bank", type=int, default=512, help="labelled images in the kNN memory")
    p.add_argument("--val", type=int, default=256, help="labelled query images")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        write_synthetic(data / "train", kind="image", n=2048, classes=8, size=64, frames=1, seed=0, shard_size=512,
                        progress=False)
        write_synthetic(data / "bank", kind="image", n=args.bank, classes=8, size=64, frames=1, seed=1,
                        shard_size=args.bank, progress=False)
        write_synthetic(data / "val", kind="image", n=args.val, classes=8, size=64, frames=1, seed=2,
                        shard_size=args.val, progress=False)
        plain = train(data / "plain", args, data, [])
        knn = [f"eval.every_steps={args.every}", f"eval.bank_urls={data}/bank/shard-000000.tar",
               f"data.val_urls={data}/val/shard-000000.tar"]
        with_eval = train(data / "knn", args, data, knn)
        acc = EventAccumulator(str(data / "knn" / "tb"))
        acc.Reload()
        seconds = sum(e.value for e in acc.Scalars("eval/seconds"))
        top1 = [round(e.value, 3) for e in acc.Scalars("eval/knn_top1")]
    print("| steps | every | bank / val images | run without, s | run with, s | evaluations, s | share of the run |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    print(f"| {args.steps} | {args.every} | {args.bank} / {args.val} | {plain:.1f} | {with_eval:.1f} | {seconds:.1f} "
          f"| {100 * seconds / with_eval:.1f}% |")
    print(f"\nknn top-1 at each evaluation: {top1}")


if __name__ == "__main__":
    main()
