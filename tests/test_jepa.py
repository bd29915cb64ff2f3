"""The JEPA module: targets/trainable split, plain-loss equivalence of a one-level hierarchy, learning
with an EMA target (images and video), MViT plug-in, diagnostics, and errors on bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from jepa.config import CONFIG_DIR, from_dict, load
from jepa.errors import ConfigError
from jepa.masks import MaskSet, build_mask_generator, mask_rng
from jepa.models.factory import build_jepa, input_grid, is_video
from jepa.models.hierarchy import cell_ids
from jepa.models.jepa import effective_rank, stage0_mask

BATCH = 8


def tiny_config(*, video=False, levels=None, per_block=None, loss="smooth_l1", **model):
    raw = {
        "model": {"embed_dim": 64, "depth": 4, "num_heads": 4, "patch_size": 8, **model,
                  "predictor": {"embed_dim": 32, "depth": 2, "num_heads": 2,
                                "per_block": (not video) if per_block is None else per_block}},
        "data": {"image_size": 32 if video else 64, "num_frames": 8},
        "mask": {"min_keep": 4},
        "hierarchy": {"levels": levels or [{"block": -1}], "loss": loss},
    }
    if video:
        raw["model"]["rope"] = {"kind": "3d"}
        raw["mask"] = {"kind": "multiblock3d", "min_keep": 4,
                       "targets": [{"num_blocks": 4, "spatial_scale": [0.15, 0.15]},
                                   {"num_blocks": 1, "spatial_scale": [0.5, 0.5]}]}
    return from_dict(raw)


def smooth_images(n, size, frames=None, seed=0):
    """Low-frequency gratings with a per-image offset, drifting over time for clips: structured enough
    that context tokens tell something about target tokens."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    t = torch.arange(frames or 1).view(1, 1, -1, 1, 1).float()

    def rand(*shape):
        return torch.rand(n, 3, 1, 1, 1, *shape, generator=g)

    out = torch.zeros(n, 3, frames or 1, size, size)
    for _ in range(2):
        freq, theta, phase = 0.3 + rand(), math.pi * rand(), 2 * math.pi * rand()
        drift, offset = rand() - 0.5, rand() * 2 - 1
        ramp = xx * theta.cos() + yy * theta.sin()
        out += torch.sin(2 * math.pi * freq * ramp + phase + drift * t) + offset
    return out if frames else out[:, :, 0]


def batch_for(cfg, step=0):
    grid = input_grid(cfg)
    masks = build_mask_generator(cfg.mask, grid)(BATCH, mask_rng(0, 0, 0, step))
    x = smooth_images(BATCH, cfg.data.image_size, cfg.data.num_frames if len(grid) == 3 else None)
    return x, masks


def plain_loss(model, x, masks, kind):
    """I-JEPA / V-JEPA loss written out: layer-normed target tokens at the target positions."""
    target = model.target_encoder(x)["tokens"]
    target = F.layer_norm(target, target.shape[-1:])
    grid = model.target_encoder.grid(x.shape)
    losses = []
    for ms in masks:
        context = model.context_encoder(x, keep_idx=ms.context)["tokens"]
        pred = model.trainable.heads[0](torch.cat(model.predictor(context, ms.context, ms.targets, grid), 1))
        idx = torch.cat(ms.targets, 1)
        tgt = target.gather(1, idx[..., None].expand(-1, -1, target.shape[-1]))
        losses.append(F.smooth_l1_loss(pred, tgt) if kind == "smooth_l1" else F.l1_loss(pred, tgt))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("video,per_block,kind", [(False, True, "smooth_l1"), (False, False, "l1"),
                                                   (True, False, "l1")])
def test_one_level_hierarchy_is_the_plain_loss(video, per_block, kind):
    torch.manual_seed(0)
    cfg = tiny_config(video=video, per_block=per_block, loss=kind)
    model = build_jepa(cfg)
    x, masks = batch_for(cfg)
    assert len(masks) == (2 if video else 1)
    loss, metrics = model(x, masks)
    assert torch.equal(loss, plain_loss(model, x, masks, kind))     # bit for bit, not merely close
    assert torch.equal(metrics["loss/level0"], loss.detach())
    # the DeepSpeed-style split computes the same thing
    split, _ = model.trainable(x, masks, model.compute_targets(x, masks))
    torch.testing.assert_close(split, loss, atol=0, rtol=0)


