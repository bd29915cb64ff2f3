"""Writers: folder -> shards -> samples round trip (pixels, labels, colour modes), the manifest,
and the `jepa data shards|synth` handlers."""

import argparse
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jepa.commands import data as data_verb
from jepa.data.skips import SkipLog
from jepa.data.streams import expand_urls, read_shard
from jepa.data.transforms import decode_image, parse_label
from jepa.errors import UserError

RNG = np.random.default_rng(0)
H, W = 6, 7


def save(img: Image.Image, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)


def png16_rgb(arr: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one), written by hand."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None].astype(float) / 255
    return rgb.astype(float) * a + 255 * (1 - a)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """Images in every colour mode under cat/ and dog/, one unlabelled, and three unusable files."""
    root = tmp_path_factory.mktemp("folder")
    expected = {}
    rgb = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
    save(Image.fromarray(rgb), root / "cat/rgb.png")
    expected["cat/rgb.png"] = rgb
    gray = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    save(Image.fromarray(gray, "L"), root / "cat/gray.png")
    expected["cat/gray.png"] = np.repeat(gray[..., None], 3, 2)
    rgba = RNG.integers(0, 256, (H, W, 4), dtype=np.uint8)
    save(Image.fromarray(rgba, "RGBA"), root / "cat/rgba.png")
    expected["cat/rgba.png"] = over_white(rgba[..., :3], rgba[..., 3])
    la = RNG.integers(0, 256, (H, W, 2), dtype=np.uint8)
    save(Image.fromarray(la, "LA"), root / "dog/la.png")
    expected["dog/la.png"] = over_white(np.repeat(la[..., :1], 3, 2), la[..., 1])
    palette = RNG.integers(0, 256, (16, 3), dtype=np.uint8)
    index = RNG.integers(0, 16, (H, W), dtype=np.uint8)
    pal = Image.fromarray(index, "P")
    pal.putpalette(palette.flatten().tolist())
    save(pal, root / "dog/palette.png")
    expected["dog/palette.png"] = palette[index]
    save(pal, root / "dog/palette_transparent.png", transparency=3)
    alpha = np.where(index == 3, 0, 255).astype(np.uint8)
    expected["dog/palette_transparent.png"] = over_white(palette[index], alpha)
    wide = RNG.integers(0, 65536, (H, W), dtype=np.uint16)
    save(Image.fromarray(wide), root / "dog/gray16.png")  # mode I;16
    expected["dog/gray16.png"] = np.repeat((wide >> 8).astype(np.uint8)[..., None], 3, 2)
    wide_rgb = RNG.integers(0, 65536, (H, W, 3), dtype=np.uint16)
    (root / "dog/rgb16.png").write_bytes(png16_rgb(wide_rgb))
    expected["dog/rgb16.png"] = (wide_rgb >> 8).astype(np.uint8)
    save(Image.fromarray(rgb), root / "loose.png")  # directly under the root: unlabelled
    expected["loose.png"] = rgb
    (root / "cat/notes.txt").write_text("not an image")
    (root / "cat/empty.png").write_bytes(b"")
    (root / "dog/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return root, expected


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="jepa")
    data_verb.register(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def read_all(pattern: str):
    log = SkipLog(window=None)
    samples = [s for url in expand_urls(pattern) for s in read_shard(url, log)]
    assert log.failed == 0
    return samples


def test_folder_round_trip_is_lossless_in_every_colour_mode(folder, tmp_path, capsys):
    root, expected = folder
    out = tmp_path / "shards"
    assert run(["data", "shards", "--images", str(root), "--out", str(out), "--shard-size", "3"]) == 0
    assert "wrote 9 image samples in 3 shards" in capsys.readouterr().out
    classes = json.loads((out / "classes.json").read_text())
    assert classes == {"cat": 0, "dog": 1}
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["samples"] for s in manifest["shards"]] == [3, 3, 3] and manifest["samples"] == 9
    assert manifest["skipped"] == {"unsupported extension": 1, "empty file": 1, "unreadable image": 1}
    assert all((out / s["name"]).stat().st_size == s["bytes"] for s in manifest["shards"])
    samples = read_all(manifest["urls"])
    assert len({s.key for s in samples}) == 9
    for sample in samples:
        path = json.loads(sample.members["json"])["path"]
        pixels = decode_image(sample.members["png"]).permute(1, 2, 0).numpy()
        assert np.abs(pixels.astype(float) - expected[path]).max() <= 0.5 + 1e-9, path
        label = parse_label(sample.members)
        assert label == (classes[path.split("/")[0]] if "/" in path else -1), path


