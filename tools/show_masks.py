"""Draw the masks a config generates on real samples from its shards, as a PNG grid.

    python tools/show_masks.py CONFIG [KEY=VALUE ...] [--samples 4] [--out masks.png] [--urls PATTERN]

CONFIG and the overrides are those of `jepa train`. One row per sample: the sample as the model
sees it (the training crop), then the context (the tokens the context encoder sees; every other
token dimmed), then each target block (multiblock2d), or one context and one target per mask set
(multiblock3d: the union of a block kind; tube). A video is drawn as strips of frames, one frame per
temporal token, one strip per row.

Masks are drawn as the training loop draws them: a whole batch of `data.batch_size` with the run's
seed, cut to equal lengths, so the ratios are those training sees; the first --samples rows are
shown. The measured context and target ratios (fractions of all tokens) are written on the picture
and printed, with the ratio `expected_masked_ratio()` predicts for one sample before the cut.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from jepa import config  # noqa: E402
from jepa.config.sizes import is_video_model  # noqa: E402
from jepa.data import streams  # noqa: E402
from jepa.data.skips import SampleSkip, SkipLog  # noqa: E402
from jepa.data.transforms import SampleSpec, decode_sample  # noqa: E402
from jepa.errors import UserError  # noqa: E402
from jepa.masks import build_mask_generator, mask_rng  # noqa: E402
from jepa.models.factory import input_grid  # noqa: E402

DPI = 100
PANEL_PX = 180
"""Side of one image panel (one frame of a strip) in the PNG."""
TITLE_PX = 30
"""Room above each panel for its title."""
LINE_PX = 14
"""Height of one line of the header (the config and the batch ratios) at the top of the picture."""
CHAR_PX = 7
"""Width of one header character (8 pt monospace), to wrap the header to the picture's width."""
DIM = 0.25
"""Brightness left to the tokens a panel does not show (mixed with grey, so dark images dim too)."""
GREY = np.array([128, 128, 128])


def load_samples(cfg: config.Config, urls: str | None, n: int, seed: int) -> tuple[list, list[str], Counter]:
    """The first `n` samples of the config's sources (or `urls`), with the training transform:
    uint8 (3, S, S) images or (3, T, S, S) clips, their keys, and the skips met on the way."""
    spec = SampleSpec.from_data(cfg.data, clips=is_video_model(cfg), train=True)
    sources = [(urls, None)] if urls else [(s.urls, s.kind) for s in cfg.data.sources]
    log = SkipLog(window=None)
    pixels, keys = [], []
    for pattern, kind in sources:
        for raw in streams.samples_of(iter(streams.expand_urls(pattern)), log):
            try:
                views = decode_sample(raw, spec, kind=kind, rng=streams.stream_rng(seed, "show_masks", len(keys)))
            except SampleSkip as e:
                log.skip(e.kind, raw.url, raw.key, e.message)
                continue
            pixels.append(views[0][0])
            keys.append(raw.key)
            if len(keys) == n:
                return pixels, keys, log.totals
    if not keys:
        where = urls or ", ".join(s.urls for s in cfg.data.sources) or "data.sources (empty)"
        raise UserError(f"no sample decoded from {where} (skipped: {dict(log.totals) or 'none'}): write shards "
                        f"with `jepa data`, or point --urls at them")
    return pixels, keys, log.totals


