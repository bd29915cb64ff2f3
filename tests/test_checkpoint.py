"""Checkpoint bookkeeping without DeepSpeed: discovery, commit markers, purging, refusals, RNG, export.

Real sharded saves and resumes on 2 processes are in tests/test_checkpoint_dist.py.
"""

import argparse
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors import safe_open

from jepa import cli
from jepa.config import from_dict, to_dict
from jepa.errors import UserError
from jepa.commands import checkpoint as checkpoint_verb
from jepa.seeding import rng_state, seed_rng, set_rng_state
from jepa.train.checkpoint import (
    EMA_FILE, Checkpointer, committed_checkpoints, latest_checkpoint, model_differences, tag_for,
)
from jepa.train.export import export_target


def make_cfg(tmp_path, **sections):
    return from_dict({"output_dir": str(tmp_path / "run"), **sections})


def fake_checkpoint(cfg, step, *, commit=True, world_size=2, zero_stage=0, bf16=False, ema=None):
    """A tag folder as a save leaves it (DeepSpeed's files aside); committed unless told otherwise."""
    tag_dir = cfg_root(cfg) / tag_for(step)
    tag_dir.mkdir(parents=True)
    if ema is not None:
        torch.save(ema, tag_dir / EMA_FILE)
    if commit:
        meta = {"step": step, "world_size": world_size, "zero_stage": zero_stage, "bf16": bf16,
                "config": to_dict(cfg)}
        (tag_dir / "meta.json").write_text(json.dumps(meta))
        (cfg_root(cfg) / "latest").write_text(tag_dir.name)
    return tag_dir


def cfg_root(cfg):
    return Path(cfg.output_dir) / "checkpoints"


def test_discovery_ignores_incomplete_and_foreign_folders(tmp_path):
    cfg = make_cfg(tmp_path)
    fake_checkpoint(cfg, 10)
    fake_checkpoint(cfg, 20)
    fake_checkpoint(cfg, 30, commit=False)  # a save that crashed
    (cfg_root(cfg) / f"{tag_for(20)}.universal").mkdir()
    (cfg_root(cfg) / "zero_to_fp32.py").write_text("")
    assert [i.step for i in committed_checkpoints(cfg_root(cfg))] == [10, 20]
    assert latest_checkpoint(cfg_root(cfg)).step == 20


@pytest.mark.parametrize("latest", [None, "step_00000030", "garbage"])
def test_latest_falls_back_to_newest_complete(tmp_path, latest):
    cfg = make_cfg(tmp_path)
    fake_checkpoint(cfg, 10)
    fake_checkpoint(cfg, 20)
    fake_checkpoint(cfg, 30, commit=False)
    if latest is None:
        (cfg_root(cfg) / "latest").unlink()
    else:
        (cfg_root(cfg) / "latest").write_text(latest)
    assert latest_checkpoint(cfg_root(cfg)).step == 20


def test_latest_of_missing_folder_is_none(tmp_path):
    assert latest_checkpoint(tmp_path / "nothing") is None
    assert committed_checkpoints(tmp_path / "nothing") == []


def test_purge_keeps_newest_and_removes_crash_leftovers(tmp_path):
    cfg = make_cfg(tmp_path, checkpoint={"keep_last": 2})
    for step in (1, 2, 3, 4):
        fake_checkpoint(cfg, step)
    fake_checkpoint(cfg, 5, commit=False)
    (cfg_root(cfg) / f"{tag_for(1)}.universal").mkdir()
    (cfg_root(cfg) / f"{tag_for(4)}.universal").mkdir()
    (cfg_root(cfg) / "zero_to_fp32.py").write_text("")
    Checkpointer(cfg, rank=0, world_size=1).purge()
    left = sorted(p.name for p in cfg_root(cfg).iterdir())
    assert left == ["latest", tag_for(3), tag_for(4), f"{tag_for(4)}.universal", "zero_to_fp32.py"]


def test_fresh_start_without_checkpoints(tmp_path):
    cfg = make_cfg(tmp_path)
    fake_checkpoint(cfg, 7, commit=False)
    ckpt = Checkpointer(cfg, rank=0, world_size=2)
    assert ckpt.resume_point() is None
    assert ckpt.needs_universal(None) is False


