"""2D / 3D rotary position embeddings: the RoPE invariants, timm agreement, precision, bad input."""

import math

import pytest
import torch
from timm.layers.pos_embed_sincos import RotaryEmbeddingCat, RotaryEmbeddingDinoV3, RotaryEmbeddingMixed
from timm.models.eva import EvaBlock
from torch.overrides import TorchFunctionMode

from jepa.config import RopeConfig
from jepa.models.rope import RotaryEmbedding, apply_rope, build_rope, gather_rope, grid_coords


def _rotate(v: torch.Tensor, table: torch.Tensor, token: int) -> torch.Tensor:
    """One head_dim vector rotated as token `token` of the table."""
    return apply_rope(v.view(1, 1, 1, -1), table[..., token:token + 1, :]).view(-1)


def _flat(pos, grid) -> int:
    index = 0
    for p, n in zip(pos, grid):
        assert 0 <= p < n
        index = index * n + p
    return index


CASES = [  # (ndim, variant, coords, grid, head_dim)
    (2, "axial", "index", (5, 7), 32),
    (2, "axial", "centre", (6, 4), 64),
    (2, "mixed", "index", (5, 5), 16),
    (3, "axial", "index", (4, 5, 6), 64),
    (3, "axial", "centre", (4, 6, 5), 96),
]


@pytest.mark.parametrize("ndim,variant,coords,grid,head_dim", CASES)
def test_logit_depends_only_on_relative_position(ndim, variant, coords, grid, head_dim):
    """q at m and k at n give the same logit as q at m + s and k at n + s, along every axis."""
    torch.manual_seed(0)
    rope = RotaryEmbedding(head_dim=head_dim, ndim=ndim, variant=variant, coords=coords, theta=10.0)
    table = rope(grid).detach()
    if variant == "mixed":
        table = table[0, 0]  # block 0, head 0
    q, k = torch.randn(head_dim), torch.randn(head_dim)

    def logit(m, n):
        return _rotate(q, table, _flat(m, grid)) @ _rotate(k, table, _flat(n, grid))

    m, n = (0,) * ndim, (1,) * ndim
    for axis in range(ndim):
        for s in (1, 2):
            def move(p):
                return tuple(x + s * (a == axis) for a, x in enumerate(p))
            torch.testing.assert_close(logit(move(m), move(n)), logit(m, n), atol=1e-4, rtol=1e-4)
            assert not torch.isclose(logit(m, move(n)), logit(m, n), atol=1e-3)  # offsets do matter


@pytest.mark.parametrize("ndim,grid,head_dim", [(2, (6, 9), 64), (3, (4, 5, 6), 64), (3, (2, 3, 3), 100)])
@pytest.mark.parametrize("coords", ["index", "centre"])
def test_norm_preserved_and_position_zero_is_identity(ndim, grid, head_dim, coords):
    torch.manual_seed(0)
    rope = RotaryEmbedding(head_dim=head_dim, ndim=ndim, coords=coords)
    table = rope(grid)
    x = torch.randn(2, 3, math.prod(grid), head_dim)
    y = apply_rope(x, table)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(y[:, :, 1:], x[:, :, 1:], atol=1e-3)
    if coords == "index":
        assert torch.equal(y[:, :, 0], x[:, :, 0])  # token (0, 0[, 0]) is not rotated at all


def test_prefix_tokens_are_never_rotated():
    rope = RotaryEmbedding(head_dim=32, ndim=2, coords="centre")
    table = rope((3, 4))
    x = torch.randn(2, 4, 2 + 12, 32)
    y = apply_rope(x, table, num_prefix_tokens=2)
    assert torch.equal(y[:, :, :2], x[:, :, :2])
    torch.testing.assert_close(y[:, :, 2:], apply_rope(x[:, :, 2:], table))


@pytest.mark.parametrize("variant", ["axial", "mixed"])
def test_gathered_tables_equal_full_table_rows(variant):
    torch.manual_seed(0)
    rope = RotaryEmbedding(head_dim=16, ndim=2, variant=variant, depth=3, num_heads=2)
    table = rope((4, 6))
    idx = torch.stack([torch.randperm(24)[:10] for _ in range(3)])
    got = gather_rope(table, idx)
    for b in range(3):
        for j in range(10):
            if variant == "axial":
                assert torch.equal(got[b, 0, j], table[idx[b, j]])
            else:
                assert torch.equal(got[:, b, :, j], table[:, :, idx[b, j]])


