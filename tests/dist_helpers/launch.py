"""Run a helper script on N CPU processes (torchrun, gloo) or as a lone process; collect its results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def run(script: str, arg: Path, *, nproc: int | None, timeout: float = 240) -> subprocess.CompletedProcess:
    """`nproc` None: plain `python script arg` (no launcher); else torchrun --standalone with nproc ranks."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    launcher = [] if nproc is None else ["-m", "torch.distributed.run", "--standalone",
                                         "--nproc_per_node", str(nproc)]
    return subprocess.run([sys.executable, *launcher, str(HERE / script), str(arg)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def check(proc: subprocess.CompletedProcess, *, ok: bool = True) -> None:
    if (proc.returncode == 0) != ok:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise AssertionError(f"exit status {proc.returncode} (expected {'0' if ok else 'non-zero'}):\n{tail}")


def train_toy(tmp: Path, name: str, *, nproc: int | None = 2, ok: bool = True, **spec) -> list[dict]:
    """Run train_toy.py with `spec` (output_dir defaults to tmp/name); per-rank results, tensors, output."""
    spec = {"output_dir": str(tmp / name), "result_dir": str(tmp / f"{name}.result"), "zero_stage": 2,
            "bf16": True, "total_steps": 20, "batch_size": 8, "grad_accum": 1, "every_steps": 1000,
            "keep_last": 3, "hidden": 32, "check_ema": False, **spec}
    spec_file = tmp / f"{name}.spec.json"
    spec_file.write_text(json.dumps(spec))
    proc = run("train_toy.py", spec_file, nproc=nproc)
    check(proc, ok=ok)
    if not ok:
        return []
    result_dir = Path(spec["result_dir"])
    world = 1 if nproc is None else nproc
    results = [json.loads((result_dir / f"rank{r}.json").read_text()) for r in range(world)]
    for r, res in enumerate(results):
        res["tensors"] = torch.load(result_dir / f"rank{r}.pt")
        res["output"] = proc.stdout + proc.stderr  # all ranks' console output
    return results
