"""`jepa probe` end to end on synthetic labelled shards: sources (run folder, export, random init),
results, distributed extraction, cache, and one clear line for each kind of bad input."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jepa import cli
from jepa.config import from_dict, to_dict
from jepa.data.write import write_synthetic
from jepa.eval.encoder import load_encoder, random_like
from jepa.models.factory import build_encoder
from jepa.train.checkpoint import EMA_FILE, tag_for
from jepa.train.export import export_target

TINY = {"size": "tiny", "embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 16,
        "predictor": {"embed_dim": 32, "depth": 1, "num_heads": 1}}
QUICK = ["probe.linear_epochs=3", "probe.attentive_epochs=2", "probe.batch_size=16", "probe.knn_k=[3,5]",
         "probe.linear_lrs=[0.1,1.0]", "probe.linear_weight_decays=[0.0]", "probe.attentive_lrs=[0.001]"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("labelled")
    out = {}
    for name, n, seed in (("train", 48, 1), ("val", 24, 2)):
        write_synthetic(root / name, kind="image", n=n, classes=4, size=32, frames=1, seed=seed, shard_size=12,
                        progress=False)
        out[name] = str(root / name / f"shard-{{000000..{n // 12 - 1:06d}}}.tar")
    write_synthetic(root / "video", kind="video", n=4, classes=2, size=32, frames=8, seed=0, shard_size=4,
                    progress=False)
    out["video"] = str(root / "video" / "shard-000000.tar")
    return out


VIDEO = {"mask": {"kind": "multiblock3d"}, "data": {"image_size": 32, "num_frames": 4, "frame_step": 2}}
"""make_run(..., sections=VIDEO, rope={"kind": "3d"}): a video encoder on 4-frame 32 px clips."""


def make_run(tmp_path: Path, *, step: int = 7, sections: dict | None = None, **model) -> Path:
    """A run folder with one committed checkpoint holding a seeded encoder as its EMA target."""
    cfg = from_dict({"output_dir": str(tmp_path / "run"), "model": {**TINY, **model},
                     "hierarchy": {"levels": [{"block": -1}]}, "data": {"image_size": 32}, **(sections or {})})
    torch.manual_seed(step)
    tag_dir = Path(cfg.output_dir) / "checkpoints" / tag_for(step)
    tag_dir.mkdir(parents=True)
    torch.save(build_encoder(cfg).state_dict(), tag_dir / EMA_FILE)
    meta = {"step": step, "world_size": 1, "zero_stage": 0, "bf16": False, "config": to_dict(cfg)}
    (tag_dir / "meta.json").write_text(json.dumps(meta))
    (tag_dir.parent / "latest").write_text(tag_dir.name)
    return Path(cfg.output_dir)


def probe(source, shards, *extra, ok=True, capsys=None) -> dict | str:
    argv = ["probe", str(source), "--train", shards["train"], "--val", shards["val"], *extra, *QUICK]
    status = cli.main(argv)
    if not ok:
        assert status == 2
        (line,) = [x for x in capsys.readouterr().err.splitlines() if "jepa: error:" in x]  # one line
        return line
    assert status == 0
    out = Path(extra[extra.index("--out") + 1]) if "--out" in extra else Path(source) / "probe"
    return json.loads((out / "results.json").read_text())


def test_results_of_every_probe_with_the_baseline_beside(tmp_path, shards):
    run = make_run(tmp_path)
    results = probe(run, shards, "--baseline")
    assert set(results["encoders"]) == {"pretrained", "random_init"}
    assert results["source"]["step"] == 7 and results["source"]["encoder"] == "ema"
    for probes in results["encoders"].values():
        assert set(probes) == {"linear", "knn", "attentive"}
        linear = probes["linear"]
        assert len(linear["heads"]) == 2 and sum(h["chosen"] for h in linear["heads"]) == 1
        best = max(h["holdout_top1"] for h in linear["heads"])
        assert linear["heads"][linear["chosen"]]["holdout_top1"] == best  # chosen on held-out, not val
        assert linear["val_top1"] == linear["heads"][linear["chosen"]]["val_top1"]
        assert linear["num_classes"] == 4 and linear["train_samples"] == 48 and linear["val_samples"] == 24
        assert [e["k"] for e in probes["knn"]["entries"]] == [3, 5]
    assert results["baselines"]["random_init"]["kind"] == "random"
    assert (run / "probe" / "linear_grid.png").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert {"probe/pretrained/linear_top1", "probe/random_init/knn_top1"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("probe/pretrained/linear_top1")] == [7]


def test_a_run_folder_and_its_export_give_the_same_results(tmp_path, shards):
    run = make_run(tmp_path, abs_pos=True, rope={"kind": "none"})  # rebuilt from the file's config alone
    exported = export_target(run, tmp_path / "export" / "encoder.safetensors")
    from_run = load_encoder(run)
    from_file = load_encoder(exported)
    assert from_run.source["weights_sha1"] == from_file.source["weights_sha1"]
    a = probe(run, shards, "--kind", "linear", "--out", str(tmp_path / "a"), "probe.cache_dir=" + str(tmp_path / "c1"))
    b = probe(exported, shards, "--kind", "linear", "--out", str(tmp_path / "b"),
              "probe.cache_dir=" + str(tmp_path / "c2"))
    assert a["encoders"]["pretrained"]["linear"] == b["encoders"]["pretrained"]["linear"]
    fa, fb = (torch.load(next((tmp_path / c).glob("*.pt")), weights_only=False) for c in ("c1", "c2"))
    assert fa["keys"] == fb["keys"] and torch.equal(fa["pooled"], fb["pooled"])


def test_random_init_is_the_same_architecture_with_other_weights(tmp_path):
    encoder = load_encoder(make_run(tmp_path))
    baseline = random_like(encoder, seed=0)
    assert baseline.module.state_dict().keys() == encoder.module.state_dict().keys()
    assert baseline.source["weights_sha1"] != encoder.source["weights_sha1"]
    assert random_like(encoder, seed=0).source["weights_sha1"] == baseline.source["weights_sha1"]


def test_two_ranks_extract_each_sample_once_and_agree_with_one(tmp_path, shards):
    run = make_run(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    outs = {}
    for nproc in (1, 2):
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] if nproc > 1 else []
        out, cache = tmp_path / f"out{nproc}", tmp_path / f"cache{nproc}"
        proc = subprocess.run([sys.executable, *launcher, "-m", "jepa.cli", "probe", str(run), "--train", shards["train"],
                               "--val", shards["val"], "--kind", "knn", "--out", str(out), *QUICK,
                               f"probe.cache_dir={cache}", "data.num_workers=2"],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs[nproc] = (json.loads((out / "results.json").read_text()),
                       {len(f["keys"]): f for f in (torch.load(p, weights_only=False) for p in cache.glob("*.pt"))})
    (one, feats1), (two, feats2) = outs[1], outs[2]
    assert two["world_size"] == 2
    assert one["encoders"] == two["encoders"]
    assert sorted(feats1) == sorted(feats2) == [24, 48]  # val and train, each sample once
    for n in (24, 48):
        assert feats2[n]["keys"] == feats1[n]["keys"] and len(set(feats2[n]["keys"])) == n
        torch.testing.assert_close(feats2[n]["pooled"], feats1[n]["pooled"])


def test_bad_input_is_one_clear_line(tmp_path, shards, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no complete checkpoint" in probe(empty, shards, ok=False, capsys=capsys)
    run = make_run(tmp_path)
    unlabelled = tmp_path / "unlabelled"
    write_synthetic(unlabelled, kind="image", n=8, classes=2, size=32, frames=1, seed=0, shard_size=8, progress=False)
    for f in unlabelled.glob("*.tar"):  # the same images without their labels
        _strip_labels(f)
    err = probe(run, {**shards, "val": str(unlabelled / "shard-000000.tar")}, ok=False, capsys=capsys)
    assert "have no label" in err and "--val" in err
    other = tmp_path / "other"
    write_synthetic(other, kind="image", n=16, classes=8, size=32, frames=1, seed=3, shard_size=16, progress=False)
    err = probe(run, {**shards, "val": str(other / "shard-000000.tar")}, ok=False, capsys=capsys)
    assert "that --train never shows" in err
    err = probe(run, {**shards, "train": shards["video"]}, ok=False, capsys=capsys)
    assert "holds videos but the encoder takes images" in err
    err = probe(run, shards, "model.depth=4", ok=False, capsys=capsys)
    assert "architecture comes from its checkpoint" in err


def _strip_labels(path: Path) -> None:
    """Drop the `cls` and `json` (label) members of every sample."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if not m.name.endswith((".cls", ".json"))]
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data))


