"""WebDataset pipelines for training and evaluation: what every rank streams, in which order.

Training (`build_train_loader`): each DataLoader worker of each rank draws shards with replacement
from every source, seeded by (seed, rank, worker, epoch); samples pass a shuffle buffer, sources are
mixed by weight, and each sample gets its own random crop/clip from a generator seeded by its place
in the stream. An epoch is `data.samples_per_epoch // data.batch_size` batches on every rank (a
reseed point, not a pass over the data), so all ranks take the same number of steps and no
collective waits on a rank that ran dry. Batch g of a rank comes from worker g % num_workers; each
batch carries its worker's position, so `TrainStream.position()` can be saved and a run resumed
with `start=` continues with exactly the batches an uninterrupted run would have produced.

Evaluation (`build_eval_loader`): shards are split by rank, then by worker, read once in order, no
resampling and no shuffling, so every sample is read exactly once across all ranks and workers.
Ranks can hold different numbers of samples (and a worker may hold no shard): see `EvalStream`.

Bad samples are skipped and counted by kind (jepa.data.skips); each batch's `"skipped"` holds what
its worker skipped since its previous batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from jepa.config import Config
from jepa.data import streams
from jepa.data.skips import SampleSkip, SkipLog
from jepa.data.transforms import SampleSpec, collate, decode_sample, normalize
from jepa.data.video import require_decoder
from jepa.errors import ConfigError, UserError
from jepa.masks import mask_rng

log = logging.getLogger("jepa.data")


# ----------------------------------------------------------------------------- training

@dataclass(frozen=True)
class DataPosition:
    """Where one rank's training stream stands; picklable, saved per rank in checkpoints.

    `epoch` and `batch` (batches of that epoch already handed out) say which batch comes next;
    `cursors` say where each worker's sample stream stands, so a resume replays nothing but the
    raw tar reads of the current epoch (no decoding) to continue exactly. `layout` fingerprints what
    fixes the stream (seed, rank, sources, batch size, epoch length, workers, shuffle buffer, clips
    per video); resuming under another layout keeps epoch and batch, restarts the worker streams of
    that epoch, and logs it.
    """

    epoch: int = 0
    batch: int = 0
    layout: str = ""
    cursors: tuple[tuple[int, int, int, int], ...] = ()
    """Per worker that delivered a batch: (worker, epoch, raw samples taken, clips taken of the next)."""


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

    def layout(self) -> str:
        key = (self.sources, self.seed, self.rank, self.batch_size, self.batches_per_epoch,
               max(self.num_workers, 1), self.shuffle_buffer, self.spec.clips_per_video)
        return hashlib.sha1(repr(key).encode()).hexdigest()[:16]


class _TrainWorkerData(IterableDataset):
    """One worker's endless batch stream: batches g = worker, worker + W, ... from `first` on."""

    def __init__(self, plan: _TrainPlan, first: int, cursors: dict[int, tuple[int, int, int]]):
        self.plan = plan
        self.first = first
        self.cursors = cursors

    def __iter__(self) -> Iterator[dict]:
        loader_worker, workers = _worker()
        # The DataLoader asks its worker 0 first, so that worker must take batch `first`: loader
        # worker k plays stream worker (first + k) % W (its seeds, its cursor), and batch g always
        # comes from stream worker g % W, wherever the stream resumed.
        worker = (self.first + loader_worker) % workers
        skips = SkipLog(max_error_fraction=self.plan.max_error_fraction, window=self.plan.error_window,
                        where=f"rank {self.plan.rank} worker {worker}")
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
                cursor = saved[1:] if saved and saved[0] == epoch else (0, 0)
                samples, samples_epoch = self._samples(worker, epoch, cursor, skips), epoch
            items = []
            for _ in range(p.batch_size):
                cursor, item = next(samples)
                items.append(item)
            batch = collate(items)
            if p.collate_masks is not None:
                batch["masks"] = p.collate_masks(p.batch_size, mask_rng(p.seed, p.rank, worker, g))
            batch["skipped"] = skips.take()
            batch["_state"] = (worker, epoch, *cursor)
            yield _pack(batch)
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
        for _ in range(index):  # replay to the saved place: tar reads only, nothing decoded (shard-level
            next(raw)           # skips met on the way are counted again)
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
    a `break` continues from `position()` as well. `skipped` totals all skips seen by this stream.
    """

    def __init__(self, plan: _TrainPlan, start: DataPosition | None, *, pin_memory: bool):
        self._plan = plan
        self._pin_memory = pin_memory
        self.batches_per_epoch = plan.batches_per_epoch
        self.skipped: Counter[str] = Counter()
        self._epoch, self._batch, self._cursors = 0, 0, {}
        if start is not None:
            self._restore(start)

    def position(self) -> DataPosition:
        cursors = tuple((w, *c) for w, c in sorted(self._cursors.items()))
        return DataPosition(self._epoch, self._batch, self._plan.layout(), cursors)

    def __iter__(self) -> Iterator[dict]:
        first = self._epoch * self.batches_per_epoch + self._batch
        data = _TrainWorkerData(self._plan, first, dict(self._cursors))
        for batch in _loader(data, self._plan.num_workers):
            if "_error" in batch:
                raise UserError(batch["_error"])
            batch = _unpack(batch, pin_memory=self._pin_memory)
            worker, epoch, index, clips = batch.pop("_state")
            self._cursors[worker] = (epoch, index, clips)
            self._batch += 1
            if self._batch == self.batches_per_epoch:
                self._epoch, self._batch = self._epoch + 1, 0
            self.skipped.update(batch["skipped"])
            yield batch

    def _restore(self, start: DataPosition) -> None:
        self._epoch, self._batch = start.epoch, start.batch
        if start.layout == self._plan.layout():
            self._cursors = {w: (e, i, j) for w, e, i, j in start.cursors}
        else:
            if self._batch >= self.batches_per_epoch:  # the epoch got shorter: it is over
                self._epoch, self._batch = self._epoch + 1, 0
            log.warning("the data stream's layout changed since the position was saved (seed, rank, "
                        "sources, batch size, epoch length, workers, shuffle buffer or clips per "
                        "video): continuing at epoch %d batch %d with fresh worker streams",
                        self._epoch, self._batch)


def check_train_data(cfg: Config) -> SampleSpec:
    """The data settings a training run needs, checked without reading any shard (call it before
    any work); returns the training sample spec."""
    d = cfg.data
    if not d.sources:
        raise ConfigError("data.sources is empty: give at least one {urls, kind, weight} source to train on")
    if d.samples_per_epoch // d.batch_size < 1:
        raise ConfigError(f"data.samples_per_epoch={d.samples_per_epoch} is below data.batch_size="
                          f"{d.batch_size}: an epoch would hold no batch; raise samples_per_epoch")
    return _sample_spec(cfg, train=True)


def _sample_spec(cfg: Config, *, train: bool) -> SampleSpec:
    """The decode/transform spec; video needs its decoder installed, checked before any work."""
    spec = SampleSpec.from_config(cfg, train=train)
    if spec.clip_frames:
        require_decoder(cfg.data.decoder)
    return spec


def build_train_loader(cfg: Config, *, rank: int, world_size: int, collate_masks: Callable | None,
                       start: DataPosition | None) -> TrainStream:
    """The training stream of `rank` (of `world_size`) for `cfg.data`; see `TrainStream`.

    `collate_masks(batch_size, generator) -> masks` runs in the workers once per batch (e.g. a
    `jepa.masks.MaskGenerator`; it must be picklable). `start` is a saved `TrainStream.position()`.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    spec = check_train_data(cfg)
    d = cfg.data
    batches = d.samples_per_epoch // d.batch_size
    plan = _TrainPlan(
        sources=tuple((tuple(streams.expand_urls(s.urls)), s.kind, float(s.weight)) for s in d.sources),
        spec=spec, seed=cfg.seed, rank=rank, batch_size=d.batch_size, batches_per_epoch=batches,
        num_workers=d.num_workers, shuffle_buffer=d.shuffle_buffer,
        max_error_fraction=d.max_error_fraction, error_window=d.error_window, collate_masks=collate_masks)
    return TrainStream(plan, start, pin_memory=torch.cuda.is_available())


