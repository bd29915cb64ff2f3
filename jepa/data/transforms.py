"""Samples -> tensors: image decoding to RGB, crops/flips shared by images and clips, collation.

Images become (3, H, W) uint8, clips (T, 3, H, W) uint8. A crop is drawn once per sample as a
`Box` and applied to every frame of a clip, so all frames see the same crop and flip. Batches
travel from the workers as uint8; `normalize` turns them into ImageNet-normalised float32.

Colour conversion to RGB (documented in docs/data.md):
- grayscale, palette, CMYK, YCbCr and bilevel images: Pillow's conversion to RGB;
- images with alpha (RGBA, LA, PA, palette with transparency): composited over white;
- 16-bit images: the high byte of each value (v >> 8), which is what Pillow itself does for
  16-bit RGB PNGs, so 16-bit grayscale and 16-bit colour agree.
"""

from __future__ import annotations

import io
import json
import math
import random
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision.transforms.v2 import functional as TF

from jepa.config import DataConfig
from jepa.data.skips import SampleSkip
from jepa.data.streams import RawSample
from jepa.data.video import clip_step, open_video, sample_frame_indices

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

EVAL_CROP_FRACTION = 0.875
"""Evaluation crop: the centre square of side 0.875 x the short side (resize to S/0.875, crop S)."""

ASPECT_RATIO = (3 / 4, 4 / 3)
"""Random-resized-crop aspect ratio range (width / height), drawn log-uniformly."""

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error, zlib.error,
                  Image.DecompressionBombError)
"""What Pillow raises on corrupt or truncated input, depending on the format and where it breaks."""
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


def decode_image(data: bytes) -> torch.Tensor:
    """Encoded image bytes (any format Pillow reads) -> (3, H, W) uint8 RGB; `SampleSkip` if it fails."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decode now: a truncated file fails here, not later
            rgb = to_rgb(img)
    except _DECODE_ERRORS as e:
        message = re.sub(r" ?<_io.BytesIO object at 0x[0-9a-f]+>", "", str(e))  # no noise in the log
        raise SampleSkip("image_decode", f"{type(e).__name__}: {message}") from None
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow image -> 8-bit RGB (see the module docstring for the conversions)."""
    if img.mode in _WIDE_MODES:
        wide = np.asarray(img).astype(np.int64)
        return Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


@dataclass(frozen=True)
class Box:
    """A crop region in source pixels and whether to flip it horizontally."""

    top: int
    left: int
    height: int
    width: int
    flip: bool = False


