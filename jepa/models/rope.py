"""Rotary position embeddings (RoPE) for token grids: 2D (H x W images) and 3D axial (T x H x W video).

A *table* holds, for every token of a grid in row-major order, the sines and cosines that rotate its
query/key pairs: shape (N, 2 * head_dim) = [sin | cos], timm's "cat" format, so it goes straight into
`EvaBlock(x, rope=table)` / `AttentionRope`, which skip their `num_prefix_tokens` (CLS, registers).
Channels i and i + head_dim/2 form pair i (timm's "half" layout): build those blocks with
`rotate_half=RotaryEmbedding.rotate_half` (True): through timm's apply it rotates 1.1-1.6x faster
than interleaved pairs on CPU (benchmarks/README.md).

Axial split: the head_dim // 2 pairs are shared out equally between the axes in blocks [t | h | w];
pairs left over when they do not divide evenly (3D, e.g. head_dim 64 -> 10 + 10 + 10 + 2) get angle 0,
so those channels pass through unrotated. Pair i of an axis with d channels turns at theta^(-2i/d) per
coordinate unit, times 2*pi for `centre` coordinates (DINOv3 periods), times 1 for `index` ones (rope-vit).

Coordinates (`centre`, `index`), normalisation (`separate`, `max`, `min`), temporal scale and the
train-time augmentation (shift / jitter / rescale) are documented at `grid_coords` and `RotaryEmbedding`.

Precision: tables are computed in float32 with autocast off and are never module buffers, so
`.to(bfloat16)` / `.half()` / DeepSpeed bf16 cannot downcast them (bf16 angles are off by ~0.1 rad at
position 31). They are cached per (grid, frame, device); timm's apply casts only the rotated result
back to the activations' dtype.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
from timm.layers.pos_embed_sincos import apply_rot_embed_cat, init_random_2d_freqs

Grid = tuple[int, ...]

COORDS = ("centre", "index")
NORMALIZE = ("separate", "max", "min")
VARIANTS = ("axial", "mixed")


@dataclass(frozen=True)
class CoordTransform:
    """One train-time coordinate augmentation, shared by every token: coords' = (coords + shift) * scale."""

    shift: tuple[float, ...]
    scale: tuple[float, ...]


def grid_coords(grid: Sequence[int], *, coords: str = "centre", normalize: str = "separate",
                ref_grid: Optional[Sequence[int]] = None, strides: Optional[Sequence[int]] = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """(prod(grid), len(grid)) float32 coordinates of the cells of `grid`, row-major, axes in grid order.

    The frame is `ref_grid` (default: `grid` itself); cell j of an axis sits at reference index
    p = j * stride (default stride 1). A pooled grid (MViT) passes the stage-0 grid and its cumulative
    pooling strides, so grids of different sizes share one frame: a conv with kernel k, padding k // 2
    and stride s centres its output j on input j * s.

    - `index`: p itself (integers for an unpooled grid; position 0 is the identity rotation).
    - `centre`: the cell centre mapped to [-1, 1]: 2 * (p + 0.5) / D - 1 with D = the axis' own
      reference length (`separate`), the largest (`max`) or the smallest (`min`) reference side.
      Ranges for an axis of n cells: separate -> [-1 + 1/n, 1 - 1/n] on every axis; max -> that on
      the longest axis, [-1 + 1/D, 2n/D - 1 - 1/D] (inside (-1, 1)) on the others; min -> that on the
      shortest axis, the others reach beyond 1 (up to 2n/D - 1 - 1/D). Spacing stays uniform, so
      max/min keep the aspect ratio.
    """
    grid = tuple(int(n) for n in grid)
    ref = tuple(int(n) for n in ref_grid) if ref_grid is not None else grid
    steps = tuple(int(s) for s in strides) if strides is not None else (1,) * len(grid)
    if coords not in COORDS:
        raise ValueError(f"unknown RoPE coords {coords!r}: expected one of {', '.join(COORDS)}")
    if normalize not in NORMALIZE:
        raise ValueError(f"unknown RoPE normalize mode {normalize!r}: expected one of {', '.join(NORMALIZE)}")
    if not len(grid) == len(ref) == len(steps) or min(grid, default=0) < 1:
        raise ValueError(f"grid {grid}, reference grid {ref} and strides {steps} must be positive and of equal rank")
    if any((n - 1) * s >= r for n, s, r in zip(grid, steps, ref)):
        raise ValueError(f"grid {grid} with strides {steps} reaches outside its reference grid {ref}")
    denom = {"separate": ref, "max": (max(ref),) * len(ref), "min": (min(ref),) * len(ref)}[normalize]
    axes = []
    for n, s, d in zip(grid, steps, denom):
        p = torch.arange(n, device=device, dtype=torch.float32) * s
        axes.append(p if coords == "index" else 2.0 * (p + 0.5) / d - 1.0)
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(grid))


