"""Regional compilation (jepa/models/compile.py): recompiles bounded under random masks, the compiled
step equal to the eager one, state_dict names unchanged, DeepSpeed ZeRO 0-3 and bf16."""

from __future__ import annotations

import json

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter

from dist_helpers.launch import check, run
from jepa.config import from_dict
from jepa.errors import ConfigError
from jepa.masks import build_mask_generator, mask_rng
from jepa.models.compile import compile_blocks, compile_wanted, is_compiled
from jepa.models.factory import build_jepa, input_grid


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Compiled code is cached per code object, across models: each test starts from none."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def tiny(video: bool = False, drop_path: float = 0.0):
    raw = {"model": {"size": "tiny", "embed_dim": 32, "depth": 3, "num_heads": 2, "patch_size": 8,
                     "drop_path": drop_path, "rope": {"kind": "3d" if video else "2d"},
                     "predictor": {"embed_dim": 16, "depth": 2, "num_heads": 1, "per_block": not video}},
           "data": {"image_size": 32, "num_frames": 4}, "mask": {"min_keep": 2}}
    if video:
        raw["mask"].update(kind="multiblock3d", targets=[{"num_blocks": 2, "spatial_scale": [0.15, 0.3]},
                                                         {"num_blocks": 1, "spatial_scale": [0.4, 0.7]}])
    return from_dict(raw)


def batch(cfg, step: int, n: int = 4):
    video = cfg.mask.kind != "multiblock2d"
    x = torch.randn((n, 3, 4, 32, 32) if video else (n, 3, 32, 32), generator=torch.Generator().manual_seed(step))
    return x, build_mask_generator(cfg.mask, input_grid(cfg))(n, mask_rng(0, 0, 0, step))


def train_step(model, x, masks) -> torch.Tensor:
    loss, _ = model(x, masks)
    loss.backward()
    return loss.detach()


def test_fifty_steps_of_random_masks_compile_a_fixed_number_of_graphs():
    """Graphs: the target pass (no grad, one table for all samples) and the context encoder's
    training pass (gathered tables), each once per drop-path rate (0, 0.05, 0.1 over 3 blocks: Dynamo
    guards on the rate), and the predictor's: all made at the first step; 49 more steps of other
    token counts add none."""
    cfg = tiny(drop_path=0.1)
    torch.manual_seed(0)
    model = build_jepa(cfg).train()
    counter = CompileCounter()
    assert compile_blocks(model, backend=counter) == 3 + 3 + 2  # context and target encoder, predictor
    lengths, graphs = set(), []
    for step in range(50):
        x, masks = batch(cfg, step)
        train_step(model, x, masks)
        lengths.add((masks[0].context.shape[1], *(t.shape[1] for t in masks[0].targets)))
        graphs.append(counter.frame_count)
    assert len(lengths) > 10, "the masks must vary for this test to mean anything"
    assert graphs[0] == graphs[-1] == 2 * 3 + 1, graphs


def test_state_dict_names_do_not_change_and_checkpoints_load_both_ways():
    cfg = tiny()
    torch.manual_seed(0)
    eager = build_jepa(cfg).train()
    torch.manual_seed(1)
    compiled = build_jepa(cfg).train()
    compile_blocks(compiled, backend="eager")
    assert compile_blocks(compiled, backend="eager") == 0  # already compiled: nothing twice
    assert all(is_compiled(b) for b in compiled.target_encoder.blocks)
    state = compiled.state_dict()
    assert list(state) == list(eager.state_dict()) and not any("_orig_mod" in k for k in state)
    compiled.load_state_dict(eager.state_dict())  # eager checkpoint -> compiled model
    x, masks = batch(cfg, 0)
    torch.manual_seed(2)
    a = train_step(eager, x, masks)
    torch.manual_seed(2)
    b = train_step(compiled, x, masks)
    torch.testing.assert_close(b, a)
    fresh = build_jepa(cfg)
    fresh.load_state_dict(compiled.state_dict())  # compiled checkpoint -> eager model (export, probes)
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, eager.state_dict()[name]), name