# ----------------------------------------------------------------------------- evaluation

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
        worker, workers = _worker()
        p = self.plan
        # the main process applies the error budget to the merged counts, so no budget here
        skips = SkipLog(window=None, where=f"{p.where} worker {worker}")
        items: list[tuple] = []
        for url in p.shards[worker::workers]:
            for sample in streams.read_shard(url, skips):
                try:
                    (item,) = decode_sample(sample, p.spec, kind=None, rng=None)
                except SampleSkip as e:
                    skips.skip(e.kind, sample.url, sample.key, e.message)
                    continue
                skips.ok()
                items.append((*item, sample.key))
                if len(items) == p.batch_size:
                    yield _pack(_eval_batch(items, skips))
                    items = []
        if items:
            yield _pack(_eval_batch(items, skips))
        yield {"_tally": skips.take(), "_first": skips.take_first()}


def _eval_batch(items: list[tuple], skips: SkipLog) -> dict:
    batch = collate([item[:2] for item in items])
    batch["key"] = [item[2] for item in items]
    batch["skipped"] = skips.take()
    batch["_first"] = skips.take_first()
    return batch


class EvalStream:
    """Every sample of a rank's share of the shards, once: dicts {"x", "label", "key", "skipped"}.

    "x" and "label" are as in `TrainStream` (evaluation transforms: centre crop, centre clip);
    "key" is the list of sample keys. The last batch may be smaller. Ranks may hold different
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
            path = _local_path(url)
            if path is None:
                return None
            if path.parent not in manifests:
                manifests[path.parent] = _manifest_counts(path.parent)
            count = (manifests[path.parent] or {}).get(path.name)
            if count is None:
                return None
            total += count
        return total

    def __iter__(self) -> Iterator[dict]:
        skips = SkipLog(max_error_fraction=self._budget[0], window=self._budget[1], where=self._plan.where)
        self.samples, self.skipped = 0, Counter()
        for batch in _loader(_EvalWorkerData(self._plan), self._num_workers):
            first = batch.pop("_first")
            if "_tally" in batch:
                skips.merge(batch["_tally"], 0, first)
                self.skipped.update(batch["_tally"])
                continue
            batch = _unpack(batch, pin_memory=self._pin_memory)
            skips.merge(batch["skipped"], len(batch["key"]), first)
            self.samples += len(batch["key"])
            self.skipped.update(batch["skipped"])
            skips.check()
            yield batch
        skips.check_end()


def build_eval_loader(urls: str, *, cfg: Config, rank: int, world_size: int, batch_size: int) -> EvalStream:
    """Each sample of `urls` exactly once across ranks and workers, with evaluation transforms.

    Shards are split by rank (shard i to rank i % world_size), then by worker; see `EvalStream`.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    spec = _sample_spec(cfg, train=False)
    shards = tuple(streams.expand_urls(urls)[rank::world_size])
    plan = _EvalPlan(shards, spec, batch_size, where=f"eval rank {rank}")
    return EvalStream(plan, num_workers=cfg.data.num_workers, max_error_fraction=cfg.data.max_error_fraction,
                      error_window=cfg.data.error_window, pin_memory=torch.cuda.is_available())


