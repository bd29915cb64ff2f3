"""The JEPA module: context encoder + predictor + level heads (trainable) and an EMA target encoder.

One step is split in two so that DeepSpeed can wrap only the trainable part:

    targets = jepa.compute_targets(x, masks)          # target encoder, no grad, outside the engine
    loss, metrics = engine(x, masks, targets)         # engine wraps jepa.trainable

`JEPA.forward(x, masks)` composes both for plain torch use. The target encoder is a deep copy of the
context encoder, frozen, kept in eval mode and outside `trainable`, so a bf16 engine never casts it.

Encoders: a ViT drops masked tokens (the context encoder runs only context tokens). MViT cannot drop
tokens: it zeroes the pixels of non-context stage-0 cells, replaces those cells by its learned mask
token, and the context features are its output tokens at the context cells. Masks are defined on the
encoder's output grid (for MViT v2 S, 16x224x224 -> 8x7x7); an output cell covers a whole box of
stage-0 cells.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from jepa.models.hierarchy import (Level, LevelTarget, gather_level, level_targets, pooled_grid, pooled_loss,
                                   token_cells)
from jepa.models.mvit import expand_cells
from jepa.models.vit import VisionTransformer, gather_tokens


@dataclass
class Targets:
    """What the target encoder hands to the trainable part for one batch."""

    levels: list[list[LevelTarget]]
    """[mask set][level]."""
    grid: tuple[int, ...]
    """The encoder's output token grid (what the masks index)."""
    features: torch.Tensor
    """(B, N, D) the target encoder's output tokens, for collapse diagnostics."""
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


def effective_rank(features: torch.Tensor, max_rows: int = 4096) -> torch.Tensor:
    """exp(entropy) of the normalised singular values of (rows, C) features (RankMe); fp32.

    Rows beyond `max_rows` are subsampled with an even stride to bound the SVD cost."""
    rows = features.reshape(-1, features.shape[-1]).float()
    if rows.shape[0] > max_rows:
        rows = rows[:: math.ceil(rows.shape[0] / max_rows)]
    s = torch.linalg.svdvals(rows)
    p = s / s.sum().clamp_min(1e-12)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


