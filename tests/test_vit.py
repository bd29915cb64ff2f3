"""ViT encoder: the kept-token path equals the full path, kept tokens keep their true positions,
block outputs, activation checkpointing, sin-cos positions, and clear errors on bad input sizes."""

import pytest
import torch

from jepa.config import RopeConfig
from jepa.models.rope import build_rope
from jepa.models.vit import VisionTransformer, sincos_embed


def make_vit(*, video=False, abs_pos=False, rope_kind=None, variant="axial", dim=32, heads=4, depth=3, **kw):
    torch.manual_seed(0)
    kind = rope_kind or ("3d" if video else "2d")
    rope = build_rope(RopeConfig(kind=kind, variant=variant), head_dim=dim // heads, num_heads=heads, depth=depth)
    return VisionTransformer(embed_dim=dim, depth=depth, num_heads=heads, patch_size=8,
                             tubelet_size=2 if video else None, rope=rope, abs_pos=abs_pos, **kw).eval()


def make_input(video, batch=2):
    torch.manual_seed(1)
    return torch.randn(batch, 3, 4, 32, 24) if video else torch.randn(batch, 3, 32, 24)


CASES = [(False, False, "axial"), (False, True, "axial"), (True, False, "axial"), (True, True, "axial"),
         (False, False, "mixed")]


@pytest.mark.parametrize("video,abs_pos,variant", CASES)
def test_keeping_every_token_equals_the_full_path(video, abs_pos, variant):
    vit, x = make_vit(video=video, abs_pos=abs_pos, variant=variant), make_input(video)
    full = vit(x)
    n = full["tokens"].shape[1]
    assert full["grid"] == ((2, 4, 3) if video else (4, 3)) and n == (24 if video else 12)
    kept = vit(x, keep_idx=torch.arange(n).expand(2, n))
    torch.testing.assert_close(kept["tokens"], full["tokens"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("video,abs_pos,variant", CASES)
def test_permuting_kept_indices_permutes_outputs(video, abs_pos, variant):
    # Tokens carry their own positions (gathered RoPE rows / sin-cos): the order of keep_idx is irrelevant.
    vit, x = make_vit(video=video, abs_pos=abs_pos, variant=variant), make_input(video)
    n = vit(x)["tokens"].shape[1]
    g = torch.Generator().manual_seed(3)
    keep = torch.stack([torch.randperm(n, generator=g)[: n // 2] for _ in range(2)])
    perm = torch.randperm(n // 2, generator=g)
    out = vit(x, keep_idx=keep)["tokens"]
    out_perm = vit(x, keep_idx=keep[:, perm])["tokens"]
    torch.testing.assert_close(out_perm, out[:, perm], atol=1e-5, rtol=0)


def test_kept_tokens_see_their_true_positions():
    # Keep tokens {0, 5} vs {0, 11} of a 4x3 image whose patches 5 and 11 hold the same pixels:
    # identical content, different positions -> token 0's output must differ.
    vit = make_vit()
    with torch.no_grad():  # sharpen attention so that positions matter at init
        for blk in vit.blocks:
            blk.attn.qkv.weight.mul_(10)
    x = make_input(False, batch=1)
    x[..., 24:32, 16:24] = x[..., 8:16, 16:24]    # patch (3, 2) = index 11 copies patch (1, 2) = index 5
    a = vit(x, keep_idx=torch.tensor([[0, 5]]))["tokens"]
    b = vit(x, keep_idx=torch.tensor([[0, 11]]))["tokens"]
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-3   # float noise is ~1e-6


def test_return_blocks_gives_raw_block_outputs():
    vit, x = make_vit(), make_input(False)
    out = vit(x, return_blocks=[0, -1])
    assert sorted(out["blocks"]) == [0, 2]
    last, grid = out["blocks"][2]
    assert grid == (4, 3) and last.shape == (2, 12, 32)
    torch.testing.assert_close(vit.norm(last), out["tokens"])
    torch.testing.assert_close(out["pooled"], out["tokens"].mean(1))


def test_activation_checkpointing_gives_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        vit = make_vit(activation_checkpointing=ckpt).train()
        vit(make_input(False), keep_idx=torch.tensor([[0, 2, 7], [1, 4, 11]]))["tokens"].square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in vit.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_sincos_embed_layout():
    emb = sincos_embed((2, 3), 10)
    assert emb.shape == (6, 10) and emb.dtype == torch.float32
    assert torch.equal(emb[:, 8:], torch.zeros(6, 2))                 # 10 channels: 2 axes x 4, 2 spare
    torch.testing.assert_close(emb[0, :4], torch.tensor([0.0, 0.0, 1.0, 1.0]))  # row 0: sin 0, cos 0
    torch.testing.assert_close(emb[3, :2], torch.tensor([1.0, 0.01]).sin())  # row 1: angles 1, 1/100


def test_abs_pos_only_encoder_runs_without_rope():
    vit = VisionTransformer(embed_dim=32, depth=2, num_heads=4, patch_size=8, rope=None, abs_pos=True)
    assert vit(make_input(False))["tokens"].shape == (2, 12, 32)
    with pytest.raises(ValueError, match="needs positions"):
        VisionTransformer(embed_dim=32, depth=2, num_heads=4, patch_size=8, rope=None, abs_pos=False)


@pytest.mark.parametrize("video,shape,message", [
    (False, (1, 3, 30, 24), r"30x24 px is not a multiple of the patch size 8"),
    (True, (1, 3, 5, 32, 32), r"clip of 5 frames is not a multiple of the tubelet size 2"),
    (True, (1, 3, 32, 32), r"takes \(B, 3, T, H, W\) clips"),
    (False, (1, 3, 4, 32, 32), r"takes \(B, 3, H, W\) images"),
])
def test_bad_input_sizes_are_clear_errors(video, shape, message):
    with pytest.raises(ValueError, match=message):
        make_vit(video=video)(torch.zeros(shape))