@pytest.mark.parametrize("variant", ["axial", "mixed"])
def test_evablock_on_gathered_tokens_keeps_true_positions(variant):
    """Reordering tokens together with their gathered table gives the same tokens, reordered: each
    token's rotation follows its grid position, not its place in the sequence."""
    torch.manual_seed(0)
    rope = RotaryEmbedding(head_dim=16, ndim=2, variant=variant, depth=1, num_heads=4)
    block = EvaBlock(64, 4, num_prefix_tokens=0, attn_type="rope", rotate_half=rope.rotate_half).eval()
    grid = (3, 5)
    x = torch.randn(2, 15, 64)
    perm = torch.stack([torch.randperm(15), torch.randperm(15)])
    table = rope(grid)
    full = block(x, rope=rope.for_block(table, 0))
    gathered = block(torch.gather(x, 1, perm[..., None].expand(-1, -1, 64)),
                     rope=rope.for_block(gather_rope(table, perm), 0))
    torch.testing.assert_close(gathered, torch.gather(full, 1, perm[..., None].expand(-1, -1, 64)),
                               atol=1e-5, rtol=1e-5)
    without = block(x, rope=None)
    assert not torch.allclose(full, without, atol=1e-3)


@pytest.mark.parametrize("grid", [(3, 5), (14, 14), (16, 12), (2, 4, 6), (8, 14, 14), (3, 7, 2)])
def test_dynamic_grids_index_rows_follow_the_token_position(grid):
    ndim = len(grid)
    rope = RotaryEmbedding(head_dim=48, ndim=ndim, coords="index", theta=100.0)
    angles = rope.angles(grid)
    assert angles.shape == (math.prod(grid), 48) and rope(grid).shape == (math.prod(grid), 96)
    assert torch.equal(angles[:, 24:], angles[:, :24])  # pair i = channels (i, i + 24)
    p = 48 // 2 // ndim
    freqs = 100.0 ** -(torch.arange(p, dtype=torch.float32) / p)
    for token in (0, math.prod(grid) // 2, math.prod(grid) - 1):
        pos = torch.unravel_index(torch.tensor(token), grid)
        want = torch.cat([int(c) * freqs for c in pos])
        torch.testing.assert_close(angles[token, :p * ndim], want)
    # integer coordinates do not depend on the grid size: a bigger grid holds the same rows
    bigger = tuple(g + 2 for g in grid)
    big = rope(bigger).view(*bigger, -1)[tuple(slice(0, g) for g in grid)].reshape(-1, 96)
    torch.testing.assert_close(big, rope(grid))


@pytest.mark.parametrize("head_dim", [64, 68, 100, 8])
def test_3d_leftover_pairs_pass_through_unrotated(head_dim):
    rope = RotaryEmbedding(head_dim=head_dim, ndim=3, coords="index")
    pairs = head_dim // 2
    per_axis = pairs // 3
    assert (rope.pairs_per_axis, rope.pass_pairs) == (per_axis, pairs - 3 * per_axis)
    rest = pairs - 3 * per_axis
    still = torch.zeros(head_dim, dtype=torch.bool)  # the leftover pairs' channels, in both halves
    still[pairs - rest:pairs] = still[head_dim - rest:] = True
    grid = (3, 4, 5)
    table = rope(grid)
    sin, cos = table.chunk(2, dim=-1)
    assert torch.equal(sin[:, still], torch.zeros(60, 2 * rest))
    assert torch.equal(cos[:, still], torch.ones(60, 2 * rest))
    x = torch.randn(1, 2, 60, head_dim)
    y = apply_rope(x, table)
    assert torch.equal(y[..., still], x[..., still])
    # every axis owns exactly its block of pairs: moving along t touches only [t] channels, etc.
    angles = rope.angles(grid).view(*grid, head_dim)
    for axis in range(3):
        step = [0, 0, 0]
        step[axis] = 1
        moved = (angles[step[0], step[1], step[2]] - angles[0, 0, 0]) != 0
        block = torch.zeros(pairs, dtype=torch.bool)
        block[per_axis * axis: per_axis * (axis + 1)] = True
        assert torch.equal(moved, torch.cat([block, block]))


@pytest.mark.parametrize("scale", [0.5, 2.0, 3.0])
@pytest.mark.parametrize("coords", ["index", "centre"])
def test_temporal_scale_divides_temporal_angles_exactly(scale, coords):
    grid, head_dim = (4, 3, 5), 36
    ref = RotaryEmbedding(head_dim=head_dim, ndim=3, coords=coords).angles(grid)
    got = RotaryEmbedding(head_dim=head_dim, ndim=3, coords=coords, temporal_scale=scale).angles(grid)
    temporal = torch.zeros(head_dim // 2, dtype=torch.bool)
    temporal[:head_dim // 2 // 3] = True
    temporal = torch.cat([temporal, temporal])
    torch.testing.assert_close(got[:, temporal], ref[:, temporal] / scale, rtol=1e-6, atol=1e-6)
    assert torch.equal(got[:, ~temporal], ref[:, ~temporal])


@pytest.mark.parametrize("grid", [(4, 8), (5, 2, 10)])
def test_normalisation_modes_give_documented_ranges(grid):
    for mode, denom in (("separate", grid), ("max", (max(grid),) * len(grid)), ("min", (min(grid),) * len(grid))):
        c = grid_coords(grid, coords="centre", normalize=mode).view(*grid, len(grid))
        for axis, (n, d) in enumerate(zip(grid, denom)):
            line = c[..., axis].movedim(axis, 0).reshape(n, -1)[:, 0]
            lo, hi = -1 + 1 / d, 2 * n / d - 1 - 1 / d
            torch.testing.assert_close(line[0], torch.tensor(lo))
            torch.testing.assert_close(line[-1], torch.tensor(hi))
            torch.testing.assert_close(line.diff(), torch.full((n - 1,), 2 / d))  # uniform spacing
        if mode == "separate":
            assert c.abs().max() < 1
    idx = grid_coords(grid, coords="index")
    assert idx.min() == 0 and torch.equal(idx.max(0).values, torch.tensor(grid, dtype=torch.float32) - 1)


@pytest.mark.parametrize("grid", [(7, 11), (14, 14), (3, 16)])
@pytest.mark.parametrize("theta", [100.0, 10000.0])
def test_index_coords_match_timm_rotary_embedding_cat(grid, theta):
    ours = RotaryEmbedding(head_dim=64, ndim=2, coords="index", theta=theta)(grid)
    timm = RotaryEmbeddingCat(dim=64, temperature=theta, in_pixels=False, rotate_half=True).get_embed(grid)
    torch.testing.assert_close(ours, timm, atol=2e-6, rtol=1e-6)


@pytest.mark.parametrize("mode", ["separate", "max", "min"])
@pytest.mark.parametrize("grid", [(7, 11), (16, 9)])
def test_centre_coords_match_timm_dinov3(mode, grid):
    ours = RotaryEmbedding(head_dim=64, ndim=2, coords="centre", normalize=mode, theta=100.0)(grid)
    timm = RotaryEmbeddingDinoV3(dim=64, temperature=100.0, normalize_coords=mode, rotate_half=True).get_embed(grid)
    torch.testing.assert_close(ours, timm, atol=2e-6, rtol=1e-6)


def test_mixed_matches_timm_rotary_embedding_mixed_and_learns():
    timm = RotaryEmbeddingMixed(dim=4 * 32, depth=3, num_heads=4, temperature=10.0)
    ours = RotaryEmbedding(head_dim=32, ndim=2, variant="mixed", coords="index", theta=10.0, depth=3, num_heads=4)
    with torch.no_grad():
        ours.freqs.copy_(timm.freqs)
    table = ours((5, 6))
    assert table.shape == (3, 4, 30, 64)
    # timm's mixed tables are interleaved (pair i = channels 2i, 2i+1); ours put pair i at (i, i + 16)
    to_half = torch.cat([torch.arange(0, 32, 2), torch.arange(1, 32, 2)])
    want = timm.get_embed((5, 6))
    want = torch.cat([want[..., :32][..., to_half], want[..., 32:][..., to_half]], dim=-1)
    torch.testing.assert_close(table, want, atol=1e-6, rtol=1e-6)
    apply_rope(torch.randn(2, 4, 30, 32), ours.for_block(table, 1)).sum().backward()
    assert ours.freqs.grad is not None and ours.freqs.grad[:, 1].abs().sum() > 0
    assert ours.freqs.grad[:, 0].abs().sum() == 0  # block 1's table uses block 1's frequencies only


def test_augmentation_only_in_training_and_keeps_relative_geometry():
    torch.manual_seed(0)
    rope = RotaryEmbedding(head_dim=32, ndim=2, coords="index", shift=2.0)
    grid = (4, 5)
    plain = rope.eval().angles(grid)
    assert rope(grid) is rope(grid)  # eval: cached, no draw
    rope.train()
    a, b = rope(grid), rope(grid)
    assert not torch.allclose(a, b)
    shifted = RotaryEmbedding(head_dim=32, ndim=2, coords="index")
    t = rope.draw_transform()
    moved = shifted.angles(grid, transform=t)
    # a shift adds one constant per axis: differences between tokens stay those of the plain grid
    torch.testing.assert_close(moved - moved[:1], plain - plain[:1], atol=1e-4, rtol=1e-5)
    assert not torch.allclose(moved, plain)

    scaled = RotaryEmbedding(head_dim=32, ndim=2, coords="index", jitter=0.5, rescale=1.0).train()
    for _ in range(20):
        t = scaled.draw_transform()
        assert t.shift == (0.0, 0.0)
        assert all(1 / 3 - 1e-6 <= s <= 3 + 1e-6 for s in t.scale)  # (1 + 0.5) * (1 + 1.0)
        ratio = scaled.angles(grid, transform=t)[-1, [0, 8]] / plain[-1, [0, 8]]  # pair 0 of y, of x
        torch.testing.assert_close(ratio, torch.tensor(t.scale), rtol=1e-5, atol=1e-6)
    assert scaled.eval().draw_transform() is None


class _RecordSdpa(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.dtypes = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.scaled_dot_product_attention:
            self.dtypes.append(tuple(t.dtype for t in args[:3]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("how", ["autocast", "module_bf16"])
def test_bf16_evablock_with_fp32_table(how):
    torch.manual_seed(0)
    rope = RotaryEmbedding(head_dim=16, ndim=3, coords="centre")
    block = EvaBlock(64, 4, num_prefix_tokens=1, attn_type="rope", rotate_half=rope.rotate_half)
    x = torch.randn(2, 1 + 24, 64)
    if how == "module_bf16":
        block, rope, x = block.to(torch.bfloat16), rope.to(torch.bfloat16), x.to(torch.bfloat16)
    table = gather_rope(rope((2, 3, 4)), torch.arange(24).repeat(2, 1))
    assert table.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=how == "autocast"), _RecordSdpa() as rec:
        y = block(x, rope=table)
    assert rec.dtypes == [(torch.bfloat16,) * 3]  # rotated q/k come back in the activations' dtype
    assert torch.isfinite(y).all() and (how == "autocast" or y.dtype == torch.bfloat16)
    assert rope((2, 3, 4)).dtype == torch.float32


def test_tables_stay_fp32_after_dtype_casts_and_inference_mode():
    rope = RotaryEmbedding(head_dim=32, ndim=2, variant="mixed", depth=2, num_heads=2)
    rope.to(torch.bfloat16)
    assert rope.freqs.dtype == torch.bfloat16 and rope((3, 3)).dtype == torch.float32
    assert not rope.state_dict().keys() - {"freqs"}  # no table buffers to save or cast
    axial = RotaryEmbedding(head_dim=32, ndim=2).half()
    with torch.inference_mode():
        assert axial((3, 3)).dtype == torch.float32
    x = torch.randn(1, 1, 9, 32, requires_grad=True)
    apply_rope(x, axial((3, 3))).sum().backward()  # the table made under inference_mode was not kept
    assert x.grad is not None


def test_build_rope_from_config():
    assert build_rope(RopeConfig(kind="none"), head_dim=64) is None
    rope = build_rope(RopeConfig(kind="3d", theta=50.0, coords="index", temporal_scale=0.5), head_dim=96)
    assert (rope.ndim, rope.theta, rope.coords, rope.temporal_scale, rope.pairs_per_axis) == (3, 50.0, "index", 0.5, 16)
    mixed = build_rope(RopeConfig(variant="mixed"), head_dim=32, num_heads=3, depth=5)
    assert mixed.freqs.shape == (2, 5, 3, 16) and mixed.per_block


@pytest.mark.parametrize("kwargs,words", [
    (dict(head_dim=30, ndim=2), ["head_dim=30", "% 4"]),
    (dict(head_dim=63, ndim=3), ["head_dim=63", "even"]),
    (dict(head_dim=4, ndim=3), ["head_dim=4", ">= 6"]),
    (dict(head_dim=32, normalize="mean"), ["'mean'", "separate, max, min"]),
    (dict(head_dim=32, coords="pixel"), ["'pixel'", "centre, index"]),
    (dict(head_dim=32, coords="index", normalize="max"), ["'max'", "index"]),
    (dict(head_dim=32, ndim=3, variant="mixed"), ["mixed", "2D"]),
])
def test_bad_construction_is_a_clear_error(kwargs, words):
    with pytest.raises(ValueError) as err:
        RotaryEmbedding(**kwargs)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_bad_grids_and_token_counts_are_clear_errors():
    rope = RotaryEmbedding(head_dim=32, ndim=2)
    with pytest.raises(ValueError, match=r"2 sides, got \(2, 3, 4\)"):
        rope((2, 3, 4))
    with pytest.raises(ValueError, match="12 tokens .* 13 tokens"):
        apply_rope(torch.randn(1, 2, 13, 32), rope((3, 4)))
    with pytest.raises(ValueError, match="head_dim 16"):
        apply_rope(torch.randn(1, 2, 12, 16), rope((3, 4)))
    with pytest.raises(ValueError, match=r"\[0, 12\).*max 12"):
        gather_rope(rope((3, 4)), torch.tensor([[0, 12]]))
    with pytest.raises(ValueError, match="int64 of shape"):
        gather_rope(rope((3, 4)), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="outside its reference grid"):
        rope.table((3, 4), ref_grid=(3, 4), strides=(1, 2))
