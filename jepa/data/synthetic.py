"""Procedurally generated labelled images and videos, deterministic from (seed, index).

Images: the class is a (shape, texture) pair: 8 shapes x 4 textures (solid, stripes, checker,
dots), so up to 32 classes; class c has shape c % 8 and texture c // 8. Everything else varies
within a class: object colours, size, rotation, position, and a background gradient in random
colours with noise. Mean pixel colour therefore says nothing about the class, while features that
see shape and texture separate the classes linearly.

Stripes (images, `task="stripes"`): the class is the orientation of stripes that cover the whole
image, `classes` orientations evenly spaced over 180 degrees (jittered by up to a quarter of the
gap). Period and phase are random per image; the colours change cell by cell (8 x 8 cells, one per
8-px patch of a 64-px image), each cell drawing a light and a dark colour, and which phase of the
stripes is the light one is random per image. So no cell's colours say anything about another's:
what the regions of an image share, and so what is worth predicting from the visible part, is the
orientation, period, phase and polarity of the stripes. A linear read of the pixels cannot tell the
orientation (the phase is random), a model that sees oriented edges can.

Videos: the class is the direction of motion, `classes` directions evenly spaced around the circle
(jittered by up to a quarter of the gap). Task `object`: one object of random shape, colour and
size moves at a random speed over a static background (gradient, noise, two static distractor
shapes) and wraps around the frame edges (a torus). Task `flow`: the whole frame is a mosaic of
random colours (cells of 4 or 8 px) that slides at a random speed, wrapping around: every region
moves alike, so the motion is what the regions of a clip share (the video twin of the stripes).
In both, every frame on its own has the same distribution in every class (position uniform,
appearance independent of the label): only the motion between frames tells the class.
"""

from __future__ import annotations

import math

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "star", "hexagon")
TEXTURES = ("solid", "stripes", "checker", "dots")
MAX_IMAGE_CLASSES = len(SHAPES) * len(TEXTURES)
MAX_STRIPE_CLASSES = 16
TASKS = {"image": ("shapes", "stripes"), "video": ("object", "flow")}
"""What the class of a synthetic sample is: a shape x texture pair or a stripe orientation; the direction
of a moving object or of a sliding mosaic. The first of each kind is its default."""
MOSAIC_CELLS = 8
"""Stripe images change colours on a MOSAIC_CELLS x MOSAIC_CELLS grid of cells. With larger cells,
neighbouring patches share colours and pretraining learns colour codes instead of orientation; see
docs/recipes.md."""
MAX_VIDEO_CLASSES = 16
SUPERSAMPLE = 2
"""Render at this multiple of the output size and average down: smooth, anti-aliased edges."""


def class_names(kind: str, classes: int, task: str = "shapes") -> list[str]:
    """Names of the synthetic classes in label order: `circle-solid`, ..., `ori000`, `ori045`, ... or
    `dir000`, `dir090`, ..."""
    if kind == "video":
        return [f"dir{round(360 * c / classes):03d}" for c in range(classes)]
    if task == "stripes":
        return [f"ori{round(180 * c / classes):03d}" for c in range(classes)]
    return [f"{SHAPES[c % len(SHAPES)]}-{TEXTURES[c // len(SHAPES)]}" for c in range(classes)]


def check_classes(kind: str, classes: int, task: str | None = None) -> None:
    if task is not None and task not in TASKS[kind]:
        raise ValueError(f"synthetic {kind} tasks are {', '.join(TASKS[kind])}; got {task!r}")
    top = MAX_VIDEO_CLASSES if kind == "video" else MAX_STRIPE_CLASSES if task == "stripes" else MAX_IMAGE_CLASSES
    if not 2 <= classes <= top:
        name = f"{task} images" if kind == "image" else "videos"
        raise ValueError(f"synthetic {name} have 2..{top} classes, got {classes}")


def sample_rng(seed: int, index: int, kind: str) -> np.random.Generator:
    return np.random.default_rng([seed, index, 0 if kind == "image" else 1])


def label_of(index: int, classes: int) -> int:
    """Balanced labels that cycle through the classes, so every shard holds every class."""
    return index % classes


