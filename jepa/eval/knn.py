"""Weighted k-nearest-neighbour classification of frozen features (dinov2 / DINO kNN eval).

Features are L2-normalised, so the dot product is the cosine similarity. Each of a query's k most
similar training samples votes for its class with weight exp(similarity / T); the class scores are
those summed votes. T = 0.07 makes the nearest neighbours count far more than the k-th one.

Queries are handled chunk_size at a time: memory is chunk_size x N_train similarities, and one
similarity matrix per chunk serves every k. Nothing is trained, so there is no held-out split:
every k is reported on the queries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from jepa.eval.holdout import check_labels, top5_k, topk_hits

DEFAULT_KS = (10, 20, 100, 200)
DEFAULT_TEMPERATURE = 0.07


@dataclass(frozen=True)
class KnnEntry:
    """Accuracies with k neighbours; k_used = min(k, number of training samples)."""

    k: int
    k_used: int
    top1: float
    top5: float


@dataclass(frozen=True)
class KnnResult:
    """One entry per requested k, in the order asked."""

    entries: tuple[KnnEntry, ...]
    temperature: float
    top5_k: int
    """The k behind every "top5" figure: min(5, num_classes)."""
    num_train: int
    num_query: int

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "entries": [asdict(e) for e in self.entries]}


def _chunk_scores(query: Tensor, train: Tensor, train_y: Tensor, *, ks: Sequence[int], num_classes: int,
                  temperature: float) -> list[Tensor]:
    """Class scores (B, C) for each k, for normalised query (B, D) against normalised train (N, D)."""
    sims, idx = (query @ train.T).topk(max(ks), dim=1)  # sorted, most similar first
    votes, labels = (sims / temperature).exp(), train_y[idx]
    empty = torch.zeros(len(query), num_classes, device=query.device)
    return [empty.scatter_add(1, labels[:, :k], votes[:, :k]) for k in ks]


def _normalised(x: Tensor, device: torch.device) -> Tensor:
    return F.normalize(x.to(device=device, dtype=torch.float32), dim=1)


def _capped(ks: Sequence[int], num_train: int) -> list[int]:
    if not ks or min(ks) < 1:
        raise ValueError(f"every k must be >= 1, got {list(ks)}")
    if num_train < 1:
        raise ValueError("kNN needs at least one training sample")
    return [min(k, num_train) for k in ks]


@torch.no_grad()
def knn_predict(train_x: Tensor, train_y: Tensor, query_x: Tensor, *, num_classes: int, k: int,
                temperature: float = DEFAULT_TEMPERATURE, chunk_size: int = 1024) -> Tensor:
    """Class scores (N_query, C): sum over the min(k, N_train) most similar of exp(cos / T)."""
    device = train_x.device
    check_labels(train_y, num_classes=num_classes, name="train_y")
    (k_used,) = _capped([k], len(train_x))
    train, train_y = _normalised(train_x, device), train_y.to(device)
    query = _normalised(query_x, device)
    return torch.cat([_chunk_scores(chunk, train, train_y, ks=[k_used], num_classes=num_classes,
                                    temperature=temperature)[0]
                      for chunk in query.split(chunk_size)])


@torch.no_grad()
def knn_probe(train_x: Tensor, train_y: Tensor, query_x: Tensor, query_y: Tensor, *, num_classes: int,
              ks: Sequence[int] = DEFAULT_KS, temperature: float = DEFAULT_TEMPERATURE,
              chunk_size: int = 1024) -> KnnResult:
    """Top-1/top-5 of temperature-weighted kNN on the queries, for each k (capped at N_train).

    train_x (N, D), query_x (M, D): frozen features, any float dtype; computed in float32 on
    train_x's device. Top-5 is top-min(5, num_classes).
    """
    device = train_x.device
    check_labels(train_y, num_classes=num_classes, name="train_y")
    check_labels(query_y, num_classes=num_classes, name="query_y")
    ks_used = _capped(ks, len(train_x))
    train, train_y = _normalised(train_x, device), train_y.to(device)
    query, query_y = _normalised(query_x, device), query_y.to(device)
    k5 = top5_k(num_classes)
    hits = torch.zeros(len(ks_used), 2, dtype=torch.int64, device=device)
    for chunk, chunk_y in zip(query.split(chunk_size), query_y.split(chunk_size)):
        scores = _chunk_scores(chunk, train, train_y, ks=ks_used, num_classes=num_classes,
                               temperature=temperature)
        hits += topk_hits(torch.stack(scores), chunk_y, k=k5)
    rates = (hits.double() / len(query)).tolist()  # the one host read, after every chunk
    entries = tuple(KnnEntry(k=k, k_used=k_used, top1=r[0], top5=r[1])
                    for k, k_used, r in zip(ks, ks_used, rates, strict=True))
    return KnnResult(entries=entries, temperature=temperature, top5_k=k5, num_train=len(train),
                     num_query=len(query))