def dense(indices: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(B, K) token indices -> (B, N) bool."""
    return torch.zeros(indices.shape[0], num_tokens, dtype=torch.bool).scatter_(1, indices, True)


def token_pixels(keep: torch.Tensor, grid: tuple[int, int, int], frames: list[int], num_frames: int,
                 size: int) -> np.ndarray:
    """(N,) bool over the (T, H, W) token grid -> (len(frames), size, size) bool: which pixels of the
    shown frames belong to kept tokens (a pixel takes the token whose cell holds it)."""
    t_len, h_len, w_len = grid
    cells = keep.reshape(grid).numpy()
    t = np.array(frames) * t_len // num_frames
    rows = np.arange(size) * h_len // size
    cols = np.arange(size) * w_len // size
    return cells[t][:, rows][:, :, cols]


def dimmed(frames: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """(F, S, S, 3) uint8 frames with the pixels outside `keep` (F, S, S) dimmed towards grey."""
    faded = (DIM * frames + (1 - DIM) * GREY).astype(np.uint8)
    return np.where(keep[..., None], frames, faded)


def strip(frames: np.ndarray) -> np.ndarray:
    """(F, S, S, 3) -> (S, F * S + gaps, 3): frames side by side, 2 white pixels apart."""
    gap = np.full((frames.shape[1], 2, 3), 255, np.uint8)
    parts = [p for f in frames for p in (f, gap)][:-1]
    return np.concatenate(parts, axis=1)


def panels_of(pixels: torch.Tensor, mask_sets: list[dict], row: int, grid, max_frames: int) -> list[tuple[str, np.ndarray]]:
    """(title, RGB array) of every panel of one sample: the sample, then context and targets."""
    video = pixels.dim() == 4
    frames = pixels.permute(1, 2, 3, 0).numpy() if video else pixels.permute(1, 2, 0).numpy()[None]
    num_frames, size = frames.shape[0], frames.shape[1]
    shown = sorted({t * num_frames // grid[0] for t in range(grid[0])})  # first frame of each temporal token
    shown = shown[:: -(-len(shown) // max_frames)]
    frames = frames[shown]
    out = [("clip" if video else "image", strip(frames))]
    for s, ms in enumerate(mask_sets):
        prefix = f"set {s + 1} " if len(mask_sets) > 1 else ""
        for name, mask in [("context", ms["context"]), *ms["targets"]]:
            keep = mask[row]
            out.append((f"{prefix}{name} {keep.float().mean():.2f}",
                        strip(dimmed(frames, token_pixels(keep, grid, shown, num_frames, size)))))
    return out


def measure(masks: list, num_tokens: int, before: list) -> list[dict]:
    """Per mask set: dense context/target masks of the batch and their ratios of all tokens."""
    out = []
    for ms, raw in zip(masks, before):
        many = len(ms.targets) > 1
        targets = [(f"target {i + 1}" if many else "target", dense(t, num_tokens)) for i, t in enumerate(ms.targets)]
        out.append({"context": dense(ms.context, num_tokens), "targets": targets,
                    "context_ratio": ms.context.shape[1] / num_tokens,
                    "context_ratio_before_cut": raw.context.float().mean().item(),
                    "target_ratios": [t.shape[1] / num_tokens for t in ms.targets]})
    return out


def draw(rows: list[list[tuple[str, np.ndarray]]], labels: list[str], header: list[str], out: Path) -> tuple[int, int]:
    """Panels in a grid (images) or stacked strips (video); returns the PNG's (width, height)."""
    per_sample = len(rows[0])
    frames = round(rows[0][0][1].shape[1] / rows[0][0][1].shape[0])
    if frames == 1:
        grid_rows, grid_cols = len(rows), per_sample
        cells = [(r, c) for r in range(len(rows)) for c in range(per_sample)]
    else:  # one strip per line, samples one under the other
        grid_rows, grid_cols = len(rows) * per_sample, 1
        cells = [(r * per_sample + c, 0) for r in range(len(rows)) for c in range(per_sample)]
    width = grid_cols * frames * PANEL_PX
    text = [part for line in header for part in textwrap.wrap(line, width // CHAR_PX - 2, subsequent_indent="  ")]
    header_px = (len(text) + 1) * LINE_PX
    height = grid_rows * (PANEL_PX + TITLE_PX) + header_px
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    fig.text(0.01, 1 - 6 / height, "\n".join(text), va="top", ha="left", fontsize=8, family="monospace",
             linespacing=1.25)
    top = 1 - header_px / height
    cell_w, cell_h = 1 / grid_cols, (PANEL_PX + TITLE_PX) / height
    for (r, c), (title, image) in zip(cells, [p for sample in rows for p in sample]):
        ax = fig.add_axes((c * cell_w, top - (r + 1) * cell_h, cell_w, PANEL_PX / height))
        ax.imshow(image, interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        sample = r // per_sample if grid_cols == 1 else r
        first = (c == 0) if grid_cols > 1 else (r % per_sample == 0)
        ax.set_title(f"{labels[sample]}: {title}" if first else title, fontsize=8, pad=2)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return width, height


def show_masks(cfg: config.Config, *, samples: int, out: Path, urls: str | None, max_frames: int) -> str:
    """Draw the picture into `out`; returns the printed summary."""
    grid = input_grid(cfg)
    gen = build_mask_generator(cfg.mask, grid)
    grid3 = tuple([1, *grid][-3:])
    num_tokens = int(np.prod(grid3))
    pixels, keys, skipped = load_samples(cfg, urls, samples, cfg.seed)
    batch = max(len(pixels), cfg.data.batch_size)
    rng = mask_rng(cfg.seed, 0, 0, 0)  # the first batch of rank 0, worker 0
    before = gen.draw_dense(batch, rng)
    sets = measure([d.equalize(rng) for d in before], num_tokens, before)
    rows = [panels_of(p, sets, i, grid3, max_frames) for i, p in enumerate(pixels)]
    expected = gen.expected_masked_ratio()
    lines = [f"{cfg.mask.kind} masks on the {'x'.join(map(str, grid))} token grid ({num_tokens} tokens); "
             f"batch of {batch} drawn, {len(pixels)} shown; ratios are fractions of all tokens"]
    for s, (m, exp) in enumerate(zip(sets, expected)):
        targets = " ".join(f"{r:.3f}" for r in m["target_ratios"])
        lines.append(f"{'set ' + str(s + 1) + ': ' if len(sets) > 1 else ''}context {m['context_ratio']:.3f} "
                     f"(before equal lengths {m['context_ratio_before_cut']:.3f}; masked expected {exp:.3f}, "
                     f"measured {1 - m['context_ratio_before_cut']:.3f}), targets {targets}")
    labels = [f"#{i} {k}" for i, k in enumerate(keys)]
    width, height = draw(rows, labels, lines, out)
    if skipped:
        lines.append(f"skipped samples: {dict(skipped)}")
    lines.append(f"wrote {out} ({width}x{height} px)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Example: python tools/show_masks.py small/demo mask.min_keep=8 "
                                            "--samples 4 --out masks.png")
    parser.add_argument("config", help="YAML config file (path, or a name under configs/)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, as for `jepa train`")
    parser.add_argument("--samples", type=int, default=4, help="samples to draw, one row each (default 4)")
    parser.add_argument("--out", type=Path, default=Path("masks.png"), help="output PNG (default masks.png)")
    parser.add_argument("--urls", help="read samples from these shards instead of data.sources (brace pattern)")
    parser.add_argument("--max-frames", type=int, default=8, help="frames per video strip at most (default 8)")
    args = parser.parse_args(argv)
    try:
        if args.samples < 1 or args.max_frames < 1:
            raise UserError("--samples and --max-frames must be >= 1")
        cfg = config.load(args.config, args.overrides)
        print(show_masks(cfg, samples=args.samples, out=args.out, urls=args.urls, max_frames=args.max_frames))
    except UserError as e:
        print(f"show_masks: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
