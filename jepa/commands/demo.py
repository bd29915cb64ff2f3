"""`jepa demo [--video]`: synthetic labelled data (once), tiny JEPA pretraining, then probes of the
pretrained encoder and of a random init side by side: the number that says whether pretraining learned.

Images: stripes whose colours change patch by patch (`jepa.data.synthetic.render_stripes`): the
orientation is the one thing all regions of an image share, so it is what predicting hidden regions
from visible ones has to learn, and the probe asks for it (4 orientations).

Videos (`--video`): a colour mosaic sliding across the frame (`render_flow`); the probe asks for the
direction of motion (4 directions), which no single frame shows and every region of a clip shares.
A third column probes the pretrained encoder on the same clips with their frames shuffled: what it
loses there is what it reads from the order of the frames.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from jepa.errors import UserError


@dataclass(frozen=True)
class DemoData:
    """What one demo pretrains on and probes with."""

    config: str
    """The recipe under configs/."""
    kind: str
    """image or video."""
    folder: str
    """Folder name of the pretraining set under --data; the probe sets add -probe-train / -probe-val."""
    task: str
    """write_synthetic's task (jepa.data.synthetic.TASKS)."""
    source: str
    """How write_synthetic names the data in its manifest (`synthetic stripes`, `synthetic flow`)."""
    pretrain: tuple[int, int, int]
    """(samples, seed, classes) of the pretraining set; its labels are never used."""
    probe: tuple[int, int, int]
    """(training samples, train seed, val seed) of the labelled probe sets; half as many val samples."""
    frames: int
    """Frames per written video (1 for images)."""
    question: str
    """What the probe asks, for the report."""


IMAGE = DemoData(config="small/demo", kind="image", folder="synth-stripes", task="stripes",
                 source="synthetic stripes", pretrain=(4096, 0, 16), probe=(1024, 1, 2), frames=1,
                 question="4 stripe orientations, chance 25%")
"""16 jittered orientations cover 180 degrees; the probe's 4 classes are stripes near 0, 45, 90 and 135
degrees (period, phase and colours random)."""
VIDEO = DemoData(config="small/demo_video", kind="video", folder="synth-flow", task="flow",
                 source="synthetic flow", pretrain=(1024, 0, 16), probe=(512, 1, 2), frames=16,
                 question="4 directions of motion, chance 25%")
"""16 jittered directions cover the circle; the probe's 4 classes are directions 90 degrees apart."""
CLASSES = 4


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="synthetic data -> tiny JEPA pretraining -> probe vs random init",
                          description=f"Write synthetic labelled data under --data (once), pretrain "
                                      f"configs/{IMAGE.config}.yaml on it (configs/{VIDEO.config}.yaml with "
                                      f"--video), probe the pretrained encoder and a random init of it (linear "
                                      f"and kNN) on held-out labelled samples, and say where the TensorBoard "
                                      f"logs are.")
    demo.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides of the demo config")
    demo.add_argument("--video", action="store_true",
                      help="the video demo: sliding mosaics, 3D RoPE, a probe of the direction of motion and "
                           "a frame-shuffled column")
    demo.add_argument("--data", default="data", metavar="DIR",
                      help="where the synthetic shards go: DIR/synth-stripes{,-probe-train,-probe-val}, or "
                           "DIR/synth-flow{...} with --video (default data)")
    demo.add_argument("--samples", type=int, metavar="N",
                      help=f"pretraining samples (default {IMAGE.pretrain[0]} images, {VIDEO.pretrain[0]} videos)")
    demo.add_argument("--probe-samples", type=int, metavar="N",
                      help=f"labelled samples the probes train on; half as many are held out for the report "
                           f"(default {IMAGE.probe[0]} images, {VIDEO.probe[0]} videos)")
    demo.set_defaults(func=_demo)


