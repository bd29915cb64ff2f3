"""The DeepSpeed engine with the EMA target: param groups, config, and real runs on CPU processes.

Distributed runs use 2 processes (torchrun, gloo) on the toy task of tests/dist_helpers/toy.py.
"""

import json

import pytest
import torch
import torch.nn as nn

from dist_helpers.launch import check, run, train_toy
from jepa.config import from_dict
from jepa.train.engine import DECAY_KEY, deepspeed_config, param_groups


class WithNoDecayList(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 8)
        self.norm = nn.LayerNorm(8)
        self.pos_embed = nn.Parameter(torch.zeros(1, 3, 8))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.frozen = nn.Parameter(torch.zeros(8, 8), requires_grad=False)

    def no_weight_decay(self):
        return {"pos_embed"}


def test_param_groups_split_by_decay():
    model = WithNoDecayList()
    groups = param_groups(model, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    by_flag = {g[DECAY_KEY]: sorted(names[id(p)] for p in g["params"]) for g in groups}
    assert by_flag[True] == ["mask_token", "proj.weight"]
    assert by_flag[False] == ["norm.bias", "norm.weight", "pos_embed", "proj.bias"]
    assert {g[DECAY_KEY]: g["weight_decay"] for g in groups} == {True: 0.05, False: 0.0}


def test_param_groups_drop_empty_group():
    groups = param_groups(nn.LayerNorm(4), weight_decay=0.1)
    assert [g[DECAY_KEY] for g in groups] == [False]


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_config_follows_run_config(stage):
    cfg = from_dict({"data": {"batch_size": 6}, "optim": {"grad_clip": 2.5},
                     "deepspeed": {"zero_stage": stage, "bf16": True, "grad_accum_steps": 4, "bucket_size": 1000}})
    ds = deepspeed_config(cfg, load_universal=True)
    assert ds["train_micro_batch_size_per_gpu"] == 6
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["gradient_clipping"] == 2.5
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["zero_optimization"]["reduce_bucket_size"] == ds["zero_optimization"]["allgather_bucket_size"] == 1000
    assert ds["bf16"] == {"enabled": True}
    assert ds["checkpoint"]["load_universal"] is True
    assert ("stage3_param_persistence_threshold" in ds["zero_optimization"]) == (stage == 3)


@pytest.mark.slow
def test_single_process_engine_checks(tmp_path):
    """No launcher: gradient accumulation equivalence and per-step lr/wd (see engine_checks.py)."""
    result = tmp_path / "checks.json"
    check(run("engine_checks.py", result, nproc=None))
    out = json.loads(result.read_text())
    for stage, gas in out["gas"].items():
        assert gas["first_micro_is_none"], f"ZeRO {stage}: a non-boundary micro-batch must not report a step"
        assert gas["global_steps"] == [3, 3]
        assert gas["max_param_diff"] <= 1e-6 * gas["param_scale"], f"ZeRO {stage}: GAS=2 x 4 != GAS=1 x 8"
        for accum, whole in gas["norms"]:  # a wrong loss scale would show here (Adam hides it in the update)
            assert accum == pytest.approx(whole, rel=1e-6)
    for stage, hp in out["hparams"].items():
        assert hp["groups"] == [False, True]
        assert hp["decay_err"] < 1e-7, f"ZeRO {stage}: decaying weights must scale by (1 - lr * wd)"
        assert hp["no_decay_err"] == 0.0, f"ZeRO {stage}: biases and norms must not decay"
        assert hp["lr0_err"] == 0.0, f"ZeRO {stage}: lr = 0 must leave the weights unchanged"
        assert hp["zero_grad_norm"] == 0.0
        assert hp["wds"] == {"True": 0.3, "False": 0.0}


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_two_process_bf16_training(tmp_path, stage):
    ranks = train_toy(tmp_path, "run", zero_stage=stage, bf16=True, stop_at=16, batch_size=32, check_ema=True)
    for res in ranks:
        losses = res["losses"]
        assert sum(losses[-3:]) < 0.5 * sum(losses[:3]), f"rank {res['rank']}: loss did not fall: {losses}"
        # Each update moved the target by (1 - m)(online - target), computed in fp32 from the
        # gathered (full) online weights: errors at fp32 rounding, moves far above it.
        assert max(res["ema_errors"]) < 1e-6
        assert min(res["ema_moves"]) > 1e-4
        assert all(g > 0 and g == g for g in res["grad_norms"])
        assert res["global_steps"] == 16
    zero, one = (r["tensors"] for r in ranks)
    assert torch.equal(zero["online"], one["online"]), "online weights differ across ranks"
    assert torch.equal(zero["target"], one["target"]), "EMA targets differ across ranks"
    assert not torch.equal(zero["target"], zero["start_target"]), "the EMA target never moved"
    if stage == 3:
        assert all(r["partitioned"] for r in ranks), "ZeRO-3 should hold only a shard of each parameter"
        assert all(r["init_target_error"] == 0.0 for r in ranks), "init_target missed the gathered weights"
