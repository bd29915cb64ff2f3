"""`jepa submit CONFIG --sweep KEY=V1,V2 [--sweep ...]`: one run per combination of the sweep values,
all submitted as one array job.

Every combination's config is checked first (as `jepa submit` checks one); if any fails, nothing is
written or queued. Each run goes to OUTPUT_DIR/<its overrides>, e.g.
`OUTPUT_DIR/optim.lr=1e-4,model.predictor.depth=1`; the sweep folder OUTPUT_DIR holds the shared
code snapshot and submitit's files (`submitit/<array id>_<index>_0_log.out`).
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from jepa import config
from jepa.config import to_yaml
from jepa.errors import UserError


@dataclass(frozen=True)
class SweepRun:
    name: str
    overrides: list[str]
    run_dir: Path
    job_id: str = ""


def parse_sweeps(sweeps: list[str]) -> list[list[str]]:
    """`--sweep` arguments -> every combination, as lists of `key=value` overrides (first sweep outermost).
    A value list is split at top-level commas; brackets keep theirs (`data.crop=[1,2],[3,4]`)."""
    axes = []
    for sweep in sweeps:
        key, sep, values = sweep.partition("=")
        if not sep or not key or not values:
            raise UserError(f"--sweep {sweep}: give KEY=V1,V2,...")
        if key.split(".")[0] == "launch" or key == "output_dir":
            raise UserError(f"--sweep {sweep}: {key} cannot vary within one array job")
        axes.append([f"{key}={v}" for v in _split_top(values)])
    return [list(c) for c in itertools.product(*axes)]


def _split_top(values: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in values:
        depth += (ch in "[{") - (ch in "]}")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur]


def folder_name(overrides: list[str]) -> str:
    """A run folder's name from its overrides: `optim.lr=1e-4,model.predictor.depth=1`; characters other
    than letters, digits and `._=,+-` become `_`."""
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", ",".join(overrides))[:200]


def plan(config_path: str, overrides: list[str], sweeps: list[str]):
    """(base config, [SweepRun]) with every combination's config checked; a UserError naming the first
    combination that fails."""
    from jepa.launch import prepare

    base = config.load(config_path, overrides)
    root = Path(base.output_dir).expanduser().resolve()
    runs, cfgs = [], []
    for combo in parse_sweeps(sweeps):
        name = folder_name(combo)
        try:
            cfg = prepare(config.load(config_path, [*overrides, *combo, f"output_dir={root / name}"]))
        except UserError as e:
            raise UserError(f"sweep combination {','.join(combo)}: {e}") from None
        runs.append(SweepRun(name, combo, root / name))
        cfgs.append(cfg)
    return root, runs, cfgs


def submit_sweep(config_path: str, overrides: list[str], sweeps: list[str], *,
                 dry_run: bool = False) -> list[SweepRun] | str:
    """Check every combination, write the run folders, submit one array job; the runs with their job ids.
    With `dry_run` the combinations and the job script, nothing written."""
    from jepa.launch import (CODE_DIR, SUBMITIT_DIR, TrainJob, check_with_sbatch, job_setup, make_executor,
                             sbatch_script, snapshot_code)
    from jepa.launch_jobs import record_job

    root, runs, cfgs = plan(config_path, overrides, sweeps)
    first, folder = cfgs[0], root / SUBMITIT_DIR
    placeholder = job_setup(first, root / CODE_DIR / "<time of submission>")
    if first.launch.cluster == "slurm":
        script = sbatch_script(first, placeholder, folder=folder, array=len(runs))
        if dry_run:
            return "\n".join([*(f"{r.name}  ->  {r.run_dir}" for r in runs), "", script])
        check_with_sbatch(script)
    elif dry_run:
        return "\n".join(f"{r.name}  ->  {r.run_dir}" for r in runs)
    for run, cfg in zip(runs, cfgs):
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / "config.yaml").write_text(to_yaml(cfg))
    executor = make_executor(first, job_setup(first, snapshot_code(root)), folder)
    with executor.batch():
        jobs = [executor.submit(TrainJob(str(r.run_dir), workdir=os.getcwd())) for r in runs]
    for run, job in zip(runs, jobs):
        record_job(run.run_dir, job, cluster=first.launch.cluster, kind="train")
    if first.launch.cluster == "debug":
        for job in jobs:
            job.result()
    return [SweepRun(r.name, r.overrides, r.run_dir, str(j.job_id)) for r, j in zip(runs, jobs)]
