"""The jobs of a run folder: what `jepa submit` records (`RUN/jobs.json`), `jepa submit --status`
(job state from SLURM or submitit's files, last step, latest checkpoint) and probe jobs
(`jepa submit --probe RUN ...`: `jepa probe` as a one-task job with the run's launch settings).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from jepa import config
from jepa.errors import UserError

JOBS_FILE = "jobs.json"
"""In a run folder: one entry per job submitted for it (id, kind, cluster, submitit folder, time)."""
PROBE_DIR = "probe"


def record_job(run_dir: Path, job, *, cluster: str, kind: str) -> None:
    """Append `job` (a submitit job) to run_dir/jobs.json."""
    path = Path(run_dir) / JOBS_FILE
    jobs = json.loads(path.read_text()) if path.is_file() else []
    jobs.append({"job_id": str(job.job_id), "kind": kind, "cluster": cluster,
                 "folder": str(job.paths.folder), "submitted": time.strftime("%Y-%m-%d %H:%M:%S")})
    path.write_text(json.dumps(jobs, indent=1) + "\n")


# ----------------------------------------------------------------------------- --status

def run_folders(patterns: list[str]) -> list[Path]:
    """Run folders named by the arguments (a folder, or a glob of folders; the shell may have expanded it)."""
    runs = []
    for pattern in patterns:
        found = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        runs += [Path(p) for p in found if Path(p).is_dir()]
        if not found or not Path(found[0]).is_dir():
            raise UserError(f"{pattern}: no such run folder")
    return runs


def job_state(entry: dict) -> str:
    """SLURM's state of a recorded job while SLURM knows it (squeue, scontrol, sacct); afterwards, or
    for local jobs, what submitit's result file says; `finished/unknown` when nothing does."""
    job_id = entry["job_id"]
    if entry["cluster"] == "slurm":
        for cmd in (["squeue", "-h", "-j", job_id, "-o", "%T"], ["scontrol", "-o", "show", "job", job_id],
                    ["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id]):
            out = _quiet(cmd)
            if cmd[0] == "scontrol" and out:
                out = next((w.split("=", 1)[1] for w in out.split() if w.startswith("JobState=")), "")
            if out:
                return out.split()[0]
    elif entry["cluster"] == "local" and _alive(job_id):
        return "RUNNING"
    from submitit.core.utils import JobPaths

    result = JobPaths(entry["folder"], job_id=job_id, task_id=0).result_pickle
    if result.is_file():
        import pickle

        with result.open("rb") as f:
            outcome = pickle.load(f)[0]
        return "COMPLETED" if outcome == "success" else "FAILED"
    return "finished/unknown"


def _quiet(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return ""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, OSError):
        return False
    return True


def status_table(runs: list[Path]) -> str:
    """A markdown table: each run's jobs (id, kind, state), last step, latest checkpoint."""
    from jepa.train.checkpoint import latest_checkpoint

    rows = ["| run | job | kind | state | last step | latest checkpoint |", "|---|---|---|---|---|---|"]
    for run in runs:
        path = run / JOBS_FILE
        jobs = json.loads(path.read_text()) if path.is_file() else [{}]
        latest = latest_checkpoint(run / "checkpoints")
        step, ckpt = (str(latest.step), str(latest.path)) if latest else ("-", "-")
        for entry in jobs:
            job = (entry["job_id"], entry["kind"], job_state(entry)) if entry else ("-", "-", "not submitted")
            rows.append(f"| {run} | {' | '.join(job)} | {step} | {ckpt} |")
    return "\n".join(rows)


# ----------------------------------------------------------------------------- --probe

def probe_cfg(run: Path):
    """The run's config with a one-task launch (probes run on one rank)."""
    if not (run / "config.yaml").is_file():
        raise UserError(f"{run}: not a run folder (no config.yaml); --probe takes the output_dir of a run")
    cfg = config.load(run / "config.yaml")
    cfg.launch.nodes, cfg.launch.tasks_per_node = 1, 1
    cfg.launch.gpus_per_node = min(cfg.launch.gpus_per_node, 1)
    return cfg


def probe_args(run: Path, args) -> list[str]:
    out = Path(args.out).resolve() if args.out else run / PROBE_DIR
    argv = ["probe", str(run), "--train", args.train, "--val", args.val, "--kind", args.kind,
            "--encoder", args.encoder, "--out", str(out)]
    flags = [flag for flag, on in (("--baseline", args.baseline), ("--shuffle-frames", args.shuffle_frames)) if on]
    return argv + flags + list(args.overrides)


def submit_probe(run: Path, args, *, dry_run: bool = False) -> tuple[str, Path] | str:
    """Submit `jepa probe` on `run` (after `args.dependency`); (job id, results.json), or with
    `dry_run` the job script / a description."""
    from jepa.launch import (CODE_DIR, SUBMITIT_DIR, check_with_sbatch, job_setup, make_executor, sbatch_script,
                             snapshot_code)

    run = run.resolve()
    if not args.train or not args.val:
        raise UserError("--probe needs --train SHARDS and --val SHARDS")
    cfg = probe_cfg(run)
    cfg.output_dir = str(run / PROBE_DIR)  # the job's submitit/ folder goes under RUN/probe/
    argv = probe_args(run, args)
    results = Path(argv[argv.index("--out") + 1]) / "results.json"
    if cfg.launch.cluster == "slurm":
        setup = job_setup(cfg, run / CODE_DIR / "<time of submission>")
        if dry_run:
            return sbatch_script(cfg, setup, args.dependency or "") + f"\n# runs: jepa {' '.join(argv)}\n"
        check_with_sbatch(sbatch_script(cfg, setup))  # without the dependency: it may name a finished job
    elif dry_run:
        return f"{cfg.launch.cluster}: 1 task on this machine: jepa {' '.join(argv)}"
    folder = Path(cfg.output_dir) / SUBMITIT_DIR
    executor = make_executor(cfg, job_setup(cfg, snapshot_code(run)), folder, dependency=args.dependency or "")
    job = executor.submit(ProbeJob(argv, workdir=os.getcwd()))
    record_job(run, job, cluster=cfg.launch.cluster, kind="probe")
    if cfg.launch.cluster == "debug":
        job.result()
    return str(job.job_id), results


class ProbeJob:
    """What the probe job's task runs: `jepa probe` with the arguments given at submission."""

    def __init__(self, argv: list[str], *, workdir: str):
        self.argv = argv
        self.workdir = workdir

    def __call__(self) -> int:
        import submitit
        from jepa.cli import main

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        os.chdir(self.workdir)
        status = main(self.argv)
        if status:
            sys.exit(status)
        return status
