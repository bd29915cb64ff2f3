"""Build encoders, predictor and the JEPA module from an experiment config.

Image or video is decided by the config as `jepa.config.sizes.is_video_model` does: video when the
backbone is MViT, the RoPE is 3D or the masks are 3D (`multiblock3d`, `tube`). Settings that
contradict each other (3D RoPE with 2D masks, a video source for an image model, ...) are errors
that name both keys.
"""

from __future__ import annotations

import math

import torch.nn as nn

from jepa.config import Config
from jepa.config.sizes import is_video_model, vit_dims
from jepa.errors import ConfigError
from jepa.models.hierarchy import levels_from_config
from jepa.models.jepa import JEPA
from jepa.models.mvit import MViTEncoder, mvit_block_grids
from jepa.models.predictor import LevelHead, Predictor
from jepa.models.rope import build_rope
from jepa.models.vit import VisionTransformer


def is_video(cfg: Config) -> bool:
    """True for a video model (clips in, 3D token grid), after checking the config agrees with itself."""
    m = cfg.model
    video = is_video_model(cfg)
    if video and m.rope.kind == "2d":
        raise ConfigError(f"model.rope.kind = '2d' with a video model (model.backbone = {m.backbone!r}, "
                          f"mask.kind = {cfg.mask.kind!r}): use model.rope.kind = '3d'")
    if video and cfg.mask.kind == "multiblock2d":
        raise ConfigError(f"mask.kind = 'multiblock2d' with a video model (model.backbone = {m.backbone!r}, "
                          f"model.rope.kind = {m.rope.kind!r}): use mask.kind = 'multiblock3d' or 'tube'")
    want = "video" if video else "image"
    for i, source in enumerate(cfg.data.sources):
        if source.kind != want:
            raise ConfigError(f"data.sources[{i}].kind = {source.kind!r} but the model is an {want} model "
                              f"(model.backbone = {m.backbone!r}, model.rope.kind = {m.rope.kind!r}, "
                              f"mask.kind = {cfg.mask.kind!r})")
    return video


def input_grid(cfg: Config) -> tuple[int, ...]:
    """The token grid the masks index: (H/p, W/p) for images, (T/t, H/p, W/p) for video, MViT's
    output grid for MViT (e.g. (8, 7, 7) for 16x224x224 clips)."""
    m, d = cfg.model, cfg.data
    video = is_video(cfg)
    if m.backbone == "mvit_v2_s":
        return tuple(mvit_block_grids(num_frames=d.num_frames, img_size=d.image_size)[-1].q)
    if d.image_size % m.patch_size:
        raise ConfigError(f"data.image_size = {d.image_size} is not a multiple of model.patch_size = "
                          f"{m.patch_size}")
    side = d.image_size // m.patch_size
    if not video:
        return (side, side)
    if d.num_frames % m.tubelet_size:
        raise ConfigError(f"data.num_frames = {d.num_frames} is not a multiple of model.tubelet_size = "
                          f"{m.tubelet_size}")
    return (d.num_frames // m.tubelet_size, side, side)


def build_encoder(cfg: Config) -> nn.Module:
    """The context encoder the config describes (the target encoder is its copy)."""
    m = cfg.model
    video = is_video(cfg)
    if m.rope.kind == "none" and not m.abs_pos and m.backbone == "vit":
        raise ConfigError("model.rope.kind = 'none' and model.abs_pos = false leave the ViT without positions: "
                          "enable one of them")
    if m.backbone == "mvit_v2_s":
        return MViTEncoder(num_frames=cfg.data.num_frames, img_size=cfg.data.image_size,
                           rope=m.rope if m.rope.kind != "none" else None, rel_pos=m.mvit_rel_pos,
                           drop_path=m.drop_path)
    dims = vit_dims(m)
    rope = build_rope(m.rope, head_dim=dims.head_dim, num_heads=dims.num_heads, depth=dims.depth)
    return VisionTransformer(embed_dim=dims.embed_dim, depth=dims.depth, num_heads=dims.num_heads,
                             mlp_ratio=dims.mlp_ratio, patch_size=m.patch_size,
                             tubelet_size=m.tubelet_size if video else None, rope=rope, abs_pos=m.abs_pos,
                             drop_path=m.drop_path, activation_checkpointing=m.activation_checkpointing)


def build_predictor(cfg: Config, *, encoder_dim: int) -> Predictor:
    """The predictor, with the encoder's kind of RoPE at its own head_dim."""
    m, p = cfg.model, cfg.model.predictor
    rope = build_rope(m.rope, head_dim=p.embed_dim // p.num_heads, num_heads=p.num_heads, depth=p.depth)
    # Without RoPE the mask tokens need absolute positions to tell target positions apart.
    return Predictor(encoder_dim=encoder_dim, embed_dim=p.embed_dim, depth=p.depth, num_heads=p.num_heads,
                     rope=rope, abs_pos=p.abs_pos or m.abs_pos or rope is None, per_block=p.per_block,
                     activation_checkpointing=m.activation_checkpointing)


def build_jepa(cfg: Config) -> JEPA:
    """Context encoder, predictor, one head per hierarchy level, EMA target encoder."""
    encoder = build_encoder(cfg)
    grid = input_grid(cfg)
    depth = len(encoder.block_dims)
    try:
        levels = levels_from_config(cfg.hierarchy, depth=depth, video=len(grid) == 3)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if isinstance(encoder, MViTEncoder):
        _check_mvit_levels(cfg, levels, grid)
    predictor = build_predictor(cfg, encoder_dim=encoder.embed_dim)
    heads = nn.ModuleList(LevelHead(in_dim=cfg.model.predictor.embed_dim, out_dim=encoder.block_dims[lv.block])
                          for lv in levels)
    return JEPA(context_encoder=encoder, predictor=predictor, heads=heads, levels=levels,
                loss=cfg.hierarchy.loss, min_keep=cfg.mask.min_keep)


def _check_mvit_levels(cfg: Config, levels: list, grid: tuple[int, ...]) -> None:
    """MViT blocks before the last stage sit on finer grids: a level's cells must hold whole output tokens."""
    grids = mvit_block_grids(num_frames=cfg.data.num_frames, img_size=cfg.data.image_size)
    for i, lv in enumerate(levels):
        level_grid = grids[lv.block].q
        for n_lvl, n_out, pool in zip(level_grid, grid, lv.pool):
            if n_lvl % n_out or pool % (n_lvl // n_out):
                need = [math.lcm(p, a // b) if a % b == 0 else None for p, a, b in zip(lv.pool, level_grid, grid)]
                raise ConfigError(
                    f"hierarchy.levels[{i}]: MViT block {lv.block} works on grid {level_grid}, finer than the "
                    f"output grid {grid}; pooling by (pool_t, pool, pool) = {lv.pool} would split output "
                    f"tokens across cells: use pool factors that are multiples of the grid ratio "
                    f"(smallest fitting: {need})")
