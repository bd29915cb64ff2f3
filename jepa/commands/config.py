"""`jepa config show|check|docs`: print a resolved config, validate configs/, document the schema."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jepa.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="show, check and document experiment configs",
                       description="Show, check and document experiment configs.")
    verbs = p.add_subparsers(dest="config_verb", metavar="ACTION", required=True)

    show = verbs.add_parser("show", help="print the resolved config (defaults < file < overrides)",
                            description="Print the resolved config as YAML.")
    show.add_argument("config", help="YAML config file (path, or a name under configs/)")
    show.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=3e-4")
    show.set_defaults(func=_show)

    check = verbs.add_parser("check", help="validate every config file (default: all of configs/)",
                             description="Load and validate config files; exit 2 if any fails.")
    check.add_argument("paths", nargs="*", help="files or folders (default: the configs/ folder)")
    check.set_defaults(func=_check)

    docs = verbs.add_parser("docs", help="print the config reference (markdown) from the schema",
                            description="Print every config key with its type, default and meaning.")
    docs.set_defaults(func=_docs)


def _show(args: argparse.Namespace) -> int:
    from jepa import config

    print(config.to_yaml(config.load(args.config, args.overrides)), end="")
    return 0


def _check(args: argparse.Namespace) -> int:
    from jepa import config

    roots = [Path(p) for p in args.paths] or [config.CONFIG_DIR]
    files = sorted(f for r in roots for f in ([r] if r.is_file() else r.rglob("*.yaml")))
    if not files:
        raise UserError(f"no config files under {', '.join(map(str, roots))}")
    failed = 0
    for f in files:
        try:
            config.load(f)
            print(f"ok      {f}")
        except UserError as e:
            failed += 1
            print(f"FAILED  {f}: {e}")
    if failed:
        raise UserError(f"{failed} of {len(files)} config files are invalid")
    print(f"{len(files)} config files valid")
    return 0


def _docs(args: argparse.Namespace) -> int:
    from jepa.config.docs import render

    sys.stdout.write(render())
    return 0
