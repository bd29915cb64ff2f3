"""A contact sheet PNG and a printed summary of a shard set: what is in it, and what does not decode.

    python tools/inspect_shards.py SHARDS [--out sheet.png] [--max-samples N] [--show 48] [--frames 1]

SHARDS is a brace pattern (`data/train-{000000..000099}.tar`), a `::`-separated list, or a folder
(every `*.tar` in it). Every sample is read and decoded as the training streams do (the same
readers, the same failure kinds); the summary gives the number of shards and samples, media types,
labels per class (names from classes.json or the samples' json), image sizes, video frame counts
and rates, and the failures by kind with the first few. The sheet shows the first --show samples
that decode, each titled with its key and class: an image, or a video's middle frame (--frames K:
K frames evenly spaced, side by side).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jepa.data import streams  # noqa: E402
from jepa.data.loader import local_path  # noqa: E402
from jepa.data.skips import KINDS, SampleSkip, SkipLog  # noqa: E402
from jepa.data.streams import RawSample  # noqa: E402
from jepa.data.transforms import IMAGE_EXTS, VIDEO_EXTS, decode_image, parse_label  # noqa: E402
from jepa.data.video import open_video  # noqa: E402
from jepa.errors import UserError  # noqa: E402

DPI = 100
THUMB_PX = 120
"""Height of one thumbnail (a frame of a video strip is as wide) in the sheet."""
TITLE_PX = 26
COLUMNS = 8
"""Thumbnails per line of the sheet (fewer when there are fewer samples)."""


@dataclass
class Sample:
    """What one decoded sample says about itself."""

    key: str
    media: str
    """The media member's extension (png, jpg, mp4, ...)."""
    label: int
    size: tuple[int, int]
    """(width, height) in pixels."""
    frames: int = 1
    fps: float = 0.0
    thumb: np.ndarray | None = None
    """(H, W * frames, 3) uint8, only for samples on the sheet."""


def shard_urls(spec: str) -> list[str]:
    """A folder's `*.tar` files (sorted), or the URLs of a brace pattern / `::` list."""
    path = Path(spec)
    if path.is_dir():
        found = sorted(str(p) for p in path.glob("*.tar"))
        if not found:
            raise UserError(f"{spec} holds no *.tar shards")
        return found
    return streams.expand_urls(spec)


def class_names(urls: list[str]) -> dict[int, str]:
    """{label: name} from the classes.json beside the first local shard, if there is one."""
    path = local_path(urls[0])
    try:
        classes = json.loads((path.parent / "classes.json").read_text()) if path else {}
    except (OSError, ValueError):
        return {}
    return {index: name for name, index in classes.items()}


