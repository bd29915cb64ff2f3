"""Per-GPU memory, communication and data volume of the full-size recipes: pure arithmetic.

    python benchmarks/memory_model.py                 # the tables of docs/scaling.md (markdown)
    OMP_NUM_THREADS=1 python benchmarks/memory_model.py --measure   # + activations of real tiny/small steps

Everything here follows from the model shapes (jepa/config/sizes.py, jepa/models/*), the training
state DeepSpeed keeps per ZeRO stage with bf16 and AdamW (jepa/train/engine.py), the fp32 EMA target
every rank holds outside the engine (jepa/train/ema.py) and the mask statistics of
benchmarks/README.md. `--measure` runs one forward of a real JEPA (tiny and small ViTs, 224 px) on
the CPU and counts the bytes autograd saves for backward, to check the activation term.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

GiB = 2**30
GB = 1e9


@dataclass(frozen=True)
class Vit:
    name: str
    dim: int
    depth: int
    heads: int
    mlp_ratio: float
    patch: int

    def block_params(self, dim: int | None = None, mlp_ratio: float | None = None) -> int:
        """One timm EvaBlock: 2 LayerNorms, qkv + proj (with biases), fc1 + fc2 (with biases)."""
        d = dim or self.dim
        h = int(d * (mlp_ratio or self.mlp_ratio))
        return 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * h + h) + (h * d + d)

    def encoder_params(self, tubelet: int | None = None) -> int:
        """Patch (or tubelet) embedding, blocks, final LayerNorm."""
        kernel = 3 * self.patch * self.patch * (tubelet or 1)
        return kernel * self.dim + self.dim + self.depth * self.block_params() + 2 * self.dim


VITS = {
    "ViT-B/16": Vit("ViT-B/16", 768, 12, 12, 4.0, 16),
    "ViT-L/16": Vit("ViT-L/16", 1024, 24, 16, 4.0, 16),
    "ViT-H/14": Vit("ViT-H/14", 1280, 32, 16, 4.0, 14),
    "ViT-g/14": Vit("ViT-g/14", 1408, 40, 16, 48 / 11, 14),
}
SCALED = ("ViT-L/16", "ViT-H/14", "ViT-g/14")
"""The models of the scaling tables."""
PRED_DIM, PRED_DEPTH = 384, 12
"""The predictor of every full-size config: 384 wide, 12 blocks, MLP ratio 4."""


def predictor_params(enc_dim: int, level_dims: list[int], dim: int = PRED_DIM, depth: int = PRED_DEPTH) -> int:
    """Input projection, mask token, blocks, and one head (LayerNorm + Linear) per hierarchy level."""
    block = Vit("p", dim, depth, 1, 4.0, 1).block_params()
    heads = sum(2 * dim + dim * c + c for c in level_dims)
    return enc_dim * dim + dim + dim + depth * block + heads


@dataclass(frozen=True)
class Workload:
    """One sample's token counts in a step, from the masks (benchmarks/README.md, batch of 64)."""

    name: str
    frames: int  # 1 = image
    size: int = 224
    tubelet: int = 2
    context_passes: tuple[float, ...] = (0.31,)
    """Fraction of the tokens the context encoder sees, one entry per mask set (one pass each)."""
    predictor_seqs: tuple[float, ...] = (0.48, 0.48, 0.48, 0.48)
    """Length of each predictor sequence (context + mask tokens) as a fraction of the tokens."""
    target_frac: float = 0.69
    """Fraction of tokens that are targets, summed over mask sets (for the kept target features)."""

    def tokens(self, vit: Vit) -> int:
        side = self.size // vit.patch
        return side * side * (self.frames // self.tubelet if self.frames > 1 else 1)


IMAGE = Workload("image 224 px", frames=1)
"""I-JEPA masks: context 0.31 of the grid after cutting a batch to its shortest (masked 0.693),
4 target blocks of ~0.17, one predictor sequence of context + block per block."""
VIDEO = Workload("video 16 x 224 px", frames=16, context_passes=(0.196, 0.054), predictor_seqs=(1.0, 1.0),
                 target_frac=0.804 + 0.946)
"""V-JEPA masks: two mask sets (8 x 0.15 and 2 x 0.7), context 0.196 and 0.054 of the tokens,
each predictor sequence at most all tokens (context + the union of its targets)."""


def block_act_values(dim: int, mlp_ratio: float) -> float:
    """Values per token one timm EvaBlock with RoPE saves for backward (fused SDPA attention): LN1 in
    and out, the qkv output (3 d: v is a view of it and keeps all of it alive), the rotated q and k
    (2 d), the attention output, LN2 in and out (10 d in all), the MLP hidden before and after GELU
    (2 r d). No L x L term: SDPA keeps one log-sum-exp per row and head."""
    return (10 + 2 * mlp_ratio) * dim


def activation_bytes(vit: Vit, wl: Workload, batch: int, *, checkpointing: bool, bytes_per: int = 2) -> float:
    """Bytes saved for backward by the context encoder passes and the predictor sequences of one
    micro-batch. With checkpointing each block keeps only its input, plus one block's full set
    during recompute."""
    n = wl.tokens(vit)
    enc_tokens = batch * n * sum(wl.context_passes)
    pred_tokens = batch * n * sum(wl.predictor_seqs)
    if checkpointing:
        per_layer_enc, per_layer_pred = vit.dim, PRED_DIM
        recompute = batch * n * max(max(wl.context_passes) * block_act_values(vit.dim, vit.mlp_ratio),
                                    max(wl.predictor_seqs) * block_act_values(PRED_DIM, 4.0))
    else:
        per_layer_enc, per_layer_pred = block_act_values(vit.dim, vit.mlp_ratio), block_act_values(PRED_DIM, 4.0)
        recompute = 0.0
    values = enc_tokens * vit.depth * per_layer_enc + pred_tokens * PRED_DEPTH * per_layer_pred + recompute
    return values * bytes_per


def target_bytes(vit: Vit, wl: Workload, batch: int, levels: int = 1) -> float:
    """Target encoder pass (no grad): its output features kept for the step (bf16), each level's
    layer-normed targets at the target tokens (fp32), and the largest transient of one block (MLP)."""
    n = wl.tokens(vit)
    kept = batch * n * vit.dim * 2 + levels * batch * n * wl.target_frac * vit.dim * 4
    transient = batch * n * (2 + 2 * vit.mlp_ratio) * vit.dim * 2
    return kept + transient


def state_bytes(trainable: int, stage: int, world: int, bucket: int = 50_000_000,
                in_flight: int = 0) -> dict[str, float]:
    """Per-rank bytes of the trainable state at the end of backward (the peak) under ZeRO `stage` on
    `world` ranks, bf16 + AdamW: bf16 weights (2 B), bf16 gradients (2 B; ZeRO 0/1 hold all of them
    until the reduction at the end of backward, ZeRO 2/3 only their partition), fp32 master weights
    and two Adam moments (12 B) per parameter. ZeRO-3 adds its reduce buffer of `bucket` bf16
    elements (allocated up front) and the gathered weights of the modules in flight (`in_flight`
    parameters, bf16)."""
    w = world
    params = 2 * trainable / (w if stage == 3 else 1)
    grads = 2 * trainable / (w if stage >= 2 else 1)
    optim = 12 * trainable / (w if stage >= 1 else 1)
    buffers = 2 * bucket + 2 * in_flight if stage == 3 else 0
    return {"params": params, "grads": grads, "optim": optim, "buffers": buffers}


def zero_check_table(hidden: int = 1024, layers: int = 10) -> str:
    """The model's figures for benchmarks/train_memory.py's MLP on 2 ranks, to set beside its
    measured table (benchmarks/README.md): MiB per rank."""
    params = layers * (hidden * hidden + hidden) + 2 * hidden
    lines = [f"{params / 1e6:.1f}M parameters, 2 ranks, MiB per rank", "",
             "| ZeRO | module params | fp32 master + Adam | after step | peak, bucket 5e7 | peak, bucket 1e6 |",
             "|---:|---:|---:|---:|---:|---:|"]
    for stage in (0, 1, 2, 3):
        big, small = (state_bytes(params, stage, 2, bucket=b) for b in (50_000_000, 1_000_000))
        after_step = big["params"] + big["optim"] + (big["buffers"] if stage == 3 else 0) + \
            (big["grads"] if stage == 3 else 0)
        lines.append(f"| {stage} | {big['params'] / 2**20:.1f} | {big['optim'] / 2**20:.1f} | "
                     f"{after_step / 2**20:.1f} | {sum(big.values()) / 2**20:.1f} | {sum(small.values()) / 2**20:.1f} |")
    return "\n".join(lines)


def comm_bytes(trainable: int, encoder: int, stage: int, world: int, accum: int = 1) -> float:
    """Bytes each rank sends per optimizer step (ring collectives, bf16): ZeRO 0 all-reduces the
    gradients once (2 x 2P (w-1)/w); ZeRO 1 reduce-scatters them once and all-gathers the updated
    weights (the same volume); ZeRO 2 reduce-scatters every micro-batch; ZeRO 3 also all-gathers
    the weights in forward and again in backward of every micro-batch, and the EMA update gathers
    the context encoder's weights once per step (jepa/train/ema.py)."""
    f = (world - 1) / world
    p = 2 * trainable * f  # one pass of all bf16 weights or gradients through a ring
    if stage == 0:
        return 2 * p
    if stage == 1:
        return p + p
    if stage == 2:
        return accum * p + p
    return accum * 3 * p + 2 * encoder * f


@dataclass(frozen=True)
class Recipe:
    name: str
    vit: Vit
    wl: Workload
    batch: int  # per GPU
    checkpointing: bool
    levels: int = 1
    level_dims_from: tuple[int, ...] = (-1,)


RECIPES = [
    Recipe("H-JEPA ViT-L/16, images", VITS["ViT-L/16"], IMAGE, 128, False, levels=3),
    Recipe("I-JEPA ViT-H/14, images", VITS["ViT-H/14"], IMAGE, 128, False),
    Recipe("I-JEPA ViT-g/14, images", VITS["ViT-g/14"], IMAGE, 64, True),
    Recipe("V-JEPA ViT-L/16, video", VITS["ViT-L/16"], VIDEO, 24, True),
    Recipe("V-JEPA ViT-H/14, video", VITS["ViT-H/14"], VIDEO, 16, True),
    Recipe("V-JEPA ViT-g/14, video", VITS["ViT-g/14"], VIDEO, 12, True),
]


def counts(r: Recipe) -> tuple[int, int]:
    """(context encoder parameters, trainable parameters = encoder + predictor + level heads)."""
    enc = r.vit.encoder_params(r.wl.tubelet if r.wl.frames > 1 else None)
    return enc, enc + predictor_params(r.vit.dim, [r.vit.dim] * r.levels)


def step_flops(r: Recipe) -> float:
    """Training FLOPs of one sample: 2 per multiply-add; target forward over all tokens (1x),
    context encoder and predictor forward + backward (3x), recompute (+1x) with checkpointing."""
    n = r.wl.tokens(r.vit)

    def fwd(vit_dim: int, depth: int, mlp: float, tokens: float) -> float:
        per_token = depth * (2 * (4 * vit_dim * vit_dim + 2 * mlp * vit_dim * vit_dim))
        attention = depth * 4 * tokens * vit_dim  # QK^T and AV per token, sequence of `tokens`
        return tokens * (per_token + attention)

    v = r.vit
    target = fwd(v.dim, v.depth, v.mlp_ratio, n)
    context = sum(fwd(v.dim, v.depth, v.mlp_ratio, f * n) for f in r.wl.context_passes)
    pred = sum(fwd(PRED_DIM, PRED_DEPTH, 4.0, f * n) for f in r.wl.predictor_seqs)
    return target + (4 if r.checkpointing else 3) * (context + pred)


H100_BF16 = 989e12
"""Dense bf16 peak of an H100 SXM (FLOP/s); the step rates below assume MFU 40% of it."""
MFU = 0.40


def memory_table(worlds=(8, 64, 256)) -> str:
    lines = ["| recipe | batch / GPU | tokens / sample | act. ckpt | trainable | EMA target (fp32) | "
             "activations | target pass | " + " | ".join(f"ZeRO {s} @ {w}" for s in (1, 2, 3) for w in worlds)
             + " |", "|---|---:|---:|---|---:|---:|---:|---:|" + "---:|" * 9]
    for r in RECIPES:
        enc, trainable = counts(r)
        act = activation_bytes(r.vit, r.wl, r.batch, checkpointing=r.checkpointing)
        tgt = target_bytes(r.vit, r.wl, r.batch, r.levels)
        ema = 4 * enc
        cells = []
        for stage in (1, 2, 3):
            for w in worlds:
                total = sum(state_bytes(trainable, stage, w, in_flight=2 * r.vit.block_params()).values()) + ema + act + tgt
                cells.append(f"{total / GiB:.0f}")
        lines.append(f"| {r.name} | {r.batch} | {r.wl.tokens(r.vit)} | {'on' if r.checkpointing else 'off'} | "
                     f"{trainable / 1e6:.0f}M | {ema / GiB:.1f} | {act / GiB:.1f} | {tgt / GiB:.1f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def state_table(worlds=(8, 64, 256)) -> str:
    lines = ["| model | trainable | ZeRO | " + " | ".join(f"{w} GPUs" for w in worlds) + " |",
             "|---|---:|---:|" + "---:|" * len(worlds)]
    for name in SCALED:
        vit = VITS[name]
        enc = vit.encoder_params()
        trainable = enc + predictor_params(vit.dim, [vit.dim])
        for stage in (0, 1, 2, 3):
            cells = [f"{(sum(state_bytes(trainable, stage, w, in_flight=2 * vit.block_params()).values()) + 4 * enc) / GiB:.1f}"
                     for w in worlds]
            lines.append(f"| {name} | {trainable / 1e6:.0f}M | {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def activation_table() -> str:
    lines = ["| model | input | tokens | batch / GPU | activations, no ckpt (GiB) | with ckpt (GiB) | "
             "GiB per sample, no ckpt / ckpt |", "|---|---|---:|---:|---:|---:|---|"]
    for vit in (VITS[n] for n in SCALED):
        for wl, batch in ((IMAGE, 128), (VIDEO, 24)):
            off = activation_bytes(vit, wl, batch, checkpointing=False)
            on = activation_bytes(vit, wl, batch, checkpointing=True)
            lines.append(f"| {vit.name} | {wl.name} | {wl.tokens(vit)} | {batch} | {off / GiB:.1f} | {on / GiB:.1f} | "
                         f"{off / batch / GiB:.3f} / {on / batch / GiB:.3f} |")
    return "\n".join(lines)


def comm_table(worlds=(8, 64, 256)) -> str:
    lines = ["| model | trainable | " + " | ".join(f"ZeRO {s}" for s in (0, 1, 2, 3)) + " | ZeRO 2, accum 4 | "
             "ZeRO 3, accum 4 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    w = worlds[-1]
    for name in SCALED:
        vit = VITS[name]
        enc = vit.encoder_params()
        trainable = enc + predictor_params(vit.dim, [vit.dim])
        cells = [f"{comm_bytes(trainable, enc, s, w) / GB:.2f}" for s in (0, 1, 2, 3)]
        cells += [f"{comm_bytes(trainable, enc, 2, w, 4) / GB:.2f}", f"{comm_bytes(trainable, enc, 3, w, 4) / GB:.2f}"]
        lines.append(f"| {name} | {trainable / 1e6:.0f}M | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rate_table() -> str:
    """Step rate at the assumed MFU, the data each GPU reads, and the time per step of ZeRO traffic."""
    lines = ["| recipe | GFLOP / sample | samples/s / GPU | steps/s | data / GPU | ZeRO-2 traffic / step | "
             "at 50 GB/s / GPU |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in RECIPES:
        enc, trainable = counts(r)
        flops = step_flops(r)
        rate = H100_BF16 * MFU / flops
        per_sample = 110e3 if r.wl.frames == 1 else CLIP_BYTES
        comm = comm_bytes(trainable, enc, 2, 256)
        lines.append(f"| {r.name} | {flops / 1e9:.0f} | {rate:.0f} | {rate / r.batch:.2f} | "
                     f"{rate * per_sample / 1e6:.0f} MB/s | {comm / GB:.2f} GB | "
                     f"{comm / 50e9 * 1e3:.0f} ms of {1e3 * r.batch / rate:.0f} ms |")
    return "\n".join(lines)


@dataclass(frozen=True)
class ConfigRun:
    """A full-size config under configs/ as its header states it: GPUs, batch per GPU, steps."""

    config: str
    recipe: Recipe
    gpus: int
    steps: int
    gflop: float | None = None
    """FLOPs per sample and step when the ViT count does not apply (MViT)."""


MVIT_FORWARD_GFLOP = 2 * 64.2
"""torchvision's MViT v2 S: 64.2 GMACs per 16 x 224 x 224 clip (its model card), 2 FLOPs each."""


def mvit_step_gflop() -> float:
    """MViT cannot drop tokens: the context encoder runs the whole clip once per mask set (2 sets,
    forward + backward = 3x), the target encoder once (1x); the predictor (checkpointed: 4x) runs
    context + targets = the 392 output tokens per set."""
    wl = Workload("mvit", frames=16, predictor_seqs=(1.0, 1.0))
    pred = sum(f * 392 * PRED_DEPTH * 2 * (12 * PRED_DIM**2) + PRED_DEPTH * 4 * (f * 392) ** 2 * PRED_DIM
               for f in wl.predictor_seqs)
    return (MVIT_FORWARD_GFLOP * (1 + 3 * 2) + 4 * pred / 1e9)


CONFIG_RUNS = [
    ConfigRun("ijepa_vitb16", Recipe("I-JEPA ViT-B/16", VITS["ViT-B/16"], IMAGE, 128, False), 16, 187_500),
    ConfigRun("hjepa_vitb16", Recipe("H-JEPA ViT-B/16", VITS["ViT-B/16"], IMAGE, 128, False, levels=3), 16, 187_500),
    ConfigRun("hjepa_vitl16", RECIPES[0], 16, 187_500),
    ConfigRun("ijepa_vith14", RECIPES[1], 16, 187_500),
    ConfigRun("vjepa_vitl16", RECIPES[3], 128, 90_000),
    ConfigRun("vjepa_mvit_v2_s", Recipe("V-JEPA MViT v2 S", VITS["ViT-B/16"], VIDEO, 16, False), 64, 40_000,
              gflop=mvit_step_gflop()),
]
A100_BF16 = 312e12


def run_table() -> str:
    """Whole-run compute of each full-size config and its time at two assumed efficiencies."""
    lines = ["| config | GPUs | global batch | steps | samples | GFLOP / sample | run FLOP | H100 at 40% MFU | "
             "A100 at 20% MFU | samples/s / GPU at 40% H100 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in CONFIG_RUNS:
        gflop = c.gflop or step_flops(c.recipe) / 1e9
        samples = c.gpus * c.recipe.batch * c.steps
        flop = samples * gflop * 1e9
        h100 = flop / (c.gpus * H100_BF16 * MFU) / 3600
        a100 = flop / (c.gpus * A100_BF16 * 0.2) / 3600
        rate = H100_BF16 * MFU / (gflop * 1e9)
        lines.append(f"| {c.config} | {c.gpus} | {c.gpus * c.recipe.batch} | {c.steps:,} | {samples / 1e6:.0f}M | "
                     f"{gflop:.0f} | {flop:.1e} | {h100:.1f} h | {a100:.1f} h | {rate:.0f} |")
    return "\n".join(lines)


CLIP_BYTES = 1.5e6
"""One stored training clip: a 224 px-short-side H.264 video of ~10 s at ~1.2 Mbit/s (Kinetics-style
re-encodes), from which one 16-frame clip (frame step 4 = 64 source frames, ~2 s) is decoded."""


def shard_table() -> str:
    rows = [
        ("1B images, 224 px short side JPEG", 1e9, 110e3),
        ("1M hours of video, 224 px short side, ~1.2 Mbit/s", 1e6 * 3600 / 10, CLIP_BYTES),
    ]
    lines = ["| dataset | samples | bytes / sample | total | shard of 1 GB: samples | shards of 1 GB | "
             "at 8 GB/s aggregate, one pass |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, n, size in rows:
        total = n * size
        per_shard = int(1e9 // size)
        lines.append(f"| {name} | {n:.2g} | {size / 1e3:.0f} KB | {total / 1e12:.0f} TB | {per_shard} | "
                     f"{math.ceil(n / per_shard):,} | {total / 8e9 / 3600:.1f} h |")
    return "\n".join(lines)


def measure() -> str:
    """One forward of real JEPAs (ViT tiny / small, 224 px, I-JEPA masks, fp32, CPU): bytes autograd
    saves for backward in the context encoder + predictor, against `activation_bytes`' count. With
    checkpointing the forward saves each block's input; the recompute of one block during backward
    is not in a forward count, so the model's figure leaves it out here too."""
    import torch

    from jepa.config import load
    from jepa.masks import build_mask_generator
    from jepa.models.factory import build_jepa, input_grid

    lines = ["| model | act. ckpt | batch | context tokens | predictor tokens (4 seqs) | measured MiB | model MiB "
             "| model / measured |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    batch, n = 4, 196
    for size, dim, heads, pdim, pheads in (("tiny", 192, 3, 192, 6), ("small", 384, 6, 384, 12)):
        for ckpt in (False, True):
            cfg = load("ijepa_vitb16", [f"model.size={size}", f"model.predictor.embed_dim={pdim}",
                                        f"model.predictor.num_heads={pheads}",
                                        f"model.activation_checkpointing={str(ckpt).lower()}"])
            torch.manual_seed(0)
            model = build_jepa(cfg)
            masks = build_mask_generator(cfg.mask, input_grid(cfg))(batch, torch.Generator().manual_seed(0))
            x = torch.randn(batch, 3, 224, 224)
            with torch.no_grad():
                targets = model.compute_targets(x, masks)
            seen: dict[int, int] = {}
            weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

            def pack(t):  # activations only: not weights, nor views of them (W.T in a Linear)
                if t.grad_fn is not None and t.untyped_storage().data_ptr() not in weights:
                    seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss, _ = model.trainable(x, masks, targets)
            del loss
            measured = sum(seen.values())
            kc = masks[0].context.shape[1]
            kt = [t.shape[1] for t in masks[0].targets]
            enc_layer = dim if ckpt else block_act_values(dim, 4.0)
            pred_layer = pdim if ckpt else block_act_values(pdim, 4.0)
            predicted = (batch * kc * 12 * enc_layer + batch * sum(kc + t for t in kt) * PRED_DEPTH * pred_layer) * 4
            lines.append(f"| ViT-{size} (predictor {pdim} wide) | {'on' if ckpt else 'off'} | {batch} | {kc} | "
                         f"{sum(kc + t for t in kt)} | {measured / 2**20:.1f} | {predicted / 2**20:.1f} | "
                         f"{predicted / measured:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="also measure activations of tiny/small steps (torch)")
    args = parser.parse_args()
    print("## Trainable state + fp32 EMA target per GPU (GiB), bf16 + AdamW\n")
    print(state_table(), "\n")
    print("## Activations per GPU (GiB), bf16\n")
    print(activation_table(), "\n")
    print("## Per-GPU total of each recipe (GiB): state + EMA + activations + target pass\n")
    print(memory_table(), "\n")
    print("## Bytes each GPU sends per optimizer step (GB), 256 GPUs\n")
    print(comm_table(), "\n")
    print(f"## Step rates at MFU {MFU:.0%} of an H100 (bf16 dense {H100_BF16 / 1e12:.0f} TFLOP/s), data and traffic\n")
    print(rate_table(), "\n")
    print("## Full-size configs: compute and time per run (estimates, not measurements)\n")
    print(run_table(), "\n")
    print("## Datasets as shards\n")
    print(shard_table())
    print("\n## The ZeRO state model on benchmarks/train_memory.py's MLP\n")
    print(zero_check_table())
    if args.measure:
        print("\n## Measured activations (fp32, CPU, one forward)\n")
        print(measure())


if __name__ == "__main__":
    main()
