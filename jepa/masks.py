"""Context and target masks over a token grid, drawn per batch in the data-loader workers.

Three kinds, every parameter from `MaskConfig`:

- `multiblock2d` (I-JEPA): target blocks, each its own target, and one context block with every
  target removed from it.
- `multiblock3d` (V-JEPA): for each block kind, the target is the union of that kind's space-time
  blocks and the context is everything else; each kind is its own mask set.
- `tube`: a random fraction of spatial cells is masked through all frames; the rest is context.

Token indices are row-major over the grid (t, h, w); an image grid (H, W) is handled as (1, H, W),
so its indices are h * W + w. A block's scale and aspect ratio are drawn independently (the aspect
log-uniformly, so tall and wide count alike), its sides are rounded to whole cells, and its corner is
uniform over every position that keeps it inside the grid, so blocks reach the last row, column and
frame. Block sizes are drawn once per batch and block, corners per sample, so lengths rarely differ
inside a batch; where they do, longer rows lose random tokens (never a fixed corner).
"""

from __future__ import annotations

import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch

from jepa.config import BlockMaskConfig, MaskConfig
from jepa.errors import ConfigError
from jepa.seeding import derive_seed

Grid3 = tuple[int, int, int]

QUADRATURE_POINTS = 256
"""Points per axis of the (scale, aspect) unit square when integrating the expected block coverage."""

PROBE_BATCH = 8
"""Samples drawn once by `build_mask_generator`, so an unsatisfiable config fails in the main process."""


# ----------------------------------------------------------------------------- containers

@dataclass
class MaskSet:
    """Token indices of one mask set for a batch: what the context encoder and the predictor consume."""

    context: torch.Tensor
    """(B, Kc) int64 sorted token indices fed to the context encoder."""
    targets: list[torch.Tensor]
    """Each (B, Kt_i) int64 sorted token indices: one per target block (multiblock2d) or one union."""

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MaskSet:
        return MaskSet(self.context.to(device, non_blocking=non_blocking),
                       [t.to(device, non_blocking=non_blocking) for t in self.targets])

    def pin_memory(self) -> MaskSet:
        """DataLoader(pin_memory=True) calls this on custom batch members."""
        return MaskSet(self.context.pin_memory(), [t.pin_memory() for t in self.targets])


@dataclass
class DenseMasks:
    """Boolean (B, N) masks of one mask set before the batch is cut to equal lengths."""

    context: torch.Tensor
    targets: list[torch.Tensor]

    def replace_rows(self, rows: torch.Tensor, fresh: DenseMasks) -> None:
        self.context[rows] = fresh.context
        for mine, new in zip(self.targets, fresh.targets):
            mine[rows] = new

    def equalize(self, generator: torch.Generator) -> MaskSet:
        return MaskSet(equal_length_indices(self.context, generator),
                       [equal_length_indices(t, generator) for t in self.targets])


def equal_length_indices(mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, N) bool -> (B, K) sorted int64 indices, K = fewest True in a row; longer rows lose random ones."""
    counts = mask.sum(1)
    k = int(counts.min())
    if bool((counts != k).any()):
        # Random keys, absent tokens pushed past every key: the k smallest keys are a uniform subset.
        keys = torch.rand(mask.shape, generator=generator).masked_fill_(~mask, 2.0)
        kept = keys.topk(k, dim=1, largest=False, sorted=False).indices
        mask = torch.zeros_like(mask).scatter_(1, kept, True)
    return mask.nonzero()[:, 1].reshape(mask.shape[0], k)  # nonzero is row-major: sorted per row


def mask_rng(seed: int, rank: int, worker: int, step: int) -> torch.Generator:
    """A CPU generator for one batch's masks, seeded by a hash of (seed, rank, worker, step)."""
    values = [operator.index(v) for v in (seed, rank, worker, step)]
    return torch.Generator().manual_seed(derive_seed(*values, purpose="jepa-mask"))


# ----------------------------------------------------------------------------- blocks

