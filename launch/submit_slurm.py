"""Submit a pretraining run to a SLURM cluster from Python: what `jepa submit` does, for scripts and
notebooks that build their own configs.

    python launch/submit_slurm.py [--dry-run] [key=value ...]

Two nodes of 8 GPUs, one rank per GPU, 24 h jobs that save and requeue themselves 2 minutes before
their limit (at most 20 times). Change the defaults below or override any key on the command line.
"""

import argparse

from jepa import config
from jepa.launch import submit

SETTINGS = [
    "output_dir=/checkpoints/hjepa-b16",
    "data.sources=[{urls: '/data/shards/in1k/shard-{000000..001281}.tar', kind: image}]",
    "launch.cluster=slurm", "launch.nodes=2", "launch.tasks_per_node=8", "launch.gpus_per_node=8",
    "launch.cpus_per_task=10", "launch.mem_gb=480", "launch.timeout_min=1440", "launch.signal_delay_s=120",
    "launch.max_requeues=20", "launch.partition=gpu",
    "launch.setup=[source /opt/venvs/jepa/bin/activate]",
]

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the job script, submit nothing")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    print(submit(config.load("hjepa_vitb16", SETTINGS + args.overrides), dry_run=args.dry_run))
