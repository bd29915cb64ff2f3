"""`jepa submit CONFIG [key=value ...]`: run `jepa train` as a submitit job, as the config's `launch`
section says (SLURM, or this machine); prints the job id, the run folder and the log paths.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit a training run as a SLURM (or local) job with requeue",
                       description="Check the config, write the run folder (resolved config, code snapshot) "
                                   "and submit the run through submitit as launch.* says. The job saves "
                                   "and requeues itself before its time limit. See docs/cluster.md.")
    p.add_argument("config", help="YAML config file (path, or a name under configs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. launch.nodes=2")
    p.add_argument("--dry-run", action="store_true",
                   help="print the job script (SLURM) and submit nothing, write nothing")
    p.set_defaults(func=_submit)


def _submit(args: argparse.Namespace) -> int:
    from jepa import config
    from jepa.launch import submit

    out = submit(config.load(args.config, args.overrides), dry_run=args.dry_run)
    if isinstance(out, str):
        print(out)
        return 0
    print(f"submitted job {out.job_id}\n"
          f"  run folder   {out.run_dir}\n"
          f"  log          {out.stdout}\n"
          f"  errors       {out.stderr}\n"
          f"  tensorboard  tensorboard --logdir {out.run_dir / 'tb'}")
    return 0
