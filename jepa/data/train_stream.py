"""The training stream of one rank: resampled, the same length on every rank, exactly resumable.

Each DataLoader worker of each rank draws shards with replacement from every source, seeded by
(seed, rank, worker, epoch); samples pass a shuffle buffer, sources are mixed by weight, and each
sample gets its own random crop/clip from a generator seeded by its place in the stream. An epoch
is `data.samples_per_epoch // data.batch_size` batches on every rank (a reseed point, not a pass
over the data), so all ranks take the same number of steps and no collective waits on a rank that
ran dry. Batch g of a rank comes from worker g % num_workers; each batch carries its worker's
position and skip counts, so `TrainStream.position()` can be saved and a run resumed with
`start=` continues with exactly the batches (and counts) an uninterrupted run would have had.

Bad samples are skipped and counted by kind (jepa.data.skips); each batch's `"skipped"` holds what
its worker skipped since its previous batch.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch.utils.data import IterableDataset

from jepa.config import Config
from jepa.data import streams
from jepa.data.loader import checked_spec, loader, pack, unpack, worker_id
from jepa.data.skips import SampleSkip, SkipLog, SkipState
from jepa.data.transforms import SampleSpec, collate, decode_sample
from jepa.errors import ConfigError, UserError
from jepa.masks import mask_rng

log = logging.getLogger("jepa.data")


@dataclass(frozen=True)
class WorkerCursor:
    """Where one worker's sample stream stood after the last batch it delivered."""

    worker: int
    epoch: int
    index: int
    """Raw samples taken from this epoch's stream."""
    clips: int
    """Clips already taken of the next raw sample (videos with several clips)."""
    skips: SkipState
    """The worker's skip counts and error budget."""


@dataclass(frozen=True)
class DataPosition:
    """Where one rank's training stream stands; picklable, saved per rank in checkpoints.

    `epoch` and `batch` (batches of that epoch already handed out) say which batch comes next;
    `cursors` say where each worker's sample stream stands, so a resume replays nothing but the
    raw tar reads of the current epoch (no decoding) to continue exactly. `layout` names what fixes
    the stream (`TrainStream.layout`); resuming under another layout keeps epoch and batch and
    restarts the worker streams of that epoch. `skipped` totals the rank's skips by kind.
    """

    epoch: int = 0
    batch: int = 0
    layout: tuple[tuple[str, object], ...] = ()
    cursors: tuple[WorkerCursor, ...] = ()
    skipped: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class _TrainPlan:
    """Everything a training worker needs (picklable: workers may be spawned)."""

    sources: tuple[tuple[tuple[str, ...], str, float], ...]  # (urls, kind, weight)
    spec: SampleSpec
    seed: int
    rank: int
    batch_size: int
    batches_per_epoch: int
    num_workers: int
    shuffle_buffer: int
    max_error_fraction: float
    error_window: int
    collate_masks: Callable | None

    def layout(self) -> tuple[tuple[str, object], ...]:
        """(config key, value) of every setting that fixes the order of this rank's batches."""
        sources = hashlib.sha1(repr(self.sources).encode()).hexdigest()[:16]
        return (("seed", self.seed), ("rank", self.rank), ("data.sources", sources),
                ("data.batch_size", self.batch_size), ("batches per epoch", self.batches_per_epoch),
                ("data.num_workers", max(self.num_workers, 1)), ("data.shuffle_buffer", self.shuffle_buffer),
                ("data.clips_per_video", self.spec.clips_per_video))


