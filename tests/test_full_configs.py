"""The full-size configs under configs/: each builds its model and draws its masks, and its header
states the recipe (batch, GPUs, lr, steps, epochs) and the expected time."""

from pathlib import Path

import pytest
import torch

from jepa.config import load
from jepa.masks import build_mask_generator
from jepa.models.factory import build_jepa, input_grid

CONFIGS = sorted(p for p in (Path(__file__).resolve().parent.parent / "configs").glob("*.yaml") if p.stem != "base")


def header(path: Path) -> str:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# "))
    return " ".join(lines)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_header_states_the_recipe_and_the_expected_time(path):
    text = header(path).lower()
    for word in ("batch", "gpus", "lr", "steps", "epochs", "expected time"):
        assert word in text, f"{path.name}: the header comment does not give the {word}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_model_builds_and_masks_draw(path):
    cfg = load(path)
    with torch.device("meta"):  # shapes only
        build_jepa(cfg)
    grid = input_grid(cfg)
    masks = build_mask_generator(cfg.mask, grid)(8, torch.Generator().manual_seed(0))
    assert all(m.context.shape[1] >= cfg.mask.min_keep for m in masks)
