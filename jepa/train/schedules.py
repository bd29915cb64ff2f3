"""Learning rate, weight decay and EMA momentum as pure functions of the global optimizer step.

Every value depends on the step and the config alone (no state, no generators), so a resumed run
asks for `lr(step)` at its restored step and gets exactly what an uninterrupted run would have
used: nothing is fast-forwarded. Past `total_steps` every schedule stays at its final value.

    lr:        linear warmup start_lr -> lr over warmup_steps, then cosine lr -> final_lr at total_steps
    wd:        cosine ramp weight_decay -> final_weight_decay over total_steps
    momentum:  linear ramp momentum -> final_momentum over total_steps
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from jepa.config import Config


def _check_step(step: int) -> None:
    if step < 0:
        raise ValueError(f"schedules are defined for optimizer steps >= 0, got step={step}")


def _progress(step: int, start: int, end: int) -> float:
    """Fraction of the way from `start` to `end` at `step`, clamped to [0, 1]."""
    if end <= start:
        return 1.0
    return min(max((step - start) / (end - start), 0.0), 1.0)


def _cosine(begin: float, end: float, t: float) -> float:
    """Half-cosine from `begin` (t=0) to `end` (t=1)."""
    return end + 0.5 * (begin - end) * (1.0 + math.cos(math.pi * t))


def warmup_cosine(step: int, *, start: float, peak: float, final: float, warmup_steps: int,
                  total_steps: int) -> float:
    """Linear start -> peak over [0, warmup_steps], cosine peak -> final over [warmup_steps, total_steps]."""
    _check_step(step)
    if step >= total_steps:
        return final
    if step < warmup_steps:
        return start + (peak - start) * step / warmup_steps
    return _cosine(peak, final, _progress(step, warmup_steps, total_steps))


def cosine_ramp(step: int, *, begin: float, end: float, total_steps: int) -> float:
    """Cosine from `begin` at step 0 to `end` at total_steps (and after)."""
    _check_step(step)
    return _cosine(begin, end, _progress(step, 0, total_steps))


def linear_ramp(step: int, *, begin: float, end: float, total_steps: int) -> float:
    """Straight line from `begin` at step 0 to `end` at total_steps (and after)."""
    _check_step(step)
    return begin + (end - begin) * _progress(step, 0, total_steps)


@dataclass(frozen=True)
class Schedules:
    """The three schedules of a run, read from its config; each method is a pure function of step."""

    total_steps: int
    warmup_steps: int
    start_lr: float
    peak_lr: float
    final_lr: float
    weight_decay: float
    final_weight_decay: float
    momentum: float
    final_momentum: float

    @classmethod
    def from_config(cls, cfg: Config) -> Schedules:
        o, e = cfg.optim, cfg.ema
        return cls(total_steps=o.total_steps, warmup_steps=o.warmup_steps, start_lr=o.start_lr,
                   peak_lr=o.lr, final_lr=o.final_lr, weight_decay=o.weight_decay,
                   final_weight_decay=o.final_weight_decay, momentum=e.momentum,
                   final_momentum=e.final_momentum)

    def lr(self, step: int) -> float:
        return warmup_cosine(step, start=self.start_lr, peak=self.peak_lr, final=self.final_lr,
                             warmup_steps=self.warmup_steps, total_steps=self.total_steps)

    def wd(self, step: int) -> float:
        return cosine_ramp(step, begin=self.weight_decay, end=self.final_weight_decay,
                           total_steps=self.total_steps)

    def ema_momentum(self, step: int) -> float:
        return linear_ramp(step, begin=self.momentum, end=self.final_momentum,
                           total_steps=self.total_steps)
