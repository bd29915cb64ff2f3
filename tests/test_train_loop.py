"""`jepa train` end to end on synthetic shards: run folder, TensorBoard scalars, exact resume, export."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from jepa import config
from jepa.data.write import write_synthetic

EXPECTED_SCALARS = {
    "loss/total", "loss/level0", "loss/level1", "loss/level2", "optim/lr", "optim/weight_decay",
    "optim/ema_momentum", "optim/grad_norm", "time/samples_per_s", "time/tokens_per_s",
    "time/data_wait_frac", "time/step_s", "memory/peak_gb", "mask/context_ratio", "mask/target_ratio",
    "repr/target_std", "repr/effective_rank",
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("synth")
    write_synthetic(out, kind="image", n=64, classes=4, size=64, frames=1, seed=0, shard_size=16, progress=False)
    return str(out / "shard-{000000..000003}.tar")


def overrides(shards: str, out: Path, kind: str = "image", **extra) -> list[str]:
    base = {"output_dir": str(out), "data.sources": f"[{{urls: '{shards}', kind: {kind}}}]",
            "data.batch_size": 4, "data.num_workers": 1, "data.samples_per_epoch": 32,
            "optim.total_steps": 8, "optim.warmup_steps": 2, "logging.every_steps": 1,
            "logging.repr_every_steps": 4, "checkpoint.every_steps": 4}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def jepa_train(args: list[str], *, nproc: int = 1, ok: bool | None = True,
               config_name: str = "small/demo") -> subprocess.CompletedProcess:
    """`jepa train` in a subprocess (under torchrun for nproc > 1); `ok`: the exit status expected
    (True: 0, False: non-zero, None: not checked)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] if nproc > 1 else []
    proc = subprocess.run([sys.executable, *launcher, "-m", "jepa.cli", "train", config_name, *args],
                          env=env, capture_output=True, text=True, timeout=600)
    if ok is not None and (proc.returncode == 0) != ok:
        raise AssertionError(f"exit {proc.returncode}:\n" + "\n".join((proc.stdout + proc.stderr).splitlines()[-30:]))
    return proc


def train_straight_and_parted(shards: str, tmp: Path, *, nproc: int = 1, **extra) -> tuple[Path, Path]:
    """The same 8 steps twice: in one job, and as a job stopped at step 4 plus a job that resumes."""
    straight, parted = tmp / "straight", tmp / "parted"
    jepa_train(overrides(shards, straight, **extra), nproc=nproc)
    first = jepa_train(overrides(shards, parted, **{"checkpoint.stop_at_step": 4}, **extra), nproc=nproc)
    assert "starting" in first.stdout and "step 4/8" in first.stdout
    second = jepa_train(overrides(shards, parted, **extra), nproc=nproc)
    assert "resuming from" in second.stdout and "step_00000004" in second.stdout
    return straight, parted


def assert_same_run(a_dir: Path, b_dir: Path, *, rtol: float = 1e-5) -> None:
    a, b = scalars(a_dir)["loss/total"], scalars(b_dir)["loss/total"]
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step in range(1, 9):
        assert b[step] == pytest.approx(a[step], rel=rtol, abs=1e-6), f"loss differs at step {step}"
    ema_a = torch.load(a_dir / "checkpoints/step_00000008/ema_target.pt")
    ema_b = torch.load(b_dir / "checkpoints/step_00000008/ema_target.pt")
    for name in ema_a:
        torch.testing.assert_close(ema_b[name], ema_a[name], rtol=rtol, atol=1e-6)


def scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_run_folder_tensorboard_exact_resume_and_export(shards, tmp_path):
    online_knn = {"eval.every_steps": 2, "eval.bank_urls": shards, "data.val_urls": shards, "eval.knn_k": 5}
    straight, parted = train_straight_and_parted(shards, tmp_path, **online_knn)
    assert (straight / "config.yaml").is_file() and "step 8/8" in (straight / "train.log").read_text()
    assert config.load(straight / "config.yaml").optim.total_steps == 8  # the resolved config reloads
    assert (straight / "checkpoints" / "latest").read_text() == "step_00000008"
    tb = scalars(straight)
    assert EXPECTED_SCALARS <= set(tb), f"missing: {EXPECTED_SCALARS - set(tb)}"
    assert_same_run(straight, parted)
    # The online kNN: every 2 steps, once per step across the stop and the resume, the same values.
    knn = scalars(parted)["eval/knn_top1"]
    assert sorted(knn) == [2, 4, 6, 8] and knn == tb["eval/knn_top1"]
    assert all(0.0 <= v <= 1.0 for v in knn.values())

    # Export: the consolidated file holds exactly the EMA target encoder of the last checkpoint.
    from jepa.cli import main

    out = tmp_path / "encoder.safetensors"
    assert main(["export", str(straight), str(out)]) == 0
    ema = torch.load(straight / "checkpoints/step_00000008/ema_target.pt")
    exported = load_file(out)
    assert exported.keys() == ema.keys()
    for name in ema:
        assert torch.equal(exported[name], ema[name].float())

    # The probe's context encoder (ZeRO 2, bf16): DeepSpeed's fp32 master weights, which round to the
    # bf16 weights the engine ran with.
    from jepa.eval.encoder import load_encoder

    context = load_encoder(straight, which="context").module.state_dict()
    module = torch.load(next((straight / "checkpoints/step_00000008").glob("mp_rank_*_model_states.pt")),
                        weights_only=False)["module"]
    ran = {k[len("context_encoder."):]: v for k, v in module.items() if k.startswith("context_encoder.")}
    assert context.keys() == ran.keys()
    for name, value in ran.items():
        assert context[name].dtype == torch.float32 and torch.equal(context[name].to(value.dtype), value), name


