#!/usr/bin/env bash
# One GPU, one command: ViT-L/16 image and video JEPA steps in bf16 (throughput, MFU, peak memory),
# RoPE's share of the step, data pipeline throughput; prints a markdown table for benchmarks/README.md.
#
#   benchmarks/gpu.sh [--image-batch 64] [--video-batch 16] [--steps 10] [--workers 8] [--peak-tflops T]
#   benchmarks/gpu.sh --toy        # tiny models, 2 steps: runs anywhere, CPU included (tested)
#
# The work is done by benchmarks/gpu.py (--help lists every option); this wrapper picks the
# repository's venv and keeps each data worker to one CPU thread.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export GPU_BENCH_ENTRY="benchmarks/gpu.sh"
cd "$root"
exec "$python" benchmarks/gpu.py "$@"
