"""Bad data is skipped, counted by kind and logged; a stream that is all bad stops with a clear error."""

import io
import logging
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from jepa.config import from_dict
from jepa.data.skips import SkipLog
from jepa.data.video import encode_mp4
from jepa.errors import UserError
from stream_helpers import eval_loader, train_loader

SIZE = 16


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((SIZE, SIZE, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_tar(path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def good(key: str, value: int = 100) -> list[tuple[str, bytes]]:
    return [(f"{key}.png", png(value)), (f"{key}.cls", b"1")]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("bad")
    write_tar(d / "good.tar", [m for i in range(6) for m in good(f"g{i}", 10 * i)])
    whole = png(50)
    write_tar(d / "mixed.tar", [
        *good("m0"),
        ("m1.jpg", b"\xff\xd8\xff\xe0 this is not a jpeg at all" * 4), ("m1.cls", b"1"),   # corrupt image
        ("m2.png", whole[: len(whole) * 2 // 3]), ("m2.cls", b"1"),                         # truncated image
        ("m3.png", b""), ("m3.cls", b"1"),                                                  # zero-length member
        ("m4.cls", b"1"), ("m4.json", b"{}"),                                               # no image: missing key
        ("m5.png", png(5)), ("m5.cls", b"seven"),                                           # bad label
        *good("m6"),
    ])
    write_tar(d / "whole.tar", [m for i in range(4) for m in good(f"t{i}")])
    with tarfile.open(d / "whole.tar") as tar:
        cut = tar.getmember("t2.png").offset_data + 20  # inside the third sample's image
    (d / "truncated.tar").write_bytes((d / "whole.tar").read_bytes()[:cut])
    with tarfile.open(d / "whole.tar") as tar:
        boundary = tar.getmember("t3.png").offset  # a cut between two members, before t3's header
    (d / "cut.tar").write_bytes((d / "whole.tar").read_bytes()[:boundary])
    (d / "empty.tar").write_bytes(b"")
    write_tar(d / "allbad.tar", [(f"b{i}.jpg", b"garbage" * 20) for i in range(5)])
    video = encode_mp4(np.random.default_rng(0).integers(0, 255, (12, 16, 16, 3), dtype=np.uint8), fps=8)
    write_tar(d / "video.tar", [("v0.mp4", video), ("v0.cls", b"0"), ("v1.mp4", video[: len(video) // 2]),
                                ("v1.cls", b"1")])
    return {p.stem: str(p) for p in d.iterdir()} | {"missing": str(d / "missing.tar")}


def config(urls: str, kind: str = "image", **data):
    base = dict(sources=[{"urls": urls, "kind": kind}], batch_size=2, num_workers=0, samples_per_epoch=40,
                image_size=SIZE, shuffle_buffer=4, num_frames=4, frame_step=1, error_window=60)
    base.update(data)
    model = {"patch_size": 8, **({"rope": {"kind": "3d"}} if kind == "video" else {})}
    return from_dict({"data": base, "model": model, **({"mask": {"kind": "multiblock3d"}} if kind == "video" else {})})



@pytest.fixture
def no_sleep(monkeypatch):
    """A sleep per error is a bug (WebDataset's warn_and_continue sleeps 0.5 s per error).

    Millisecond polls stay allowed: `subprocess` uses them while waiting for a `pipe:` command to exit.
    """
    real_sleep = time.sleep

    def guarded(seconds):
        if seconds >= 0.05:
            raise AssertionError(f"time.sleep({seconds}) called")
        real_sleep(seconds)
    monkeypatch.setattr(time, "sleep", guarded)


EXPECTED = {"image_decode": 2, "empty_member": 1, "missing_key": 1, "bad_label": 1, "tar_read": 2, "shard_open": 2}
SOME_BAD = ("good", "mixed", "truncated", "cut", "missing", "empty")


@pytest.mark.parametrize("workers", [0, 2])
def test_eval_skips_and_counts_each_kind(shards, workers, no_sleep, caplog):
    urls = "::".join(shards[k] for k in SOME_BAD)
    stream = eval_loader(urls, cfg=config(urls, num_workers=workers), rank=0, world_size=1, batch_size=4)
    with caplog.at_level(logging.WARNING, logger="jepa.data"):
        keys = [k for batch in stream for k in batch["key"]]
    # truncated.tar breaks inside t2's image; cut.tar stops cleanly before t3, so t2 may be incomplete
    assert sorted(keys) == sorted([f"g{i}" for i in range(6)] + ["m0", "m6", "t0", "t1"] + ["t0", "t1"])
    assert dict(stream.skipped) == EXPECTED
    if workers == 0:  # worker processes log to their own stderr
        assert "truncated.tar key t2" in caplog.text and "mixed.tar key m1" in caplog.text
        assert "cut.tar key t2" in caplog.text and "missing.tar" in caplog.text


@pytest.mark.parametrize("workers", [0, 2])
def test_training_goes_on_and_batches_carry_the_counts(shards, workers, no_sleep):
    urls = "::".join(shards[k] for k in SOME_BAD)
    stream = train_loader(config(urls, num_workers=workers, max_error_fraction=0.9), rank=0, world_size=1,
                                collate_masks=None, start=None)
    summed: dict[str, int] = {}
    for _, batch in zip(range(40), stream):
        assert batch["x"].shape == (2, 3, SIZE, SIZE)
        for kind, n in batch["skipped"].items():
            summed[kind] = summed.get(kind, 0) + n
    assert summed == dict(stream.skipped)
    assert set(summed) == set(EXPECTED)  # every kind met and counted, none fatal


@pytest.mark.parametrize("workers, stop", [(0, 5), (2, 9)])
def test_skip_counts_and_budget_survive_a_resume(shards, workers, stop, no_sleep):
    """A resumed stream re-reads its epoch up to the saved place: the skips met on that re-read
    were counted before the save and are not counted again; counts and budget continue."""
    urls = "::".join(shards[k] for k in SOME_BAD)
    cfg = config(urls, num_workers=workers, max_error_fraction=0.9)
    straight = train_loader(cfg, rank=0, world_size=1, collate_masks=None, start=None)
    expected = [b["skipped"] for _, b in zip(range(stop + 8), straight)]
    first = train_loader(cfg, rank=0, world_size=1, collate_masks=None, start=None)
    head = [b["skipped"] for _, b in zip(range(stop), first)]
    position = first.position()
    assert sum(c.skips.ok for c in position.cursors) > 0 and dict(position.skipped) == dict(first.skipped)
    resumed = train_loader(cfg, rank=0, world_size=1, collate_masks=None, start=position)
    tail = [b["skipped"] for _, b in zip(range(8), resumed)]
    assert head + tail == expected
    assert dict(resumed.skipped) == dict(straight.skipped) and sum(straight.skipped.values()) > 0
    assert resumed.position().cursors == straight.position().cursors  # counts and budget state too


def test_truncated_video_is_skipped_and_counted(shards, no_sleep):
    cfg = config(shards["video"], kind="video")
    stream = eval_loader(shards["video"], cfg=cfg, rank=0, world_size=1, batch_size=4)
    (batch,) = list(stream)
    assert batch["key"] == ["v0"] and batch["x"].shape == (1, 3, 4, SIZE, SIZE)
    assert dict(stream.skipped) == {"video_decode": 1}


def test_short_videos_skipped_by_config_are_counted(shards, no_sleep):
    cfg = config(shards["video"], kind="video", num_frames=8, frame_step=4, short_video="skip")
    stream = eval_loader(shards["video"], cfg=cfg, rank=0, world_size=1, batch_size=4)
    with pytest.raises(UserError, match="short_video"):  # nothing usable left: the budget stops it
        list(stream)
    assert dict(stream.skipped) == {"video_decode": 1, "short_video": 1}


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("which, kind", [("allbad", "image_decode"), ("missing", "shard_open"),
                                         ("empty", "shard_open")])
def test_all_bad_training_data_stops_with_a_clear_error(shards, workers, which, kind, no_sleep):
    stream = train_loader(config(shards[which], num_workers=workers), rank=0, world_size=1,
                                collate_masks=None, start=None)
    with pytest.raises(UserError) as e:
        next(iter(stream))
    message = str(e.value)
    assert shards[which] in message and kind in message and "max_error_fraction" in message
    assert "Traceback" not in message  # a worker's error arrives as a clean message


def test_all_bad_stops_even_when_any_fraction_is_allowed(shards, no_sleep):
    cfg = config(shards["allbad"], max_error_fraction=1.0)
    with pytest.raises(UserError, match="60 of the first 60"):
        next(iter(train_loader(cfg, rank=0, world_size=1, collate_masks=None, start=None)))


def test_all_bad_eval_data_stops_with_a_clear_error(shards, no_sleep):
    urls = "::".join([shards["allbad"], "pipe:cat " + shards["missing"]])
    stream = eval_loader(urls, cfg=config(urls), rank=0, world_size=1, batch_size=4)
    with pytest.raises(UserError) as e:
        list(stream)
    assert "allbad.tar key b0" in str(e.value) and "pipe:cat" in str(e.value)
    assert dict(stream.skipped) == {"image_decode": 5, "shard_open": 1}


def test_failing_pipe_reports_its_exit_status(shards, no_sleep, caplog):
    url = "pipe:cat " + shards["missing"]
    urls = "::".join([shards["good"], url])
    stream = eval_loader(urls, cfg=config(urls), rank=0, world_size=1, batch_size=8)
    with caplog.at_level(logging.WARNING, logger="jepa.data"):
        assert sum(len(b["key"]) for b in stream) == 6
    assert dict(stream.skipped) == {"shard_open": 1}
    assert "exited with status 1" in caplog.text


def test_log_is_rate_limited_and_never_silent(caplog):
    now = [0.0]
    log = SkipLog(window=None, log_first=3, log_every_s=30.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="jepa.data"):
        for i in range(50):
            now[0] += 1.0
            log.skip("image_decode", "s.tar", f"k{i}", "bad")
    lines = caplog.records
    assert [r.getMessage().endswith("k0: bad") for r in lines[:1]] == [True]
    assert len(lines) == 3 + 1  # three in full, then one summary line once 30 s have passed
    assert "30 more image_decode (total 33)" in lines[3].getMessage()
    assert log.totals == {"image_decode": 50} and log.take() == {"image_decode": 50} and log.take() == {}


@pytest.mark.parametrize("ok_first, fails, raises_at", [
    (0, 100, 51),      # nothing but failures: stops once they alone exceed half the window
    (60, 100, None),   # 60 good then failures: 40 of the first 100 failed, under the budget; later skips only count
    (40, 100, 51),     # 40 good then failures: the 51st failure exceeds half the window
])
def test_error_budget_over_the_first_window(ok_first, fails, raises_at):
    log = SkipLog(max_error_fraction=0.5, window=100)
    log.ok(ok_first)
    for i in range(1, fails + 1):
        try:
            log.skip("image_decode", "s.tar", str(i), "bad")
        except UserError:
            assert i == raises_at
            return
    assert raises_at is None


def test_error_budget_judges_merged_counts_and_short_streams():
    stepped = SkipLog(max_error_fraction=0.5, window=100)
    stepped.merge({"image_decode": 70}, ok=40, first=[])  # one merge steps past the window: 70 of 110 failed
    with pytest.raises(UserError, match="70 of the first 110"):
        stepped.check()
    short = SkipLog(max_error_fraction=0.5, window=100)
    short.merge({"image_decode": 6}, ok=4, first=[])
    short.check()  # 6 failures cannot yet exceed half of 100
    with pytest.raises(UserError, match="6 of all 10"):
        short.check_end()
    counting_only = SkipLog(window=None)
    counting_only.merge({"image_decode": 6}, ok=0, first=[])
    counting_only.check()
    counting_only.check_end()
