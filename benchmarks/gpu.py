"""One GPU, one command: JEPA training steps in bf16 (throughput, MFU, peak memory), RoPE's share of
the step, and the data pipeline's throughput; prints a markdown table for benchmarks/README.md.

    benchmarks/gpu.sh [--image-batch 64] [--video-batch 16] [--steps 10] [--workers 8] [--peak-tflops T]
    benchmarks/gpu.sh --toy     # tiny models, 2 steps, on whatever device there is (CPU included)

Steps. image: ViT-L/16 at 224 px (configs/ijepa_vitb16.yaml with model.size=large: 14x14 tokens,
I-JEPA masks, per-block predictor 384x12); video: configs/vjepa_vitl16.yaml as it is (ViT-L/16 on
16x224x224 clips, tubelets 2x16x16, 8x14x14 tokens, V-JEPA masks, activation checkpointing).
A step is what `jepa train` runs per optimizer step, without DeepSpeed: the fp32 target encoder
on all tokens under bf16 autocast, the bf16 trainable part (context encoder on the context tokens,
predictor, heads) forward and backward, AdamW on fp32 master weights copied back to bf16 (what
DeepSpeed's bf16 optimizer does), and the EMA update. One batch and its masks are made once.

MFU = counted FLOPs per step / step time / the device's dense bf16 peak. FLOPs are counted with
torch.utils.flop_counter.FlopCounterMode over one forward + backward of one sample of the batch (the
masks of a batch have equal lengths, so every sample costs the same), with activation checkpointing
off: model FLOPs, not the recomputation. Optimizer and EMA (elementwise) are not counted.

RoPE share: the same step with RoPE off (model.rope.kind=none, sincos absolute positions instead),
timed in alternation with the RoPE step; share = 1 - off / on.

Data: `build_train_loader` with --workers DataLoader workers on synthetic shards (as
benchmarks/data.py: 256 px png images -> crop 224; 128 px H.264 clips -> 16 frames at step 2, crop
112), batches of 16 with masks, timed from the third batch.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/data.py, run as a script

import data as data_bench  # noqa: E402  (benchmarks/data.py)

from jepa import config  # noqa: E402
from jepa.masks import MaskSet, build_mask_generator, mask_rng  # noqa: E402
from jepa.models.factory import build_jepa, input_grid  # noqa: E402
from jepa.train.ema import ema_update  # noqa: E402
from jepa.train.metrics import peak_memory_gb  # noqa: E402

COLUMNS = ["date", "device", "torch", "case", "batch", "step (ms)", "throughput", "TFLOP per step",
           "achieved TFLOP/s", "MFU", "peak memory (GiB)", "RoPE share of step"]
"""The table's columns (tests/test_tools.py checks them)."""

PEAK_BF16_TFLOPS = [  # dense bf16 tensor-core peaks from the vendor's data sheets; first match wins
    ("H100 PCIe", 756.0), ("H200", 989.0), ("H100", 989.0), ("GH200", 989.0), ("B200", 2250.0),
    ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("A10G", 125.0), ("A10", 125.0), ("L4", 121.0),
    ("RTX 4090", 165.0), ("RTX 6000 Ada", 364.0), ("RTX A6000", 155.0),
]

CASES = {  # name: (config, overrides, input)
    "image": ("ijepa_vitb16", ["model.size=large"], "ViT-L/16 image 224 px, I-JEPA masks"),
    "video": ("vjepa_vitl16", [], "ViT-L/16 video 16x224 px, V-JEPA masks"),
}
TOY_CASES = {
    "image": ("small/ijepa_vitb16", [], "toy ViT image 64 px"),
    "video": ("small/vjepa_vitl16", [], "toy ViT video 8x64 px"),
}
ROPE_OFF = ["model.rope.kind=none", "model.abs_pos=true"]


@dataclass
class StepResult:
    step_s: float
    flops: float
    peak_gib: float
    rope_share: float


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def no_recompute(model: torch.nn.Module):
    """Activation checkpointing off in every module while counting FLOPs (model FLOPs, no recompute)."""
    switched = [m for m in model.modules() if getattr(m, "activation_checkpointing", False)]
    for m in switched:
        m.activation_checkpointing = False
    try:
        yield
    finally:
        for m in switched:
            m.activation_checkpointing = True


class Step:
    """One training step of `cfg`'s JEPA on a fixed batch, in bf16 with fp32 master weights."""

    def __init__(self, cfg: config.Config, batch: int, device: torch.device):
        torch.manual_seed(0)
        self.device = device
        self.model = build_jepa(cfg).to(device).train()
        self.trainable = self.model.trainable.to(torch.bfloat16)  # as DeepSpeed's bf16 engine holds it
        self.params = [p for p in self.trainable.parameters() if p.requires_grad]
        self.masters = [p.detach().float() for p in self.params]
        fused = {"fused": True} if device.type == "cuda" else {}
        self.optimizer = torch.optim.AdamW(self.masters, lr=1e-4, weight_decay=0.05, **fused)
        d = cfg.data
        shape = (batch, 3, d.num_frames, d.image_size, d.image_size) if len(input_grid(cfg)) == 3 else \
            (batch, 3, d.image_size, d.image_size)
        self.x = torch.randn(shape, device=device)
        generator = build_mask_generator(cfg.mask, input_grid(cfg))
        self.masks = [m.to(device) for m in generator(batch, mask_rng(cfg.seed, 0, 0, 0))]

    def forward_backward(self, x: torch.Tensor, masks: list) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            targets = self.model.compute_targets(x, masks)  # fp32 weights, bf16 matmuls
        loss, _ = self.trainable(x.to(torch.bfloat16), masks, targets)
        loss.backward()

    def __call__(self) -> None:
        self.forward_backward(self.x, self.masks)
        for master, p in zip(self.masters, self.params):
            master.grad = p.grad.float()
            p.grad = None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_copy_(self.params, self.masters)
        ema_update(self.model.target_encoder, self.trainable.context_encoder, 0.998, zero3=False)

    def timed(self) -> float:
        sync(self.device)
        start = time.perf_counter()
        self()
        sync(self.device)
        return time.perf_counter() - start

    def flops(self) -> float:
        """FLOPs of one step's forward + backward, counted on one sample and scaled to the batch."""
        from torch.utils.flop_counter import FlopCounterMode

        one = [MaskSet(m.context[:1], [t[:1] for t in m.targets]) for m in self.masks]
        counter = FlopCounterMode(display=False)
        with no_recompute(self.model), counter:
            self.forward_backward(self.x[:1], one)
        for p in self.params:
            p.grad = None
        return counter.get_total_flops() * self.x.shape[0]


