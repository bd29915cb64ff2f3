"""Hierarchy levels (H-JEPA): targets pooled on the token grid and predictions pooled on the same cells.

A level pools the target encoder's features of one block over cells of `pool` tokens per grid axis
(2D for images, 3D for video; the flattened sequence is never pooled). Grids that a factor does not
divide are pooled in ceil mode: the last cell along an axis is partial and averages the tokens it
holds. Everything is index arithmetic on cell ids (`scatter_add`), so no Python loop touches tokens.

A level's features may sit on a finer grid than the tokens the predictor predicts (MViT blocks
before the last stage): `token_cells` maps each output token to the pooled cell it falls in, and
requires that a token never straddles two cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


def level_targets(x: torch.Tensor, grid: tuple[int, ...], pool: tuple[int, ...]) -> torch.Tensor:
    """A level's targets: layer norm without affine over channels, then pooled on the grid."""
    return pool_tokens(F.layer_norm(x.float(), x.shape[-1:]), grid, pool)


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


def pooled_loss(pred: torch.Tensor, target: torch.Tensor, cells: torch.Tensor, num_cells: int,
                *, kind: str) -> torch.Tensor:
    """Loss between cell means of predicted tokens and the pooled targets of those cells.

    pred (B, K, C): predicted tokens; target (B, K, C): the pooled target of each token's cell
    (equal within a cell); cells (B, K) int64 in [0, num_cells): a token's cell (distinct blocks
    carry distinct ids). Every cell holding at least one prediction counts once, whatever its
    number of tokens; cells without predictions do not count.
    """
    B, K, C = pred.shape
    assert target.shape == pred.shape and cells.shape == (B, K), (pred.shape, target.shape, cells.shape)
    pred = pred.float()
    sums = pred.new_zeros(B, num_cells, C).scatter_add(1, cells[..., None].expand(B, K, C), pred)
    counts = pred.new_zeros(B, num_cells).scatter_add(1, cells, pred.new_ones(B, K))
    count = counts.gather(1, cells)                                  # tokens in each token's cell
    cell_mean = sums.gather(1, cells[..., None].expand(B, K, C)) / count[..., None]
    if kind == "l1":
        per_token = F.l1_loss(cell_mean, target, reduction="none").mean(-1)
    elif kind == "smooth_l1":
        per_token = F.smooth_l1_loss(cell_mean, target, reduction="none").mean(-1)
    else:
        raise ValueError(f"hierarchy.loss = {kind!r}: expected l1 or smooth_l1")
    # A cell of n tokens contributes n copies of its loss: weight 1/n counts it once.
    return (per_token / count).sum() / (counts > 0).sum()
