"""Does pretraining learn? Small recipes pretrained on the demo's data, probed against random init.

    OMP_NUM_THREADS=1 python benchmarks/recipes.py --settings demo,head32 --seeds 0,1,2 [--steps 1200]
    OMP_NUM_THREADS=1 python benchmarks/recipes.py --bounds          # raw pixels and supervised rows
    OMP_NUM_THREADS=1 python benchmarks/recipes.py --video --seeds 0,1,2 --steps 1500   # the video demo

Each (setting, seed): `jepa train` of the demo's config (`small/demo`, or `small/demo_video` with
--video) with the setting's overrides on the data `jepa demo` writes (under --data, written here
when missing: 4096 stripe images, or 1024 sliding-mosaic clips), then `jepa probe --baseline` on
its labelled training and validation sets (4 orientations, or 4 directions of motion; with --video
also `--shuffle-frames`). Prints one markdown row per run: linear and kNN (and attentive with
--attentive) val top-1 of the pretrained EMA encoder and of a random init of the same architecture
with the run's seed (and of the pretrained encoder on frame-shuffled clips), the linear gain, and
the minutes the pretraining took. `--bounds` gives the linear probe on raw pixels and on the same
encoder trained with labels (the supervised bound).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jepa.commands.demo import IMAGE, VIDEO

HEAD32 = ["model.predictor.embed_dim=64", "model.predictor.num_heads=2"]
EMA99 = ["ema.momentum=0.99", "ema.final_momentum=0.999"]
SETTINGS: dict[str, list[str]] = {
    "demo": [],
    "head32": HEAD32,
    "head32-ema99": HEAD32 + EMA99,
    "head32-ema99-lr3e-3": HEAD32 + EMA99 + ["optim.lr=3e-3"],
    "head32-ema99-1level": HEAD32 + EMA99 + ["hierarchy.levels=[{block: -1}]"],
    "head32-ema99-2big": HEAD32 + EMA99 + ["mask.targets=[{num_blocks: 2, spatial_scale: [0.25, 0.35]}]"],
}
"""Named override sets on top of configs/small/demo.yaml (extend with --set NAME=k=v,k=v)."""

CLASSES = 4


def write_data(root: Path, data) -> dict[str, str]:
    """A demo's three datasets under `root` (written when missing): name -> shard URL pattern."""
    from jepa.commands.demo import demo_sets, ensure_written

    sets = demo_sets(data, root, samples=data.pretrain[0], probe_samples=data.probe[0])
    return {name: ensure_written(data, folder, n=n, seed=seed, classes=classes)
            for name, (folder, n, seed, classes) in sets.items()}


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")


def pretrain_and_probe(data, urls: dict[str, str], out: Path, overrides: list[str], *, seed: int, steps: int,
                       kind: str) -> dict:
    t0 = time.perf_counter()
    run([sys.executable, "-m", "jepa.cli", "train", data.config, f"output_dir={out}", f"seed={seed}",
         f"data.sources=[{{urls: '{urls['pretrain']}', kind: {data.kind}}}]", f"optim.total_steps={steps}",
         f"checkpoint.every_steps={steps}", "logging.every_steps=100", *overrides])
    minutes = (time.perf_counter() - t0) / 60
    run([sys.executable, "-m", "jepa.cli", "probe", str(out), "--train", urls["train"], "--val", urls["val"],
         "--kind", kind, "--baseline", *(["--shuffle-frames"] if data.kind == "video" else []),
         f"probe.seed={seed}"])
    results = json.loads((out / "probe" / "results.json").read_text())["encoders"]
    return {"minutes": minutes, **{f"{enc}/{kind}": r["val_top1"] for enc, probes in results.items()
                                   for kind, r in probes.items()}}