def demo_sets(data: DemoData, root: Path, *, samples: int, probe_samples: int) -> dict[str, tuple[Path, int, int, int]]:
    """name -> (folder, samples, seed, classes) of a demo's three datasets."""
    _, seed, classes = data.pretrain
    _, train_seed, val_seed = data.probe
    return {"pretrain": (root / data.folder, samples, seed, classes),
            "train": (root / f"{data.folder}-probe-train", probe_samples, train_seed, CLASSES),
            "val": (root / f"{data.folder}-probe-val", max(probe_samples // 2, 4), val_seed, CLASSES)}


def ensure_written(data: DemoData, folder: Path, *, n: int, seed: int, classes: int) -> str:
    """Write the set unless the folder already holds exactly it; returns its shard URL pattern."""
    from jepa.data.write import write_synthetic

    manifest = folder / "manifest.json"
    if not manifest.exists():
        print(f"writing {n} synthetic {data.kind}s to {folder}/ ...")
        write_synthetic(folder, kind=data.kind, task=data.task, n=n, classes=classes, size=64, frames=data.frames,
                        seed=seed, shard_size=512 if data.kind == "image" else 256)
    written = json.loads(manifest.read_text())
    source = f"{data.source} seed={seed}"
    if written["samples"] != n or written["source"] != source:
        raise UserError(f"{folder} holds {written['samples']} samples of {written['source']!r}, not the {n} "
                        f"samples of {source!r} this demo needs: delete the folder or pass another --data")
    return written["urls"]


def _demo(args: argparse.Namespace) -> int:
    import torch

    from jepa import config
    from jepa.eval import report
    from jepa.eval.encoder import load_encoder, random_like
    from jepa.eval.probe import probe_encoder
    from jepa.train.loop import train

    data = VIDEO if args.video else IMAGE
    samples = args.samples or data.pretrain[0]
    probe_samples = args.probe_samples or data.probe[0]
    if samples < 64 or probe_samples < 8:
        raise UserError(f"--samples {samples} / --probe-samples {probe_samples}: use at least 64 / 8")
    urls = {name: ensure_written(data, folder, n=n, seed=seed, classes=classes)
            for name, (folder, n, seed, classes) in
            demo_sets(data, Path(args.data), samples=samples, probe_samples=probe_samples).items()}
    cfg = config.load(data.config, [f"data.sources=[{{urls: '{urls['pretrain']}', kind: {data.kind}}}]",
                                    f"data.samples_per_epoch={samples}", *args.overrides])
    last = train(cfg)
    out = Path(cfg.output_dir).resolve()
    pretrained = load_encoder(out)
    runs = {"pretrained": (pretrained, False), "random_init": (random_like(pretrained, seed=cfg.probe.seed), False)}
    if args.video:
        runs["pretrained_frames_shuffled"] = (pretrained, True)
    results = {"encoders": {name: probe_encoder(enc, cfg=pretrained.cfg, train_urls=urls["train"],
                                                val_urls=urls["val"], kinds=("linear", "knn"),
                                                device=torch.device("cpu"), progress=False, shuffle_frames=shuffle)
                            for name, (enc, shuffle) in runs.items()}}
    report.write_json(results, out / "probe" / "results.json")
    top1 = {name: r["linear"]["val_top1"] for name, r in results["encoders"].items()}
    gain = top1["pretrained"] - top1["random_init"]
    lines = [f"linear gain of pretraining over random init: {100 * gain:+.1f} points"]
    if args.video:
        lines.append(f"linear loss of the pretrained encoder when the frames are shuffled: "
                     f"{100 * (top1['pretrained'] - top1['pretrained_frames_shuffled']):+.1f} points")
    print(f"\ndone: loss {last.get('loss/total', float('nan')):.4f} after {cfg.optim.total_steps} steps.\n"
          f"probe on held-out labelled {data.kind}s ({data.question}), chosen on held-out train data:\n"
          f"{report.table(results)}\n" + "\n".join(lines) + "\n"
          f"run folder:  {out}\n"
          f"TensorBoard: {sys.executable.rsplit('/', 1)[0]}/tensorboard --logdir {out / 'tb'}  "
          f"(then open http://localhost:6006)")
    return 0
