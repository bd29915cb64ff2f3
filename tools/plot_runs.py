"""PNG curves from the TensorBoard event files of one or several run folders, runs overlaid.

    python tools/plot_runs.py RUN [RUN ...] [--out plots/] [--tags REGEX] [--smooth 0.6] [--x step|minutes]

A RUN is a run folder (its `tb/` is read: training scalars, and the probe's when `jepa probe` ran
on it), a folder of event files, or any folder above them (every folder below it that holds event
files is one run). One PNG per namespace of the scalars that exist (`loss.png`: total and per level;
`optim.png`: lr, weight decay, EMA momentum, grad norm; `repr.png`: effective rank, target std;
`eval.png`: online kNN; `time.png`: throughput, data wait; `memory.png`, `data.png`, ...), one panel
per scalar, one line per run, the runs named in a legend. For reports, and for machines without a
TensorBoard server.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator  # noqa: E402

from jepa.errors import UserError  # noqa: E402

DPI = 100
PANEL_W_PX, PANEL_H_PX = 400, 280
"""One scalar's panel in the PNG."""
LEGEND_PX = 50
"""Room at the top of each PNG for its title and the legend of the runs."""
COLUMNS = 3
"""Panels per line of a PNG (fewer when a namespace has fewer scalars)."""

Curve = tuple[list[float], list[float]]
"""(x values, y values) of one scalar of one run."""


def event_dirs(root: Path) -> list[Path]:
    """The folders under `root` that hold event files: `root/tb` for a run folder, else every one found."""
    if not root.is_dir():
        raise UserError(f"{root} is not a folder: give a run folder (with tb/) or a folder of event files")
    base = root / "tb" if (root / "tb").is_dir() else root
    found = sorted({p.parent for p in base.rglob("events.out.tfevents.*")})
    if not found:
        raise UserError(f"no TensorBoard event files under {base} (has the run logged a step yet?)")
    return found


def read_scalars(folder: Path, *, x_axis: str) -> dict[str, Curve]:
    """{tag: (x, y)} of the scalars in one folder of event files.

    A resumed run logs the steps between its last checkpoint and the interruption twice; the
    value written last wins. `x_axis`: `step`, or `minutes` of wall-clock time since the first event.
    """
    acc = EventAccumulator(str(folder), size_guidance={SCALARS: 0})  # 0: keep every event
    acc.Reload()
    events = {tag: acc.Scalars(tag) for tag in acc.Tags()[SCALARS]}
    start = min((e.wall_time for evs in events.values() for e in evs), default=0.0)
    curves = {}
    for tag, evs in events.items():
        latest = {e.step: e for e in sorted(evs, key=lambda e: e.wall_time)}
        points = [latest[s] for s in sorted(latest)]
        xs = [float(e.step) if x_axis == "step" else (e.wall_time - start) / 60 for e in points]
        curves[tag] = (xs, [e.value for e in points])
    return curves


def smoothed(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased at the start."""
    if weight <= 0:
        return values
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** i))
    return out


def run_labels(folders: list[Path]) -> list[str]:
    """Short distinct names: the last path parts that tell the folders apart (`tb` left out)."""
    parts = [[p for p in f.resolve().parts if p != "tb"] for f in folders]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(f) for f in folders]


def namespace(tag: str) -> str:
    return tag.split("/", 1)[0] if "/" in tag else "other"


def plot_namespace(name: str, tags: list[str], runs: dict[str, dict[str, Curve]], out: Path, *,
                   x_axis: str, smooth: float) -> tuple[int, int]:
    """One PNG: a panel per tag, a line per run; returns its (width, height) in pixels."""
    cols = min(COLUMNS, len(tags))
    rows = math.ceil(len(tags) / cols)
    width, height = cols * PANEL_W_PX, rows * PANEL_H_PX + LEGEND_PX
    fig, axes = plt.subplots(rows, cols, figsize=(width / DPI, height / DPI), dpi=DPI, squeeze=False)
    colours = {label: f"C{i % 10}" for i, label in enumerate(runs)}  # a run keeps its colour in every PNG
    for ax, tag in zip(axes.flat, tags):
        for label, curves in runs.items():
            if tag in curves:
                xs, ys = curves[tag]
                ax.plot(xs, smoothed(ys, smooth), color=colours[label], label=label, linewidth=1.2,
                        marker="." if len(xs) < 20 else None)
        ax.set_title(tag, fontsize=9)
        ax.set_xlabel(x_axis, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tags):]:
        ax.set_axis_off()
    present = [label for label, curves in runs.items() if any(tag in curves for tag in tags)]
    handles = [plt.Line2D([], [], color=colours[label], linewidth=2) for label in present]
    fig.legend(handles, present, loc="upper center", ncol=min(len(present), 4), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 1 - 18 / height))
    fig.suptitle(f"{name}/", fontsize=10, y=1 - 2 / height, va="top")
    fig.tight_layout(rect=(0, 0, 1, 1 - LEGEND_PX / height))
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return width, height


def plot_runs(roots: list[Path], out: Path, *, tags: str | None, x_axis: str, smooth: float) -> list[str]:
    """Write one PNG per namespace into `out`; returns the printed lines."""
    folders = [f for root in roots for f in event_dirs(root)]
    pattern = re.compile(tags) if tags else None
    runs = {}
    lines = []
    for label, folder in zip(run_labels(folders), folders):
        curves = {t: c for t, c in read_scalars(folder, x_axis=x_axis).items() if not pattern or pattern.search(t)}
        runs[label] = curves
        last = max((c[0][-1] for c in curves.values() if c[0]), default=float("nan"))
        lines.append(f"{label}: {len(curves)} scalars, last {x_axis} {last:g} ({folder})")
    by_namespace = defaultdict(set)
    for curves in runs.values():
        for tag in curves:
            by_namespace[namespace(tag)].add(tag)
    if not by_namespace:
        raise UserError(f"no scalars{' match --tags ' + tags if tags else ''} in {', '.join(map(str, roots))}")
    out.mkdir(parents=True, exist_ok=True)
    for name in sorted(by_namespace):
        path = out / f"{name}.png"
        width, height = plot_namespace(name, sorted(by_namespace[name]), runs, path, x_axis=x_axis, smooth=smooth)
        lines.append(f"wrote {path} ({width}x{height} px): {', '.join(sorted(by_namespace[name]))}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Example: python tools/plot_runs.py runs/demo runs/small/hjepa_vitb16 "
                                            "--out plots --smooth 0.6")
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (or folders of event files)")
    parser.add_argument("--out", type=Path, default=Path("plots"), help="folder for the PNGs (default plots/)")
    parser.add_argument("--tags", help="only scalars whose tag matches this regular expression, e.g. '^loss/'")
    parser.add_argument("--smooth", type=float, default=0.0, help="EMA smoothing weight in [0, 1) (default 0: raw)")
    parser.add_argument("--x", choices=("step", "minutes"), default="step", dest="x_axis",
                        help="x axis: optimizer step (default) or wall-clock minutes since the run's first event")
    args = parser.parse_args(argv)
    try:
        if not 0 <= args.smooth < 1:
            raise UserError(f"--smooth must lie in [0, 1), got {args.smooth}")
        print("\n".join(plot_runs(args.runs, args.out, tags=args.tags, x_axis=args.x_axis, smooth=args.smooth)))
    except (UserError, re.error) as e:
        print(f"plot_runs: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
