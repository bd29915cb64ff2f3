"""Checkpoints of real 2-process runs: exact resume, another world size, a crash mid-save, purging,
refusals and export. The toy task and its runner are in tests/dist_helpers/."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from dist_helpers.launch import train_toy
from dist_helpers.toy import make_config
from jepa.errors import UserError
from jepa.cli import main as jepa_main
from jepa.train.checkpoint import EMA_FILE, Checkpointer, committed_checkpoints, tag_for
from jepa.train.export import export_target

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
K = 4  # steps before the stop; the runs go to 2K


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def resume_runs(request, tmp_path_factory):
    """2K steps straight; K steps, stop (processes end), resume, K more; a copy of the K checkpoint."""
    stage, tmp = request.param, tmp_path_factory.mktemp(f"resume_zero{request.param}")
    common = dict(zero_stage=stage, bf16=True, every_steps=K, total_steps=3 * K)
    straight = train_toy(tmp, "straight", stop_at=2 * K, **common)
    first = train_toy(tmp, "stopped", stop_at=K, **common)
    shutil.copytree(tmp / "stopped", tmp / "single")  # the 2-rank checkpoint at step K
    second = train_toy(tmp, "stopped", result_dir=str(tmp / "second.result"), stop_at=2 * K, **common)
    return {"stage": stage, "tmp": tmp, "common": common, "straight": straight, "first": first, "second": second}


def test_exact_resume(resume_runs):
    straight, first, second = resume_runs["straight"], resume_runs["first"], resume_runs["second"]
    folder = resume_runs["tmp"] / "stopped" / "checkpoints" / tag_for(K)
    assert f"resuming from {folder} at step {K}" in second[0]["output"]
    for r in range(2):
        assert second[r]["resumed_step"] == K
        assert second[r]["resumed_rank_state"] == {"cursor": K, "rank": r}, "each rank gets its own state back"
        # Same batches, same noise (restored RNG), same weights, optimizer and EMA: same losses.
        assert first[r]["losses"] == pytest.approx(straight[r]["losses"][:K], rel=1e-6)
        assert second[r]["losses"] == pytest.approx(straight[r]["losses"][K:], rel=1e-6)
        for key in ("global_steps", "adam_steps", "cursor"):
            assert second[r][key] == straight[r][key], key
        s, t = straight[r]["tensors"], second[r]["tensors"]
        torch.testing.assert_close(t["online"], s["online"], rtol=0, atol=1e-6)
        torch.testing.assert_close(t["target"], s["target"], rtol=0, atol=1e-6)
        assert torch.equal(t["start_online"], first[r]["tensors"]["online"])
        assert torch.equal(t["start_target"], first[r]["tensors"]["target"])


def test_resume_on_one_process(resume_runs):
    """The 2-rank checkpoint resumed by one process (no launcher) through a universal checkpoint,
    made by `jepa checkpoint reshape` ahead of time (ZeRO 3) or at start-up by the resume (ZeRO 2)."""
    tmp, first = resume_runs["tmp"], resume_runs["first"]
    if resume_runs["stage"] == 3:
        assert jepa_main(["checkpoint", "reshape", str(tmp / "single"), "--workers", "1"]) == 0
        assert (tmp / "single" / "checkpoints" / f"{tag_for(K)}.universal").is_dir()
    (alone,) = train_toy(tmp, "single", nproc=None, stop_at=K + 2, **resume_runs["common"])
    assert alone["world"] == 1 and alone["resumed_step"] == K
    assert alone["resumed_rank_state"] == {"cursor": K, "rank": 0}, "rank 0 keeps its own state"
    torch.testing.assert_close(alone["tensors"]["start_online"], first[0]["tensors"]["online"], rtol=0, atol=1e-6)
    assert torch.equal(alone["tensors"]["start_target"], first[0]["tensors"]["target"])
    assert alone["global_steps"] == K + 2 and all(loss == loss for loss in alone["losses"])


def test_crash_during_save_keep_last_refusals_and_export(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    common = dict(zero_stage=2, every_steps=2, keep_last=2)
    # Rank 1 dies after DeepSpeed wrote every shard of step 6 but before the commit.
    train_toy(tmp_path, "run", ok=False, stop_at=6, crash_rank=1, crash_step=6, **common)
    assert (root / "latest").read_text() == tag_for(4)
    assert len(list((root / tag_for(6)).glob("*optim_states.pt"))) == 2, "the crash came after the shards"
    assert not (root / tag_for(6) / "meta.json").exists()
    assert [i.step for i in committed_checkpoints(root)] == [2, 4]

    ranks = train_toy(tmp_path, "run", result_dir=str(tmp_path / "resumed.result"), stop_at=10, **common)
    assert [r["resumed_step"] for r in ranks] == [4, 4]
    assert [i.step for i in committed_checkpoints(root)] == [8, 10], "keep_last=2 keeps the newest two"
    assert sorted(p.name for p in root.glob("step_*")) == [tag_for(8), tag_for(10)]
    assert (root / "latest").read_text() == tag_for(10)

    spec = {"output_dir": str(tmp_path / "run"), "hidden": 32, "batch_size": 8, "total_steps": 20,
            "zero_stage": 2, "bf16": True, "grad_accum": 1, **common}
    cfg = make_config(spec)
    assert Checkpointer(cfg, rank=0, world_size=2).resume_point().step == 10
    for change, words in [({"hidden": 48}, ["model.embed_dim", "48", "another output_dir", "original config"]),
                          ({"zero_stage": 3}, ["zero_stage=2", "zero_stage=3"])]:
        with pytest.raises(UserError) as err:
            Checkpointer(make_config({**spec, **change}), rank=0, world_size=2).resume_point()
        assert all(w in str(err.value) for w in words), str(err.value)
    cfg.checkpoint.resume = False
    with pytest.raises(UserError, match="checkpoint.resume=false.*another output_dir"):
        Checkpointer(cfg, rank=0, world_size=2).resume_point()

    out = export_target(tmp_path / "run", tmp_path / "export" / "encoder.safetensors")
    saved = torch.load(root / tag_for(10) / EMA_FILE)
    with safe_open(str(out), "pt") as f:
        assert set(f.keys()) == set(saved)
        assert all(torch.equal(f.get_tensor(k), v) for k, v in saved.items())
        assert json.loads(f.metadata()["jepa.model"])["embed_dim"] == 32
    exported = torch.cat([v.flatten() for v in saved.values()])  # the toy encoder has no buffers
    assert torch.equal(exported, ranks[0]["tensors"]["target"]), "export = the run's final EMA target"
    assert json.loads(out.with_suffix(".json").read_text())["step"] == 10
