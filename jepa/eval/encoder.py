"""The frozen encoder a probe evaluates: from a run folder, from an exported file, or freshly initialised.

A run folder gives its latest checkpoint's EMA target encoder (`which="ema"`, what `jepa export`
writes and what JEPA papers probe) or its online context encoder (`which="context"`, read from
DeepSpeed's files: the module states under ZeRO 0, the fp32 master weights under ZeRO 1-3). An
exported safetensors file carries the run's config in its metadata, so the encoder rebuilds from
the file alone. `random_like` builds the same architecture with fresh weights: the baseline that
tells whether pretraining learned anything.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from jepa.config import Config, from_dict
from jepa.errors import UserError
from jepa.models.factory import build_encoder
from jepa.train.checkpoint import EMA_FILE, require_latest

ENCODERS = ("ema", "context")


@dataclass
class FrozenEncoder:
    """An encoder in eval mode without gradients, the config it was built from, and where it came from."""

    module: nn.Module
    cfg: Config
    source: dict
    """JSON-ready: kind (run | weights | random), path, step, which encoder, weights hash."""


def load_encoder(source: str | Path, *, which: str = "ema") -> FrozenEncoder:
    """The encoder of a run folder (its latest checkpoint) or of an exported `.safetensors` file."""
    if which not in ENCODERS:
        raise UserError(f"--encoder {which!r}: expected one of {', '.join(ENCODERS)}")
    path = Path(source)
    if path.is_file():
        if which != "ema":
            raise UserError(f"{path} is an exported file, which holds the EMA target encoder only; "
                            f"give the run folder to probe the context encoder")
        return _from_export(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such run folder or exported encoder file")
    info = require_latest(path)
    cfg = from_dict(info.config, origin=str(info.path))
    module = build_encoder(cfg)
    state = (torch.load(info.path / EMA_FILE, map_location="cpu", weights_only=True) if which == "ema"
             else _context_state(info.path, zero_stage=info.zero_stage))
    _load(module, state, where=str(info.path))
    return _frozen(module, cfg, {"kind": "run", "path": str(path), "checkpoint": str(info.path),
                                 "step": info.step, "encoder": which})


def random_like(encoder: FrozenEncoder, *, seed: int) -> FrozenEncoder:
    """The same architecture freshly initialised (seeded), for the random-init baseline."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = build_encoder(encoder.cfg)
    return _frozen(module, encoder.cfg, {"kind": "random", "seed": seed, "like": encoder.source})


def _from_export(path: Path) -> FrozenEncoder:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a file of another format
        raise UserError(f"{path} is not a safetensors file written by `jepa export` ({e})") from None
    if "jepa.config" not in meta:
        raise UserError(f"{path} has no `jepa.config` metadata: export it again with `jepa export RUN OUT` "
                        f"(files of older versions lack what rebuilding the encoder needs)")
    cfg = from_dict(json.loads(meta["jepa.config"]), origin=str(path))
    module = build_encoder(cfg)
    _load(module, state, where=str(path))
    return _frozen(module, cfg, {"kind": "weights", "path": str(path), "step": int(meta.get("jepa.step", -1)),
                                 "encoder": "ema"})


def _context_state(tag_dir: Path, *, zero_stage: int) -> dict[str, torch.Tensor]:
    """The online context encoder's fp32 weights from a DeepSpeed checkpoint folder."""
    if zero_stage == 0:
        files = sorted(tag_dir.glob("mp_rank_*_model_states.pt"))
        module = torch.load(files[0], map_location="cpu", weights_only=False)["module"]
    else:  # ZeRO 1-3: the fp32 master weights live in the optimizer partitions
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        module = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    prefix = "context_encoder."
    return {k[len(prefix):]: v.float() if v.is_floating_point() else v
            for k, v in module.items() if k.startswith(prefix)}


def _load(module: nn.Module, state: dict[str, torch.Tensor], *, where: str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{where}: the weights do not fit the encoder its config describes "
                        f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")


def _frozen(module: nn.Module, cfg: Config, source: dict) -> FrozenEncoder:
    module.requires_grad_(False).eval()
    digest = hashlib.sha1()
    for name, value in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().float().cpu().numpy().tobytes())
    return FrozenEncoder(module=module, cfg=cfg, source={**source, "weights_sha1": digest.hexdigest()[:16]})