def render_image(rng: np.random.Generator, *, size: int, label: int) -> np.ndarray:
    """One (size, size, 3) uint8 image of class `label`."""
    s = size * SUPERSAMPLE
    img = _background(rng, s)
    radius = rng.uniform(0.2, 0.34) * s
    centre = rng.uniform(radius, s - radius, size=2)
    u, v = _object_coords(s, centre, radius, rng.uniform(0, 2 * math.pi), wrap=False)
    mask = _shape_mask(SHAPES[label % len(SHAPES)], u, v)
    pattern = _texture(TEXTURES[label // len(SHAPES)], u, v, rng)
    a, b = rng.uniform(0, 1, size=(2, 3))
    fg = pattern[..., None] * a + (1 - pattern[..., None]) * b
    img = np.where(mask[..., None], fg, img)
    return _downsample(img)


def render_stripes(rng: np.random.Generator, *, size: int, label: int, classes: int) -> np.ndarray:
    """One (size, size, 3) uint8 image of stripes at orientation `label` of `classes`."""
    s = size * SUPERSAMPLE
    gap = math.pi / classes
    theta = label * gap + rng.uniform(-gap / 4, gap / 4)
    period = rng.uniform(6, 12) * SUPERSAMPLE  # output pixels: under a patch of 8 to a patch and a half
    y, x = np.mgrid[0:s, 0:s] + 0.5
    wave = np.cos(2 * math.pi * (x * math.cos(theta) + y * math.sin(theta)) / period + rng.uniform(0, 2 * math.pi))
    cell = -(-s // MOSAIC_CELLS)
    # A light and a dark colour per cell: colours change from cell to cell, the stripes' polarity
    # (which phase is light, random per image) holds across the image.
    a, b = (np.kron(rng.uniform(lo, lo + 0.45, size=(MOSAIC_CELLS, MOSAIC_CELLS, 3)), np.ones((cell, cell, 1)))[:s, :s]
            for lo in rng.permutation([0.55, 0.0]))
    img = np.where((wave > 0)[..., None], a, b)
    return _downsample(np.clip(img + rng.normal(0, 0.03, size=img.shape), 0, 1))


def render_video(rng: np.random.Generator, *, size: int, frames: int, label: int, classes: int) -> np.ndarray:
    """One (frames, size, size, 3) uint8 clip whose object moves in direction `label` of `classes`."""
    s = size * SUPERSAMPLE
    background = _background(rng, s)
    for _ in range(2):  # static distractors: a single frame shows several objects, not one
        r = rng.uniform(0.08, 0.14) * s
        u, v = _object_coords(s, rng.uniform(0, s, size=2), r, rng.uniform(0, 2 * math.pi), wrap=True)
        background = np.where(_shape_mask(SHAPES[rng.integers(len(SHAPES))], u, v)[..., None],
                              rng.uniform(0, 1, size=3), background)
    shape, colour = SHAPES[rng.integers(len(SHAPES))], rng.uniform(0, 1, size=3)
    radius, angle = rng.uniform(0.1, 0.16) * s, rng.uniform(0, 2 * math.pi)
    gap = 2 * math.pi / classes
    direction = label * gap + rng.uniform(-gap / 4, gap / 4)
    speed = rng.uniform(0.035, 0.06) * s  # per frame: well under half the frame, so the wrap is unambiguous
    velocity = speed * np.array([math.cos(direction), math.sin(direction)])
    start = rng.uniform(0, s, size=2)
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        u, v = _object_coords(s, (start + t * velocity) % s, radius, angle, wrap=True)
        out[t] = _downsample(np.where(_shape_mask(shape, u, v)[..., None], colour, background))
    return out


def render_flow(rng: np.random.Generator, *, size: int, frames: int, label: int, classes: int) -> np.ndarray:
    """One (frames, size, size, 3) uint8 clip of a colour mosaic sliding in direction `label` of `classes`."""
    s = size * SUPERSAMPLE
    cell = int(rng.choice((4, 8))) * SUPERSAMPLE
    cells = -(-s // cell)
    mosaic = np.kron(rng.uniform(0, 1, size=(cells, cells, 3)), np.ones((cell, cell, 1)))  # periodic: wraps whole
    gap = 2 * math.pi / classes
    direction = label * gap + rng.uniform(-gap / 4, gap / 4)
    speed = rng.uniform(1.5, 3.0) * SUPERSAMPLE  # 1.5-3 output pixels per frame: under one cell (4 or 8 px)
    velocity = speed * np.array([math.cos(direction), math.sin(direction)])
    start = rng.uniform(0, len(mosaic), size=2)
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        dx, dy = np.round(start + t * velocity).astype(int)
        frame = np.roll(mosaic, (dy, dx), axis=(0, 1))[:s, :s]
        out[t] = _downsample(np.clip(frame + rng.normal(0, 0.03, size=frame.shape), 0, 1))
    return out


def _background(rng: np.random.Generator, s: int) -> np.ndarray:
    """A linear gradient between two random colours in a random direction, plus pixel noise."""
    a, b = rng.uniform(0, 1, size=(2, 3))
    theta = rng.uniform(0, 2 * math.pi)
    y, x = np.mgrid[0:s, 0:s] / s
    ramp = (x * math.cos(theta) + y * math.sin(theta)) / math.sqrt(2) + 0.5
    img = a + (b - a) * ramp[..., None]
    return np.clip(img + rng.normal(0, 0.03, size=img.shape), 0, 1)


def _object_coords(s: int, centre, radius: float, angle: float, *, wrap: bool) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in the object's frame (unit = radius, rotated by `angle`); torus if `wrap`."""
    y, x = np.mgrid[0:s, 0:s] + 0.5
    dx, dy = x - centre[0], y - centre[1]
    if wrap:
        dx, dy = (dx + s / 2) % s - s / 2, (dy + s / 2) % s - s / 2
    c, si = math.cos(angle), math.sin(angle)
    return (c * dx + si * dy) / radius, (-si * dx + c * dy) / radius


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r = np.hypot(u, v)
    if shape == "circle":
        return r < 1
    if shape == "square":
        return np.maximum(abs(u), abs(v)) < 0.8
    if shape == "diamond":
        return abs(u) + abs(v) < 1
    if shape == "cross":
        return ((abs(u) < 0.33) & (abs(v) < 1)) | ((abs(v) < 0.33) & (abs(u) < 1))
    if shape == "ring":
        return (r < 1) & (r > 0.55)
    if shape == "star":
        return r < 0.55 + 0.45 * np.cos(5 * np.arctan2(v, u))
    if shape == "hexagon":  # three pairs of parallel edges
        return np.max([abs(_along(u, v, a)) for a in (0, math.pi / 3, 2 * math.pi / 3)], 0) < 0.87
    if shape == "triangle":  # three edges, inradius 0.5, circumradius 1
        return np.max([_along(u, v, a) for a in (math.pi / 2, 7 * math.pi / 6, 11 * math.pi / 6)], 0) < 0.5
    raise ValueError(f"unknown shape {shape!r}")


def _along(u: np.ndarray, v: np.ndarray, angle: float) -> np.ndarray:
    """Coordinate along the unit direction at `angle`."""
    return u * math.cos(angle) + v * math.sin(angle)


def _texture(texture: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1 where the first colour shows, 0 for the second; periods in object units, so it scales along."""
    period = rng.uniform(0.35, 0.55)
    if texture == "solid":
        return np.ones_like(u)
    if texture == "stripes":
        return (np.floor(u / period) % 2).astype(float)
    if texture == "checker":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(float)
    if texture == "dots":
        du, dv = u / period % 1 - 0.5, v / period % 1 - 0.5
        return (np.hypot(du, dv) < 0.3).astype(float)
    raise ValueError(f"unknown texture {texture!r}")


def _downsample(img: np.ndarray) -> np.ndarray:
    s = img.shape[0] // SUPERSAMPLE
    pooled = img.reshape(s, SUPERSAMPLE, s, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.round(pooled * 255).astype(np.uint8)
