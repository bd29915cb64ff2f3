"""`jepa export RUN OUT`: a run's EMA target encoder as one safetensors file."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser("export", help="write a run's EMA target encoder as safetensors",
                            description="Write the EMA target encoder of RUN's latest checkpoint as one "
                                        "fp32 safetensors file, with its model config as OUT.json.")
    export.add_argument("run", help="run folder (the run's output_dir)")
    export.add_argument("out", help="output file, e.g. encoder.safetensors")
    export.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from jepa.train.export import export_target

    out = export_target(args.run, args.out)
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0
