"""The evaluation sections of the experiment config: `probe` (what `jepa probe` does) and `eval`
(the online kNN during pretraining). A docstring under every field, as in `schema`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List


@dataclass
class ProbeConfig:
    batch_size: int = 64
    """Samples per batch when extracting features (per rank)."""
    n_last_blocks: int = 1
    """Features for the linear probe and kNN: the token means of the last n blocks, concatenated
    (1 = the mean of the encoder's output tokens)."""
    holdout_fraction: float = 0.2
    """Part of the training features held out (stratified, seeded) to choose each probe's setting
    (lr and weight decay, or k); val is looked at only after the choice."""
    seed: int = 0
    """Seed of the held-out split, the batch order and the random-init baseline."""
    linear_lrs: List[float] = field(default_factory=lambda: [0.001, 0.01, 0.03, 0.1, 0.3, 1.0])
    """Learning rates of the linear heads (SGD, momentum 0.9, scaled by batch / 256; features
    standardised first), one head per (lr, weight decay)."""
    linear_weight_decays: List[float] = field(default_factory=lambda: [0.0, 0.0001, 0.001])
    """Weight decays of the linear heads."""
    linear_epochs: int = 30
    """Epochs over the training features (cosine schedule to 0)."""
    linear_batch_size: int = 256
    """Linear-probe batch size."""
    knn_k: List[int] = field(default_factory=lambda: [10, 20, 100, 200])
    """Neighbour counts tried by the kNN probe (capped at the number of training samples)."""
    knn_temperature: float = 0.07
    """Temperature of the kNN votes: each neighbour votes exp(cosine similarity / T)."""
    attentive_lrs: List[float] = field(default_factory=lambda: [0.0001, 0.001])
    """Learning rates of the attentive probe (AdamW, cosine), one probe per lr."""
    attentive_epochs: int = 20
    """Epochs of the attentive probe."""
    attentive_batch_size: int = 64
    """Attentive-probe batch size."""
    cache_dir: str = ""
    """Folder for extracted features, keyed by encoder weights, shards and geometry, so that several
    probes reuse one extraction; empty = no cache."""
    bf16: bool = True
    """Extract features under bf16 autocast on CUDA (ignored on CPU)."""


@dataclass
class EvalConfig:
    every_steps: int = 0
    """Online kNN every this many optimizer steps, with the EMA target encoder: the labelled shards of
    `eval.bank_urls` are the memory, those of `data.val_urls` the queries; logged as
    `eval/knn_top1`. 0 = off."""
    bank_urls: str = ""
    """Labelled shards whose features the online kNN compares against (read once per evaluation)."""
    knn_k: int = 20
    """Neighbours of the online kNN."""
    knn_temperature: float = 0.07
    """Temperature of the online kNN votes."""