def test_evaluation_views_and_clips_are_rows_of_one_sample_averaged_into_one_feature(tmp_path, shards):
    from jepa.data.eval_stream import build_eval_loader
    from jepa.data.write import ShardSample, ShardSink
    from jepa.eval.features import _mean_over_views
    from jepa.errors import UserError
    from stream_helpers import eval_loader

    wide = np.zeros((32, 64, 3), np.uint8)
    wide[:, :, 0] = np.arange(64, dtype=np.uint8)[None, :] * 4  # red grows left to right
    buf = io.BytesIO()
    Image.fromarray(wide).save(buf, format="PNG")
    (tmp_path / "wide").mkdir()
    sink = ShardSink(tmp_path / "wide", shard_size=1, prefix="shard")
    sink.write(ShardSample("w0", "png", buf.getvalue(), label=1))
    sink.close()
    cfg = from_dict({"data": {"image_size": 16, "eval_views": 3, "num_workers": 0}, "model": {"patch_size": 8}})
    stream = eval_loader(str(tmp_path / "wide" / "shard-000000.tar"), cfg=cfg, rank=0, world_size=1, batch_size=2)
    batches = list(stream)
    assert [b["view"] for b in batches] == [[0, 1], [2]] and stream.samples == 1  # one sample, three crops
    red = [x[0].mean().item() for b in batches for x in b["x"]]
    assert red[0] < red[1] < red[2]  # left, centre, right

    video = from_dict({"data": {"image_size": 32, "num_frames": 4, "frame_step": 1, "eval_clips": 2,
                                "num_workers": 0}, "model": {"patch_size": 16, "rope": {"kind": "3d"}},
                       "mask": {"kind": "multiblock3d"}})
    (batch,) = list(build_eval_loader(shards["video"], cfg=video, clips=True, rank=0, world_size=1, batch_size=8))
    assert batch["view"] == [0, 1] * 4 and batch["x"].shape == (8, 3, 4, 32, 32)
    assert not torch.equal(batch["x"][0], batch["x"][1])  # the two clips start at 1/4 and 3/4 of the video

    pooled = torch.tensor([[1.0], [3.0], [10.0]])
    feats = _mean_over_views(["a", "a", "b"], [0, 1, 0], torch.tensor([2, 2, 5]), pooled, None)
    assert feats.keys == ["a", "b"] and feats.labels.tolist() == [2, 5] and feats.pooled.flatten().tolist() == [2.0, 10.0]
    with pytest.raises(UserError, match="appears twice"):
        _mean_over_views(["a", "a"], [0, 0], torch.tensor([1, 1]), pooled[:2], None)


