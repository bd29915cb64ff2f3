"""`jepa submit`: a run as a submitit job (SLURM, or this machine), with a code snapshot and self-requeue.

At submission: the whole config is checked (the same refusals as `jepa train`), SLURM is asked
whether it would accept the job (`sbatch --test-only`: partition, resources, account), and only
then is the run folder written: the resolved `config.yaml`, a copy of the `jepa` package under
`code/<time>/` (first on the job's PYTHONPATH, so editing the checkout changes no queued or
requeued job) and submitit's files under `submitit/` (job script, pickled `TrainJob`, logs).

In the job every task runs `TrainJob`: torch.distributed's variables from submitit's job
environment, then exactly the training entry of `jepa train` (`jepa.train.loop.train`). SLURM
sends SIGUSR2 `launch.signal_delay_s` before the time limit (and at preemption where the cluster
is set up to); the loop saves at the next step boundary on every rank and stops
(jepa/train/stop.py). Rank 0 then requeues the job (`scontrol requeue`; on `local` the controller
restarts the tasks) and it resumes from `latest`, until `launch.max_requeues`. After SIGTERM
(preemption, `scontrol requeue`, `scancel`) the run saves the same way, but SLURM decides whether
the job comes back, so the job does not requeue itself.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from jepa import config
from jepa.config import Config, to_yaml
from jepa.errors import UserError

log = logging.getLogger("jepa.launch")

SUBMITIT_DIR = "submitit"
CODE_DIR = "code"
LOCAL_REQUEUES = "local_requeues"
"""File in the submitit folder counting a `local` job's requeues (SLURM counts its own)."""


@dataclass(frozen=True)
class Submission:
    job_id: str
    run_dir: Path
    stdout: Path
    stderr: Path


# ----------------------------------------------------------------------------- at submission

def prepare(cfg: Config) -> Config:
    """The config as the job will run it (absolute output_dir: a job may start elsewhere), after the
    checks `jepa train` makes before any work (resume point, data settings, masks)."""
    from jepa.config.sizes import is_video_model
    from jepa.data.train_stream import check_train_data
    from jepa.masks import build_mask_generator
    from jepa.models.factory import input_grid
    from jepa.train.checkpoint import Checkpointer

    cfg.output_dir = str(Path(cfg.output_dir).expanduser().resolve())
    Checkpointer(cfg, rank=0, world_size=world_size(cfg)).resume_point()
    check_train_data(cfg, clips=is_video_model(cfg))
    build_mask_generator(cfg.mask, input_grid(cfg))
    return cfg


def world_size(cfg: Config) -> int:
    la = cfg.launch
    return la.tasks_per_node * (la.nodes if la.cluster == "slurm" else 1)


def slurm_parameters(cfg: Config, setup: list[str], dependency: str = "") -> dict:
    """submitit's SlurmExecutor parameters for `cfg.launch` (only what is set); `dependency`: SLURM's
    `--dependency` (e.g. `afterok:4242`)."""
    la = cfg.launch
    params = {"job_name": la.name, "nodes": la.nodes, "ntasks_per_node": la.tasks_per_node,
              "cpus_per_task": la.cpus_per_task, "mem": f"{la.mem_gb}GB", "time": la.timeout_min,
              "signal_delay_s": la.signal_delay_s, "setup": setup,
              # requeueable, so the job may requeue itself at the time limit and SLURM may at preemption
              "additional_parameters": {"requeue": True, **dict(_sbatch_option(o) for o in la.slurm_extra)}}
    if dependency:
        params["additional_parameters"]["dependency"] = dependency
    if la.gpus_per_node:
        params["gpus_per_node"] = la.gpus_per_node
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(la, key):
            params[key] = getattr(la, key)
    return params


def _sbatch_option(option: str) -> tuple[str, str | bool]:
    name, sep, value = option.partition("=")
    return name, value if sep else True


def sbatch_script(cfg: Config, setup: list[str], dependency: str = "", *, folder: Path | None = None,
                  array: int | None = None) -> str:
    """The job script `jepa submit` would hand to sbatch (submitit writes it the same way); `array`:
    the number of tasks of an array job."""
    from submitit.slurm.slurm import _make_sbatch_string  # what SlurmExecutor itself calls

    folder = folder or Path(cfg.output_dir) / SUBMITIT_DIR
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, map_count=array,
                               **slurm_parameters(cfg, setup, dependency))


def check_with_sbatch(script: str) -> None:
    """Ask SLURM whether it would take the job (`sbatch --test-only`, nothing is queued); a UserError
    with SLURM's own message when not."""
    if shutil.which("sbatch") is None:
        raise UserError("sbatch not found: launch.cluster=slurm submits from a SLURM login node; "
                        "on a workstation use launch.cluster=local")
    with tempfile.NamedTemporaryFile("w", suffix=".sh") as f:
        f.write(script)
        f.flush()
        proc = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"sbatch exited with status {proc.returncode}"
        reason = reason.removeprefix("sbatch: error: ").removeprefix("allocation failure: ")
        raise UserError(f"SLURM refuses the job ({reason}); "
                        f"check launch.partition, launch.nodes/tasks_per_node/gpus_per_node/cpus_per_task/"
                        f"mem_gb/timeout_min and launch.slurm_extra against `sinfo`")


def snapshot_code(run_dir: Path) -> Path:
    """Copy the `jepa` package into run_dir/code/<time>/ and return that folder (for PYTHONPATH)."""
    import jepa

    dest = run_dir / CODE_DIR / time.strftime("%Y%m%d-%H%M%S")
    shutil.copytree(Path(jepa.__file__).parent, dest / "jepa",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)
    return dest