@dataclass(frozen=True)
class BlockSpec:
    """One block kind: how many blocks per sample and the ranges their sizes are drawn from."""

    num_blocks: int
    spatial_scale: tuple[float, float]
    aspect_ratio: tuple[float, float]
    temporal_scale: tuple[float, float] = (1.0, 1.0)

    @classmethod
    def from_config(cls, cfg: BlockMaskConfig) -> BlockSpec:
        return cls(cfg.num_blocks, tuple(cfg.spatial_scale), tuple(cfg.aspect_ratio), tuple(cfg.temporal_scale))

    def __str__(self) -> str:
        return (f"{self.num_blocks} block(s) of spatial_scale {list(self.spatial_scale)}, "
                f"aspect_ratio {list(self.aspect_ratio)}, temporal_scale {list(self.temporal_scale)}")


def _lerp(bounds: tuple[float, float], u: torch.Tensor) -> torch.Tensor:
    return bounds[0] + u * (bounds[1] - bounds[0])


def block_sizes(spec: BlockSpec, grid: Grid3, u: torch.Tensor) -> torch.Tensor:
    """Uniforms (..., 3) for (scale, aspect, time) -> int64 block sides (..., 3) as (t, h, w)."""
    t_len, h_len, w_len = grid
    area = _lerp(spec.spatial_scale, u[..., 0]) * (h_len * w_len)
    log_bounds = (math.log(spec.aspect_ratio[0]), math.log(spec.aspect_ratio[1]))
    aspect = _lerp(log_bounds, u[..., 1]).exp()  # height / width
    h, w = (area * aspect).sqrt(), (area / aspect).sqrt()
    # A side cut at the grid edge hands its length to the other side, so the block keeps its scale.
    h, w = (torch.where(w > w_len, area / w_len, h).clamp(max=h_len),
            torch.where(h > h_len, area / h_len, w).clamp(max=w_len))
    h, w = h.round().clamp(min=1), w.round().clamp(min=1)
    t = (_lerp(spec.temporal_scale, u[..., 2]) * t_len).round().clamp(1, t_len)
    return torch.stack([t, h, w], dim=-1).long()


def _rasterize(corners: torch.Tensor, sizes: torch.Tensor, grid: Grid3) -> torch.Tensor:
    """Corners and sizes (n, k, 3) -> (n, k, N) bool, one flattened grid per block."""
    inside = []
    for axis, length in enumerate(grid):
        cells = torch.arange(length)
        lo = corners[..., axis, None]
        inside.append((cells >= lo) & (cells < lo + sizes[..., axis, None]))  # (n, k, length)
    t, h, w = inside
    return (t[..., :, None, None] & h[..., None, :, None] & w[..., None, None, :]).flatten(-3)