class RotaryEmbedding(nn.Module):
    """RoPE tables for 2D or 3D token grids (see the module docstring for the layout).

    `rope(grid)` -> float32 table for all prod(grid) tokens (a fresh coordinate augmentation is drawn per
    call in training mode). `rope.table(grid, ref_grid=..., strides=..., transform=...)` builds a table in
    a given frame (pooled MViT grids). `gather_rope(table, idx)` picks per-sample tokens.

    variant `axial` (2D or 3D): table (N, 2 * head_dim). variant `mixed` (2D only, rope-vit "RoPE-Mixed"):
    learnable frequencies per block and head that mix x and y; table (depth, num_heads, N, 2 * head_dim),
    gathered (depth, B, num_heads, K, 2 * head_dim); block i takes `rope.for_block(table, i)`, which
    EvaBlock/AttentionRope accept. Its frequencies are a parameter and follow the module's dtype; the
    angles are still computed in float32.

    temporal_scale (3D): temporal coordinates are divided by it (0.5 doubles temporal angles).
    shift / jitter / rescale (training mode only): all coordinates move by one uniform draw in
    [-shift, shift] per axis, then scale by a per-axis factor log-uniform in [1/(1+jitter), 1+jitter]
    and by one shared factor log-uniform in [1/(1+rescale), 1+rescale] (DINOv3's order).
    """

    rotate_half = True  # pair i = channels (i, i + head_dim/2): EvaBlocks must be built with rotate_half=True

    def __init__(self, *, head_dim: int, ndim: int = 2, variant: str = "axial", theta: float = 100.0,
                 coords: str = "centre", normalize: str = "separate", temporal_scale: float = 1.0,
                 shift: float = 0.0, jitter: float = 0.0, rescale: float = 0.0,
                 depth: int = 1, num_heads: int = 1):
        super().__init__()
        _check_args(head_dim=head_dim, ndim=ndim, variant=variant, coords=coords, normalize=normalize,
                    theta=theta, temporal_scale=temporal_scale, aug=(shift, jitter, rescale))
        self.head_dim, self.ndim, self.variant = head_dim, ndim, variant
        self.theta, self.coords, self.normalize = float(theta), coords, normalize
        self.temporal_scale = float(temporal_scale)
        self.shift, self.jitter, self.rescale = float(shift), float(jitter), float(rescale)
        self.pairs_per_axis = head_dim // 2 // ndim
        self.pass_pairs = head_dim // 2 - ndim * self.pairs_per_axis
        # A full turn per unit of the [-1, 1] frame for `centre` coords (DINOv3), radians per patch for `index`.
        self.angle_scale = 2 * math.pi if coords == "centre" else 1.0
        if variant == "mixed":
            freqs = init_random_2d_freqs(head_dim, depth, num_heads, temperature=theta)
            self.freqs = nn.Parameter(freqs)  # (2 = x/y, depth, heads, head_dim // 2), rope-vit init
        # Integer, empty, non-persistent: tells the device (dtype casts skip integer tensors; nothing to save).
        self.register_buffer("device_anchor", torch.empty(0, dtype=torch.long), persistent=False)
        self._cache: dict[tuple, torch.Tensor] = {}

    @property
    def per_block(self) -> bool:
        """True when each block has its own table (mixed): pass `for_block(table, i)` to block i."""
        return self.variant == "mixed"

    def for_block(self, table: torch.Tensor, index: int) -> torch.Tensor:
        """The part of a (possibly gathered) table that block `index` uses."""
        return table[index] if self.per_block else table

    def extra_repr(self) -> str:
        return (f"head_dim={self.head_dim}, ndim={self.ndim}, variant={self.variant}, theta={self.theta}, "
                f"coords={self.coords}, normalize={self.normalize}, pairs_per_axis={self.pairs_per_axis}, "
                f"pass_pairs={self.pass_pairs}")

    def forward(self, grid: Sequence[int]) -> torch.Tensor:
        """Table for every token of `grid` in its own frame; one augmentation draw per call when training."""
        return self.table(grid, transform=self.draw_transform())

    def draw_transform(self) -> Optional[CoordTransform]:
        """A random coordinate transform in training mode when augmentation is configured, else None."""
        if not self.training or not (self.shift or self.jitter or self.rescale):
            return None

        def log_uniform(bound: float, n: int) -> torch.Tensor:
            return torch.empty(n).uniform_(-math.log1p(bound), math.log1p(bound)).exp()

        shift = torch.empty(self.ndim).uniform_(-self.shift, self.shift)
        scale = log_uniform(self.jitter, self.ndim) * log_uniform(self.rescale, 1)
        return CoordTransform(shift=tuple(shift.tolist()), scale=tuple(scale.tolist()))

    def table(self, grid: Sequence[int], *, ref_grid: Optional[Sequence[int]] = None,
              strides: Optional[Sequence[int]] = None, transform: Optional[CoordTransform] = None) -> torch.Tensor:
        """float32 [sin | cos] table of `grid` in the frame (ref_grid, strides), see `grid_coords`."""
        grid = tuple(int(n) for n in grid)
        device = self.device_anchor.device
        key = (grid, tuple(ref_grid or grid), tuple(strides or ()), device)
        cacheable = transform is None and not self.per_block
        if cacheable and key in self._cache:
            return self._cache[key]
        angles = self.angles(grid, ref_grid=ref_grid, strides=strides, transform=transform)
        out = torch.cat([angles.sin(), angles.cos()], dim=-1)
        # Tables made under inference_mode cannot be saved for a later backward: do not keep them.
        if cacheable and not torch.is_inference_mode_enabled():
            self._cache[key] = out
        return out

    def angles(self, grid: Sequence[int], *, ref_grid: Optional[Sequence[int]] = None,
               strides: Optional[Sequence[int]] = None, transform: Optional[CoordTransform] = None) -> torch.Tensor:
        """Rotation angle of every channel: (N, head_dim), mixed (depth, heads, N, head_dim); the first
        half holds pair i's angle at i (blocks [axis 0 | axis 1 | ... | unrotated]), the second repeats it."""
        if len(grid) != self.ndim:
            raise ValueError(f"this {self.ndim}D RoPE needs a grid of {self.ndim} sides, got {tuple(grid)}")
        device = self.device_anchor.device
        # Autocast off so that the angles stay fp32 (a device without autocast has nothing to turn off).
        no_autocast = torch.autocast(device.type, enabled=False) if torch.amp.is_autocast_available(device.type) \
            else contextlib.nullcontext()
        with no_autocast:
            pos = grid_coords(grid, coords=self.coords, normalize=self.normalize, ref_grid=ref_grid,
                              strides=strides, device=device)
            if transform is not None:
                pos = (pos + pos.new_tensor(transform.shift)) * pos.new_tensor(transform.scale)
            if self.ndim == 3:
                pos = pos / pos.new_tensor([self.temporal_scale, 1.0, 1.0])
            pos = pos * self.angle_scale
            half = self._mixed_angles(pos) if self.per_block else self._axial_angles(pos)
        return torch.cat([half, half], dim=-1)

    def _axial_angles(self, pos: torch.Tensor) -> torch.Tensor:
        """(N, ndim) positions -> (N, head_dim // 2) angles in blocks [axis 0 | axis 1 | ... | zeros]."""
        p = self.pairs_per_axis
        freqs = self.theta ** -(torch.arange(p, device=pos.device, dtype=torch.float32) / p)
        angles = (pos[:, :, None] * freqs).flatten(1)  # broadcast multiply, not matmul: stays fp32
        return torch.nn.functional.pad(angles, (0, self.pass_pairs))

    def _mixed_angles(self, pos: torch.Tensor) -> torch.Tensor:
        """(N, 2) (y, x) positions -> (depth, heads, N, head_dim // 2): x * f_x + y * f_y per pair."""
        f = self.freqs.float()
        return pos[:, 1, None] * f[0, :, :, None, :] + pos[:, 0, None] * f[1, :, :, None, :]