def test_probe_kinds_parse_as_a_list_or_all():
    import argparse

    from jepa.commands.probe import KINDS, _kinds

    assert _kinds("all") == KINDS
    assert _kinds("knn,linear,knn") == ("knn", "linear")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown probe lin: choose from linear, knn, attentive"):
        _kinds("lin")


def test_shuffled_frames_are_a_fixed_permutation_per_sample_key():
    from jepa.errors import UserError
    from jepa.eval.features import shuffled_frames

    clips = torch.arange(8, dtype=torch.float32)[None, None, :, None, None].expand(4, 3, 8, 2, 2).clone()
    out = shuffled_frames(clips, ["a", "b", "a", "c"])
    orders = out[:, 0, :, 0, 0].long()
    assert all(sorted(o.tolist()) == list(range(8)) for o in orders)             # every frame once
    assert torch.equal(out, out[:, :1].expand_as(out))                            # channels and pixels move together
    assert torch.equal(orders[0], orders[2]) and not torch.equal(orders[0], orders[1])  # fixed by the key
    assert not torch.equal(orders[0], torch.arange(8))
    assert torch.equal(shuffled_frames(clips, ["a", "b", "a", "c"]), out)         # the same order on every call
    with pytest.raises(UserError, match="video encoders only"):
        shuffled_frames(torch.zeros(2, 3, 8, 8), ["a", "b"])


def test_shuffle_frames_adds_a_column_for_video_encoders_and_refuses_images(tmp_path, shards, capsys):
    from jepa.eval.features import cache_key

    videos = {}
    for name, n, seed in (("train", 16, 1), ("val", 8, 2)):
        write_synthetic(tmp_path / name, kind="video", n=n, classes=2, size=32, frames=8, seed=seed, shard_size=n,
                        progress=False)
        videos[name] = str(tmp_path / name / "shard-000000.tar")
    run = make_run(tmp_path / "video", sections=VIDEO, rope={"kind": "3d"})
    results = probe(run, videos, "--shuffle-frames", "--kind", "linear,knn", "--baseline")
    assert list(results["encoders"]) == ["pretrained", "random_init", "pretrained_frames_shuffled"]
    assert results["baselines"]["pretrained_frames_shuffled"] == {**results["source"], "frames": "shuffled"}
    assert all(set(r) == {"linear", "knn"} for r in results["encoders"].values())
    key = dict(weights_sha1="0" * 40, urls=videos["val"], geometry={}, n_last_blocks=1, tokens=False)
    assert cache_key(**key) != cache_key(**key, shuffle_frames=True)  # cached features never mix the two
    assert "applies to video encoders" in probe(make_run(tmp_path / "image"), shards, "--shuffle-frames",
                                                ok=False, capsys=capsys)