def _axis_coverage(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(M,) block lengths -> (M, size): probability that a uniformly placed block covers each cell."""
    cells = torch.arange(size)
    span = lengths[:, None]
    first = (cells - span + 1).clamp(min=0)
    last = torch.minimum(cells.expand(len(lengths), -1), size - span)
    return (last - first + 1).clamp(min=0) / (size - span + 1)


def block_coverage(spec: BlockSpec, grid: Grid3, points: int = QUADRATURE_POINTS) -> torch.Tensor:
    """(T, H, W) float64: probability that one block of `spec` covers each cell (sizes integrated)."""
    u = (torch.arange(points, dtype=torch.float64) + 0.5) / points
    scale_u, aspect_u = torch.meshgrid(u, u, indexing="ij")
    half = torch.full_like(scale_u, 0.5)
    spatial = block_sizes(spec, grid, torch.stack([scale_u, aspect_u, half], -1).reshape(-1, 3))
    temporal = block_sizes(spec, grid, torch.stack([u.new_full((points,), 0.5)] * 2 + [u], -1))
    cov_hw = torch.einsum("mh,mw->hw", _axis_coverage(spatial[:, 1], grid[1]),
                          _axis_coverage(spatial[:, 2], grid[2])) / len(spatial)
    cov_t = _axis_coverage(temporal[:, 0], grid[0]).mean(0)
    return cov_t[:, None, None] * cov_hw


class _BlockSampler:
    """Draws the blocks of `specs` for a batch and turns them into masks, retrying short contexts."""

    def __init__(self, *, grid: Grid3, specs: list[BlockSpec], combine: Callable[[torch.Tensor], DenseMasks],
                 min_keep: int, max_tries: int, what: str):
        self.grid, self.specs, self.combine = grid, specs, combine
        self.min_keep, self.max_tries, self.what = min_keep, max_tries, what

    def _sizes(self, n: int, generator: torch.Generator) -> torch.Tensor:
        u = [torch.rand(n, s.num_blocks, 3, dtype=torch.float64, generator=generator) for s in self.specs]
        return torch.cat([block_sizes(s, self.grid, ui) for s, ui in zip(self.specs, u)], dim=1)

    def _draw(self, sizes: torch.Tensor, generator: torch.Generator) -> DenseMasks:
        room = torch.tensor(self.grid) - sizes + 1  # corner positions that keep each block inside
        u = torch.rand(sizes.shape, dtype=torch.float64, generator=generator)
        corners = torch.minimum((u * room).long(), room - 1)
        return self.combine(_rasterize(corners, sizes, self.grid))

    def draw(self, batch_size: int, generator: torch.Generator) -> DenseMasks:
        # One size per block for the whole batch (equal lengths); fresh sizes for rows that retry.
        masks = self._draw(self._sizes(1, generator).expand(batch_size, -1, -1), generator)
        for attempt in range(self.max_tries + 1):
            short = (masks.context.sum(1) < self.min_keep).nonzero().flatten()
            if short.numel() == 0:
                return masks
            if attempt < self.max_tries:
                masks.replace_rows(short, self._draw(self._sizes(short.numel(), generator), generator))
        t, h, w = self.grid
        shape = "x".join(map(str, self.grid if t > 1 else self.grid[1:]))
        raise ConfigError(
            f"masks leave fewer than mask.min_keep={self.min_keep} context tokens on the {shape} token "
            f"grid ({t * h * w} tokens) even after {self.max_tries} fresh draws ({self.what}): lower the "
            f"block scales or num_blocks in mask.targets (or raise mask.context_scale), or lower mask.min_keep")


# ----------------------------------------------------------------------------- generators

class MaskGenerator(ABC):
    """`__call__(batch_size, generator) -> list[MaskSet]`, all randomness from `generator`."""

    grid: Grid3
    """(T, H, W) token grid; T = 1 for images."""

    @abstractmethod
    def draw_dense(self, batch_size: int, generator: torch.Generator) -> list[DenseMasks]:
        """Boolean masks per mask set, before the batch is cut to equal lengths (diagnostics, tests)."""

    @abstractmethod
    def expected_masked_ratio(self) -> list[float]:
        """Per mask set: expected fraction of one sample's tokens outside its context, before the batch
        is cut to equal lengths (which can only raise it) and ignoring min_keep redraws (which lower it
        where big blocks often cover the whole grid)."""

    def __call__(self, batch_size: int, generator: torch.Generator) -> list[MaskSet]:
        return [dense.equalize(generator) for dense in self.draw_dense(batch_size, generator)]


class MultiBlock2D(MaskGenerator):
    """I-JEPA: each target block is its own target; the context block loses every target cell."""

    def __init__(self, *, grid: Grid3, targets: list[BlockSpec], context: BlockSpec, min_keep: int,
                 max_tries: int):
        self.grid, self.targets, self.context = grid, targets, context
        what = "; ".join([f"targets: {s}" for s in targets] + [f"context: {context}"])
        self._sampler = _BlockSampler(grid=grid, specs=[*targets, context], combine=self._combine,
                                      min_keep=min_keep, max_tries=max_tries, what=what)

    @staticmethod
    def _combine(blocks: torch.Tensor) -> DenseMasks:
        targets = blocks[:, :-1]
        return DenseMasks(blocks[:, -1] & ~targets.any(1), list(targets.unbind(1)))

    def draw_dense(self, batch_size: int, generator: torch.Generator) -> list[DenseMasks]:
        return [self._sampler.draw(batch_size, generator)]

    def expected_masked_ratio(self) -> list[float]:
        # Blocks are placed independently, so a cell stays context with the product of probabilities.
        keep = block_coverage(self.context, self.grid)
        for spec in self.targets:
            keep = keep * (1 - block_coverage(spec, self.grid)) ** spec.num_blocks
        return [1 - keep.mean().item()]


def _union(blocks: torch.Tensor) -> DenseMasks:
    target = blocks.any(1)
    return DenseMasks(~target, [target])


class MultiBlock3D(MaskGenerator):
    """V-JEPA: per block kind, target = union of its blocks, context = the rest; one mask set per kind."""

    def __init__(self, *, grid: Grid3, targets: list[BlockSpec], min_keep: int, max_tries: int):
        self.grid, self.targets = grid, targets
        self._samplers = [_BlockSampler(grid=grid, specs=[s], combine=_union, min_keep=min_keep,
                                        max_tries=max_tries, what=f"mask.targets[{i}]: {s}")
                          for i, s in enumerate(targets)]

    def draw_dense(self, batch_size: int, generator: torch.Generator) -> list[DenseMasks]:
        return [sampler.draw(batch_size, generator) for sampler in self._samplers]

    def expected_masked_ratio(self) -> list[float]:
        return [1 - ((1 - block_coverage(s, self.grid)) ** s.num_blocks).mean().item() for s in self.targets]


class TubeMask(MaskGenerator):
    """A random `ratio` of spatial cells is masked through every frame (target); the rest is context."""

    def __init__(self, *, grid: Grid3, ratio: float, min_keep: int):
        self.grid = grid
        t_len, h_len, w_len = grid
        self.num_masked = round(ratio * h_len * w_len)
        context = (h_len * w_len - self.num_masked) * t_len
        if self.num_masked < 1 or context < min_keep:
            raise ConfigError(
                f"mask.tube_ratio={ratio} masks {self.num_masked} of {h_len * w_len} spatial cells on the "
                f"{t_len}x{h_len}x{w_len} token grid, leaving {context} context tokens; it must mask at "
                f"least one cell and leave mask.min_keep={min_keep}: change mask.tube_ratio or mask.min_keep")

    def draw_dense(self, batch_size: int, generator: torch.Generator) -> list[DenseMasks]:
        t_len, h_len, w_len = self.grid
        order = torch.rand(batch_size, h_len * w_len, generator=generator).argsort(dim=1)
        cells = torch.zeros(batch_size, h_len * w_len, dtype=torch.bool)
        cells.scatter_(1, order[:, : self.num_masked], True)
        target = cells[:, None, :].expand(-1, t_len, -1).reshape(batch_size, -1)
        return [DenseMasks(~target, [target])]

    def expected_masked_ratio(self) -> list[float]:
        return [self.num_masked / (self.grid[1] * self.grid[2])]


def build_mask_generator(mask_cfg: MaskConfig, grid: tuple[int, ...]) -> MaskGenerator:
    """The generator `mask_cfg` describes over `grid`: (H, W) tokens for images, (T, H, W) for video.

    Draws one probe batch, so a config that cannot leave `min_keep` context tokens fails here,
    in the main process, rather than later inside a DataLoader worker.
    """
    if len(grid) not in (2, 3) or any(int(g) != g or g < 1 for g in grid):
        raise ConfigError(f"token grid {tuple(grid)} is invalid: expected (H, W) or (T, H, W) positive ints")
    if mask_cfg.kind == "multiblock2d" and len(grid) != 2:
        raise ConfigError(f"mask.kind=multiblock2d masks an image token grid (H, W), got {tuple(grid)}: "
                          f"use mask.kind=multiblock3d or tube for video")
    grid3: Grid3 = tuple(int(g) for g in (1, *grid)[-3:])  # type: ignore[assignment]
    if mask_cfg.min_keep >= grid3[0] * grid3[1] * grid3[2]:
        raise ConfigError(f"mask.min_keep={mask_cfg.min_keep} is not below the {len(grid)}-D grid's "
                          f"{grid3[0] * grid3[1] * grid3[2]} tokens: lower it")
    specs = [BlockSpec.from_config(b) for b in mask_cfg.targets]
    common = dict(grid=grid3, min_keep=mask_cfg.min_keep)
    if mask_cfg.kind == "multiblock2d":
        context = BlockSpec(1, tuple(mask_cfg.context_scale), tuple(mask_cfg.context_aspect_ratio))
        gen: MaskGenerator = MultiBlock2D(targets=specs, context=context, max_tries=mask_cfg.max_tries, **common)
    elif mask_cfg.kind == "multiblock3d":
        gen = MultiBlock3D(targets=specs, max_tries=mask_cfg.max_tries, **common)
    elif mask_cfg.kind == "tube":
        gen = TubeMask(ratio=mask_cfg.tube_ratio, **common)
    else:
        raise ConfigError(f"mask.kind={mask_cfg.kind!r} is unknown: use multiblock2d, multiblock3d or tube")
    gen(PROBE_BATCH, torch.Generator().manual_seed(0))
    return gen
