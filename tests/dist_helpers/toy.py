"""A toy JEPA-shaped task for the training-infrastructure tests.

A "context encoder" + "predictor" pair learns a fixed random linear map from noisy inputs, with an
auxiliary term pulling the context features towards an fp32 EMA target encoder's features. Every
input comes from (seed, rank, cursor), and the noise from the global python/numpy/torch RNGs, so
an exact resume needs the data cursor and every rank's RNG state back.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn as nn

from jepa.config import Config, from_dict

IN_DIM, OUT_DIM = 8, 4


def make_encoder(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(IN_DIM, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, hidden))


class ToyTrainable(nn.Module):
    def __init__(self, *, hidden: int):
        super().__init__()
        self.context_encoder = make_encoder(hidden)
        self.predictor = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, OUT_DIM))

    def forward(self, x: torch.Tensor, target_features: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        features = self.context_encoder(x)
        pred = self.predictor(features)
        regression = (pred.float() - y).pow(2).mean()
        alignment = (features.float() - target_features).pow(2).mean()
        return regression + 0.1 * alignment


def batch(seed: int, rank: int, cursor: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The cursor-th micro-batch of `rank`: inputs and the teacher's regression targets."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + rank * 10_007 + cursor)
    teacher = torch.Generator().manual_seed(seed)
    w = torch.randn(IN_DIM, OUT_DIM, generator=teacher)
    x = torch.randn(size, IN_DIM, generator=g)
    return x, x @ w


def noise_like(x: torch.Tensor) -> torch.Tensor:
    """Input noise drawn from the global RNGs (python, numpy and torch all take part)."""
    scale = 0.05 * (1.0 + random.random()) * (1.0 + float(np.random.rand()))
    return scale * torch.randn(x.shape)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().float().flatten().cpu() for t in tensors])


def make_config(spec: dict) -> Config:
    """The run config of a train_toy.py spec (the toy's width is model.embed_dim)."""
    return from_dict({
        "output_dir": spec["output_dir"], "seed": 3,
        "model": {"embed_dim": spec["hidden"], "num_heads": 2},
        "data": {"batch_size": spec["batch_size"]},
        "optim": {"total_steps": spec["total_steps"], "warmup_steps": 2, "lr": 2e-2, "start_lr": 2e-3,
                  "final_lr": 1e-3, "weight_decay": 0.01, "final_weight_decay": 0.05, "grad_clip": 1.0},
        "ema": {"momentum": 0.9, "final_momentum": 0.99},
        "deepspeed": {"zero_stage": spec["zero_stage"], "bf16": spec["bf16"],
                      "grad_accum_steps": spec["grad_accum"], "zero3_persistence_threshold": 0},
        "checkpoint": {"every_steps": spec["every_steps"], "keep_last": spec["keep_last"]},
    })


def exit_now() -> None:
    """End a finished helper process the way `jepa train` ends (so its tests exercise that shutdown)."""
    from jepa.train.distributed import shutdown

    shutdown()
