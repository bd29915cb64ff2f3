"""`jepa demo`: synthetic stripe images (once), tiny H-JEPA pretraining, then probes of the pretrained
encoder and of a random init side by side: the number that says whether pretraining learned.

The images are stripes whose colours change patch by patch (`jepa.data.synthetic.render_stripes`):
the orientation is the one thing all regions of an image share, so it is what predicting hidden
regions from visible ones has to learn, and the probe asks for it (4 orientations)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jepa.errors import UserError

DEMO_CONFIG = "small/demo"
PRETRAIN = (4096, 0, 16)
"""Pretraining images: (images, seed, orientations); 16 jittered orientations cover 180 degrees."""
PROBE_DATA = {"train": (1024, 1), "val": (512, 2)}
"""Labelled probe sets: (images, seed), drawn apart from the pretraining images. 4 classes: stripes
near 0, 45, 90 and 135 degrees (period, phase and colours random)."""


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="synthetic images -> tiny H-JEPA pretraining -> probe vs random init",
                          description=f"Write synthetic stripe images under --data (once), pretrain "
                                      f"configs/{DEMO_CONFIG}.yaml on them, probe the pretrained encoder and a "
                                      f"random init of it (linear and kNN) on held-out labelled images, and say "
                                      f"where the TensorBoard logs are.")
    demo.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of the demo config")
    demo.add_argument("--data", default="data", metavar="DIR",
                      help="where the synthetic shards go: DIR/synth-stripes{,-probe-train,-probe-val} (default data)")
    demo.add_argument("--images", type=int, default=PRETRAIN[0], metavar="N",
                      help=f"pretraining images (default {PRETRAIN[0]})")
    demo.add_argument("--probe-images", type=int, default=PROBE_DATA["train"][0], metavar="N",
                      help=f"labelled images the probes train on; half as many are held out for the "
                           f"report (default {PROBE_DATA['train'][0]})")
    demo.set_defaults(func=_demo)


def demo_sets(root: Path, *, images: int, probe_images: int) -> dict[str, tuple[Path, int, int, int]]:
    """name -> (folder, images, seed, classes) of the demo's three datasets."""
    return {"pretrain": (root / "synth-stripes", images, PRETRAIN[1], PRETRAIN[2]),
            "train": (root / "synth-stripes-probe-train", probe_images, PROBE_DATA["train"][1], 4),
            "val": (root / "synth-stripes-probe-val", max(probe_images // 2, 4), PROBE_DATA["val"][1], 4)}


def ensure_written(folder: Path, *, n: int, seed: int, classes: int) -> str:
    """Write the set unless the folder already holds exactly it; returns its shard URL pattern."""
    from jepa.data.write import write_synthetic

    manifest = folder / "manifest.json"
    if not manifest.exists():
        print(f"writing {n} synthetic stripe images to {folder}/ ...")
        write_synthetic(folder, kind="image", task="stripes", n=n, classes=classes, size=64, frames=1, seed=seed,
                        shard_size=512)
    written = json.loads(manifest.read_text())
    if written["samples"] != n or written["source"] != f"synthetic stripes seed={seed}":
        raise UserError(f"{folder} holds {written['samples']} samples of {written['source']!r}, not the {n} "
                        f"samples of 'synthetic stripes seed={seed}' this demo needs: delete the folder or "
                        f"pass another --data")
    return written["urls"]


def _demo(args: argparse.Namespace) -> int:
    import torch

    from jepa import config
    from jepa.eval import report
    from jepa.eval.encoder import load_encoder, random_like
    from jepa.eval.probe import probe_encoder
    from jepa.train.loop import train

    if args.images < 64 or args.probe_images < 8:
        raise UserError(f"--images {args.images} / --probe-images {args.probe_images}: use at least 64 / 8")
    urls = {name: ensure_written(folder, n=n, seed=seed, classes=classes)
            for name, (folder, n, seed, classes) in
            demo_sets(Path(args.data), images=args.images, probe_images=args.probe_images).items()}
    cfg = config.load(DEMO_CONFIG, [f"data.sources=[{{urls: '{urls['pretrain']}', kind: image}}]",
                                    f"data.samples_per_epoch={args.images}", *args.overrides])
    last = train(cfg)
    out = Path(cfg.output_dir).resolve()
    pretrained = load_encoder(out)
    encoders = {"pretrained": pretrained, "random_init": random_like(pretrained, seed=cfg.probe.seed)}
    results = {"encoders": {name: probe_encoder(enc, cfg=pretrained.cfg, train_urls=urls["train"],
                                                val_urls=urls["val"], kinds=("linear", "knn"),
                                                device=torch.device("cpu"), progress=False)
                            for name, enc in encoders.items()}}
    report.write_json(results, out / "probe" / "results.json")
    gain = results["encoders"]["pretrained"]["linear"]["val_top1"] - results["encoders"]["random_init"]["linear"]["val_top1"]
    print(f"\ndone: loss {last.get('loss/total', float('nan')):.4f} after {cfg.optim.total_steps} steps.\n"
          f"probe on held-out labelled images (4 stripe orientations, chance 25%), chosen on held-out train data:\n"
          f"{report.table(results)}\n"
          f"linear gain of pretraining over random init: {100 * gain:+.1f} points\n"
          f"run folder:  {out}\n"
          f"TensorBoard: {sys.executable.rsplit('/', 1)[0]}/tensorboard --logdir {out / 'tb'}  "
          f"(then open http://localhost:6006)")
    return 0
