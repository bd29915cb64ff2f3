"""Seeds derived from tuples of ints (seed, rank, worker, step, ...): one rule for every random stream;
and the process-wide random state (python, numpy, torch) that checkpoints save per rank.

A hash rather than arithmetic: seed + rank would give (seed=1, rank=0) the stream of (seed=0,
rank=1). `purpose` keeps streams that share parts (masks and data order of the same batch) apart.
The value is the same in every process and Python version.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch


def derive_seed(*parts: object, purpose: str) -> int:
    """A 64-bit seed from `parts` and `purpose` (at most 16 bytes, e.g. "jepa-mask")."""
    key = purpose.encode()
    if len(key) > 16:
        raise ValueError(f"purpose {purpose!r} is longer than 16 bytes")
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8, person=key)
    return int.from_bytes(digest.digest(), "little")


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