def bounds(data, urls: dict[str, str], *, steps: int, classes: int = CLASSES) -> dict[str, float]:
    """Linear probe on raw pixels, and on the demo encoder trained with labels for `steps` steps."""
    import torch
    import torch.nn.functional as F

    from jepa.config import load
    from jepa.config.sizes import is_video_model
    from jepa.data.eval_stream import build_eval_loader
    from jepa.eval.features import extract, gather
    from jepa.eval.linear import linear_probe
    from jepa.models.factory import build_encoder

    cfg = load(data.config, ["data.num_workers=0"])
    clips = is_video_model(cfg)
    p = cfg.probe

    def images(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        stream = build_eval_loader(urls[name], cfg=cfg, clips=clips, rank=0, world_size=1, batch_size=256)
        batches = list(stream)
        return torch.cat([b["x"] for b in batches]), torch.cat([b["label"] for b in batches])

    def probe(train_x, train_y, val_x, val_y) -> float:
        return linear_probe(train_x, train_y, val_x, val_y, num_classes=classes, lrs=p.linear_lrs,
                            weight_decays=p.linear_weight_decays, epochs=p.linear_epochs,
                            batch_size=p.linear_batch_size, holdout_fraction=p.holdout_fraction, seed=0).val_top1

    (tx, ty), (vx, vy) = images("train"), images("val")
    pool = F.avg_pool3d if clips else F.avg_pool2d  # 16 x 16 pixels per frame, every frame of a clip
    window = (1, 4, 4) if clips else 4
    raw = probe(pool(tx, window).flatten(1), ty, pool(vx, window).flatten(1), vy)
    torch.manual_seed(0)
    encoder = build_encoder(cfg)
    head = torch.nn.Linear(encoder.embed_dim, classes)
    px, py = images("train")  # the probe's labelled training images: the bound uses no more labels
    opt = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=1e-3, weight_decay=0.05)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(px), (32 if clips else 64,), generator=generator)
        loss = F.cross_entropy(head(encoder(px[idx])["pooled"]), py[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    encoder.eval()

    def feats(name: str):
        stream = build_eval_loader(urls[name], cfg=cfg, clips=clips, rank=0, world_size=1, batch_size=256)
        return gather(extract(encoder, stream, device=torch.device("cpu"), n_last_blocks=1, tokens=False, bf16=False))

    a, b = feats("train"), feats("val")
    pixels = f"{cfg.data.num_frames}x16x16x3" if clips else "16x16x3"
    supervised = probe(a.pooled, a.labels, b.pooled, b.labels)
    return {f"raw pixels ({pixels})": raw, f"supervised encoder ({steps} steps)": supervised}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", default="demo", help="comma-separated names of SETTINGS")
    p.add_argument("--set", action="append", default=[], metavar="NAME=K=V,K=V", help="an extra named setting")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--bounds", action="store_true", help="the raw-pixel and supervised rows")
    p.add_argument("--attentive", action="store_true", help="also the attentive probe (slower)")
    p.add_argument("--data", default="data", help="where the demo's shards are kept (default data)")
    p.add_argument("--video", action="store_true", help="the video demo's config and data")
    args = p.parse_args()
    data = VIDEO if args.video else IMAGE
    settings = dict(SETTINGS)
    for item in args.set:
        name, _, rest = item.partition("=")
        settings[name] = rest.split(",")
    urls = write_data(Path(args.data), data)
    if args.bounds:
        print("| features | linear val top-1 |\n|---|---:|")
        for name, acc in bounds(data, urls, steps=args.steps).items():
            print(f"| {name} | {100 * acc:.1f}% |", flush=True)
        return
    kinds = ["linear", "knn"] + ["attentive"] * args.attentive
    encoders = ["pretrained", "random_init"] + ["pretrained_frames_shuffled"] * args.video
    print("| setting | seed | steps | " + " | ".join(f"{k}: {' / '.join(encoders)}" for k in kinds)
          + " | linear gain | minutes |")
    print("|---|---:|---:|" + "---:|" * len(kinds) + "---:|---:|")
    for name in args.settings.split(","):
        for seed in map(int, args.seeds.split(",")):
            with tempfile.TemporaryDirectory() as tmp:
                r = pretrain_and_probe(data, urls, Path(tmp) / "run", settings[name], seed=seed, steps=args.steps,
                                       kind="all" if args.attentive else "linear,knn")
            cells = " | ".join(" / ".join(f"{100 * r[f'{e}/{k}']:.1f}%" for e in encoders) for k in kinds)
            gain = 100 * (r["pretrained/linear"] - r["random_init/linear"])
            print(f"| {name} | {seed} | {args.steps} | {cells} | {gain:+.1f} | {r['minutes']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
