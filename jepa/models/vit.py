"""ViT encoder over image patches or video tubelets, built from timm's RoPE blocks.

Masked tokens are dropped, not zeroed: `forward(x, keep_idx)` embeds every patch, gathers the kept
ones (and their rotary tables, so each keeps its true grid position) and runs the blocks on those
alone, so the cost scales with the kept fraction. There is no class token; tokens are in row-major
grid order, (h, w) for images and (t, h, w) for video.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
import torch.nn as nn
from timm.models.eva import EvaBlock
from torch.utils.checkpoint import checkpoint

from jepa.models.rope import RotaryEmbedding, gather_rope


def sincos_embed(grid: tuple[int, ...], dim: int, *, device=None) -> torch.Tensor:
    """(prod(grid), dim) fixed sin-cos absolute positions: each axis gets an equal even share of the
    channels (sin half, cos half, frequencies 1/10000^(2i/d)); leftover channels stay zero."""
    per_axis = 2 * (dim // (2 * len(grid)))
    assert per_axis > 0, f"dim {dim} is too small for a {len(grid)}-D sin-cos embedding"
    omega = 1.0 / 10000 ** (torch.arange(per_axis // 2, device=device, dtype=torch.float64) / (per_axis // 2))
    coords = torch.meshgrid(*(torch.arange(g, device=device, dtype=torch.float64) for g in grid), indexing="ij")
    parts = []
    for coord in coords:
        angles = coord.flatten()[:, None] * omega[None, :]
        parts += [angles.sin(), angles.cos()]
    out = torch.cat(parts, dim=1)
    out = torch.nn.functional.pad(out, (0, dim - out.shape[1]))
    return out.float()


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(B, N, C) tokens at per-sample indices (B, K) -> (B, K, C)."""
    assert idx.dim() == 2 and idx.shape[0] == x.shape[0], f"indices {tuple(idx.shape)} for tokens {tuple(x.shape)}"
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))


def make_blocks(*, dim: int, depth: int, num_heads: int, mlp_ratio: float, drop_path: float,
                rotate_half: bool = False) -> nn.ModuleList:
    """Pre-norm transformer blocks with rotary attention (SDPA), drop path rising linearly to `drop_path`."""
    rates = [drop_path * i / (depth - 1) for i in range(depth)] if depth > 1 else [drop_path]
    return nn.ModuleList(
        EvaBlock(dim, num_heads, qkv_bias=True, mlp_ratio=mlp_ratio, num_prefix_tokens=0, attn_type="rope",
                 rotate_half=rotate_half, drop_path=rate, norm_layer=_layer_norm)
        for rate in rates
    )


def _layer_norm(dim: int, **kwargs) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6, **kwargs)


def init_weights(module: nn.Module, blocks: nn.ModuleList) -> None:
    """Truncated-normal linear/conv weights, zero biases; residual output projections scaled down by
    sqrt(2 * layer) so deep stacks start near identity."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        for layer, blk in enumerate(blocks, start=1):
            blk.attn.proj.weight.div_(math.sqrt(2.0 * layer))
            blk.mlp.fc2.weight.div_(math.sqrt(2.0 * layer))


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, rope: Optional[RotaryEmbedding],
               table: Optional[torch.Tensor], *, checkpointing: bool,
               keep: Iterable[int] = ()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Run `blocks` over x with the (gathered) RoPE table of `rope`; returns the final tokens and the
    outputs of the blocks listed in `keep`."""
    keep = set(keep)
    outputs = {}
    # Recompute in backward only when a backward will happen; use_reentrant=False passes kwargs through.
    recompute = checkpointing and torch.is_grad_enabled()
    for i, blk in enumerate(blocks):
        block_table = rope.for_block(table, i) if table is not None else None
        x = checkpoint(blk, x, rope=block_table, use_reentrant=False) if recompute else blk(x, rope=block_table)
        if i in keep:
            outputs[i] = x
    return x, outputs


class VisionTransformer(nn.Module):
    """ViT over (B, 3, H, W) images (`tubelet_size=None`) or (B, 3, T, H, W) clips (tubelets)."""

    def __init__(self, *, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0,
                 patch_size: int = 16, tubelet_size: Optional[int] = None, in_chans: int = 3,
                 rope: Optional[RotaryEmbedding] = None, abs_pos: bool = False, drop_path: float = 0.0,
                 activation_checkpointing: bool = False):
        super().__init__()
        if rope is None and not abs_pos:
            raise ValueError("the encoder needs positions: give it a RoPE module or set abs_pos=True")
        self.embed_dim, self.depth, self.num_heads = embed_dim, depth, num_heads
        self.patch_size, self.tubelet_size = patch_size, tubelet_size
        self.video = tubelet_size is not None
        if self.video:
            kernel = (tubelet_size, patch_size, patch_size)
            self.patch_embed = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)
        else:
            self.patch_embed = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.rope = rope
        self.abs_pos = abs_pos
        self.activation_checkpointing = activation_checkpointing
        self.blocks = make_blocks(dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                  drop_path=drop_path, rotate_half=RotaryEmbedding.rotate_half)
        self.norm = _layer_norm(embed_dim)
        init_weights(self, self.blocks)

    @property
    def block_dims(self) -> list[int]:
        """Channels of each block's output (the same for every ViT block)."""
        return [self.embed_dim] * self.depth

    def grid(self, shape: torch.Size | tuple[int, ...]) -> tuple[int, ...]:
        """Token grid of an input of `shape`, (h, w) or (t, h, w); raises ValueError when the patch or
        tubelet does not divide it."""
        want = 5 if self.video else 4
        if len(shape) != want:
            kind = "(B, 3, T, H, W) clips" if self.video else "(B, 3, H, W) images"
            raise ValueError(f"this encoder takes {kind}, got a tensor of shape {tuple(shape)}")
        *time, H, W = shape[2:]
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"input {H}x{W} px is not a multiple of the patch size {self.patch_size}: "
                             f"resize or crop to a multiple of {self.patch_size}")
        if time and time[0] % self.tubelet_size:
            raise ValueError(f"clip of {time[0]} frames is not a multiple of the tubelet size "
                             f"{self.tubelet_size}: use a multiple of {self.tubelet_size} frames")
        return (*(t // self.tubelet_size for t in time), H // self.patch_size, W // self.patch_size)

    def forward(self, x: torch.Tensor, keep_idx: Optional[torch.Tensor] = None,
                return_blocks: Iterable[int] = ()) -> dict:
        """x: images or clips; keep_idx (B, K) int64: run only these tokens (row-major grid indices).

        Returns dict(tokens (B, K|N, D) after the final norm, pooled (B, D) their mean, grid (the
        full token grid), blocks {i: (tokens of block i before the final norm, grid)}).
        """
        grid = self.grid(x.shape)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        if self.abs_pos:
            tokens = tokens + sincos_embed(grid, self.embed_dim, device=x.device).to(tokens.dtype)
        table = self.rope(grid) if self.rope is not None else None
        if keep_idx is not None:
            tokens = gather_tokens(tokens, keep_idx)
            table = gather_rope(table, keep_idx) if table is not None else None
        keep = {i % self.depth for i in return_blocks}
        tokens, outputs = run_blocks(self.blocks, tokens, self.rope, table,
                                     checkpointing=self.activation_checkpointing, keep=keep)
        tokens = self.norm(tokens)
        return dict(tokens=tokens, pooled=tokens.mean(1), grid=grid,
                    blocks={i: (out, grid) for i, out in outputs.items()})
