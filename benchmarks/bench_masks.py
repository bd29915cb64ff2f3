"""Mask generator cost per batch and masked ratios; prints a markdown table.

    OMP_NUM_THREADS=1 python benchmarks/bench_masks.py [--batch 64] [--rounds 200]

The configurations are timed round-robin (one batch of each per round), so a load change on the
machine hits them alike; the table gives the median over rounds. Masked ratio = fraction of tokens
outside the context: expected per sample, measured per sample (batch of one) and measured at the
benchmark batch size (after cutting the batch to equal lengths).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from jepa.config import BlockMaskConfig, MaskConfig
from jepa.masks import build_mask_generator, mask_rng

VJEPA_TARGETS = [BlockMaskConfig(num_blocks=8, spatial_scale=[0.15, 0.15]),
                 BlockMaskConfig(num_blocks=2, spatial_scale=[0.7, 0.7])]
CASES = [
    ("multiblock2d (I-JEPA)", MaskConfig(), (14, 14)),
    ("multiblock2d (I-JEPA)", MaskConfig(), (16, 16)),
    ("multiblock3d (V-JEPA)", MaskConfig(kind="multiblock3d", targets=VJEPA_TARGETS), (8, 14, 14)),
    ("tube 0.9", MaskConfig(kind="tube", tube_ratio=0.9), (8, 14, 14)),
]


def _ratios(gen, grid, batch_size: int, draws: int) -> list[float]:
    rng = mask_rng(0, 0, 0, batch_size)
    per_draw = [[1 - ms.context.shape[1] / math.prod(grid) for ms in gen(batch_size, rng)] for _ in range(draws)]
    return [statistics.fmean(col) for col in zip(*per_draw)]


def _fmt(values: list[float]) -> str:
    return " / ".join(f"{v:.3f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gens = [build_mask_generator(cfg, grid) for _, cfg, grid in CASES]
    times: list[list[float]] = [[] for _ in CASES]
    rng = mask_rng(0, 0, 0, 0)
    for _ in range(args.rounds):
        for i, gen in enumerate(gens):
            start = time.perf_counter()
            gen(args.batch, rng)
            times[i].append(time.perf_counter() - start)
    print(f"| kind | grid | ms per batch of {args.batch} (median) | masked ratio expected | "
          f"measured, batch 1 | measured, batch {args.batch} |")
    print("|---|---|---|---|---|---|")
    for (name, _, grid), gen, t in zip(CASES, gens, times):
        print(f"| {name} | {'x'.join(map(str, grid))} | {statistics.median(t) * 1e3:.2f} | "
              f"{_fmt(gen.expected_masked_ratio())} | {_fmt(_ratios(gen, grid, 1, 2000))} | "
              f"{_fmt(_ratios(gen, grid, args.batch, 100))} |")


if __name__ == "__main__":
    main()
