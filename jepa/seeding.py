"""Seeds derived from tuples of ints (seed, rank, worker, step, ...): one rule for every random stream.

A hash rather than arithmetic: seed + rank would give (seed=1, rank=0) the stream of (seed=0,
rank=1). `purpose` keeps streams that share parts (masks and data order of the same batch) apart.
The value is the same in every process and Python version.
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object, purpose: str) -> int:
    """A 64-bit seed from `parts` and `purpose` (at most 16 bytes, e.g. "jepa-mask")."""
    key = purpose.encode()
    if len(key) > 16:
        raise ValueError(f"purpose {purpose!r} is longer than 16 bytes")
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8, person=key)
    return int.from_bytes(digest.digest(), "little")
