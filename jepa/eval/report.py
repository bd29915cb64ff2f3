"""What `jepa probe` leaves behind: results.json, TensorBoard scalars and text, a PNG of the linear
probe's lr x weight-decay grid, and a short table on the console."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

CELL_W, CELL_H, MARGIN = 96, 40, 110


def write_json(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(path)


def headline(results: dict) -> dict[str, float]:
    """'<encoder>/<probe>_top1' -> accuracy on val of the chosen head (kNN: its best-on-holdout k)."""
    out = {}
    for name, probes in results["encoders"].items():
        for kind, r in probes.items():
            out[f"{name}/{kind}_top1"] = r["val_top1"]
    return out


def table(results: dict) -> str:
    """A markdown table: one row per probe, one column per encoder (pretrained, random init)."""
    names = list(results["encoders"])
    kinds = list(dict.fromkeys(k for probes in results["encoders"].values() for k in probes))
    lines = ["| probe (val top-1) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for kind in kinds:
        cells = []
        for name in names:
            r = results["encoders"][name].get(kind)
            cells.append("" if r is None else f"{100 * r['val_top1']:.1f}% ({r['chosen_label']})")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_tensorboard(results: dict, tb_dir: Path, *, step: int) -> None:
    """`probe/<encoder>/<probe>_top1` scalars at the checkpoint's step, and the table as text."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tb_dir)) as writer:
        for tag, value in headline(results).items():
            writer.add_scalar(f"probe/{tag}", value, step)
        writer.add_text("probe/results", table(results), step)


def grid_png(heads: list[dict], path: Path, *, title: str) -> None:
    """Held-out top-1 of every (lr, weight decay) head as a heat map, the chosen head outlined."""
    lrs = sorted({h["lr"] for h in heads})
    wds = sorted({h["weight_decay"] for h in heads})
    by_cell = {(h["lr"], h["weight_decay"]): h for h in heads}
    image = Image.new("RGB", (MARGIN + CELL_W * len(wds) + 10, MARGIN + CELL_H * len(lrs) + 10), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), title, fill="black")
    draw.text((10, 30), "held-out top-1 (rows: lr, columns: weight decay)", fill="black")
    for j, wd in enumerate(wds):
        draw.text((MARGIN + j * CELL_W + 8, MARGIN - 22), f"wd {wd:g}", fill="black")
    for i, lr in enumerate(lrs):
        draw.text((10, MARGIN + i * CELL_H + 12), f"lr {lr:g}", fill="black")
        for j, wd in enumerate(wds):
            head = by_cell.get((lr, wd))
            if head is None:
                continue
            acc = head["holdout_top1"]
            box = (MARGIN + j * CELL_W, MARGIN + i * CELL_H, MARGIN + (j + 1) * CELL_W - 2,
                   MARGIN + (i + 1) * CELL_H - 2)
            draw.rectangle(box, fill=(int(255 * (1 - acc)), int(90 + 165 * acc), 90),
                           outline="black" if head.get("chosen") else None, width=3)
            draw.text((box[0] + 8, box[1] + 12), f"{100 * acc:.1f}%", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