def random_resized_crop_box(height: int, width: int, *, scale: tuple[float, float], rng: random.Random,
                            hflip: bool, ratio: tuple[float, float] = ASPECT_RATIO) -> Box:
    """Area fraction uniform in `scale`, aspect log-uniform in `ratio`, position uniform.

    Ten draws that fit; otherwise the largest centre crop whose aspect lies in `ratio`.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    flip = hflip and rng.random() < 0.5
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return Box(rng.randint(0, height - h), rng.randint(0, width - w), h, w, flip)
    aspect = min(max(width / height, ratio[0]), ratio[1])
    w, h = (width, min(height, round(width / aspect))) if width / height < aspect else \
        (min(width, round(height * aspect)), height)
    return Box((height - h) // 2, (width - w) // 2, h, w, flip)


def centre_crop_box(height: int, width: int, fraction: float = EVAL_CROP_FRACTION) -> Box:
    """The centre square of side `fraction` x the short side (evaluation)."""
    side = max(1, round(min(height, width) * fraction))
    return Box((height - side) // 2, (width - side) // 2, side, side)


def eval_view_boxes(height: int, width: int, views: int, fraction: float = EVAL_CROP_FRACTION) -> list[Box]:
    """`views` evaluation crops: the centre crop's square, placed evenly along the longer side
    (1 view: the centre crop; 3: both ends and the centre)."""
    centre = centre_crop_box(height, width, fraction)
    if views == 1:
        return [centre]
    slack_h, slack_w = height - centre.height, width - centre.width
    along_h = slack_h >= slack_w
    boxes = []
    for v in range(views):
        offset = round(v * (slack_h if along_h else slack_w) / (views - 1))
        boxes.append(Box(offset, centre.left, centre.height, centre.width) if along_h
                     else Box(centre.top, offset, centre.height, centre.width))
    return boxes


def apply_box(pixels: torch.Tensor, box: Box, size: int) -> torch.Tensor:
    """Crop `box` from (..., 3, H, W) uint8, resize to size x size (bilinear, antialiased), flip."""
    out = TF.resized_crop(pixels, box.top, box.left, box.height, box.width, [size, size], antialias=True)
    return out.flip(-1) if box.flip else out


def normalize(batch: torch.Tensor, *, pin_memory: bool = False) -> torch.Tensor:
    """uint8 (B, 3, ...) -> float32 with ImageNet mean/std per channel: (x / 255 - mean) / std.

    Runs in the main process on what the workers sent: uint8 crosses the process boundary (a
    quarter of the bytes of float32), and with `pin_memory` the result lands in page-locked memory,
    ready for an asynchronous copy to the GPU.
    """
    shape = (1, 3) + (1,) * (batch.dim() - 2)
    std = torch.tensor(IMAGENET_STD)
    scale = (1 / (255 * std)).view(shape)
    bias = (-torch.tensor(IMAGENET_MEAN) / std).view(shape)
    out = torch.empty(batch.shape, dtype=torch.float32, pin_memory=pin_memory)
    # three vectorised same-dtype passes: a mixed uint8/float addcmul is several times slower
    return out.copy_(batch).mul_(scale).add_(bias)


# ----------------------------------------------------------------------------- samples -> tensors

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
VIDEO_EXTS = ("mp4", "webm", "mkv", "mov", "avi", "m4v")


@dataclass(frozen=True)
class SampleSpec:
    """How raw samples become tensors (picklable, so DataLoader workers get a copy)."""

    size: int
    crop_scale: tuple[float, float]
    hflip: bool
    clip_frames: int
    """Frames per clip; 0 = an image stream, whose samples are (3, S, S) images."""
    frame_step: int
    target_fps: float | None
    clips_per_video: int
    short_video: str
    decoder: str
    eval_clips: int = 1
    """Evaluation: clips per video at evenly spaced positions."""
    eval_views: int = 1
    """Evaluation: crops per image or clip, evenly spaced along the longer side."""

    @classmethod
    def from_data(cls, d: DataConfig, *, clips: bool, train: bool) -> SampleSpec:
        """The spec of `d`'s samples: clips of `d.num_frames` frames when `clips` (a video model;
        images then become static clips), else images. Whoever builds the model decides `clips`."""
        return cls(size=d.image_size, crop_scale=tuple(d.crop_scale), hflip=d.hflip,
                   clip_frames=d.num_frames if clips else 0, frame_step=d.frame_step,
                   target_fps=d.target_fps, clips_per_video=d.clips_per_video if train else 1,
                   short_video=d.short_video, decoder=d.decoder, eval_clips=1 if train else d.eval_clips,
                   eval_views=1 if train else d.eval_views)


def parse_label(members: dict[str, bytes]) -> int:
    """`cls` (an integer as text), else `json` {"label": int} (or {"cls": int}); -1 when unlabelled."""
    try:
        if "cls" in members:
            return int(members["cls"].decode("utf-8").strip())
        if "json" in members:
            meta = json.loads(members["json"])
            value = meta.get("label", meta.get("cls")) if isinstance(meta, dict) else None
            if value is None:
                return -1
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"json label {value!r} is not an integer")
            return value
    except (ValueError, UnicodeDecodeError) as e:
        raise SampleSkip("bad_label", f"{type(e).__name__}: {e}") from None
    return -1


def decode_sample(raw: RawSample, spec: SampleSpec, *, kind: str | None,
                  rng: random.Random | None) -> list[tuple[torch.Tensor, int]]:
    """(pixels uint8, label) pairs of one raw sample; several for a video with clips_per_video > 1,
    and at evaluation one per clip and view (`eval_clips` x `eval_views`, clip-major).

    `kind` is the source's `image`/`video` (None: whatever the sample holds, videos first).
    `rng` draws the random crop and clip starts (training); None gives the evaluation transform.
    Pixels are (3, S, S) for an image stream and (3, T, S, S) for a clip stream. `SampleSkip`
    when the sample is unusable.
    """
    empty = [ext for ext, data in raw.members.items() if not data]
    if empty:
        raise SampleSkip("empty_member", f"zero-length member(s) {', '.join(empty)}")
    video = _member(raw, VIDEO_EXTS) if kind in ("video", None) else None
    image = _member(raw, IMAGE_EXTS) if kind in ("image", None) and video is None else None
    if video is None and image is None:
        wanted = VIDEO_EXTS if kind == "video" else IMAGE_EXTS if kind == "image" else IMAGE_EXTS + VIDEO_EXTS
        raise SampleSkip("missing_key", f"no {'|'.join(wanted)} member (has: {', '.join(raw.members) or 'nothing'})")
    label = parse_label(raw.members)
    if image is not None:
        return [(pixels, label) for pixels in _image_pixels(image, spec, rng)]
    if not spec.clip_frames:
        raise SampleSkip("missing_key", "a video sample in an image stream (no video source, image model)")
    return [(clip, label) for clip in _clips(video, spec, rng)]


def _member(raw: RawSample, exts: tuple[str, ...]) -> bytes | None:
    return next((raw.members[e] for e in exts if e in raw.members), None)


def _boxes(h: int, w: int, spec: SampleSpec, rng: random.Random | None) -> list[Box]:
    """One random crop (training), or the evaluation views."""
    if rng is not None:
        return [random_resized_crop_box(h, w, scale=spec.crop_scale, rng=rng, hflip=spec.hflip)]
    return eval_view_boxes(h, w, spec.eval_views)


def _image_pixels(data: bytes, spec: SampleSpec, rng: random.Random | None) -> list[torch.Tensor]:
    pixels = decode_image(data)
    _, h, w = pixels.shape
    out = [apply_box(pixels, box, spec.size) for box in _boxes(h, w, spec, rng)]
    if spec.clip_frames:  # a static clip, so images and videos share one batch shape
        out = [o.unsqueeze(1).expand(-1, spec.clip_frames, -1, -1) for o in out]
    return out


def _clips(data: bytes, spec: SampleSpec, rng: random.Random | None) -> list[torch.Tensor]:
    reader = open_video(data, spec.decoder)
    try:
        step = clip_step(fps=reader.fps, frame_step=spec.frame_step, target_fps=spec.target_fps)
        n = spec.clips_per_video if rng is not None else spec.eval_clips
        clips = []
        for c in range(n):
            indices = sample_frame_indices(reader.num_frames, num_frames=spec.clip_frames, step=step,
                                           rng=rng, short=spec.short_video, position=(c + 0.5) / n)
            if indices is None:
                raise SampleSkip("short_video", f"{reader.num_frames} frames, one clip needs "
                                 f"{math.floor((spec.clip_frames - 1) * step + 0.5) + 1} (data.short_video=skip)")
            frames = reader.read(indices)  # (T, 3, H, W)
            _, _, h, w = frames.shape
            for box in _boxes(h, w, spec, rng):  # one box for all frames of a clip
                clips.append(apply_box(frames, box, spec.size).permute(1, 0, 2, 3))
        return clips
    finally:
        reader.close()


def collate(items: list[tuple[torch.Tensor, int]]) -> dict[str, Any]:
    """(pixels uint8, label) pairs -> {"x": uint8 batch, "label": int64}; `normalize` makes x float.

    `default_collate` stacks straight into shared memory inside a DataLoader worker, so the batch
    reaches the main process without another copy.
    """
    return {"x": default_collate([p for p, _ in items]),
            "label": torch.tensor([label for _, label in items], dtype=torch.int64)}
