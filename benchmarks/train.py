"""Throughput of the full training loop vs the bare model step, on the same config.

bare: forward + backward + AdamW step of the JEPA model in plain torch, on one pre-made batch
      (no DeepSpeed, no data pipeline, no EMA, no logging, no checkpoints).
loop: `jepa train` in-process (DeepSpeed ZeRO-0, data from synthetic shards, masks drawn in the
      worker, EMA, metrics); samples/s of the last logging interval, which excludes start-up.

    OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu python benchmarks/train.py [--steps 60]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from jepa import config
from jepa.data.write import write_synthetic
from jepa.masks import build_mask_generator, mask_rng
from jepa.models.factory import build_jepa, input_grid
from jepa.train.loop import train

SIZES = {
    "tiny (64-d, 6 blocks)": [],
    "small (ViT-S: 384-d, 12 blocks, 6 heads)": ["model.embed_dim=384", "model.depth=12", "model.num_heads=6",
                                                 "model.predictor.embed_dim=192", "model.predictor.num_heads=6",
                                                 "hierarchy.levels=[{block: 5, pool: 4, weight: 0.5}, "
                                                 "{block: 8, pool: 2, weight: 0.5}, {block: 11}]"],
}


def bare_step_rate(cfg: config.Config, steps: int) -> float:
    torch.manual_seed(0)
    model = build_jepa(cfg)
    opt = torch.optim.AdamW(model.trainable.parameters(), lr=1e-4)
    gen = build_mask_generator(cfg.mask, input_grid(cfg))
    B = cfg.data.batch_size
    x = torch.randn(B, 3, cfg.data.image_size, cfg.data.image_size)
    masks = gen(B, mask_rng(0, 0, 0, 0))
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        loss, _ = model(x, masks)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= steps // 4:  # skip warm-up iterations
            times.append(time.perf_counter() - t0)
    return B / (sum(times) / len(times))


def loop_rate(cfg_overrides: list[str], shards: str, out: Path, steps: int) -> float:
    cfg = config.load("small/demo", [*cfg_overrides, f"output_dir={out}",
                                     f"data.sources=[{{urls: '{shards}', kind: image}}]",
                                     f"optim.total_steps={steps}", "optim.warmup_steps=1",
                                     f"logging.every_steps={steps // 2}", f"logging.repr_every_steps={steps}",
                                     f"checkpoint.every_steps={steps}", "data.num_workers=1"])
    return train(cfg)["time/samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic(Path(tmp) / "data", kind="image", n=256, classes=8, size=64, frames=1, seed=0,
                        shard_size=64, progress=False)
        shards = str(Path(tmp) / "data" / "shard-{000000..000003}.tar")
        for name, overrides in SIZES.items():
            cfg = config.load("small/demo", overrides)
            bare = bare_step_rate(cfg, args.steps)
            loop = loop_rate(overrides, shards, Path(tmp) / name.split()[0], args.steps)
            rows.append((name, cfg.data.batch_size, bare, loop))
    print("| config | batch | bare step (samples/s) | full loop (samples/s) | loop / bare |")
    print("|---|---:|---:|---:|---:|")
    for name, batch, bare, loop in rows:
        print(f"| {name} | {batch} | {bare:.1f} | {loop:.1f} | {loop / bare:.2f} |")


if __name__ == "__main__":
    main()
