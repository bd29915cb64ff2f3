"""Cost of the per-step stop check (jepa/train/stop.py) against one training step of the demo config.

    DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 python -m torch.distributed.run --standalone \\
        --nproc_per_node 2 benchmarks/stop_check.py [--checks 2000] [--steps 40]

Each rank first times `StopSignal.agreed()` (the all-reduce MAX of one int32 on the training device
plus its host read) `--checks` times, then trains `configs/small/demo.yaml` for `--steps` steps on
synthetic shards (the loop runs the check once per step) and reads the step time it logged after a
warm-up of half the steps. Rank 0 prints a markdown row.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from jepa import config
from jepa.data.write import write_synthetic
from jepa.train.distributed import init_distributed
from jepa.train.loop import train
from jepa.train.stop import StopSignal


def time_checks(device: torch.device, n: int) -> list[float]:
    stop = StopSignal()
    stop.agreed(device)  # allocates the flag, warms the communicator
    times = []
    for _ in range(n):
        torch.distributed.barrier()  # ranks enter together, as they do after a step
        t0 = time.perf_counter()
        stop.agreed(device)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    dist = init_distributed()
    checks = time_checks(dist.device, args.checks)
    with tempfile.TemporaryDirectory() as own_tmp:
        shared = [own_tmp]
        torch.distributed.broadcast_object_list(shared)  # every rank reads rank 0's shards
        tmp = shared[0]
        shards = Path(tmp) / "shards"
        if dist.is_main:
            write_synthetic(shards, kind="image", n=256, classes=4, size=64, frames=1, seed=0, shard_size=64,
                            progress=False)
        torch.distributed.barrier()
        half = args.steps // 2
        cfg = config.load("small/demo", [
            f"output_dir={tmp}/run", f"data.sources=[{{urls: '{shards}/shard-{{000000..000003}}.tar', kind: image}}]",
            f"optim.total_steps={args.steps}", f"optim.warmup_steps={half}", f"logging.every_steps={half}", "logging.tensorboard=false",
            f"checkpoint.every_steps={args.steps}", f"logging.repr_every_steps={args.steps}"])
        step_s = train(cfg)["time/step_s"]  # mean over the second half of the steps
    if dist.is_main:
        median, p99 = statistics.median(checks), sorted(checks)[int(0.99 * len(checks))]
        print("| ranks | device | stop check, median | p99 | demo step | check / step |")
        print("|---|---|---|---|---|---|")
        print(f"| {dist.world_size} | {dist.device.type} | {median * 1e6:.0f} us | {p99 * 1e6:.0f} us | "
              f"{step_s * 1e3:.0f} ms | {100 * median / step_s:.3f}% |")


if __name__ == "__main__":
    main()
