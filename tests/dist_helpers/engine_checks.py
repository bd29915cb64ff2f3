"""Engine checks in one process started without a launcher (no torchrun): writes RESULT.json.

    python tests/dist_helpers/engine_checks.py RESULT.json

- gradient accumulation: GAS=2 x batch 4 gives the same updates and grad norms as GAS=1 x batch 8
  (ZeRO 0 and 2, fp32, with clipping on);
- set_optim_hparams: on a fresh optimizer and zero gradients, a step multiplies decaying weights by
  exactly (1 - lr * wd) and leaves biases and norms alone; lr = 0 leaves every weight unchanged
  (ZeRO 0, 2 and 3).
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys
from pathlib import Path

import torch

from jepa.config import from_dict
from jepa.train.engine import DECAY_KEY, build_engine, optimizer_step, set_optim_hparams

from toy import ToyTrainable, batch, exit_now, flat

HIDDEN = 16


def config(stage: int, *, batch_size: int, grad_accum: int):
    return from_dict({
        "data": {"batch_size": batch_size},
        "optim": {"grad_clip": 0.5, "betas": [0.9, 0.99]},
        "deepspeed": {"zero_stage": stage, "grad_accum_steps": grad_accum, "zero3_persistence_threshold": 0},
    })


def named_full(engine) -> dict[str, torch.Tensor]:
    params = dict(engine.module.named_parameters())
    zero3 = engine.zero_optimization_stage() == 3
    if zero3:
        import deepspeed
        ctx = deepspeed.zero.GatheredParameters(list(params.values()))
    else:
        ctx = contextlib.nullcontext()
    with ctx:
        return {n: p.detach().float().clone() for n, p in params.items()}


def micro_step(engine, x, y) -> torch.Tensor | None:
    loss = engine(x, torch.zeros(x.shape[0], HIDDEN), y)
    engine.backward(loss)
    return optimizer_step(engine)


def gas_equivalence(stage: int) -> dict:
    torch.manual_seed(0)
    model = ToyTrainable(hidden=HIDDEN)
    accum = build_engine(model, config(stage, batch_size=4, grad_accum=2), world_size=1)
    whole = build_engine(copy.deepcopy(model), config(stage, batch_size=8, grad_accum=1), world_size=1)
    norms, first_micro = [], []
    for step in range(3):
        lr = 1e-2 * (step + 1)
        set_optim_hparams(accum, lr, 0.05)
        set_optim_hparams(whole, lr, 0.05)
        x, y = batch(0, 0, step, 8)
        first_micro.append(micro_step(accum, x[:4], y[:4]))
        norm_accum = micro_step(accum, x[4:], y[4:])
        norm_whole = micro_step(whole, x, y)
        norms.append([norm_accum.item(), norm_whole.item()])
    a, b = flat(named_full(accum).values()), flat(named_full(whole).values())
    return {"max_param_diff": (a - b).abs().max().item(), "param_scale": b.abs().max().item(),
            "norms": norms, "first_micro_is_none": all(n is None for n in first_micro),
            "global_steps": [accum.global_steps, whole.global_steps]}


def hparams(stage: int) -> dict:
    torch.manual_seed(1)
    engine = build_engine(ToyTrainable(hidden=HIDDEN), config(stage, batch_size=4, grad_accum=1), world_size=1)
    decays = {g[DECAY_KEY] for g in engine.optimizer.param_groups}
    before = named_full(engine)
    lr, wd = 0.1, 0.3
    set_optim_hparams(engine, lr, wd)
    x, y = batch(0, 0, 0, 4)
    loss = 0.0 * engine(x, torch.zeros(4, HIDDEN), y)  # zero gradients: Adam's update is exactly 0
    engine.backward(loss)
    norm = optimizer_step(engine)
    after = named_full(engine)
    decay_err, still_err = 0.0, 0.0
    for name, p in before.items():
        if p.ndim > 1:
            decay_err = max(decay_err, (after[name] - p * (1 - lr * wd)).abs().max().item())
        else:
            still_err = max(still_err, (after[name] - p).abs().max().item())
    set_optim_hparams(engine, 0.0, wd)
    micro_step(engine, x, y)
    frozen_err = (flat(named_full(engine).values()) - flat(after.values())).abs().max().item()
    return {"decay_err": decay_err, "no_decay_err": still_err, "lr0_err": frozen_err,
            "zero_grad_norm": norm.item(), "groups": sorted(decays),
            "lrs": [g["lr"] for g in engine.optimizer.param_groups],
            "wds": {str(g[DECAY_KEY]): g["weight_decay"] for g in engine.optimizer.param_groups}}


def main(result: Path) -> None:
    out = {"gas": {s: gas_equivalence(s) for s in (0, 2)}, "hparams": {s: hparams(s) for s in (0, 2, 3)}}
    result.write_text(json.dumps(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    exit_now()
