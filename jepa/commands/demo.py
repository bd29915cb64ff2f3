"""`jepa demo`: synthetic image shards (once), tiny H-JEPA pretraining, then probes of the pretrained
encoder and of a random init side by side: the number that says whether pretraining learned."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEMO_CONFIG = "small/demo"
DEMO_DATA = Path("data/synth-image")
PROBE_DATA = {"train": (1024, 1), "val": (512, 2)}
"""Labelled probe sets: (images, seed), drawn apart from the pretraining images (seed 0). Their 4
classes are 4 of the 8 shapes the pretraining images show (colour, size, rotation, position random)."""


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="synthetic images -> tiny H-JEPA pretraining -> probe vs random init",
                          description=f"Write synthetic image datasets under {DEMO_DATA.parent}/ (once), "
                                      f"pretrain configs/{DEMO_CONFIG}.yaml on them, probe the pretrained "
                                      f"encoder and a random init of it (linear and kNN) on held-out labelled "
                                      f"images, and say where the TensorBoard logs are.")
    demo.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of the demo config")
    demo.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    import torch

    from jepa import config
    from jepa.data.write import write_synthetic
    from jepa.eval import report
    from jepa.eval.encoder import load_encoder, random_like
    from jepa.eval.probe import probe_encoder
    from jepa.train.loop import train

    cfg = config.load(DEMO_CONFIG, args.overrides)
    sets = {"pretrain": (DEMO_DATA, 2048, 0, 8), **{k: (Path(f"{DEMO_DATA}-probe-{k}"), n, s, 4)
                                                  for k, (n, s) in PROBE_DATA.items()}}
    for name, (folder, n, seed, classes) in sets.items():
        if not (folder / "manifest.json").exists():
            print(f"writing {n} synthetic images to {folder}/ ({name}) ...")
            write_synthetic(folder, kind="image", n=n, classes=classes, size=64, frames=1, seed=seed, shard_size=512)
    last = train(cfg)
    out = Path(cfg.output_dir).resolve()
    shards = {k: f"{sets[k][0]}/shard-{{000000..{sets[k][1] // 512 - 1:06d}}}.tar" for k in PROBE_DATA}
    pretrained = load_encoder(out)
    encoders = {"pretrained": pretrained, "random_init": random_like(pretrained, seed=cfg.probe.seed)}
    results = {"encoders": {name: probe_encoder(enc, cfg=pretrained.cfg, train_urls=shards["train"],
                                                val_urls=shards["val"], kinds=("linear", "knn"),
                                                device=torch.device("cpu"), progress=False)
                            for name, enc in encoders.items()}}
    report.write_json(results, out / "probe" / "results.json")
    gain = results["encoders"]["pretrained"]["linear"]["val_top1"] - results["encoders"]["random_init"]["linear"]["val_top1"]
    print(f"\ndone: loss {last.get('loss/total', float('nan')):.4f} after {cfg.optim.total_steps} steps.\n"
          f"probe on held-out labelled images (4 classes, chance 25%), chosen on held-out train data:\n"
          f"{report.table(results)}\n"
          f"linear gain of pretraining over random init: {100 * gain:+.1f} points\n"
          f"run folder:  {out}\n"
          f"TensorBoard: {sys.executable.rsplit('/', 1)[0]}/tensorboard --logdir {out / 'tb'}  "
          f"(then open http://localhost:6006)")
    return 0
