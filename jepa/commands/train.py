"""`jepa train CONFIG [key=value ...]`: pretrain, or resume from output_dir when it holds a checkpoint.

One process, or one rank of many under torchrun / srun (the same command line). SIGUSR2 or SIGTERM
saves at the next step boundary and exits with status 75 (`jepa.train.stop.EXIT_STOPPED`), which
asks a launcher to requeue.
"""

from __future__ import annotations

import argparse
import sys


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
    from jepa.train.stop import EXIT_STOPPED, RunStopped

    try:
        train(config.load(args.config, args.overrides))
    except RunStopped as e:
        print(f"jepa: {e}", file=sys.stderr)
        return EXIT_STOPPED
    return 0
