"""Per-rank memory of the trainable state (params + grads + optimizer) under ZeRO 0/1/2/3, bf16.

    DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 python benchmarks/train_memory.py [--hidden 1024 --layers 10 --bucket N]

Launches one 2-process torchrun job per ZeRO stage on a ~10M-parameter MLP (context encoder +
predictor) built by `jepa.train.engine.build_engine`. Each rank counts the bytes of every live
tensor storage (deduplicated) at two points of a training step: right after backward (gradients
held) and after the optimizer step, minus what was alive before the model was built. That is the
trainable state the engine keeps, independent of allocator caching; activations are freed by then.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from jepa.config import DeepSpeedConfig

MiB = 2**20


def live_tensor_bytes() -> int:
    """Bytes of all distinct tensor storages reachable by Python's garbage collector."""
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
                storage = obj.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, ReferenceError):  # tensors without storage (meta, freed)
            continue
    return sum(seen.values())


def module_param_bytes(module: nn.Module) -> int:
    """The module's own copy of its parameters (a ZeRO-3 rank holds only its shard, `ds_tensor`)."""
    total = 0
    for p in module.parameters():
        t = getattr(p, "ds_tensor", p)
        total += t.numel() * t.element_size()
    return total


def optimizer_bytes(engine) -> int:
    """fp32 master weights and Adam moments: the torch optimizer's state, keyed by the master
    tensors it updates (whatever partitioning DeepSpeed chose for them)."""
    seen: dict[int, int] = {}
    for master, state in engine.basic_optimizer.state.items():
        for t in (master, *(v for v in state.values() if isinstance(v, torch.Tensor))):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def make_model(hidden: int, layers: int) -> nn.Module:
    class Trainable(nn.Module):
        def __init__(self):
            super().__init__()
            enc = [m for _ in range(layers - layers // 3) for m in (nn.Linear(hidden, hidden), nn.GELU())]
            pred = [m for _ in range(layers // 3) for m in (nn.Linear(hidden, hidden), nn.GELU())]
            self.context_encoder = nn.Sequential(*enc, nn.LayerNorm(hidden))
            self.predictor = nn.Sequential(*pred)

        def forward(self, x):
            return self.predictor(self.context_encoder(x)).float().pow(2).mean()

    return Trainable()


def worker(stage: int, hidden: int, layers: int, bucket: int, out: Path) -> None:
    from jepa.config import from_dict
    from jepa.train.engine import build_engine, ensure_process_group, optimizer_step, set_optim_hparams

    ensure_process_group()
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    cfg = from_dict({"data": {"batch_size": 4},
                     "deepspeed": {"zero_stage": stage, "bf16": True, "bucket_size": bucket}})
    gc.collect()
    baseline = live_tensor_bytes()
    torch.manual_seed(0)
    model = make_model(hidden, layers)
    n_params = sum(p.numel() for p in model.parameters())
    engine = build_engine(model, cfg, world_size=world)
    del model
    after_backward = after_step = 0
    for _ in range(2):  # the second step sees every lazily allocated buffer
        set_optim_hparams(engine, 1e-4, 0.05)
        loss = engine(torch.randn(4, hidden, dtype=torch.bfloat16))
        engine.backward(loss)
        del loss
        gc.collect()
        after_backward = max(after_backward, live_tensor_bytes() - baseline)
        optimizer_step(engine)
        gc.collect()
        after_step = max(after_step, live_tensor_bytes() - baseline)
    result = {"stage": stage, "rank": rank, "world": world, "params": n_params,
              "module_params": module_param_bytes(engine.module), "optimizer": optimizer_bytes(engine),
              "after_backward": after_backward, "after_step": after_step}
    (out / f"stage{stage}_rank{rank}.json").write_text(json.dumps(result))
    torch.distributed.destroy_process_group()
    os._exit(0)  # skip interpreter teardown (see tests/dist_helpers/toy.py: exit_now)


def driver(hidden: int, layers: int, bucket: int) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stage in (0, 1, 2, 3):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   __file__, "--worker", str(stage), "--hidden", str(hidden), "--layers", str(layers),
                   "--bucket", str(bucket), "--out", tmp]
            env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
                   "OMP_NUM_THREADS": "1"}
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"ZeRO {stage} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
            rows.append([json.loads((Path(tmp) / f"stage{stage}_rank{r}.json").read_text()) for r in (0, 1)])
    print(f"{rows[0][0]['params'] / 1e6:.1f}M parameters, bf16, AdamW, 2 ranks, "
          f"bucket_size {bucket:.0e}; MiB per rank (rank 0 / rank 1)\n")
    print("| ZeRO | module params | fp32 master + Adam | all state after step | peak (after backward) "
          "| params + optimizer vs ZeRO 0 | after step vs ZeRO 0 | peak vs ZeRO 0 |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")

    def worst(ranks, *keys):
        return max(sum(r[k] for k in keys) for r in ranks)

    base = rows[0]
    for ranks in rows:
        def both(key):
            return " / ".join(f"{r[key] / MiB:.1f}" for r in ranks)
        ratios = [worst(ranks, *k) / worst(base, *k) for k in (("module_params", "optimizer"), ("after_step",),
                                                               ("after_backward",))]
        print(f"| {ranks[0]['stage']} | {both('module_params')} | {both('optimizer')} | {both('after_step')} | "
              f"{both('after_backward')} | " + " | ".join(f"{x:.2f}" for x in ratios) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--bucket", type=int, default=DeepSpeedConfig().bucket_size,
                        help="deepspeed.bucket_size (elements); default: the config default")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is None:
        driver(args.hidden, args.layers, args.bucket)
    else:
        worker(args.worker, args.hidden, args.layers, args.bucket, args.out)


if __name__ == "__main__":
    main()
