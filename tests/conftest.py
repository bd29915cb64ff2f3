"""Shared test settings: one thread per process (CI has 2 cores), CPU DeepSpeed accelerator."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402  (after the thread setting)

torch.set_num_threads(1)
