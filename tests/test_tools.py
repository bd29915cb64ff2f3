"""tools/ (show_masks, plot_runs, inspect_shards) and benchmarks/gpu.sh on tiny generated data."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jepa import config
from jepa.data.write import ShardSample, ShardSink, write_synthetic

ROOT = Path(__file__).resolve().parent.parent


def tool(name: str):
    """A tools/ script imported as a module (they are scripts, not a package)."""
    if f"tools_{name}" in sys.modules:
        return sys.modules[f"tools_{name}"]
    spec = importlib.util.spec_from_file_location(f"tools_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def png(path: Path) -> Image.Image:
    image = Image.open(path)
    image.load()
    assert image.format == "PNG"
    return image


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("images")
    write_synthetic(out, kind="image", n=6, classes=3, size=64, frames=1, seed=0, shard_size=3, progress=False)
    return out


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("videos")
    write_synthetic(out, kind="video", n=2, classes=2, size=32, frames=16, seed=0, shard_size=2, progress=False)
    return out


@pytest.mark.parametrize("name", ["show_masks", "plot_runs", "inspect_shards"])
def test_every_tool_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        tool(name).main(["--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_show_masks_draws_the_context_and_each_target_on_image_samples(images, tmp_path, capsys):
    show = tool("show_masks")
    out = tmp_path / "masks.png"
    urls = str(images / "shard-{000000..000001}.tar")
    assert show.main(["small/ijepa_vitb16", "seed=3", "--urls", urls, "--samples", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    picture = png(out)
    assert f"wrote {out} ({picture.width}x{picture.height} px)" in text
    assert picture.width == 6 * show.PANEL_PX  # image, context, 4 target blocks
    header = picture.height - 3 * (show.PANEL_PX + show.TITLE_PX)
    assert header % show.LINE_PX == 0 and 2 * show.LINE_PX <= header <= 8 * show.LINE_PX
    context = float(re.search(r"context ([\d.]+) \(", text).group(1))
    targets = [float(t) for t in re.search(r"targets ((?:[\d.]+ ?){4})", text).group(1).split()]
    assert 0 < context < 1 and all(0 < t < 1 for t in targets)

    # The panels: the kept tokens as in the image, the others dimmed (so they differ from it).
    cfg = config.load("small/ijepa_vitb16", ["seed=3"])
    pixels, keys, skipped = show.load_samples(cfg, urls, 1, seed=0)
    assert len(keys) == 1 and not skipped
    grid = (1, 8, 8)
    keep = torch.zeros(64, dtype=torch.bool)
    keep[:20] = True  # the first 2.5 rows of tokens
    sets = [{"context": keep[None], "targets": [("target 1", ~keep[None])]}]
    panels = show.panels_of(pixels[0], sets, 0, grid, 8)
    assert [title for title, _ in panels] == ["image", "context 0.31", "target 1 0.69"]
    image, context = panels[0][1], panels[1][1]
    inside = show.token_pixels(keep, grid, [0], 1, 64)[0]
    assert inside[:16].all() and not inside[24:].any()  # 8 px per token row
    assert np.array_equal(context[inside], image[inside])
    assert (context[~inside] != image[~inside]).any(axis=-1).mean() > 0.9


def test_show_masks_draws_video_as_frame_strips(videos, tmp_path, capsys):
    show = tool("show_masks")
    out = tmp_path / "video.png"
    overrides = ["data.image_size=32", "model.patch_size=8"]  # 4 x 4 x 4 tokens
    assert show.main(["small/vjepa_vitl16", *overrides, "--urls", str(videos / "shard-000000.tar"),
                      "--samples", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "set 1: context" in text and "set 2: context" in text
    picture = png(out)
    assert picture.width == 4 * show.PANEL_PX  # one frame per temporal token
    rows = 5  # clip, then context and target of each of the two mask sets
    assert (picture.height - rows * (show.PANEL_PX + show.TITLE_PX)) % show.LINE_PX == 0


def test_show_masks_says_when_no_sample_decodes(tmp_path, capsys):
    show = tool("show_masks")
    assert show.main(["small/ijepa_vitb16", "--urls", str(tmp_path / "none.tar"), "--out", str(tmp_path / "x.png")]) == 2
    assert "no sample decoded" in capsys.readouterr().err


def test_inspect_shards_summarises_and_counts_decode_failures(images, tmp_path, capsys):
    inspect = tool("inspect_shards")
    data = tmp_path / "data"
    data.mkdir()
    for shard in images.glob("*.tar"):
        (data / shard.name).write_bytes(shard.read_bytes())
    (data / "classes.json").write_text((images / "classes.json").read_text())
    sink = ShardSink(data, shard_size=10, prefix="zbad")
    sink.write(ShardSample("bad0", "png", b"\x89PNG\r\n\x1a\n not really a png", 1))
    sink.write(ShardSample("bad1", "png", b"", 2))
    sink.close()
    out = tmp_path / "sheet.png"
    assert inspect.main([str(data), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "shards: 3" in text
    assert "samples: 6 decoded, 2 failed" in text
    assert "media: png 6" in text
    assert "labels: 3 classes: 0 circle-solid 2, 1 square-solid 2, 2 triangle-solid 2; unlabelled 0" in text
    assert "sizes (WxH): 64x64 6" in text
    assert "failures by kind: empty_member 1, image_decode 1" in text
    assert "zbad-000000.tar key bad0" in text
    sheet = png(out)
    assert sheet.size == (6 * inspect.THUMB_PX, inspect.THUMB_PX + 2 * inspect.TITLE_PX)
    thumbs = np.asarray(sheet.convert("RGB"))[2 * inspect.TITLE_PX:]
    assert thumbs.std() > 20  # pictures, not a blank page


def test_inspect_shards_shows_video_frames(videos, tmp_path, capsys):
    inspect = tool("inspect_shards")
    out = tmp_path / "sheet.png"
    assert inspect.main([str(videos / "shard-000000.tar"), "--frames", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "media: mp4 2" in text and "video frames: min 16, median 16, max 16; fps: 8 (2)" in text
    assert png(out).size == (2 * 3 * inspect.THUMB_PX, inspect.THUMB_PX + 2 * inspect.TITLE_PX)


def write_events(folder: Path, values: dict[str, list[tuple[int, float]]]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(folder)) as writer:
        for tag, points in values.items():
            for step, value in points:
                writer.add_scalar(tag, value, step)


def test_plot_runs_overlays_runs_one_png_per_namespace(tmp_path, capsys):
    plot = tool("plot_runs")
    steps = range(1, 6)
    for run, scale in (("run_a", 1.0), ("run_b", 2.0)):
        write_events(tmp_path / run / "tb", {
            "loss/total": [(s, scale / s) for s in steps], "loss/level0": [(s, scale / s) for s in steps],
            "optim/lr": [(s, 1e-4 * s) for s in steps], "time/samples_per_s": [(s, 100.0 * scale) for s in steps]})
    write_events(tmp_path / "run_b" / "tb", {"eval/knn_top1": [(5, 0.5)]})  # a second events file (the probe)
    out = tmp_path / "plots"
    assert plot.main([str(tmp_path / "run_a"), str(tmp_path / "run_b"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "run_a: 4 scalars, last step 5" in text and "run_b: 5 scalars, last step 5" in text
    assert sorted(p.name for p in out.iterdir()) == ["eval.png", "loss.png", "optim.png", "time.png"]
    height = plot.PANEL_H_PX + plot.LEGEND_PX
    assert png(out / "loss.png").size == (2 * plot.PANEL_W_PX, height)
    assert png(out / "optim.png").size == (plot.PANEL_W_PX, height)
    pixels = np.asarray(png(out / "loss.png").convert("RGB")).reshape(-1, 3).astype(int)
    for colour in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):  # matplotlib's C0 and C1: both runs drawn
        assert (np.abs(pixels - colour).sum(1) < 30).sum() > 50


def test_plot_runs_keeps_the_last_value_of_a_step_logged_twice(tmp_path):
    plot = tool("plot_runs")
    write_events(tmp_path / "tb", {"loss/total": [(1, 1.0), (2, 0.9), (3, 0.8)]})
    write_events(tmp_path / "tb", {"loss/total": [(3, 0.7), (4, 0.6)]})  # resumed from step 2
    xs, ys = plot.read_scalars(tmp_path / "tb", x_axis="step")["loss/total"]
    assert xs == [1, 2, 3, 4] and ys == pytest.approx([1.0, 0.9, 0.7, 0.6])


@pytest.mark.slow
def test_gpu_benchmark_runs_at_toy_size_and_prints_its_table():
    """benchmarks/gpu.sh --toy: tiny models, 2 steps, on the CPU here; the table a user pastes."""
    run = subprocess.run([str(ROOT / "benchmarks" / "gpu.sh"), "--toy"], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHON": sys.executable})
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines[0].startswith("`benchmarks/gpu.sh --toy` on ")
    table = [line for line in lines if line.startswith("|")]
    columns = [c.strip() for c in table[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert columns == ["date", "device", "torch", "case", "batch", "step (ms)", "throughput",
                                            "TFLOP per step", "achieved TFLOP/s", "MFU", "peak memory (GiB)",
                                            "RoPE share of step"]
    assert [r[3].split(",")[0] for r in rows] == ["toy ViT image 64 px", "toy ViT video 8x64 px",
                                                  "data pipeline", "data pipeline"]
    for r in rows:
        assert len(r) == len(columns) and r[2] == torch.__version__
        assert float(r[5]) > 0 and float(r[6].split()[0]) > 0
    for r in rows[:2]:  # model steps: counted FLOPs, memory, RoPE's share
        assert float(r[7]) > 0 and float(r[10]) > 0 and r[11].endswith("%")
