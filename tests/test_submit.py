"""`jepa submit` against a real one-node SLURM cluster (tests/slurm_cluster.py) and the local executor:
a 2-task job to completion, a requeue midway that resumes exactly, a time-out that saves and
requeues, and refusals at submission that leave nothing behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurm_cluster import slurm_cluster  # noqa: F401  (the fixture)
from test_train_loop import jepa_train, overrides, scalars, shards  # noqa: F401  (shards: the fixture)
from test_train_stop import wait_for

SLURM_JOB = {"launch.cluster": "slurm", "launch.tasks_per_node": 2, "launch.cpus_per_task": 1,
             "launch.mem_gb": 6, "launch.timeout_min": 10, "launch.signal_delay_s": 60}
"""Two tasks of one CPU each: the whole test node."""


def jepa_submit(args: list[str], env: dict[str, str] | None = None, *, ok: bool = True,
                config: list[str] = ["small/demo"]) -> subprocess.CompletedProcess:
    env = dict(env or os.environ)
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "jepa.cli", "submit", *config, *args], env=env,
                          capture_output=True, text=True, timeout=300)
    assert (proc.returncode == 0) == ok, proc.stdout + proc.stderr
    return proc


def job_id(proc: subprocess.CompletedProcess) -> str:
    return re.search(r"submitted job (\S+)", proc.stdout).group(1)


def wait_until_gone(cluster, job: str, timeout: float = 400) -> None:
    wait_for(lambda: job not in cluster.queue(), f"job {job} to leave the queue", timeout=timeout)


def job_log(run: Path, job: str) -> str:
    return "".join(p.read_text() for p in sorted((run / "submitit").glob(f"{job}_*_log.*")))


@pytest.mark.slow
@pytest.mark.slurm
def test_a_two_task_job_runs_to_completion(slurm_cluster, shards, tmp_path):
    run = tmp_path / "run"
    proc = jepa_submit(overrides(shards, run, **SLURM_JOB, **{"optim.total_steps": 4}), slurm_cluster.env)
    job = job_id(proc)
    assert str(run) in proc.stdout and f"{run}/submitit/{job}_0_log.out" in proc.stdout
    wait_until_gone(slurm_cluster, job)
    log = job_log(run, job)
    latest = run / "checkpoints" / "latest"
    assert latest.is_file() and latest.read_text() == "step_00000004", log[-3000:]
    assert sorted(scalars(run)["loss/total"]) == [1, 2, 3, 4]
    assert "2 ranks on cpu" in (run / "train.log").read_text()
    # Both tasks ran the snapshot of the code taken at submission, not the checkout.
    snapshot = next((run / "code").iterdir())
    assert log.count(f"jepa from {snapshot / 'jepa'}") == 2, log[-3000:]
    assert (run / "config.yaml").is_file()
    # --status: the job id recorded at submission, SLURM's (or submitit's) final state, the last step.
    table = jepa_submit(["--status", str(run)], slurm_cluster.env, config=[]).stdout
    assert f"| {run} | {job} | train | COMPLETED | 4 | {run}/checkpoints/step_00000004 |" in table, table


@pytest.mark.slow
@pytest.mark.slurm
def test_a_requeue_midway_saves_comes_back_and_resumes_exactly(slurm_cluster, shards, tmp_path):
    """`scontrol requeue` sends SIGTERM: every rank saves at its next step boundary, SLURM queues the
    job again, and it resumes from that checkpoint; losses and EMA weights equal an uninterrupted run."""
    steps = {"optim.total_steps": 40, "checkpoint.every_steps": 100}
    straight = tmp_path / "straight"
    jepa_train(overrides(shards, straight, **steps), nproc=2)
    run = tmp_path / "run"
    job = job_id(jepa_submit(overrides(shards, run, **SLURM_JOB, **steps), slurm_cluster.env))
    wait_for(lambda: "step 3/" in ((run / "train.log").read_text() if (run / "train.log").exists() else ""),
             "step 3", timeout=300)
    slurm_cluster.run("scontrol", "requeue", job)
    wait_until_gone(slurm_cluster, job, timeout=600)
    text = (run / "train.log").read_text()
    stop = int(re.search(r"stopped at step (\d+) on SIGTERM", text).group(1))
    assert 3 <= stop < 40
    assert f"resuming from {run}/checkpoints/step_{stop:08d} at step {stop}" in text
    assert (run / "checkpoints" / "latest").read_text() == "step_00000040"
    a, b = scalars(straight)["loss/total"], scalars(run)["loss/total"]
    assert sorted(b) == list(range(1, 41))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), f"loss differs at step {step}"
    import torch

    ema_a, ema_b = (torch.load(d / "checkpoints/step_00000040/ema_target.pt") for d in (straight, run))
    for name in ema_a:
        torch.testing.assert_close(ema_b[name], ema_a[name], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.slurm
def test_a_time_out_signals_saves_requeues_and_finishes(slurm_cluster, shards, tmp_path):
    """A one-minute limit with SIGUSR2 30 s before it: the job saves, requeues itself and, resumed,
    finishes. SLURM checks time limits every 30 s or so, so the signal comes 30-60 s after the start:
    the run is long enough (about 75 s of steps on a 2-core CPU) that a job cannot finish before it."""
    run = tmp_path / "run"
    job_args = {**SLURM_JOB, "launch.tasks_per_node": 1, "launch.timeout_min": 1, "launch.signal_delay_s": 30,
                "optim.total_steps": 1200, "logging.every_steps": 100, "checkpoint.every_steps": 10000}
    job = job_id(jepa_submit(overrides(shards, run, **job_args), slurm_cluster.env))
    wait_until_gone(slurm_cluster, job, timeout=900)
    text = (run / "train.log").read_text()
    log = job_log(run, job)
    stops = [int(s) for s in re.findall(r"jepa.train: stopped at step (\d+) on SIGUSR2", text)]
    assert stops, log[-3000:]
    assert "requeueing (requeue 1 of at most 10)" in text
    for s in stops:
        assert f"resuming from {run}/checkpoints/step_{s:08d} at step {s}" in text
    assert (run / "checkpoints" / "latest").read_text() == "step_00001200", log[-3000:]


@pytest.mark.slow
@pytest.mark.slurm
def test_refusals_at_submission_leave_nothing_behind(slurm_cluster, shards, tmp_path):
    run = tmp_path / "run"
    cases = {
        "launch.partition=nope": "SLURM refuses the job (Invalid partition name specified)",
        "launch.mem_gb=100000": "SLURM refuses the job (Requested node configuration is not available)",
        "launch.tasks_per_node=64": "SLURM refuses the job (Requested node configuration is not available)",
        "optim.lrr=1": "unknown config key `optim.lrr`; did you mean `optim.lr`?",
    }
    for bad, message in cases.items():
        proc = jepa_submit([*overrides(shards, run, **SLURM_JOB), bad], slurm_cluster.env, ok=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"jepa: error: {message}"), lines
    assert slurm_cluster.queue() == [] and not run.exists()


@pytest.mark.slow
def test_the_same_job_on_the_local_executor(shards, tmp_path):
    run = tmp_path / "run"
    local = {**SLURM_JOB, "launch.cluster": "local", "optim.total_steps": 4}
    proc = jepa_submit(overrides(shards, run, **local))
    job = job_id(proc)
    wait_for(lambda: (run / "checkpoints" / "latest").exists() and
             (run / "checkpoints" / "latest").read_text() == "step_00000004", "step 4 saved", timeout=300)
    wait_for(lambda: "Exiting after successful completion" in job_log(run, job), "the job's end", timeout=120)
    assert "2 ranks on cpu" in (run / "train.log").read_text()
    assert sorted(scalars(run)["loss/total"]) == [1, 2, 3, 4]


@pytest.mark.slow
def test_past_max_requeues_the_job_stops_and_says_so(shards, tmp_path):
    """The local executor signals SIGUSR2 exactly `signal_delay_s` before its limit: the first run
    requeues itself once, the second stops with the requeue limit in its log."""
    run = tmp_path / "run"
    local = {**SLURM_JOB, "launch.cluster": "local", "launch.tasks_per_node": 1, "launch.timeout_min": 1,
             "launch.signal_delay_s": 40, "launch.max_requeues": 1, "optim.total_steps": 100000,
             "logging.every_steps": 100, "checkpoint.every_steps": 100000}
    job = job_id(jepa_submit(overrides(shards, run, **local)))
    wait_for(lambda: "Submitted job triggered an exception" in job_log(run, job), "the job's end", timeout=240)
    text = (run / "train.log").read_text()
    first, second = (int(s) for s in re.findall(r"jepa.train: stopped at step (\d+) on SIGUSR2", text))
    assert "requeueing (requeue 1 of at most 1)" in text and f"at step {first}" in text
    assert ("the job was not requeued: it has been requeued 1 times (launch.max_requeues=1)"
            in job_log(run, job))
    assert (run / "checkpoints" / "latest").read_text() == f"step_{second:08d}" and second > first


@pytest.mark.slow
@pytest.mark.slurm
def test_the_plain_sbatch_script_saves_on_usr2_and_requeues_itself(slurm_cluster, shards, tmp_path):
    """launch/train.sbatch: SIGUSR2 to the tasks (what `--signal=USR2@120` sends) -> `jepa train` saves
    and exits 75 -> the script requeues the job -> it resumes and finishes."""
    run = tmp_path / "run"
    env = dict(slurm_cluster.env, DS_ACCELERATOR="cpu", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    script = Path(__file__).resolve().parent.parent / "launch" / "train.sbatch"
    args = overrides(shards, run, **{"optim.total_steps": 60, "checkpoint.every_steps": 1000})
    job = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0",
                          "--cpus-per-task=1", "--mem=4G", f"--output={tmp_path}/%j.out", str(script), "small/demo",
                          *args], env=env, capture_output=True, text=True, check=True).stdout.strip()
    wait_for(lambda: (run / "train.log").exists() and "step 3/" in (run / "train.log").read_text(), "step 3",
             timeout=300)
    subprocess.run(["scancel", "--signal=USR2", job], env=env, check=True)
    wait_until_gone(slurm_cluster, job)
    text, out = (run / "train.log").read_text(), (tmp_path / f"{job}.out").read_text()
    stop = int(re.search(r"stopped at step (\d+) on SIGUSR2", text).group(1))
    assert f"requeueing job {job} (restart 0)" in out
    assert f"resuming from {run}/checkpoints/step_{stop:08d} at step {stop}" in text
    assert (run / "checkpoints" / "latest").read_text() == "step_00000060", out[-3000:]


def test_dry_run_prints_the_job_script_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    proc = jepa_submit([f"output_dir={run}", "launch.cluster=slurm", "launch.nodes=2", "launch.tasks_per_node=4",
                        "launch.gpus_per_node=4", "launch.signal_delay_s=300", "launch.partition=gpu",
                        "launch.slurm_extra=[exclusive,mail-type=END]", "launch.setup=[module load cuda]",
                        "--dry-run"])
    script = proc.stdout
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --signal=USR2@300", "#SBATCH --requeue", "#SBATCH --partition=gpu",
                 "#SBATCH --exclusive", "#SBATCH --mail-type=END", "module load cuda"):
        assert line in script.splitlines(), line
    assert f"export PYTHONPATH='{run}/code/<time of submission>'" in script
    assert not run.exists()


def test_sweep_dry_run_names_a_folder_per_combination_and_checks_each(tmp_path):
    out = tmp_path / "sweep"
    proc = jepa_submit([f"output_dir={out}", "launch.cluster=slurm", "--sweep", "optim.lr=1e-4,3e-4",
                        "--sweep", "model.predictor.depth=1,2", "--dry-run"])
    names = [line.split("  ->  ")[0] for line in proc.stdout.splitlines() if "  ->  " in line]
    assert names == ["optim.lr=1e-4,model.predictor.depth=1", "optim.lr=1e-4,model.predictor.depth=2",
                     "optim.lr=3e-4,model.predictor.depth=1", "optim.lr=3e-4,model.predictor.depth=2"]
    assert f"{out}/optim.lr=3e-4,model.predictor.depth=2" in proc.stdout
    assert "#SBATCH --array=0-3%4" in proc.stdout.splitlines()
    bad = jepa_submit([f"output_dir={out}", "--sweep", "optim.lr=1e-4,-1"], ok=False)
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jepa: error: sweep combination optim.lr=-1: "), lines
    assert not out.exists()


def test_probe_dry_run_waits_for_the_dependency(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("launch:\n  cluster: slurm\n  tasks_per_node: 4\n  gpus_per_node: 4\n")
    proc = jepa_submit(["--probe", str(run), "--train", "a.tar", "--val", "b.tar", "--kind", "linear",
                        "--shuffle-frames", "--dependency", "afterok:4242", "--dry-run"], config=[])
    lines = proc.stdout.splitlines()
    for line in ("#SBATCH --dependency=afterok:4242", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=1"):
        assert line in lines, proc.stdout
    assert f"--out {run}/probe --shuffle-frames" in proc.stdout and not (run / "probe").exists()


@pytest.mark.slow
@pytest.mark.slurm
def test_a_sweep_is_one_array_job_whose_runs_both_finish(slurm_cluster, shards, tmp_path):
    out = tmp_path / "sweep"
    job_args = {**SLURM_JOB, "launch.tasks_per_node": 1, "optim.total_steps": 2, "checkpoint.every_steps": 2}
    proc = jepa_submit([*overrides(shards, out, **job_args), "--sweep", "optim.lr=1e-4,3e-4"], slurm_cluster.env)
    array = re.search(r"submitted array job (\d+) \(2 runs\)", proc.stdout).group(1)
    runs = [out / "optim.lr=1e-4", out / "optim.lr=3e-4"]
    for i, run in enumerate(runs):
        assert f"job {array}_{i}  {run}" in proc.stdout, proc.stdout
    wait_for(lambda: not any(j.startswith(array) for j in slurm_cluster.queue()), "the array to end", timeout=300)
    table = jepa_submit(["--status", f"{out}/optim.lr=*"], slurm_cluster.env, config=[]).stdout
    for i, run in enumerate(runs):
        assert (run / "checkpoints" / "latest").read_text() == "step_00000002", job_log(out, f"{array}_{i}")[-3000:]
        assert f"| {run} | {array}_{i} | train | COMPLETED | 2 |" in table, table


@pytest.mark.slow
@pytest.mark.slurm
def test_a_probe_job_writes_results_json(slurm_cluster, tmp_path):
    from jepa.config import from_dict, to_yaml
    from jepa.data.write import write_synthetic
    from test_probe import QUICK, make_run

    for name, seed in (("train", 1), ("val", 2)):
        write_synthetic(tmp_path / name, kind="image", n=16, classes=4, size=32, frames=1, seed=seed,
                        shard_size=16, progress=False)
    run = make_run(tmp_path)
    cfg = from_dict({**json.loads((run / "checkpoints/step_00000007/meta.json").read_text())["config"],
                     "launch": {k.split(".")[1]: v for k, v in SLURM_JOB.items()}})
    (run / "config.yaml").write_text(to_yaml(cfg))
    proc = jepa_submit(["--probe", str(run), "--train", f"{tmp_path}/train/shard-000000.tar",
                        "--val", f"{tmp_path}/val/shard-000000.tar", "--kind", "linear", *QUICK],
                       slurm_cluster.env, config=[])
    job = re.search(r"submitted probe job (\d+)", proc.stdout).group(1)
    assert f"results      {run}/probe/results.json" in proc.stdout
    wait_until_gone(slurm_cluster, job, timeout=300)
    assert (run / "probe" / "results.json").is_file(), job_log(run / "probe", job)[-3000:]