@pytest.mark.parametrize("video", [False, True])
def test_pooled_targets_read_only_target_tokens(video):
    """Pooled levels: a token in no target block changes no target; one in a block changes its set's."""
    torch.manual_seed(0)
    cfg = tiny_config(video=video, levels=[{"block": 1, "pool": 2}, {"block": -1, "pool": 2}])
    model = build_jepa(cfg)
    x, masks = batch_for(cfg)
    out = model.target_encoder(x, return_blocks=[1])
    in_target = [torch.zeros(BATCH, math.prod(out["grid"]), dtype=torch.bool) for _ in masks]
    for covered, ms in zip(in_target, masks):
        for block in ms.targets:
            covered.scatter_(1, block, True)
    any_target = torch.stack(in_target).any(0)
    ids = cell_ids(tuple(out["grid"]), model.levels[0].pool)             # both levels: same grid, same pool
    shares_a_cell = (any_target[:, None, :] & (ids[:, None] == ids[None, :])).any(-1)
    # (sample, token) in no block, but in a cell that holds target tokens; then one in a block of set 0
    outside = (~any_target & shares_a_cell).nonzero()[0].tolist()
    inside = in_target[0].nonzero()[0].tolist()

    def targets(b=None, token=None):     # [mask set][level] values, one token of sample b redrawn
        tokens, (block1, grid1) = out["tokens"].clone(), out["blocks"][1]
        block1 = block1.clone()
        if b is not None:
            tokens[b, token], block1[b, token] = torch.randn(tokens.shape[-1]), torch.randn(block1.shape[-1])
        levels = model.targets_from_output(dict(out, tokens=tokens, blocks={1: (block1, grid1)}), masks).levels
        assert all(t.cells is not None for per_set in levels for t in per_set)
        return [[t.value for t in per_set] for per_set in levels]

    base = targets()
    assert all(torch.equal(a, b) for new, old in zip(targets(*outside), base) for a, b in zip(new, old))
    assert not any(torch.equal(a, b) for a, b in zip(targets(*inside)[0], base[0]))


def test_trainable_and_target_are_separate():
    cfg = tiny_config(levels=[{"block": 1, "pool": 2}, {"block": -1}])
    model = build_jepa(cfg).train()
    trainable = {id(p) for p in model.trainable.parameters()}
    target = list(model.target_encoder.parameters())
    assert not trainable & {id(p) for p in target}
    assert all(not p.requires_grad for p in target) and not model.target_encoder.training
    assert len(model.trainable.heads) == 2
    # the target starts as an exact copy of the context encoder (EMA pairs parameters by name)
    ctx = dict(model.context_encoder.named_parameters())
    assert all(torch.equal(p, ctx[name]) for name, p in model.target_encoder.named_parameters())
    x, masks = batch_for(cfg)
    loss, metrics = model(x, masks)
    loss.backward()
    assert all(p.grad is None for p in target)
    assert all(p.grad is not None for p in model.trainable.parameters() if p.requires_grad)
    assert set(metrics) == {"loss/level0", "loss/level1", "mask/context_ratio", "mask/target_ratio",
                            "repr/target_std"}
    assert all(v.dim() == 0 and not v.requires_grad for v in metrics.values())
    ratio = masks[0].context.shape[1] / 64
    assert metrics["mask/context_ratio"].item() == pytest.approx(ratio)
    assert 0 < metrics["mask/target_ratio"].item() < 1 - ratio + 1e-6


