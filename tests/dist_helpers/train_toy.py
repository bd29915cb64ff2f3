"""Train the toy task with the real engine, EMA, schedules and checkpointer; write what happened.

    python -m torch.distributed.run --nproc_per_node 2 tests/dist_helpers/train_toy.py SPEC.json

SPEC keys: output_dir, result_dir, zero_stage, bf16, stop_at (optimizer steps to reach),
total_steps, batch_size, grad_accum, every_steps, keep_last, hidden, check_ema (verify each EMA
update against an fp32 reference), crash_rank/crash_step (os._exit in the middle of that save).
Each rank writes result_dir/rank{r}.json (losses, grad norms, EMA errors, steps) and rank{r}.pt
(full online weights and EMA target at the start, after any resume, and at the end).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path

import torch

from jepa.seeding import seed_rng
from jepa.train.checkpoint import Checkpointer, tag_for
from jepa.train.ema import ema_update, init_target
from jepa.train.engine import build_engine, ensure_process_group, optimizer_step, set_optim_hparams
from jepa.train.schedules import Schedules

from toy import ToyTrainable, batch, exit_now, flat, make_config, make_encoder, noise_like


def gathered(module, zero3: bool):
    if not zero3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(module.parameters()))


def online_flat(module, zero3: bool) -> torch.Tensor:
    with gathered(module, zero3):
        return flat(module.parameters())


def crash_hook(spec: dict, rank: int):
    if spec.get("crash_step") is None:
        return None

    def hook(tag_dir: Path) -> None:
        if rank == spec["crash_rank"] and tag_dir.name == tag_for(spec["crash_step"]):
            os._exit(17)  # a hard death: no cleanup, no exception handling
    return hook


def adam_steps(engine) -> int:
    return max(int(s["step"]) for s in engine.basic_optimizer.state.values())


def main(spec: dict) -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    ensure_process_group()
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    cfg = make_config(spec)
    zero3 = cfg.deepspeed.zero_stage == 3
    dtype = torch.bfloat16 if cfg.deepspeed.bf16 else torch.float32
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    trainable = ToyTrainable(hidden=cfg.model.embed_dim)
    target = make_encoder(cfg.model.embed_dim)
    target.load_state_dict(trainable.context_encoder.state_dict())
    target.requires_grad_(False)

    ckpt = Checkpointer(cfg, rank=rank, world_size=world, before_commit=crash_hook(spec, rank))
    engine = build_engine(trainable, cfg, world_size=world,
                          load_universal=ckpt.needs_universal(ckpt.resume_point()))
    online = engine.module.context_encoder
    out: dict = {"rank": rank, "world": world, "losses": [], "grad_norms": [], "ema_errors": []}
    state = ckpt.resume(engine, target)
    if state is None:
        seed_rng(cfg.seed, rank)
        step, cursor = 0, 0
    else:
        step, cursor = state.step, (state.rank_state or {"cursor": 10_000})["cursor"]
        out.update(resumed_step=state.step, resumed_rank_state=state.rank_state)
    tensors = {"start_online": online_flat(online, zero3), "start_target": flat(target.parameters())}
    if zero3:
        out["partitioned"] = all(p.ds_tensor.numel() < p.ds_numel for p in online.parameters() if p.ds_numel > 1)
        with torch.random.fork_rng():  # leave the training RNG stream as it is
            fresh = make_encoder(cfg.model.embed_dim)
        init_target(fresh, online, zero3=True)
        out["init_target_error"] = (flat(fresh.parameters()) - online_flat(online, zero3)).abs().max().item()

    sched = Schedules.from_config(cfg)
    while step < spec["stop_at"]:
        set_optim_hparams(engine, sched.lr(step), sched.wd(step))
        total, grad_norm = 0.0, None
        for _ in range(cfg.deepspeed.grad_accum_steps):
            x, y = batch(cfg.seed, rank, cursor, cfg.data.batch_size)
            cursor += 1
            with torch.no_grad():
                target_features = target(x)
            loss = engine((x + noise_like(x)).to(dtype), target_features, y)
            engine.backward(loss)
            total += loss.item() / cfg.deepspeed.grad_accum_steps
            grad_norm = optimizer_step(engine)
        assert grad_norm is not None, "the last micro-batch of a step must step the optimizer"
        momentum = sched.ema_momentum(step)
        before = flat(target.parameters())
        reference = before + (1 - momentum) * (online_flat(online, zero3) - before) if spec["check_ema"] else None
        ema_update(target, online, momentum, zero3=zero3)
        if reference is not None:
            out["ema_errors"].append((flat(target.parameters()) - reference).abs().max().item())
            out.setdefault("ema_moves", []).append((flat(target.parameters()) - before).abs().max().item())
        out["losses"].append(total)
        out["grad_norms"].append(grad_norm.item())
        step += 1
        if step % cfg.checkpoint.every_steps == 0 or step == spec["stop_at"]:
            ckpt.save(engine, target, step=step, rank_state={"cursor": cursor, "rank": rank})

    tensors.update(online=online_flat(online, zero3), target=flat(target.parameters()))
    out.update(final_step=step, cursor=cursor, global_steps=engine.global_steps, adam_steps=adam_steps(engine))
    result_dir = Path(spec["result_dir"])
    result_dir.mkdir(parents=True, exist_ok=True)
    torch.save(tensors, result_dir / f"rank{rank}.pt")
    (result_dir / f"rank{rank}.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main(json.loads(Path(sys.argv[1]).read_text()))
    exit_now()
