"""MViT v2 S encoder with 3D RoPE: faithfulness to torchvision, q/k grids, RoPE placement, masks, precision."""

import copy

import pytest
import torch
import torch.nn as nn
from torchvision.models.video import mvit_v2_s
from torchvision.models.video.mvit import MultiscaleAttention

import jepa.models.mvit as mvit_mod
from jepa.config import RopeConfig
from jepa.models.mvit import (PATCH_STRIDE, MViTEncoder, MViTRope, RopeMultiscaleAttention, build_mvit_v2_s,
                              expand_cells, mvit_block_grids, stage0_grid)
from jepa.models.rope import RotaryEmbedding

CLIP = dict(num_frames=4, img_size=64)  # stage-0 grid 2 x 16 x 16: small enough for CPU tests
ROPE = RopeConfig(kind="3d")


@pytest.fixture(scope="module")
def torchvision_model():
    torch.manual_seed(0)
    return build_mvit_v2_s(**CLIP).eval()


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(1)
    return torch.randn(1, 3, 4, 64, 64)


def _encoder(source: nn.Module, **kwargs) -> MViTEncoder:
    enc = MViTEncoder(**CLIP, **kwargs)
    missing, unexpected = enc.load_state_dict(source.state_dict(), strict=False)
    dropped = ("head.",) if kwargs.get("rel_pos", True) else ("head.", "rel_pos_")
    assert set(missing) <= {"mask_token"} and all(any(d in k for d in dropped) for k in unexpected)
    return enc.eval()


def test_rope_off_is_exactly_torchvision(torchvision_model, clip):
    enc = _encoder(torchvision_model, rope=RopeConfig(kind="none"))
    assert all(type(b.attn) is MultiscaleAttention for b in enc.blocks)
    final = {}
    hook = torchvision_model.norm.register_forward_hook(lambda m, i, o: final.setdefault("x", o))
    head, torchvision_model.head = torchvision_model.head, nn.Identity()
    try:
        with torch.no_grad():
            want_cls = torchvision_model(clip)
            out = enc(clip)
    finally:
        torchvision_model.head = head
        hook.remove()
    assert torch.equal(out["pooled"], want_cls)
    assert torch.equal(out["tokens"], final["x"][:, 1:])
    assert out["grid"] == (2, 2, 2) and out["tokens"].shape == (1, 8, 768)


def test_attention_wrapper_without_rope_reproduces_torchvision(torchvision_model, clip):
    enc = _encoder(torchvision_model)
    wrapped = copy.deepcopy(enc)
    for block, grids in zip(wrapped.blocks, wrapped.block_grids):
        block.attn = RopeMultiscaleAttention(attn=block.attn, grids=grids, rope=None, rel_pos=True)
    assert wrapped.state_dict().keys() == enc.state_dict().keys()
    with torch.no_grad():
        assert torch.equal(wrapped(clip)["tokens"], enc(clip)["tokens"])


def test_state_dict_matches_torchvision_mvit_v2_s_at_16x224():
    with torch.device("meta"):
        ref = {k: v.shape for k, v in mvit_v2_s().state_dict().items() if not k.startswith("head.")}
        for kwargs in (dict(rope=None), dict(rope=ROPE)):
            enc = MViTEncoder(**kwargs)
            got = {k: v.shape for k, v in enc.state_dict().items() if k != "mask_token"}
            assert got == ref
        no_bias = MViTEncoder(rope=ROPE, rel_pos=False).state_dict().keys()
    assert no_bias == {k for k in ref if ".rel_pos_" not in k} | {"mask_token"}
    assert (enc.embed_dim, enc.depth, enc.stage0) == (768, 16, (8, 56, 56))


Q16 = [56, 28, 28] + [14] * 11 + [7, 7]
K16 = [7, 14, 7, 14] + [7] * 10 + [14, 7]
Q8 = [28, 14, 14] + [7] * 11 + [4, 4]
K8 = [4, 7, 4, 7] + [4] * 10 + [7, 4]


@pytest.mark.parametrize("clip_size,t,q_sides,k_sides", [((16, 224), 8, Q16, K16), ((8, 112), 4, Q8, K8)])
def test_q_and_k_grids_per_block(clip_size, t, q_sides, k_sides):
    grids = mvit_block_grids(*clip_size)
    assert [g.q for g in grids] == [(t, s, s) for s in q_sides]
    assert [g.k for g in grids] == [(t, s, s) for s in k_sides]
    if clip_size == (16, 224):
        assert sum(g.q != g.k for g in grids) == 14
        assert [g.k_stride[1] for g in grids] == [8, 4, 8, 4] + [8] * 10 + [4, 8]  # k cell j at 8j or 4j
        for g in grids:  # cell j at j * stride = j * N0 / n on the stage-0 grid (N0 = 56, 8 frames)
            assert all(n * s == n0 for n, s, n0 in zip(g.q + g.k, g.q_stride + g.k_stride, (8, 56, 56) * 2))
    assert stage0_grid(*clip_size) == (t, q_sides[0], q_sides[0])