def job_setup(cfg: Config, code: Path) -> list[str]:
    """The shell lines a job runs before its tasks: the user's, then the code snapshot first on the
    import path. `python -m` (how submitit starts a task) puts the working directory before
    PYTHONPATH, and a job submitted from a checkout would import the checkout, so the tasks start in
    the snapshot folder; `TrainJob` goes back to the submission's folder once `jepa` is imported."""
    code = shlex.quote(str(code))
    return [*cfg.launch.setup, f"export PYTHONPATH={code}${{PYTHONPATH:+:$PYTHONPATH}}", f"cd {code}"]


def make_executor(cfg: Config, setup: list[str], folder: Path, *, dependency: str = ""):
    """submitit's executor for `cfg.launch`, writing its files to `folder`; `dependency` (SLURM's
    `--dependency`, e.g. `afterok:4242`) holds the job until then."""
    import submitit

    la = cfg.launch
    if la.cluster == "slurm":
        executor = submitit.SlurmExecutor(folder=folder)
        executor.update_parameters(**slurm_parameters(cfg, setup, dependency))
    elif la.cluster == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(tasks_per_node=la.tasks_per_node, timeout_min=la.timeout_min,
                                   signal_delay_s=la.signal_delay_s, setup=setup)
    else:
        executor = submitit.DebugExecutor(folder=folder)
    if dependency and la.cluster != "slurm":
        raise UserError(f"--dependency {dependency} needs launch.cluster=slurm (this is {la.cluster})")
    return executor


def submit(cfg: Config, *, dry_run: bool = False) -> Submission | str:
    """Check, write the run folder, submit; the job's ids and paths. With `dry_run` the job script
    (SLURM) or a description (local, debug), and nothing written or queued."""
    from jepa.launch_jobs import record_job

    cfg = prepare(cfg)
    run_dir, la = Path(cfg.output_dir), cfg.launch
    placeholder = run_dir / CODE_DIR / "<time of submission>"
    if dry_run:
        if la.cluster == "slurm":
            return sbatch_script(cfg, job_setup(cfg, placeholder))
        return (f"{la.cluster}: {world_size(cfg)} task(s) on this machine, time limit {la.timeout_min} min, "
                f"SIGUSR2 {la.signal_delay_s} s before it; setup: {job_setup(cfg, placeholder)}")
    if la.cluster == "slurm":
        check_with_sbatch(sbatch_script(cfg, job_setup(cfg, placeholder)))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    executor = make_executor(cfg, job_setup(cfg, snapshot_code(run_dir)), run_dir / SUBMITIT_DIR)
    job = executor.submit(TrainJob(str(run_dir), workdir=os.getcwd()))
    record_job(run_dir, job, cluster=la.cluster, kind="train")
    if la.cluster == "debug":
        job.result()  # runs here, in this process
    return Submission(job_id=str(job.job_id), run_dir=run_dir, stdout=job.paths.stdout, stderr=job.paths.stderr)


# ----------------------------------------------------------------------------- in the job

class TrainJob:
    """What every task of a submitted job runs (pickled by submitit beside the run)."""

    def __init__(self, run_dir: str, *, workdir: str):
        self.run_dir = run_dir
        self.workdir = workdir
        """The folder `jepa submit` ran in: relative paths of the config are relative to it."""

    def __call__(self) -> str:
        import submitit
        import jepa
        from jepa.train.loop import train
        from jepa.train.stop import RunStopped

        # RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT (first node); each rank picks its GPU by
        # LOCAL_RANK itself, so CUDA_VISIBLE_DEVICES stays as SLURM set it. Values inherited from the
        # submitting shell (sbatch exports its environment) describe another job: drop them, or
        # submitit refuses to export and every task fails.
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            os.environ.pop(key, None)
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        print(f"jepa from {Path(jepa.__file__).parent}", flush=True)
        os.chdir(self.workdir)
        cfg = config.load(Path(self.run_dir) / "config.yaml")
        try:
            train(cfg)
        except RunStopped as stopped:
            return _after_stop(stopped, cfg)
        return "finished"


def _after_stop(stopped, cfg: Config) -> str:
    """Requeue after SIGUSR2 (the time limit, or a preemption announced by signal), unless the job
    has requeued `launch.max_requeues` times; after SIGTERM SLURM decides."""
    import submitit

    env = submitit.JobEnvironment()
    if stopped.signal_name != "SIGUSR2" or cfg.launch.cluster == "debug":
        log.info("%s; not requeued by the job (%s: the cluster decides)", stopped, stopped.signal_name)
        return "stopped"
    done = _requeues_so_far(cfg)
    if done >= cfg.launch.max_requeues:
        raise UserError(f"{stopped}; the job was not requeued: it has been requeued {done} times "
                        f"(launch.max_requeues={cfg.launch.max_requeues}). Submit it again to go on")
    if env.global_rank != 0:
        return "stopped"
    log.info("%s; requeueing (requeue %d of at most %d)", stopped, done + 1, cfg.launch.max_requeues)
    if cfg.launch.cluster == "slurm":
        subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]], check=True, timeout=60)
        return "requeued"
    from submitit.local.local import LOCAL_REQUEUE_RETURN_CODE

    counter = Path(cfg.output_dir) / SUBMITIT_DIR / LOCAL_REQUEUES
    counter.parent.mkdir(exist_ok=True)  # a sweep's runs share the sweep folder's submitit/
    counter.write_text(str(done + 1))
    sys.exit(LOCAL_REQUEUE_RETURN_CODE)  # the local controller restarts every task on this status


def _requeues_so_far(cfg: Config) -> int:
    if cfg.launch.cluster == "slurm":
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    counter = Path(cfg.output_dir) / SUBMITIT_DIR / LOCAL_REQUEUES
    return int(counter.read_text()) if counter.is_file() else 0

