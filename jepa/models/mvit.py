"""torchvision's MViT v2 S as a video encoder, with 3D RoPE in every MultiscaleAttention block.

The network is torchvision's own (`torchvision.models.video.mvit`, random weights), built for the clip
size at hand: `mvit_v2_s()` fixes 16x224x224, so its block setting is read off a meta-device copy and
handed to `MViT(spatial_size=..., temporal_size=...)`. The classification head is dropped.

RoPE goes in by composition: each block's attention is replaced, on this instance only, by a
`RopeMultiscaleAttention` that adopts the original's submodules and parameters (state-dict keys are
unchanged). It rotates q and k after pooling, each with the table of its own grid, both expressed in
the stage-0 frame: cell j of a pooled axis sits at stage-0 index j * S, S the product of the pooling
strides that made it, which is where torchvision's pooling convs (kernel 3, padding 1) centre it and
equals j * N0 / n whenever the n cells divide the N0 stage-0 ones (every grid of a 16x224x224 clip);
`centre` coordinates then take that stage-0 cell's centre, the same rule for q and k. The relative
position bias and the pooling residual keep the unrotated pooled q.
With RoPE off and the relative position bias on, the torchvision modules stay untouched.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
from torchvision.models.video import mvit_v2_s
from torchvision.models.video.mvit import MSBlockConfig, MultiscaleAttention, MViT, _add_rel_pos, _add_shortcut

from jepa.models.rope import CoordTransform, RotaryEmbedding, apply_rope, build_rope

Grid3 = tuple[int, int, int]
PATCH_STRIDE = (2, 4, 4)  # torchvision's patch embedding: conv (3, 7, 7), stride (2, 4, 4)


@dataclass(frozen=True)
class BlockGrids:
    """Token grids (without CLS) of one attention block, after pooling, and the cumulative strides
    that place cell j of each axis at stage-0 index j * stride."""

    q: Grid3
    k: Grid3
    q_stride: Grid3
    k_stride: Grid3


def stage0_grid(num_frames: int, img_size: int | Sequence[int]) -> Grid3:
    """Token grid after the patch embedding: (T/2, H/4, W/4); raises on sizes it does not divide."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    size = (num_frames, h, w)
    if any(n % s or n <= 0 for n, s in zip(size, PATCH_STRIDE)):
        raise ValueError(f"MViT clip {num_frames}x{h}x{w} (frames x height x width): the patch embedding "
                         f"needs an even number of frames and a height and width that are multiples of 4")
    return tuple(n // s for n, s in zip(size, PATCH_STRIDE))


def expand_cells(mask: torch.Tensor, *, grid: Sequence[int], factors: Sequence[int]) -> torch.Tensor:
    """(B, prod(grid)) per-cell values, row-major -> (B, *(grid x factors)): each cell spread over the
    box of `factors` finer cells it covers."""
    B = mask.shape[0]
    boxed = mask.reshape(B, *(n for g in grid for n in (g, 1)))
    boxed = boxed.expand(B, *(n for g, f in zip(grid, factors, strict=True) for n in (g, f)))
    return boxed.reshape(B, *(g * f for g, f in zip(grid, factors)))


def _v2_s_block_setting() -> tuple[list[MSBlockConfig], dict]:
    """torchvision's MViT v2 S block setting and flags, read off the model it builds (on meta: no memory)."""
    with torch.device("meta"):
        ref = mvit_v2_s()
    setting = []
    for block in ref.blocks:
        a = block.attn
        kq, sq = _pool_geometry(a.pool_q)
        kkv, skv = _pool_geometry(a.pool_k)
        setting.append(MSBlockConfig(num_heads=a.num_heads, input_channels=a.embed_dim, output_channels=a.output_dim,
                                     kernel_q=kq, kernel_kv=kkv, stride_q=sq, stride_kv=skv))
    a0 = ref.blocks[0].attn
    flags = dict(residual_pool=a0.residual_pool, residual_with_cls_embed=a0.residual_with_cls_embed,
                 rel_pos_embed=a0.rel_pos_h is not None, proj_after_attn=ref.blocks[0].proj_after_attn)
    return setting, flags


def _pool_geometry(pool: Optional[nn.Module]) -> tuple[list[int], list[int]]:
    if pool is None:
        return [1, 1, 1], [1, 1, 1]
    return list(pool.pool.kernel_size), list(pool.pool.stride)


def build_mvit_v2_s(*, num_frames: int = 16, img_size: int | Sequence[int] = 224, drop_path: float = 0.0) -> MViT:
    """torchvision's MViT v2 S for clips of num_frames x img_size (random weights, head kept)."""
    t, h, w = (n * s for n, s in zip(stage0_grid(num_frames, img_size), PATCH_STRIDE))
    setting, flags = _v2_s_block_setting()
    return MViT(spatial_size=(h, w), temporal_size=t, block_setting=setting, stochastic_depth_prob=drop_path, **flags)


def block_grids(blocks: Sequence[nn.Module], stage0: Grid3) -> list[BlockGrids]:
    """q and k grids of every block for a stage-0 grid, from the pooling convs' geometry."""
    out, thw, stride = [], tuple(stage0), (1, 1, 1)
    for block in blocks:
        attn = block.attn
        q, sq = _pooled(thw, attn.pool_q)
        k, sk = _pooled(thw, attn.pool_k)
        out.append(BlockGrids(q=q, k=k, q_stride=_mul(stride, sq), k_stride=_mul(stride, sk)))
        thw, stride = q, _mul(stride, sq)
    return out


def _pooled(grid: Grid3, pool: Optional[nn.Module]) -> tuple[Grid3, Grid3]:
    if pool is None:
        return grid, (1, 1, 1)
    conv = pool.pool
    size = tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(grid, conv.kernel_size, conv.stride, conv.padding))
    return size, tuple(conv.stride)