class _TrainWorkerData(IterableDataset):
    """One worker's endless batch stream: batches g = worker, worker + W, ... from `first` on."""

    def __init__(self, plan: _TrainPlan, first: int, cursors: dict[int, WorkerCursor]):
        self.plan = plan
        self.first = first
        self.cursors = cursors

    def __iter__(self) -> Iterator[dict]:
        loader_worker, workers = worker_id()
        # The DataLoader asks its worker 0 first, so that worker must take batch `first`: loader
        # worker k plays stream worker (first + k) % W (its seeds, its cursor), and batch g always
        # comes from stream worker g % W, wherever the stream resumed.
        worker = (self.first + loader_worker) % workers
        skips = SkipLog(max_error_fraction=self.plan.max_error_fraction, window=self.plan.error_window,
                        where=f"rank {self.plan.rank} worker {worker}")
        if worker in self.cursors:
            skips.restore(self.cursors[worker].skips)
        try:
            yield from self._batches(worker, workers, self.first + loader_worker, skips)
        except UserError as e:  # handed to the main process as data: a clean message, no worker traceback
            yield {"_error": str(e)}

    def _batches(self, worker: int, workers: int, g: int, skips: SkipLog) -> Iterator[dict]:
        p = self.plan
        samples, samples_epoch = None, -1
        while True:
            epoch = g // p.batches_per_epoch
            if epoch != samples_epoch:
                saved = self.cursors.get(worker)
                cursor = (saved.index, saved.clips) if saved and saved.epoch == epoch else (0, 0)
                samples, samples_epoch = self._samples(worker, epoch, cursor, skips), epoch
            items = []
            for _ in range(p.batch_size):
                cursor, item = next(samples)
                items.append(item)
            batch = collate(items)
            if p.collate_masks is not None:
                batch["masks"] = p.collate_masks(p.batch_size, mask_rng(p.seed, p.rank, worker, g))
            batch["skipped"] = skips.take()
            batch["_cursor"] = WorkerCursor(worker, epoch, *cursor, skips=skips.state())
            yield pack(batch)
            g += workers

    def _samples(self, worker: int, epoch: int, cursor: tuple[int, int],
                 skips: SkipLog) -> Iterator[tuple[tuple[int, int], tuple]]:
        """(cursor after this item, item) pairs of one epoch's sample stream, from `cursor` on."""
        p = self.plan
        tag = (p.seed, p.rank, worker, epoch)
        per_source = []
        for s, (urls, _, _) in enumerate(p.sources):
            shards = streams.resampled_shards(urls, streams.stream_rng(*tag, "shards", s))
            per_source.append(streams.shuffled(streams.samples_of(shards, skips), p.shuffle_buffer,
                                               streams.stream_rng(*tag, "shuffle", s)))
        raw = streams.mixed(per_source, [w for _, _, w in p.sources], streams.stream_rng(*tag, "mix"))
        kinds = {u: kind for urls, kind, _ in p.sources for u in urls}
        index, skip_clips = cursor
        with skips.muted():  # replay to the saved place: tar reads only, nothing decoded, and the
            for _ in range(index):  # skips met on the way are already in the restored counts
                next(raw)
        for sample in raw:
            try:
                items = decode_sample(sample, p.spec, kind=kinds[sample.url],
                                      rng=streams.stream_rng(*tag, "sample", index))
            except SampleSkip as e:
                skips.skip(e.kind, sample.url, sample.key, e.message)
                items = []
            else:
                skips.ok()
            for j in range(skip_clips, len(items)):
                after = (index, j + 1) if j + 1 < len(items) else (index + 1, 0)
                yield after, items[j]
            index, skip_clips = index + 1, 0


