"""Everything a training run needs before its first step, built in the one safe order.

Order matters: whatever can refuse the run (the resume point, data settings, model and mask
consistency) is checked before the run folder is written; then the engine (which must know whether
it will load a universal checkpoint), the resumed state, and last the data stream positioned
where the checkpoint left it. After the resume nothing draws from the global random generators
before the first step, so a resumed run draws the noise (drop path, RoPE position augmentation)
an uninterrupted one would have drawn.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from jepa.config import Config, to_yaml
from jepa.config.sizes import is_video_model
from jepa.data.train_stream import DataPosition, TrainStream, build_train_loader, check_train_data
from jepa.eval.online import OnlineKnn
from jepa.masks import build_mask_generator
from jepa.models.compile import compile_blocks, compile_wanted
from jepa.models.factory import build_jepa, input_grid
from jepa.models.jepa import JEPA
from jepa.seeding import seed_rng
from jepa.train.checkpoint import Checkpointer, TrainState
from jepa.train.distributed import DistInfo, init_distributed
from jepa.train.ema import init_target
from jepa.train.engine import build_engine
from jepa.train.flops import FlopModel, mask_lengths, peak_flops, step_flops
from jepa.train.guard import LossSpikeGuard
from jepa.train.metrics import MetricLogger
from jepa.train.schedules import Schedules

log = logging.getLogger("jepa.train")


@dataclass
class Run:
    cfg: Config
    dist: DistInfo
    model: JEPA
    engine: object
    target: nn.Module
    checkpointer: Checkpointer
    stream: TrainStream
    schedules: Schedules
    metrics: MetricLogger
    guard: LossSpikeGuard | None
    online_knn: OnlineKnn
    start_step: int
    flop_model: FlopModel | None = None
    num_tokens: int = 0

    def flops(self, masks: list) -> int:
        """FLOPs of one micro-batch with these masks (0 when the model is not counted: MViT)."""
        if self.flop_model is None:
            return 0
        return step_flops(self.flop_model, batch=masks[0].context.shape[0], num_tokens=self.num_tokens,
                          mask_sets=mask_lengths(masks))

    @property
    def online_encoder(self) -> nn.Module:
        """The context encoder inside the engine (bf16 and partitioned as DeepSpeed made it)."""
        return self.engine.module.context_encoder

    def rank_state(self) -> dict:
        """This rank's own state for a checkpoint: where its data stream stands (with its skip
        counts and error budgets) and the loss-spike guard's history."""
        return {"data": self.stream.position(), "guard": self.guard.state_dict() if self.guard else None}


def setup_logging(output_dir: Path, is_main: bool) -> None:
    """Rank 0 logs INFO to the console and to output_dir/train.log; other ranks only warnings."""
    root = logging.getLogger("jepa")
    root.handlers.clear()
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if is_main:
        handlers.append(logging.FileHandler(output_dir / "train.log"))
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.propagate = False


def build_run(cfg: Config) -> Run:
    dist = init_distributed()
    # Everything that can refuse the run does so before anything is written: the resume point,
    # the data settings, the model (config consistency) and the masks (min_keep).
    checkpointer = Checkpointer(cfg, rank=dist.rank, world_size=dist.world_size)
    point = checkpointer.resume_point()
    clips = is_video_model(cfg)
    check_train_data(cfg, clips=clips)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_jepa(cfg).to(dist.device)
    compiled = compile_blocks(model) if compile_wanted(cfg.model.compile, backbone=cfg.model.backbone,
                                                        device=dist.device) else 0
    grid = input_grid(cfg)
    mask_generator = build_mask_generator(cfg.mask, grid)
    out = Path(cfg.output_dir)
    if dist.is_main:
        (out / "tb").mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(to_yaml(cfg))
    torch.distributed.barrier()
    setup_logging(out, dist.is_main)

    target = model.target_encoder
    engine = build_engine(model.trainable, cfg, world_size=dist.world_size,
                          load_universal=checkpointer.needs_universal(point))
    zero3 = cfg.deepspeed.zero_stage == 3
    init_target(target, engine.module.context_encoder, zero3=zero3)
    state = checkpointer.resume(engine, target)  # restores each rank's RNG streams too
    if state is None:
        seed_rng(cfg.seed, dist.rank)  # ranks draw different dropout / augmentation noise
        log.info("starting %s from step 0 (no checkpoint in %s)", out, checkpointer.root)
    own = _own_state(checkpointer, state)

    stream = build_train_loader(cfg, clips=clips, rank=dist.rank, world_size=dist.world_size,
                                collate_masks=mask_generator, start=own.get("data"))
    guard = None
    if cfg.optim.loss_spike.enabled:
        guard = LossSpikeGuard(window=cfg.optim.loss_spike.window, k=cfg.optim.loss_spike.k)
        if own.get("guard") is not None:
            guard.load_state_dict(own["guard"])
    peak, peak_source = peak_flops(dist.device, bf16=cfg.deepspeed.bf16, override_tflops=cfg.logging.peak_tflops)
    samples_per_step = cfg.data.batch_size * cfg.deepspeed.grad_accum_steps * dist.world_size
    metrics = MetricLogger(tb_dir=out / "tb" if cfg.logging.tensorboard else None, device=dist.device,
                           total_steps=cfg.optim.total_steps, samples_per_step=samples_per_step,
                           tokens_per_sample=math.prod(grid), is_main=dist.is_main, peak_flops=peak)
    metrics.add_text("config", to_yaml(cfg))
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.trainable.parameters())  # ZeRO-3 partitions
    log.info("%d ranks on %s, %.2fM trainable parameters, ZeRO-%d, bf16=%s, token grid %s, %d compiled blocks",
             dist.world_size, dist.device, n_params / 1e6, cfg.deepspeed.zero_stage, cfg.deepspeed.bf16, grid,
             compiled)
    log.info("MFU against %s", f"{peak / 1e12:.3g} TFLOPS ({peak_source})" if peak else peak_source)
    return Run(cfg=cfg, dist=dist, model=model, engine=engine, target=target, checkpointer=checkpointer,
               stream=stream, schedules=Schedules.from_config(cfg), metrics=metrics, guard=guard,
               online_knn=OnlineKnn(cfg, rank=dist.rank, world_size=dist.world_size),
               start_step=state.step if state else 0, flop_model=FlopModel.from_config(cfg),
               num_tokens=math.prod(grid))


def _own_state(checkpointer: Checkpointer, state: TrainState | None) -> dict:
    """This rank's saved state; a rank the checkpoint did not have continues at rank 0's epoch and
    batch with fresh data streams (the checkpointer says so on rank 0)."""
    if state is None:
        return {}
    if state.rank_state is not None:
        return state.rank_state
    data = checkpointer.rank_state(state.info, 0)["data"]
    return {"data": DataPosition(epoch=data.epoch, batch=data.batch)}
