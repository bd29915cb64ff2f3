"""Many linear heads on frozen features, trained together in one pass (dinov2 `eval/linear.py`).

One head per (lr, weight decay) in the grid. The heads are one batched weight (H, D, C) and bias
(H, C); every step feeds the same minibatch to all of them, and the loss is the *sum* over heads of
each head's mean cross-entropy, so head h receives exactly the gradient it would get trained alone.
The update is written out by hand so that lr and weight decay can differ per head; it is
torch.optim.SGD(momentum=0.9) with L2 weight decay on the weight and none on the bias.

SGD with momentum rather than AdamW: it is dinov2's choice, so dinov2's lr grid (1e-5 .. 0.1, scaled
by batch/256) carries over; softmax regression on standardised features is convex and well
conditioned, so Adam's per-coordinate step sizes buy little; and it keeps one state tensor per head
instead of two.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from jepa.eval.holdout import (ProbeResult, check_labels, head_results, holdout_split, minibatches,
                               top5_k, topk_hits)

MOMENTUM = 0.9
LR_REFERENCE_BATCH = 256
"""Each grid lr is multiplied by batch_size / 256 (dinov2's linear scaling rule)."""


@dataclass(frozen=True)
class LinearHeads:
    """H linear classifiers sharing one input: weight (H, D, C), bias (H, C)."""

    weight: Tensor
    bias: Tensor

    def logits(self, x: Tensor) -> Tensor:
        """(N, D) -> (H, N, C)."""
        return torch.einsum("nd,hdc->hnc", x, self.weight) + self.bias[:, None, :]


@dataclass(frozen=True)
class LinearProbeResult(ProbeResult):
    """ProbeResult of the linear heads; `lr` of each head is the grid value, before scaling."""

    lr_scale: float
    """batch_size / 256: the factor every grid lr was multiplied by."""
    epochs: int
    batch_size: int


def train_linear_heads(x: Tensor, y: Tensor, *, num_classes: int, lrs: Sequence[float],
                       weight_decays: Sequence[float], epochs: int, batch_size: int,
                       seed: int) -> LinearHeads:
    """One head per (lrs[h], weight_decays[h]), trained on float32 x (N, D), y (N,) by SGD.

    lrs are used as given (no batch scaling here). The lr of every head follows a cosine from its
    value at step 0 to 0 at epochs * ceil(N / batch_size). Each epoch visits the samples in the
    order torch.randperm(N) drawn from a CPU generator seeded with derive_seed(seed,
    purpose="probe-order"), in batches of `batch_size` (the last one smaller): the same for any
    number of heads. Heads start at zero: the problem is convex, and a random start would differ
    between a head trained alone and the same head trained in a grid.
    """
    if len(lrs) != len(weight_decays):
        raise ValueError(f"{len(lrs)} lrs for {len(weight_decays)} weight decays")
    device, (n, dim), num_heads = x.device, x.shape, len(lrs)
    weight = torch.zeros(num_heads, dim, num_classes, device=device, requires_grad=True)
    bias = torch.zeros(num_heads, num_classes, device=device, requires_grad=True)
    heads = LinearHeads(weight=weight, bias=bias)
    momentum_w, momentum_b = torch.zeros_like(weight), torch.zeros_like(bias)
    base_lr = torch.tensor(lrs, dtype=torch.float32, device=device)
    wd = torch.tensor(weight_decays, dtype=torch.float32, device=device)[:, None, None]
    for batch, factor in minibatches(n, batch_size=batch_size, epochs=epochs, seed=seed, device=device):
        logits = heads.logits(x[batch])  # (H, B, C)
        target = y[batch][:, None].expand(-1, num_heads)
        # (B, C, H) against (B, H): per-head mean over the batch, then summed over heads.
        loss = F.cross_entropy(logits.permute(1, 2, 0), target, reduction="none").mean(0).sum()
        grad_w, grad_b = torch.autograd.grad(loss, (weight, bias))
        lr = base_lr * factor
        with torch.no_grad():
            momentum_w.mul_(MOMENTUM).add_(grad_w + wd * weight)
            momentum_b.mul_(MOMENTUM).add_(grad_b)
            weight.sub_(lr[:, None, None] * momentum_w)
            bias.sub_(lr[:, None] * momentum_b)
    return LinearHeads(weight=weight.detach(), bias=bias.detach())


@torch.no_grad()
def score_linear_heads(heads: LinearHeads, x: Tensor, y: Tensor, *, k: int, batch_size: int) -> Tensor:
    """(H, 2) counts of top-1 and top-k hits; x in chunks so memory is H x batch_size x C."""
    hits = torch.zeros(heads.weight.shape[0], 2, dtype=torch.int64, device=x.device)
    for start in range(0, len(x), batch_size):
        hits += topk_hits(heads.logits(x[start:start + batch_size]), y[start:start + batch_size], k=k)
    return hits


def linear_probe(train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor, *, num_classes: int,
                 lrs: Sequence[float], weight_decays: Sequence[float], epochs: int, batch_size: int,
                 holdout_fraction: float, seed: int) -> LinearProbeResult:
    """Train a linear head per (lr, weight decay) on part of train, choose one on the rest, report val.

    train_x (N, D) and val_x (M, D) are frozen features (any float dtype; computed in float32),
    train_y / val_y int64 class indices; everything runs on train_x's device. The grid is
    lrs x weight_decays, lr-major; each lr is scaled by batch_size / 256. The head with the best
    top-1 on `holdout_split(train_y, fraction=holdout_fraction, seed=seed)` is chosen (ties: the
    first), and only then is val consulted.
    """
    check_labels(train_y, num_classes=num_classes, name="train_y")
    check_labels(val_y, num_classes=num_classes, name="val_y")
    device = train_x.device
    train_y = train_y.to(device)
    fit_idx, hold_idx = holdout_split(train_y, fraction=holdout_fraction, seed=seed)
    fit_x = train_x[fit_idx].float()
    # Standardise with the statistics of the part the heads train on (not held-out, not val): one
    # lr grid then suits encoders whose feature scales differ by orders of magnitude. A feature
    # constant on that part keeps scale 1 rather than blowing up on val.
    mean, std = fit_x.mean(0), fit_x.std(0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))

    def standardise(x: Tensor) -> Tensor:
        return (x.to(device=device, dtype=torch.float32) - mean) / std

    settings = list(itertools.product(lrs, weight_decays))
    lr_scale = batch_size / LR_REFERENCE_BATCH
    heads = train_linear_heads(standardise(fit_x), train_y[fit_idx], num_classes=num_classes,
                               lrs=[lr * lr_scale for lr, _ in settings],
                               weight_decays=[wd for _, wd in settings],
                               epochs=epochs, batch_size=batch_size, seed=seed)
    k = top5_k(num_classes)
    hold_hits = score_linear_heads(heads, standardise(train_x[hold_idx]), train_y[hold_idx], k=k,
                                   batch_size=batch_size)
    val_hits = score_linear_heads(heads, standardise(val_x), val_y.to(device), k=k, batch_size=batch_size)
    results, chosen = head_results(settings=settings, holdout_hits=hold_hits, num_holdout=len(hold_idx),
                                   val_hits=val_hits, num_val=len(val_y))
    return LinearProbeResult(heads=results, chosen=chosen, top5_k=k, num_train=len(fit_idx),
                             num_holdout=len(hold_idx), num_val=len(val_y), lr_scale=lr_scale,
                             epochs=epochs, batch_size=batch_size)