def bench_step(cfg_name: str, overrides: list[str], batch: int, steps: int, device: torch.device) -> StepResult:
    cfg = config.load(cfg_name, overrides)
    on = Step(cfg, batch, device)
    flops = on.flops()
    on()  # warm-up: kernels chosen, allocator filled
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = [on.timed() for _ in range(steps)]
    peak = peak_memory_gb(device)
    step_s = statistics.median(times)
    off = Step(config.load(cfg_name, [*overrides, *ROPE_OFF]), batch, device)
    off()
    pairs = [(on.timed(), off.timed()) for _ in range(max(2, steps // 2))]  # alternate: same conditions
    share = 1 - statistics.median(o for _, o in pairs) / statistics.median(r for r, _ in pairs)
    del on, off
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return StepResult(step_s, flops, peak, share)


def bench_data(workers: int, batches: int, toy: bool) -> dict[str, tuple[int, data_bench.Run]]:
    """{kind: (batch size, pipeline run)} for image and video streams with `workers` workers."""
    with tempfile.TemporaryDirectory() as tmp:
        streams = data_bench.make_data(Path(tmp), toy=toy)
        return {kind: (data["batch_size"], data_bench.pipeline(data_bench.config(kind, data, workers), batches))
                for kind, (_, data) in streams.items()}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} cores)"


def peak_tflops(name: str, given: float | None) -> float | None:
    if given:
        return given
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--toy", action="store_true", help="tiny models, 2 steps, toy data: runs on a CPU in seconds")
    parser.add_argument("--image-batch", type=int, help="images per step (default 64; toy 2)")
    parser.add_argument("--video-batch", type=int, help="clips per step (default 16; toy 2)")
    parser.add_argument("--steps", type=int, help="timed steps per case (default 10; toy 2)")
    parser.add_argument("--workers", type=int, help="data pipeline workers (default: min(8, cores); toy 1)")
    parser.add_argument("--batches", type=int, help="timed data batches (default 32; toy 2)")
    parser.add_argument("--only", choices=("image", "video", "data"), nargs="+", default=["image", "video", "data"])
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: from a table of GPUs)")
    args = parser.parse_args(argv)
    toy = args.toy
    image_batch = args.image_batch or (2 if toy else 64)
    video_batch = args.video_batch or (2 if toy else 16)
    steps = args.steps or (2 if toy else 10)
    workers = args.workers if args.workers is not None else (1 if toy else min(8, os.cpu_count() or 1))
    batches = args.batches or (2 if toy else 32)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = device_name(device)
    peak = peak_tflops(name, args.peak_tflops)
    fixed = [datetime.date.today().isoformat(), name, torch.__version__]
    rows = []
    for kind, (cfg_name, overrides, label) in (TOY_CASES if toy else CASES).items():
        if kind not in args.only:
            continue
        batch = image_batch if kind == "image" else video_batch
        r = bench_step(cfg_name, overrides, batch, steps, device)
        unit = "images/s" if kind == "image" else "clips/s"
        achieved = r.flops / r.step_s / 1e12
        mfu = f"{100 * achieved / peak:.1f}%" if peak else "n/a"
        rows.append(row([*fixed, f"{label}, bf16 step", batch, f"{1e3 * r.step_s:.1f}", f"{batch / r.step_s:.1f} {unit}",
                         f"{r.flops / 1e12:.4g}", f"{achieved:.3g}", mfu, f"{r.peak_gib:.2f}",
                         f"{100 * r.rope_share:.1f}%"]))
        print(f"[{kind}] done: {1e3 * r.step_s:.1f} ms per step", file=sys.stderr, flush=True)
    if "data" in args.only:
        for kind, (batch, run) in bench_data(workers, batches, toy).items():
            unit = "images/s" if kind == "image" else "clips/s"
            rows.append(row([*fixed, f"data pipeline, {kind}, {workers} worker{'s' if workers != 1 else ''}", batch,
                             f"{1e3 * batch / run.rate:.1f}", f"{run.rate:.1f} {unit}", "-", "-", "-", "-", "-"]))
    entry = os.environ.get("GPU_BENCH_ENTRY", "python benchmarks/gpu.py")  # gpu.sh names itself
    command = " ".join([entry, *(argv if argv is not None else sys.argv[1:])])
    cuda = f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""
    print(f"`{command}` on {name} (torch {torch.__version__}{cuda}), {steps} timed steps, medians; "
          f"MFU against {f'{peak:g} TFLOP/s' if peak else 'an unknown peak (give --peak-tflops)'} dense bf16.\n")
    print(row(COLUMNS))
    print(row(["---"] * len(COLUMNS)))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
