"""The held-out protocol shared by the trained probes (linear, attentive): split, score, choose.

A probe trains several heads (one per learning rate, weight decay...). Picking the best head by
its validation accuracy and then reporting that same accuracy overstates it (V-JEPA's probes pick
the best of ~20 heads on val). Here the head is chosen on a held-out part of the *training*
features, and val is only looked at afterwards: the reported val figure is an honest estimate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from jepa.seeding import derive_seed
from jepa.train.schedules import cosine_ramp


def holdout_split(labels: Tensor, *, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train_idx, holdout_idx): a seeded split of range(len(labels)), stratified per class.

    Each class sends round(fraction * count) of its samples to the held-out part, but at least one
    and never all of them: every class with >= 2 samples is both trained on and held out, a class
    with a single sample stays in train. Which samples go is drawn from a CPU generator seeded with
    derive_seed(seed, purpose="eval-holdout"), so the split is the same on every device and run.
    Both index tensors are sorted, on the labels' device, disjoint, and together cover every index.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must lie in (0, 1), got {fraction}")
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    y = labels.cpu().long()
    if len(y) and int(y.min()) < 0:
        raise ValueError("labels must be >= 0")
    generator = torch.Generator().manual_seed(derive_seed(seed, purpose="eval-holdout"))
    # Shuffle, then stable-sort by label: samples grouped by class, in random order within a class.
    perm = torch.randperm(len(y), generator=generator)
    grouped = perm[torch.argsort(y[perm], stable=True)]
    counts = torch.bincount(y)
    starts = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.arange(len(y)) - starts[y[grouped]]
    n_held = torch.round(fraction * counts).long().clamp(min=1).minimum(counts - 1).clamp(min=0)
    held = rank_in_class < n_held[y[grouped]]
    train_idx = grouped[~held].sort().values
    holdout_idx = grouped[held].sort().values
    return train_idx.to(labels.device), holdout_idx.to(labels.device)


def check_labels(labels: Tensor, *, num_classes: int, name: str) -> None:
    """Refuse labels outside [0, num_classes) here, not as a device-side assert deep in a kernel."""
    if labels.ndim != 1 or labels.dtype != torch.int64:
        raise ValueError(f"{name} must be a 1-D int64 tensor, got {labels.dtype} {tuple(labels.shape)}")
    low, high = (int(labels.min()), int(labels.max())) if len(labels) else (0, 0)
    if low < 0 or high >= num_classes:
        raise ValueError(f"{name} must lie in [0, {num_classes}), got labels in [{low}, {high}]")


def topk_hits(scores: Tensor, labels: Tensor, *, k: int) -> Tensor:
    """Counts of correct top-1 and top-k predictions: scores (..., N, C), labels (N,) -> (..., 2).

    Stays on the scores' device (no host sync) so callers can sum over chunks and read once.
    """
    top = scores.topk(k, dim=-1).indices
    hit = top == labels[:, None]
    return torch.stack([hit[..., 0].sum(-1), hit.any(-1).sum(-1)], dim=-1)


def top5_k(num_classes: int) -> int:
    """The k of "top-5": 5, or num_classes when there are fewer (then top-5 is always 1.0)."""
    return min(5, num_classes)


def choose_head(holdout_top1: Sequence[float]) -> int:
    """Index of the best held-out top-1; ties go to the lowest index (the first in the grid)."""
    return max(range(len(holdout_top1)), key=lambda h: (holdout_top1[h], -h))


@dataclass(frozen=True)
class HeadResult:
    """One trained head: its hyperparameters and its accuracies (fractions in [0, 1])."""

    lr: float
    weight_decay: float
    holdout_top1: float
    holdout_top5: float
    val_top1: float
    val_top5: float


@dataclass(frozen=True)
class ProbeResult:
    """Every head's figures, and the head chosen on held-out top-1 (val played no part in it)."""

    heads: tuple[HeadResult, ...]
    chosen: int
    top5_k: int
    """The k behind every "top5" figure: min(5, num_classes)."""
    num_train: int
    """Samples the heads were trained on (the training features minus the held-out part)."""
    num_holdout: int
    num_val: int

    @property
    def val_top1(self) -> float:
        return self.heads[self.chosen].val_top1

    @property
    def val_top5(self) -> float:
        return self.heads[self.chosen].val_top5

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "heads": [asdict(h) for h in self.heads],
                "val_top1": self.val_top1, "val_top5": self.val_top5}


def head_results(*, settings: Sequence[tuple[float, float]], holdout_hits: Tensor, num_holdout: int,
                 val_hits: Tensor, num_val: int) -> tuple[tuple[HeadResult, ...], int]:
    """HeadResults from (lr, weight_decay) per head and (H, 2) hit counts; and the chosen index.

    The one host read of the counts happens here, after all training is done.
    """
    hold = (holdout_hits.double() / num_holdout).tolist()
    val = (val_hits.double() / num_val).tolist()
    heads = tuple(HeadResult(lr=float(lr), weight_decay=float(wd), holdout_top1=h[0], holdout_top5=h[1],
                             val_top1=v[0], val_top5=v[1])
                  for (lr, wd), h, v in zip(settings, hold, val, strict=True))
    return heads, choose_head([h.holdout_top1 for h in heads])


def minibatches(n: int, *, batch_size: int, epochs: int, seed: int,
                device: torch.device) -> Iterator[tuple[Tensor, float]]:
    """(indices on `device`, cosine lr factor from 1 to 0) for every step of `epochs` seeded passes
    over n samples: the one batch order the trained probes share, whatever their grid."""
    total_steps = epochs * math.ceil(n / batch_size)
    generator = torch.Generator().manual_seed(derive_seed(seed, purpose="probe-order"))
    step = 0
    for _ in range(epochs):
        for batch in torch.randperm(n, generator=generator).to(device).split(batch_size):
            yield batch, cosine_ramp(step, begin=1.0, end=0.0, total_steps=total_steps)
            step += 1