class TrainStream:
    """The training batches of one rank: an endless iterable with a resumable position.

    Iterating yields dicts (in this order, forever; epochs follow each other):
      "x":       float32 (B, 3, H, W) images or (B, 3, T, H, W) clips, ImageNet-normalised (in
                 pinned memory when CUDA is available, so `.to(device, non_blocking=True)` overlaps);
      "label":   int64 (B,), -1 where a sample has no label;
      "masks":   what `collate_masks(B, jepa.masks.mask_rng(seed, rank, worker, g))` returned
                 for global batch g of this rank (absent when `collate_masks` is None);
      "skipped": {kind: count} of the samples/shards its worker skipped since its previous batch.
    Every rank yields `batches_per_epoch` batches per epoch. `position()` counts the batches handed
    out so far; pass it back as `start=` to continue with the batch after it. Iterating again after
    a `break` continues from `position()` as well. `skipped` totals the skips of the batches handed
    out, over the whole run (a resumed stream starts from the saved totals).
    """

    def __init__(self, plan: _TrainPlan, start: DataPosition | None, *, pin_memory: bool):
        self._plan = plan
        self._pin_memory = pin_memory
        self.batches_per_epoch = plan.batches_per_epoch
        self.skipped: Counter[str] = Counter()
        self._epoch, self._batch = 0, 0
        self._cursors: dict[int, WorkerCursor] = {}
        self.layout_changes: list[str] = []
        """What differed from the saved layout at a resume ('key: saved -> now'); empty if nothing."""
        if start is not None:
            self._restore(start)

    def position(self) -> DataPosition:
        return DataPosition(self._epoch, self._batch, self._plan.layout(),
                            tuple(self._cursors[w] for w in sorted(self._cursors)),
                            tuple(sorted(self.skipped.items())))

    def __iter__(self) -> Iterator[dict]:
        first = self._epoch * self.batches_per_epoch + self._batch
        data = _TrainWorkerData(self._plan, first, dict(self._cursors))
        for batch in loader(data, self._plan.num_workers):
            if "_error" in batch:
                raise UserError(batch["_error"])
            batch = unpack(batch, pin_memory=self._pin_memory)
            cursor = batch.pop("_cursor")
            self._cursors[cursor.worker] = cursor
            self._batch += 1
            if self._batch == self.batches_per_epoch:
                self._epoch, self._batch = self._epoch + 1, 0
            self.skipped.update(batch["skipped"])
            yield batch

    def _restore(self, start: DataPosition) -> None:
        self._epoch, self._batch = start.epoch, start.batch
        self.skipped = Counter(dict(start.skipped))
        saved, now = dict(start.layout), dict(self._plan.layout())
        self.layout_changes = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in now.items() if saved.get(k) != v]
        if not self.layout_changes:
            self._cursors = {c.worker: c for c in start.cursors}
            return
        if self._batch >= self.batches_per_epoch:  # the epoch got shorter: it is over
            self._epoch, self._batch = self._epoch + 1, 0
        if self._plan.rank == 0:  # the settings are the same on every rank: say it once
            log.warning("the data stream's layout changed since the position was saved (%s): continuing at "
                        "epoch %d batch %d with fresh worker streams, so the batches from here on differ "
                        "from those of an uninterrupted run", "; ".join(self.layout_changes),
                        self._epoch, self._batch)


def check_train_data(cfg: Config, *, clips: bool) -> SampleSpec:
    """The data settings a training run needs, checked without reading any shard (call it before
    any work); returns the training sample spec (`clips`: the model takes clips)."""
    d = cfg.data
    if not d.sources:
        raise ConfigError("data.sources is empty: give at least one {urls, kind, weight} source to train on")
    if d.samples_per_epoch // d.batch_size < 1:
        raise ConfigError(f"data.samples_per_epoch={d.samples_per_epoch} is below data.batch_size="
                          f"{d.batch_size}: an epoch would hold no batch; raise samples_per_epoch")
    return checked_spec(SampleSpec.from_data(d, clips=clips, train=True))


def build_train_loader(cfg: Config, *, clips: bool, rank: int, world_size: int, collate_masks: Callable | None,
                       start: DataPosition | None) -> TrainStream:
    """The training stream of `rank` (of `world_size`) for `cfg.data`; see `TrainStream`.

    `clips`: produce clips of `data.num_frames` frames (the model is a video model), else images.
    `collate_masks(batch_size, generator) -> masks` runs in the workers once per batch (e.g. a
    `jepa.masks.MaskGenerator`; it must be picklable). `start` is a saved `TrainStream.position()`.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    spec = check_train_data(cfg, clips=clips)
    d = cfg.data
    batches = d.samples_per_epoch // d.batch_size
    plan = _TrainPlan(
        sources=tuple((tuple(streams.expand_urls(s.urls)), s.kind, float(s.weight)) for s in d.sources),
        spec=spec, seed=cfg.seed, rank=rank, batch_size=d.batch_size, batches_per_epoch=batches,
        num_workers=d.num_workers, shuffle_buffer=d.shuffle_buffer,
        max_error_fraction=d.max_error_fraction, error_window=d.error_window, collate_masks=collate_masks)
    return TrainStream(plan, start, pin_memory=torch.cuda.is_available())
