"""FLOPs of a ViT JEPA training step, counted from the tokens actually run, and the device's peak.

Matmul FLOPs only (2 per multiply-add): linears, the patch convolution and the two attention
products; norms, activations and RoPE are left out, as MFU conventions do (PaLM, nanoGPT). Per step:

- target encoder: every token, forward only (no grad): 1x forward;
- context encoder: the patch embedding of every patch (it runs before the gather), then the blocks
  on the kept context tokens only, once per mask set;
- predictor: its input projection on the context tokens, then the blocks on [context | mask tokens],
  one sequence per target block (`per_block`) or one for all; the level heads on the target tokens;
- the trained parts count 3x their forward (forward + backward); the target pass counts 1x.

Everything here is a pure function of shapes, which the host knows without reading the device.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from jepa.config import Config
from jepa.config.sizes import is_video_model, vit_dims

# Peak dense matmul TFLOPS per device (bf16 tensor cores, plain fp32), by a piece of the device name;
# the first match wins. Vendor data sheets, dense (no sparsity).
PEAK_TFLOPS = (
    ("H100 PCIe", {"bf16": 756.0, "fp32": 51.0}),
    ("H100", {"bf16": 989.0, "fp32": 67.0}),
    ("H200", {"bf16": 989.0, "fp32": 67.0}),
    ("A100", {"bf16": 312.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "fp32": 91.6}),
)


@dataclass(frozen=True)
class FlopModel:
    """The dimensions FLOP counting needs: a ViT encoder and its predictor."""

    embed_dim: int
    depth: int
    mlp_hidden: int
    patch_volume: int
    """Input values per token: channels x patch x patch (x tubelet)."""
    pred_dim: int
    pred_depth: int
    pred_mlp_hidden: int
    head_dims: tuple[int, ...]
    """Output channels of each level head."""
    per_block: bool

    @classmethod
    def from_config(cls, cfg: Config, *, in_chans: int = 3) -> Optional[FlopModel]:
        """The config's model, or None for an encoder this count does not describe (MViT)."""
        m = cfg.model
        if m.backbone != "vit":
            return None
        dims = vit_dims(m)
        p = m.predictor
        volume = in_chans * m.patch_size ** 2 * (m.tubelet_size if is_video_model(cfg) else 1)
        return cls(embed_dim=dims.embed_dim, depth=dims.depth, mlp_hidden=int(dims.embed_dim * dims.mlp_ratio),
                   patch_volume=volume, pred_dim=p.embed_dim, pred_depth=p.depth, pred_mlp_hidden=4 * p.embed_dim,
                   head_dims=(dims.embed_dim,) * len(cfg.hierarchy.levels), per_block=p.per_block)


def block_flops(tokens: int, dim: int, mlp_hidden: int) -> int:
    """Forward FLOPs of one pre-norm transformer block on one sequence of `tokens` tokens:
    qkv, output projection and the MLP's two linears, plus q @ k^T and attention @ v."""
    linears = 2 * tokens * dim * (3 * dim + dim + 2 * mlp_hidden)
    attention = 2 * 2 * tokens * tokens * dim
    return linears + attention


def encoder_flops(m: FlopModel, *, num_tokens: int, kept: int) -> int:
    """Forward FLOPs of the encoder for one sample: patch embedding of all `num_tokens` patches, the
    blocks on `kept` of them."""
    return 2 * num_tokens * m.patch_volume * m.embed_dim + m.depth * block_flops(kept, m.embed_dim, m.mlp_hidden)


def predictor_flops(m: FlopModel, *, context: int, targets: Sequence[int]) -> int:
    """Forward FLOPs of the predictor and level heads for one sample with `context` context tokens and
    target blocks of `targets` tokens each."""
    lengths = [context + t for t in targets] if m.per_block else [context + sum(targets)]
    blocks = sum(m.pred_depth * block_flops(n, m.pred_dim, m.pred_mlp_hidden) for n in lengths)
    embed = 2 * context * m.embed_dim * m.pred_dim
    heads = sum(2 * sum(targets) * m.pred_dim * d for d in m.head_dims)
    return embed + blocks + heads


def step_flops(m: FlopModel, *, batch: int, num_tokens: int, mask_sets: Sequence[tuple[int, Sequence[int]]]) -> int:
    """FLOPs of one training micro-batch (forward + backward): `mask_sets` holds, per mask set, the
    number of context tokens and the length of each target block (equal over the batch)."""
    target = encoder_flops(m, num_tokens=num_tokens, kept=num_tokens)
    trained = sum(encoder_flops(m, num_tokens=num_tokens, kept=kc) + predictor_flops(m, context=kc, targets=kts)
                  for kc, kts in mask_sets)
    return batch * (target + 3 * trained)


def mask_lengths(masks: Sequence) -> list[tuple[int, list[int]]]:
    """(context length, [target block lengths]) of each mask set, from shapes (no device read)."""
    return [(ms.context.shape[1], [t.shape[1] for t in ms.targets]) for ms in masks]


def peak_flops(device: torch.device, *, bf16: bool, override_tflops: Optional[float] = None) -> tuple[Optional[float], str]:
    """Peak FLOP/s of one device for MFU and where it comes from: the user's value, the table for a
    known GPU, or (CPU) a matmul probe; (None, reason) for an unknown accelerator."""
    if override_tflops:
        return override_tflops * 1e12, "logging.peak_tflops"
    kind = "bf16" if bf16 else "fp32"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in PEAK_TFLOPS:
            if key in name:
                return peaks[kind] * 1e12, f"{name} {kind} table"
        return None, f"{name} is not in the peak table: set logging.peak_tflops for time/mfu"
    if device.type == "cpu":
        return probe_matmul_flops(torch.bfloat16 if bf16 else torch.float32), f"CPU {kind} matmul probe"
    return None, f"no peak known for {device.type}: set logging.peak_tflops for time/mfu"


def probe_matmul_flops(dtype: torch.dtype, *, n: int = 512, seconds: float = 0.3) -> float:
    """The best FLOP/s of square n x n matmuls over about `seconds` on the CPU (torch's thread count).

    Many short products (about 2 ms each in fp32 on one core), so that the best of them ran
    undisturbed even on a machine shared with other jobs."""
    gen = torch.Generator().manual_seed(0)  # not the global generator: a resumed run's draws stay put
    a, b = (torch.randn(n, n, generator=gen).to(dtype) for _ in range(2))
    a @ b  # warm-up: the library's first call sets itself up
    best, end = math.inf, time.perf_counter() + seconds
    while time.perf_counter() < end or best == math.inf:
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best
