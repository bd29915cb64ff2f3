"""Online kNN during pretraining: every `eval.every_steps` steps, the EMA target encoder's features of
a small labelled set, classified by kNN against a labelled memory, logged as `eval/knn_top1`.

The loss is only a proxy; this number shows whether the representation improves while the run
goes on. It draws nothing from the global random generators (evaluation transforms, an encoder in
eval mode, a loader with its own generator), so a resumed run stays exact.
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn

from jepa.config import Config
from jepa.config.sizes import is_video_model
from jepa.data.eval_stream import build_eval_loader
from jepa.errors import UserError
from jepa.eval.features import Features, extract, gather
from jepa.eval.knn import knn_probe


class OnlineKnn:
    """Call it on every rank at the same steps (it gathers features); rank 0 gets the scalars."""

    def __init__(self, cfg: Config, *, rank: int, world_size: int):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size

    def due(self, step: int) -> bool:
        every = self.cfg.eval.every_steps
        return every > 0 and step % every == 0

    @torch.no_grad()
    def __call__(self, encoder: nn.Module, *, device: torch.device) -> dict[str, float]:
        """{"eval/knn_top1", "eval/seconds"} on rank 0, {} on the others."""
        t0 = time.perf_counter()
        bank = self._features(encoder, self.cfg.eval.bank_urls, device)
        queries = self._features(encoder, self.cfg.data.val_urls, device)
        if self.rank != 0:
            return {}
        for feats, key in ((bank, "eval.bank_urls"), (queries, "data.val_urls")):
            if len(feats) == 0 or bool((feats.labels < 0).any()):
                raise UserError(f"{key}: the online kNN needs labelled samples (a `cls` member or a json "
                                f"`label` in every sample)")
        num_classes = int(max(bank.labels.max(), queries.labels.max())) + 1
        e = self.cfg.eval
        result = knn_probe(bank.pooled.to(device), bank.labels.to(device), queries.pooled.to(device),
                           queries.labels.to(device), num_classes=num_classes, ks=(e.knn_k,),
                           temperature=e.knn_temperature)
        return {"eval/knn_top1": result.entries[0].top1, "eval/seconds": time.perf_counter() - t0}

    def _features(self, encoder: nn.Module, urls: str, device: torch.device) -> Features:
        stream = build_eval_loader(urls, cfg=self.cfg, clips=is_video_model(self.cfg), rank=self.rank,
                                   world_size=self.world_size, batch_size=self.cfg.data.batch_size)
        bf16 = self.cfg.deepspeed.bf16 and device.type == "cuda"
        part = extract(encoder, stream, device=device, n_last_blocks=1, tokens=False, bf16=bf16)
        return gather(part)
