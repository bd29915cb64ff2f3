"""Attentive probe on frozen token features (V-JEPA's attentive classifier).

A learnable query token attends over a sample's T tokens (image patches or video tubelets) in one
cross-attention block (pre-LN on the tokens, an MLP with residual), and the pooled token goes
through LayerNorm and a linear classifier. Unlike mean pooling it can single out the tokens that
matter, so it reads information that averaging over tokens destroys.

One probe per lr, trained one after the other with AdamW, as V-JEPA does: the probe is a small
non-convex network (attention, MLP), where Adam's per-coordinate step sizes are the safe default;
cosine lr to 0; weight decay on matrices and the query only. As with the linear probe, the probe is
chosen on a held-out part of train and only then evaluated on val (V-JEPA picks it on val).
Everything runs in float32: V-JEPA's probe autocasts to float16 under a flag named bfloat16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from jepa.eval.holdout import (ProbeResult, check_labels, head_results, holdout_split, minibatches,
                               top5_k, topk_hits)
from jepa.seeding import derive_seed

INIT_STD = 0.02


class CrossAttentionBlock(nn.Module):
    """Queries (B, Q, D) attend to tokens (B, T, D); then an MLP; both with residuals."""

    def __init__(self, *, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"feature dim {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm_tokens = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, queries: Tensor, tokens: Tensor) -> Tensor:
        head_dim = tokens.shape[-1] // self.num_heads
        # The learned queries are not normalised (as in V-JEPA); the frozen tokens are (pre-LN).
        q = self.q(queries).unflatten(-1, (self.num_heads, head_dim)).transpose(1, 2)  # (B, h, Q, d)
        kv = self.kv(self.norm_tokens(tokens)).unflatten(-1, (2, self.num_heads, head_dim))
        k, v = kv.permute(2, 0, 3, 1, 4)  # each (B, h, T, d)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)  # (B, Q, D)
        x = queries + self.proj(attended)
        return x + self.mlp(self.norm_mlp(x))


class AttentiveClassifier(nn.Module):
    """Tokens (B, T, D) -> logits (B, C) through one learned query."""

    def __init__(self, *, dim: int, num_classes: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.block = CrossAttentionBlock(dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    @torch.no_grad()
    def reset_parameters(self, *, generator: torch.Generator) -> None:
        """V-JEPA's init (truncated normal 0.02, zero biases, LayerNorm 1/0), drawn from `generator`."""
        nn.init.trunc_normal_(self.query, std=INIT_STD, generator=generator)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=INIT_STD, generator=generator)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        pooled = self.block(self.query.expand(len(tokens), -1, -1), tokens)[:, 0]
        return self.head(self.norm(pooled))


@dataclass(frozen=True)
class AttentiveProbeResult(ProbeResult):
    """ProbeResult of the attentive probes (one head per lr, all with the same weight decay)."""

    epochs: int
    batch_size: int
    num_heads: int


def train_attentive(tokens: Tensor, y: Tensor, *, num_classes: int, lr: float, weight_decay: float,
                    epochs: int, batch_size: int, num_heads: int, mlp_ratio: float,
                    seed: int) -> AttentiveClassifier:
    """One attentive probe trained on (tokens, y) with AdamW on tokens' device.

    Initial weights and batch order depend on `seed` only, so probes that differ in lr start from
    the same weights and see the same batches.
    """
    device, (n, _, dim) = tokens.device, tokens.shape
    model = AttentiveClassifier(dim=dim, num_classes=num_classes, num_heads=num_heads, mlp_ratio=mlp_ratio)
    model.reset_parameters(generator=torch.Generator().manual_seed(derive_seed(seed, purpose="probe-init")))
    model.to(device).train()
    decay = [p for p in model.parameters() if p.ndim >= 2]  # matrices and the query, not biases/norms
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    for batch, factor in minibatches(n, batch_size=batch_size, epochs=epochs, seed=seed, device=device):
        for group in optimizer.param_groups:
            group["lr"] = lr * factor
        # Tokens may be stored in bf16 to save memory; the probe computes in float32.
        loss = F.cross_entropy(model(tokens[batch].float()), y[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def score_attentive(model: AttentiveClassifier, tokens: Tensor, y: Tensor, *, k: int,
                    batch_size: int) -> Tensor:
    """(2,) counts of top-1 and top-k hits, batch_size samples at a time."""
    hits = torch.zeros(2, dtype=torch.int64, device=tokens.device)
    for start in range(0, len(tokens), batch_size):
        logits = model(tokens[start:start + batch_size].float())
        hits += topk_hits(logits, y[start:start + batch_size], k=k)
    return hits


def attentive_probe(train_tokens: Tensor, train_y: Tensor, val_tokens: Tensor, val_y: Tensor, *,
                    num_classes: int, lrs: Sequence[float], epochs: int, batch_size: int,
                    holdout_fraction: float, seed: int, weight_decay: float = 0.01, num_heads: int = 16,
                    mlp_ratio: float = 4.0) -> AttentiveProbeResult:
    """Train an attentive probe per lr on part of train, choose one on the rest, report val.

    train_tokens (N, T, D) and val_tokens (M, T, D) are frozen token features (any float dtype),
    train_y / val_y int64 class indices; everything runs on train_tokens' device. The defaults
    (weight decay 0.01, 16 heads, MLP ratio 4) are V-JEPA's; D must be divisible by num_heads.
    Tokens are not standardised: the block's LayerNorm already normalises every token.
    Top-5 is top-min(5, num_classes).
    """
    check_labels(train_y, num_classes=num_classes, name="train_y")
    check_labels(val_y, num_classes=num_classes, name="val_y")
    device = train_tokens.device
    train_y, val_tokens, val_y = train_y.to(device), val_tokens.to(device), val_y.to(device)
    fit_idx, hold_idx = holdout_split(train_y, fraction=holdout_fraction, seed=seed)
    fit_tokens, fit_y = train_tokens[fit_idx], train_y[fit_idx]
    hold_tokens, hold_y = train_tokens[hold_idx], train_y[hold_idx]
    k = top5_k(num_classes)
    hold_hits, val_hits = [], []
    for lr in lrs:
        model = train_attentive(fit_tokens, fit_y, num_classes=num_classes, lr=lr, weight_decay=weight_decay,
                                epochs=epochs, batch_size=batch_size, num_heads=num_heads,
                                mlp_ratio=mlp_ratio, seed=seed)
        hold_hits.append(score_attentive(model, hold_tokens, hold_y, k=k, batch_size=batch_size))
        val_hits.append(score_attentive(model, val_tokens, val_y, k=k, batch_size=batch_size))
    heads, chosen = head_results(settings=[(lr, weight_decay) for lr in lrs],
                                 holdout_hits=torch.stack(hold_hits), num_holdout=len(hold_idx),
                                 val_hits=torch.stack(val_hits), num_val=len(val_y))
    return AttentiveProbeResult(heads=heads, chosen=chosen, top5_k=k, num_train=len(fit_idx),
                                num_holdout=len(hold_idx), num_val=len(val_y), epochs=epochs,
                                batch_size=batch_size, num_heads=num_heads)
