"""Hierarchy levels: grid pooling (2D, 3D, partial cells), cell maps, mask-aware targets, the pooled
loss, level checks."""

import pytest
import torch
import torch.nn.functional as F

from jepa.config import HierarchyConfig, LevelConfig
from jepa.models.hierarchy import (LevelTarget, cell_ids, cell_mean, gather_level, level_targets, levels_from_config,
                                   pool_tokens, pooled_grid, pooled_loss, token_cells)


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


@pytest.mark.parametrize("level_grid,out_grid", [((14, 14), (14, 14)), ((2, 8, 8), (2, 2, 2))])
def test_level_targets_layer_norm_each_level_token_then_average_each_output_box(level_grid, out_grid):
    x = torch.randn(2, int(torch.tensor(level_grid).prod()), 16) * 5 + 3
    out = level_targets(x, level_grid=level_grid, out_grid=out_grid)
    normed = F.layer_norm(x, (16,))
    if level_grid == out_grid:
        assert torch.equal(out, normed)      # nothing to average: the plain I-JEPA target, bit for bit
    else:                                    # output token (t, h, w) covers level tokens (t, 4h..4h+3, 4w..4w+3)
        boxes = normed.view(2, 2, 2, 4, 2, 4, 16).mean(dim=(3, 5)).reshape(2, 8, 16)
        torch.testing.assert_close(out, boxes, atol=1e-6, rtol=0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, out.shape[1]), atol=1e-5, rtol=0)


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


def test_cell_mean_averages_tokens_with_the_same_id():
    x = torch.tensor([[[1.0], [3.0], [5.0], [10.0]]], dtype=torch.float64)
    mean, counts = cell_mean(x, torch.tensor([[2, 2, 0, 2]]), 3)
    assert mean.flatten().tolist() == [14 / 3, 14 / 3, 5.0, 14 / 3] and counts.tolist() == [[1, 0, 3]]


def level_target(value, cells, num_cells):
    """A LevelTarget whose cells already hold their cell means, as `gather_level` builds them."""
    return LevelTarget(value=cell_mean(value, cells, num_cells)[0], cells=cells, num_cells=num_cells)


def test_pooled_loss_by_hand():
    # 3 tokens: two in cell 0 (predictions 1 and 3 -> mean 2, targets 1 and -1 -> mean 0), one in cell 1
    pred = torch.tensor([[[1.0], [3.0], [5.0]]])
    target = level_target(torch.tensor([[[1.0], [-1.0], [4.5]]]), torch.tensor([[0, 0, 1]]), 4)
    assert pooled_loss(pred, target, kind="l1").item() == pytest.approx((2.0 + 0.5) / 2)   # each cell once
    loss = pooled_loss(pred, target, kind="smooth_l1")
    assert loss.item() == pytest.approx((1.5 + 0.5 * 0.5 ** 2) / 2)


def test_pooled_loss_with_one_token_per_cell_is_the_plain_loss():
    pred, target = torch.randn(4, 10, 8, requires_grad=True), torch.randn(4, 10, 8)
    cells = torch.stack([torch.randperm(30)[:10] for _ in range(4)])
    for kind, ref in (("l1", F.l1_loss), ("smooth_l1", F.smooth_l1_loss)):
        pooled = pooled_loss(pred, level_target(target, cells, 30), kind=kind)
        torch.testing.assert_close(pooled, ref(pred, target), atol=1e-6, rtol=1e-6)
        # a level that does not pool skips the cells: bit for bit the plain loss
        plain = pooled_loss(pred, LevelTarget(value=target, cells=None, num_cells=10), kind=kind)
        assert torch.equal(plain, ref(pred, target))


def test_pooled_loss_gradient_flows_through_the_cell_mean():
    pred = torch.tensor([[[1.0], [3.0]]], requires_grad=True)
    target = LevelTarget(value=torch.zeros(1, 2, 1), cells=torch.tensor([[0, 0]]), num_cells=1)
    pooled_loss(pred, target, kind="l1").backward()
    assert pred.grad.flatten().tolist() == [0.5, 0.5]   # d|mean|/dx_i = 1/2 each


def test_pooled_loss_rejects_an_unknown_kind():
    target = LevelTarget(value=torch.zeros(1, 2, 1), cells=None, num_cells=2)
    with pytest.raises(ValueError, match="hierarchy.loss = 'l2': expected l1 or smooth_l1"):
        pooled_loss(torch.zeros(1, 2, 1), target, kind="l2")


# 4x4 grid pooled by 2: cells 0 | 1 over rows 0-1, 2 | 3 over rows 2-3.
#   block A = rows 1-3 x cols 1-3 = tokens 5 6 7 9 10 11 13 14 15: it holds 1 token of cell 0 (token 5),
#   2 of cells 1 (6, 7) and 2 (9, 13), all 4 of cell 3; block B = row 0 x cols 0-2 = tokens 0 1 2.
BLOCK_A = [5, 6, 7, 9, 10, 11, 13, 14, 15]
BLOCK_B = [0, 1, 2]


def partial_cell_targets(x):
    """Targets of a 4x4 level pooled by 2 at blocks A and B, from (1, 16, C) features x."""
    blocks = [torch.tensor([BLOCK_A]), torch.tensor([BLOCK_B])]
    feats = level_targets(x, level_grid=(4, 4), out_grid=(4, 4))
    return gather_level(feats, blocks, cell_of_token=token_cells((4, 4), (4, 4), (2, 2)), cells_per_block=4)