def test_refuses_to_restart_over_checkpoints(tmp_path):
    cfg = make_cfg(tmp_path, checkpoint={"resume": False})
    fake_checkpoint(cfg, 5)
    with pytest.raises(UserError, match=r"checkpoint.resume=false.*another output_dir"):
        Checkpointer(cfg, rank=0, world_size=2).resume_point()


@pytest.mark.parametrize("change,key", [
    ({"model": {"depth": 6}}, "model.depth"),
    ({"model": {"rope": {"theta": 10.0}}}, "model.rope.theta"),
    ({"hierarchy": {"levels": [{"block": -1}, {"block": 5, "pool": 2}]}}, "hierarchy.levels.len"),
    ({"hierarchy": {"loss": "l1"}}, "hierarchy.loss"),
])
def test_refuses_another_model(tmp_path, change, key):
    fake_checkpoint(make_cfg(tmp_path), 5)
    with pytest.raises(UserError) as err:
        Checkpointer(make_cfg(tmp_path, **change), rank=0, world_size=2).resume_point()
    message = str(err.value)
    assert key in message and "another output_dir" in message and "original config" in message


def test_other_sections_may_change(tmp_path):
    fake_checkpoint(make_cfg(tmp_path), 5)
    cfg = make_cfg(tmp_path, optim={"lr": 0.5}, data={"batch_size": 3}, checkpoint={"keep_last": 9})
    assert Checkpointer(cfg, rank=0, world_size=2).resume_point().step == 5


def test_refuses_another_zero_stage_or_precision(tmp_path):
    fake_checkpoint(make_cfg(tmp_path), 5, zero_stage=2, bf16=True)
    with pytest.raises(UserError, match="zero_stage=2.*bf16=True"):
        Checkpointer(make_cfg(tmp_path, deepspeed={"zero_stage": 3, "bf16": True}), rank=0,
                     world_size=2).resume_point()


@pytest.mark.parametrize("stage,saved_world,world,universal", [
    (2, 2, 2, False), (2, 2, 1, True), (3, 2, 4, True), (1, 8, 4, True), (0, 2, 1, False),
])
def test_needs_universal(tmp_path, stage, saved_world, world, universal):
    cfg = make_cfg(tmp_path, deepspeed={"zero_stage": stage})
    fake_checkpoint(cfg, 5, zero_stage=stage, world_size=saved_world)
    ckpt = Checkpointer(cfg, rank=0, world_size=world)
    assert ckpt.needs_universal(ckpt.resume_point()) is universal


class LoadedEngine:
    """What `Checkpointer.resume` asks of a DeepSpeed engine, for a ZeRO-0 checkpoint (any world size)."""

    def __init__(self, step):
        self.step = step

    def load_universal_checkpoint(self):
        return False

    def load_checkpoint(self, root, *, tag, **kwargs):
        return f"{root}/{tag}", {"step": self.step}


def test_ranks_beyond_the_saved_world_start_fresh_streams(tmp_path):
    cfg = make_cfg(tmp_path, seed=5)
    fake_checkpoint(cfg, 40, world_size=1, ema=nn.Linear(2, 2).state_dict())
    seed_rng(0, 0)  # some other stream, which resume must replace
    state = Checkpointer(cfg, rank=1, world_size=2).resume(LoadedEngine(40), nn.Linear(2, 2))
    assert state.step == 40 and state.rank_state is None
    fresh = draws()
    seed_rng(5, 1, 40)
    assert draws() == fresh


def test_model_differences_lists_every_key():
    a = {"model": {"depth": 12, "rope": {"theta": 100.0}}, "hierarchy": {"levels": [{"pool": 1}]}}
    b = {"model": {"depth": 6, "rope": {"theta": 100.0}}, "hierarchy": {"levels": [{"pool": 2}]}}
    assert model_differences(a, a) == []
    assert model_differences(a, b) == ["model.depth: checkpoint 12, this run 6",
                                       "hierarchy.levels[0].pool: checkpoint 1, this run 2"]


