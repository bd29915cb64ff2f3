"""Folders or the synthetic generator -> WebDataset tar shards, a class map and a manifest.

A shard `PREFIX-000000.tar` holds `shard_size` samples; sample `k` has members `k.<ext>` (the
media, stored as given: a jpg stays a jpg, bit for bit), `k.cls` (the class index as text, when
labelled) and `k.json` ({"label", "class", "path"}). Keys are zero-padded global indices, unique
across the whole output. Tar headers carry a fixed time and owner, so the same input gives the
same bytes. Next to the shards:

- `classes.json`: {class name: index} (labels come from the first sub-folder under the root,
  sorted by name; files directly under the root are unlabelled);
- `manifest.json`: kind, sample and byte counts per shard and in total, the brace pattern of the
  shard URLs, the class map and the skipped inputs by reason.
"""

from __future__ import annotations

import io
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from jepa.data.transforms import IMAGE_EXTS, VIDEO_EXTS
from jepa.errors import UserError

MTIME = 0
"""Tar member modification time: fixed, so shards are byte-for-byte reproducible."""


@dataclass
class ShardSample:
    """One sample to write: key, media extension and bytes, optional label and metadata."""

    key: str
    ext: str
    data: bytes
    label: int | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class WriteSummary:
    out: Path
    kind: str
    samples: int
    shards: list[dict]
    skipped: dict[str, int]
    pattern: str

    @property
    def bytes(self) -> int:
        return sum(s["bytes"] for s in self.shards)

    def text(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        shards = f"{len(self.shards)} shard{'s' if len(self.shards) != 1 else ''}"
        return (f"wrote {self.samples} {self.kind} samples in {shards}, "
                f"{self.bytes / 2**20:.1f} MiB, to {self.out}\n"
                f"skipped: {skipped}\nshard URLs: {self.pattern}")


class ShardSink:
    """Writes samples into numbered tar shards of `shard_size` samples each."""

    def __init__(self, out: Path, *, shard_size: int, prefix: str):
        import webdataset as wds

        if shard_size < 1:
            raise UserError(f"--shard-size must be >= 1, got {shard_size}")
        self._wds = wds
        self.out, self.shard_size, self.prefix = out, shard_size, prefix
        self.shards: list[dict] = []
        self._writer = None
        self._file = None

    def write(self, sample: ShardSample) -> None:
        if self._writer is None or self.shards[-1]["samples"] == self.shard_size:
            self._next_shard()
        members = {"__key__": sample.key, sample.ext: sample.data}
        if sample.label is not None:
            members["cls"] = str(sample.label).encode()
        meta = {**sample.meta, **({"label": sample.label} if sample.label is not None else {})}
        if meta:
            members["json"] = json.dumps(meta, sort_keys=True).encode()
        self._writer.write(members)
        self.shards[-1]["samples"] += 1

    def _next_shard(self) -> None:
        self._close_shard()
        name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self._file = open(self.out / name, "wb")
        self._writer = self._wds.TarWriter(self._file, encoder=False, mtime=MTIME, user="", group="")
        self.shards.append({"name": name, "samples": 0, "bytes": 0})

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._file.close()
            self.shards[-1]["bytes"] = (self.out / self.shards[-1]["name"]).stat().st_size
            self._writer = None

    def close(self) -> list[dict]:
        self._close_shard()
        return self.shards


def write_samples(samples: Iterable[ShardSample], out: str | Path, *, kind: str, shard_size: int,
                  classes: dict[str, int] | None, skipped: Counter, total: int | None,
                  prefix: str = "shard", progress: bool = True, source: str = "") -> WriteSummary:
    """Write `samples` as shards under `out` (created), then classes.json and manifest.json."""
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sink = ShardSink(out, shard_size=shard_size, prefix=prefix)
    count = 0
    for sample in tqdm(samples, total=total, unit="sample", desc=f"writing {out}", disable=not progress):
        sink.write(sample)
        count += 1
    shards = sink.close()
    if not shards:
        raise UserError(f"nothing to write from {source or 'the input'}: no usable {kind} files "
                        f"(skipped: {dict(skipped) or 'none'}); expected {'|'.join(_exts(kind))} files")
    last = len(shards) - 1
    pattern = str(out.resolve() / f"{prefix}-{{000000..{last:06d}}}.tar") if last else \
        str(out.resolve() / shards[0]["name"])
    summary = WriteSummary(out, kind, count, shards, dict(skipped), pattern)
    if classes is not None:
        (out / "classes.json").write_text(json.dumps(classes, indent=1) + "\n")
    manifest = {"kind": kind, "samples": count, "bytes": summary.bytes, "urls": pattern, "source": source,
                "classes": classes, "skipped": dict(skipped), "shards": shards}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return summary


# ----------------------------------------------------------------------------- folders

def _exts(kind: str) -> tuple[str, ...]:
    return IMAGE_EXTS if kind == "image" else VIDEO_EXTS


def folder_files(root: Path, kind: str) -> tuple[list[tuple[Path, str | None]], Counter]:
    """(file, class name or None) for every file under `root`, sorted; unsupported files counted."""
    if not root.is_dir():
        raise UserError(f"{root} is not a folder: give the folder that holds the {kind}s (one sub-folder per class)")
    files, skipped = [], Counter()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.name.startswith("."):
            continue
        if path.suffix.lower().lstrip(".") not in _exts(kind):
            skipped["unsupported extension"] += 1
            continue
        rel = path.relative_to(root)
        files.append((path, rel.parts[0] if len(rel.parts) > 1 else None))
    return files, skipped


def _check_file(path: Path, kind: str) -> str | None:
    """Why a file cannot be used (cheap header check), or None when it is fine."""
    data_size = path.stat().st_size
    if data_size == 0:
        return "empty file"
    if kind == "image":
        from PIL import Image

        try:
            with Image.open(path) as img:
                img.verify()
        except Exception:  # any reason Pillow refuses the file: it would fail at training time too
            return "unreadable image"
        return None
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return "no video stream"
    except (av.FFmpegError, OSError, ValueError):
        return "unreadable video"
    return None


def _folder_samples(files: list[tuple[Path, str | None]], root: Path, kind: str,
                    classes: dict[str, int], skipped: Counter) -> Iterator[ShardSample]:
    for index, (path, name) in enumerate(files):
        problem = _check_file(path, kind)
        if problem:
            skipped[problem] += 1
            continue
        ext = path.suffix.lower().lstrip(".")
        label = classes[name] if name is not None else None
        meta = {"path": str(path.relative_to(root)), **({"class": name} if name is not None else {})}
        yield ShardSample(f"{index:09d}", ext, path.read_bytes(), label, meta)


def write_folder(root: str | Path, out: str | Path, *, kind: str, shard_size: int, shuffle: bool = True,
                 seed: int = 0, progress: bool = True, prefix: str = "shard") -> WriteSummary:
    """Shards from a folder of images or videos; labels from sub-folder names.

    With `shuffle` (default) the files are written in a seeded random order, so every shard mixes
    the classes (streams read shards in order through a bounded shuffle buffer).
    """
    root = Path(root)
    files, skipped = folder_files(root, kind)
    names = sorted({name for _, name in files if name is not None})
    classes = {name: i for i, name in enumerate(names)}
    if shuffle:
        random.Random(seed).shuffle(files)
    samples = _folder_samples(files, root, kind, classes, skipped)
    return write_samples(samples, out, kind=kind, shard_size=shard_size, classes=classes or None,
                         skipped=skipped, total=len(files), prefix=prefix, progress=progress, source=str(root))


# ----------------------------------------------------------------------------- synthetic

def write_synthetic(out: str | Path, *, kind: str, n: int, classes: int, size: int, frames: int, seed: int,
                    shard_size: int, fps: float = 8.0, task: str | None = None, progress: bool = True) -> WriteSummary:
    """A synthetic labelled dataset (jepa.data.synthetic) as shards: png images or H.264 mp4 videos.
    `task` picks what a sample's class is (jepa.data.synthetic.TASKS; default the kind's first)."""
    from jepa.data import synthetic

    if kind not in synthetic.TASKS:
        raise UserError(f"--kind must be image or video, got {kind!r}")
    task = task or synthetic.TASKS[kind][0]
    if n < 1:
        raise UserError(f"--n must be >= 1, got {n}")
    try:
        synthetic.check_classes(kind, classes, task)
    except ValueError as e:
        raise UserError(str(e)) from None
    if size < 8 or size % 2:
        raise UserError(f"--size must be an even number >= 8, got {size}")
    if kind == "video" and frames < 2:
        raise UserError(f"--frames must be >= 2 (motion needs two frames), got {frames}")
    names = synthetic.class_names(kind, classes, task)
    samples = _synthetic_samples(kind, n=n, classes=classes, size=size, frames=frames, seed=seed,
                                 fps=fps, names=names, task=task)
    return write_samples(samples, out, kind=kind, shard_size=shard_size,
                         classes={name: i for i, name in enumerate(names)}, skipped=Counter(), total=n,
                         progress=progress, source=f"synthetic {'video' if task == 'object' else task} seed={seed}")


def _synthetic_samples(kind: str, *, n: int, classes: int, size: int, frames: int, seed: int,
                       fps: float, names: list[str], task: str) -> Iterator[ShardSample]:
    from PIL import Image

    from jepa.data import synthetic
    from jepa.data.video import encode_mp4

    for index in range(n):
        label = synthetic.label_of(index, classes)
        rng = synthetic.sample_rng(seed, index, kind)
        if kind == "image":
            buf = io.BytesIO()
            image = (synthetic.render_stripes(rng, size=size, label=label, classes=classes) if task == "stripes"
                     else synthetic.render_image(rng, size=size, label=label))
            Image.fromarray(image).save(buf, format="PNG")
            ext, data = "png", buf.getvalue()
        else:
            render = synthetic.render_flow if task == "flow" else synthetic.render_video
            clip = render(rng, size=size, frames=frames, label=label, classes=classes)
            ext, data = "mp4", encode_mp4(clip, fps=fps)
        yield ShardSample(f"{index:09d}", ext, data, label, {"class": names[label]})