NOISE = {"model.drop_path": 0.2, "model.rope.shift": 0.1, "model.rope.jitter": 0.1, "model.rope.rescale": 0.2}
"""Train-time randomness drawn in the training process: a resume must continue its streams exactly."""


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("stage, bf16, workers, guard", [
    (0, "false", 2, "false"), (1, "true", 0, "false"), (2, "true", 2, "true"), (3, "false", 1, "false"),
], ids=["zero0-fp32-2workers", "zero1-bf16-0workers", "zero2-bf16-2workers-guard", "zero3-fp32-1worker"])
def test_two_ranks_exact_resume(shards, tmp_path, stage, bf16, workers, guard):
    """Two ranks, every ZeRO stage: 8 steps straight equal 4 steps, a stop, and 4 resumed steps, with
    drop path and RoPE position augmentation on (their noise comes from the restored RNG streams)
    and each rank's own data position, skip counts and guard history restored."""
    extra = {"deepspeed.zero_stage": stage, "deepspeed.bf16": bf16, "data.num_workers": workers,
             "optim.loss_spike.enabled": guard, "optim.loss_spike.k": 6.0, **NOISE}
    straight, parted = train_straight_and_parted(shards, tmp_path, nproc=2, **extra)
    assert "2 ranks" in (straight / "train.log").read_text()
    resumed_log = (parted / "train.log").read_text()
    assert "layout changed" not in resumed_log and "settings changed" not in resumed_log
    assert_same_run(straight, parted)
    for r in range(2):  # each rank's own data position, not rank 0's copy
        a, b = (torch.load(d / f"checkpoints/step_00000008/rank{r}.pt", weights_only=False)["state"]
                for d in (straight, parted))
        assert a["data"] == b["data"] and a["guard"] == b["guard"]
        assert dict(b["data"].layout)["rank"] == r and b["data"].cursors and b["data"].epoch == 1


@pytest.mark.slow
@pytest.mark.distributed
def test_a_resume_that_is_not_exact_says_what_changed(shards, tmp_path):
    """A resume on another world size and worker count goes on, and rank 0 says once what differs."""
    run = tmp_path / "run"
    jepa_train(overrides(shards, run, **{"checkpoint.stop_at_step": 4, "data.num_workers": 1}), nproc=2)
    proc = jepa_train(overrides(shards, run, **{"data.num_workers": 2, "optim.total_steps": 6}))
    out = proc.stdout + proc.stderr
    assert "saved by 2 ranks and this run has 1" in out
    assert "the data streams of ranks 1-1 end" in out
    assert out.count("layout changed") == 1 and "data.num_workers: 1 -> 2" in out
    assert "optim.total_steps: checkpoint 8, this run 6" in out
    assert sorted(scalars(run)["loss/total"]) == list(range(1, 7))


@pytest.mark.slow
@pytest.mark.distributed
def test_two_rank_runs_always_exit_cleanly(shards, tmp_path):
    """SLURM reads a non-zero exit as a failed job: the shutdown (loader workers joined, writer closed,
    process group destroyed) must never abort in interpreter teardown. 30 runs in a row."""
    args = {"optim.total_steps": 1, "optim.warmup_steps": 1, "data.num_workers": 2, "logging.repr_every_steps": 1}
    for i in range(30):
        proc = jepa_train(overrides(shards, tmp_path / f"run{i}", **args), nproc=2, ok=None)
        assert proc.returncode == 0, f"run {i} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        assert "terminate called" not in proc.stderr


@pytest.mark.slow
def test_refusals_before_any_work(shards, tmp_path):
    run = tmp_path / "run"
    jepa_train(overrides(shards, run, **{"optim.total_steps": 2, "checkpoint.every_steps": 2}))
    other_model = jepa_train(overrides(shards, run, **{"model.embed_dim": 96, "optim.total_steps": 4}), ok=False)
    assert "model.embed_dim" in other_model.stderr and "Traceback" not in other_model.stderr
    no_resume = jepa_train(overrides(shards, run, **{"checkpoint.resume": "false", "optim.total_steps": 4}), ok=False)
    assert "checkpoint.resume=false" in no_resume.stderr
    assert (run / "checkpoints" / "latest").read_text() == "step_00000002"  # nothing was overwritten

    fresh = tmp_path / "fresh"
    no_data = jepa_train([f"output_dir={fresh}", "data.sources=[]"], ok=False)
    assert "data.sources is empty" in no_data.stderr
    video_source = jepa_train(overrides(shards, fresh, kind="video"), ok=False)
    assert "data.sources[0].kind" in video_source.stderr
    assert not fresh.exists()  # refused before the run folder was written


@pytest.mark.slow
def test_video_jepa_trains_on_synthetic_clips(tmp_path):
    data = tmp_path / "clips"
    write_synthetic(data, kind="video", n=16, classes=4, size=64, frames=20, seed=0, shard_size=4, progress=False)
    run = tmp_path / "video"
    args = overrides(str(data / "shard-{000000..000003}.tar"), run, kind="video",
                     **{"optim.total_steps": 4, "optim.warmup_steps": 1, "logging.repr_every_steps": 2,
                        "checkpoint.every_steps": 4})
    proc = jepa_train(args, config_name="small/vjepa_vitl16")
    assert "token grid (4, 8, 8)" in proc.stdout
    tb = scalars(run)
    assert sorted(tb["loss/total"]) == [1, 2, 3, 4]
    assert all(math.isfinite(v) and v > 0 for v in tb["loss/total"].values())
    assert tb["mask/context_ratio"][4] < 0.5  # V-JEPA masks hide most of the clip
    assert (run / "checkpoints" / "latest").read_text() == "step_00000004"
