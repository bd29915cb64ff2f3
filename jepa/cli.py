"""The `jepa` command. Thin: parse arguments, call the verb's handler, turn `UserError` into exit 2.

Every verb is a module of jepa/commands/ with `register(subparsers)`; modules keep heavy imports
(torch, deepspeed, av) inside their handlers so that `jepa --help` answers at once.
"""

from __future__ import annotations

import argparse
import sys

from jepa import __version__
from jepa.commands import checkpoint, config, data, demo, export, probe, submit, train
from jepa.errors import UserError

VERBS = (train, submit, demo, probe, export, checkpoint, data, config)
"""The verb modules, in the order `jepa --help` lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jepa", description="Distributed H-JEPA and video JEPA pretraining.")
    parser.add_argument("--version", action="version", version=f"jepa {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in VERBS:
        verb.register(sub)
    return parser


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The verb's arguments; `key=value` overrides may also come after the options (`jepa probe RUN
    --train A --val B probe.linear_epochs=50`), where argparse alone would refuse them."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"jepa: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jepa: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
