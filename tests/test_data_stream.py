"""Streaming to ranks and workers: equal batch counts, reproducible resampling, exact resume,
evaluation that reads every sample once, `pipe:` URLs, mixed image/video streams."""

import io
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jepa.config import Config, from_dict
from jepa.data.train_stream import DataPosition, WorkerCursor
from jepa.data.write import ShardSample, ShardSink, write_synthetic
from jepa.masks import mask_rng
from stream_helpers import eval_loader, train_loader

SHARD_SIZES = (7, 3, 11, 1, 5)  # unequal on purpose: 27 samples
SIZE = 16


def png(value: int) -> bytes:
    """A tiny image whose pixels encode `value` (so samples are distinguishable after decoding)."""
    arr = np.full((SIZE, SIZE, 3), value % 256, np.uint8)
    arr[0, 0] = [value // 256, value % 256, 7]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def unequal_shards(tmp_path_factory) -> tuple[str, list[str]]:
    """5 shards of 7, 3, 11, 1 and 5 samples, a manifest, and every key."""
    out = tmp_path_factory.mktemp("unequal")
    keys, shards, index = [], [], 0
    for s, n in enumerate(SHARD_SIZES):
        sink = ShardSink(out, shard_size=n, prefix=f"part{s}")
        for _ in range(n):
            sink.write(ShardSample(f"{index:05d}", "png", png(index), label=index % 4))
            keys.append(f"{index:05d}")
            index += 1
        shards.extend(sink.close())
    (out / "manifest.json").write_text(json.dumps({"shards": shards}))
    return str(out / "part{0..4}-000000.tar"), keys


def config(urls: str, seed: int = 3, **data) -> Config:
    base = dict(sources=[{"urls": urls, "kind": "image"}], batch_size=4, num_workers=0,
                samples_per_epoch=20, image_size=SIZE, shuffle_buffer=6)
    base.update(data)
    return from_dict({"data": base, "model": {"patch_size": 8}, "seed": seed})



class FakeMasks:
    """Stands in for a mask generator: `(batch_size, generator) -> tensor` drawn from the generator."""

    def __call__(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, 1000, (batch_size, 3), generator=generator)


def take(stream, n: int) -> list[dict]:
    out = []
    for batch in stream:
        out.append(batch)
        if len(out) == n:
            break
    return out


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x["x"], y["x"]) and torch.equal(x["label"], y["label"]) and torch.equal(x["masks"], y["masks"])
        for x, y in zip(a, b))


@pytest.mark.parametrize("workers", [0, 2])
def test_every_rank_yields_the_same_batches_per_epoch(unequal_shards, workers):
    urls, _ = unequal_shards
    cfg = config(urls, num_workers=workers)
    per_rank = []
    for rank in range(2):
        stream = train_loader(cfg, rank=rank, world_size=2, collate_masks=FakeMasks(), start=None)
        assert stream.batches_per_epoch == 5
        batches = take(stream, 10)
        assert all(b["x"].shape == (4, 3, SIZE, SIZE) and b["x"].dtype == torch.float32 for b in batches)
        assert stream.position().epoch == 2 and stream.position().batch == 0
        per_rank.append(batches)
    assert not same(per_rank[0], per_rank[1])  # ranks draw different samples


def test_masks_come_from_mask_rng_of_rank_worker_and_batch(unequal_shards):
    urls, _ = unequal_shards
    stream = train_loader(config(urls, num_workers=2), rank=1, world_size=2, collate_masks=FakeMasks(),
                                start=None)
    for g, batch in enumerate(take(stream, 6)):
        assert torch.equal(batch["masks"], FakeMasks()(4, mask_rng(3, 1, g % 2, g)))


