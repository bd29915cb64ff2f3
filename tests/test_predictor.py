"""Predictor: shapes, per-block passes equal separate runs and are data-independent, position dependence, level heads."""

import pytest
import torch

from jepa.config import RopeConfig
from jepa.models.predictor import LevelHead, Predictor
from jepa.models.rope import build_rope

GRID = (6, 6)


def make_predictor(*, per_block, abs_pos=False, rope_kind="2d"):
    torch.manual_seed(0)
    rope = build_rope(RopeConfig(kind=rope_kind), head_dim=8)
    return Predictor(encoder_dim=24, embed_dim=32, depth=2, num_heads=4, rope=rope, abs_pos=abs_pos,
                     per_block=per_block).eval()


def make_batch(lengths=(5, 5, 5), batch=2, context=10):
    g = torch.Generator().manual_seed(1)
    perms = [torch.randperm(36, generator=g) for _ in range(batch)]
    ctx_idx = torch.stack([p[:context] for p in perms])
    targets, start = [], context
    for n in lengths:
        targets.append(torch.stack([p[start:start + n] for p in perms]))
        start += n
    return torch.randn(batch, context, 24, generator=g), ctx_idx, targets


@pytest.mark.parametrize("per_block", [False, True])
@pytest.mark.parametrize("lengths", [(5, 5, 5), (4, 6, 4)])
def test_one_prediction_per_target_token(per_block, lengths):
    ctx, ctx_idx, targets = make_batch(lengths)
    preds = make_predictor(per_block=per_block)(ctx, ctx_idx, targets, GRID)
    assert [tuple(p.shape) for p in preds] == [(2, n, 32) for n in lengths]


@pytest.mark.parametrize("lengths", [(5, 5, 5), (4, 6, 4)])
def test_per_block_equals_one_run_per_block(lengths):
    pred = make_predictor(per_block=True)
    ctx, ctx_idx, targets = make_batch(lengths)
    together = pred(ctx, ctx_idx, targets, GRID)
    for block, out in zip(targets, together):
        alone = pred(ctx, ctx_idx, [block], GRID)[0]
        torch.testing.assert_close(out, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("per_block, passes", [(True, 3), (False, 1)])
def test_block_passes_do_not_depend_on_target_lengths(per_block, passes):
    """ZeRO-3 ranks must run each module equally often whatever their masks (else they hang)."""
    pred = make_predictor(per_block=per_block)
    calls = []
    pred.blocks[0].register_forward_hook(lambda *_: calls.append(1))
    for lengths in ((5, 5, 5), (4, 6, 4), (3, 4, 5)):
        calls.clear()
        pred(*make_batch(lengths), GRID)
        assert len(calls) == passes, f"lengths {lengths}: {len(calls)} passes"


def test_blocks_interact_only_in_a_shared_sequence():
    ctx, ctx_idx, targets = make_batch()
    moved = [targets[0], targets[1], targets[2].flip(1)[:, :3]]     # change block 2 only
    for per_block, same in ((True, True), (False, False)):
        pred = make_predictor(per_block=per_block)
        a = pred(ctx, ctx_idx, targets, GRID)[0]
        b = pred(ctx, ctx_idx, moved, GRID)[0]
        assert torch.allclose(a, b, atol=1e-5) == same


@pytest.mark.parametrize("abs_pos,rope_kind", [(False, "2d"), (True, "2d"), (True, "none")])
def test_predictions_follow_target_positions(abs_pos, rope_kind):
    pred = make_predictor(per_block=False, abs_pos=abs_pos, rope_kind=rope_kind)
    with torch.no_grad():  # sharpen attention so that positions matter at init
        for blk in pred.blocks:
            blk.attn.qkv.weight.mul_(10)
    ctx, ctx_idx, targets = make_batch(lengths=(8,))
    out = pred(ctx, ctx_idx, targets, GRID)[0]
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(2))
    # permuting target positions permutes predictions ...
    torch.testing.assert_close(pred(ctx, ctx_idx, [targets[0][:, perm]], GRID)[0], out[:, perm], atol=1e-5, rtol=0)
    # ... and the mask tokens, identical in content, differ only through their positions
    assert ((out[:, 0] - out[:, 1]).norm() / out[:, 0].norm()) > 1e-2   # float noise is ~1e-6


def test_predictor_without_positions_is_an_error():
    with pytest.raises(ValueError, match="needs target positions"):
        Predictor(encoder_dim=8, embed_dim=16, depth=1, num_heads=2, rope=None, abs_pos=False)


def test_level_head_maps_to_the_level_width():
    head = LevelHead(in_dim=32, out_dim=48)
    out = head(torch.randn(2, 7, 32))
    assert out.shape == (2, 7, 48)
