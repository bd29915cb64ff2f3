"""Value rules of the experiment config, across sections, and the encoder sizes they depend on.

`validate(cfg)` runs after the schema has checked keys and types (jepa/config.py); each error names
the key, the value and what is expected. Encoder sizes live here because both the rules (RoPE
head-dim split, hierarchy depth) and the model factory read them. The last rule builds the RoPE
tables the encoder and predictor will use (jepa/models/rope.py, imported lazily with torch) and
refuses a head_dim that gives two cells of the token grid the same rotation.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jepa.errors import ConfigError

if TYPE_CHECKING:
    from jepa.config import Config, ModelConfig, RopeConfig


VIT_SIZES = {
    # name: (embed_dim, depth, num_heads, mlp_ratio)
    "tiny": (192, 12, 3, 4.0),
    "small": (384, 12, 6, 4.0),
    "base": (768, 12, 12, 4.0),
    "large": (1024, 24, 16, 4.0),
    "huge": (1280, 32, 16, 4.0),
    "giant": (1408, 40, 16, 48 / 11),
}

ROPE_MIN_ROW_DISTANCE = 2.0 ** -8
"""Smallest Euclidean distance allowed between two rows of a RoPE table, relative to the row norm
(every [sin | cos] row has norm sqrt(head_dim)). 2^-8 is bf16's unit roundoff: two cells whose rotations
differ by less than the rounding of the rotated q and k are not told apart by attention in bf16
training. Exact collisions (a frequency that turns a whole number of times between two cells, e.g.
3D head_dim 6 with `centre` coords) measure ~1e-7 and the shipped configs >= 0.2, so the verdict
does not hinge on the exact value."""

_DISTANCE_ROWS_PER_CHUNK = 1024  # rows of the table compared at once: bounds memory to 1024 x N distances


@dataclass(frozen=True)
class VitDims:
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


def vit_dims(model: ModelConfig) -> VitDims:
    """Encoder dimensions: the named size with explicit `embed_dim`/`depth`/`num_heads` on top."""
    dim, depth, heads, ratio = VIT_SIZES[model.size]
    return VitDims(
        embed_dim=model.embed_dim or dim,
        depth=model.depth or depth,
        num_heads=model.num_heads or heads,
        mlp_ratio=ratio if model.size == "giant" and model.mlp_ratio == 4.0 else model.mlp_ratio,
    )


def is_video_model(cfg: Config) -> bool:
    """The model takes clips (3D token grid): MViT, 3D RoPE, or 3D / tube masks."""
    m = cfg.model
    return m.backbone == "mvit_v2_s" or m.rope.kind == "3d" or cfg.mask.kind != "multiblock2d"


def encoder_depth(model: ModelConfig) -> int:
    """Number of blocks of the encoder the hierarchy levels index into."""
    return 16 if model.backbone == "mvit_v2_s" else vit_dims(model).depth


def _fail(key: str, value: Any, need: str) -> None:
    raise ConfigError(f"`{key}` = {value!r} is invalid: {need}")


def _one_of(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        _fail(key, value, f"expected one of {', '.join(map(str, choices))}")


def _range_pair(key: str, value: list[float], lo: float, hi: float, lo_open: bool = True) -> None:
    if len(value) != 2 or value[0] > value[1]:
        _fail(key, value, "expected [min, max] with min <= max")
    for v in value:
        if (v <= lo if lo_open else v < lo) or v > hi:
            _fail(key, value, f"each bound must lie in {'(' if lo_open else '['}{lo}, {hi}]")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        _fail(key, value, "must be >= 0" if allow_zero else "must be > 0")


def validate(cfg: Config) -> None:
    """Value checks across sections; each error names the key, the value and what is expected."""
    m, r = cfg.model, cfg.model.rope
    _one_of("model.backbone", m.backbone, ("vit", "mvit_v2_s"))
    _one_of("model.size", m.size, tuple(VIT_SIZES))
    _one_of("model.rope.kind", r.kind, ("none", "2d", "3d"))
    _one_of("model.rope.variant", r.variant, ("axial", "mixed"))
    _one_of("model.rope.coords", r.coords, ("centre", "index"))
    _one_of("model.rope.normalize", r.normalize, ("separate", "max", "min"))
    if r.coords == "index" and r.normalize != "separate":
        _fail("model.rope.normalize", r.normalize, "integer `index` coords are not normalised: use `separate`")
    for key in ("theta", "temporal_scale"):
        _positive(f"model.rope.{key}", getattr(r, key))
    for key in ("shift", "jitter", "rescale"):
        _positive(f"model.rope.{key}", getattr(r, key), allow_zero=True)
    if r.variant == "mixed" and r.kind != "2d":
        _fail("model.rope.variant", r.variant, "`mixed` exists for model.rope.kind=2d only")
    for key in ("patch_size", "tubelet_size"):
        _positive(f"model.{key}", getattr(m, key))
    for key in ("embed_dim", "depth", "num_heads"):
        if getattr(m, key) is not None:
            _positive(f"model.{key}", getattr(m, key))
    _positive("model.mlp_ratio", m.mlp_ratio)
    if not 0 <= m.drop_path < 1:
        _fail("model.drop_path", m.drop_path, "must lie in [0, 1)")
    video = is_video_model(cfg)
    if m.backbone == "vit":
        dims = vit_dims(m)
        _check_heads("model", dims.embed_dim, dims.num_heads, r)
    if m.backbone == "mvit_v2_s" and r.kind == "2d":
        _fail("model.rope.kind", r.kind, "mvit_v2_s is a video encoder: use 3d or none")
    p = m.predictor
    for key in ("embed_dim", "depth", "num_heads"):
        _positive(f"model.predictor.{key}", getattr(p, key))
    _check_heads("model.predictor", p.embed_dim, p.num_heads, r)

    mk = cfg.mask
    _one_of("mask.kind", mk.kind, ("multiblock2d", "multiblock3d", "tube"))
    if not mk.targets and mk.kind != "tube":
        _fail("mask.targets", mk.targets, "needs at least one block kind")
    for i, b in enumerate(mk.targets):
        _positive(f"mask.targets[{i}].num_blocks", b.num_blocks)
        _range_pair(f"mask.targets[{i}].spatial_scale", b.spatial_scale, 0.0, 1.0)
        _range_pair(f"mask.targets[{i}].temporal_scale", b.temporal_scale, 0.0, 1.0)
        _range_pair(f"mask.targets[{i}].aspect_ratio", b.aspect_ratio, 0.0, float("inf"))
    _range_pair("mask.context_scale", mk.context_scale, 0.0, 1.0)
    _range_pair("mask.context_aspect_ratio", mk.context_aspect_ratio, 0.0, float("inf"))
    if not 0 < mk.tube_ratio < 1:
        _fail("mask.tube_ratio", mk.tube_ratio, "must lie in (0, 1)")
    _positive("mask.min_keep", mk.min_keep)
    _positive("mask.max_tries", mk.max_tries, allow_zero=True)

    h = cfg.hierarchy
    _one_of("hierarchy.loss", h.loss, ("l1", "smooth_l1"))
    if not h.levels:
        _fail("hierarchy.levels", h.levels, "needs at least one level")
    depth = encoder_depth(m)
    for i, lv in enumerate(h.levels):
        if not -depth <= lv.block < depth:
            _fail(f"hierarchy.levels[{i}].block", lv.block,
                  f"the encoder has {depth} blocks: use 0..{depth - 1} or -1..-{depth}")
        _positive(f"hierarchy.levels[{i}].pool", lv.pool)
        _positive(f"hierarchy.levels[{i}].pool_t", lv.pool_t)
        _positive(f"hierarchy.levels[{i}].weight", lv.weight, allow_zero=True)

    d = cfg.data
    for i, s in enumerate(d.sources):
        _one_of(f"data.sources[{i}].kind", s.kind, ("image", "video"))
        _positive(f"data.sources[{i}].weight", s.weight)
        if not s.urls:
            _fail(f"data.sources[{i}].urls", s.urls, "give the shard URLs, e.g. /data/train-{000..099}.tar")
    for key in ("batch_size", "samples_per_epoch", "shuffle_buffer", "image_size", "num_frames",
                "frame_step", "clips_per_video", "error_window"):
        _positive(f"data.{key}", getattr(d, key))
    _positive("data.num_workers", d.num_workers, allow_zero=True)
    if d.target_fps is not None:
        _positive("data.target_fps", d.target_fps)
    _range_pair("data.crop_scale", d.crop_scale, 0.0, 1.0)
    _one_of("data.short_video", d.short_video, ("pad", "skip"))
    _one_of("data.decoder", d.decoder, ("pyav", "torchcodec"))
    if not 0 < d.max_error_fraction <= 1:
        _fail("data.max_error_fraction", d.max_error_fraction, "must lie in (0, 1]")
    if d.image_size % m.patch_size:
        _fail("data.image_size", d.image_size, f"must be a multiple of model.patch_size={m.patch_size}")
    if video and m.backbone == "vit" and d.num_frames % m.tubelet_size:
        _fail("data.num_frames", d.num_frames, f"must be a multiple of model.tubelet_size={m.tubelet_size}")

    o = cfg.optim
    _positive("optim.total_steps", o.total_steps)
    _positive("optim.warmup_steps", o.warmup_steps, allow_zero=True)
    if o.warmup_steps > o.total_steps:
        _fail("optim.warmup_steps", o.warmup_steps, f"must not exceed optim.total_steps={o.total_steps}")
    for key in ("lr", "start_lr", "final_lr", "weight_decay", "final_weight_decay", "grad_clip"):
        _positive(f"optim.{key}", getattr(o, key), allow_zero=True)
    _positive("optim.eps", o.eps)
    _range_pair("optim.betas", o.betas, 0.0, 1.0, lo_open=False)
    if max(o.betas) >= 1.0:
        _fail("optim.betas", o.betas, "each beta must be < 1")
    _positive("optim.loss_spike.window", o.loss_spike.window)
    _positive("optim.loss_spike.k", o.loss_spike.k)

    for key in ("momentum", "final_momentum"):
        v = getattr(cfg.ema, key)
        if not 0 <= v <= 1:
            _fail(f"ema.{key}", v, "must lie in [0, 1]")

    _one_of("deepspeed.zero_stage", cfg.deepspeed.zero_stage, (0, 1, 2, 3))
    _positive("deepspeed.grad_accum_steps", cfg.deepspeed.grad_accum_steps)
    _positive("deepspeed.zero3_persistence_threshold", cfg.deepspeed.zero3_persistence_threshold, allow_zero=True)
    _positive("deepspeed.bucket_size", cfg.deepspeed.bucket_size)
    _positive("checkpoint.every_steps", cfg.checkpoint.every_steps)
    _positive("checkpoint.keep_last", cfg.checkpoint.keep_last)
    if cfg.checkpoint.stop_at_step is not None:
        _positive("checkpoint.stop_at_step", cfg.checkpoint.stop_at_step)
    _positive("logging.every_steps", cfg.logging.every_steps)
    _positive("logging.repr_every_steps", cfg.logging.repr_every_steps)

    la = cfg.launch
    _one_of("launch.cluster", la.cluster, ("slurm", "local", "debug"))
    for key in ("nodes", "tasks_per_node", "cpus_per_task", "mem_gb", "timeout_min", "max_requeues"):
        _positive(f"launch.{key}", getattr(la, key), allow_zero=key == "max_requeues")
    _positive("launch.gpus_per_node", la.gpus_per_node, allow_zero=True)
    _positive("launch.signal_delay_s", la.signal_delay_s, allow_zero=True)
    if not cfg.output_dir:
        _fail("output_dir", cfg.output_dir, "give the run folder")
    _check_rope_rows(cfg)


def _check_heads(prefix: str, embed_dim: int, num_heads: int, rope: RopeConfig) -> None:
    if embed_dim % num_heads:
        _fail(f"{prefix}.num_heads", num_heads, f"must divide {prefix}.embed_dim={embed_dim}")
    head_dim = embed_dim // num_heads
    if not _rope_splits(rope.kind, head_dim):
        need = "head_dim % 4 == 0" if rope.kind == "2d" else "an even head_dim >= 6"
        _fail(f"{prefix}.num_heads", num_heads,
              f"{rope.kind.upper()} RoPE needs {need}, but embed_dim/num_heads = {embed_dim}/{num_heads} = {head_dim}")


def _rope_splits(kind: str, head_dim: int) -> bool:
    """head_dim gives every axis at least one rotation pair: 2D a multiple of 4, 3D even and >= 6."""
    if kind == "2d":
        return head_dim % 4 == 0
    if kind == "3d":
        return head_dim % 2 == 0 and head_dim >= 6
    return True


def _check_rope_rows(cfg: Config) -> None:
    """Refuse an encoder or predictor head_dim whose RoPE table gives two cells of the token grid the same
    rotation (rows closer than ROPE_MIN_ROW_DISTANCE): with `centre` coords a single pair per axis turns
    once every n/2 cells, so cells t and t + n/2 would get identical queries and keys. The table is the
    un-augmented one (shift/jitter/rescale are train-time only)."""
    m, r, p = cfg.model, cfg.model.rope, cfg.model.predictor
    if r.kind == "none" or r.variant == "mixed":
        return  # mixed: frequencies are drawn at random per block and head and then learned; no fixed table
    from jepa.models.factory import input_grid  # lazy: the factory imports jepa.config, which imports us

    try:
        grid = input_grid(cfg)
    except (ConfigError, ValueError):
        return  # image/video settings that contradict each other, or a clip MViT cannot patch: build_jepa says so
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
                    and _rope_splits(r.kind, embed_dim // h)
                    and _closest_rows(rope_key, embed_dim // h, grid)[0] > ROPE_MIN_ROW_DISTANCE), None)
        remedy = (f"use num_heads={fix} (head_dim {embed_dim // fix})" if fix else
                  f"no smaller num_heads at this embed_dim separates them: raise {prefix}.embed_dim "
                  f"or change model.rope (coords, theta, temporal_scale)")
        _fail(f"{prefix}.num_heads", num_heads,
              f"at {prefix}.embed_dim={embed_dim} (head_dim {embed_dim // num_heads}) the {r.kind} RoPE rotates "
              f"cells {cell_a} and {cell_b} of the {grid} token grid alike (row distance {distance:.1e} of the "
              f"row norm, need > {ROPE_MIN_ROW_DISTANCE:.1e}), so RoPE cannot tell them apart: {remedy}")


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
