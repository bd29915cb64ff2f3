"""Encoder sizes a config describes: ViT dimensions by name, encoder depth, image or video model.

Both the value rules (RoPE head-dim split, hierarchy depth; jepa/config/rules.py) and the model
factory (jepa/models/factory.py) read them, so they live here, below both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jepa.config.schema import Config, ModelConfig


VIT_SIZES = {
    # name: (embed_dim, depth, num_heads, mlp_ratio)
    "tiny": (192, 12, 3, 4.0),
    "small": (384, 12, 6, 4.0),
    "base": (768, 12, 12, 4.0),
    "large": (1024, 24, 16, 4.0),
    "huge": (1280, 32, 16, 4.0),
    "giant": (1408, 40, 16, 48 / 11),
}


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