@pytest.mark.parametrize("workers", [0, 2])
def test_resampled_order_is_reproducible_from_the_seed(unequal_shards, workers):
    urls, _ = unequal_shards
    runs = [take(train_loader(config(urls, num_workers=workers), rank=0, world_size=2,
                                    collate_masks=FakeMasks(), start=None), 7) for _ in range(2)]
    assert same(*runs)
    other = take(train_loader(config(urls, seed=4, num_workers=workers), rank=0, world_size=2,
                                    collate_masks=FakeMasks(), start=None), 7)
    assert not same(runs[0], other)


@pytest.mark.parametrize("workers, stop", [(0, 3), (2, 7), (2, 10)])
def test_resume_continues_with_the_same_batches(unequal_shards, workers, stop):
    urls, _ = unequal_shards
    cfg = config(urls, num_workers=workers)
    straight = take(train_loader(cfg, rank=1, world_size=2, collate_masks=FakeMasks(), start=None), 14)
    first = train_loader(cfg, rank=1, world_size=2, collate_masks=FakeMasks(), start=None)
    head = take(first, stop)
    saved = pickle.loads(pickle.dumps(first.position()))
    assert (saved.epoch, saved.batch) == divmod(stop, 5)
    resumed = train_loader(cfg, rank=1, world_size=2, collate_masks=FakeMasks(), start=saved)
    assert same(head + take(resumed, 14 - stop), straight)


def test_iterating_again_continues_where_it_stopped(unequal_shards):
    urls, _ = unequal_shards
    cfg = config(urls, num_workers=2)
    straight = take(train_loader(cfg, rank=0, world_size=1, collate_masks=FakeMasks(), start=None), 9)
    stream = train_loader(cfg, rank=0, world_size=1, collate_masks=FakeMasks(), start=None)
    assert same(take(stream, 4) + take(stream, 5), straight)


def test_resume_under_another_layout_keeps_epoch_and_batch(unequal_shards, caplog):
    urls, _ = unequal_shards
    two = train_loader(config(urls, num_workers=2), rank=0, world_size=1, collate_masks=None, start=None)
    take(two, 7)
    with caplog.at_level(logging.WARNING, logger="jepa.data"):
        one = train_loader(config(urls, num_workers=0), rank=0, world_size=1, collate_masks=None,
                                 start=two.position())
    assert caplog.text.count("layout changed") == 1 and "data.num_workers: 2 -> 1" in caplog.text
    assert (one.position().epoch, one.position().batch) == (1, 2)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jepa.data"):  # another rank: rank 0 says it for all
        other = train_loader(config(urls, num_workers=2), rank=1, world_size=2, collate_masks=None, start=None)
        take(other, 2)
        train_loader(config(urls, num_workers=0), rank=1, world_size=2, collate_masks=None, start=other.position())
    assert caplog.text == ""
    take(one, 3)
    assert (one.position().epoch, one.position().batch) == (2, 0)


@pytest.mark.parametrize("workers, world", [(0, 2), (2, 2), (2, 3)])
def test_eval_reads_every_sample_exactly_once(unequal_shards, workers, world):
    """2 x 2 and 3 x 2 slots over 5 shards: with 6 slots one worker holds no shard at all."""
    urls, keys = unequal_shards
    cfg = config(urls, num_workers=workers)
    seen, counts = [], []
    for rank in range(world):
        stream = eval_loader(urls, cfg=cfg, rank=rank, world_size=world, batch_size=3)
        rank_keys = []
        for batch in stream:
            assert batch["x"].shape[0] == len(batch["key"]) == len(batch["label"]) <= 3
            rank_keys += batch["key"]
            for key, label, x in zip(batch["key"], batch["label"], batch["x"]):
                assert label == int(key) % 4
        assert stream.samples == len(rank_keys) == stream.expected_samples()
        seen += rank_keys
        counts.append(len(rank_keys))
    assert sorted(seen) == keys
    assert len(set(counts)) > 1  # ranks may differ: callers all-reduce `samples`, not per batch


