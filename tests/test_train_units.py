"""Small pieces of the training loop: the loss-spike guard, srun environment, metric reduction,
the device every metric lives on, the process group's backend."""

import math
import os
import subprocess
import sys

import pytest
import torch

from jepa.train.distributed import env_from_slurm
from jepa.train.engine import optimizer_step
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


def test_guard_state_round_trip_gives_the_same_decisions():
    guard = LossSpikeGuard(window=8, k=2.0, min_history=3)
    for x in (1.0, 1.2, 0.8, 1.1, 50.0):
        guard.is_spike(torch.tensor(x))
    resumed = LossSpikeGuard(window=8, k=2.0, min_history=3)
    resumed.load_state_dict(guard.state_dict())
    assert resumed.skipped == guard.skipped == 1 and list(resumed.history) == list(guard.history)
    for x in (1.0, 1.6, 0.9, 30.0, 1.05):
        assert resumed.is_spike(torch.tensor(x)) == guard.is_spike(torch.tensor(x))
    fresh = LossSpikeGuard(window=8, k=2.0, min_history=3)
    assert not fresh.is_spike(torch.tensor(30.0)), "without the history the decision differs"


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
    log = MetricLogger(tb_dir=tmp_path / "tb", device=torch.device("cpu"), total_steps=10, samples_per_step=8,
                       tokens_per_sample=64, is_main=True)
    for value in (1.0, 3.0):
        log.accumulate({"loss/total": torch.tensor(value)})
    log.add_data_wait(0.0)
    log.end_step()
    values = log.write(1, {"optim/lr": 0.5}, skipped={"corrupt_image": 3, "truncated_tar": 1})
    log.close()
    assert values["loss/total"] == pytest.approx(2.0)
    assert values["optim/lr"] == 0.5
    assert values["data/skipped_corrupt_image"] == 3 and values["data/skipped_truncated_tar"] == 1
    assert values["time/tokens_per_s"] == pytest.approx(values["time/samples_per_s"] * 64)
    assert 0.0 <= values["time/data_wait_frac"] <= 1.0
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_a_metric_on_another_device_is_refused_where_it_is_added():
    """On a GPU a CPU metric would break the stack and NCCL's all-reduce at the first log step."""
    log = MetricLogger(tb_dir=None, device=torch.device("meta"), total_steps=1, samples_per_step=1,
                       tokens_per_sample=1, is_main=False)
    log.accumulate({"loss/total": torch.ones((), device="meta")})
    with pytest.raises(ValueError, match="mask/context_ratio is on cpu, the training device is meta"):
        log.accumulate({"mask/context_ratio": torch.tensor(0.5)})


class FakeEngine:
    """Just what `optimizer_step` touches, on a device that is not the CPU."""

    def __init__(self, norm):
        self.device = torch.device("meta")
        self.optimizer, self.basic_optimizer = object(), object()
        self.norm = norm

    def is_gradient_accumulation_boundary(self):
        return True

    def step(self):
        pass

    def get_global_grad_norm(self):
        return self.norm


@pytest.mark.parametrize("norm", [1.5, None, torch.tensor(2.0, device="meta")], ids=["float", "none", "tensor"])
def test_grad_norm_lives_on_the_engine_device(norm):
    out = optimizer_step(FakeEngine(norm))
    assert out.device == torch.device("meta") and out.dtype == torch.float32 and out.shape == ()


def test_process_group_backend_follows_the_detected_accelerator():
    """No DS_ACCELERATOR set: DeepSpeed detects the CPU here and the group runs on gloo (NCCL on CUDA)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DS_ACCELERATOR", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    code = ("import torch; from jepa.train.distributed import init_distributed, shutdown; d = init_distributed(); "
            "print(torch.distributed.get_backend(), d.device); shutdown()")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    expected = "nccl cuda:0" if torch.cuda.is_available() else "gloo cpu"
    assert out.stdout.strip().splitlines()[-1] == expected
