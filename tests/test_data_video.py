"""Video clips: frame indices, decoding exactly those frames (with seeking), padding, shared crops."""

import random

import numpy as np
import pytest
import torch

from jepa.data.skips import SampleSkip
from jepa.data.streams import RawSample
from jepa.data.transforms import SampleSpec, decode_sample
from jepa.data.video import (PyAVReader, decode_clip, encode_mp4, require_decoder, sample_frame_indices,
                             torchcodec_available)
from jepa.errors import UserError

BITS, BAND = 9, 8  # frame number as 9 black/white vertical bands, 8 px each: survives lossy coding


def counter_video(num_frames: int, *, fps: float = 25.0, gop: int = 10) -> bytes:
    """An mp4 whose frame i shows i in binary (band b white when bit b of i is set)."""
    side = BITS * BAND  # square, so a full-frame crop at this size leaves the bands untouched
    frames = np.zeros((num_frames, side, side, 3), np.uint8)
    for i in range(num_frames):
        for b in range(BITS):
            if (i >> b) & 1:
                frames[i, :, b * BAND:(b + 1) * BAND] = 255
    return encode_mp4(frames, fps=fps, crf=12, gop=gop)


def frame_numbers(clip: torch.Tensor) -> list[int]:
    """Read back the numbers from (T, 3, H, W) or (3, T, H, W) uint8 frames with W = BITS * BAND."""
    if clip.shape[0] == 3 and clip.shape[1] != 3:
        clip = clip.permute(1, 0, 2, 3)
    bands = clip.float().mean(dim=(1, 2)).reshape(clip.shape[0], BITS, BAND).mean(-1)  # (T, BITS)
    return [sum(1 << b for b in range(BITS) if bands[t, b] > 127) for t in range(clip.shape[0])]


@pytest.fixture(scope="module")
def long_video() -> bytes:
    return counter_video(300)


@pytest.mark.parametrize("total, num_frames, step, expected", [
    (20, 4, 2, [6, 8, 10, 12]),     # centre of the 14 fitting starts 0..13
    (7, 4, 2, [0, 2, 4, 6]),        # exactly fits
    (10, 3, 2.5, [2, 5, 7]),        # fractional step: offsets 0, 3 (2.5 rounded half up), 5
    (5, 4, 2, [0, 2, 4, 4]),        # short: padded with the last frame
])
def test_centre_indices(total, num_frames, step, expected):
    assert sample_frame_indices(total, num_frames=num_frames, step=step) == expected


def test_random_start_covers_every_fitting_start():
    rng = random.Random(0)
    starts = {sample_frame_indices(12, num_frames=4, step=3, rng=rng)[0] for _ in range(300)}
    assert starts == {0, 1, 2}  # last start 12 - 1 - 9 = 2


def test_short_video_skip_gives_none():
    assert sample_frame_indices(5, num_frames=4, step=2, short="skip") is None
    assert sample_frame_indices(7, num_frames=4, step=2, short="skip") == [0, 2, 4, 6]


def test_decoded_frames_are_the_requested_ones(long_video):
    indices = [0, 1, 2, 77, 78, 150, 150, 299]
    assert frame_numbers(decode_clip(long_video, indices)) == indices


def test_late_clip_seeks_instead_of_decoding_everything(long_video):
    reader = PyAVReader(long_video)
    assert reader.num_frames == 300 and reader.fps == 25
    indices = list(range(250, 266, 2))
    clip = reader.read(indices)
    assert frame_numbers(clip) == indices
    # from the keyframe at or before 250 (gop 10) to 264: about 15-25 frames, never all 300
    assert reader.frames_decoded < 40
    early = reader.read([3, 5])  # a second read on the same reader seeks back
    assert frame_numbers(early) == [3, 5]
    reader.close()


def spec(**kw) -> SampleSpec:
    base = dict(size=BITS * BAND, crop_scale=(1.0, 1.0), hflip=False, clip_frames=8, frame_step=1,
                target_fps=None, clips_per_video=1, short_video="pad", decoder="pyav")
    base.update(kw)
    return SampleSpec(**base)


def decode_video(data: bytes, sp: SampleSpec, seed: int = 0):
    raw = RawSample(url="mem", key="k", members={"mp4": data, "cls": b"3"})
    return decode_sample(raw, sp, kind="video", rng=random.Random(seed))


@pytest.mark.parametrize("frame_step, target_fps, gap", [(1, None, 1), (4, None, 4), (4, 5.0, 5), (1, 12.5, 2)])
def test_clip_spacing_from_frame_step_or_target_fps(long_video, frame_step, target_fps, gap):
    for seed in range(3):
        (clip, label), = decode_video(long_video, spec(frame_step=frame_step, target_fps=target_fps), seed)
        assert label == 3 and clip.shape == (3, 8, BITS * BAND, BITS * BAND)
        numbers = frame_numbers(clip)
        assert np.diff(numbers).tolist() == [gap] * 7
        assert 0 <= numbers[0] and numbers[-1] < 300


def test_short_video_padded_or_skipped():
    short = counter_video(10)
    reader = PyAVReader(short)
    indices = sample_frame_indices(reader.num_frames, num_frames=8, step=2)
    assert indices == [0, 2, 4, 6, 8, 9, 9, 9]
    assert frame_numbers(reader.read(indices)) == indices
    with pytest.raises(SampleSkip) as e:
        decode_video(short, spec(frame_step=2, short_video="skip"))
    assert e.value.kind == "short_video"
    (clip, _), = decode_video(short, spec(frame_step=2, short_video="pad"))
    assert frame_numbers(clip) == indices


def test_one_crop_and_flip_for_all_frames():
    """Identical frames under a random crop + flip stay identical: the crop is drawn once per clip."""
    rng = np.random.default_rng(0)
    still = rng.integers(0, 256, size=(1, 48, 64, 3), dtype=np.uint8).repeat(12, axis=0)
    data = encode_mp4(still, fps=10, crf=0)
    for seed in range(4):
        (clip, _), = decode_video(data, spec(size=16, crop_scale=(0.1, 0.3), hflip=True), seed=seed)
        assert clip.shape == (3, 8, 16, 16)
        for t in range(1, 8):
            assert torch.equal(clip[:, t], clip[:, 0])


def test_several_clips_per_video(long_video):
    items = decode_video(long_video, spec(size=32, clips_per_video=3, frame_step=2))
    assert len(items) == 3 and all(label == 3 for _, label in items)
    assert not torch.equal(items[0][0], items[1][0])  # independent starts


@pytest.mark.parametrize("data, kind", [(b"", "empty_member"), (b"\x00" * 300, "video_decode")])
def test_unreadable_video_is_a_sample_skip(data, kind):
    with pytest.raises(SampleSkip) as e:
        decode_clip(data, [0])
    assert e.value.kind == kind


def test_truncated_mp4_is_a_sample_skip(long_video):
    with pytest.raises(SampleSkip) as e:
        decode_clip(long_video[: len(long_video) // 2], [0, 1])
    assert e.value.kind == "video_decode"


@pytest.mark.skipif(torchcodec_available(), reason="torchcodec is installed here")
def test_torchcodec_missing_is_a_clear_error():
    require_decoder("pyav")
    with pytest.raises(UserError, match="torchcodec is not installed"):
        require_decoder("torchcodec")
