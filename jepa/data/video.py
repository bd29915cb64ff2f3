"""Video clips: which frames to take, and decoding only those (PyAV; torchcodec when installed).

Frame sampling: a clip is `num_frames` frames `step` source frames apart (`step` may be fractional
when it comes from a target fps: 30 fps sampled at 12 fps is step 2.5, indices rounded). A video
shorter than one clip is padded by repeating its last frame, or skipped.

Decoding seeks to the keyframe at or before the first frame needed, decodes forward, converts only
the frames asked for to RGB and stops right after the last one, so a late clip in a long video
costs a few GOPs, not the whole file. Frame numbers come from presentation timestamps
(index = round((pts - start) x time_base x fps)), which is exact for constant-frame-rate video.
"""

from __future__ import annotations

import io
import math
import random
from fractions import Fraction
from typing import Sequence

import numpy as np
import torch

from jepa.data.skips import SampleSkip
from jepa.errors import UserError


def clip_step(*, fps: float | None, frame_step: int, target_fps: float | None) -> float:
    """Source frames between two sampled frames: fps / target_fps, or `frame_step` when no target fps."""
    if target_fps is None or not fps:
        return float(frame_step)
    return fps / target_fps


def sample_frame_indices(total_frames: int, *, num_frames: int, step: float,
                         rng: random.Random | None = None, short: str = "pad",
                         position: float = 0.5) -> list[int] | None:
    """Indices of one clip of `num_frames` frames `step` apart in a video of `total_frames` frames.

    The start is uniform over every start that fits (`rng`), or, for evaluation (`rng=None`), the
    start at `position` of the way through them (0 the first, 0.5 the centre, 1 the last). A video
    too short for one clip gives indices clamped to its last frame (`short="pad"`, the last frame
    repeats) or None (`short="skip"`).
    """
    if total_frames < 1 or num_frames < 1 or step <= 0:
        raise ValueError(f"need total_frames, num_frames >= 1 and step > 0, got {total_frames}, {num_frames}, {step}")
    offsets = [math.floor(k * step + 0.5) for k in range(num_frames)]
    last_start = total_frames - 1 - offsets[-1]
    if last_start < 0:
        if short == "skip":
            return None
        return [min(o, total_frames - 1) for o in offsets]
    start = rng.randint(0, last_start) if rng is not None else int(position * last_start)
    return [start + o for o in offsets]


class PyAVReader:
    """Random access to the frames of one encoded video held in memory."""

    def __init__(self, data: bytes):
        import av

        try:
            self._container = av.open(io.BytesIO(data), mode="r")
            self._stream = self._container.streams.video[0]
        except (av.FFmpegError, IndexError, ValueError, OSError) as e:
            raise SampleSkip("video_decode", f"cannot open: {type(e).__name__}: {e}") from None
        s = self._stream
        rate = s.average_rate or s.guessed_rate or s.base_rate
        if not rate:
            raise SampleSkip("video_decode", "the video stream has no frame rate")
        self.fps = float(rate)
        self._time_base = s.time_base
        self._start = s.start_time or 0
        self.num_frames = s.frames or self._estimate_frames()
        self.frames_decoded = 0
        """Frames decoded so far, including those decoded only to reach a needed one (seek cost)."""

    def _estimate_frames(self) -> int:
        s = self._stream
        if s.duration and s.time_base:
            return max(1, round(float(s.duration * s.time_base) * self.fps))
        if self._container.duration:
            return max(1, round(self._container.duration / 1e6 * self.fps))
        raise SampleSkip("video_decode", "the container states neither a frame count nor a duration")

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames at `indices` (repeats allowed) as (T, 3, H, W) uint8 RGB."""
        import av

        wanted = sorted(set(indices))
        try:
            got = self._decode_range(wanted)
        except (av.FFmpegError, ValueError, OSError) as e:
            raise SampleSkip("video_decode", f"{type(e).__name__}: {e}") from None
        if not got:
            raise SampleSkip("video_decode", f"no frame decoded at or after frame {wanted[0]}")
        return torch.from_numpy(np.stack(_fill_missing(got, indices))).permute(0, 3, 1, 2)

    def _decode_range(self, wanted: list[int]) -> dict[int, np.ndarray]:
        first, last, want = wanted[0], wanted[-1], set(wanted)
        pts = self._start + int(first / self.fps / self._time_base)
        self._container.seek(pts, stream=self._stream, backward=True, any_frame=False)
        got: dict[int, np.ndarray] = {}
        for frame in self._container.decode(self._stream):
            self.frames_decoded += 1
            if frame.pts is None:
                raise ValueError("frames carry no timestamps")
            index = round(float((frame.pts - self._start) * self._time_base) * self.fps)
            if index in want:
                got[index] = frame.to_ndarray(format="rgb24")
            if index >= last:
                break
        return got

    def close(self) -> None:
        self._container.close()


class TorchcodecReader:
    """The same interface on torchcodec's decoder (optional dependency, often faster)."""

    def __init__(self, data: bytes):
        from torchcodec.decoders import VideoDecoder

        try:
            self._decoder = VideoDecoder(data, seek_mode="approximate", num_ffmpeg_threads=1)
        except (RuntimeError, ValueError) as e:
            raise SampleSkip("video_decode", f"cannot open: {type(e).__name__}: {e}") from None
        meta = self._decoder.metadata
        self.fps = float(meta.average_fps or 0) or None
        self.num_frames = int(meta.num_frames or 0)
        if not self.num_frames:
            raise SampleSkip("video_decode", "the container states no frame count")
        self.frames_decoded = 0

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        wanted = sorted(set(min(i, self.num_frames - 1) for i in indices))
        try:
            frames = self._decoder.get_frames_at(indices=wanted).data
        except (RuntimeError, IndexError, ValueError) as e:
            raise SampleSkip("video_decode", f"{type(e).__name__}: {e}") from None
        self.frames_decoded += len(wanted)
        row = {i: r for r, i in enumerate(wanted)}
        return frames[[row[min(i, self.num_frames - 1)] for i in indices]]

    def close(self) -> None:
        self._decoder = None


