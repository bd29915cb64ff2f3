"""Eager vs compiled JEPA training steps (regional compilation, jepa/models/compile.py) on CPU.

    OMP_NUM_THREADS=1 python benchmarks/compile.py [--reps 6] [--only tiny-image,small-image] [--bf16] [--static-check] [--rope-check] [--cold]

Per case, four variants of one model run round-robin, one step each per round, on the same masks
(a fresh draw every round, so token counts change as in training): eager, compiled, and both again
without RoPE (`model.rope.kind=none` with sin-cos absolute positions) to give RoPE's share of the
eager and of the compiled step. Times are process CPU seconds with one torch thread (other jobs on a
shared machine delay the process but do not add to its CPU time); medians over the rounds after a
warm-up round; ratios (speed-up, RoPE share) are medians of the per-round ratios, which load that
drifts between rounds moves less. Compile time is the wall time of the first compiled step minus the eager step's
(inductor caches compiled kernels on disk: `--cold` starts from an empty cache).
Graphs are Dynamo's compiled frames per variant after the first step and after the last: equal
means the changing masks caused no recompile. TFLOPS and MFU count the tokens run
(jepa/train/flops.py) against a one-thread matmul probe of the same precision.

`--static-check` adds a table for the small image step: the dynamic-token graphs against graphs
compiled for fixed lengths (`dynamic=False`), both on one fixed mask draw. Padding every step to
fixed lengths could at best run as fast as the static graphs, with more tokens.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time

import torch
from torch._dynamo.testing import CompileCounterWithBackend

from jepa.config import from_dict
from jepa.masks import build_mask_generator, mask_rng
from jepa.models.compile import compile_blocks
from jepa.models.factory import build_jepa, input_grid
from jepa.train.flops import FlopModel, mask_lengths, probe_matmul_flops, step_flops

PREDICTORS = {"tiny": {"embed_dim": 192, "depth": 6, "num_heads": 6},
              "small": {"embed_dim": 384, "depth": 12, "num_heads": 12}}
CASES = {"tiny-image": ("tiny", "image", 8), "small-image": ("small", "image", 2),
         "tiny-video": ("tiny", "video", 1), "small-video": ("small", "video", 1)}
VJEPA_TARGETS = [{"num_blocks": 8, "spatial_scale": [0.15, 0.15]}, {"num_blocks": 2, "spatial_scale": [0.7, 0.7]}]


def config(size: str, modality: str, *, rope: bool):
    """The configs of benchmarks/step.py: ViT-{tiny,small}/16 at 224 px, I-JEPA or V-JEPA masks."""
    video = modality == "video"
    return from_dict({
        "model": {"size": size, "rope": {"kind": ("3d" if video else "2d") if rope else "none"}, "abs_pos": not rope,
                  "predictor": {**PREDICTORS[size], "per_block": not video}},
        "data": {"image_size": 224, "num_frames": 16},
        "hierarchy": {"loss": "l1" if video else "smooth_l1"},
        "mask": {"kind": "multiblock3d", "targets": VJEPA_TARGETS} if video else {},
    })


def build(cfg, *, bf16: bool, backend=None, dynamic: bool = True):
    torch.manual_seed(0)
    model = build_jepa(cfg).train()
    if bf16:
        model.trainable.to(torch.bfloat16)
    if backend is not None:
        if dynamic:
            compile_blocks(model, backend=backend)
        else:  # fixed lengths: whole-shape specialisation, for --static-check only
            for block in [m for m in model.modules() if type(m).__name__ == "EvaBlock"]:
                block.forward = torch.compile(block.forward, backend=backend, dynamic=False)
    return model


def step(model, x, masks, bf16: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        targets = model.compute_targets(x, masks)
    loss, _ = model.trainable(x.to(torch.bfloat16) if bf16 else x, masks, targets)
    loss.backward()
    model.trainable.zero_grad(set_to_none=True)


def cpu_and_wall(fn) -> tuple[float, float]:
    c, w = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c, time.perf_counter() - w


def bench(name: str, reps: int, bf16: bool) -> dict:
    size, modality, batch = CASES[name]
    cfg, plain = config(size, modality, rope=True), config(size, modality, rope=False)
    counters = {v: CompileCounterWithBackend("inductor") for v in ("compiled", "compiled, no RoPE")}
    models = {"eager": build(cfg, bf16=bf16), "compiled": build(cfg, bf16=bf16, backend=counters["compiled"]),
              "eager, no RoPE": build(plain, bf16=bf16),
              "compiled, no RoPE": build(plain, bf16=bf16, backend=counters["compiled, no RoPE"])}
    grid = input_grid(cfg)
    gen = build_mask_generator(cfg.mask, grid)
    x = torch.randn((batch, 3, 16, 224, 224) if modality == "video" else (batch, 3, 224, 224))
    times: dict[str, list[float]] = {v: [] for v in models}
    first_wall, graphs_first, flops = {}, {}, []
    for rep in range(reps + 1):  # round 0 compiles and warms up
        masks = gen(batch, mask_rng(0, 0, 0, rep))
        flops.append(step_flops(FlopModel.from_config(cfg), batch=batch, num_tokens=math.prod(grid),
                                mask_sets=mask_lengths(masks)))
        order = list(models) if rep % 2 else list(reversed(models))
        for v in order:
            cpu, wall = cpu_and_wall(lambda: step(models[v], x, masks, bf16))
            if rep:
                times[v].append(cpu)
            else:
                first_wall[v] = wall
                graphs_first[v] = counters[v].frame_count if v in counters else 0
        print(f"{name} round {rep}: " + " ".join(f"{v}={times[v][-1] if rep else first_wall[v]:.3f}"
                                                 for v in models), flush=True)
    med = {v: statistics.median(ts) for v, ts in times.items()}
    eager_wall = statistics.median(times["eager"])

    def ratio(a: str, b: str) -> float:  # median of per-round ratios: robust to load that drifts between rounds
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    return {"name": name, "batch": batch, "grid": grid, "med": med, "min": {v: min(ts) for v, ts in times.items()},
            "speedup": ratio("eager", "compiled"),
            "rope_share": {v: 1 - ratio(f"{v}, no RoPE", v) for v in ("eager", "compiled")},
            "compile_s": first_wall["compiled"] - eager_wall,
            "graphs": (graphs_first["compiled"], counters["compiled"].frame_count), "reps": reps,
            "flops": statistics.median(flops)}


def static_check(reps: int, bf16: bool) -> dict:
    size, modality, batch = CASES["small-image"]
    cfg = config(size, modality, rope=True)
    models = {"dynamic tokens": build(cfg, bf16=bf16, backend="inductor"),
              "static shapes": build(cfg, bf16=bf16, backend="inductor", dynamic=False)}
    gen = build_mask_generator(cfg.mask, input_grid(cfg))
    x = torch.randn(batch, 3, 224, 224)
    masks = gen(batch, mask_rng(0, 0, 0, 0))
    times: dict[str, list[float]] = {v: [] for v in models}
    for rep in range(reps + 1):
        for v in (list(models) if rep % 2 else list(reversed(models))):
            cpu, _ = cpu_and_wall(lambda: step(models[v], x, masks, bf16))
            if rep:
                times[v].append(cpu)
    return {v: statistics.median(ts) for v, ts in times.items()}


def rope_check(reps: int) -> dict:
    """One ViT-S block (384 wide, 6 heads) compiled, forward + backward on a gathered context of 98
    of 196 tokens, batch 2, with its RoPE table and without (rope=None): the rotation's own cost."""
    from jepa.models.rope import RotaryEmbedding, gather_rope
    from jepa.models.vit import make_blocks

    torch.manual_seed(0)
    block = make_blocks(dim=384, depth=1, num_heads=6, mlp_ratio=4.0, drop_path=0.0, rotate_half=True)[0]
    compile_blocks(block)
    idx = torch.stack([torch.randperm(196)[:98].sort().values for _ in range(2)])
    table = gather_rope(RotaryEmbedding(head_dim=64, ndim=2)((14, 14)), idx)
    x = torch.randn(2, 98, 384, requires_grad=True)
    times: dict[str, list[float]] = {"RoPE": [], "none": []}
    for rep in range(reps + 3):
        for v in (("RoPE", "none") if rep % 2 else ("none", "RoPE")):
            def run():
                for _ in range(10):
                    block(x, rope=table if v == "RoPE" else None).sum().backward()
            cpu, _ = cpu_and_wall(run)
            if rep >= 3:
                times[v].append(cpu / 10)
    return {"RoPE": statistics.median(times["RoPE"]), "none": statistics.median(times["none"]),
            "share": 1 - statistics.median(n / r for n, r in zip(times["none"], times["RoPE"]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--only", default="tiny-image,small-image,tiny-video")
    parser.add_argument("--bf16", action="store_true", help="trainable part in bf16, target pass under autocast")
    parser.add_argument("--static-check", action="store_true")
    parser.add_argument("--rope-check", action="store_true", help="only the RoPE cost in one compiled block")
    parser.add_argument("--cold", action="store_true", help="a fresh inductor cache: compile time from scratch")
    args = parser.parse_args()
    if args.cold:  # read when inductor first compiles, not at import
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cold-")
    torch.set_num_threads(1)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    if args.rope_check:
        r = rope_check(args.reps)
        print(f"| compiled ViT-S block, 2 x 98 gathered tokens, fwd + bwd | with RoPE {1e3 * r['RoPE']:.2f} ms | "
              f"without {1e3 * r['none']:.2f} ms | RoPE share {100 * r['share']:.1f}% |")
        return
    peak = probe_matmul_flops(dtype)
    rows = [bench(name, args.reps, args.bf16) for name in args.only.split(",")]
    print(f"\nprecision {'bf16' if args.bf16 else 'fp32'}, one thread, matmul probe {peak / 1e12:.3f} TFLOPS; "
          f"CPU s per step, medians of {args.reps} rounds (minima in brackets)\n")
    print("| step | batch | eager (s) | compiled (s) | eager / compiled | compile time (s) | graphs after 1 / "
          f"{args.reps + 1} steps | TFLOPS eager / compiled | MFU eager / compiled | RoPE share eager / compiled |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        m, lo = r["med"], r["min"]
        tf = {v: r["flops"] / m[v] / 1e12 for v in ("eager", "compiled")}
        share = r["rope_share"]
        print(f"| {r['name']} | {r['batch']} | {m['eager']:.3f} ({lo['eager']:.3f}) | {m['compiled']:.3f} "
              f"({lo['compiled']:.3f}) | {r['speedup']:.2f} | {r['compile_s']:.0f} | "
              f"{r['graphs'][0]} / {r['graphs'][1]} | {tf['eager']:.3f} / {tf['compiled']:.3f} | "
              f"{100 * tf['eager'] * 1e12 / peak:.0f}% / {100 * tf['compiled'] * 1e12 / peak:.0f}% | "
              f"{100 * share['eager']:.1f}% / {100 * share['compiled']:.1f}% |")
    if args.static_check:
        s = static_check(args.reps, args.bf16)
        print("\n| small-image, one fixed mask draw | CPU s per step (median) |\n|---|---|")
        for v, t in s.items():
            print(f"| {v} | {t:.3f} |")


if __name__ == "__main__":
    main()
