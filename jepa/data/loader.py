"""What the training and evaluation streams share: the sample spec check, the DataLoader, and how
batches travel from a worker to the main process.

Workers yield whole batches (`batch_size=None`), so masks and skip counts are made per batch there.
"""

from __future__ import annotations

import json
import pickle
import signal
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from jepa.data.transforms import SampleSpec, normalize
from jepa.data.video import require_decoder


def checked_spec(spec: SampleSpec) -> SampleSpec:
    """`spec` as it is, once the decoder it needs is known to be installed (before any work)."""
    if spec.clip_frames:
        require_decoder(spec.decoder)
    return spec


def worker_id() -> tuple[int, int]:
    """(this DataLoader worker, number of workers); (0, 1) in the main process."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def pack(batch: dict) -> dict:
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


def unpack(batch: dict, *, pin_memory: bool) -> dict:
    """In the main process: undo `pack` and normalise the pixels (see `transforms.normalize`)."""
    if batch.pop("_packed", False):
        batch["label"] = torch.tensor(batch["label"], dtype=torch.int64)
        if "masks" in batch:
            batch["masks"] = pickle.loads(batch["masks"])
    batch["x"] = normalize(batch["x"], pin_memory=pin_memory)
    return batch


def loader(data: IterableDataset, num_workers: int) -> DataLoader:
    # No pin_memory here: `normalize` writes the float batch straight into pinned memory instead.
    # An own generator: creating the iterator draws a base seed from it, and drawing from torch's
    # global generator would move the training process's random stream (dropout, RoPE augmentation)
    # by a different amount in a resumed run than in an uninterrupted one. Workers seed their
    # streams from (seed, rank, worker, epoch), never from that base seed.
    return DataLoader(data, batch_size=None, num_workers=num_workers,
                      prefetch_factor=2 if num_workers else None, generator=torch.Generator(),
                      worker_init_fn=leave_stop_signals_to_the_main_process)


def leave_stop_signals_to_the_main_process(worker: int) -> None:
    """A worker ignores SIGTERM and SIGUSR2. SLURM signals every process of a task (at a requeue,
    preemption or time limit), and torch's own SIGTERM handler would end a worker mid-epoch and fail
    the run; the main process saves at its next step boundary and then shuts its workers down
    (jepa/train/stop.py)."""
    for sig in (signal.SIGTERM, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)


def local_path(url: str) -> Path | None:
    """The file a shard URL names, or None for pipes and remote URLs."""
    if "://" in url or url.startswith("pipe:"):
        return None
    return Path(url[len("file:"):] if url.startswith("file:") else url)


def manifest_counts(folder: Path) -> dict[str, int] | None:
    """{shard file name: samples} from the manifest.json `jepa data` writes, or None."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return {s["name"]: s["samples"] for s in manifest.get("shards", [])}
