"""Sharded checkpoints of a run: save, discover, resume (also on another world size), purge.

Layout of `output_dir/checkpoints`:

    latest                      tag of the newest complete checkpoint; replaced atomically, last
    step_00001000/              one checkpoint
        *_model_states.pt       DeepSpeed: module (+ client state: step, config, world size)
        *_optim_states.pt       DeepSpeed: optimizer shards, one per rank
        rank0.pt, rank1.pt ...  each rank's own state: RNG (python, numpy, torch, CUDA) and what
                                the caller hands in (data position, skip counts, loss-spike guard)
        ema_target.pt           the fp32 EMA target's state_dict (identical on every rank)
        meta.json               commit marker, written by rank 0 after every rank has finished
    step_00001000.universal/    DeepSpeed universal form of a checkpoint, made for another world size

A save writes everything into the tag folder, waits for all ranks, then rank 0 writes the commit
marker and replaces `latest`. A crash before that leaves a folder without a marker, which
discovery ignores, so `latest` always names a loadable checkpoint.

Under ZeRO 0-2 DeepSpeed writes the client state from rank 0 only and every rank loads that copy,
so anything that differs between ranks lives in the rank files, each written and read by its rank.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from jepa.config import Config, to_dict
from jepa.errors import UserError
from jepa.seeding import rng_state, seed_rng, set_rng_state
from jepa.train.universal import UNIVERSAL_SUFFIX, convert_to_universal

log = logging.getLogger(__name__)

MARKER = "meta.json"
EMA_FILE = "ema_target.pt"
LATEST = "latest"
_TAG = re.compile(r"^step_(\d{8})(\.universal)?$")
MODEL_SECTIONS = ("model", "hierarchy")
"""Config sections that define the network: a checkpoint only resumes a run that agrees on them."""
BOOKKEEPING_SECTIONS = ("output_dir", "checkpoint", "logging", "launch", "probe", "eval")
"""Config sections that do not change what is computed: a resume that changes them says nothing."""


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
    rank_state: dict | None
    """This rank's state as the caller saved it; None for a rank that did not exist in the saved run
    (read `Checkpointer.rank_state(info, 0)` for what another rank had)."""
    info: CheckpointInfo
    """The checkpoint resumed from."""


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


def config_differences(saved: dict, current: dict, sections: tuple[str, ...] | None = None) -> list[str]:
    """'key: checkpoint X, this run Y' for every setting that differs (in `sections`, or in all)."""
    diffs = []
    for section in sections if sections is not None else sorted(saved.keys() | current.keys()):
        a, b = _flatten(saved.get(section, {}), section), _flatten(current.get(section, {}), section)
        for key in sorted(a.keys() | b.keys()):
            if a.get(key) != b.get(key):
                diffs.append(f"{key}: checkpoint {a.get(key)!r}, this run {b.get(key)!r}")
    return diffs


def model_differences(saved: dict, current: dict) -> list[str]:
    """The differing model/hierarchy settings (see `config_differences`)."""
    return config_differences(saved, current, MODEL_SECTIONS)


# ----------------------------------------------------------------------------- the checkpointer

class Checkpointer:
    """Owns `output_dir/checkpoints`: save, resume, discovery and keep-last-k purging.

    Every rank constructs one and calls `save`/`resume` together (both are collective).

        ckpt = Checkpointer(cfg, rank=rank, world_size=world_size)
        engine = build_engine(trainable, cfg, world_size=world_size,
                              load_universal=ckpt.needs_universal(ckpt.resume_point()))
        state = ckpt.resume(engine, target)      # None: a fresh run, start at step 0
        ...
        ckpt.save(engine, target, step=step, rank_state={"data": ..., ...})   # this rank's own state

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

    def save(self, engine, target: nn.Module, *, step: int, rank_state: dict | None = None) -> Path:
        """Write a complete checkpoint of `step`, commit it, then drop all but the newest keep_last.

        `rank_state` is this rank's own state (picklable), handed back by `resume` to the same rank.
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
        client_state = {"step": step, "config": self.config_dict, "world_size": self.world_size,
                        # Lets ds_to_universal convert ZeRO-1/2 checkpoints for another world size.
                        UNIVERSAL_CHECKPOINT_INFO: {}}
        engine.save_checkpoint(str(self.root), tag=tag, client_state=client_state, save_latest=False)
        torch.save({"rng": rng_state(), "state": rank_state}, tag_dir / f"rank{self.rank}.pt")
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
        fresh RNG streams from `seed_rng(seed, rank, step)` and no rank state. Rank 0 logs every
        setting that differs from the checkpoint's, since the run then differs from an
        uninterrupted one.
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
        if self.rank < info.world_size:
            saved = self._rank_file(info, self.rank)
            set_rng_state(saved["rng"])
            own = saved["state"]
        else:
            seed_rng(self.cfg.seed, self.rank, info.step)
            own = None
        if self.rank == 0:
            self._announce(info, int(client["step"]))
        return TrainState(step=int(client["step"]), rank_state=own, info=info)

    def rank_state(self, info: CheckpointInfo, rank: int) -> dict | None:
        """What `rank` saved in checkpoint `info` (the `rank_state` of its `save`)."""
        return self._rank_file(info, rank)["state"]

    @staticmethod
    def _rank_file(info: CheckpointInfo, rank: int) -> dict:
        return torch.load(info.path / f"rank{rank}.pt", map_location="cpu", weights_only=False)

    def _announce(self, info: CheckpointInfo, step: int) -> None:
        log.info("resuming from %s at step %d", info.path, step)
        saved, now = info.world_size, self.world_size
        if saved != now:
            what = (f"ranks {saved}-{now - 1} start fresh data streams at the same epoch and batch" if now > saved
                    else f"the data streams of ranks {now}-{saved - 1} end")
            log.warning("the checkpoint was saved by %d ranks and this run has %d: ranks 0-%d continue their own "
                        "data streams and %s, so the data order differs from an uninterrupted %d-rank run",
                        saved, now, min(saved, now) - 1, what, saved)
        changed = [d for d in config_differences(info.config, self.config_dict)
                   if d.split(".")[0].split(":")[0] not in BOOKKEEPING_SECTIONS]
        if changed:
            log.warning("settings changed since the checkpoint, so the run from here on differs from an "
                        "uninterrupted one:\n  %s", "\n  ".join(changed))
