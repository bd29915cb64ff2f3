"""The training loop: data -> masks -> targets -> forward -> backward/step -> EMA -> metrics -> checkpoint.

Nothing here reads a device value on the host except the stop check at each step boundary (one
tiny all-reduce, jepa/train/stop.py), logging (every `logging.every_steps`) and the optional
loss-spike guard.
"""

from __future__ import annotations

import logging
import time

import torch

from jepa.config import Config
from jepa.train.engine import optimizer_step, set_optim_hparams
from jepa.train.ema import ema_update
from jepa.train.distributed import shutdown
from jepa.train.run import Run, build_run
from jepa.train.stop import RunStopped, StopSignal, stop_on_signal

log = logging.getLogger("jepa.train")


def train(cfg: Config) -> dict[str, float]:
    """Pretrain to `optim.total_steps` (resuming from output_dir when it holds a checkpoint).

    Returns the last logged metrics (rank 0's view, averaged over ranks). Raises `RunStopped` after
    a save when SIGUSR2 or SIGTERM reached any rank."""
    with stop_on_signal() as stop:  # before the build, which can take minutes: no signal is missed
        run = build_run(cfg)
        batches = iter(run.stream)
        try:
            return _loop(run, batches, stop)
        except RunStopped as e:
            log.info("%s", e)  # into train.log, before the resumed run's "resuming from"
            raise
        finally:
            batches.close()  # joins the loader's workers
            run.metrics.close()
            shutdown()


def _loop(run: Run, batches, stop: StopSignal) -> dict[str, float]:
    cfg, engine, model, metrics, guard = run.cfg, run.engine, run.model, run.metrics, run.guard
    device, zero3 = run.dist.device, cfg.deepspeed.zero_stage == 3
    dtype = torch.bfloat16 if cfg.deepspeed.bf16 else torch.float32  # the engine's parameter dtype
    last: dict[str, float] = {}
    step = run.start_step
    end = min(cfg.optim.total_steps, cfg.checkpoint.stop_at_step or cfg.optim.total_steps)
    while step < end:
        lr, wd, momentum = run.schedules.lr(step), run.schedules.wd(step), run.schedules.ema_momentum(step)
        set_optim_hparams(engine, lr, wd)
        grad_norm = None
        while grad_norm is None:  # micro-batches until DeepSpeed reaches the accumulation boundary
            t0 = time.perf_counter()
            batch = next(batches)
            metrics.add_data_wait(time.perf_counter() - t0)
            x = batch["x"].to(device, non_blocking=True)
            masks = [m.to(device, non_blocking=True) for m in batch["masks"]]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.deepspeed.bf16):
                targets = model.compute_targets(x, masks)  # fp32 weights, bf16 matmuls under bf16
            loss, step_metrics = engine(x.to(dtype), masks, targets)
            if guard is not None and guard.is_spike(loss):  # drop this micro-batch, draw another
                continue
            engine.backward(loss)
            grad_norm = optimizer_step(engine)
            metrics.add_flops(run.flops(masks))  # from mask shapes, on the host
            metrics.accumulate({"loss/total": loss, **step_metrics})
        ema_update(run.target, run.online_encoder, momentum, zero3=zero3)  # once per optimizer step
        step += 1
        metrics.end_step()
        stop_signal = stop.agreed(device) if step < end else None  # collective: any rank signalled?
        if step % cfg.logging.repr_every_steps == 0:  # an SVD: only now and then
            metrics.accumulate({"repr/effective_rank": model.effective_rank(targets)})
        if step % cfg.logging.every_steps == 0 or step == end or stop_signal:
            metrics.accumulate({"optim/grad_norm": grad_norm})
            extra = {"optim/lr": lr, "optim/weight_decay": wd, "optim/ema_momentum": momentum}
            if guard is not None:
                extra["guard/skipped_batches"] = guard.skipped
            last = metrics.write(step, extra, skipped=run.stream.skipped)
        if run.online_knn.due(step):  # collective: every rank extracts its share
            metrics.write_scalars(step, run.online_knn(run.target, device=device))
        if step % cfg.checkpoint.every_steps == 0 or step == end or stop_signal:
            run.checkpointer.save(engine, run.target, step=step, rank_state=run.rank_state())
        if stop_signal:
            raise RunStopped(step, stop_signal)  # every rank at the same step, after the same save
    return last
