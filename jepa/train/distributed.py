"""Which rank this process is, on which device: from torchrun's or srun's environment, or alone.

`jepa train` is the same entry point everywhere. torchrun sets RANK/WORLD_SIZE/LOCAL_RANK and the
rendezvous address; under `srun` (one task per rank) only SLURM_* variables exist, so they are
translated here before the process group starts.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_from_slurm(environ: dict[str, str]) -> dict[str, str]:
    """torchrun-style variables derived from an `srun` task's SLURM_* variables (empty if not srun)."""
    if "RANK" in environ or "SLURM_PROCID" not in environ or "SLURM_NTASKS" not in environ:
        return {}
    job_id = int(environ.get("SLURM_JOB_ID", "0"))
    return {
        "RANK": environ["SLURM_PROCID"],
        "WORLD_SIZE": environ["SLURM_NTASKS"],
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": environ.get("MASTER_ADDR") or _first_host(environ.get("SLURM_JOB_NODELIST", "")),
        # A port from the job id: ranks of one job agree, concurrent jobs on a node rarely collide.
        "MASTER_PORT": environ.get("MASTER_PORT") or str(20000 + job_id % 20000),
    }


def _first_host(nodelist: str) -> str:
    if not nodelist:
        return "127.0.0.1"
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, check=True, timeout=30).stdout.split()
        return out[0] if out else "127.0.0.1"
    except (OSError, subprocess.SubprocessError):
        return nodelist.split(",")[0].split("[")[0]


def init_distributed() -> DistInfo:
    """Start the process group (one rank alone too: DeepSpeed needs one) and pick this rank's device."""
    from jepa.train.engine import ensure_process_group

    os.environ.update(env_from_slurm(dict(os.environ)))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)  # before NCCL starts, so each rank binds its own GPU
    else:
        device = torch.device("cpu")
    ensure_process_group()
    return DistInfo(rank=torch.distributed.get_rank(), world_size=torch.distributed.get_world_size(),
                    local_rank=local_rank, device=device)


def shutdown() -> None:
    """Leave the process group in order, so that interpreter teardown finds no live gloo/NCCL
    threads (left to teardown they abort it with 'terminate called without an active exception',
    a non-zero exit that SLURM reads as a failed job). Waits for every rank first."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
