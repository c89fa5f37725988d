"""``shapes``: a synthetic detection dataset drawn with Pillow from a seed.

Every image is generated on demand from a ``numpy.random.Generator`` seeded by
``(seed, split, index)``, so the same seed gives the same pixels bit for bit,
the splits never share an image, and nothing is stored on disk.

An image is a smooth two-colour gradient, sometimes with faint stripes, plus
mild Gaussian noise; on it sit 0 to ``max_objects`` filled circles, squares and
triangles (squares and triangles rotated), each in a colour chosen to stand out
from the background under it. Object sizes are log-uniform in
``[min_object_size, max_object_size]`` (as many small objects as large ones per
octave). Objects may overlap a little (box IoU below ``max_overlap_iou``) so
each stays identifiable. A box is the exact tight box of the drawn pixels:
if the shape covers pixel columns ``c0..c1`` and rows ``r0..r1`` then the box is
``(c0, r0, c1 + 1, r1 + 1)`` (continuous coordinates, see :mod:`.common`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from minirccn.core.errors import MinirccnError
from minirccn.data.common import BACKGROUND, DetectionDataset, make_sample

#: class names, alphabetical so that VOC/COCO/CSV exports load back with the same labels
CLASS_NAMES = [BACKGROUND, "circle", "square", "triangle"]
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ShapesConfig:
    """Everything that decides what ``shapes`` images look like."""

    image_size: int = 128  # images are image_size x image_size RGB
    min_object_size: int = 8  # smallest longer side of an object's box, pixels
    max_object_size: int = 80  # largest longer side of an object's box, pixels
    max_objects: int = 4  # objects per image are 1..max_objects (or 0, see below)
    empty_fraction: float = 0.1  # share of images with no object at all
    max_overlap_iou: float = 0.3  # two objects' boxes never overlap more than this IoU
    max_covered: float = 0.5  # ... nor cover more than this share of the smaller box
    min_contrast: float = 110.0  # RGB distance object colour vs the background under it
    noise_std: float = 6.0  # std of the Gaussian pixel noise (0..255 scale)
    stripe_probability: float = 0.5  # share of backgrounds with faint stripes
    train_size: int = 2000  # images in split "train"
    val_size: int = 200  # images in split "val"
    test_size: int = 200  # images in split "test"

    def split_size(self, split: str) -> int:
        return {"train": self.train_size, "val": self.val_size, "test": self.test_size}[split]


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The Generator that draws image ``index`` of ``split``: seeded by ``(seed, split, index)``."""
    return np.random.default_rng([int(seed), SPLITS.index(split), int(index)])


def _background(rng: np.random.Generator, cfg: ShapesConfig) -> np.ndarray:
    """A gradient between two colours, sometimes with faint stripes: ``(3, S, S)`` float32.

    Channels first, so every array operation runs along whole rows (a trailing
    axis of length 3 makes NumPy's inner loops 3 elements long, ~20x slower).
    """
    s = cfg.image_size
    c0, c1 = rng.uniform(30.0, 225.0, size=(2, 3, 1, 1)).astype(np.float32)
    a = rng.uniform(0.0, 2.0 * np.pi)
    grid = np.linspace(0.0, 1.0, s, dtype=np.float32)
    t = np.float32(np.cos(a)) * grid[None, :] + np.float32(np.sin(a)) * grid[:, None]  # (S, S)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0 + t[None, :, :] * (c1 - c0)
    if rng.random() < cfg.stripe_probability:
        b = rng.uniform(0.0, np.pi)
        period = rng.uniform(6.0, 24.0)
        amplitude = rng.uniform(4.0, 12.0)
        x = np.arange(s, dtype=np.float32)
        phase = (
            np.float32(np.cos(b)) * x[None, :] + np.float32(np.sin(b)) * x[:, None]
        ) / np.float32(period)
        img += np.float32(amplitude) * np.sin(np.float32(2.0 * np.pi) * phase)
    return img


def _outline(rng: np.random.Generator, label: int, size: float, s: int):
    """Pillow drawing of one shape whose box's longer side is about ``size``.

    Returns:
        ``(kind, coords)``: ``("ellipse", [x0, y0, x1, y1])`` or ``("polygon", [(x, y), ...])``.
    """
    cx, cy = rng.uniform(size / 2, s - size / 2, size=2)
    if CLASS_NAMES[label] == "circle":
        r = size / 2
        return "ellipse", [cx - r, cy - r, cx + r - 1, cy + r - 1]
    if CLASS_NAMES[label] == "square":
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    else:  # equilateral triangle
        angles = np.deg2rad([90.0, 210.0, 330.0])
        corners = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    theta = rng.uniform(0.0, np.pi / 2 if label == CLASS_NAMES.index("square") else 2 * np.pi / 3)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    pts = corners @ rot.T
    extent = (pts.max(axis=0) - pts.min(axis=0)).max()
    pts = pts * (size - 1) / extent
    pts = pts - (pts.max(axis=0) + pts.min(axis=0)) / 2 + [cx, cy]
    return "polygon", [tuple(p) for p in pts.tolist()]


