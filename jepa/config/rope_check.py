"""Does a RoPE head_dim work on the config's token grid: does it split over the axes, and does its
table give every cell of the grid its own rotation, one that cells far from it do not nearly share.

The row check builds the RoPE tables the encoder and predictor will use (jepa/models/rope.py,
imported lazily with torch) and finds a head_dim that gives two cells of the token grid the same
rotation, or two far cells nearly the same one. It reports what it finds; jepa/config/rules.py
turns that into the error.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import numpy as np

from jepa.config.sizes import vit_dims
from jepa.errors import ConfigError

if TYPE_CHECKING:
    from jepa.config.schema import Config

ROPE_MIN_ROW_DISTANCE = 2.0 ** -8
"""Smallest Euclidean distance allowed between two rows of a RoPE table, relative to the row norm
(every [sin | cos] row has norm sqrt(head_dim)). 2^-8 is bf16's unit roundoff: two cells whose rotations
differ by less than the rounding of the rotated q and k are not told apart by attention in bf16
training. Exact collisions (a frequency that turns a whole number of times between two cells, e.g.
3D head_dim 6 with `centre` coords) measure ~1e-7 and the shipped configs >= 0.2, so the verdict
does not hinge on the exact value."""

ROPE_FAR_CELLS = 3
"""Cells this many or more apart along some axis are `far`: ROPE_MAX_FAR_COSINE holds for them. Nearer
cells may be alike (a slow frequency changes little from one cell to the next; full-size configs
reach cosine 0.93 two cells apart), as long as they are not identical (ROPE_MIN_ROW_DISTANCE)."""
ROPE_MAX_FAR_COSINE = 0.9
"""Largest cosine similarity allowed between the RoPE codes (normalized [sin | cos] rows, whose dot
product is the mean over rotation pairs of cos(angle difference)) of two far cells. Above it a fast
frequency has wrapped around: at head_dim 8 with 2D RoPE the fast pair repeats every 4 cells and codes
4 cells apart reach 0.95, so a predictor cannot place its targets and predicts an image-wide average.
The shipped configs reach at most 0.88 for far cells."""

_ROWS_PER_CHUNK = 1024  # rows of the table compared at once: bounds memory to 1024 x N values


def rope_splits(kind: str, head_dim: int) -> bool:
    """head_dim gives every axis at least one rotation pair: 2D a multiple of 4, 3D even and >= 6."""
    if kind == "2d":
        return head_dim % 4 == 0
    if kind == "3d":
        return head_dim % 2 == 0 and head_dim >= 6
    return True


def rope_row_collision(cfg: Config) -> tuple[str, int, str] | None:
    """(key, value, what is needed) for the first encoder or predictor head_dim whose RoPE table gives two
    cells of the token grid the same or nearly the same rotation, else None. Identical: rows closer
    than ROPE_MIN_ROW_DISTANCE (with `centre` coords a single pair per axis turns once every n/2 cells,
    so cells t and t + n/2 would get identical queries and keys). Nearly the same: two cells at least
    ROPE_FAR_CELLS apart whose codes have cosine similarity above ROPE_MAX_FAR_COSINE. The table is the
    un-augmented one (shift/jitter/rescale are train-time only)."""
    m, r, p = cfg.model, cfg.model.rope, cfg.model.predictor
    if r.kind == "none" or r.variant == "mixed":
        return None  # mixed: frequencies are drawn at random per block and head and then learned; no fixed table
    from jepa.models.factory import input_grid  # lazy: torch; and the factory imports jepa.config, whose rules call us

    try:
        grid = input_grid(cfg)
    except (ConfigError, ValueError):
        return None  # image/video settings that contradict each other, or a clip MViT cannot patch: build_jepa says so
    rope_key = (r.kind, r.coords, r.normalize, r.theta, r.temporal_scale)
    attention = [("model.predictor", p.embed_dim, p.num_heads)]
    if m.backbone == "vit":  # MViT's head_dim is torchvision's (96), on pooled grids of its own
        dims = vit_dims(m)
        attention.insert(0, ("model", dims.embed_dim, dims.num_heads))
    for prefix, embed_dim, num_heads in attention:
        fault = _rope_fault(rope_key, embed_dim // num_heads, grid)
        if fault is None:
            continue
        fix = next((h for h in range(num_heads - 1, 0, -1) if embed_dim % h == 0
                    and rope_splits(r.kind, embed_dim // h)
                    and _rope_fault(rope_key, embed_dim // h, grid) is None), None)
        remedy = (f"use num_heads={fix} (head_dim {embed_dim // fix})" if fix else
                  f"no smaller num_heads at this embed_dim separates them: raise {prefix}.embed_dim "
                  f"or change model.rope (coords, theta, temporal_scale)")
        return (f"{prefix}.num_heads", num_heads,
                f"at {prefix}.embed_dim={embed_dim} (head_dim {embed_dim // num_heads}) the {r.kind} RoPE gives "
                f"{fault}, so attention cannot tell them apart: {remedy}")
    return None


def _rope_fault(rope_key: tuple, head_dim: int, grid: tuple[int, ...]) -> str | None:
    """Which two cells of `grid` this RoPE table rotates alike or, far apart, nearly alike; else None."""
    distance, cell_a, cell_b, cosine, far_a, far_b = _rope_pairs(rope_key, head_dim, grid)
    if distance <= ROPE_MIN_ROW_DISTANCE:
        return (f"cells {cell_a} and {cell_b} of the {grid} token grid the same rotation (row distance "
                f"{distance:.1e} of the row norm, need > {ROPE_MIN_ROW_DISTANCE:.1e})")
    if cosine > ROPE_MAX_FAR_COSINE:
        apart = max(abs(a - b) for a, b in zip(far_a, far_b))
        return (f"cells {far_a} and {far_b} of the {grid} token grid, {apart} apart, nearly the same rotation "
                f"(cosine similarity {cosine:.3f} of their codes; cells {ROPE_FAR_CELLS} or more apart need "
                f"<= {ROPE_MAX_FAR_COSINE})")
    return None


@functools.lru_cache(maxsize=64)
def _rope_pairs(rope_key: tuple, head_dim: int,
                grid: tuple[int, ...]) -> tuple[float, tuple, tuple, float, tuple, tuple]:
    """(distance relative to the row norm, cell, cell) of the two closest rows of the RoPE table that
    jepa/models/rope.py builds for `grid` at this head_dim, then (cosine similarity, cell, cell) of the
    two most alike cells ROPE_FAR_CELLS or more apart (cosine -1 when no two cells are that far apart);
    rope_key = (kind, coords, normalize, theta, temporal_scale). Cached: many configs share a table."""
    import torch

    from jepa.models.rope import RotaryEmbedding

    kind, coords, normalize, theta, temporal_scale = rope_key
    rope = RotaryEmbedding(head_dim=head_dim, ndim=2 if kind == "2d" else 3, theta=theta, coords=coords,
                           normalize=normalize, temporal_scale=temporal_scale)
    table = rope.table(grid).double()  # float32 like the model's; float64 so a distance of 1e-7 reads as such
    table = table / table.norm(dim=1, keepdim=True)
    cells = torch.stack(torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij"), -1).reshape(-1, len(grid))
    near, far = (math.inf, 0), (-1.0, 0)  # (value, row * N + column of the pair)
    for start in range(0, len(table), _ROWS_PER_CHUNK):
        chunk = slice(start, start + _ROWS_PER_CHUNK)
        distance = torch.cdist(table[chunk], table)
        rows = torch.arange(len(distance))
        distance[rows, rows + start] = math.inf  # a row's distance to itself
        apart = torch.zeros_like(distance, dtype=torch.bool)
        for axis in range(len(grid)):
            apart |= (cells[chunk, None, axis] - cells[None, :, axis]).abs() >= ROPE_FAR_CELLS
        value, flat = distance.flatten().min(0)
        if value.item() < near[0]:
            near = (value.item(), start * len(table) + int(flat))
        value, flat = (table[chunk] @ table.T).masked_fill(~apart, -1.0).flatten().max(0)
        if value.item() > far[0]:
            far = (value.item(), start * len(table) + int(flat))
    return (near[0], *_cells(near[1], grid), far[0], *_cells(far[1], grid))


def _cells(flat: int, grid: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The two grid cells of a flat index (row * N + column) into the N x N pair matrix, lower first."""
    first, second = sorted(divmod(flat, math.prod(grid)))
    return (tuple(int(c) for c in np.unravel_index(first, grid)),
            tuple(int(c) for c in np.unravel_index(second, grid)))
