"""Hierarchy levels: grid pooling (2D, 3D, partial cells), cell maps, the pooled loss, level checks."""

import pytest
import torch
import torch.nn.functional as F

from jepa.config import HierarchyConfig, LevelConfig
from jepa.models.hierarchy import (cell_ids, level_targets, levels_from_config, pool_tokens, pooled_grid,
                                   pooled_loss, token_cells)


def grid_tokens(grid, channels=1):
    """(1, N, C) tokens whose value is their row-major index (+ 1000 * channel)."""
    n = torch.arange(int(torch.tensor(grid).prod()), dtype=torch.float64)
    return torch.stack([n + 1000 * c for c in range(channels)], dim=-1)[None]


def test_pool_2d_by_hand():
    # 4x4 grid 0..15, pooled 2x2: cell (0,0) holds 0,1,4,5 -> 2.5
    out = pool_tokens(grid_tokens((4, 4)), (4, 4), (2, 2))
    assert out[0, :, 0].tolist() == [2.5, 4.5, 10.5, 12.5]


def test_pool_partial_cells_use_ceil_mode():
    # 5x5 grid pooled by 2 -> 3x3 cells; the last row/column of cells average only the tokens they hold.
    out = pool_tokens(grid_tokens((5, 5)), (5, 5), (2, 2))[0, :, 0]
    assert pooled_grid((5, 5), (2, 2)) == (3, 3)
    assert out.tolist() == [
        (0 + 1 + 5 + 6) / 4, (2 + 3 + 7 + 8) / 4, (4 + 9) / 2,
        (10 + 11 + 15 + 16) / 4, (12 + 13 + 17 + 18) / 4, (14 + 19) / 2,
        (20 + 21) / 2, (22 + 23) / 2, 24.0,
    ]


def test_pool_3d_by_hand():
    # grid (t, h, w) = (2, 2, 4) pooled (2, 2, 2) -> 2 cells: w 0-1 and w 2-3 of all t, h
    out = pool_tokens(grid_tokens((2, 2, 4), channels=2), (2, 2, 4), (2, 2, 2))
    left = torch.tensor([0, 1, 4, 5, 8, 9, 12, 13], dtype=torch.float64).mean()
    assert out.shape == (1, 2, 2)
    assert out[0, :, 0].tolist() == [left.item(), left.item() + 2]
    assert out[0, :, 1].tolist() == [left.item() + 1000, left.item() + 1002]


@pytest.mark.parametrize("grid,pool", [((6, 4), (2, 2)), ((4, 6, 4), (2, 3, 2)), ((2, 4, 4), (1, 2, 2))])
def test_pool_matches_avg_pool_on_divisible_grids(grid, pool):
    x = torch.randn(3, int(torch.tensor(grid).prod()), 5)
    ours = pool_tokens(x, grid, pool)
    spatial = x.transpose(1, 2).reshape(3, 5, *grid)
    ref = (F.avg_pool2d if len(grid) == 2 else F.avg_pool3d)(spatial, pool)
    torch.testing.assert_close(ours, ref.flatten(2).transpose(1, 2), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("grid,pool,cells", [((14, 14), (4, 4), 16), ((8, 14, 14), (2, 2, 2), 196),
                                              ((8, 7, 7), (1, 1, 1), 392)])
def test_level_targets_shape_and_normalisation(grid, pool, cells):
    x = torch.randn(2, int(torch.tensor(grid).prod()), 16) * 5 + 3
    out = level_targets(x, grid, pool)
    assert out.shape == (2, cells, 16) and out.dtype == torch.float32
    # layer norm without affine before pooling: every cell's channel mean is zero
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, cells), atol=1e-5, rtol=0)


def test_cell_ids_row_major():
    assert cell_ids((3, 4), (2, 2)).tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3]


def test_token_cells_map_output_tokens_to_coarser_level_cells():
    # output grid 2x2x2; a level on 2x8x8 (4x finer) pooled by (1, 4, 4) has one cell per output token
    assert token_cells((2, 2, 2), (2, 8, 8), (1, 4, 4)).tolist() == list(range(8))
    # pooled by (2, 8, 8): one cell in total
    assert token_cells((2, 2, 2), (2, 8, 8), (2, 8, 8)).tolist() == [0] * 8
    # same grid: a plain ceil-mode cell map
    assert token_cells((3, 4), (3, 4), (2, 2)).tolist() == cell_ids((3, 4), (2, 2)).tolist()


def test_token_cells_reject_cells_that_split_a_token():
    with pytest.raises(ValueError, match=r"pool factor \(2\) a multiple of their ratio"):
        token_cells((2, 2, 2), (2, 8, 8), (1, 2, 2))


def test_pooled_loss_by_hand():
    # 3 tokens: two in cell 0 (predictions 1 and 3 -> mean 2), one in cell 1 (prediction 5)
    pred = torch.tensor([[[1.0], [3.0], [5.0]]])
    target = torch.tensor([[[0.0], [0.0], [4.5]]])
    cells = torch.tensor([[0, 0, 1]])
    loss = pooled_loss(pred, target, cells, 4, kind="l1")
    assert loss.item() == pytest.approx((2.0 + 0.5) / 2)   # two cells, each counted once
    loss = pooled_loss(pred, target, cells, 4, kind="smooth_l1")
    assert loss.item() == pytest.approx((1.5 + 0.5 * 0.5 ** 2) / 2)


def test_pooled_loss_with_one_token_per_cell_is_the_plain_loss():
    pred, target = torch.randn(4, 10, 8, requires_grad=True), torch.randn(4, 10, 8)
    cells = torch.stack([torch.randperm(30)[:10] for _ in range(4)])
    for kind, ref in (("l1", F.l1_loss), ("smooth_l1", F.smooth_l1_loss)):
        torch.testing.assert_close(pooled_loss(pred, target, cells, 30, kind=kind), ref(pred, target),
                                   atol=1e-6, rtol=1e-6)


def test_pooled_loss_gradient_flows_through_the_cell_mean():
    pred = torch.tensor([[[1.0], [3.0]]], requires_grad=True)
    pooled_loss(pred, torch.zeros(1, 2, 1), torch.tensor([[0, 0]]), 1, kind="l1").backward()
    assert pred.grad.flatten().tolist() == [0.5, 0.5]   # d|mean|/dx_i = 1/2 each


def test_levels_from_config_resolves_negative_blocks_and_pool_axes():
    cfg = HierarchyConfig(levels=[LevelConfig(block=5, pool=4, weight=0.5), LevelConfig(block=-1, pool_t=2)])
    video = levels_from_config(cfg, depth=12, video=True)
    assert [(lv.block, lv.pool, lv.weight) for lv in video] == [(5, (1, 4, 4), 0.5), (11, (2, 1, 1), 1.0)]
    image = levels_from_config(HierarchyConfig(levels=[LevelConfig(block=2, pool=2)]), depth=4, video=False)
    assert image[0].pool == (2, 2)


@pytest.mark.parametrize("level,message", [
    (LevelConfig(block=12), r"block = 12 is past the encoder depth 12"),
    (LevelConfig(block=-13), r"block = -13 is past the encoder depth 12"),
    (LevelConfig(pool_t=2), r"pool_t = 2 has no time axis"),
])
def test_levels_from_config_rejects_bad_levels(level, message):
    with pytest.raises(ValueError, match=message):
        levels_from_config(HierarchyConfig(levels=[level]), depth=12, video=False)
