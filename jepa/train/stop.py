"""Save on signal: a request to stop (SIGUSR2, SIGTERM) becomes a collective save at the next step boundary.

SLURM warns a job before its time limit with the signal of `--signal=USR2@SECONDS` (submitit and
launch/train.sbatch ask for SIGUSR2), and ends one it preempts, requeues or cancels with SIGTERM,
then SIGKILL after the cluster's KillWait. A signal reaches any subset of the ranks at any moment
of a step, so the handler only records it; at each step boundary `StopSignal.agreed()` all-reduces
the record (MAX over ranks) and every rank learns, at the same step, that some rank was asked to
stop. They finish that step, save together and end with `RunStopped`; the step in flight is all
that is lost. The check costs one tiny all-reduce per step (benchmarks/README.md, "Stop check").
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from typing import Iterator

import torch

SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
"""What asks a run to save and stop: SLURM's warning before the time limit, and its termination."""
EXIT_STOPPED = os.EX_TEMPFAIL
"""Exit status of a run stopped on request after its save (75, "try again later"): a launcher that
sees it requeues the job (launch/train.sbatch), and the run resumes from `latest`."""


class RunStopped(Exception):
    """The run saved a checkpoint at `step` and stopped because a rank received `signal_name`."""

    def __init__(self, step: int, signal_name: str):
        super().__init__(f"stopped at step {step} on {signal_name}; the checkpoint of step {step} is "
                         f"saved: run the same command again to resume")
        self.step = step
        self.signal_name = signal_name


class StopSignal:
    """The stop request of this process (set by a signal handler) and its agreement across ranks."""

    def __init__(self) -> None:
        self.received = 0
        """The number of the last stop signal this process received; 0 = none."""
        self._flag: torch.Tensor | None = None

    def handle(self, signum: int, frame=None) -> None:
        # Only record: a handler runs between two bytecodes of the main thread, anywhere in a step
        # (even inside a collective), where nothing else is safe to do.
        self.received = signum

    def agreed(self, device: torch.device) -> str | None:
        """The stop signal some rank received (the highest number if several), or None. Collective:
        every rank calls it at every step boundary."""
        if self._flag is None:
            self._flag = torch.zeros(1, dtype=torch.int32, device=device)
        self._flag.fill_(self.received)
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(self._flag, op=torch.distributed.ReduceOp.MAX)
        signum = int(self._flag.item())  # a host sync: waits for this step's work to finish
        return signal.Signals(signum).name if signum else None


@contextmanager
def stop_on_signal() -> Iterator[StopSignal]:
    """Handle SIGUSR2 and SIGTERM by recording them for the whole block; the previous handlers
    (default, or submitit's) come back after it. Main thread only (a rule of Python's signals)."""
    stop = StopSignal()
    previous = {sig: signal.signal(sig, stop.handle) for sig in SIGNALS}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
