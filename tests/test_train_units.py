"""Small pieces of the training loop: the loss-spike guard, srun environment, metric reduction."""

import math

import pytest
import torch

from jepa.train.distributed import env_from_slurm
from jepa.train.guard import LossSpikeGuard
from jepa.train.metrics import MetricLogger


def test_guard_flags_spikes_and_non_finite_losses_only():
    guard = LossSpikeGuard(window=20, k=4.0, min_history=5)
    losses = [1.0, 1.1, 0.9, 1.05, 0.95, 1.0]
    assert not any(guard.is_spike(torch.tensor(x)) for x in losses)
    mean = sum(losses) / len(losses)
    std = math.sqrt(sum((x - mean) ** 2 for x in losses) / len(losses))
    assert not guard.is_spike(torch.tensor(mean + 3.9 * std))   # inside mean + k * std
    assert guard.is_spike(torch.tensor(mean + 10 * std))
    assert guard.is_spike(torch.tensor(float("nan")))
    assert guard.skipped == 2
    assert len(guard.history) == len(losses) + 1  # spikes never enter the statistics


def test_guard_waits_for_history():
    guard = LossSpikeGuard(window=10, k=1.0, min_history=3)
    assert not guard.is_spike(torch.tensor(1.0))
    assert not guard.is_spike(torch.tensor(100.0))  # two values are no baseline yet


def test_srun_environment_becomes_torchrun_environment():
    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "12345",
           "SLURM_JOB_NODELIST": "gpu17"}
    out = env_from_slurm(env)
    assert out["RANK"] == "3" and out["WORLD_SIZE"] == "8" and out["LOCAL_RANK"] == "1"
    assert out["MASTER_PORT"] == str(20000 + 12345 % 20000)
    assert out["MASTER_ADDR"] in ("gpu17",)
    assert env_from_slurm({**env, "RANK": "0"}) == {}  # torchrun already set it: leave it alone
    assert env_from_slurm({}) == {}


def test_metric_logger_averages_micro_batches_and_reports_rates(tmp_path):
    log = MetricLogger(tb_dir=tmp_path / "tb", total_steps=10, samples_per_step=8, tokens_per_sample=64,
                       is_main=True)
    for value in (1.0, 3.0):
        log.accumulate({"loss/total": torch.tensor(value)})
    log.add_data(0.0, {"corrupt_image": 2})
    log.add_data(0.0, {"corrupt_image": 1, "truncated_tar": 1})
    log.end_step()
    values = log.write(1, {"optim/lr": 0.5})
    log.close()
    assert values["loss/total"] == pytest.approx(2.0)
    assert values["optim/lr"] == 0.5
    assert values["data/skipped_corrupt_image"] == 3 and values["data/skipped_truncated_tar"] == 1
    assert values["time/tokens_per_s"] == pytest.approx(values["time/samples_per_s"] * 64)
    assert 0.0 <= values["time/data_wait_frac"] <= 1.0
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
