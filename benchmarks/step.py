"""One JEPA training step (forward + backward) on CPU; prints two markdown tables.

    OMP_NUM_THREADS=1 python benchmarks/step.py [--reps 2] [--only tiny-image,small-video]

Table 1, per model and input: the step with dropped context tokens (what training runs), the same
step with a zero-masked context (the context encoder runs every token, non-context ones zeroed after
the patch embedding: a comparison mode that exists only here), and the step with a 3-level
hierarchy instead of one level. The end-to-end 3-level step differs from the 1-level one by less
than the noise of a loaded machine, so the hierarchy's own work (level targets: layer norm, grid
pooling, gathers; level heads and pooled losses, forward and backward) is also timed alone, over
many rounds, on the same encoder outputs, and its extra cost is given as a share of the step.
Table 2: the context encoder alone (forward + backward) at several kept fractions, dropped vs
zero-masked. Times are process CPU time with one thread (not wall time, which other jobs on a
shared machine inflate); variants of one row are still timed round-robin (one step of each per
round) so that the rest of the load (caches, memory bandwidth) hits them alike; medians over rounds.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from jepa.config import from_dict
from jepa.masks import build_mask_generator, mask_rng
from jepa.models.factory import build_jepa, input_grid
from jepa.models.jepa import Trainable
from jepa.models.vit import gather_tokens, run_blocks, sincos_embed

PUBLISHED_PREDICTOR = {"embed_dim": 384, "depth": 12, "num_heads": 12}
PREDICTORS = {"tiny": {"embed_dim": 192, "depth": 6, "num_heads": 6}, "small": PUBLISHED_PREDICTOR,
              "base": PUBLISHED_PREDICTOR}
"""Predictor per encoder size: the published 384 x 12 for small and base, 192 x 6 for tiny."""
CASES = [  # (size, modality, batch); base video is left out: an estimated 40-50 s per step on this CPU
    ("tiny", "image", 8), ("small", "image", 2), ("base", "image", 2),
    ("tiny", "video", 1), ("small", "video", 1),
]
SKIP_ZERO = {("small", "video")}
"""Rows without the zero-masked step (ViT-S over all 1568 tokens, twice: the slowest variant)."""
HIERARCHY_REPS = 20
"""Rounds of the hierarchy-work timing (milliseconds each, so many rounds are cheap)."""
CONTEXT_CASES = [("base", "image", 2), ("tiny", "video", 1)]
VJEPA_TARGETS = [{"num_blocks": 8, "spatial_scale": [0.15, 0.15]}, {"num_blocks": 2, "spatial_scale": [0.7, 0.7]}]
LEVELS_3 = {  # block 5 pooled 4, block 8 pooled 2, block 11 token by token (as configs/hjepa_vitb16.yaml)
    "image": [{"block": 5, "pool": 4, "weight": 0.5}, {"block": 8, "pool": 2, "weight": 0.5}, {"block": 11}],
    "video": [{"block": 5, "pool": 4, "pool_t": 2, "weight": 0.5}, {"block": 8, "pool": 2, "weight": 0.5},
              {"block": 11}],
}


def config(size: str, modality: str, levels: list[dict]):
    video = modality == "video"
    raw = {
        "model": {"size": size, "patch_size": 16, "tubelet_size": 2, "rope": {"kind": "3d" if video else "2d"},
                  "predictor": {**PREDICTORS[size], "per_block": not video}},
        "data": {"image_size": 224, "num_frames": 16},
        "hierarchy": {"levels": levels, "loss": "l1" if video else "smooth_l1"},
        "mask": {"kind": "multiblock3d", "targets": VJEPA_TARGETS} if video else {},
    }
    return from_dict(raw)


class ZeroMaskedTrainable(Trainable):
    """Comparison only: the context encoder runs all tokens, non-context ones zeroed after embedding."""

    def encode_context(self, x: torch.Tensor, context: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        enc = self.context_encoder
        tokens = enc.patch_embed(x).flatten(2).transpose(1, 2)
        if enc.abs_pos:
            tokens = tokens + sincos_embed(grid, enc.embed_dim)
        keep = torch.zeros(tokens.shape[:2]).scatter_(1, context, 1.0)
        out, _ = run_blocks(enc.blocks, tokens * keep[..., None], enc.rope, enc.rope(grid), checkpointing=False)
        return gather_tokens(enc.norm(out), context)


def zero_masked(trainable: Trainable) -> ZeroMaskedTrainable:
    t = trainable
    return ZeroMaskedTrainable(context_encoder=t.context_encoder, predictor=t.predictor, heads=t.heads,
                               levels=t.levels, loss=t.loss_kind, min_keep=t.min_keep)


def timed(fn) -> float:
    """CPU seconds of this process: with one thread, other jobs on the machine delay it but do not add
    to it, as they do to wall time."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def step(model, trainable, x, masks) -> None:
    loss, _ = trainable(x, masks, model.compute_targets(x, masks))
    loss.backward()
    trainable.zero_grad(set_to_none=True)