def test_rope_in_every_block_with_grids_as_computed(torchvision_model, clip, monkeypatch):
    enc = _encoder(torchvision_model, rope=ROPE)
    calls = []
    real = mvit_mod.apply_rope

    def counting(x, table, *, num_prefix_tokens=0):
        calls.append((x.shape[-2] - num_prefix_tokens, table.shape, table.dtype, num_prefix_tokens))
        return real(x, table, num_prefix_tokens=num_prefix_tokens)

    monkeypatch.setattr(mvit_mod, "apply_rope", counting)
    seen = [b.register_forward_hook(lambda m, i, o: calls.append(("thw", o[1]))) for b in enc.blocks]
    with torch.no_grad():
        out = enc(clip, return_blocks=[0, 5, -1])
    for h in seen:
        h.remove()
    thws = [c[1] for c in calls if c[0] == "thw"]
    rot = [c for c in calls if c[0] != "thw"]
    assert len(rot) == 2 * 16 and thws == [g.q for g in enc.block_grids]
    for i, g in enumerate(enc.block_grids):
        (nq, tq, dq, pq), (nk, tk, dk, pk) = rot[2 * i], rot[2 * i + 1]
        assert (nq, nk) == (g.q[0] * g.q[1] * g.q[2], g.k[0] * g.k[1] * g.k[2])
        assert tq == (nq, 192) and dq == dk == torch.float32 and pq == pk == 1
    assert out["blocks"][0][1] == (2, 16, 16) and out["blocks"][0][0].shape == (1, 512, 96)
    assert out["blocks"][-1][0].shape == (1, 8, 768) and set(out["blocks"]) == {0, 5, -1}
    with torch.no_grad():
        assert not torch.allclose(out["pooled"], _encoder(torchvision_model)(clip)["pooled"], atol=1e-3)
    assert MultiscaleAttention.forward.__module__ == "torchvision.models.video.mvit"  # class untouched


@pytest.mark.parametrize("coords", ["centre", "index"])
def test_q_and_k_tables_share_the_stage0_frame(coords):
    rope = RotaryEmbedding(head_dim=96, ndim=3, coords=coords)
    shared = MViTRope(rope=rope, stage0=(8, 56, 56))
    g = mvit_block_grids(16, 224)[1]  # q 28 (stride 2), k 14 (stride 4)
    q, k = shared.tables(g)
    stage0 = rope.table((8, 56, 56)).view(8, 56, 56, -1)
    torch.testing.assert_close(q.view(8, 28, 28, -1), stage0[:, ::2, ::2])
    torch.testing.assert_close(k.view(8, 14, 14, -1), stage0[:, ::4, ::4])
    # relative: q cell (0,1,1)->stage-0 (0,2,2), k cell (0,1,1)->(0,4,4); moving both by 4 cells keeps the logit
    torch.manual_seed(0)
    a, b = torch.randn(96), torch.randn(96)

    def logit(qi, ki):
        qa = mvit_mod.apply_rope(a.view(1, 1, 1, -1), q[qi:qi + 1]).view(-1)
        kb = mvit_mod.apply_rope(b.view(1, 1, 1, -1), k[ki:ki + 1]).view(-1)
        return qa @ kb

    torch.testing.assert_close(logit(1 * 28 + 1, 1 * 14 + 1), logit(3 * 28 + 3, 2 * 14 + 2), atol=1e-4, rtol=1e-4)


def test_backward_mask_token_and_augmentation(torchvision_model, clip):
    enc = _encoder(torchvision_model, rope=RopeConfig(kind="3d", shift=0.5, rescale=0.5)).train()
    mask = torch.zeros(1, 512, dtype=torch.bool)
    mask[:, ::3] = True
    out = enc(clip, token_mask=mask, return_blocks=[3])
    assert enc.rope.transform is not None  # drawn once for this pass, shared by every block
    (out["tokens"].pow(2).mean() + out["blocks"][3][0].mean()).backward()
    assert enc.mask_token.grad is not None and enc.mask_token.grad.abs().sum() > 0
    for block in enc.blocks:
        assert torch.isfinite(block.attn.qkv.weight.grad).all() and block.attn.rel_pos_h.grad is not None
    enc.eval()
    with torch.no_grad():
        enc(clip)
    assert enc.rope.transform is None


