"""`jepa probe RUN|WEIGHTS --train SHARDS --val SHARDS`: probes of a frozen encoder on labelled shards.

One process, or one rank of many under torchrun / srun: features are extracted on every rank, the
probes run on rank 0.
"""

from __future__ import annotations

import argparse
from pathlib import Path

KINDS = ("linear", "knn", "attentive")
SHUFFLED = "pretrained_frames_shuffled"
"""The column of the pretrained encoder probed on frame-shuffled clips (--shuffle-frames)."""


def _kinds(text: str) -> tuple[str, ...]:
    if text == "all":
        return KINDS
    kinds = tuple(dict.fromkeys(text.split(",")))
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown probe {', '.join(unknown)}: choose from {', '.join(KINDS)} or all")
    return kinds


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="linear, kNN and attentive probes of a run or an exported encoder",
                       description="Probe a frozen encoder on labelled shards: the setting of each probe (lr and "
                                   "weight decay, or k) is chosen on a held-out part of --train, then reported on "
                                   "--val. Writes results.json, a PNG of the linear grid and TensorBoard scalars.")
    p.add_argument("source", help="run folder (its latest checkpoint) or an exported .safetensors encoder")
    p.add_argument("--train", required=True, metavar="SHARDS", help="labelled shards the probes train on")
    p.add_argument("--val", required=True, metavar="SHARDS", help="labelled shards the probes are reported on")
    p.add_argument("--kind", type=_kinds, default=KINDS, metavar="KIND[,KIND]",
                   help=f"which probes: {', '.join(KINDS)}, a comma-separated list, or all (default: all)")
    p.add_argument("--encoder", choices=("ema", "context"), default="ema",
                   help="a run folder's EMA target encoder (default; what `jepa export` writes) or its online "
                        "context encoder")
    p.add_argument("--baseline", action="store_true",
                   help="also probe a randomly initialised encoder of the same architecture, side by side")
    p.add_argument("--shuffle-frames", action="store_true",
                   help="video encoders: also probe the pretrained encoder on the same clips with their frames "
                        "shuffled (a fixed random order per clip), side by side; on a label that needs motion the "
                        "gap is what the encoder reads from the order of the frames")
    p.add_argument("--out", metavar="DIR", help="output folder (default: RUN/probe, or WEIGHTS-probe/ beside a file)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides of the probe and data sections, e.g. probe.linear_epochs=50")
    p.set_defaults(func=_probe)


def _probe(args: argparse.Namespace) -> int:
    import torch

    from jepa.config import with_overrides
    from jepa.errors import UserError
    from jepa.eval import report
    from jepa.eval.encoder import load_encoder, random_like
    from jepa.eval.probe import probe_encoder
    from jepa.train.distributed import init_distributed, shutdown

    if any(o.split("=", 1)[0].split(".")[0] in ("model", "hierarchy", "mask") for o in args.overrides):
        raise UserError("the encoder's architecture comes from its checkpoint: override only probe.* and data.* keys")
    source = Path(args.source)
    dist = init_distributed()
    try:
        encoder = load_encoder(source, which=args.encoder)
        cfg = with_overrides(encoder.cfg, args.overrides, origin=str(source))
        kinds = args.kind
        encoders = {"pretrained": encoder}
        if args.baseline:
            encoders["random_init"] = random_like(encoder, seed=cfg.probe.seed)
        runs = [(name, enc, False) for name, enc in encoders.items()]
        if args.shuffle_frames:
            runs.append((SHUFFLED, encoder, True))
        results = {name: probe_encoder(enc, cfg=cfg, train_urls=args.train, val_urls=args.val, kinds=kinds,
                                       device=dist.device, progress=dist.is_main, shuffle_frames=shuffle)
                   for name, enc, shuffle in runs}
    finally:
        shutdown()
    if not dist.is_main:
        return 0
    out = Path(args.out) if args.out else (source / "probe" if source.is_dir() else
                                           source.with_name(source.stem + "-probe"))
    summary = {"source": encoder.source, "train": args.train, "val": args.val,
               "world_size": dist.world_size, "device": str(dist.device), "torch": torch.__version__,
               "encoders": results, "baselines": {n: {**e.source, **({"frames": "shuffled"} if shuffle else {})}
                             for n, e, shuffle in runs if n != "pretrained"}}
    report.write_json(summary, out / "results.json")
    if "linear" in kinds:
        report.grid_png(results["pretrained"]["linear"]["heads"], out / "linear_grid.png",
                        title=f"linear probe of {source.name} (step {encoder.source['step']})")
    tb_dir = source / "tb" if source.is_dir() else out / "tb"
    report.write_tensorboard(summary, tb_dir, step=max(encoder.source["step"], 0))
    print(report.table(summary))
    print(f"\nwrote {out / 'results.json'}; TensorBoard: {tb_dir}")
    return 0
