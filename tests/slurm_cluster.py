"""A real one-node SLURM cluster on this machine for the tests: munged, slurmctld and slurmd started
as child processes (foreground flags) with a slurm.conf in a temp folder, stopped by pid afterwards.

It installs nothing: `make test` installs Debian's slurmctld, slurmd, slurm-client and munge when
they are missing (`make slurm-deps`, as root). Without them the SLURM tests are skipped, and only
when not root (as root the Makefile would have installed them, so their absence is an error).
Commands that talk to the cluster need `SlurmCluster.env` (SLURM_CONF points at the temp config).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "sacct")
MIN_JOB_AGE_S = 5
"""How long a finished job stays visible to `scontrol show job` (short: the tests run many jobs)."""
KILL_WAIT_S = 30
"""SIGTERM to SIGKILL at a requeue or time limit: the time a run has to save after SIGTERM."""


@dataclass
class SlurmCluster:
    root: Path
    node: str
    cpus: int
    memory_mb: int
    env: dict[str, str]

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, check=check, timeout=60)

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict ({} once the job has aged out)."""
        proc = self.run("scontrol", "-o", "show", "job", job_id, check=False)
        return dict(re.findall(r"(\w+)=(\S*)", proc.stdout)) if proc.returncode == 0 else {}

    def queue(self) -> list[str]:
        """Ids of the jobs in the queue (pending, running, completing)."""
        return self.run("squeue", "-h", "-o", "%i").stdout.split()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_config() -> dict[str, str]:
    """This machine as slurmd sees it (`slurmd -C`): NodeName, CPUs, RealMemory, sockets, cores..."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"(\w+)=(\S+)", out.splitlines()[0]))


def _slurm_conf(root: Path, node: dict[str, str], memory_mb: int) -> str:
    host = socket.gethostname()
    node_line = " ".join(f"{k}={node[k]}" for k in ("NodeName", "CPUs", "Boards", "SocketsPerBoard",
                                                   "CoresPerSocket", "ThreadsPerCore") if k in node)
    return f"""\
ClusterName=jepatest
SlurmctldHost={host}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job may start again this many seconds later (SLURM's default is 120).
AuthInfo=socket={root / 'munge.socket'},cred_expire=10
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd.pid'}
SlurmctldLogFile={root / 'slurmctld.log'}
SlurmdLogFile={root / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/builtin
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
# Requeued jobs may start again at once, and finished ones leave the queue soon.
JobRequeue=1
MinJobAge={MIN_JOB_AGE_S}
KillWait={KILL_WAIT_S}
ReturnToService=2
# `scontrol requeue` and preemption reach the tasks with their --signal before SIGTERM.
SlurmctldParameters=preempt_send_user_signal
{node_line} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={node['NodeName']} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


def _wait(predicate, what: str, logs: list[Path], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {p}\n" + "\n".join(p.read_text().splitlines()[-15:]) for p in logs if p.exists())
    raise RuntimeError(f"local SLURM cluster: {what} did not happen within {timeout:.0f} s\n{tails}")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    missing = [c for c in DAEMONS + CLIENTS if shutil.which(c) is None]
    if missing and os.geteuid() != 0:
        pytest.skip(f"SLURM tests need {', '.join(missing)} (Debian: slurmctld slurmd slurm-client munge; "
                    f"`make test` as root installs them)")
    assert not missing, f"missing {missing}: run `make slurm-deps` (as root) to install them"
    root = tmp_path_factory.mktemp("slurm")
    for d in ("state", "spool"):
        (root / d).mkdir()
    node = _node_config()
    # Leave the test process itself some memory: jobs ask for at most this much.
    memory_mb = int(node["RealMemory"]) - 1024
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, node, memory_mb))
    # sbatch exports this environment into every job: no torch.distributed variables that an
    # in-process test's lone process group left in os.environ (a task would take them for its own).
    dist_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {**{k: v for k, v in os.environ.items() if k not in dist_vars}, "SLURM_CONF": str(conf)}
    key = root / "munge.key"
    subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True, capture_output=True)
    key.chmod(0o600)
    logs = [root / "munged.log", root / "slurmctld.log", root / "slurmd.log"]
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(
            ["munged", "-F", "--force", f"--key-file={key}", f"--socket={root / 'munge.socket'}",
             f"--pid-file={root / 'munged.pid'}", f"--log-file={logs[0]}", f"--seed-file={root / 'munge.seed'}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait(lambda: (root / "munge.socket").exists(), "munged socket", logs)
        procs.append(subprocess.Popen(["slurmctld", "-D", "-c", "-f", str(conf)], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen(["slurmd", "-D", "-f", str(conf), "-N", node["NodeName"]], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        cluster = SlurmCluster(root=root, node=node["NodeName"], cpus=int(node["CPUs"]), memory_mb=memory_mb,
                               env=env)

        def idle() -> bool:
            proc = cluster.run("sinfo", "-h", "-N", "-o", "%t", check=False)
            return proc.returncode == 0 and proc.stdout.strip() == "idle"

        _wait(idle, "node idle in sinfo", logs)
        yield cluster
    finally:
        for proc in reversed(procs):  # slurmd, slurmctld, munged
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
