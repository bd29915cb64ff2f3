"""`jepa demo`: write synthetic image shards (once), pretrain the tiny H-JEPA on them, say where to look."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEMO_CONFIG = "small/demo"
DEMO_DATA = Path("data/synth-image")


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="synthetic images -> a few minutes of tiny H-JEPA pretraining on CPU",
                          description=f"Write a synthetic image dataset to {DEMO_DATA}/ (once), then "
                                      f"pretrain configs/{DEMO_CONFIG}.yaml on it and say where the "
                                      f"TensorBoard logs are.")
    demo.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of the demo config")
    demo.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from jepa import config
    from jepa.data.write import write_synthetic
    from jepa.train.loop import train

    if not (DEMO_DATA / "manifest.json").exists():
        print(f"writing a synthetic image dataset to {DEMO_DATA}/ ...")
        write_synthetic(DEMO_DATA, kind="image", n=2048, classes=8, size=64, frames=1, seed=0, shard_size=512)
    cfg = config.load(DEMO_CONFIG, args.overrides)
    last = train(cfg)
    out = Path(cfg.output_dir).resolve()
    print(f"\ndone: loss {last.get('loss/total', float('nan')):.4f} after {cfg.optim.total_steps} steps.\n"
          f"run folder:  {out}\n"
          f"TensorBoard: {sys.executable.rsplit('/', 1)[0]}/tensorboard --logdir {out / 'tb'}  "
          f"(then open http://localhost:6006)")
    return 0
