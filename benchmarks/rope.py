"""What RoPE costs in a training step: forward + backward with RoPE on vs off, measured in one run.

Cases: a ViT-S/16 attention stack (12 timm EvaBlocks, dim 384, 6 heads, 1 CLS, 224 px -> 14x14 tokens)
on all tokens and on a gathered half of them (a JEPA context), and torchvision's MViT v2 S on a
16x224x224 clip (RoPE after q/k pooling in all 16 blocks). On and off runs alternate (the order flips
every repetition), so load from other processes hits both alike; the table gives medians of the
process CPU time (steady on a shared machine) and, for reference, the wall-clock ratio. "Rotation
alone" times just the RoPE work of the step (the q/k rotations, forward + backward) in the same loop.
`layouts` compares ways of rotating one ViT-S q tensor.

    OMP_NUM_THREADS=1 python benchmarks/rope.py [--reps 5] [--batch 8] [--threads 1] [--cases vit vit-context mvit layouts]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Callable

import torch
import torch.nn as nn
from timm.layers.pos_embed_sincos import apply_rot_embed_cat
from timm.models.eva import EvaBlock

from jepa.config import RopeConfig
from jepa.models.mvit import MViTEncoder
from jepa.models.rope import RotaryEmbedding, apply_rope, gather_rope


def vit_case(batch: int, keep: float | None) -> dict[str, Callable[[], None]]:
    """Step functions (RoPE on / off) for the ViT-S stack; `keep` gathers that fraction of the tokens."""
    torch.manual_seed(0)
    rope = RotaryEmbedding(head_dim=64, ndim=2, coords="centre")
    blocks = nn.ModuleList(EvaBlock(384, 6, qkv_bias=True, num_prefix_tokens=1, attn_type="rope",
                                    rotate_half=rope.rotate_half) for _ in range(12))
    grid, n = (14, 14), 196
    k = n if keep is None else int(n * keep)
    idx = torch.stack([torch.randperm(n)[:k] for _ in range(batch)]) if keep is not None else None
    x = torch.randn(batch, 1 + k, 384)

    def step(use_rope: bool) -> None:
        table = None
        if use_rope:
            table = rope(grid)  # cached after the first call, as in training
            table = gather_rope(table, idx) if idx is not None else table
        y = x
        for blk in blocks:
            y = blk(y, rope=table)
        y.pow(2).mean().backward()
        blocks.zero_grad(set_to_none=True)

    # The rotation alone, as timm's AttentionRope applies it to q and k, forward + backward, 12 blocks.
    qk = torch.randn(2, batch, 6, 1 + k, 64, requires_grad=True)
    grad = torch.randn(batch, 6, 1 + k, 64)

    def rotation_only() -> None:
        table = rope(grid)
        table = gather_rope(table, idx) if idx is not None else table
        for _ in blocks:
            out = [torch.cat([t[:, :, :1], apply_rot_embed_cat(t[:, :, 1:], table, half=rope.rotate_half)], dim=2)
                   for t in qk.unbind(0)]
            torch.autograd.backward(out, [grad, grad])
        qk.grad = None

    return {"on": lambda: step(True), "off": lambda: step(False), "rotation": rotation_only}


def mvit_case() -> dict[str, Callable[[], None]]:
    """Step functions for MViT v2 S on one 16x224x224 clip, RoPE on / off, same weights."""
    torch.manual_seed(0)
    off = MViTEncoder(rope=None).train()
    on = MViTEncoder(rope=RopeConfig(kind="3d")).train()
    on.load_state_dict(off.state_dict())
    x = torch.randn(1, 3, 16, 224, 224)

    def step(model: MViTEncoder) -> None:
        out = model(x)
        (out["tokens"].pow(2).mean() + out["pooled"].pow(2).mean()).backward()
        model.zero_grad(set_to_none=True)

    # The rotation alone: apply_rope on every block's pooled q and k (CLS kept), forward + backward.
    shapes = [(b.attn.num_heads, g) for b, g in zip(on.blocks, on.block_grids)]
    qk = [[torch.randn(1, h, 1 + math.prod(grid), 96, requires_grad=True) for grid in (g.q, g.k)] for h, g in shapes]

    def rotation_only() -> None:
        on.rope.begin()
        for (q, k), g in zip(qk, on.block_grids):
            q_table, k_table = on.rope.tables(g)
            out = [apply_rope(q, q_table, num_prefix_tokens=1), apply_rope(k, k_table, num_prefix_tokens=1)]
            torch.autograd.backward(out, [torch.ones_like(t) for t in out])
            q.grad = k.grad = None

    return {"on": lambda: step(on), "off": lambda: step(off), "rotation": rotation_only}


def layout_case(batch: int) -> dict[str, Callable[[], None]]:
    """One (batch, 6, 1 + 196, 64) q tensor rotated forward + backward three ways: timm's apply with the
    interleaved and with the half pair layout (CLS sliced off and concatenated back, as AttentionRope
    does), and a fused complex multiply over adjacent pairs with an identity row for the CLS."""
    n = 196
    q = torch.randn(batch, 6, 1 + n, 64, requires_grad=True)
    grad = torch.randn(batch, 6, 1 + n, 64)
    table = torch.randn(n, 128)
    turns = torch.cat([torch.ones(1, 32, dtype=torch.complex64), torch.polar(torch.ones(n, 32), torch.randn(n, 32))])

    def timm_apply(half: bool) -> None:
        torch.cat([q[:, :, :1], apply_rot_embed_cat(q[:, :, 1:], table, half=half)], dim=2).backward(grad)
        q.grad = None

    def fused() -> None:
        torch.view_as_real(torch.view_as_complex(q.unflatten(-1, (32, 2))) * turns).flatten(-2).backward(grad)
        q.grad = None

    return {"timm, interleaved pairs": lambda: timm_apply(False), "timm, half layout (ours)": lambda: timm_apply(True),
            "fused complex multiply": fused}


def interleaved(fns: dict[str, Callable[[], None]], reps: int) -> dict[str, dict[str, list[float]]]:
    """Per-call wall and CPU seconds of each function, alternating the order every repetition after one
    warm-up. CPU time (of this process) barely moves when other processes compete for the cores."""
    for fn in fns.values():
        fn()
    times = {name: {"wall": [], "cpu": []} for name in fns}
    names = list(fns)
    for r in range(reps):
        for name in names if r % 2 == 0 else names[::-1]:
            w0, c0 = time.perf_counter(), time.process_time()
            fns[name]()
            times[name]["cpu"].append(time.process_time() - c0)
            times[name]["wall"].append(time.perf_counter() - w0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cases", nargs="+", choices=("vit", "vit-context", "mvit", "layouts"),
                    default=["vit", "vit-context", "mvit", "layouts"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    known = {"vit": (f"ViT-S/16 stack, 224 px, batch {args.batch}, all 196 tokens",
                     lambda: vit_case(args.batch, None)),
             "vit-context": (f"ViT-S/16 stack, 224 px, batch {args.batch}, gathered 98 tokens",
                             lambda: vit_case(args.batch, 0.5)),
             "mvit": ("MViT v2 S, 16x224x224, batch 1", mvit_case)}
    cases = [known[c] for c in args.cases if c in known]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.reps} interleaved reps, "
          f"forward + backward\n")
    print("| case | RoPE off, CPU s/step | RoPE on, CPU s/step | on / off (CPU) | on / off (wall) | "
          "rotation alone, CPU s/step | rotation alone / off step (CPU) |")
    print("|---|---|---|---|---|---|---|")
    for name, make in cases:
        t = interleaved(make(), args.reps)
        med = {fn: {kind: statistics.median(v) for kind, v in kinds.items()} for fn, kinds in t.items()}
        off, on = med["off"]["cpu"], med["on"]["cpu"]
        wall = med["on"]["wall"] / med["off"]["wall"]
        rot = med.get("rotation", {}).get("cpu")
        print(f"| {name} | {off:.3f} | {on:.3f} | {on / off:.3f} | {wall:.3f} | {rot:.3f} | "
              f"{100 * rot / off:.1f}% |", flush=True)
    if "layouts" in args.cases:
        t = interleaved(layout_case(args.batch), 10 * args.reps)
        print(f"\n| rotating one q tensor ({args.batch}, 6, 197, 64), forward + backward | CPU ms (median) |")
        print("|---|---|")
        for name, kinds in t.items():
            print(f"| {name} | {1e3 * statistics.median(kinds['cpu']):.2f} |")


if __name__ == "__main__":
    main()
