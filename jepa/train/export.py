"""`jepa export`: the EMA target encoder of a run's latest checkpoint as one safetensors file."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from jepa.train.checkpoint import EMA_FILE, require_latest


def export_target(run_dir: str | Path, out_file: str | Path) -> Path:
    """Write the EMA target encoder of a run's latest checkpoint as one fp32 safetensors file.

    The file's metadata holds the model config (`jepa.model`, JSON), the run's whole resolved
    config (`jepa.config`: the encoder rebuilds from it alone, image size, frames and patch or
    tubelet included) and the step; the same, readable, goes into a JSON file next to it
    (`out_file` with suffix .json). Returns the safetensors path.
    """
    from safetensors.torch import save_file

    out_file = Path(out_file)
    info = require_latest(run_dir)
    state = torch.load(info.path / EMA_FILE, map_location="cpu", weights_only=True)
    # Own, contiguous copies: safetensors refuses tensors that share storage (tied weights).
    tensors = {k: (v.float() if v.is_floating_point() else v).contiguous().clone() for k, v in state.items()}
    meta = {"model": info.config["model"], "step": info.step, "checkpoint": str(info.path), "config": info.config}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_file), metadata={"jepa.model": json.dumps(meta["model"]),
                                                "jepa.config": json.dumps(info.config), "jepa.step": str(info.step)})
    out_file.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return out_file
