"""Regional compilation: `torch.compile` on each transformer block's forward, in place.

    compile_blocks(jepa)          # after build_jepa (the target encoder is a copy by then), before DeepSpeed

Every `EvaBlock` of the context encoder, the target encoder and the predictor gets its `forward`
replaced by a compiled one. The blocks share one code object, so Dynamo compiles one graph per
kind of call (training pass of the encoder, no-grad target pass, predictor width, ...) and every
block of that kind reuses it: compile time does not grow with depth.

Masks change the number of context and target tokens at every step, so the token axis is marked
dynamic: a new sequence length is a new value of a symbol, not a recompile (measured against
padding to fixed lengths in benchmarks/README.md). What stays fixed per graph: the batch size, the
widths, dtypes, grad mode, the layout of the RoPE table (all tokens vs gathered per sample vs per
block) and the drop-path rate (one graph per distinct rate: with `model.drop_path` > 0 the context
encoder's training pass compiles once per block).

Only `forward` is replaced, not `__call__`: module hooks (DeepSpeed ZeRO-3's parameter gathering)
run outside the compiled region, and state_dict keys stay as they were (no `_orig_mod.`), so
checkpoints, `jepa export` and probes read the same names compiled or not. Under ZeRO-3, DeepSpeed's
parameter hooks on the block's linears and norms are compiler-disabled: Dynamo breaks the graph at
each and compiles the pieces between them (correct, tested; less fused). Making the blocks ZeRO-3
leaves would remove the hooks, but DeepSpeed then reduces a block's gradients once per use, and the
per-block predictor runs its blocks once per target block: it fails.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.models.eva import EvaBlock

COMPILED_TYPES = (EvaBlock,)
"""Blocks that `compile_blocks` compiles (the ViT encoder's and the predictor's)."""


def compile_blocks(module: nn.Module, *, backend: str | object = "inductor") -> int:
    """Compile the forward of every transformer block inside `module`, in place; returns how many.

    `backend` is torch.compile's (tests pass a counting or `aot_eager` backend). Blocks that are
    already compiled are left alone, so calling it twice compiles nothing twice. Compile after any
    deep copy (the target encoder is one): a copy of a compiled block would keep calling the
    original block's forward."""
    blocks = [m for m in module.modules() if isinstance(m, COMPILED_TYPES) and not is_compiled(m)]
    for block in blocks:
        # An instance attribute shadows the class's forward; `type(block).forward` stays eager.
        block.forward = _token_dynamic(torch.compile(block.forward, backend=backend))
    # Blocks of one kind share the code object and its cache; blocks that differ in a constant
    # (drop-path rate, RoPE layout) are separate entries of that cache, so give it room for all.
    limit = 4 * len(blocks) + 8
    if torch._dynamo.config.recompile_limit < limit:
        torch._dynamo.config.recompile_limit = limit
    return len(blocks)


def _token_dynamic(compiled):
    """The compiled forward with the token axis of its input and its RoPE table marked dynamic.

    Only that axis: with every axis dynamic (`dynamic=True`), a batch of 4 and a context of 4 tokens
    at the first step share one symbol and the next step's 5 tokens recompile."""

    def forward(x: torch.Tensor, rope: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        torch._dynamo.maybe_mark_dynamic(x, 1)  # (B, tokens, C)
        if rope is not None:
            torch._dynamo.maybe_mark_dynamic(rope, rope.dim() - 2)  # (..., tokens, 2 * head_dim)
        return compiled(x, rope=rope, **kwargs)

    return forward


def is_compiled(module: nn.Module) -> bool:
    """True when `compile_blocks` replaced this module's forward."""
    return "forward" in vars(module)


def compile_wanted(setting: bool | None, *, backbone: str, device: torch.device) -> bool:
    """`model.compile` resolved: null compiles a ViT on CUDA only (on CPU the compiled step measured
    1.02-1.14x the eager one after 36-49 s of compilation; benchmarks/README.md)."""
    if setting is not None:
        return setting
    return backbone == "vit" and device.type == "cuda"
