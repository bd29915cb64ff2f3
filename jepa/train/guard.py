"""Loss-spike guard: drop a micro-batch whose loss is far above the recent ones.

The decision needs the loss on the host (one sync per micro-batch) and must be the same on every
rank (the backward is collective), so the loss is averaged over ranks first. Enable it only when
spikes are a problem; it is off by default.
"""

from __future__ import annotations

import math
from collections import deque

import torch
import torch.distributed as dist


class LossSpikeGuard:
    """Flags a loss above mean + k * std of the last `window` accepted losses."""

    def __init__(self, *, window: int, k: float, min_history: int = 10):
        self.k = k
        self.min_history = min(min_history, window)
        self.history: deque[float] = deque(maxlen=window)
        self.skipped = 0

    def is_spike(self, loss: torch.Tensor) -> bool:
        """True: skip this micro-batch (counted). False: the loss joins the history."""
        value = loss.detach().float().clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(value)
            value /= dist.get_world_size()
        x = float(value)
        if not math.isfinite(x):
            self.skipped += 1
            return True
        if len(self.history) >= self.min_history:
            mean = sum(self.history) / len(self.history)
            std = math.sqrt(sum((h - mean) ** 2 for h in self.history) / len(self.history))
            if x > mean + self.k * std:
                self.skipped += 1
                return True
        self.history.append(x)
        return False

    def state_dict(self) -> dict:
        return {"history": list(self.history), "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        """Continue with a saved history (the decisions after a resume are the uninterrupted run's)."""
        self.history.clear()
        self.history.extend(state["history"])
        self.skipped = state["skipped"]
