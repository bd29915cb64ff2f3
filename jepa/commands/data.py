"""`jepa data shards|synth`: write WebDataset shards from a folder or from the synthetic generator.

Imports stay light here (argparse only); the handlers import the writers, so `jepa --help` is fast.
"""

from __future__ import annotations

import argparse

from jepa.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="write WebDataset shards (from folders, or synthetic)",
                       description="Write WebDataset shards, a class map and a manifest.")
    verbs = p.add_subparsers(dest="data_verb", metavar="ACTION", required=True)

    shards = verbs.add_parser(
        "shards", help="folder of images or videos -> shards (labels from sub-folder names)",
        description="Write the images or videos under a folder as tar shards. Each first-level "
                    "sub-folder is a class (sorted names -> indices 0..K-1, saved as classes.json); "
                    "files directly under the folder are unlabelled. Media bytes are stored as they "
                    "are; unreadable and unsupported files are skipped and counted.")
    src = shards.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", metavar="DIR", help="folder of jpg/jpeg/png/webp images")
    src.add_argument("--videos", metavar="DIR", help="folder of mp4/webm/mkv/mov/avi/m4v videos")
    shards.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    shards.add_argument("--shard-size", type=int, default=1000, metavar="N", help="samples per shard (default 1000)")
    shards.add_argument("--prefix", default="shard", help="shard file name prefix (default: shard)")
    shards.add_argument("--no-shuffle", action="store_true",
                        help="keep the sorted file order (default: a seeded shuffle, so shards mix classes)")
    shards.add_argument("--seed", type=int, default=0, help="seed of the file-order shuffle (default 0)")
    shards.set_defaults(func=_shards)

    synth = verbs.add_parser(
        "synth", help="procedurally generated labelled images or videos -> shards",
        description="Write a synthetic labelled dataset, deterministic from --seed. Images (png): the "
                    "class is a shape x texture pair (up to 32 classes), with colour, size, rotation, "
                    "position and background random; or, with --task stripes, the orientation of stripes "
                    "whose colours change region by region (up to 16). Videos (H.264 mp4): the class is the direction "
                    "of motion (up to 16) of one object over a static background, or with --task flow of a "
                    "colour mosaic that fills the frame; no single frame tells it.")
    synth.add_argument("--kind", choices=("image", "video"), required=True, help="image or video")
    synth.add_argument("--task", choices=("shapes", "stripes", "object", "flow"),
                       help="what the class is: images: a shape x texture pair (shapes, the default) or a stripe "
                            "orientation (stripes); videos: the direction of a moving object (object, the default) "
                            "or of a sliding mosaic (flow)")
    synth.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    synth.add_argument("--n", type=int, required=True, help="number of samples")
    synth.add_argument("--classes", type=int, required=True, metavar="K", help="number of classes")
    synth.add_argument("--size", type=int, default=64, metavar="S", help="frame side in pixels, even (default 64)")
    synth.add_argument("--frames", type=int, default=32, metavar="F", help="frames per video (default 32)")
    synth.add_argument("--fps", type=float, default=8.0, help="video frame rate (default 8)")
    synth.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    synth.add_argument("--shard-size", type=int, default=1000, metavar="N", help="samples per shard (default 1000)")
    synth.set_defaults(func=_synth)


def _shards(args: argparse.Namespace) -> int:
    from jepa.data.write import write_folder

    kind, root = ("image", args.images) if args.images else ("video", args.videos)
    summary = write_folder(root, args.out, kind=kind, shard_size=args.shard_size, shuffle=not args.no_shuffle,
                           seed=args.seed, prefix=args.prefix)
    print(summary.text())
    return 0


def _synth(args: argparse.Namespace) -> int:
    from jepa.data.write import write_synthetic

    if args.fps <= 0:
        raise UserError(f"--fps must be > 0, got {args.fps}")
    summary = write_synthetic(args.out, kind=args.kind, n=args.n, classes=args.classes, size=args.size,
                              frames=args.frames, seed=args.seed, shard_size=args.shard_size, fps=args.fps, task=args.task)
    print(summary.text())
    return 0