def test_eval_pixels_are_the_centre_crop(unequal_shards):
    urls, _ = unequal_shards
    stream = eval_loader(urls, cfg=config(urls), rank=0, world_size=1, batch_size=32)
    (batch,) = list(stream)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    for key, x in zip(batch["key"], batch["x"]):
        pixels = (x * std + mean) * 255
        assert torch.allclose(pixels[:, SIZE // 2, SIZE // 2], torch.full((3,), float(int(key) % 256)), atol=0.5)


def test_pipe_urls_read_the_same_samples(unequal_shards):
    urls, keys = unequal_shards
    folder = Path(urls).parent
    pipe = "pipe:cat " + str(folder / "part{0..4}-000000.tar")
    cfg = config(pipe, num_workers=2)
    got = [k for b in eval_loader(pipe, cfg=cfg, rank=0, world_size=1, batch_size=5) for k in b["key"]]
    assert sorted(got) == keys
    train = take(train_loader(cfg, rank=0, world_size=1, collate_masks=FakeMasks(), start=None), 3)
    plain = take(train_loader(config(urls, num_workers=2), rank=0, world_size=1, collate_masks=FakeMasks(),
                                    start=None), 3)
    assert same(train, plain)  # same shards, same order: pipe or path makes no difference


@pytest.fixture(scope="module")
def tiny_videos(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("videos")
    write_synthetic(out, kind="video", n=6, classes=2, size=16, frames=12, seed=0, shard_size=3, progress=False)
    return str(out / "shard-{000000..000001}.tar")


def test_images_become_static_clips_in_a_mixed_stream(unequal_shards, tiny_videos):
    urls, _ = unequal_shards
    sources = [{"urls": tiny_videos, "kind": "video", "weight": 1.0}, {"urls": urls, "kind": "image", "weight": 1.0}]
    cfg = config(urls, sources=sources, num_frames=4, frame_step=2, batch_size=8, samples_per_epoch=64)
    batches = take(train_loader(cfg, rank=0, world_size=1, collate_masks=None, start=None), 4)
    static = moving = 0
    for batch in batches:
        assert batch["x"].shape == (8, 3, 4, SIZE, SIZE)
        for clip, label in zip(batch["x"], batch["label"]):
            if torch.equal(clip[:, 0], clip[:, -1]):
                static += 1
            else:
                moving += 1
    assert static > 5 and moving > 5  # both sources show up, weights 1:1


def test_resume_in_the_middle_of_a_videos_clips(tiny_videos):
    """clips_per_video=2 with batches of 3: a batch can end between two clips of one video."""
    cfg = config(tiny_videos, sources=[{"urls": tiny_videos, "kind": "video"}], num_frames=4, frame_step=2,
                 clips_per_video=2, batch_size=3, samples_per_epoch=9)
    straight = take(train_loader(cfg, rank=0, world_size=1, collate_masks=FakeMasks(), start=None), 5)
    first = train_loader(cfg, rank=0, world_size=1, collate_masks=FakeMasks(), start=None)
    head = take(first, 1)
    assert first.position().cursors[0].clips == 1  # one clip of the second video already used
    resumed = train_loader(cfg, rank=0, world_size=1, collate_masks=FakeMasks(), start=first.position())
    assert same(head + take(resumed, 4), straight)


def test_position_is_a_small_picklable_value(unequal_shards):
    urls, _ = unequal_shards
    stream = train_loader(config(urls, num_workers=2), rank=0, world_size=1, collate_masks=None, start=None)
    take(stream, 3)
    pos = stream.position()
    assert (pos.epoch, pos.batch) == (0, 3) and [c.worker for c in pos.cursors] == [0, 1]
    assert all(isinstance(c, WorkerCursor) and c.skips.ok > 0 for c in pos.cursors)
    assert pickle.loads(pickle.dumps(pos)) == pos
    assert len(pickle.dumps(pos)) < 2000  # no sample data, no shard lists: a few numbers per worker