@pytest.mark.parametrize("video", [False, True])
def test_loss_goes_down_with_an_ema_target(video):
    torch.manual_seed(0)
    cfg = tiny_config(video=video, levels=[{"block": 1, "pool": 2}, {"block": -1}])
    model = build_jepa(cfg).train()
    opt = torch.optim.AdamW(model.trainable.parameters(), lr=2e-3, weight_decay=0.05)
    target, online = list(model.target_encoder.parameters()), list(model.context_encoder.parameters())
    losses, stds = [], []
    for step in range(50):
        x, masks = batch_for(cfg, step)        # the same clips, fresh masks every step
        loss, metrics = model(x, masks)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(target, online, 1 - 0.99)
        losses.append(loss.item())
        stds.append(metrics["repr/target_std"].item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    assert min(stds) > 0.5, "target features collapsed"


def test_mvit_jepa_forward_backward():
    torch.manual_seed(0)
    cfg = from_dict({
        "model": {"backbone": "mvit_v2_s", "rope": {"kind": "3d"},
                  "predictor": {"embed_dim": 32, "depth": 1, "num_heads": 2}},
        "data": {"image_size": 64, "num_frames": 8},
        "mask": {"kind": "tube", "tube_ratio": 0.5, "min_keep": 2},
        "hierarchy": {"levels": [{"block": 2, "pool": 4}, {"block": -1}]},
    })
    assert input_grid(cfg) == (4, 2, 2) and is_video(cfg)
    model = build_jepa(cfg)
    masks = build_mask_generator(cfg.mask, input_grid(cfg))(2, mask_rng(0, 0, 0, 0))
    x = torch.randn(2, 3, 8, 64, 64)
    loss, metrics = model(x, masks)
    loss.backward()
    assert torch.isfinite(loss) and metrics["mask/context_ratio"].item() == pytest.approx(0.5)
    assert model.context_encoder.mask_token.grad.abs().sum() > 0
    assert model.trainable.heads[0][1].out_features == model.context_encoder.block_dims[2]
    assert all(p.grad is None for p in model.target_encoder.parameters())


def test_stage0_mask_covers_each_dropped_output_cell():
    keep = torch.tensor([[True, False, False, True]])           # output grid (1, 2, 2)
    masked = stage0_mask(keep, (1, 2, 2), (1, 4, 4)).view(4, 4)
    expect = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(masked, expect)


def test_effective_rank():
    assert effective_rank(torch.eye(8)).item() == pytest.approx(8.0, rel=1e-5)
    low = torch.randn(100, 2) @ torch.randn(2, 16)
    assert effective_rank(low).item() < 2.0 + 1e-3
    assert effective_rank(torch.ones(50, 16)).item() == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("video,shape,message", [
    (False, (2, 3, 60, 64), "not a multiple of the patch size 8"),
    (True, (2, 3, 7, 32, 32), "not a multiple of the tubelet size 2"),
])
def test_bad_input_sizes(video, shape, message):
    cfg = tiny_config(video=video)
    _, masks = batch_for(cfg)
    with pytest.raises(ValueError, match=message):
        build_jepa(cfg)(torch.zeros(shape), masks)


def test_too_few_context_tokens():
    model = build_jepa(tiny_config())
    masks = [MaskSet(context=torch.tensor([[0, 1, 2]]), targets=[torch.tensor([[10, 11]])])]
    with pytest.raises(ValueError, match="leaves 3 context tokens, fewer than mask.min_keep = 4"):
        model(torch.zeros(1, 3, 64, 64), masks)


def test_level_past_the_encoder_depth():
    with pytest.raises(ConfigError, match=r"hierarchy.levels\[0\].block"):
        tiny_config(levels=[{"block": 4}])
    cfg = tiny_config(levels=[{"block": 3}])
    cfg.model.depth = 3                                       # changed after validation
    with pytest.raises(ConfigError, match="block = 3 is past the encoder depth 3"):
        build_jepa(cfg)


@pytest.mark.parametrize("raw,message", [
    ({"model": {"rope": {"kind": "3d"}}}, "mask.kind = 'multiblock2d' with a video model"),
    ({"mask": {"kind": "tube"}}, "model.rope.kind = '2d' with a video model"),
    ({"data": {"sources": [{"urls": "x.tar", "kind": "video"}]}}, r"data.sources\[0\].kind = 'video'"),
    ({"model": {"rope": {"kind": "none"}}}, "leave the ViT without positions"),
    ({"model": {"backbone": "mvit_v2_s", "rope": {"kind": "3d"}}, "mask": {"kind": "tube"},
      "data": {"image_size": 64, "num_frames": 8}, "hierarchy": {"levels": [{"block": 2, "pool": 2}]}},
     r"MViT block 2 works on grid \(4, 8, 8\).*smallest fitting: \[1, 4, 4\]"),
])
def test_inconsistent_configs(raw, message):
    cfg = from_dict(raw)
    with pytest.raises(ConfigError, match=message):
        build_jepa(cfg)


FULL_CONFIGS = {  # config: (encoder parameters in millions, token grid)
    "ijepa_vith14": (630.4, (16, 16)), "ijepa_vitb16": (85.6, (14, 14)),
    "hjepa_vitb16": (85.6, (14, 14)), "vjepa_vitl16": (303.9, (8, 14, 14)),
}


@pytest.mark.parametrize("name", sorted(FULL_CONFIGS))
def test_full_size_configs_build(name):
    cfg = load(CONFIG_DIR / f"{name}.yaml")
    params, grid = FULL_CONFIGS[name]
    assert input_grid(cfg) == grid
    with torch.device("meta"):                                  # sizes only, no memory
        model = build_jepa(cfg)
    assert sum(p.numel() for p in model.context_encoder.parameters()) / 1e6 == pytest.approx(params, abs=0.1)
    assert len(model.levels) == (3 if name.startswith("hjepa") else 1)


@pytest.mark.parametrize("name", sorted(FULL_CONFIGS))
def test_small_configs_train_one_step(name):
    path = CONFIG_DIR / "small" / f"{name}.yaml"
    assert path.read_text().startswith("# small: runs on a laptop CPU")
    cfg = load(path)
    torch.manual_seed(0)
    model = build_jepa(cfg).train()
    grid = input_grid(cfg)
    masks = build_mask_generator(cfg.mask, grid)(cfg.data.batch_size, mask_rng(0, 0, 0, 0))
    frames = (cfg.data.num_frames,) if len(grid) == 3 else ()
    x = torch.randn(cfg.data.batch_size, 3, *frames, cfg.data.image_size, cfg.data.image_size)
    loss, _ = model(x, masks)
    loss.backward()
    no_grad = [n for n, p in model.trainable.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == [], f"parameters the loss does not reach: {no_grad}"
    assert all(p.grad is None for p in model.target_encoder.parameters())
    # A step against the gradient lowers the loss (eval mode: no drop path or position noise, so the
    # two losses differ only by the step): the gradients point where the loss goes down.
    model.eval()
    model.zero_grad()
    first, _ = model(x, masks)
    first.backward()
    lr = 1e-2
    with torch.no_grad():
        for p in model.trainable.parameters():
            p -= lr * p.grad
    after, _ = model(x, masks)
    # To first order the step lowers the loss by lr * |grad|^2; ask for at least half of that.
    expected = lr * sum(float(p.grad.square().sum()) for p in model.trainable.parameters())
    assert first.item() - after.item() > 0.5 * expected > 0, (first.item(), after.item(), expected)


@pytest.mark.parametrize("name", ["small/demo", "small/vjepa_vitl16"])
def test_every_metric_lives_on_the_model_device(name):
    """The step's metrics are stacked and all-reduced together: one on another device (a CPU scalar
    beside CUDA tensors) would crash the first logging step of a GPU run. The meta device stands in
    for a GPU: any tensor made on the CPU by default shows up."""
    from jepa import config
    from jepa.masks import build_mask_generator
    from jepa.models.factory import build_jepa, input_grid
    from jepa.train.metrics import MetricLogger

    cfg = config.load(name)
    grid = input_grid(cfg)
    masks = build_mask_generator(cfg.mask, grid)(2, torch.Generator().manual_seed(0))
    meta = torch.device("meta")
    model = build_jepa(cfg).to(meta)
    side = cfg.data.image_size
    x = torch.empty((2, 3, side, side) if len(grid) == 2 else (2, 3, cfg.data.num_frames, side, side), device=meta)
    masks = [m.to(meta) for m in masks]
    targets = model.compute_targets(x, masks)
    loss, metrics = model.trainable(x, masks, targets)
    metrics = {"loss/total": loss, **metrics, "repr/effective_rank": model.effective_rank(targets)}
    assert {k: v.device for k, v in metrics.items()} == {k: meta for k in metrics}
    logger = MetricLogger(tb_dir=None, device=meta, total_steps=1, samples_per_step=2, tokens_per_sample=1,
                          is_main=False)
    logger.accumulate(metrics)