# ----------------------------------------------------------------------------- shared

def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def _pack(batch: dict) -> dict:
    """In a worker: send small members inline rather than as shared-memory tensors.

    A DataLoader worker passes every tensor through its own shared-memory segment and file
    descriptor, about 0.4 ms of CPU per tensor and batch, whatever its size; labels and masks are a
    few hundred bytes each, so they travel pickled in the message instead. Pixels stay in shared
    memory (uint8, stacked there by `collate`).
    """
    if get_worker_info() is None:
        return batch
    batch["label"] = batch["label"].tolist()
    if "masks" in batch:
        batch["masks"] = pickle.dumps(batch["masks"], protocol=pickle.HIGHEST_PROTOCOL)
    batch["_packed"] = True
    return batch


def _unpack(batch: dict, *, pin_memory: bool) -> dict:
    """In the main process: undo `_pack` and normalise the pixels (see `transforms.normalize`)."""
    if batch.pop("_packed", False):
        batch["label"] = torch.tensor(batch["label"], dtype=torch.int64)
        if "masks" in batch:
            batch["masks"] = pickle.loads(batch["masks"])
    batch["x"] = normalize(batch["x"], pin_memory=pin_memory)
    return batch


def _loader(data: IterableDataset, num_workers: int) -> DataLoader:
    # batch_size=None: workers yield whole batches, so masks and skip counts are made per batch there.
    # No pin_memory here: `normalize` writes the float batch straight into pinned memory instead.
    return DataLoader(data, batch_size=None, num_workers=num_workers, prefetch_factor=2 if num_workers else None)


def _local_path(url: str) -> Path | None:
    """The file a shard URL names, or None for pipes and remote URLs."""
    if "://" in url or url.startswith("pipe:"):
        return None
    return Path(url[len("file:"):] if url.startswith("file:") else url)


def _manifest_counts(folder: Path) -> dict[str, int] | None:
    """{shard file name: samples} from the manifest.json `jepa data` writes, or None."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return {s["name"]: s["samples"] for s in manifest.get("shards", [])}
