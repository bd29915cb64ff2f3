"""`jepa train CONFIG [key=value ...]`: pretrain, or resume from output_dir when it holds a checkpoint.

One process, or one rank of many under torchrun / srun (the same command line).
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="pretrain (resumes from output_dir when it holds a checkpoint)",
                       description="Pretrain a JEPA model. Run as is for one process, or under "
                                   "torchrun/srun for one rank of many.")
    p.add_argument("config", help="YAML config file (path, or a name under configs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=3e-4")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from jepa import config
    from jepa.train.loop import train

    train(config.load(args.config, args.overrides))
    return 0
