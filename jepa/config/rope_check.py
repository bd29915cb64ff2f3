"""Does a RoPE head_dim work on the config's token grid: does it split over the axes, and does its
table give every cell of the grid its own rotation.

The row check builds the RoPE tables the encoder and predictor will use (jepa/models/rope.py,
imported lazily with torch) and finds a head_dim that gives two cells of the token grid the same
rotation. It reports what it finds; jepa/config/rules.py turns that into the error.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

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

_DISTANCE_ROWS_PER_CHUNK = 1024  # rows of the table compared at once: bounds memory to 1024 x N distances


def rope_splits(kind: str, head_dim: int) -> bool:
    """head_dim gives every axis at least one rotation pair: 2D a multiple of 4, 3D even and >= 6."""
    if kind == "2d":
        return head_dim % 4 == 0
    if kind == "3d":
        return head_dim % 2 == 0 and head_dim >= 6
    return True


def rope_row_collision(cfg: Config) -> tuple[str, int, str] | None:
    """(key, value, what is needed) for the first encoder or predictor head_dim whose RoPE table gives two
    cells of the token grid the same rotation (rows closer than ROPE_MIN_ROW_DISTANCE), else None: with
    `centre` coords a single pair per axis turns once every n/2 cells, so cells t and t + n/2 would get
    identical queries and keys. The table is the un-augmented one (shift/jitter/rescale are train-time
    only)."""
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
        distance, cell_a, cell_b = _closest_rows(rope_key, embed_dim // num_heads, grid)
        if distance > ROPE_MIN_ROW_DISTANCE:
            continue
        fix = next((h for h in range(num_heads - 1, 0, -1) if embed_dim % h == 0
                    and rope_splits(r.kind, embed_dim // h)
                    and _closest_rows(rope_key, embed_dim // h, grid)[0] > ROPE_MIN_ROW_DISTANCE), None)
        remedy = (f"use num_heads={fix} (head_dim {embed_dim // fix})" if fix else
                  f"no smaller num_heads at this embed_dim separates them: raise {prefix}.embed_dim "
                  f"or change model.rope (coords, theta, temporal_scale)")
        return (f"{prefix}.num_heads", num_heads,
                f"at {prefix}.embed_dim={embed_dim} (head_dim {embed_dim // num_heads}) the {r.kind} RoPE rotates "
                f"cells {cell_a} and {cell_b} of the {grid} token grid alike (row distance {distance:.1e} of the "
                f"row norm, need > {ROPE_MIN_ROW_DISTANCE:.1e}), so RoPE cannot tell them apart: {remedy}")
    return None


@functools.lru_cache(maxsize=64)
def _closest_rows(rope_key: tuple, head_dim: int, grid: tuple[int, ...]) -> tuple[float, tuple, tuple]:
    """(distance relative to the row norm, cell, cell) of the two closest rows of the RoPE table that
    jepa/models/rope.py builds for `grid` at this head_dim; rope_key = (kind, coords, normalize, theta,
    temporal_scale). Cached: many configs share a table."""
    import torch

    from jepa.models.rope import RotaryEmbedding

    kind, coords, normalize, theta, temporal_scale = rope_key
    rope = RotaryEmbedding(head_dim=head_dim, ndim=2 if kind == "2d" else 3, theta=theta, coords=coords,
                           normalize=normalize, temporal_scale=temporal_scale)
    table = rope.table(grid).double()  # float32 like the model's; distances in float64 so 1e-7 reads as such
    table = table / table.norm(dim=1, keepdim=True)
    best, pair = math.inf, (0, 0)
    for start in range(0, len(table), _DISTANCE_ROWS_PER_CHUNK):
        dist = torch.cdist(table[start:start + _DISTANCE_ROWS_PER_CHUNK], table)
        rows = torch.arange(len(dist))
        dist[rows, rows + start] = math.inf  # a row's distance to itself
        value, flat = dist.flatten().min(0)
        if value.item() < best:
            best, pair = value.item(), (start + int(flat) // len(table), int(flat) % len(table))
    cell_a, cell_b = (tuple(int(c) for c in torch.unravel_index(torch.tensor(i), grid)) for i in sorted(pair))
    return best, cell_a, cell_b
