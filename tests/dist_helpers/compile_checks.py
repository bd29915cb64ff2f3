"""Compiled blocks under DeepSpeed, one process started without a launcher: writes RESULT.json.

    python tests/dist_helpers/compile_checks.py RESULT.json

For ZeRO 0 (fp32), 2 and 3 (bf16): a tiny JEPA trained 3 steps eagerly and with compiled blocks (the
`aot_eager` backend: Dynamo and AOT autograd, the parts that meet DeepSpeed's hooks) gives the same
losses, grad norms and weights. Graph breaks are counted per case: none under ZeRO 0-2; under ZeRO-3
at DeepSpeed's compiler-disabled parameter hooks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

from jepa.config import from_dict
from jepa.masks import build_mask_generator, mask_rng
from jepa.models.compile import compile_blocks, is_compiled
from jepa.models.factory import build_jepa, input_grid
from jepa.train.engine import build_engine, optimizer_step, set_optim_hparams

from engine_checks import named_full
from toy import exit_now, flat

CASES = [(0, False), (2, True), (3, True)]


def config(stage: int, bf16: bool):
    return from_dict({
        "model": {"size": "tiny", "embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8,
                  "predictor": {"embed_dim": 16, "depth": 2, "num_heads": 2, "per_block": True}},
        "data": {"image_size": 32, "batch_size": 4}, "mask": {"min_keep": 2},
        "deepspeed": {"zero_stage": stage, "bf16": bf16, "zero3_persistence_threshold": 0},
    })


def train(stage: int, bf16: bool, backend) -> dict:
    cfg = config(stage, bf16)
    torch.manual_seed(0)
    model = build_jepa(cfg)
    if backend is not None:
        compile_blocks(model, backend=backend)
    engine = build_engine(model.trainable, cfg, world_size=1)
    gen = build_mask_generator(cfg.mask, input_grid(cfg))
    dtype = torch.bfloat16 if bf16 else torch.float32
    losses, norms = [], []
    for step in range(3):
        set_optim_hparams(engine, 1e-3, 0.05)
        x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(step))
        masks = gen(4, mask_rng(0, 0, 0, step))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            targets = model.compute_targets(x, masks)
        loss, _ = engine(x.to(dtype), masks, targets)
        engine.backward(loss)
        norms.append(optimizer_step(engine).item())
        losses.append(loss.item())
    blocks = [m for m in engine.module.modules() if type(m).__name__ == "EvaBlock"]
    return {"losses": losses, "norms": norms, "weights": flat(named_full(engine).values()),
            "compiled": all(map(is_compiled, blocks)), "keys": sorted(engine.module.state_dict())}


def main(result: Path) -> None:
    out = {}
    for stage, bf16 in CASES:
        eager = train(stage, bf16, None)
        counter = CompileCounterWithBackend("aot_eager")
        breaks = sum(counters["graph_break"].values())
        compiled = train(stage, bf16, counter)
        out[f"zero{stage}-{'bf16' if bf16 else 'fp32'}"] = {
            "eager_losses": eager["losses"], "compiled_losses": compiled["losses"],
            "eager_norms": eager["norms"], "compiled_norms": compiled["norms"],
            "max_weight_diff": (eager["weights"] - compiled["weights"]).abs().max().item(),
            "weight_scale": eager["weights"].abs().max().item(),
            "compiled": compiled["compiled"], "graphs": counter.frame_count,
            "same_keys": eager["keys"] == compiled["keys"],
            "graph_breaks": sum(counters["graph_break"].values()) - breaks,
        }
    result.write_text(json.dumps(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    exit_now()