def test_token_mask_replaces_stage0_tokens(torchvision_model, clip):
    enc = _encoder(torchvision_model, rope=ROPE)
    everything = torch.ones(1, 512, dtype=torch.bool)
    with torch.no_grad():
        a = enc(clip, token_mask=everything)["pooled"]
        b = enc(torch.randn_like(clip), token_mask=everything)["pooled"]
        assert torch.equal(a, b)  # every token masked: the clip no longer matters
        plain = enc(clip)["pooled"]
        assert torch.equal(enc(clip, token_mask=torch.zeros(1, 512, dtype=torch.bool))["pooled"], plain)
    with pytest.raises(ValueError, match=r"\(1, 512\).*\(1, 500\)"):
        enc(clip, token_mask=torch.zeros(1, 500, dtype=torch.bool))


def test_masked_pixels_do_not_reach_visible_tokens(torchvision_model, clip):
    enc = _encoder(torchvision_model, rope=ROPE)
    # output grid 2x2x2, each output cell a 1x8x8 box of stage-0 cells: hide 5 of the 8 output cells
    hidden = torch.tensor([[False, True, True, False, True, True, False, True]])
    token_mask = expand_cells(hidden, grid=(2, 2, 2), factors=(1, 8, 8)).flatten(1)        # (1, 512) stage 0
    pixels = expand_cells(token_mask, grid=enc.stage0, factors=PATCH_STRIDE)[:, None]     # (1, 1, 4, 64, 64)
    assert pixels.float().mean().item() == pytest.approx(5 / 8)
    torch.manual_seed(2)
    noise = torch.randn_like(clip) * 3
    other_masked = torch.where(pixels, noise, clip)          # new content in the masked cells only
    other_visible = torch.where(pixels, clip, noise)         # new content in the visible cells only
    # the patch conv (kernel 3x7x7, stride 2x4x4) reads across cell borders: unzeroed, masked pixels
    # would reach the visible stage-0 cells next to them
    with torch.no_grad():
        conv = [enc.conv_proj(c).flatten(2).transpose(1, 2)[~token_mask] for c in (clip, other_masked)]
        assert not torch.equal(*conv)

        def run(x):
            out = enc(x, token_mask=token_mask, return_blocks=[0])
            return out["tokens"], out["blocks"][0][0]

        tokens, block0 = run(clip)
        masked_tokens, masked_block0 = run(other_masked)
        visible_tokens, _ = run(other_visible)
    assert torch.equal(masked_tokens, tokens) and torch.equal(masked_block0, block0)
    visible = ~hidden[0]
    assert (visible_tokens[0, visible] - tokens[0, visible]).abs().max() > 1e-3


@pytest.mark.parametrize("how", ["autocast", "module_bf16"])
def test_bf16_runs_and_tables_stay_fp32(torchvision_model, clip, how, monkeypatch):
    enc = _encoder(torchvision_model, rope=ROPE)
    x = clip
    if how == "module_bf16":
        enc, x = copy.deepcopy(enc).to(torch.bfloat16), clip.to(torch.bfloat16)
    dtypes = set()
    real = mvit_mod.apply_rope

    def recording(q, table, **kw):
        dtypes.add((q.dtype, table.dtype))
        return real(q, table, **kw)

    monkeypatch.setattr(mvit_mod, "apply_rope", recording)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=how == "autocast"):
        out = enc(x)
    assert dtypes == {(torch.bfloat16, torch.float32)}
    assert torch.isfinite(out["tokens"].float()).all()


def test_relative_bias_can_be_turned_off(torchvision_model, clip):
    with_bias = _encoder(torchvision_model, rope=ROPE)
    without = _encoder(torchvision_model, rope=ROPE, rel_pos=False)
    assert not any(".rel_pos_" in k for k in without.state_dict())
    with torch.no_grad():
        assert not torch.allclose(with_bias(clip)["pooled"], without(clip)["pooled"], atol=1e-4)
        twin = copy.deepcopy(without)  # the EMA target is a deep copy: the shared RoPE must come along
        assert twin.blocks[0].attn.rope is twin.rope is twin.blocks[15].attn.rope
        assert torch.equal(twin(clip)["pooled"], without(clip)["pooled"])


def test_bad_input_is_a_clear_error(torchvision_model, clip):
    enc = _encoder(torchvision_model, rope=ROPE)
    with pytest.raises(ValueError, match=r"\(B, 3, 4, 64, 64\).*\(1, 3, 4, 32, 32\)"):
        enc(clip[..., :32, :32])
    with pytest.raises(ValueError, match="block index 16"):
        enc(clip, return_blocks=[16])
    with pytest.raises(ValueError, match="3D RoPE"):
        MViTEncoder(**CLIP, rope=RopeConfig(kind="2d"))
    with pytest.raises(ValueError, match="5x64x64"):
        stage0_grid(5, 64)
