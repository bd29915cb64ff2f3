"""Hierarchy levels (H-JEPA): targets and predictions averaged over the same tokens of grid cells.

A level pools the target encoder's features of one block over cells of `pool` tokens per grid axis
(2D for images, 3D for video; the flattened sequence is never pooled). Pooling is mask-aware: the
cell of a target block averages only that block's target tokens in the cell, on both sides (the
predictions and the layer-normed target features), so a cell that a block covers in part never
draws its target from tokens the context encoder sees. Grids that a factor does not divide get
partial last cells (ceil mode). Everything is index arithmetic on cell ids (`scatter_add`), so no
Python loop touches tokens and nothing waits on the device.

A level's features may sit on a finer grid than the tokens the predictor predicts (MViT blocks
before the last stage): each output token then stands for the mean of the box of level tokens it
covers (`level_targets`), and `token_cells` maps it to the pooled cell it falls in, requiring that
a token never straddles two cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from jepa.config import HierarchyConfig


@dataclass(frozen=True)
class Level:
    """One prediction level: encoder block, pooling factor per grid axis, loss weight."""

    block: int
    """Encoder block index, non-negative."""
    pool: tuple[int, ...]
    """Pooling factor per grid axis, (t, h, w) for video or (h, w) for images."""
    weight: float


def levels_from_config(cfg: HierarchyConfig, *, depth: int, video: bool) -> list[Level]:
    """Resolve `cfg.levels` against an encoder of `depth` blocks (negative blocks count from the end)."""
    levels = []
    for i, lv in enumerate(cfg.levels):
        if not -depth <= lv.block < depth:
            raise ValueError(f"hierarchy.levels[{i}].block = {lv.block} is past the encoder depth {depth}: "
                             f"use 0..{depth - 1} or -1..-{depth}")
        if lv.pool < 1 or lv.pool_t < 1:
            raise ValueError(f"hierarchy.levels[{i}]: pool = {lv.pool}, pool_t = {lv.pool_t} must be >= 1")
        if not video and lv.pool_t != 1:
            raise ValueError(f"hierarchy.levels[{i}].pool_t = {lv.pool_t} has no time axis to pool on images; "
                             "set it to 1")
        pool = (lv.pool_t, lv.pool, lv.pool) if video else (lv.pool, lv.pool)
        levels.append(Level(block=lv.block % depth, pool=pool, weight=lv.weight))
    return levels


def pooled_grid(grid: tuple[int, ...], pool: tuple[int, ...]) -> tuple[int, ...]:
    """Cells per axis after pooling (ceil mode: a partial last cell counts)."""
    assert len(grid) == len(pool), f"grid {grid} and pool {pool} differ in rank"
    return tuple(math.ceil(g / p) for g, p in zip(grid, pool))


def cell_ids(grid: tuple[int, ...], pool: tuple[int, ...], device=None) -> torch.Tensor:
    """(N,) int64: the pooled cell of each token of `grid` (row-major on both grids)."""
    cells = pooled_grid(grid, pool)
    coords = torch.meshgrid(*(torch.arange(g, device=device) for g in grid), indexing="ij")
    ids = torch.zeros(grid, dtype=torch.long, device=device)
    for axis, (coord, p) in enumerate(zip(coords, pool)):
        ids = ids * cells[axis] + torch.div(coord, p, rounding_mode="floor")
    return ids.flatten()


def pool_tokens(x: torch.Tensor, grid: tuple[int, ...], pool: tuple[int, ...]) -> torch.Tensor:
    """Average (B, N, C) tokens of `grid` over pooling cells -> (B, prod(pooled_grid), C)."""
    B, N, C = x.shape
    assert N == math.prod(grid), f"{N} tokens do not fill grid {grid}"
    if all(p == 1 for p in pool):
        return x
    ids = cell_ids(grid, pool, device=x.device)
    num_cells = math.prod(pooled_grid(grid, pool))
    sums = x.new_zeros(B, num_cells, C).index_add_(1, ids, x)
    counts = torch.bincount(ids, minlength=num_cells).to(x.dtype)
    return sums / counts[None, :, None]


def level_targets(x: torch.Tensor, *, level_grid: tuple[int, ...], out_grid: tuple[int, ...]) -> torch.Tensor:
    """A level's target per output token: layer norm without affine over channels, per level token,
    then the mean over the box of level tokens each output token covers -> (B, prod(out_grid), C) fp32.

    Every box holds the same number of level tokens, so a later mean of box means over any set of
    output tokens is exactly the mean over the level tokens they cover.
    """
    box = []
    for n_lvl, n_out in zip(level_grid, out_grid, strict=True):
        if n_lvl % n_out:
            raise ValueError(f"a level on grid {level_grid} cannot be split into the boxes of output grid {out_grid}")
        box.append(n_lvl // n_out)
    return pool_tokens(F.layer_norm(x.float(), x.shape[-1:]), level_grid, tuple(box))


def token_cells(out_grid: tuple[int, ...], level_grid: tuple[int, ...], pool: tuple[int, ...],
                device=None) -> torch.Tensor:
    """(N_out,) int64: the pooled cell (on `level_grid` pooled by `pool`) of each output-grid token.

    An output token covers `level_grid / out_grid` level tokens per axis; it must fall inside one
    pooled cell, so each pool factor must be a multiple of that ratio.
    """
    assert len(out_grid) == len(level_grid) == len(pool)
    cells = pooled_grid(level_grid, pool)
    coords = torch.meshgrid(*(torch.arange(g, device=device) for g in out_grid), indexing="ij")
    ids = torch.zeros(out_grid, dtype=torch.long, device=device)
    for axis, (coord, n_out, n_lvl, p) in enumerate(zip(coords, out_grid, level_grid, pool)):
        if n_lvl % n_out or p % (n_lvl // n_out):
            raise ValueError(
                f"a level on grid {level_grid} pooled by {pool} cannot hold whole output tokens of grid "
                f"{out_grid}: along axis {axis} the level grid ({n_lvl}) must be a multiple of the output "
                f"grid ({n_out}) and the pool factor ({p}) a multiple of their ratio")
        ids = ids * cells[axis] + torch.div(coord * (n_lvl // n_out), p, rounding_mode="floor")
    return ids.flatten()


@dataclass
class LevelTarget:
    """One level's targets for one mask set, aligned with the concatenated target indices."""

    value: torch.Tensor
    """(B, Kt, C) fp32: for each target token, the mean of the layer-normed target features over the
    target tokens of its block in its cell (what the prediction side averages too)."""
    cells: Optional[torch.Tensor]
    """(B, Kt) int64 cell ids, block j's offset by j x cells per block so that blocks never share a
    cell; None when the level does not pool (each token is its own cell: the plain per-token loss)."""
    num_cells: int
    """Number of possible cell ids (target blocks x pooled cells)."""


