"""benchmarks/memory_model.py (the numbers of docs/scaling.md) counts the parameters the real models have."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jepa.config import load
from jepa.models.factory import build_jepa

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("memory_model", ROOT / "benchmarks" / "memory_model.py")
mm = importlib.util.module_from_spec(_spec)
sys.modules["memory_model"] = mm  # dataclasses look their module up there
_spec.loader.exec_module(mm)


@pytest.mark.parametrize("config, overrides, name, tubelet", [
    ("ijepa_vith14", ["model.size=large", "model.patch_size=16"], "ViT-L/16", None),
    ("ijepa_vith14", [], "ViT-H/14", None),
    ("ijepa_vith14", ["model.size=giant"], "ViT-g/14", None),
    ("vjepa_vitl16", [], "ViT-L/16", 2),
    ("hjepa_vitl16", [], "ViT-L/16", None),
])
def test_parameter_counts_equal_the_built_models(config, overrides, name, tubelet):
    cfg = load(config, overrides)
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = build_jepa(cfg)
    vit = mm.VITS[name]
    encoder = sum(p.numel() for p in model.context_encoder.parameters())
    trainable = sum(p.numel() for p in model.trainable.parameters())
    assert encoder == vit.encoder_params(tubelet)
    level_dims = [vit.dim] * len(cfg.hierarchy.levels)
    assert trainable == encoder + mm.predictor_params(vit.dim, level_dims)


def test_zero_state_model_matches_the_recorded_measurement():
    """benchmarks/README.md, Training memory: 20.0 / 120.1 MiB (ZeRO 0), 80.1 after the step (ZeRO 1/2),
    10.0 MiB of module params and 175.5 (bucket 5e7) / 82.0 (bucket 1e6) under ZeRO 3, on 2 ranks."""
    params = 10 * (1024 * 1024 + 1024) + 2 * 1024
    mib = 2**20
    z0 = mm.state_bytes(params, 0, 2)
    assert (round(z0["params"] / mib, 1), round(z0["optim"] / mib, 1)) == (20.0, 120.1)
    z2 = mm.state_bytes(params, 2, 2)
    assert round((z2["params"] + z2["optim"]) / mib, 1) == 80.1
    assert round(sum(z2.values()) / mib, 1) == 90.1
    assert round(sum(mm.state_bytes(params, 3, 2).values()) / mib, 1) == 175.5
    assert round(sum(mm.state_bytes(params, 3, 2, bucket=1_000_000).values()) / mib, 1) == 82.0


def test_the_script_prints_every_table():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory_model.py")], capture_output=True,
                         text=True, check=True).stdout
    for title in ("Trainable state", "Activations per GPU", "Per-GPU total", "Bytes each GPU sends",
                  "Step rates", "Datasets as shards", "The ZeRO state model"):
        assert f"## {title}" in out


@pytest.mark.parametrize("table", ["state_table", "activation_table", "rate_table"])
def test_docs_scaling_quotes_the_script(table):
    """docs/scaling.md shows these tables as the script prints them: change one, regenerate the other."""
    page = (ROOT / "docs" / "scaling.md").read_text()
    rows = getattr(mm, table)().splitlines()[2:]  # the data rows, below the header and the rule
    missing = [row for row in rows if row not in page]
    assert not missing, f"docs/scaling.md lacks these rows of `python benchmarks/memory_model.py`: {missing}"