def test_shards_are_shuffled_by_seed_and_byte_stable(folder, tmp_path):
    root, _ = folder
    for name in ("a", "b"):
        run(["data", "shards", "--images", str(root), "--out", str(tmp_path / name), "--shard-size", "100"])
    run(["data", "shards", "--images", str(root), "--out", str(tmp_path / "c"), "--shard-size", "100",
         "--no-shuffle"])
    a, b, c = ((tmp_path / n / "shard-000000.tar").read_bytes() for n in "abc")
    assert a == b and a != c
    order = [json.loads(s.members["json"])["path"] for s in read_all(str(tmp_path / "c/shard-000000.tar"))]
    assert order == sorted(order, key=lambda p: Path(p).parts)


def test_synth_images_and_videos_via_the_handler(tmp_path):
    for kind, extra in (("image", []), ("video", ["--frames", "6"])):
        out = tmp_path / kind
        argv = ["data", "synth", "--kind", kind, "--out", str(out), "--n", "10", "--classes", "4",
                "--size", "16", "--shard-size", "4", "--seed", "1", *extra]
        assert run(argv) == 0
        manifest = json.loads((out / "manifest.json").read_text())
        assert [s["samples"] for s in manifest["shards"]] == [4, 4, 2]
        assert manifest["kind"] == kind and len(manifest["classes"]) == 4
        samples = read_all(manifest["urls"])
        assert [parse_label(s.members) for s in samples] == [i % 4 for i in range(10)]
        assert all(("png" if kind == "image" else "mp4") in s.members for s in samples)
        first = (out / "shard-000000.tar").read_bytes()
        run(argv[:5] + [str(tmp_path / "again")] + argv[6:])
        assert (tmp_path / "again/shard-000000.tar").read_bytes() == first  # deterministic from the seed


@pytest.mark.parametrize("argv, message", [
    (["data", "synth", "--kind", "image", "--n", "4", "--classes", "99"], "2..32 classes"),
    (["data", "synth", "--kind", "video", "--n", "4", "--classes", "4", "--frames", "1"], "--frames"),
    (["data", "synth", "--kind", "image", "--n", "4", "--classes", "4", "--size", "15"], "--size"),
])
def test_synth_rejects_bad_arguments(tmp_path, argv, message):
    with pytest.raises(UserError, match=message):
        run(argv + ["--out", str(tmp_path / "x")])


def test_shards_from_a_folder_without_usable_files_is_a_user_error(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in/readme.txt").write_text("hi")
    with pytest.raises(UserError, match="no usable image files"):
        run(["data", "shards", "--images", str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    with pytest.raises(UserError, match="is not a folder"):
        run(["data", "shards", "--videos", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])


@pytest.mark.parametrize("argv", [["data"], ["data", "shards"], ["data", "synth"]])
def test_every_verb_has_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        run(argv + ["--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_video_folder_round_trip(tmp_path):
    from jepa.data.video import decode_clip, encode_mp4

    frames = RNG.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    (tmp_path / "in/jump").mkdir(parents=True)
    (tmp_path / "in/jump/a.mp4").write_bytes(encode_mp4(frames, fps=5))
    (tmp_path / "in/jump/b.mp4").write_bytes(b"not a video")
    run(["data", "shards", "--videos", str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert manifest["samples"] == 1 and manifest["skipped"] == {"unreadable video": 1}
    (sample,) = read_all(manifest["urls"])
    assert parse_label(sample.members) == 0
    assert decode_clip(sample.members["mp4"], [0, 4]).shape == (2, 3, 16, 16)


def test_grayscale_round_trip_through_jpeg_decodes_to_three_channels():
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 77, np.uint8), "L").save(buf, format="JPEG", quality=95)
    pixels = decode_image(buf.getvalue())
    assert pixels.shape == (3, 8, 8) and abs(int(pixels.float().mean()) - 77) <= 1
