"""FLOP counting for MFU: a hand count, torch's FlopCounterMode on a tiny model, and the peak table."""

from __future__ import annotations

import logging

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from jepa.config import from_dict
from jepa.masks import build_mask_generator, mask_rng
from jepa.models.factory import build_jepa, input_grid
from jepa.train.flops import FlopModel, block_flops, mask_lengths, peak_flops, step_flops


def tiny(per_block: bool, video: bool = False, levels: int = 1):
    raw = {"model": {"size": "tiny", "embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8, "tubelet_size": 2,
                     "rope": {"kind": "3d" if video else "2d"},
                     "predictor": {"embed_dim": 16, "depth": 2, "num_heads": 1, "per_block": per_block}},
           "data": {"image_size": 32, "num_frames": 4}, "mask": {"min_keep": 2},
           "hierarchy": {"levels": [{"block": 0}] * (levels - 1) + [{"block": -1}]}}
    if video:
        raw["mask"].update(kind="multiblock3d", targets=[{"num_blocks": 2, "spatial_scale": [0.2, 0.2]},
                                                         {"num_blocks": 1, "spatial_scale": [0.5, 0.5]}])
    return from_dict(raw)


def test_block_flops_by_hand():
    # 10 tokens, width 8, MLP 32: qkv 2*10*8*24, proj 2*10*8*8, fc1 + fc2 2*2*10*8*32, q@k and a@v 2*2*10*10*8
    assert block_flops(10, 8, 32) == 3840 + 1280 + 10240 + 3200


def test_step_by_hand():
    m = FlopModel(embed_dim=8, depth=1, mlp_hidden=32, patch_volume=12, pred_dim=4, pred_depth=1,
                  pred_mlp_hidden=16, head_dims=(8,), per_block=True)
    patch = 2 * 16 * 12 * 8                                   # 16 patches of 12 values to width 8
    target = patch + block_flops(16, 8, 32)
    context = patch + block_flops(6, 8, 32)
    predictor = 2 * 6 * 8 * 4 + block_flops(6 + 3, 4, 16) + block_flops(6 + 2, 4, 16) + 2 * 5 * 4 * 8
    assert step_flops(m, batch=2, num_tokens=16, mask_sets=[(6, [3, 2])]) == 2 * (target + 3 * (context + predictor))


@pytest.mark.parametrize("per_block, video, levels", [(True, False, 2), (False, False, 1), (False, True, 1)],
                         ids=["image-per-block-2-levels", "image-one-sequence", "video-2-mask-sets"])
def test_forward_count_equals_torch_flop_counter(per_block, video, levels):
    """The trained parts' forward and the target pass, counted by torch on a tiny model, match the
    formula; so does the whole step with torch's own forward + backward count (backward = 2x forward
    for every matmul except those whose input needs no gradient: the patch embedding of the images).
    Attention runs as plain matmuls (SDPA's math backend): torch counts no FLOPs for the CPU flash kernel."""
    cfg = tiny(per_block, video, levels)
    torch.manual_seed(0)
    model = build_jepa(cfg).train()
    grid = input_grid(cfg)
    masks = build_mask_generator(cfg.mask, grid)(3, mask_rng(0, 0, 0, 0))
    x = torch.randn(3, 3, 4, 32, 32) if video else torch.randn(3, 3, 32, 32)
    m = FlopModel.from_config(cfg)
    n = grid[0] * grid[1] * (grid[2] if video else 1)
    lengths = mask_lengths(masks)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        targets = model.compute_targets(x, masks)
    target_pass = counter.get_total_flops()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        loss, _ = model.trainable(x, masks, targets)
    trained_forward = counter.get_total_flops()
    assert step_flops(m, batch=3, num_tokens=n, mask_sets=[]) == target_pass
    assert step_flops(m, batch=3, num_tokens=n, mask_sets=lengths) == target_pass + 3 * trained_forward
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        loss.backward()
    patch_embed = 2 * 3 * n * m.patch_volume * m.embed_dim * len(masks)  # no gradient wrt the images
    assert counter.get_total_flops() == 2 * trained_forward - patch_embed


def test_peak_from_override_table_and_cpu_probe():
    assert peak_flops(torch.device("cpu"), bf16=True, override_tflops=2.5) == (2.5e12, "logging.peak_tflops")
    flops, source = peak_flops(torch.device("cpu"), bf16=False)
    assert flops > 1e8 and "probe" in source
    assert peak_flops(torch.device("meta"), bf16=False)[0] is None


def test_mvit_is_not_counted():
    cfg = from_dict({"model": {"backbone": "mvit_v2_s", "rope": {"kind": "3d"}}, "mask": {"kind": "tube"},
                     "data": {"image_size": 224, "num_frames": 16}, "hierarchy": {"levels": [{"block": -1}]}})
    assert FlopModel.from_config(cfg) is None


def test_metric_logger_writes_tflops_and_mfu(tmp_path, caplog):
    from jepa.train.metrics import MetricLogger

    log = MetricLogger(tb_dir=None, device=torch.device("cpu"), total_steps=10, samples_per_step=4,
                       tokens_per_sample=16, is_main=True, peak_flops=2e12)
    log.accumulate({"loss/total": torch.tensor(1.0)})
    log.add_flops(3e9)
    log.add_flops(1e9)
    log.end_step()
    logger = logging.getLogger("jepa.train")
    logger.addHandler(caplog.handler)  # "jepa" may not propagate (jepa.train.run.setup_logging)
    try:
        with caplog.at_level("INFO", logger="jepa.train"):
            values = log.write(1, {}, skipped={})
    finally:
        logger.removeHandler(caplog.handler)
    seconds = values["time/step_s"]
    assert values["time/tflops"] == pytest.approx(4e9 / seconds / 1e12, rel=1e-6)
    assert values["time/mfu"] == pytest.approx(values["time/tflops"] / 2.0, rel=1e-6)
    assert "tflops=" in caplog.text and "mfu=" in caplog.text
    log.end_step()  # an interval without counted FLOPs (MViT) has neither scalar
    assert not {"time/tflops", "time/mfu"} & set(log.write(2, {}, skipped={}))