def draws():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_rng_state_round_trip():
    seed_rng(0, 0)
    state = rng_state()
    first = draws()
    draws()
    set_rng_state(state)
    assert draws() == first


def test_seed_rng_streams_are_deterministic_and_distinct():
    streams = {}
    for key in [(0, 0, 0), (0, 1, 0), (0, 0, 100), (1, 0, 0), (0, 0, 0)]:
        seed_rng(*key)
        streams.setdefault(key, []).append(draws())
    assert streams[(0, 0, 0)][0] == streams[(0, 0, 0)][1]
    values = [v[0] for v in streams.values()]
    assert len({str(v) for v in values}) == 4


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)
        self.b.weight = self.a.weight  # shared storage: safetensors needs own copies
        self.register_buffer("count", torch.tensor(7))


def test_export_target(tmp_path):
    cfg = make_cfg(tmp_path, model={"depth": 4})
    state = Tied().state_dict()
    fake_checkpoint(cfg, 3, ema=state)
    out = export_target(tmp_path / "run", tmp_path / "out" / "enc.safetensors")
    with safe_open(str(out), "pt") as f:
        assert set(f.keys()) == set(state)
        assert all(torch.equal(f.get_tensor(k), v) for k, v in state.items())
        assert json.loads(f.metadata()["jepa.model"])["depth"] == 4
        assert f.metadata()["jepa.step"] == "3"
    sidecar = json.loads((tmp_path / "out" / "enc.json").read_text())
    assert sidecar["model"]["depth"] == 4 and sidecar["step"] == 3


def test_export_without_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no complete checkpoint"):
        export_target(tmp_path, tmp_path / "x.safetensors")


def test_commands_parse_and_run(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    checkpoint_verb.register(parser.add_subparsers(dest="verb"))
    cfg = make_cfg(tmp_path)
    fake_checkpoint(cfg, 4)
    args = parser.parse_args(["checkpoint", "list", str(tmp_path / "run")])
    assert args.func(args) == 0 and "| 4 | 2 | 0 |" in capsys.readouterr().out
    args = parser.parse_args(["checkpoint", "reshape", str(tmp_path / "run")])
    assert args.func(args) == 0 and "nothing to do" in capsys.readouterr().out  # ZeRO 0
    args = parser.parse_args(["checkpoint", "reshape", str(tmp_path / "empty")])
    with pytest.raises(UserError, match="no complete checkpoint"):
        args.func(args)


def test_export_verb_writes_the_ema_target(tmp_path, capsys):
    cfg = make_cfg(tmp_path, model={"depth": 4})
    fake_checkpoint(cfg, 2, ema={k: torch.zeros_like(v) for k, v in Tied().state_dict().items()})
    state = Tied().state_dict()
    tag_dir = fake_checkpoint(cfg, 5, ema=state)  # the latest: the one exported
    out = tmp_path / "out" / "enc.safetensors"
    assert cli.main(["export", str(tmp_path / "run"), str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    with safe_open(str(out), "pt") as f:
        assert set(f.keys()) == set(state)
        for k, v in state.items():
            got = f.get_tensor(k)
            assert got.dtype == v.dtype and torch.equal(got, v), k
        assert json.loads(f.metadata()["jepa.config"]) == to_dict(cfg)  # the encoder rebuilds from the file
    assert json.loads(out.with_suffix(".json").read_text()) == {
        "model": to_dict(cfg)["model"], "step": 5, "checkpoint": str(tag_dir), "config": to_dict(cfg)}


def test_export_verb_without_checkpoint_exits_2(tmp_path, capsys):
    cfg = make_cfg(tmp_path)
    fake_checkpoint(cfg, 5, commit=False, ema=Tied().state_dict())  # a save that crashed
    out = tmp_path / "enc.safetensors"
    assert cli.main(["export", str(tmp_path / "run"), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jepa: error: ") and str(tmp_path / "run") in err and "no complete checkpoint" in err
    assert not out.exists() and not out.with_suffix(".json").exists()
