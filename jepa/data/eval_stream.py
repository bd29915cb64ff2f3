"""The evaluation stream: every sample exactly once across ranks and workers, in order.

Shards are split by rank, then by worker, read once in order, no resampling and no shuffling.
Ranks can hold different numbers of samples (and a worker may hold no shard): see `EvalStream`.
Bad samples are skipped and counted by kind (jepa.data.skips); the error budget is applied in the
main process to the merged counts of all workers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils.data import IterableDataset

from jepa.config import Config
from jepa.data import streams
from jepa.data.loader import checked_spec, loader, local_path, manifest_counts, pack, unpack, worker_id
from jepa.data.skips import SampleSkip, SkipLog
from jepa.data.transforms import SampleSpec, collate, decode_sample


@dataclass(frozen=True)
class _EvalPlan:
    shards: tuple[str, ...]  # this rank's shards
    spec: SampleSpec
    batch_size: int
    where: str


class _EvalWorkerData(IterableDataset):
    """One worker's share of its rank's shards, in order, batched; a final tally of its skips."""

    def __init__(self, plan: _EvalPlan):
        self.plan = plan

    def __iter__(self) -> Iterator[dict]:
        worker, workers = worker_id()
        p = self.plan
        # the main process applies the error budget to the merged counts, so no budget here
        skips = SkipLog(window=None, where=f"{p.where} worker {worker}")
        items: list[tuple] = []
        for url in p.shards[worker::workers]:
            for sample in streams.read_shard(url, skips):
                try:
                    views = decode_sample(sample, p.spec, kind=None, rng=None)
                except SampleSkip as e:
                    skips.skip(e.kind, sample.url, sample.key, e.message)
                    continue
                skips.ok()
                for view, item in enumerate(views):
                    items.append((*item, sample.key, view))
                    if len(items) == p.batch_size:
                        yield pack(_eval_batch(items, skips))
                        items = []
        if items:
            yield pack(_eval_batch(items, skips))
        yield {"_tally": skips.take(), "_first": skips.take_first()}


def _eval_batch(items: list[tuple], skips: SkipLog) -> dict:
    batch = collate([item[:2] for item in items])
    batch["key"] = [item[2] for item in items]
    batch["view"] = [item[3] for item in items]
    batch["skipped"] = skips.take()
    batch["_first"] = skips.take_first()
    return batch


class EvalStream:
    """Every sample of a rank's share of the shards, once: dicts {"x", "label", "key", "view", "skipped"}.

    "x" and "label" are as in `TrainStream` (evaluation transforms: `data.eval_clips` clips per
    video x `data.eval_views` crops, one row each; by default the centre clip and crop); "key" is
    the list of sample keys and "view" the index of each row among its sample's clips and views
    (a sample's rows follow each other, possibly across two batches). The last batch may be smaller. Ranks may hold different
    numbers of samples, and with fewer shards than ranks x workers some hold none, so callers must
    not run a collective per batch: gather results after the loop, using `samples` (read after
    iterating) or `expected_samples()` (before, from the shards' manifest) to size an all-reduce.
    The stream raises `UserError` at the end when too much of it failed (data.max_error_fraction).
    """

    def __init__(self, plan: _EvalPlan, *, num_workers: int, max_error_fraction: float, error_window: int,
                 pin_memory: bool):
        self._plan = plan
        self._pin_memory = pin_memory
        self._num_workers = num_workers
        self._budget = (max_error_fraction, error_window)
        self.shards: list[str] = list(plan.shards)
        self.samples = 0
        self.skipped: Counter[str] = Counter()

    def expected_samples(self) -> int | None:
        """Samples in this rank's shards by the manifest.json beside them, or None if unknown."""
        manifests: dict[Path, dict[str, int] | None] = {}  # one read per folder, not per shard
        total = 0
        for url in self.shards:
            path = local_path(url)
            if path is None:
                return None
            if path.parent not in manifests:
                manifests[path.parent] = manifest_counts(path.parent)
            count = (manifests[path.parent] or {}).get(path.name)
            if count is None:
                return None
            total += count
        return total

    def __iter__(self) -> Iterator[dict]:
        skips = SkipLog(max_error_fraction=self._budget[0], window=self._budget[1], where=self._plan.where)
        self.samples, self.skipped = 0, Counter()
        for batch in loader(_EvalWorkerData(self._plan), self._num_workers):
            first = batch.pop("_first")
            if "_tally" in batch:
                skips.merge(batch["_tally"], 0, first)
                self.skipped.update(batch["_tally"])
                continue
            batch = unpack(batch, pin_memory=self._pin_memory)
            new = batch["view"].count(0)
            skips.merge(batch["skipped"], new, first)
            self.samples += new
            self.skipped.update(batch["skipped"])
            skips.check()
            yield batch
        skips.check_end()


def build_eval_loader(urls: str, *, cfg: Config, clips: bool, rank: int, world_size: int,
                      batch_size: int) -> EvalStream:
    """Each sample of `urls` exactly once across ranks and workers, with evaluation transforms.

    `clips`: produce clips of `data.num_frames` frames (a video model), else images. Shards are
    split by rank (shard i to rank i % world_size), then by worker; see `EvalStream`.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    spec = checked_spec(SampleSpec.from_data(cfg.data, clips=clips, train=False))
    shards = tuple(streams.expand_urls(urls)[rank::world_size])
    plan = _EvalPlan(shards, spec, batch_size, where=f"eval rank {rank}")
    return EvalStream(plan, num_workers=cfg.data.num_workers, max_error_fraction=cfg.data.max_error_fraction,
                      error_window=cfg.data.error_window, pin_memory=torch.cuda.is_available())