def describe(raw: RawSample, *, thumb: bool, frames: int) -> Sample:
    """Decode one sample (`SampleSkip` when it fails, with the training streams' kinds)."""
    empty = [ext for ext, data in raw.members.items() if not data]
    if empty:
        raise SampleSkip("empty_member", f"zero-length member(s) {', '.join(empty)}")
    label = parse_label(raw.members)
    media = next((e for e in (*VIDEO_EXTS, *IMAGE_EXTS) if e in raw.members), None)
    if media is None:
        raise SampleSkip("missing_key", f"no image or video member (has: {', '.join(raw.members) or 'nothing'})")
    if media in IMAGE_EXTS:
        pixels = decode_image(raw.members[media])  # (3, H, W) uint8
        image = pixels.permute(1, 2, 0).numpy()
        return Sample(raw.key, media, label, (image.shape[1], image.shape[0]), thumb=image if thumb else None)
    reader = open_video(raw.members[media])
    try:
        n = reader.num_frames
        picks = [n // 2] if frames == 1 else [round(i * (n - 1) / (frames - 1)) for i in range(frames)]
        clip = reader.read(picks).permute(0, 2, 3, 1).numpy()  # (K, H, W, 3)
    finally:
        reader.close()
    gap = np.full((clip.shape[1], 2, 3), 255, np.uint8)  # frames 2 white pixels apart
    strip = np.concatenate([p for frame in clip for p in (frame, gap)][:-1], axis=1) if thumb else None
    return Sample(raw.key, media, label, (clip.shape[2], clip.shape[1]), frames=n, fps=reader.fps, thumb=strip)


def inspect(urls: list[str], *, show: int, frames: int, max_samples: int | None) -> tuple[list[Sample], SkipLog]:
    """Every sample of the shards (up to `max_samples`), thumbnails for the first `show` that decode."""
    log = SkipLog(window=None, log_first=0, log_every_s=math.inf)  # counted and summarised, not logged
    found: list[Sample] = []
    for raw in streams.samples_of(iter(urls), log):
        try:
            found.append(describe(raw, thumb=len(found) < show, frames=frames))
        except SampleSkip as e:
            log.skip(e.kind, raw.url, raw.key, e.message)
            continue
        log.ok()
        if max_samples is not None and len(found) + log.failed >= max_samples:
            break
    return found, log


def summary(urls: list[str], found: list[Sample], log: SkipLog, names: dict[int, str]) -> str:
    """The printed report."""
    lines = [f"shards: {len(urls)} ({urls[0]}{' ... ' + urls[-1] if len(urls) > 1 else ''})",
             f"samples: {len(found)} decoded, {log.failed} failed"]
    media = Counter(s.media for s in found)
    lines.append("media: " + (", ".join(f"{ext} {n}" for ext, n in media.most_common()) or "none"))
    labels = Counter(s.label for s in found)
    unlabelled = labels.pop(-1, 0)
    per_class = ", ".join(f"{k} {names.get(k, '')} {n}".replace("  ", " ") for k, n in sorted(labels.items()))
    lines.append(f"labels: {len(labels)} classes{': ' + per_class if per_class else ''}; unlabelled {unlabelled}")
    sizes = Counter(f"{w}x{h}" for w, h in (s.size for s in found))
    lines.append("sizes (WxH): " + (", ".join(f"{sz} {n}" for sz, n in sizes.most_common(5)) or "none")
                 + (f" (+{len(sizes) - 5} more)" if len(sizes) > 5 else ""))
    videos = [s for s in found if s.media in VIDEO_EXTS]
    if videos:
        counts = sorted(s.frames for s in videos)
        fps = Counter(round(s.fps, 2) for s in videos)
        lines.append(f"video frames: min {counts[0]}, median {counts[len(counts) // 2]}, max {counts[-1]}; "
                     f"fps: {', '.join(f'{f:g} ({n})' for f, n in fps.most_common(3))}")
    failures = ", ".join(f"{kind} {n}" for kind, n in sorted(log.totals.items())) or "none"
    lines.append(f"failures by kind: {failures}")
    lines += [f"  {kind}: {KINDS[kind]}" for kind in sorted(log.totals)]
    lines += [f"  e.g. {record}" for record in log.first]
    return "\n".join(lines)


def contact_sheet(found: list[Sample], names: dict[int, str], out: Path, title: str) -> tuple[int, int]:
    """Thumbnails with their key and class in a grid; returns the PNG's (width, height)."""
    shown = [s for s in found if s.thumb is not None]
    if not shown:
        raise UserError("no sample decoded: nothing to draw (see the failures above)")
    strip = max(round(s.thumb.shape[1] / s.thumb.shape[0]) for s in shown)
    cols = min(COLUMNS, len(shown))
    rows = math.ceil(len(shown) / cols)
    cell_w, cell_h = THUMB_PX * strip, THUMB_PX + TITLE_PX
    width, height = cols * cell_w, rows * cell_h + TITLE_PX
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    fig.text(0.5, 1 - 4 / height, title, va="top", ha="center", fontsize=8)
    for i, s in enumerate(shown):
        r, c = divmod(i, cols)
        ax = fig.add_axes((c * cell_w / width, 1 - (TITLE_PX + (r + 1) * cell_h) / height,
                           cell_w / width, THUMB_PX / height))
        ax.imshow(s.thumb, interpolation="antialiased")
        ax.set_axis_off()
        name = names.get(s.label, str(s.label)) if s.label >= 0 else "unlabelled"
        ax.set_title(f"{s.key}\n{name}", fontsize=7, pad=2, linespacing=1.0)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return width, height


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Example: python tools/inspect_shards.py 'data/synth-image/"
                                            "shard-{000000..000003}.tar' --out sheet.png")
    parser.add_argument("shards", help="brace pattern, ::-separated URLs, or a folder of *.tar shards")
    parser.add_argument("--out", type=Path, default=Path("sheet.png"), help="contact sheet PNG (default sheet.png)")
    parser.add_argument("--show", type=int, default=48, help="samples on the sheet (default 48)")
    parser.add_argument("--frames", type=int, default=1, help="frames per video thumbnail (default 1: the middle)")
    parser.add_argument("--max-samples", type=int, help="stop after this many samples (default: read every shard)")
    args = parser.parse_args(argv)
    try:
        if args.show < 1 or args.frames < 1:
            raise UserError("--show and --frames must be >= 1")
        urls = shard_urls(args.shards)
        found, log = inspect(urls, show=args.show, frames=args.frames, max_samples=args.max_samples)
        names = class_names(urls)
        print(summary(urls, found, log, names))
        width, height = contact_sheet(found, names, args.out, f"{args.shards}: {len(found)} samples decoded, "
                                                              f"{log.failed} failed")
        print(f"wrote {args.out} ({width}x{height} px)")
    except UserError as e:
        print(f"inspect_shards: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
