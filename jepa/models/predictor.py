"""Narrow transformer predictor: context features + one mask token per target position -> predictions.

Context features are projected to the predictor width; every target position gets the same learned
mask token, told apart only by its position (RoPE at the predictor's head_dim, plus sin-cos if the
model uses absolute positions). The output stays at the predictor width: each hierarchy level has
its own light head (LayerNorm + Linear) that maps it to that level's target channels.

Target blocks run either all in one sequence (`per_block=False`, V-JEPA) or one sequence per block
(`per_block=True`, I-JEPA), the latter as one pass per block (a fixed count, as ZeRO-3 requires).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from jepa.models.rope import RotaryEmbedding, gather_rope
from jepa.models.vit import init_weights, make_blocks, run_blocks, sincos_embed


class Predictor(nn.Module):
    def __init__(self, *, encoder_dim: int, embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float = 4.0, rope: Optional[RotaryEmbedding] = None, abs_pos: bool = False,
                 per_block: bool = False, drop_path: float = 0.0, activation_checkpointing: bool = False):
        super().__init__()
        if rope is None and not abs_pos:
            raise ValueError("the predictor needs target positions: give it a RoPE module or set abs_pos=True")
        self.embed_dim = embed_dim
        self.rope, self.abs_pos, self.per_block = rope, abs_pos, per_block
        self.activation_checkpointing = activation_checkpointing
        self.embed = nn.Linear(encoder_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.blocks = make_blocks(dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                  drop_path=drop_path, rotate_half=RotaryEmbedding.rotate_half)
        init_weights(self, self.blocks)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, context: torch.Tensor, context_idx: torch.Tensor, targets: list[torch.Tensor],
                grid: tuple[int, ...]) -> list[torch.Tensor]:
        """context (B, Kc, encoder_dim) at grid indices context_idx (B, Kc); targets: one (B, Kt_i)
        index tensor per target block. Returns one (B, Kt_i, embed_dim) prediction per block."""
        B, Kc, _ = context.shape
        assert context_idx.shape == (B, Kc), f"context {tuple(context.shape)} vs indices {tuple(context_idx.shape)}"
        assert all(t.dim() == 2 and t.shape[0] == B for t in targets), [tuple(t.shape) for t in targets]
        z = self.embed(context)
        table = self.rope(grid) if self.rope is not None else None
        pos = sincos_embed(grid, self.embed_dim, device=z.device).to(z.dtype) if self.abs_pos else None
        if not self.per_block:
            out = self._run(z, context_idx, torch.cat(targets, dim=1), table, pos)
            return list(out.split([t.shape[1] for t in targets], dim=1))
        # One sequence per block, one pass per block. The number of passes must not depend on the
        # data: under ZeRO-3 every rank has to run the same modules the same number of times (each
        # run gathers parameters collectively), and block lengths differ between ranks.
        return [self._run(z, context_idx, t, table, pos) for t in targets]

    def _run(self, z: torch.Tensor, context_idx: torch.Tensor, target_idx: torch.Tensor,
             table: Optional[torch.Tensor], pos: Optional[torch.Tensor]) -> torch.Tensor:
        """One batch of sequences [context | mask tokens]; returns the outputs at the mask tokens."""
        B, Kc, D = z.shape
        masks = self.mask_token.to(z.dtype).expand(B, target_idx.shape[1], D)
        if pos is not None:
            z = z + pos[context_idx]
            masks = masks + pos[target_idx]
        idx = torch.cat([context_idx, target_idx], dim=1)
        gathered = gather_rope(table, idx) if table is not None else None
        x, _ = run_blocks(self.blocks, torch.cat([z, masks], dim=1), self.rope, gathered,
                          checkpointing=self.activation_checkpointing)
        return x[:, Kc:]


class LevelHead(nn.Sequential):
    """Maps predictor-width tokens to one hierarchy level's target channels."""

    def __init__(self, *, in_dim: int, out_dim: int):
        super().__init__(nn.LayerNorm(in_dim, eps=1e-6), nn.Linear(in_dim, out_dim))
        nn.init.trunc_normal_(self[1].weight, std=0.02)
        nn.init.zeros_(self[1].bias)