def _mul(a: Sequence[int], b: Sequence[int]) -> Grid3:
    return tuple(x * y for x, y in zip(a, b))


def mvit_block_grids(num_frames: int = 16, img_size: int | Sequence[int] = 224) -> list[BlockGrids]:
    """q/k grids of the 16 blocks of MViT v2 S for a clip size (no weights are allocated)."""
    with torch.device("meta"):
        model = build_mvit_v2_s(num_frames=num_frames, img_size=img_size)
    return block_grids(model.blocks, stage0_grid(num_frames, img_size))


class MViTRope(nn.Module):
    """RoPE tables of every attention block of one encoder, in one frame: the stage-0 token grid.

    Shared by all blocks; `begin()` draws the forward pass's coordinate augmentation (training only),
    so that q and k of every block move together.
    """

    def __init__(self, *, rope: RotaryEmbedding, stage0: Grid3):
        super().__init__()
        if rope.ndim != 3:
            raise ValueError(f"MViT is a video encoder and needs 3D RoPE, got a {rope.ndim}D one")
        self.rope, self.stage0 = rope, tuple(stage0)
        self.transform: Optional[CoordTransform] = None

    def begin(self) -> None:
        self.transform = self.rope.draw_transform()

    def tables(self, grids: BlockGrids) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.rope.table(grids.q, ref_grid=self.stage0, strides=grids.q_stride, transform=self.transform)
        k = self.rope.table(grids.k, ref_grid=self.stage0, strides=grids.k_stride, transform=self.transform)
        return q, k


class RopeMultiscaleAttention(MultiscaleAttention):
    """torchvision's MultiscaleAttention with RoPE on the pooled q and k, built from an existing
    instance whose submodules and parameters it takes over (same state-dict keys, same weights)."""

    def __init__(self, *, attn: MultiscaleAttention, grids: BlockGrids, rope: Optional[MViTRope], rel_pos: bool):
        # Skip MultiscaleAttention.__init__ on purpose: it would create fresh weights; we adopt attn's.
        nn.Module.__init__(self)
        for name in ("embed_dim", "output_dim", "num_heads", "head_dim", "scaler", "residual_pool",
                     "residual_with_cls_embed", "training"):
            setattr(self, name, getattr(attn, name))
        self.qkv, self.project = attn.qkv, attn.project
        self.pool_q, self.pool_k, self.pool_v = attn.pool_q, attn.pool_k, attn.pool_v
        self.rel_pos_h = attn.rel_pos_h if rel_pos else None
        self.rel_pos_w = attn.rel_pos_w if rel_pos else None
        self.rel_pos_t = attn.rel_pos_t if rel_pos else None
        self.grids, self.rope = grids, rope

    def forward(self, x: torch.Tensor, thw: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[int, int, int]]:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).transpose(1, 3).unbind(dim=2)
        k, k_thw = self.pool_k(k, thw) if self.pool_k is not None else (k, thw)
        if self.pool_v is not None:
            v = self.pool_v(v, thw)[0]
        if self.pool_q is not None:
            q, thw = self.pool_q(q, thw)

        q_rot, k_rot = q, k
        if self.rope is not None:
            if (tuple(thw), tuple(k_thw)) != (self.grids.q, self.grids.k):
                raise ValueError(f"attention got q/k grids {tuple(thw)}/{tuple(k_thw)} but was built for "
                                 f"{self.grids.q}/{self.grids.k}: the clip size differs from the encoder's")
            q_table, k_table = self.rope.tables(self.grids)
            q_rot = apply_rope(q, q_table, num_prefix_tokens=1)  # CLS (token 0) is never rotated
            k_rot = apply_rope(k, k_table, num_prefix_tokens=1)

        attn = torch.matmul(self.scaler * q_rot, k_rot.transpose(2, 3))
        if self.rel_pos_h is not None and self.rel_pos_w is not None and self.rel_pos_t is not None:
            attn = _add_rel_pos(attn, q, thw, k_thw, self.rel_pos_h, self.rel_pos_w, self.rel_pos_t)
        attn = attn.softmax(dim=-1)

        x = torch.matmul(attn, v)
        if self.residual_pool:
            _add_shortcut(x, q, self.residual_with_cls_embed)  # the unrotated pooled q, as without RoPE
        x = x.transpose(1, 2).reshape(B, -1, self.output_dim)
        return self.project(x), thw


