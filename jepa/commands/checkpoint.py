"""`jepa checkpoint list|reshape RUN`: a run's checkpoints outside a training run.

Heavy imports (torch, deepspeed) stay inside the handlers so that `jepa --help` answers at once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jepa.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("checkpoint", help="list a run's checkpoints, reshape one for another world size",
                       description="Inspect and convert the checkpoints of a run folder.")
    verbs = p.add_subparsers(dest="checkpoint_verb", metavar="ACTION", required=True)

    ls = verbs.add_parser("list", help="complete checkpoints of a run (step, world size, ZeRO stage)",
                          description="List the complete checkpoints of RUN, oldest first.")
    ls.add_argument("run", help="run folder (the run's output_dir)")
    ls.set_defaults(func=_list)

    reshape = verbs.add_parser(
        "reshape", help="convert the latest checkpoint to DeepSpeed's universal form (any world size)",
        description="Convert RUN's latest checkpoint to DeepSpeed's universal form, next to it, so that "
                    "the run resumes on another number of ranks without converting at start-up.")
    reshape.add_argument("run", help="run folder (the run's output_dir)")
    reshape.add_argument("--workers", type=int, default=4, help="conversion processes (default 4)")
    reshape.set_defaults(func=_reshape)


def _list(args: argparse.Namespace) -> int:
    from jepa.train.checkpoint import committed_checkpoints

    infos = committed_checkpoints(Path(args.run) / "checkpoints")
    if not infos:
        raise UserError(f"{args.run}: no complete checkpoint under {Path(args.run) / 'checkpoints'}")
    print("| step | world size | ZeRO | bf16 | folder |\n|---:|---:|---:|---|---|")
    for i in infos:
        print(f"| {i.step} | {i.world_size} | {i.zero_stage} | {i.bf16} | {i.path} |")
    return 0


def _reshape(args: argparse.Namespace) -> int:
    from jepa.train.checkpoint import require_latest
    from jepa.train.universal import convert_to_universal

    info = require_latest(args.run)
    if info.zero_stage == 0:
        print(f"{info.path}: ZeRO 0 checkpoints load on any world size as they are; nothing to do")
        return 0
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    out = convert_to_universal(info.path, workers=args.workers)
    print(f"{out}: universal form of step {info.step} (saved by {info.world_size} ranks); "
          f"a resume on another world size loads it")
    return 0
