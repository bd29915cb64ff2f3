"""Save on signal: `jepa train` sent SIGUSR2 (or SIGTERM) midway saves at the step it reached, exits
with status 75, and the resumed run equals one that never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from jepa.train.stop import EXIT_STOPPED
from test_train_loop import overrides, scalars, shards  # noqa: F401  (shards: the fixture)

STEPS = 12
STOP_RUN = {"optim.total_steps": STEPS, "checkpoint.every_steps": 100}
"""Interval saves only at the end, so the checkpoint before the end can only be the signal's."""


def start_train(args: list[str], log: Path, *, nproc: int = 1) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] if nproc > 1 else []
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, *launcher, "-m", "jepa.cli", "train", "small/demo", *args],
                                env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_for(predicate, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of torchrun's worker process with RANK=`rank`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if ppid == launcher.pid and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no worker with RANK={rank} under pid {launcher.pid}")


def stop_midway(shards: str, run: Path, sig: signal.Signals, *, nproc: int = 1, rank: int = 0) -> int:
    """Start a run, send `sig` (to `rank`'s process) once step 3 is logged; the step it saved at."""
    console = run.parent / f"{run.name}.console"
    proc = start_train(overrides(shards, run, **STOP_RUN), console, nproc=nproc)
    try:
        wait_for(lambda: "step 3/" in console.read_text(), "step 3")
        os.kill(proc.pid if nproc == 1 else rank_pid(proc, rank), sig)
        proc.wait(timeout=300)
    finally:
        proc.kill()
    out = console.read_text()
    assert "stopped at step " in out, out[-3000:]
    stop_step = int(out.split("stopped at step ")[1].split()[0])
    assert f"on {sig.name}" in out and 3 <= stop_step < STEPS
    if nproc == 1:
        assert proc.returncode == EXIT_STOPPED and "Traceback" not in out, out[-3000:]
    else:  # torchrun reports the first worker to exit (after the save) with its status, and ends the other
        assert proc.returncode != 0 and f"exitcode  : {EXIT_STOPPED}" in out, out[-3000:]
    assert (run / "checkpoints" / "latest").read_text() == f"step_{stop_step:08d}"
    assert f"stopped at step {stop_step} on {sig.name}" in (run / "train.log").read_text()
    assert sorted(scalars(run)["loss/total"]) == list(range(1, stop_step + 1))  # the stop step logged too
    return stop_step


def assert_resumed_equals_straight(straight: Path, resumed: Path) -> None:
    a, b = scalars(straight)["loss/total"], scalars(resumed)["loss/total"]
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), f"loss differs at step {step}"
    last = f"checkpoints/step_{STEPS:08d}/ema_target.pt"
    ema_a, ema_b = torch.load(straight / last), torch.load(resumed / last)
    for name in ema_a:
        torch.testing.assert_close(ema_b[name], ema_a[name], rtol=1e-5, atol=1e-6)


def run_train(args: list[str], *, nproc: int = 1) -> str:
    from test_train_loop import jepa_train

    return jepa_train(args, nproc=nproc).stdout


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGUSR2, signal.SIGTERM], ids=["usr2", "term"])
def test_a_signal_saves_at_the_step_reached_and_the_resume_is_exact(shards, tmp_path, sig):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run_train(overrides(shards, straight, **STOP_RUN))
    stop_step = stop_midway(shards, stopped, sig)
    resumed = run_train(overrides(shards, stopped, **STOP_RUN))
    assert f"resuming from {stopped / 'checkpoints'}/step_{stop_step:08d} at step {stop_step}" in resumed
    assert_resumed_equals_straight(straight, stopped)


@pytest.mark.slow
@pytest.mark.distributed
def test_a_signal_to_one_rank_stops_both_at_the_same_step(shards, tmp_path):
    """SIGUSR2 reaches rank 1 only: the all-reduced stop check makes rank 0 save with it."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run_train(overrides(shards, straight, **STOP_RUN), nproc=2)
    stop_step = stop_midway(shards, stopped, signal.SIGUSR2, nproc=2, rank=1)
    tag = stopped / "checkpoints" / f"step_{stop_step:08d}"
    assert (tag / "rank0.pt").is_file() and (tag / "rank1.pt").is_file()
    run_train(overrides(shards, stopped, **STOP_RUN), nproc=2)
    assert_resumed_equals_straight(straight, stopped)
