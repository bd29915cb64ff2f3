"""Run pretraining on this workstation as a submitit job: real processes, one rank per GPU, with a
time limit that saves and requeues like a SLURM job (`launch.cluster=local`).

    python launch/submit_local.py [--dry-run] [key=value ...]

Four GPUs, 12 h per job, saved and restarted 5 minutes before each limit. The job keeps running
after this script returns; follow it in output_dir/train.log or TensorBoard.
"""

import argparse

from jepa import config
from jepa.launch import submit

SETTINGS = [
    "output_dir=runs/hjepa-b16-local",
    "data.sources=[{urls: 'data/shards/in1k/shard-{000000..001281}.tar', kind: image}]",
    "launch.cluster=local", "launch.tasks_per_node=4", "launch.gpus_per_node=4",
    "launch.timeout_min=720", "launch.signal_delay_s=300",
]

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="say what would run, submit nothing")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    print(submit(config.load("hjepa_vitb16", SETTINGS + args.overrides), dry_run=args.dry_run))
