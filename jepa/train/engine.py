"""DeepSpeed setup for the trainable part of the model: param groups, ZeRO stage, bf16, accumulation.

    engine = build_engine(jepa.trainable, cfg, world_size=dist.world_size)
    for each micro-batch:
        loss = engine(...)                     # the module's forward
        engine.backward(loss)                  # divides by grad_accum_steps (mean over micro-batches)
        grad_norm = optimizer_step(engine)     # None until the last micro-batch of a step
        if grad_norm is not None:              # an optimizer step happened: EMA, schedules, logging
            ...
    set_optim_hparams(engine, lr=schedules.lr(step), wd=schedules.wd(step))   # before each step

The same code runs on CPU (gloo) and GPU (NCCL): the backend comes from DeepSpeed's accelerator.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import torch
import torch.nn as nn

from jepa.config import Config

DECAY_KEY = "apply_weight_decay"
"""Param-group key: True for the group whose weight decay follows the schedule, False for the group
that never decays (biases, norms, other 1-D params)."""


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices and embeddings, none on biases, norms and 1-D params.

    Names in the module's timm-style `no_weight_decay()` set (e.g. position embeddings) also skip
    weight decay. Frozen parameters are left out. Empty groups are dropped.
    """
    skip = set(module.no_weight_decay()) if hasattr(module, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, DECAY_KEY: True},
              {"params": no_decay, "weight_decay": 0.0, DECAY_KEY: False}]
    return [g for g in groups if g["params"]]


def deepspeed_config(cfg: Config, *, load_universal: bool = False) -> dict[str, Any]:
    """The DeepSpeed config dict for a run (batch per rank, accumulation, clipping, ZeRO, bf16)."""
    ds = cfg.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage, "reduce_bucket_size": ds.bucket_size,
                            "allgather_bucket_size": ds.bucket_size}
    if ds.zero_stage == 3:
        zero["stage3_param_persistence_threshold"] = ds.zero3_persistence_threshold
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": ds.grad_accum_steps,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": ds.bf16},
        # The loop logs; DeepSpeed's own periodic prints would only duplicate it.
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        "checkpoint": {"load_universal": load_universal, "tag_validation": "FAIL"},
    }


def ensure_process_group() -> None:
    """Start the process group DeepSpeed needs, also for a single process started without a launcher.

    Under torchrun/srun the launcher's RANK/WORLD_SIZE/MASTER_* variables are used as they are. A
    lone process gets a one-rank group on a free local port (DeepSpeed insists on a process group
    and on LOCAL_RANK even then). The backend is the accelerator's: NCCL on GPUs, gloo on CPUs.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    import deepspeed

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    deepspeed.init_distributed(auto_mpi_discovery=False, verbose=False)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_engine(trainable: nn.Module, cfg: Config, *, world_size: int, load_universal: bool = False):
    """Wrap `trainable` in a DeepSpeed engine with AdamW over `param_groups`.

    `load_universal` must be True when the engine will load a universal checkpoint (a resume on
    another world size; see `Checkpointer.needs_universal`): DeepSpeed reads it from its config.
    With bf16 the engine casts the whole module to bf16 (keep fp32 copies, like the EMA target,
    outside it). Call `set_optim_hparams` before every optimizer step: the optimizer starts with
    lr = wd = 0, because DeepSpeed's ZeRO-0 bf16 wrapper takes one zero-gradient AdamW step while
    it sets up, and with a nonzero lr * wd that step would already shrink the initial weights.
    """
    import deepspeed

    ensure_process_group()
    actual = torch.distributed.get_world_size()
    if actual != world_size:
        raise RuntimeError(f"build_engine(world_size={world_size}) but the process group has {actual} ranks")
    o = cfg.optim
    optimizer = torch.optim.AdamW(param_groups(trainable, 0.0), lr=0.0, betas=tuple(o.betas), eps=o.eps)
    engine, *_ = deepspeed.initialize(model=trainable, optimizer=optimizer,
                                      config=deepspeed_config(cfg, load_universal=load_universal))
    return engine


def set_optim_hparams(engine, lr: float, wd: float) -> None:
    """Set this step's learning rate on every group and weight decay on the decaying group(s)."""
    for group in engine.optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = wd if group[DECAY_KEY] else 0.0


def optimizer_step(engine) -> torch.Tensor | None:
    """`engine.step()` for one micro-batch; the global grad norm if an optimizer step happened, else None.

    Call it after every `engine.backward`; act on optimizer steps (EMA update, step counter) only
    when it returns a tensor, so nothing runs per micro-batch by mistake. The norm is the
    pre-clipping 2-norm over all ranks' gradients, a 0-d fp32 tensor on the device (NaN if
    DeepSpeed was told not to compute it): `.item()` is a host sync, so the loop reads it only
    when it logs.
    """
    if not engine.is_gradient_accumulation_boundary():
        engine.step()  # accumulates only; DeepSpeed counts the micro-step
        return None
    own_norm = None
    if engine.optimizer is engine.basic_optimizer:
        # A plain torch optimizer (ZeRO 0, fp32) leaves no norm behind: take it before the step
        # zeroes the gradients (they are already all-reduced, so the local norm is the global one).
        own_norm = _grad_norm(engine.module)
    engine.step()
    norm = engine.get_global_grad_norm() if own_norm is None else own_norm
    # DeepSpeed hands back a float or a tensor depending on the ZeRO stage and precision.
    return torch.as_tensor(float("nan") if norm is None else norm, dtype=torch.float32, device=engine.device)


def _grad_norm(module: nn.Module) -> torch.Tensor:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros((), device=next(module.parameters()).device)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())