@pytest.mark.slow
@pytest.mark.parametrize("video", [False, True], ids=["image", "video"])
def test_compiled_step_equals_eager_step(video):
    """Inductor's kernels, fp32: loss and every gradient, over three steps of different masks."""
    cfg = tiny(video=video)
    torch.manual_seed(0)
    eager = build_jepa(cfg).train()
    compiled = build_jepa(cfg).train()
    compiled.load_state_dict(eager.state_dict())
    compile_blocks(compiled)
    for step in range(3):
        x, masks = batch(cfg, step)
        torch.testing.assert_close(train_step(compiled, x, masks), train_step(eager, x, masks), rtol=1e-5, atol=1e-6)
        grads = {n: p.grad for n, p in eager.named_parameters() if p.grad is not None}
        for name, p in compiled.named_parameters():
            if name in grads:
                torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6, msg=name)
        eager.zero_grad(set_to_none=True)
        compiled.zero_grad(set_to_none=True)


@pytest.mark.slow
def test_compiled_bf16_step_matches_eager_within_bf16_rounding():
    """Inductor's kernels on a bf16 trainable part (as `deepspeed.bf16` runs it; fp32 target pass
    under autocast): the loss to 1%, each gradient to 3% of its norm (bf16 keeps 8 bits)."""
    cfg = tiny()
    torch.manual_seed(0)
    eager = build_jepa(cfg).train()
    compiled = build_jepa(cfg).train()
    compiled.load_state_dict(eager.state_dict())
    for model in (eager, compiled):
        model.trainable.to(torch.bfloat16)
    compile_blocks(compiled)
    x, masks = batch(cfg, 0)
    losses = []
    for model in (eager, compiled):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            targets = model.compute_targets(x, masks)
        loss, _ = model.trainable(x.to(torch.bfloat16), masks, targets)
        loss.backward()
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-2)
    grads = {n: p.grad.float() for n, p in eager.named_parameters() if p.grad is not None}
    assert len(grads) > 20
    for name, p in compiled.named_parameters():
        if name in grads:
            err = (p.grad.float() - grads[name]).norm() / grads[name].norm().clamp_min(1e-12)
            assert err < 3e-2, f"{name}: relative gradient error {err:.3g}"


@pytest.mark.slow
def test_deepspeed_zero_stages_and_bf16_with_compiled_blocks(tmp_path):
    """See tests/dist_helpers/compile_checks.py."""
    result = tmp_path / "compile.json"
    check(run("compile_checks.py", result, nproc=None, timeout=900))
    out = json.loads(result.read_text())
    for case, r in out.items():
        bf16 = case.endswith("bf16")
        tol = dict(rel=2e-2) if bf16 else dict(rel=1e-5, abs=1e-6)
        assert r["compiled"] and r["same_keys"] and r["graphs"] > 0, case
        assert case.startswith("zero3") or r["graph_breaks"] == 0, case  # ZeRO-3: at DeepSpeed's hooks
        assert r["compiled_losses"] == pytest.approx(r["eager_losses"], **tol), case
        assert r["compiled_norms"] == pytest.approx(r["eager_norms"], **tol), case
        assert r["max_weight_diff"] <= (1e-2 if bf16 else 1e-5) * r["weight_scale"], case


def test_default_compiles_a_vit_on_cuda_only_and_mvit_is_refused():
    assert compile_wanted(None, backbone="vit", device=torch.device("cuda"))
    assert not compile_wanted(None, backbone="vit", device=torch.device("cpu"))
    assert not compile_wanted(None, backbone="mvit_v2_s", device=torch.device("cuda"))
    assert compile_wanted(True, backbone="vit", device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="model.compile.*set model.compile=false"):
        from_dict({"model": {"backbone": "mvit_v2_s", "rope": {"kind": "3d"}, "compile": True},
                   "mask": {"kind": "tube"}, "data": {"image_size": 224, "num_frames": 16}})