def stage0_mask(keep: torch.Tensor, out_grid: tuple[int, ...], stage0_grid: tuple[int, ...]) -> torch.Tensor:
    """(B, N_out) bool kept output cells -> (B, N0) bool *masked* stage-0 cells: each output cell
    stands for the box of stage-0 cells it covers (the grids must divide)."""
    ratios = []
    for n0, n in zip(stage0_grid, out_grid):
        if n0 % n:
            raise ValueError(f"MViT stage-0 grid {stage0_grid} is not a whole multiple of its output grid "
                             f"{out_grid}: choose a clip size whose grids divide (e.g. 16x224x224)")
        ratios.append(n0 // n)
    return expand_cells(~keep, grid=out_grid, factors=ratios).flatten(1)


class Trainable(nn.Module):
    """Context encoder, predictor and level heads: the part an optimizer (or DeepSpeed) owns."""

    def __init__(self, *, context_encoder: nn.Module, predictor: nn.Module, heads: nn.ModuleList,
                 levels: list[Level], loss: str, min_keep: int):
        super().__init__()
        assert len(heads) == len(levels), f"{len(heads)} heads for {len(levels)} levels"
        self.context_encoder, self.predictor, self.heads = context_encoder, predictor, heads
        self.levels, self.loss_kind, self.min_keep = levels, loss, min_keep

    def encode_context(self, x: torch.Tensor, context: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """(B, Kc, D) context features at the context indices of the output grid."""
        if isinstance(self.context_encoder, VisionTransformer):
            return self.context_encoder(x, keep_idx=context)["tokens"]
        keep = torch.zeros(context.shape[0], math.prod(grid), dtype=torch.bool, device=context.device)
        keep.scatter_(1, context, True)
        token_mask = stage0_mask(keep, grid, self.context_encoder.stage0)
        out = self.context_encoder(x, token_mask=token_mask)
        assert tuple(out["grid"]) == tuple(grid), f"context grid {out['grid']} != target grid {grid}"
        return gather_tokens(out["tokens"], context)

    def level_losses(self, preds: torch.Tensor, targets: list[LevelTarget]) -> list[torch.Tensor]:
        """Per level: its head on the (B, Kt, predictor width) predictions, pooled loss vs its targets."""
        return [pooled_loss(head(preds), t, kind=self.loss_kind) for head, t in zip(self.heads, targets, strict=True)]

    def forward(self, x: torch.Tensor, masks: list, targets: Targets) -> tuple[torch.Tensor, dict]:
        """Loss = sum over levels of weight x level loss, each averaged over the mask sets."""
        num_tokens = math.prod(targets.grid)
        level_losses = [x.new_zeros((), dtype=torch.float32) for _ in self.levels]
        context_ratio = target_ratio = 0.0
        for mask_set, level_targets_ in zip(masks, targets.levels, strict=True):
            context = mask_set.context
            if context.shape[1] < self.min_keep:
                raise ValueError(f"the mask leaves {context.shape[1]} context tokens, fewer than "
                                 f"mask.min_keep = {self.min_keep}: lower the target scales or min_keep")
            features = self.encode_context(x, context, targets.grid)
            preds = torch.cat(self.predictor(features, context, mask_set.targets, targets.grid), dim=1)
            for i, loss in enumerate(self.level_losses(preds, level_targets_)):
                level_losses[i] = level_losses[i] + loss
            context_ratio += context.shape[1] / num_tokens
            target_ratio = target_ratio + _union_fraction(mask_set.targets, num_tokens)
        n = len(masks)
        level_losses = [loss / n for loss in level_losses]
        loss = sum(lv.weight * ll for lv, ll in zip(self.levels, level_losses))
        metrics = {f"loss/level{i}": ll.detach() for i, ll in enumerate(level_losses)}
        # From shapes, a host scalar: built on the device of the other metrics, which are stacked together.
        metrics["mask/context_ratio"] = torch.tensor(context_ratio / n, device=x.device)
        metrics["mask/target_ratio"] = (target_ratio / n).detach()
        metrics.update(targets.metrics)
        return loss, metrics


def _union_fraction(targets: list[torch.Tensor], num_tokens: int) -> torch.Tensor:
    """Mean over the batch of the fraction of tokens covered by any target block (stays on device)."""
    idx = torch.cat(targets, dim=1)
    covered = torch.zeros(idx.shape[0], num_tokens, device=idx.device).scatter_(1, idx, 1.0)
    return covered.mean()


class JEPA(nn.Module):
    """`trainable` (context encoder, predictor, heads) and `target_encoder` (EMA copy, frozen, fp32)."""

    def __init__(self, *, context_encoder: nn.Module, predictor: nn.Module, heads: nn.ModuleList,
                 levels: list[Level], loss: str = "smooth_l1", min_keep: int = 1):
        super().__init__()
        self.levels = levels
        self.trainable = Trainable(context_encoder=context_encoder, predictor=predictor, heads=heads,
                                   levels=levels, loss=loss, min_keep=min_keep)
        self.target_encoder = copy.deepcopy(context_encoder).requires_grad_(False).eval()

    @property
    def context_encoder(self) -> nn.Module:
        return self.trainable.context_encoder

    @property
    def predictor(self) -> nn.Module:
        return self.trainable.predictor

    def train(self, mode: bool = True) -> JEPA:
        """The target encoder stays in eval mode (no drop path, no position augmentation)."""
        super().train(mode)
        self.target_encoder.eval()
        return self

    @torch.no_grad()
    def compute_targets(self, x: torch.Tensor, masks: list) -> Targets:
        """Run the target encoder on all tokens; for every mask set, each level's targets at the target
        tokens, averaged per (target block, cell) over those tokens only."""
        depth = len(self.target_encoder.block_dims)
        inner = sorted({lv.block for lv in self.levels if lv.block != depth - 1})
        return self.targets_from_output(self.target_encoder(x, return_blocks=inner), masks)

    @torch.no_grad()
    def targets_from_output(self, out: dict, masks: list) -> Targets:
        """The hierarchy's targets from a target-encoder output (tokens, grid, blocks of every level)."""
        depth = len(self.target_encoder.block_dims)
        grid = tuple(out["grid"])
        device = out["tokens"].device
        per_level = []  # (per-output-token targets (B, N, C), cell of each output token or None, cells)
        for lv in self.levels:
            # The last block's target is the encoder's (normed) output, as in I-JEPA / V-JEPA.
            feats, lv_grid = (out["tokens"], grid) if lv.block == depth - 1 else out["blocks"][lv.block]
            lv_grid = tuple(lv_grid)
            cells = token_cells(grid, lv_grid, lv.pool, device=device)  # also refuses cells that split a token
            # Pool 1 (then lv_grid == grid): each token is its own cell, the plain per-token loss.
            per_level.append((level_targets(feats, level_grid=lv_grid, out_grid=grid),
                              cells if any(p > 1 for p in lv.pool) else None,
                              math.prod(pooled_grid(lv_grid, lv.pool))))
        levels = [[gather_level(feats, mask_set.targets, cell_of_token=cells, cells_per_block=num)
                   for feats, cells, num in per_level] for mask_set in masks]
        feats = out["tokens"]
        std = feats.float().reshape(-1, feats.shape[-1]).std(dim=0).mean()
        return Targets(levels=levels, grid=grid, features=feats, metrics={"repr/target_std": std})

    def forward(self, x: torch.Tensor, masks: list) -> tuple[torch.Tensor, dict]:
        return self.trainable(x, masks, self.compute_targets(x, masks))

    @staticmethod
    def effective_rank(targets: Targets) -> torch.Tensor:
        """Effective rank of the target encoder's output features (costly: call every N steps)."""
        return effective_rank(targets.features)