def test_partial_cells_average_only_the_target_tokens_of_their_block():
    torch.manual_seed(0)
    x = torch.randn(1, 16, 6) * 3 + 1
    t = partial_cell_targets(x)
    normed = F.layer_norm(x, (6,))[0]
    # cells: block A's (offset 0) then block B's (offset 4)
    assert t.cells.tolist() == [[0, 1, 1, 2, 3, 3, 2, 3, 3, 4, 4, 5]] and t.num_cells == 8

    cell3 = [10, 11, 14, 15]
    same_cell = [[5], [6, 7], [6, 7], [9, 13], cell3, cell3, [9, 13], cell3, cell3,   # block A, token by token
                 [0, 1], [0, 1], [2]]                                                # block B
    for pos, tokens in enumerate(same_cell):
        torch.testing.assert_close(t.value[0, pos], normed[tokens].mean(0), atol=1e-6, rtol=0)
    # token 5 is alone in its cell for block A: its target is its own feature, not the full cell's mean
    assert torch.equal(t.value[0, 0], normed[5])
    assert (t.value[0, 0] - normed[[0, 1, 4, 5]].mean(0)).abs().max() > 0.1


def test_partial_cells_ignore_tokens_outside_the_target():
    torch.manual_seed(0)
    x = torch.randn(1, 16, 6)
    pred = torch.randn(1, len(BLOCK_A + BLOCK_B), 6)

    def loss(features):
        return pooled_loss(pred, partial_cell_targets(features), kind="smooth_l1")

    base = loss(x)
    context_token = x.clone()
    context_token[0, 4] = torch.randn(6) * 10        # token 4: in cell 0 with token 5, in no block
    assert torch.equal(loss(context_token), base)
    target_token = x.clone()
    target_token[0, 5] = torch.randn(6) * 10         # token 5: block A's only token of cell 0
    assert not torch.allclose(loss(target_token), base)


def test_pooled_loss_counts_each_block_cell_once():
    # blocks A and B above: A holds 4 cells, B 2 -> 6 (block, cell) pairs; one cell off by 1 in every channel
    x = torch.randn(1, 16, 6)
    t = partial_cell_targets(x)
    pred = t.value.clone()
    pred[0, 0] += 1.0                                # block A, cell 0 (token 5): a cell of one token
    assert pooled_loss(pred, t, kind="l1").item() == pytest.approx(1 / 6)
    pred = t.value.clone()
    pred[0, 4] += 1.0                                # block A, cell 3 (token 10 of 4): the cell mean moves 1/4
    assert pooled_loss(pred, t, kind="l1").item() == pytest.approx(0.25 / 6)


def brute_force_targets(x, blocks, out_grid, level_grid, pool):
    """Reference, one token at a time: for each target token of each block, the mean of the layer-normed
    level tokens covered by that block's target tokens in its pooled cell (x: (1, N_level, C))."""
    box = [n // o for n, o in zip(level_grid, out_grid)]
    normed = F.layer_norm(x[0].double(), x.shape[-1:]).view(*level_grid, -1)

    def covered(token):      # level-grid slices of an output token's box
        coord = torch.unravel_index(torch.tensor(token), out_grid)
        return tuple(slice(int(c) * b, (int(c) + 1) * b) for c, b in zip(coord, box))

    def cell(token):
        return tuple(s.start // p for s, p in zip(covered(token), pool))

    rows = []
    for block in blocks:
        for token in block:
            same = [t for t in block if cell(t) == cell(token)]
            rows.append(torch.cat([normed[covered(t)].reshape(-1, x.shape[-1]) for t in same]).mean(0))
    return torch.stack(rows)


@pytest.mark.parametrize("out_grid,level_grid,pool", [
    ((4, 4), (4, 4), (2, 2)),
    ((5, 5), (5, 5), (2, 2)),                  # ceil mode: partial last cells
    ((2, 4, 4), (2, 4, 4), (2, 2, 2)),
    ((2, 2, 2), (2, 8, 8), (1, 4, 4)),         # MViT: each output token covers 1x4x4 level tokens
    ((2, 2, 2), (2, 8, 8), (2, 8, 8)),
    ((2, 4, 4), (4, 8, 8), (2, 4, 4)),         # covers 2x2x2 level tokens, cells of 1x2x2 output tokens
])
def test_targets_are_means_over_the_covered_target_tokens(out_grid, level_grid, pool):
    torch.manual_seed(0)
    n_out, n_level = int(torch.tensor(out_grid).prod()), int(torch.tensor(level_grid).prod())
    x = torch.randn(1, n_level, 5) * 2 + 1
    blocks = [torch.randperm(n_out)[:k].sort().values for k in (3, n_out // 2, 1)]
    cells = token_cells(out_grid, level_grid, pool)
    feats = level_targets(x, level_grid=level_grid, out_grid=out_grid)
    t = gather_level(feats, [b[None] for b in blocks], cell_of_token=cells,
                     cells_per_block=int(torch.tensor(pooled_grid(level_grid, pool)).prod()))
    want = brute_force_targets(x, [b.tolist() for b in blocks], out_grid, level_grid, pool)
    torch.testing.assert_close(t.value[0].double(), want, atol=1e-5, rtol=0)


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
