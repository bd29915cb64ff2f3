"""The synthetic datasets: deterministic, balanced, and hard in the right way (a single video frame
or an image's mean colour says nothing about the class; motion tells a video's class, for a moving
object and for a sliding mosaic alike)."""

import numpy as np
import pytest

from jepa.data import synthetic
from jepa.data.video import decode_clip, encode_mp4

CLASSES, PER_CLASS, SIZE, FRAMES = 8, 12, 32, 10


def nearest_mean_accuracy(features: np.ndarray, labels: np.ndarray, classes: int = CLASSES) -> float:
    """Nearest class mean, fit on half of each class, scored on the other half (features standardised)."""
    features = (features - features.mean(0)) / (features.std(0) + 1e-9)
    test = (np.arange(len(labels)) // classes) % 2 == 1  # labels cycle, so this halves every class
    train = ~test
    means = np.stack([features[train & (labels == c)].mean(0) for c in range(classes)])
    guess = np.argmin(((features[test][:, None] - means[None]) ** 2).sum(-1), axis=1)
    return float((guess == labels[test]).mean())


def shift_between(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """Cyclic (dy, dx) with b ~ roll(a, (dy, dx)), by phase correlation summed over channels."""
    fa, fb = np.fft.fft2(a, axes=(0, 1)), np.fft.fft2(b, axes=(0, 1))
    cross = (fb * np.conj(fa)).sum(-1)
    corr = np.fft.ifft2(cross / (np.abs(cross) + 1e-9)).real
    dy, dx = np.unravel_index(np.argmax(corr), corr.shape)
    size = a.shape[0]
    return (dy + size // 2) % size - size // 2, (dx + size // 2) % size - size // 2


def motion_class(clip: np.ndarray, k: int = 3) -> int:
    """Direction class of the moving object: the shift between frame differences k frames apart.

    The static background cancels in a frame difference; the object's difference pattern moves on.
    """
    clip = clip.astype(float)
    dy, dx = shift_between(clip[k] - clip[0], clip[2 * k] - clip[k])
    angle = np.arctan2(dy, dx) % (2 * np.pi)
    return int(np.round(angle / (2 * np.pi / CLASSES))) % CLASSES


RENDER_VIDEO = {"object": synthetic.render_video, "flow": synthetic.render_flow}


@pytest.fixture(scope="module", params=list(RENDER_VIDEO))
def videos(request) -> tuple[np.ndarray, np.ndarray]:
    labels = np.array([synthetic.label_of(i, CLASSES) for i in range(CLASSES * PER_CLASS)])
    render = RENDER_VIDEO[request.param]
    clips = np.stack([render(synthetic.sample_rng(0, i, "video"), size=SIZE, frames=FRAMES, label=int(label),
                             classes=CLASSES) for i, label in enumerate(labels)])
    return clips, labels


def test_one_frame_cannot_tell_the_class_but_motion_can(videos):
    clips, labels = videos
    first = clips[:, 0].astype(float)
    small = first.reshape(len(first), 4, SIZE // 4, 4, SIZE // 4, 3).mean(axis=(2, 4)).reshape(len(first), -1)
    mean_rgb = first.mean(axis=(1, 2))
    assert nearest_mean_accuracy(small, labels) < 0.3  # chance is 1/8
    assert nearest_mean_accuracy(mean_rgb, labels) < 0.3
    motion = np.array([motion_class(c) for c in clips])
    assert (motion == labels).mean() > 0.9


def test_motion_survives_mp4_coding(videos):
    clips, labels = videos
    right = 0
    for clip, label in list(zip(clips, labels))[:16]:
        decoded = decode_clip(encode_mp4(clip, fps=8), list(range(FRAMES))).permute(0, 2, 3, 1).numpy()
        right += motion_class(decoded) == label
    assert right >= 14


def test_image_mean_colour_cannot_tell_the_class():
    labels = np.array([synthetic.label_of(i, CLASSES) for i in range(CLASSES * PER_CLASS)])
    images = np.stack([synthetic.render_image(synthetic.sample_rng(0, i, "image"), size=SIZE, label=int(label))
                       for i, label in enumerate(labels)]).astype(float)
    assert nearest_mean_accuracy(images.mean(axis=(1, 2)), labels) < 0.3


@pytest.mark.parametrize("kind", ["image", "object", "flow"])
def test_same_seed_same_pixels_other_seed_other_pixels(kind):
    def render(seed):
        rng = synthetic.sample_rng(seed, 5, "image" if kind == "image" else "video")
        if kind == "image":
            return synthetic.render_image(rng, size=16, label=3)
        return RENDER_VIDEO[kind](rng, size=16, frames=3, label=3, classes=4)
    assert np.array_equal(render(0), render(0))
    assert not np.array_equal(render(0), render(1))


def stripe_orientation(img: np.ndarray, classes: int) -> int:
    """Orientation class of the stripes: the peak of the image's power spectrum in the stripes' band."""
    centred = img.astype(float) - img.mean(axis=(0, 1))
    power = (np.abs(np.fft.fft2(centred, axes=(0, 1))) ** 2).sum(-1)
    fy, fx = np.meshgrid(np.fft.fftfreq(img.shape[0]), np.fft.fftfreq(img.shape[1]), indexing="ij")
    band = (np.hypot(fx, fy) > 1 / 14) & (np.hypot(fx, fy) < 1 / 5)  # periods of 5 to 14 px
    peak = np.argmax(np.where(band, power, 0))
    theta = np.arctan2(fy.flat[peak], fx.flat[peak]) % np.pi
    return int(np.round(theta / (np.pi / classes))) % classes


def test_stripes_orientation_is_in_the_pixels_but_not_in_their_colours():
    classes, n, size = 4, 128, 64
    labels = np.array([synthetic.label_of(i, classes) for i in range(n)])
    images = np.stack([synthetic.render_stripes(synthetic.sample_rng(0, i, "image"), size=size, label=int(label),
                                                classes=classes) for i, label in enumerate(labels)])
    # 1-pixel-per-bin spectra limit the angle estimate to a few degrees; the margin between classes is 11
    assert np.mean([stripe_orientation(img, classes) == y for img, y in zip(images, labels)]) > 0.8
    small = images.astype(float).reshape(n, 4, size // 4, 4, size // 4, 3).mean(axis=(2, 4)).reshape(n, -1)
    assert nearest_mean_accuracy(small, labels, classes) < 0.4  # chance is 1/4
    assert nearest_mean_accuracy(images.astype(float).mean(axis=(1, 2)), labels, classes) < 0.4


def test_class_names_and_limits():
    assert synthetic.class_names("image", 10)[:2] == ["circle-solid", "square-solid"]
    assert synthetic.class_names("image", 10)[8] == "circle-stripes"
    assert synthetic.class_names("video", 4) == ["dir000", "dir090", "dir180", "dir270"]
    assert synthetic.class_names("image", 4, "stripes") == ["ori000", "ori045", "ori090", "ori135"]
    with pytest.raises(ValueError):
        synthetic.check_classes("video", synthetic.MAX_VIDEO_CLASSES + 1)
    with pytest.raises(ValueError, match="2..16"):
        synthetic.check_classes("image", 17, "stripes")
    with pytest.raises(ValueError, match="image tasks are shapes, stripes"):
        synthetic.check_classes("image", 4, "spots")
    with pytest.raises(ValueError, match="video tasks are object, flow"):
        synthetic.check_classes("video", 4, "stripes")
