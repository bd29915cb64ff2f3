"""Data pipeline throughput: images/s and clips/s through `build_train_loader` vs a plain loop.

The plain loop reads the same shards in order and does the same work (decode, random crop, flip,
collate, normalise, one mask draw per batch) in one process with no streaming machinery: no resampling, no
shuffle buffer, no DataLoader. It is the limit one worker can reach. The pipeline runs with 0
(in-process), 1 and 2 DataLoader workers; "per worker" divides by max(1, workers). Rounds are
interleaved (plain, 0, 1, 2 workers, plain, ...) and the median of each is reported, so load from
other processes hits every variant alike. Wall-clock rates suffer from such load; the CPU time per
sample (main process + workers, from /proc) does much less, so it is reported too.

    .venv/bin/python benchmarks/data.py [--rounds 3] [--batches 24]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from jepa.config import Config, from_dict  # noqa: E402
from jepa.config.sizes import is_video_model  # noqa: E402
from jepa.data.train_stream import build_train_loader  # noqa: E402
from jepa.data.skips import SkipLog  # noqa: E402
from jepa.data.streams import expand_urls, read_shard  # noqa: E402
from jepa.data.transforms import SampleSpec, collate, decode_sample, normalize  # noqa: E402
from jepa.data.write import write_synthetic  # noqa: E402
from jepa.masks import MaskGenerator, build_mask_generator, mask_rng  # noqa: E402

WORKERS = (0, 1, 2)


def make_data(root: Path, *, toy: bool = False) -> dict[str, tuple[str, dict]]:
    """Synthetic shards and the data config of each stream (kind -> (urls, data section)); `toy`: a few
    small images and two short videos (benchmarks/gpu.sh --toy)."""
    n_img, img_px, n_vid, vid_frames = (8, 64, 2, 16) if toy else (256, 256, 48, 48)
    image = write_synthetic(root / "image", kind="image", n=n_img, classes=4 if toy else 8, size=img_px, frames=1,
                            seed=0, shard_size=4 if toy else 32, progress=False)
    video = write_synthetic(root / "video", kind="video", n=n_vid, classes=2 if toy else 8, size=64 if toy else 128,
                            frames=vid_frames, seed=0, shard_size=2 if toy else 8, progress=False)
    common = dict(batch_size=4 if toy else 16, samples_per_epoch=1000 if toy else 100_000,
                  shuffle_buffer=4 if toy else 64)
    return {
        "image": (image.pattern, dict(common, sources=[{"urls": image.pattern, "kind": "image"}],
                                      image_size=112 if toy else 224)),
        "video": (video.pattern, dict(common, sources=[{"urls": video.pattern, "kind": "video"}], image_size=112,
                                      num_frames=16, frame_step=1 if toy else 2)),
    }


def config(kind: str, data: dict, workers: int) -> Config:
    if kind == "image":
        return from_dict({"data": dict(data, num_workers=workers), "model": {"patch_size": 16}})
    return from_dict({"data": dict(data, num_workers=workers), "model": {"patch_size": 16, "rope": {"kind": "3d"}},
                      "mask": {"kind": "multiblock3d", "targets": [{"num_blocks": 8, "spatial_scale": [0.15, 0.15]},
                                                                  {"num_blocks": 2, "spatial_scale": [0.7, 0.7]}]}})


def masks_for(cfg: Config) -> MaskGenerator:
    """The mask generator the training loop would pass: token grid from the crop and patch sizes."""
    side = cfg.data.image_size // cfg.model.patch_size
    video = cfg.data.sources[0].kind == "video"
    grid = (cfg.data.num_frames // cfg.model.tubelet_size, side, side) if video else (side, side)
    return build_mask_generator(cfg.mask, grid)


def _children_cpu() -> float:
    """CPU seconds used so far by this process's live children (the DataLoader workers); Linux /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for task in os.listdir("/proc/self/task"):
        for pid in open(f"/proc/self/task/{task}/children").read().split():
            try:
                fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            except OSError:  # exited meanwhile
                continue
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


