"""Training metrics: TensorBoard scalars in named namespaces and a concise console line.

Per-step values stay on the training device and are summed there; the host reads them once per
logging interval (one sync, one all-reduce across ranks), so logging never adds a sync to ordinary
steps. A metric on another device is refused where it is added: stacked with the others it would
fail on a GPU, and NCCL cannot all-reduce a CPU tensor.
Namespaces: `loss/`, `optim/`, `time/`, `memory/`, `data/`, `mask/`, `repr/`, `guard/`.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist

log = logging.getLogger("jepa.train")


class MetricLogger:
    """Accumulates step metrics between logging points; rank 0 writes them."""

    def __init__(self, *, tb_dir: Path | None, device: torch.device, total_steps: int, samples_per_step: int,
                 tokens_per_sample: int, is_main: bool, peak_flops: float | None = None):
        """`peak_flops`: one device's peak FLOP/s, for `time/mfu` (None: `time/tflops` only)."""
        self.device = device
        self.peak_flops = peak_flops
        self.total_steps = total_steps
        self.samples_per_step = samples_per_step
        self.tokens_per_sample = tokens_per_sample
        self.is_main = is_main
        self.writer = None
        if is_main and tb_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(tb_dir))
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = defaultdict(int)
        self._data_wait = 0.0
        self._flops = 0.0
        self._steps = 0
        self._t_last = time.perf_counter()
        self._t_start = self._t_last
        self._steps_total = 0

    def add_text(self, tag: str, text: str) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, f"```\n{text}\n```", 0)

    def accumulate(self, metrics: dict[str, torch.Tensor]) -> None:
        """Add one micro-batch's metrics (tensors on the training device; summed without a host sync)."""
        for key, value in metrics.items():
            if value.device != self.device:
                raise ValueError(f"metric {key} is on {value.device}, the training device is {self.device}: "
                                 f"create it with device=")
            value = value.detach().float()
            self._sums[key] = self._sums[key] + value if key in self._sums else value.clone()
            self._counts[key] += 1

    def add_data_wait(self, wait_s: float) -> None:
        self._data_wait += wait_s

    def add_flops(self, flops: float) -> None:
        """FLOPs of one micro-batch on this rank (counted on the host from shapes: no sync)."""
        self._flops += flops

    def end_step(self) -> None:
        self._steps += 1
        self._steps_total += 1

    def write(self, step: int, scalars: dict[str, float], skipped: dict[str, int]) -> dict[str, float]:
        """Reduce the interval's metrics across ranks and write them with `scalars` and this rank's
        skip totals `skipped` (summed over ranks); returns what was written."""
        keys = sorted(self._sums)
        means = [self._sums[k] / self._counts[k] for k in keys]
        # This rank's FLOPs ride along in the one all-reduce: time/tflops is the mean over ranks.
        flat = torch.stack([*means, torch.tensor(self._flops, device=self.device)])
        totals: dict[str, float] = dict(skipped)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Every rank logs the same metric keys (same code path), so a flat all-reduce lines
            # up; skip kinds may differ between ranks and are summed as dicts.
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            totals = _all_reduce_counts(skipped)
        *host, flops = flat.tolist()  # the one host sync of the interval
        values = dict(zip(keys, host))
        now = time.perf_counter()
        elapsed = max(now - self._t_last, 1e-9)
        samples = self._steps * self.samples_per_step
        values.update(scalars)
        values.update({
            "time/step_s": elapsed / max(self._steps, 1),
            "time/samples_per_s": samples / elapsed,
            "time/tokens_per_s": samples * self.tokens_per_sample / elapsed,
            "time/data_wait_frac": min(self._data_wait / elapsed, 1.0),
            "memory/peak_gb": peak_memory_gb(self.device),
        })
        if flops:
            values["time/tflops"] = flops / elapsed / 1e12  # per device
            if self.peak_flops:
                values["time/mfu"] = flops / elapsed / self.peak_flops
        for kind, n in sorted(totals.items()):
            values[f"data/skipped_{kind}"] = n
        if self.is_main:
            if self.writer is not None:
                for key, value in values.items():
                    self.writer.add_scalar(key, value, step)
                self.writer.flush()
            log.info(self._console_line(step, values, now))
        self._sums.clear()
        self._counts.clear()
        self._data_wait = 0.0
        self._flops = 0.0
        self._steps = 0
        self._t_last = now
        return values

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        """Values computed outside the step (e.g. the online kNN) as they are, at `step` (rank 0)."""
        if not self.is_main:
            return
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, step)
            self.writer.flush()
        log.info("step %d %s", step, " ".join(f"{k}={v:.4f}" for k, v in sorted(scalars.items())))

    def _console_line(self, step: int, v: dict[str, float], now: float) -> str:
        rate = self._steps_total / max(now - self._t_start, 1e-9)
        eta = (self.total_steps - step) / rate if rate > 0 else float("inf")
        levels = " ".join(f"{k.split('/')[1]}={v[k]:.4f}" for k in sorted(v) if k.startswith("loss/level"))
        return (f"step {step}/{self.total_steps} loss={v.get('loss/total', float('nan')):.4f} {levels} "
                f"lr={v.get('optim/lr', 0):.2e} gnorm={v.get('optim/grad_norm', float('nan')):.3f} "
                f"{v['time/samples_per_s']:.1f} samples/s {_fmt_flops(v)}"
                f"data_wait={100 * v['time/data_wait_frac']:.0f}% "
                f"mem={v['memory/peak_gb']:.2f}GB eta={_fmt_duration(eta)}").replace("  ", " ")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _all_reduce_counts(counts: dict[str, int]) -> dict[str, float]:
    """Sum a {kind: count} dict over ranks whose kinds may differ (one object gather, at log time)."""
    gathered: list[dict[str, int]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, dict(counts))
    total: dict[str, float] = defaultdict(float)
    for part in gathered:
        for kind, n in part.items():
            total[kind] += n
    return dict(total)


def peak_memory_gb(device: torch.device) -> float:
    """Peak accelerator memory on CUDA, else the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss_kb / 2**20 if sys.platform != "darwin" else rss_kb / 2**30


def _fmt_flops(v: dict[str, float]) -> str:
    if "time/tflops" not in v:
        return ""
    mfu = f" mfu={100 * v['time/mfu']:.1f}%" if "time/mfu" in v else ""
    return f"tflops={v['time/tflops']:.3g}{mfu} "


def _fmt_duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