class MViTEncoder(nn.Module):
    """MViT v2 S over (B, 3, T, H, W) clips of the size it was built for, optionally with 3D RoPE.

    forward(x, token_mask=None, return_blocks=()) -> dict:
      pooled (B, 768): the CLS token after the final norm (what torchvision's head reads);
      tokens (B, N, 768): final tokens without CLS, after the final norm; grid: their (t, h, w);
      blocks {i: (tokens (B, N_i, D_i) without CLS, before any norm, grid_i)} for i in return_blocks
      (keys as given; negative indices count from the end).
    token_mask (B, N0) bool marks stage-0 tokens (grid T/2 x H/4 x W/4, row-major) to hide: their
    pixels (2x4x4 each) are zeroed before the patch conv, so no visible token reads masked content,
    and after it they are replaced by a learned mask token; MViT pools tokens, so it cannot drop them.
    """

    num_prefix_tokens = 1

    def __init__(self, *, num_frames: int = 16, img_size: int | Sequence[int] = 224, rope=None,
                 rel_pos: bool = True, drop_path: float = 0.0):
        super().__init__()
        self.stage0 = stage0_grid(num_frames, img_size)
        self.clip = tuple(n * s for n, s in zip(self.stage0, PATCH_STRIDE))
        tv = build_mvit_v2_s(num_frames=num_frames, img_size=img_size, drop_path=drop_path)
        self.conv_proj, self.pos_encoding, self.blocks, self.norm = tv.conv_proj, tv.pos_encoding, tv.blocks, tv.norm
        self.block_grids = block_grids(self.blocks, self.stage0)
        self.embed_dim, self.depth = self.norm.normalized_shape[0], len(self.blocks)
        self.block_dims = [b.attn.output_dim for b in self.blocks]
        head_dims = {b.attn.head_dim for b in self.blocks}
        assert len(head_dims) == 1, f"one RoPE table size needs one head_dim, got {head_dims}"
        rotary = build_rope(rope, head_dim=head_dims.pop()) if rope is not None else None
        self.rope = MViTRope(rope=rotary, stage0=self.stage0) if rotary is not None else None
        if self.rope is not None or not rel_pos:
            for block, grids in zip(self.blocks, self.block_grids):
                block.attn = RopeMultiscaleAttention(attn=block.attn, grids=grids, rope=self.rope, rel_pos=rel_pos)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.blocks[0].attn.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, x: torch.Tensor, token_mask: Optional[torch.Tensor] = None,
                return_blocks: Sequence[int] = ()) -> dict:
        if x.dim() != 5 or tuple(x.shape[1:]) != (3, *self.clip):
            raise ValueError(f"this MViT encoder takes (B, 3, {', '.join(map(str, self.clip))}) clips, got "
                             f"{tuple(x.shape)}: build it with num_frames/img_size of your clips")
        wanted = defaultdict(list)
        for i in return_blocks:
            if not -self.depth <= i < self.depth:
                raise ValueError(f"block index {i} out of range for {self.depth} blocks")
            wanted[i % self.depth].append(i)

        x = self._embed(x, token_mask)
        x = self.pos_encoding(x)  # prepends CLS (no absolute positions: MViT v2 uses relative ones)
        if self.rope is not None:
            self.rope.begin()
        blocks, thw = {}, self.stage0
        for i, block in enumerate(self.blocks):
            x, thw = block(x, thw)
            for key in wanted.get(i, ()):
                blocks[key] = (x[:, 1:], tuple(thw))
        x = self.norm(x)
        return dict(pooled=x[:, 0], tokens=x[:, 1:], grid=tuple(thw), blocks=blocks)

    def _embed(self, x: torch.Tensor, token_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Patch embedding -> (B, N0, C0), row-major over stage0; masked cells become the mask token."""
        if token_mask is None:
            return self.conv_proj(x).flatten(2).transpose(1, 2)
        n0 = self.stage0[0] * self.stage0[1] * self.stage0[2]
        if token_mask.dtype != torch.bool or tuple(token_mask.shape) != (x.shape[0], n0):
            raise ValueError(f"token_mask must be bool (B, N0) = {(x.shape[0], n0)} over the stage-0 grid "
                             f"{self.stage0}, got {token_mask.dtype} {tuple(token_mask.shape)}")
        # The conv (kernel 3x7x7, stride 2x4x4) reads past a cell's own 2x4x4 pixels: zeroing the masked
        # pixels first makes what a visible cell reads of its masked neighbours independent of their content.
        x = x.masked_fill(expand_cells(token_mask, grid=self.stage0, factors=PATCH_STRIDE)[:, None], 0)
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        return torch.where(token_mask[..., None], self.mask_token.to(x.dtype), x)