def _mask(kind: str, coords, s: int) -> np.ndarray:
    """Rasterise a shape: ``(S, S)`` bool, True on the pixels Pillow fills."""
    im = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(im)
    getattr(draw, kind)(coords, fill=255)
    return np.asarray(im) > 0


def _tight_box(mask: np.ndarray):
    """``(x1, y1, x2, y2)`` of the filled pixels, or None for an empty mask."""
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    if len(cols) == 0:
        return None
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def _overlaps_too_much(box, boxes, cfg: ShapesConfig) -> bool:
    """True if ``box`` overlaps any of ``boxes`` by IoU or coverage beyond the config's limits."""
    if not boxes:
        return False
    b = np.asarray(boxes)
    iw = np.clip(np.minimum(b[:, 2], box[2]) - np.maximum(b[:, 0], box[0]), 0, None)
    ih = np.clip(np.minimum(b[:, 3], box[3]) - np.maximum(b[:, 1], box[1]), 0, None)
    inter = iw * ih
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iou = inter / (area + areas - inter)
    covered = inter / np.minimum(area, areas)
    return bool((iou >= cfg.max_overlap_iou).any() or (covered > cfg.max_covered).any())


def _colour(rng: np.random.Generator, under: np.ndarray, cfg: ShapesConfig) -> np.ndarray:
    """A fill colour at least ``min_contrast`` away from ``under`` (the mean background colour).

    Tries random colours; if none is far enough after 20 tries, keeps the farthest.
    """
    best, best_d = None, -1.0
    for _ in range(20):
        c = rng.uniform(0.0, 255.0, size=3)
        d = float(np.linalg.norm(c - under))
        if d > best_d:
            best, best_d = c, d
        if d >= cfg.min_contrast:
            break
    return best.astype(np.float32)


def draw_image(rng: np.random.Generator, cfg: ShapesConfig = ShapesConfig()):
    """Draw one image and its objects from ``rng``.

    Returns:
        ``(image, boxes, labels)``: ``(S, S, 3)`` uint8, ``(G, 4)`` float32, ``(G,)`` int64.
    """
    s = cfg.image_size
    img = _background(rng, cfg)
    if rng.random() < cfg.empty_fraction:
        n_objects = 0
    else:
        n_objects = int(rng.integers(1, cfg.max_objects + 1))
    boxes, labels = [], []
    lo, hi = np.log(cfg.min_object_size), np.log(min(cfg.max_object_size, s))
    for _ in range(n_objects):
        for _attempt in range(30):
            label = int(rng.integers(1, len(CLASS_NAMES)))
            size = float(np.exp(rng.uniform(lo, hi)))
            kind, coords = _outline(rng, label, size, s)
            mask = _mask(kind, coords, s)
            box = _tight_box(mask)
            if box is not None and not _overlaps_too_much(box, boxes, cfg):
                break
        else:
            continue  # no room left for another object: the image has fewer
        img[:, mask] = _colour(rng, img[:, mask].mean(axis=1), cfg)[:, None]
        boxes.append(box)
        labels.append(label)
    if cfg.noise_std > 0:
        img += cfg.noise_std * rng.standard_normal(img.shape, dtype=np.float32)
    np.clip(np.rint(img, out=img), 0, 255, out=img)
    image = img.astype(np.uint8).transpose(1, 2, 0)  # (S, S, 3)
    return (
        np.ascontiguousarray(image),
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(labels, dtype=np.int64),
    )


class ShapesDataset(DetectionDataset):
    """The synthetic ``shapes`` dataset (see the module docstring).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        seed: non-negative int; with ``split`` and the index it seeds each image.
        config: a :class:`ShapesConfig` (sizes, counts, noise).
    """

    def __init__(self, split: str = "train", seed: int = 0, config: ShapesConfig | None = None):
        if split not in SPLITS:
            raise MinirccnError(
                f"shapes: unknown split {split!r}; choose one of {', '.join(SPLITS)}"
            )
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise MinirccnError(f"shapes: seed must be a non-negative integer, got {seed!r}")
        self.config = config or ShapesConfig()
        self.split = split
        self.seed = int(seed)
        self.class_names = list(CLASS_NAMES)
        self.name = f"shapes-{split}"

    def __len__(self) -> int:
        return self.config.split_size(self.split)

    def _load(self, index: int) -> dict:
        image, boxes, labels = draw_image(image_rng(self.seed, self.split, index), self.config)
        return make_sample(
            image, boxes, labels, np.zeros(len(labels), bool), f"shapes_{self.split}_{index:06d}"
        )