def gather_level(features: torch.Tensor, blocks: list[torch.Tensor], *, cell_of_token: Optional[torch.Tensor],
                 cells_per_block: int) -> LevelTarget:
    """A level's targets at the target blocks' indices (B, Kt_j), pooled per (block, cell).

    features (B, N, C): the level's per-output-token targets (`level_targets`); cell_of_token (N,): the
    pooled cell of each output token (`token_cells`), None for a level that does not pool.
    """
    idx = torch.cat(blocks, dim=1)
    value = features.gather(1, idx[..., None].expand(-1, -1, features.shape[-1]))
    if cell_of_token is None:
        return LevelTarget(value=value, cells=None, num_cells=idx.shape[1])
    offsets = torch.cat([torch.full_like(b, j * cells_per_block) for j, b in enumerate(blocks)], dim=1)
    cells = cell_of_token[idx] + offsets
    num_cells = cells_per_block * len(blocks)
    return LevelTarget(value=cell_mean(value, cells, num_cells)[0], cells=cells, num_cells=num_cells)


def cell_mean(x: torch.Tensor, cells: torch.Tensor, num_cells: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token, the mean of x (B, K, C) over the tokens sharing its cell id (B, K) in [0, num_cells).

    Returns the means (B, K, C) and the number of tokens of every cell (B, num_cells). Both the targets
    and the predictions of a level go through here, so they always average the same tokens.
    """
    B, K, C = x.shape
    assert cells.shape == (B, K), (x.shape, cells.shape)
    index = cells[..., None].expand(B, K, C)
    sums = x.new_zeros(B, num_cells, C).scatter_add(1, index, x)
    counts = x.new_zeros(B, num_cells).scatter_add(1, cells, x.new_ones(B, K))
    return sums.gather(1, index) / counts.gather(1, cells)[..., None], counts


_LOSSES = {"l1": F.l1_loss, "smooth_l1": F.smooth_l1_loss}


def pooled_loss(pred: torch.Tensor, target: LevelTarget, *, kind: str) -> torch.Tensor:
    """Loss between the cell means of predicted tokens (B, Kt, C) and the cell means of their targets.

    Every (block, cell) holding at least one target token counts once, whatever its number of tokens.
    """
    assert target.value.shape == pred.shape, (pred.shape, target.value.shape)
    if kind not in _LOSSES:
        raise ValueError(f"hierarchy.loss = {kind!r}: expected l1 or smooth_l1")
    loss = _LOSSES[kind]
    pred = pred.float()
    if target.cells is None:
        return loss(pred, target.value)
    cell_pred, counts = cell_mean(pred, target.cells, target.num_cells)
    per_token = loss(cell_pred, target.value, reduction="none").mean(-1)
    # A cell of n tokens contributes n copies of its loss: weight 1/n counts it once.
    return (per_token / counts.gather(1, target.cells)).sum() / (counts > 0).sum()

