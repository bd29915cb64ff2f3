"""Every shipped config gives each cell of its token grid its own RoPE rotation, not nearly shared by
cells far from it, in the encoder and the predictor the factory builds; a head_dim that merges cells
makes the predictor merge their predictions."""

import pytest
import torch

from jepa import config
from jepa.config.rope_check import ROPE_FAR_CELLS, ROPE_MAX_FAR_COSINE, ROPE_MIN_ROW_DISTANCE
from jepa.models.factory import build_jepa, input_grid

CONFIGS = sorted(config.CONFIG_DIR.glob("**/*.yaml"))


def min_relative_row_distance(table: torch.Tensor) -> float:
    """Smallest Euclidean distance between two rows of a (N, 2 * head_dim) table, over the row norm."""
    rows = table.double()
    return torch.pdist(rows / rows.norm(dim=1, keepdim=True)).min().item()


def max_far_cosine(table: torch.Tensor, grid: tuple[int, ...]) -> float:
    """Largest cosine similarity between the rows of two cells at least ROPE_FAR_CELLS apart on some axis."""
    rows = torch.nn.functional.normalize(table.double(), dim=1)
    cells = torch.cartesian_prod(*(torch.arange(n) for n in grid)).reshape(len(rows), len(grid))
    far = (cells[:, None] - cells[None]).abs().amax(-1) >= ROPE_FAR_CELLS
    return (rows @ rows.T)[far].max().item()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(config.CONFIG_DIR)))
def test_rope_rows_are_distinct_on_the_config_grid(path):
    cfg = config.load(path)
    grid = input_grid(cfg)
    with torch.device("meta"):  # full-size models cost no memory; RoPE tables hold no weights
        model = build_jepa(cfg)
    for name, attention in (("encoder", model.context_encoder), ("predictor", model.predictor)):
        if name == "encoder" and cfg.model.backbone == "mvit_v2_s":
            continue  # MViT rotates q and k on its own pooled grids, one table per block (tests/test_mvit.py)
        rope = attention.rope.to_empty(device="cpu")  # the module's own table builder, computing on CPU
        table = rope.table(grid)  # un-augmented: shift / jitter / rescale are train-time only
        assert table.shape == (torch.Size(grid).numel(), 2 * rope.head_dim)
        assert min_relative_row_distance(table) > ROPE_MIN_ROW_DISTANCE, f"{name} of {path.name}, grid {grid}"
        assert max_far_cosine(table, grid) <= ROPE_MAX_FAR_COSINE, f"{name} of {path.name}, grid {grid}"


@pytest.mark.parametrize("num_heads, merged", [(6, True), (3, False)])
def test_predictor_merges_cells_only_when_their_rope_rows_collide(num_heads, merged):
    """Small video config, predictor 36 wide: 6 heads (head_dim 6, one pair per axis) give cells t and
    t + 2 of the 4 x 8 x 8 grid the same rotation and so the same prediction; 3 heads do not."""
    cfg = config.load(config.CONFIG_DIR / "small" / "vjepa_vitl16.yaml")
    cfg.model.predictor.embed_dim, cfg.model.predictor.num_heads = 36, num_heads  # after validation, which refuses both
    cfg.model.predictor.abs_pos = False  # RoPE alone tells the target positions apart
    torch.manual_seed(0)
    predictor = build_jepa(cfg).predictor.eval()
    grid = input_grid(cfg)
    context_idx = torch.tensor([[5, 70, 200]])
    targets = [torch.tensor([[0, 2 * 8 * 8]])]  # cells (0, 0, 0) and (2, 0, 0)
    with torch.no_grad():
        (pred,) = predictor(torch.randn(1, 3, predictor.embed.in_features), context_idx, targets, grid)
    assert torch.allclose(pred[0, 0], pred[0, 1], atol=1e-5) == merged