def _check_args(*, head_dim: int, ndim: int, variant: str, coords: str, normalize: str, theta: float,
                temporal_scale: float, aug: tuple[float, float, float]) -> None:
    if ndim not in (2, 3):
        raise ValueError(f"RoPE is 2D (images) or 3D (video), got ndim={ndim}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown RoPE variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    if variant == "mixed" and ndim != 2:
        raise ValueError("the mixed RoPE variant exists for 2D grids only: use variant='axial' for 3D")
    if coords not in COORDS:
        raise ValueError(f"unknown RoPE coords {coords!r}: expected one of {', '.join(COORDS)}")
    if normalize not in NORMALIZE:
        raise ValueError(f"unknown RoPE normalize mode {normalize!r}: expected one of {', '.join(NORMALIZE)}")
    if coords == "index" and normalize != "separate":
        raise ValueError(f"normalize={normalize!r} applies to coords='centre' only; "
                         "integer `index` coordinates are not normalised (use normalize='separate')")
    if ndim == 2 and head_dim % 4:
        raise ValueError(f"2D RoPE gives each of the 2 axes head_dim / 4 pairs and needs head_dim % 4 == 0, "
                         f"got head_dim={head_dim}: choose num_heads so that embed_dim / num_heads is a multiple of 4")
    if ndim == 3 and (head_dim % 2 or head_dim < 6):
        raise ValueError(f"3D RoPE rotates channel pairs, at least one per axis: it needs an even head_dim >= 6, "
                         f"got head_dim={head_dim}")
    if theta <= 0 or temporal_scale <= 0 or min(aug) < 0:
        raise ValueError(f"RoPE needs theta > 0, temporal_scale > 0 and shift/jitter/rescale >= 0, got "
                         f"theta={theta}, temporal_scale={temporal_scale}, shift/jitter/rescale={aug}")


def build_rope(cfg, *, head_dim: int, num_heads: int = 1, depth: int = 1) -> Optional[RotaryEmbedding]:
    """The RoPE module a `RopeConfig` describes for attention with this head_dim (None for kind `none`).
    `depth`/`num_heads` size the learnable frequencies of the mixed variant."""
    if cfg.kind == "none":
        return None
    if cfg.kind not in ("2d", "3d"):
        raise ValueError(f"unknown RoPE kind {cfg.kind!r}: expected none, 2d or 3d")
    return RotaryEmbedding(head_dim=head_dim, ndim=2 if cfg.kind == "2d" else 3, variant=cfg.variant,
                           theta=cfg.theta, coords=cfg.coords, normalize=cfg.normalize,
                           temporal_scale=cfg.temporal_scale, shift=cfg.shift, jitter=cfg.jitter,
                           rescale=cfg.rescale, depth=depth, num_heads=num_heads)


def gather_rope(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows of `table` for per-sample token indices idx (B, K) (row-major grid indices).

    (N, 2*hd) -> (B, 1, K, 2*hd), the shape EvaBlock/AttentionRope broadcast over heads;
    mixed (depth, heads, N, 2*hd) -> (depth, B, heads, K, 2*hd).
    """
    if idx.dim() != 2 or idx.dtype != torch.long:
        raise ValueError(f"token indices must be int64 of shape (B, K), got {idx.dtype} {tuple(idx.shape)}")
    n = table.shape[-2]
    if idx.device.type == "cpu" and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(f"token indices must lie in [0, {n}) for a table of {n} tokens, "
                         f"got min {int(idx.min())}, max {int(idx.max())}")
    if table.dim() == 2:
        return table[idx].unsqueeze(1)
    if table.dim() == 4:
        return table[:, :, idx].permute(0, 2, 1, 3, 4)
    raise ValueError(f"expected a table (N, 2*hd) or (depth, heads, N, 2*hd), got shape {tuple(table.shape)}")


def apply_rope(x: torch.Tensor, table: torch.Tensor, *, num_prefix_tokens: int = 0) -> torch.Tensor:
    """Rotate (B, heads, P + N, hd) queries or keys by a table of N tokens; the P prefix tokens stay as
    they are. Rotates in float32 (the table's dtype) and returns x's dtype."""
    n = x.shape[-2] - num_prefix_tokens
    if table.shape[-2] != n or table.shape[-1] != 2 * x.shape[-1]:
        raise ValueError(f"RoPE table of {table.shape[-2]} tokens x {table.shape[-1]} channels does not fit "
                         f"{n} tokens (+{num_prefix_tokens} prefix) of head_dim {x.shape[-1]}: "
                         f"the grid and the token count disagree")
    rotated = apply_rot_embed_cat(x[..., num_prefix_tokens:, :], table, half=RotaryEmbedding.rotate_half)
    if not num_prefix_tokens:
        return rotated
    return torch.cat([x[..., :num_prefix_tokens, :], rotated], dim=-2)  # cat, not in-place: autograd needs x
