"""Sharded checkpoints of a run: save, discover, resume (also on another world size), purge.

Layout of `output_dir/checkpoints`:

    latest                      tag of the newest complete checkpoint; replaced atomically, last
    step_00001000/              one checkpoint
        *_model_states.pt       DeepSpeed: module (+ client state: step, config, data position)
        *_optim_states.pt       DeepSpeed: optimizer shards, one per rank
        rank0.pt, rank1.pt ...  per-rank RNG state (python, numpy, torch) and data state
        ema_target.pt           the fp32 EMA target's state_dict (identical on every rank)
        meta.json               commit marker, written by rank 0 after every rank has finished
    step_00001000.universal/    DeepSpeed universal form of a checkpoint, made for another world size

A save writes everything into the tag folder, waits for all ranks, then rank 0 writes the commit
marker and replaces `latest`. A crash before that leaves a folder without a marker, which
discovery ignores, so `latest` always names a loadable checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from jepa.config import Config, to_dict
from jepa.errors import UserError
from jepa.seeding import derive_seed

log = logging.getLogger(__name__)

MARKER = "meta.json"
EMA_FILE = "ema_target.pt"
LATEST = "latest"
UNIVERSAL_SUFFIX = ".universal"
_TAG = re.compile(r"^step_(\d{8})(\.universal)?$")
MODEL_SECTIONS = ("model", "hierarchy")
"""Config sections that define the network: a checkpoint only resumes a run that agrees on them."""


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete (committed) checkpoint on disk, described by its commit marker."""

    path: Path
    step: int
    world_size: int
    zero_stage: int
    bf16: bool
    config: dict

    @property
    def tag(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class TrainState:
    """What a resume hands back to the loop."""

    step: int
    """Optimizer steps completed; the next step to run."""
    data_position: Any
    """The caller's global data position as saved (rank 0's copy)."""
    rank_data_state: Any
    """This rank's data state as saved; None for a rank that did not exist in the saved run."""
    path: Path
    """The checkpoint folder resumed from."""


# ----------------------------------------------------------------------------- discovery

def read_info(path: Path) -> CheckpointInfo | None:
    """The checkpoint in `path` if its commit marker exists, else None (incomplete or not one)."""
    try:
        meta = json.loads((path / MARKER).read_text())
    except FileNotFoundError:
        return None
    return CheckpointInfo(path=path, step=meta["step"], world_size=meta["world_size"],
                          zero_stage=meta["zero_stage"], bf16=meta["bf16"], config=meta["config"])


def committed_checkpoints(root: Path) -> list[CheckpointInfo]:
    """Complete checkpoints under `root`, oldest first."""
    if not root.is_dir():
        return []
    infos = [read_info(d) for d in root.iterdir() if _tag_step(d.name, universal=False) is not None]
    return sorted((i for i in infos if i is not None), key=lambda i: i.step)


def latest_checkpoint(root: Path) -> CheckpointInfo | None:
    """The checkpoint `latest` names; the newest complete one if `latest` is missing or stale."""
    try:
        info = read_info(root / (root / LATEST).read_text().strip())
    except (FileNotFoundError, NotADirectoryError):
        info = None
    if info is not None:
        return info
    complete = committed_checkpoints(root)
    return complete[-1] if complete else None


def require_latest(run_dir: str | Path) -> CheckpointInfo:
    """The checkpoint a run folder would resume from; a UserError when it has none."""
    root = Path(run_dir) / "checkpoints"
    info = latest_checkpoint(root)
    if info is None:
        raise UserError(f"{run_dir}: no complete checkpoint under {root}; "
                        f"give the run folder (output_dir) of a run that has saved one")
    return info


def _tag_step(name: str, *, universal: bool | None) -> int | None:
    """Step of a tag folder name (`universal`: None = either form, True/False = only that form)."""
    m = _TAG.match(name)
    if m is None or (universal is not None and bool(m.group(2)) != universal):
        return None
    return int(m.group(1))


# ----------------------------------------------------------------------------- RNG

def rng_state() -> dict[str, Any]:
    """This process's random state: python, numpy, torch CPU (and the current CUDA device's)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_rng(seed: int, rank: int, step: int = 0) -> None:
    """Seed python, numpy and torch from (seed, rank, step): distinct streams per rank and restart.

    Call it after building the model (whose initial weights must not depend on the rank).
    """
    value = derive_seed(seed, rank, step, purpose="jepa-rng")
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


# ----------------------------------------------------------------------------- helpers

def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old or the new content, never a part."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _flatten(d: Any, prefix: str) -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}"))
        return out
    if isinstance(d, list) and any(isinstance(x, dict) for x in d):
        out = {f"{prefix}.len": len(d)}
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: d}


def model_differences(saved: dict, current: dict) -> list[str]:
    """'key: checkpoint X, this run Y' for every model/hierarchy setting that differs."""
    diffs = []
    for section in MODEL_SECTIONS:
        a, b = _flatten(saved.get(section, {}), section), _flatten(current.get(section, {}), section)
        for key in sorted(a.keys() | b.keys()):
            if a.get(key) != b.get(key):
                diffs.append(f"{key}: checkpoint {a.get(key)!r}, this run {b.get(key)!r}")
    return diffs


def convert_to_universal(tag_dir: Path, *, workers: int = 4) -> Path:
    """Convert one checkpoint to DeepSpeed's universal form (`<tag>.universal` next to it).

    The universal form loads on any world size. The conversion runs DeepSpeed's ds_to_universal
    in a fresh process and renames its output into place only when it has finished.
    """
    out = tag_dir.with_name(tag_dir.name + UNIVERSAL_SUFFIX)
    if out.is_dir():
        return out
    tmp = tag_dir.with_name(tag_dir.name + UNIVERSAL_SUFFIX + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(tag_dir),
           "--output_folder", str(tmp), "--num_extract_workers", str(workers),
           "--num_merge_workers", str(max(1, workers // 2)), "--inject_missing_state"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    # ds_to_universal points a `latest_universal` file at its output folder; ours is `latest`.
    (tag_dir.parent / "latest_universal").unlink(missing_ok=True)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise UserError(f"converting {tag_dir} to a universal checkpoint failed "
                        f"(`{' '.join(cmd)}` exited with {proc.returncode}):\n{tail}")
    os.replace(tmp, out)
    return out


# ----------------------------------------------------------------------------- the checkpointer

class Checkpointer:
    """Owns `output_dir/checkpoints`: save, resume, discovery and keep-last-k purging.

    Every rank constructs one and calls `save`/`resume` together (both are collective).

        ckpt = Checkpointer(cfg, rank=rank, world_size=world_size)
        engine = build_engine(trainable, cfg, world_size=world_size,
                              load_universal=ckpt.needs_universal(ckpt.resume_point()))
        state = ckpt.resume(engine, target)      # None: a fresh run, start at step 0
        ...
        ckpt.save(engine, target, step=step, data_position=..., rank_data_state=...)

    `before_commit(tag_dir)` runs on every rank after its files are written and before the commit
    (a test hook for crashes in the middle of a save).
    """

    def __init__(self, cfg: Config, *, rank: int, world_size: int,
                 before_commit: Callable[[Path], None] | None = None):
        self.cfg = cfg
        self.config_dict = to_dict(cfg)
        self.rank = rank
        self.world_size = world_size
        self.root = Path(cfg.output_dir) / "checkpoints"
        self.before_commit = before_commit

    # --------------------------------------------------------------------- save

    def save(self, engine, target: nn.Module, *, step: int, data_position: Any = None,
             rank_data_state: Any = None) -> Path:
        """Write a complete checkpoint of `step`, commit it, then drop all but the newest keep_last.

        A complete checkpoint of the same step already on disk is kept as it is.
        """
        from deepspeed.checkpoint.constants import UNIVERSAL_CHECKPOINT_INFO

        tag = tag_for(step)
        tag_dir = self.root / tag
        if read_info(tag_dir) is not None:
            return tag_dir
        if self.rank == 0:
            shutil.rmtree(tag_dir, ignore_errors=True)  # the remains of a save that crashed
        _barrier()
        client_state = {"step": step, "config": self.config_dict, "data_position": data_position,
                        "world_size": self.world_size,
                        # Lets ds_to_universal convert ZeRO-1/2 checkpoints for another world size.
                        UNIVERSAL_CHECKPOINT_INFO: {}}
        engine.save_checkpoint(str(self.root), tag=tag, client_state=client_state, save_latest=False)
        torch.save({"rng": rng_state(), "data": rank_data_state}, tag_dir / f"rank{self.rank}.pt")
        if self.rank == 0:
            torch.save({k: v.detach().cpu() for k, v in target.state_dict().items()}, tag_dir / EMA_FILE)
        if self.before_commit is not None:
            self.before_commit(tag_dir)
        _barrier()  # every rank's files are on disk
        if self.rank == 0:
            self._commit(tag_dir, step)
            self.purge()
        _barrier()
        return tag_dir

    def _commit(self, tag_dir: Path, step: int) -> None:
        ds = self.cfg.deepspeed
        meta = {"step": step, "world_size": self.world_size, "zero_stage": ds.zero_stage, "bf16": ds.bf16,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": self.config_dict}
        _atomic_write(tag_dir / MARKER, json.dumps(meta, indent=1))
        _atomic_write(self.root / LATEST, tag_dir.name)
        log.info("saved checkpoint %s", tag_dir)

    def purge(self) -> None:
        """Delete all but the newest `checkpoint.keep_last` complete checkpoints (and their universal
        forms) and folders of saves that never completed. Rank 0 calls it after a commit."""
        keep = {i.step for i in committed_checkpoints(self.root)[-self.cfg.checkpoint.keep_last:]}
        for d in sorted(self.root.iterdir()):
            step = _tag_step(d.name, universal=None)
            if step is not None and step not in keep:
                shutil.rmtree(d, ignore_errors=True)

    # --------------------------------------------------------------------- resume

    def resume_point(self) -> CheckpointInfo | None:
        """The checkpoint this run resumes from, or None for a fresh start; refuses unsafe cases.

        Raises UserError when checkpoints exist but `checkpoint.resume` is false, or when the latest
        checkpoint was trained with another model/hierarchy config or ZeRO stage / precision.
        """
        info = latest_checkpoint(self.root)
        if info is None:
            return None
        if not self.cfg.checkpoint.resume:
            raise UserError(
                f"{self.root} already holds checkpoints (latest {info.tag}, step {info.step}) but "
                f"checkpoint.resume=false, so this run would start again from step 0 over them. "
                f"Choose another output_dir, remove {self.root}, or set checkpoint.resume=true to continue.")
        diffs = model_differences(info.config, self.config_dict)
        if diffs:
            raise UserError(
                f"{info.path} was trained with a different model; differing keys:\n  " + "\n  ".join(diffs)
                + f"\nTo train this model choose another output_dir; to continue {self.root.parent} "
                f"resume with its original config ({self.root.parent / 'config.yaml'}).")
        ds = self.cfg.deepspeed
        if (info.zero_stage, info.bf16) != (ds.zero_stage, ds.bf16):
            raise UserError(
                f"{info.path} was saved with deepspeed.zero_stage={info.zero_stage}, "
                f"deepspeed.bf16={info.bf16}; this run has zero_stage={ds.zero_stage}, bf16={ds.bf16}. "
                f"Resume with the saved values (the world size may differ).")
        return info

    def needs_universal(self, info: CheckpointInfo | None) -> bool:
        """True when resuming `info` goes through a universal checkpoint (ZeRO 1-3 on another world
        size). Pass it to `build_engine(load_universal=...)`. ZeRO 0 keeps whole optimizer states
        and loads on any world size as it is."""
        return info is not None and info.zero_stage > 0 and info.world_size != self.world_size

    def resume(self, engine, target: nn.Module) -> TrainState | None:
        """Load the resume point into the engine, the EMA target and this rank's RNG; None if none.

        On another world size the checkpoint is first converted to universal form (rank 0, once;
        `jepa checkpoint reshape` can do it ahead of time). Ranks beyond the saved world size get
        fresh RNG streams from `seed_rng(seed, rank, step)` and no data state.
        """
        info = self.resume_point()
        if info is None:
            return None
        tag = info.tag
        if self.needs_universal(info):
            if not engine.load_universal_checkpoint():
                raise RuntimeError(f"{info.path} was saved by {info.world_size} ranks, this run has "
                                   f"{self.world_size}: build the engine with "
                                   f"load_universal=checkpointer.needs_universal(point)")
            if self.rank == 0:
                convert_to_universal(info.path)
            _barrier()
            tag += UNIVERSAL_SUFFIX
        load_path, client = engine.load_checkpoint(str(self.root), tag=tag, load_optimizer_states=True,
                                                   load_lr_scheduler_states=False)
        if load_path is None:
            raise UserError(f"{info.path}: DeepSpeed found no model states to load; the folder is damaged. "
                            f"Remove it (and fix {self.root / LATEST}) to resume from an older checkpoint.")
        target.load_state_dict(torch.load(info.path / EMA_FILE, map_location="cpu", weights_only=True))
        rank_data = self._restore_rank_state(info)
        if self.rank == 0:
            log.info("resuming from %s at step %d", info.path, client["step"])
        return TrainState(step=int(client["step"]), data_position=client.get("data_position"),
                          rank_data_state=rank_data, path=info.path)

    def _restore_rank_state(self, info: CheckpointInfo) -> Any:
        if self.rank >= info.world_size:
            seed_rng(self.cfg.seed, self.rank, info.step)
            return None
        state = torch.load(info.path / f"rank{self.rank}.pt", map_location="cpu", weights_only=False)
        set_rng_state(state["rng"])
        return state["data"]


# ----------------------------------------------------------------------------- export

def export_target(run_dir: str | Path, out_file: str | Path) -> Path:
    """Write the EMA target encoder of a run's latest checkpoint as one fp32 safetensors file.

    The model config goes into the file's metadata (`jepa.model`, JSON) and, readable, into a
    JSON file next to it (`out_file` with suffix .json). Returns the safetensors path.
    """
    from safetensors.torch import save_file

    out_file = Path(out_file)
    info = require_latest(run_dir)
    state = torch.load(info.path / EMA_FILE, map_location="cpu", weights_only=True)
    # Own, contiguous copies: safetensors refuses tensors that share storage (tied weights).
    tensors = {k: (v.float() if v.is_floating_point() else v).contiguous().clone() for k, v in state.items()}
    meta = {"model": info.config["model"], "step": info.step, "checkpoint": str(info.path)}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_file), metadata={"jepa.model": json.dumps(meta["model"]),
                                                "jepa.step": str(info.step)})
    out_file.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return out_file
