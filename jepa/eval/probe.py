"""One probe run: features of a frozen encoder on labelled train and val shards, then the probes.

Every rank extracts its share of the features (see `features`); the probes themselves are cheap
next to that and run on rank 0 only. Every probe chooses its setting (lr and weight decay, or k)
on a held-out part of the training features and only then reports on val.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.distributed as dist

from jepa.config import Config, ProbeConfig
from jepa.config.sizes import is_video_model
from jepa.data import streams
from jepa.data.eval_stream import build_eval_loader
from jepa.data.skips import SkipLog
from jepa.data.transforms import IMAGE_EXTS, VIDEO_EXTS
from jepa.errors import UserError
from jepa.eval.attentive import attentive_probe
from jepa.eval.encoder import FrozenEncoder
from jepa.eval.features import Features, cache_key, cached, extract, gather
from jepa.eval.knn import knn_probe
from jepa.eval.linear import linear_probe
from jepa.eval.holdout import holdout_split

log = logging.getLogger("jepa.eval")

def probe_encoder(encoder: FrozenEncoder, *, cfg: Config, train_urls: str, val_urls: str, kinds: tuple[str, ...],
                  device: torch.device, progress: bool, shuffle_frames: bool = False) -> dict | None:
    """{probe kind: its results} on rank 0 (None on the other ranks); collective over all ranks.
    `shuffle_frames`: train and report on clips whose frames are shuffled (jepa.eval.features)."""
    if shuffle_frames and not is_video_model(cfg):
        raise UserError("frame shuffling applies to video encoders, and this is an image encoder: "
                        "drop --shuffle-frames")
    tokens = "attentive" in kinds
    encoder.module.to(device)
    train, val = (_features(encoder, cfg, urls, tokens=tokens, device=device, progress=progress,
                            shuffle_frames=shuffle_frames) for urls in (train_urls, val_urls))
    encoder.module.cpu()
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    num_classes = _check_labels(train, val, train_urls=train_urls, val_urls=val_urls)
    p = cfg.probe
    results = {}
    if "linear" in kinds:
        r = linear_probe(train.pooled.to(device), train.labels.to(device), val.pooled.to(device),
                         val.labels.to(device), num_classes=num_classes, lrs=p.linear_lrs,
                         weight_decays=p.linear_weight_decays, epochs=p.linear_epochs,
                         batch_size=p.linear_batch_size, holdout_fraction=p.holdout_fraction, seed=p.seed)
        results["linear"] = _with_choice(r.to_dict())
    if "knn" in kinds:
        results["knn"] = _knn(train, val, p, num_classes=num_classes, device=device)
    if "attentive" in kinds:
        heads = next(h for h in (16, 12, 8, 6, 4, 3, 2, 1) if train.tokens.shape[-1] % h == 0)
        r = attentive_probe(train.tokens.float().to(device), train.labels.to(device), val.tokens.float().to(device),
                            val.labels.to(device), num_classes=num_classes, lrs=p.attentive_lrs,
                            epochs=p.attentive_epochs, batch_size=p.attentive_batch_size,
                            holdout_fraction=p.holdout_fraction, seed=p.seed, num_heads=heads)
        results["attentive"] = _with_choice(r.to_dict())
    for r in results.values():
        r.update(num_classes=num_classes, train_samples=len(train), val_samples=len(val))
    return results


def _features(encoder: FrozenEncoder, cfg: Config, urls: str, *, tokens: bool, device: torch.device,
              progress: bool, shuffle_frames: bool) -> Features:
    clips = is_video_model(cfg)
    _check_media(urls, clips=clips)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    stream = build_eval_loader(urls, cfg=cfg, clips=clips, rank=rank, world_size=world,
                               batch_size=cfg.probe.batch_size)
    path = None
    if cfg.probe.cache_dir:
        d = cfg.data
        geometry = {"image_size": d.image_size, "num_frames": d.num_frames if clips else 0,
                    "frame_step": d.frame_step, "target_fps": d.target_fps, "eval_clips": d.eval_clips,
                    "eval_views": d.eval_views}
        key = cache_key(weights_sha1=encoder.source["weights_sha1"], urls=urls, geometry=geometry,
                        n_last_blocks=cfg.probe.n_last_blocks, tokens=tokens, shuffle_frames=shuffle_frames)
        path = Path(cfg.probe.cache_dir) / f"features-{key}.pt"
    bf16 = cfg.probe.bf16 and device.type == "cuda"
    return cached(path, lambda: gather(extract(encoder.module, stream, device=device,
                                               n_last_blocks=cfg.probe.n_last_blocks, tokens=tokens, bf16=bf16,
                                               progress=progress, shuffle_frames=shuffle_frames)))


def _check_media(urls: str, *, clips: bool) -> None:
    """A video encoder reads images as static clips; an image encoder cannot read videos: refuse that
    before any work, from the first sample of the first shard."""
    if clips:
        return
    first = streams.expand_urls(urls)[0]
    sample = next(iter(streams.read_shard(first, SkipLog(window=None))), None)
    if sample is not None and any(e in VIDEO_EXTS for e in sample.members) \
            and not any(e in IMAGE_EXTS for e in sample.members):
        raise UserError(f"{first} holds videos but the encoder takes images (its config's model and mask "
                        f"settings describe an image model): probe a video encoder on video shards")


def _check_labels(train: Features, val: Features, *, train_urls: str, val_urls: str) -> int:
    for feats, urls, name in ((train, train_urls, "--train"), (val, val_urls, "--val")):
        if len(feats) == 0:
            raise UserError(f"{name} {urls}: no sample could be read")
        unlabelled = int((feats.labels < 0).sum())
        if unlabelled:
            raise UserError(f"{name} {urls}: {unlabelled} of {len(feats)} samples have no label (a `cls` "
                            f"member or a json `label`): a probe needs labelled shards")
    train_classes, val_classes = set(train.labels.tolist()), set(val.labels.tolist())
    if not val_classes <= train_classes:
        extra = sorted(val_classes - train_classes)
        raise UserError(f"--val holds classes {extra[:10]} that --train never shows (train has "
                        f"{len(train_classes)} classes, val {len(val_classes)}): the two shard sets must share "
                        f"one class map")
    return max(train_classes) + 1


def _knn(train: Features, val: Features, p: ProbeConfig, *, num_classes: int, device: torch.device) -> dict:
    """kNN with k chosen on the held-out part of train, then every k reported on val."""
    fit, hold = holdout_split(train.labels, fraction=p.holdout_fraction, seed=p.seed)
    x, y = train.pooled.to(device), train.labels.to(device)
    kwargs = dict(num_classes=num_classes, ks=p.knn_k, temperature=p.knn_temperature)
    on_holdout = knn_probe(x[fit.to(device)], y[fit.to(device)], x[hold.to(device)], y[hold.to(device)], **kwargs)
    on_val = knn_probe(x, y, val.pooled.to(device), val.labels.to(device), **kwargs).to_dict()
    best = max(range(len(on_holdout.entries)), key=lambda i: (on_holdout.entries[i].top1, -i))
    for entry, held in zip(on_val["entries"], on_holdout.entries):
        entry["holdout_top1"] = held.top1
    chosen = on_val["entries"][best]
    return {**on_val, "chosen": best, "chosen_label": f"k={chosen['k']}", "val_top1": chosen["top1"],
            "val_top5": chosen["top5"]}


def _with_choice(result: dict) -> dict:
    chosen = result["heads"][result["chosen"]]
    for i, head in enumerate(result["heads"]):
        head["chosen"] = i == result["chosen"]
    label = f"lr={chosen['lr']:g}" + (f", wd={chosen['weight_decay']:g}" if "weight_decay" in chosen else "")
    return {**result, "chosen_label": label}