@dataclass
class Run:
    rate: float
    """Samples per second of wall-clock time."""
    cpu_ms: float
    """CPU milliseconds per sample, all processes (main + workers) together."""
    main_ms: float
    """CPU milliseconds per sample spent in the main process (receiving, normalising)."""


def plain_loop(urls: str, cfg: Config, samples: int) -> Run:
    """Decode + transform + collate + normalise + masks over the shards in order, in this process."""
    spec = SampleSpec.from_data(cfg.data, clips=is_video_model(cfg), train=True)
    masks = masks_for(cfg)
    log = SkipLog(window=None)
    kind = cfg.data.sources[0].kind
    done, items = 0, []
    wall, cpu = time.perf_counter(), time.process_time()
    while done < samples:
        for url in expand_urls(urls):
            for raw in read_shard(url, log):
                items += decode_sample(raw, spec, kind=kind, rng=random.Random(done))
                if len(items) == cfg.data.batch_size:
                    normalize(collate(items)["x"])
                    masks(len(items), mask_rng(0, 0, 0, done))
                    done, items = done + len(items), []
                if done >= samples:
                    break
            if done >= samples:
                break
    cpu_ms = (time.process_time() - cpu) / done * 1000
    return Run(done / (time.perf_counter() - wall), cpu_ms, cpu_ms)


def pipeline(cfg: Config, batches: int) -> Run:
    """The training stream, timed from its third batch (worker start-up and buffer fill excluded)."""
    stream = iter(build_train_loader(cfg, clips=is_video_model(cfg), rank=0, world_size=1,
                                     collate_masks=masks_for(cfg), start=None))
    for _ in range(2):
        next(stream)
    wall, main, children = time.perf_counter(), time.process_time(), _children_cpu()
    for _ in range(batches):
        next(stream)
    samples = batches * cfg.data.batch_size
    main = (time.process_time() - main) / samples * 1000
    run = Run(samples / (time.perf_counter() - wall), main + (_children_cpu() - children) / samples * 1000, main)
    del stream
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=24, help="batches timed per pipeline run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, (urls, data) in make_data(Path(tmp)).items():
            runs: dict[str, list[Run]] = {"plain": [], **{str(w): [] for w in WORKERS}}
            for _ in range(args.rounds):
                runs["plain"].append(plain_loop(urls, config(kind, data, 0), args.batches * data["batch_size"]))
                for w in WORKERS:
                    runs[str(w)].append(pipeline(config(kind, data, w), args.batches))
            rows.append((kind, {k: Run(*(statistics.median(getattr(r, f) for r in v)
                                         for f in ("rate", "cpu_ms", "main_ms"))) for k, v in runs.items()}))
    unit = {"image": "images/s", "video": "clips/s"}
    print("| stream | variant | throughput | per worker | per worker / plain | CPU ms/sample | "
          "of which main process | plain CPU / this CPU |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for kind, med in rows:
        plain = med["plain"]
        print(f"| {kind} | plain loop, 1 process | {plain.rate:.1f} {unit[kind]} | {plain.rate:.1f} | 100% "
              f"| {plain.cpu_ms:.2f} | {plain.main_ms:.2f} | 100% |")
        for w in WORKERS:
            run, per = med[str(w)], med[str(w)].rate / max(1, w)
            label = "in-process (0 workers)" if w == 0 else f"{w} worker{'s' if w > 1 else ''}"
            print(f"| {kind} | pipeline, {label} | {run.rate:.1f} {unit[kind]} | {per:.1f} | {per / plain.rate:.0%} "
                  f"| {run.cpu_ms:.2f} | {run.main_ms:.2f} | {plain.cpu_ms / run.cpu_ms:.0%} |")
    print(f"\n{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end; median of "
          f"{args.rounds} interleaved rounds of {args.batches} batches of 16 (masks included); images: "
          f"256 px png -> crop 224; clips: 16 frames (step 2) of 128 px H.264 -> crop 112.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