def bench_step(size: str, modality: str, batch: int, reps: int) -> dict:
    torch.manual_seed(0)
    cfg = config(size, modality, [{"block": -1}])
    one = build_jepa(cfg).train()
    three = build_jepa(config(size, modality, LEVELS_3[modality])).train()
    grid = input_grid(cfg)
    gen = build_mask_generator(cfg.mask, grid)
    shape = (batch, 3, 16, 224, 224) if modality == "video" else (batch, 3, 224, 224)
    x = torch.randn(shape)
    variants = {"drop": (one, one.trainable), "zero": (one, zero_masked(one.trainable)),
                "3 levels": (three, three.trainable)}
    if (size, modality) in SKIP_ZERO:
        del variants["zero"]
    times = {name: [] for name in variants}
    kept = []
    for rep in range(reps + 1):                     # round 0 warms up and is not counted
        masks = gen(batch, mask_rng(0, 0, 0, rep))
        kept.append(statistics.fmean(ms.context.shape[1] for ms in masks) / math.prod(grid))
        for name, (model, trainable) in variants.items():
            t = timed(lambda: step(model, trainable, x, masks))
            if rep:
                times[name].append(t)
    result = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
    return {"grid": grid, "kept": statistics.fmean(kept), **result, **bench_hierarchy(one, three, x, masks)}


def bench_hierarchy(one, three, x: torch.Tensor, masks: list) -> dict:
    """The hierarchy's own work, 1 vs 3 levels, on shared target-encoder outputs and predictions."""
    with torch.no_grad():
        out = three.target_encoder(x, return_blocks=[lv.block for lv in three.levels])
    width = one.predictor.embed_dim
    preds = [torch.randn(x.shape[0], sum(t.shape[1] for t in ms.targets), width, requires_grad=True)
             for ms in masks]

    def work(model):
        targets = model.targets_from_output(out, masks)
        loss = sum(lv.weight * loss for p, lt in zip(preds, targets.levels)
                   for lv, loss in zip(model.levels, model.trainable.level_losses(p, lt)))
        loss.backward()

    times = {"h1": [], "h3": []}
    for rep in range(HIERARCHY_REPS + 1):
        for name, model in (("h1", one), ("h3", three)):
            t = timed(lambda: work(model))
            if rep:
                times[name].append(t)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def bench_context(size: str, modality: str, batch: int, reps: int, fractions=(0.1, 0.25, 0.5, 1.0)) -> list:
    torch.manual_seed(0)
    model = build_jepa(config(size, modality, [{"block": -1}])).train()
    enc = model.context_encoder
    zero = zero_masked(model.trainable)
    shape = (batch, 3, 16, 224, 224) if modality == "video" else (batch, 3, 224, 224)
    x = torch.randn(shape)
    n = math.prod(enc.grid(shape))
    keeps = {f: torch.stack([torch.randperm(n)[: max(1, round(f * n))].sort().values for _ in range(batch)])
             for f in fractions}

    def drop(idx):
        enc(x, keep_idx=idx)["tokens"].sum().backward()

    def zeroed(idx):
        zero.encode_context(x, idx, enc.grid(shape)).sum().backward()

    times = {("drop", f): [] for f in fractions} | {("zero", 0.5): []}
    for rep in range(reps + 1):
        for mode, f in times:
            t = timed(lambda: (drop if mode == "drop" else zeroed)(keeps[f]))
            enc.zero_grad(set_to_none=True)
            if rep:
                times[(mode, f)].append(t)
    return [(mode, f, statistics.median(ts) * 1e3) for (mode, f), ts in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated size-modality rows, e.g. tiny-image")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    only = set(filter(None, args.only.split(",")))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.reps} timed rounds, "
          f"process CPU time\n")
    print("| model | input | batch | tokens | context kept | step, dropped (ms) | step, zero-masked (ms) "
          "| dropped / zero-masked | step, 3 levels (ms) | hierarchy work, 1 / 3 levels (ms) "
          "| 3-level overhead: hierarchy work / end to end |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size, modality, batch in CASES:
        if only and f"{size}-{modality}" not in only:
            continue
        r = bench_step(size, modality, batch, args.reps)
        grid = "x".join(map(str, r["grid"]))
        zero = (f"{r['zero']:.0f} | {r['drop'] / r['zero']:.2f}" if "zero" in r else "not run | -")
        print(f"| ViT-{size} | {modality} 224 px{' x 16 frames' if modality == 'video' else ''} | {batch} "
              f"| {grid} | {r['kept']:.2f} | {r['drop']:.0f} | {zero} | {r['3 levels']:.0f} "
              f"| {r['h1']:.1f} / {r['h3']:.1f} | {100 * (r['h3'] - r['h1']) / r['drop']:+.1f}% / "
              f"{100 * (r['3 levels'] / r['drop'] - 1):+.1f}% |", flush=True)
    print("\n| context encoder | kept fraction | dropped (ms) | zero-masked (ms) | dropped / zero-masked |")
    print("|---|---|---|---|---|")
    for size, modality, batch in CONTEXT_CASES:
        if only and f"{size}-{modality}" not in only:
            continue
        rows = bench_context(size, modality, batch, args.reps)
        full = next(ms for mode, _, ms in rows if mode == "zero")
        for mode, f, ms in rows:
            if mode == "drop":
                print(f"| ViT-{size} {modality}, batch {batch} | {f:.2f} | {ms:.0f} | {full:.0f} | {ms / full:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
