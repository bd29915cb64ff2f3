"""The EMA target encoder: target = m * target + (1 - m) * online, once per optimizer step.

The target is a plain fp32 module kept outside the DeepSpeed engine (a bf16 engine would cast it,
and a bf16 EMA with m = 0.996 barely moves: the increment is below bf16's resolution). The online
side is the engine's context encoder: bf16 under bf16 (cast up before the lerp) and, under
ZeRO-3, partitioned across ranks. For ZeRO-3 the online parameters are gathered read-only, in
buckets of bounded size so that the full model never has to sit on one rank at once; every rank
then updates its own full copy of the target, so the targets stay identical across ranks.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn

GATHER_BUCKET_NUMEL = 50_000_000
"""Most online elements gathered at once under ZeRO-3 (100 MB in bf16)."""


def _matched_params(target: nn.Module, online: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(target, online) parameter pairs by name; any difference in names or shapes is an error."""
    t_named = dict(target.named_parameters())
    o_named = dict(online.named_parameters())
    if t_named.keys() != o_named.keys():
        missing = sorted(o_named.keys() - t_named.keys())[:5]
        extra = sorted(t_named.keys() - o_named.keys())[:5]
        raise ValueError(f"EMA target and online encoder differ in parameter names: online-only {missing}, "
                         f"target-only {extra}; the target must be a copy of the context encoder")
    pairs = []
    for name, t in t_named.items():
        o = o_named[name]
        shape = getattr(o, "ds_shape", o.shape)  # ZeRO-3 keeps the true shape in ds_shape
        if t.shape != shape:
            raise ValueError(f"EMA target parameter {name} has shape {tuple(t.shape)}, online {tuple(shape)}")
        if t.dtype != torch.float32:
            raise ValueError(f"EMA target parameter {name} is {t.dtype}; keep the target in float32")
        pairs.append((t, o))
    return pairs


def _buckets(pairs: list[tuple[torch.Tensor, torch.Tensor]], max_numel: int) -> Iterator[list]:
    bucket, size = [], 0
    for t, o in pairs:
        if bucket and size + t.numel() > max_numel:
            yield bucket
            bucket, size = [], 0
        bucket.append((t, o))
        size += t.numel()
    if bucket:
        yield bucket


def _gathered(online: list[torch.Tensor], zero3: bool):
    """Full online values for the duration of the block (read-only gather under ZeRO-3)."""
    if not zero3:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(online)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float, *, zero3: bool,
               bucket_numel: int = GATHER_BUCKET_NUMEL) -> None:
    """target <- momentum * target + (1 - momentum) * online, for every parameter, in fp32.

    Call once per optimizer step (never per micro-batch); under ZeRO-3 every rank must call it
    (the gather is collective). `momentum` = 1 leaves the target untouched.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must lie in [0, 1], got {momentum}")
    pairs = _matched_params(target, online)
    if momentum == 1.0:
        return
    for bucket in _buckets(pairs, bucket_numel):
        t_params = [t for t, _ in bucket]
        with _gathered([o for _, o in bucket], zero3):
            # No copy for fp32 online params; an upcast copy for bf16 ones (the lerp runs in fp32).
            o_values = [o.detach().to(device=t.device, dtype=torch.float32) for t, o in bucket]
            torch._foreach_lerp_(t_params, o_values, 1.0 - momentum)


@torch.no_grad()
def init_target(target: nn.Module, online: nn.Module, *, zero3: bool,
                bucket_numel: int = GATHER_BUCKET_NUMEL) -> None:
    """Copy the online weights into the fp32 target (works on a partitioned ZeRO-3 model too).

    A target made by deep-copying the context encoder before `build_engine` needs no call; use
    this when the target is built separately, e.g. after the engine has partitioned the online
    model (a deep copy of a ZeRO-3 module copies empty shards). Buffers are copied as well.
    """
    pairs = _matched_params(target, online)
    for bucket in _buckets(pairs, bucket_numel):
        with _gathered([o for _, o in bucket], zero3):
            for t, o in bucket:
                t.copy_(o.detach())
    online_buffers = dict(online.named_buffers())
    for name, buf in target.named_buffers():
        if name in online_buffers:
            buf.copy_(online_buffers[name])