def torchcodec_available() -> bool:
    try:
        import torchcodec.decoders  # noqa: F401
    except ImportError:
        return False
    return True


def require_decoder(decoder: str) -> None:
    """Fail early, in the main process, when the configured decoder is not installed."""
    if decoder == "torchcodec" and not torchcodec_available():
        raise UserError("data.decoder=torchcodec but torchcodec is not installed: `pip install torchcodec` "
                        "(matching your torch version), or use data.decoder=pyav")
    if decoder not in ("pyav", "torchcodec"):
        raise UserError(f"data.decoder={decoder!r} is unknown: use pyav or torchcodec")


def open_video(data: bytes, decoder: str = "pyav") -> PyAVReader | TorchcodecReader:
    """A reader for encoded video bytes; `SampleSkip` when the bytes are not a readable video."""
    if not data:
        raise SampleSkip("empty_member", "zero-length video")
    return TorchcodecReader(data) if decoder == "torchcodec" else PyAVReader(data)


def decode_clip(data: bytes, indices: Sequence[int], decoder: str = "pyav") -> torch.Tensor:
    """The frames at `indices` of an encoded video, (T, 3, H, W) uint8 RGB (opens, reads, closes)."""
    reader = open_video(data, decoder)
    try:
        return reader.read(indices)
    finally:
        reader.close()


def _fill_missing(got: dict[int, np.ndarray], indices: Sequence[int]) -> list[np.ndarray]:
    """Frames in `indices` order; an index past the decoded end repeats the nearest earlier frame.

    Containers may overstate their frame count by a frame or two; padding those few is the same
    rule as for short videos. A missing frame with nothing decoded before it takes the first one.
    """
    have = sorted(got)
    out = []
    for i in indices:
        j = np.searchsorted(have, i, side="right") - 1
        out.append(got[have[max(j, 0)]])
    return out


def encode_mp4(frames: np.ndarray, *, fps: float, crf: int = 18, gop: int | None = None) -> bytes:
    """(T, H, W, 3) uint8 RGB -> H.264 mp4 bytes (even H and W; `gop` = keyframe interval)."""
    import av

    _, h, w, c = frames.shape
    if c != 3 or h % 2 or w % 2:
        raise ValueError(f"need (T, H, W, 3) frames with even H and W, got {frames.shape}")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # Byte-stable output: one encoder thread (x264's output depends on its thread count), and no
        # macroblock-tree rate control, which made short clips differ between runs now and then.
        options = {"crf": str(crf), "threads": "1", "x264-params": "mbtree=0"}
        stream.options = {**options, **({"g": str(gop)} if gop else {})}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()
