"""`jepa submit CONFIG [key=value ...]`: run `jepa train` as a submitit job, as the config's `launch`
section says (SLURM, or this machine); prints the job id, the run folder and the log paths.
`--sweep` submits one array job over a grid of overrides, `--status` lists the jobs of run folders,
`--probe` submits `jepa probe` on a run (after `--dependency`).
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit a training run as a SLURM (or local) job with requeue",
                       description="Check the config, write the run folder (resolved config, code snapshot) "
                                   "and submit the run through submitit as launch.* says. The job saves "
                                   "and requeues itself before its time limit. See docs/cluster.md.")
    p.add_argument("config", nargs="?", help="YAML config file (path, or a name under configs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. launch.nodes=2")
    p.add_argument("--dry-run", action="store_true",
                   help="print the job script (SLURM) and submit nothing, write nothing")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help="one run per value (repeat for a grid), all in one array job, each in "
                        "OUTPUT_DIR/<its overrides>")
    p.add_argument("--status", nargs="+", metavar="RUN",
                   help="list the jobs of these run folders (or globs): job id, state, last step, latest checkpoint")
    g = p.add_argument_group("probe jobs (--probe RUN; then KEY=VALUE are overrides of `jepa probe`)")
    g.add_argument("--probe", metavar="RUN", help="submit `jepa probe RUN` as a one-task job with RUN's launch settings")
    g.add_argument("--train", metavar="SHARDS", help="labelled shards the probes train on")
    g.add_argument("--val", metavar="SHARDS", help="labelled shards the probes are reported on")
    g.add_argument("--kind", choices=("linear", "knn", "attentive", "all"), default="all")
    g.add_argument("--encoder", choices=("ema", "context"), default="ema")
    g.add_argument("--baseline", action="store_true", help="also probe a randomly initialised encoder")
    g.add_argument("--shuffle-frames", action="store_true",
                   help="video encoders: also probe the pretrained encoder on frame-shuffled clips")
    g.add_argument("--out", metavar="DIR", help="probe output folder (default: RUN/probe)")
    g.add_argument("--dependency", metavar="TYPE:JOBID", help="SLURM dependency, e.g. afterok:4242")
    p.set_defaults(func=_submit)


def _submit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from jepa import config
    from jepa.errors import UserError
    from jepa.launch import submit

    if args.status:
        from jepa.launch_jobs import run_folders, status_table

        print(status_table(run_folders([*args.status, *([args.config] if args.config else []), *args.overrides])))
        return 0
    if args.probe:
        from jepa.launch_jobs import submit_probe

        args.overrides = [*([args.config] if args.config else []), *args.overrides]
        out = submit_probe(Path(args.probe), args, dry_run=args.dry_run)
        if isinstance(out, str):
            print(out)
        else:
            print(f"submitted probe job {out[0]}\n  results      {out[1]}")
        return 0
    if not args.config:
        raise UserError("jepa submit needs a CONFIG (or --status RUN, or --probe RUN)")
    if args.dependency:
        raise UserError("--dependency is for --probe jobs")
    if args.sweep:
        from jepa.launch_sweep import submit_sweep

        out = submit_sweep(args.config, args.overrides, args.sweep, dry_run=args.dry_run)
        if isinstance(out, str):
            print(out)
        else:
            print(f"submitted array job {out[0].job_id.split('_')[0]} ({len(out)} runs)")
            for run in out:
                print(f"  job {run.job_id}  {run.run_dir}")
        return 0
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
