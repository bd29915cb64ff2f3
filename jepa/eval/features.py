"""Features of a frozen encoder over labelled shards: distributed, batched, optionally cached on disk.

Each rank encodes its share of the shards (`EvalStream`: every sample once across ranks and
workers); the shares are gathered so that every rank holds all features, ordered by sample key,
so the result does not depend on the number of ranks or workers. Per sample:

- `pooled` (D x n_last_blocks): the mean over tokens of each of the last `n_last_blocks` blocks,
  concatenated (the last block is the encoder's normed output; earlier blocks are layer-normed per
  token first, so that every part has the same scale); for the linear probe and kNN.
- `tokens` (T, D), when asked: the output tokens, for the attentive probe.

With several evaluation clips or views per sample (`data.eval_clips`, `data.eval_views`), a sample's
features are the mean over its clips and views.

`shuffle_frames` permutes each clip's frames before the encoder, in an order fixed by the sample key
(the same for every clip and view of a sample, and for every run): the frame-shuffled baseline that
shows whether an encoder reads motion.

The cache key covers the encoder's weights, the shard URLs, the sample geometry, the frame order and
the feature choice, so one extraction serves several probes and a changed input never reuses stale features.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from jepa.data.eval_stream import EvalStream
from jepa.errors import UserError

log = logging.getLogger("jepa.eval")


@dataclass
class Features:
    keys: list[str]
    labels: torch.Tensor
    """(N,) int64."""
    pooled: torch.Tensor
    """(N, D * n_last_blocks) float32."""
    tokens: torch.Tensor | None = None
    """(N, T, D) float16 output tokens (the attentive probe's input), or None."""

    def __len__(self) -> int:
        return len(self.keys)


def cache_key(*, weights_sha1: str, urls: str, geometry: dict, n_last_blocks: int, tokens: bool,
              shuffle_frames: bool = False) -> str:
    blob = json.dumps({"weights": weights_sha1, "urls": urls, "geometry": geometry, "n_last_blocks": n_last_blocks,
                       "tokens": tokens, **({"shuffle_frames": True} if shuffle_frames else {})}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:20]


@torch.no_grad()
def extract(encoder: torch.nn.Module, stream: EvalStream, *, device: torch.device, n_last_blocks: int,
            tokens: bool, bf16: bool, progress: bool = False, shuffle_frames: bool = False) -> Features:
    """This rank's features (in stream order); see `gather` for everyone's."""
    from tqdm import tqdm

    depth = len(encoder.block_dims)
    if not 1 <= n_last_blocks <= depth:
        raise UserError(f"probe.n_last_blocks = {n_last_blocks}: the encoder has {depth} blocks")
    inner = list(range(depth - n_last_blocks, depth - 1))
    keys, views, labels, pooled, kept = [], [], [], [], []
    bar = tqdm(total=stream.expected_samples(), unit="sample", disable=not progress, leave=False)
    for batch in stream:
        x = batch["x"].to(device, non_blocking=True)
        if shuffle_frames:
            x = shuffled_frames(x, batch["key"])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = encoder(x, return_blocks=inner)
        parts = [F.layer_norm(out["blocks"][i][0].float(), out["blocks"][i][0].shape[-1:]).mean(1) for i in inner]
        pooled.append(torch.cat([*parts, out["tokens"].float().mean(1)], dim=1).cpu())
        if tokens:
            kept.append(out["tokens"].half().cpu())
        keys.extend(batch["key"])
        views.extend(batch["view"])
        labels.append(batch["label"])
        bar.update(batch["view"].count(0))
    bar.close()
    if not keys:
        return Features(keys=[], labels=torch.zeros(0, dtype=torch.long), pooled=torch.zeros(0, 0), tokens=None)
    return _mean_over_views(keys, views, torch.cat(labels), torch.cat(pooled), torch.cat(kept) if tokens else None)


def shuffled_frames(clips: torch.Tensor, keys: list[str]) -> torch.Tensor:
    """(B, C, T, H, W) clips with each one's frames in a random order seeded by its sample key."""
    if clips.dim() != 5:
        raise UserError(f"frame shuffling needs clips (B, C, T, H, W), got a batch of shape {tuple(clips.shape)}: "
                        f"it applies to video encoders only")
    orders = [torch.randperm(clips.shape[2], generator=torch.Generator().manual_seed(zlib.crc32(k.encode())))
              for k in keys]
    index = torch.stack(orders).to(clips.device)[:, None, :, None, None].expand_as(clips)
    return clips.gather(2, index)


def _mean_over_views(keys: list[str], views: list[int], labels: torch.Tensor, pooled: torch.Tensor,
                     tokens: torch.Tensor | None) -> Features:
    """One row per sample: the mean over its views (a sample's views all sit in this rank's share)."""
    if len(set(zip(keys, views))) != len(keys):
        raise UserError("the same sample key appears twice in the labelled shards: keys must be unique "
                        "(a shard listed twice in the URLs?)")
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    unique = list(first)
    index = {k: i for i, k in enumerate(unique)}
    rows = torch.tensor([index[k] for k in keys], dtype=torch.long)
    counts = torch.bincount(rows, minlength=len(unique)).float()

    def mean(x: torch.Tensor) -> torch.Tensor:
        sums = torch.zeros(len(unique), *x.shape[1:], dtype=torch.float32).index_add_(0, rows, x.float())
        return (sums / counts.view(-1, *[1] * (x.dim() - 1))).to(x.dtype)

    return Features(keys=unique, labels=labels[torch.tensor(list(first.values()))], pooled=mean(pooled),
                    tokens=mean(tokens) if tokens is not None else None)


def gather(part: Features) -> Features:
    """Every rank's features on every rank, ordered by sample key (one object all-gather)."""
    parts = [part]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, part)
    parts = [p for p in parts if len(p)]
    keys = [k for p in parts for k in p.keys]
    if len(set(keys)) != len(keys):
        raise UserError("the same sample key appears twice in the labelled shards: keys must be unique "
                        "(a shard listed twice in the URLs?)")
    order = sorted(range(len(keys)), key=keys.__getitem__)
    index = torch.tensor(order, dtype=torch.long)
    return Features(keys=[keys[i] for i in order], labels=torch.cat([p.labels for p in parts])[index],
                    pooled=torch.cat([p.pooled for p in parts])[index],
                    tokens=torch.cat([p.tokens for p in parts])[index] if parts and parts[0].tokens is not None
                    else None)


def cached(path: Path | None, compute) -> Features:
    """`compute()`'s features, read from `path` when it exists, else computed and written there (rank 0)."""
    if path is not None and path.is_file():
        log.info("features from the cache %s", path)
        return Features(**torch.load(path, map_location="cpu", weights_only=False))
    features = compute()
    if path is not None and (not dist.is_initialized() or dist.get_rank() == 0):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(vars(features), tmp)
        tmp.replace(path)  # readers never see a half-written file
    return features
