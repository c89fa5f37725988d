"""Augmentations for real images, boxes kept on the pixels they cover.

Each is a config field (:class:`~minirccn.config.FasterRCNNConfig`), off by default
(``shapes`` trains exactly as before); the data-derived defaults
(:mod:`minirccn.config.autoconfig`) turn colour jitter and scale + crop on for other data.

Boxes are ``(G, 4)`` float ``(x1, y1, x2, y2)`` in continuous pixel coordinates
(pixel column ``c`` covers ``[c, c+1)``), so every geometric map below is exact:

==============  =========================================  ==============================
transform       pixels                                     boxes
==============  =========================================  ==============================
vflip           row ``r`` -> ``H - 1 - r``                 ``y1' = H - y2``, ``y2' = H - y1``
rot90 (k=1)     ``np.rot90``: counter-clockwise;           ``(y1, W - x2, y2, W - x1)``
                pixel ``(r, c)`` -> ``(W - 1 - c, r)``
scale_crop      resize by ``f``, crop an ``h x w`` window  ``f * box - (x0, y0)``, clipped
                at ``(y0, x0)`` when ``f > 1``             to the window; a box keeping
                                                           less than ``min_visible`` of its
                                                           area (or under 1 px) is dropped
color_jitter    brightness, contrast, saturation, hue      unchanged
==============  =========================================  ==============================

Colour jitter follows torchvision's ``ColorJitter`` formulas (in this fixed order):
brightness ``x * b``; contrast ``(x - m) * c + m`` with ``m`` the mean grey level;
saturation ``g + s * (x - g)`` with ``g`` the pixel's grey level
(``0.299 R + 0.587 G + 0.114 B``); hue: the HSV hue shifted by ``h`` turns.
Factors are drawn uniformly: ``b`` in ``[1 - brightness, 1 + brightness]`` and so on,
``h`` in ``[-hue, hue]``.

:func:`apply` runs the ones a config turns on, drawing only from ``rng``, and
draws nothing at all when every one is off.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

GREY = np.array([0.299, 0.587, 0.114], np.float32)


def vflip(image: np.ndarray, boxes: np.ndarray):
    """Mirror top-bottom. ``image`` ``(H, W, 3)`` uint8, ``boxes`` ``(G, 4)`` float -> same."""
    h = image.shape[0]
    out = boxes.copy()
    out[:, 1] = h - boxes[:, 3]
    out[:, 3] = h - boxes[:, 1]
    return np.ascontiguousarray(image[::-1]), out


def rot90(image: np.ndarray, boxes: np.ndarray, k: int):
    """Rotate ``k`` quarter turns counter-clockwise (``np.rot90``); ``(H, W, 3)`` -> ``(W, H, 3)``
    for odd ``k``. A point ``(x, y)`` of a ``W``-wide image goes to ``(y, W - x)`` per turn."""
    k = int(k) % 4
    out = boxes.copy()
    for _ in range(k):
        w = image.shape[1]
        x1, y1, x2, y2 = out[:, 0].copy(), out[:, 1].copy(), out[:, 2].copy(), out[:, 3].copy()
        out[:, 0], out[:, 1], out[:, 2], out[:, 3] = y1, w - x2, y2, w - x1
        image = np.rot90(image)
    return np.ascontiguousarray(image), out


def scale_crop(image, boxes, labels, factor: float, offset=(0.0, 0.0), min_visible: float = 0.3):
    """Resize by ``factor``; when it grew, crop the original ``h x w`` window at ``offset``.

    Args:
        image: ``(H, W, 3)`` uint8.
        boxes: ``(G, 4)`` float; labels: ``(G,)`` int64.
        factor: > 0; the image becomes ``(floor(H f), floor(W f))`` (bilinear).
        offset: ``(u, v)`` in ``[0, 1]``: the window's top-left corner is
            ``(round(u * (H' - H)), round(v * (W' - W)))`` (only when ``factor > 1``).
        min_visible: drop a box that keeps less than this share of its (scaled) area.

    Returns:
        ``(image, boxes, labels)``; boxes clipped to the new image.
    """
    h, w = image.shape[:2]
    nh, nw = max(int(h * factor), 1), max(int(w * factor), 1)
    if (nh, nw) != (h, w):
        image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    ratios = np.array([nw / w, nh / h, nw / w, nh / h], dtype=boxes.dtype)
    boxes = boxes * ratios
    y0 = x0 = 0
    if nh > h or nw > w:
        y0 = int(round(offset[0] * max(nh - h, 0)))
        x0 = int(round(offset[1] * max(nw - w, 0)))
        image = image[y0 : y0 + min(h, nh), x0 : x0 + min(w, nw)]
    ch, cw = image.shape[:2]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    shifted = boxes - np.array([x0, y0, x0, y0], dtype=boxes.dtype)
    clipped = shifted.copy()
    clipped[:, 0::2] = np.clip(shifted[:, 0::2], 0, cw)
    clipped[:, 1::2] = np.clip(shifted[:, 1::2], 0, ch)
    bw, bh = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    keep = (bw >= 1) & (bh >= 1) & (bw * bh >= min_visible * area)
    return np.ascontiguousarray(image), clipped[keep], labels[keep]


def color_jitter(image, brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0) -> np.ndarray:
    """Apply the four colour factors (module docstring) to ``(H, W, 3)`` uint8; same shape."""
    x = image.astype(np.float32)
    if brightness != 1.0:
        x = x * np.float32(brightness)
    if contrast != 1.0:
        m = np.float32((np.clip(x, 0, 255) @ GREY).mean())
        x = (x - m) * np.float32(contrast) + m
    if saturation != 1.0:
        g = (np.clip(x, 0, 255) @ GREY)[..., None]
        x = g + np.float32(saturation) * (x - g)
    out = np.clip(x + 0.5, 0, 255).astype(np.uint8)
    if hue != 0.0:
        hsv = np.asarray(Image.fromarray(out).convert("HSV")).copy()
        hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + int(round(hue * 256))) % 256).astype(
            np.uint8
        )
        out = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
    return np.ascontiguousarray(out)


def enabled(config) -> bool:
    """True if ``config`` turns on any augmentation of this module."""
    return bool(
        config.vflip
        or config.rot90
        or config.jitter_brightness
        or config.jitter_contrast
        or config.jitter_saturation
        or config.jitter_hue
        or config.scale_jitter
    )


def apply(image, boxes, labels, config, rng: np.random.Generator):
    """The augmentations ``config`` turns on, in the order vflip, rot90, scale_crop, colour.

    Args:
        image: ``(H, W, 3)`` uint8 (already resized to the network's input size).
        boxes: ``(G, 4)`` float; labels ``(G,)`` int64.
        config: the fields ``vflip``, ``rot90``, ``jitter_*``, ``scale_jitter``,
            ``crop_min_visible``.
        rng: every random draw.

    Returns:
        ``(image, boxes, labels)``.
    """
    if config.vflip and rng.random() < 0.5:
        image, boxes = vflip(image, boxes)
    if config.rot90:
        image, boxes = rot90(image, boxes, int(rng.integers(4)))
    if config.scale_jitter:
        lo, hi = (float(v) for v in config.scale_jitter)
        factor = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        offset = (float(rng.random()), float(rng.random()))
        image, boxes, labels = scale_crop(
            image, boxes, labels, factor, offset, config.crop_min_visible
        )
    b, c, s, h = (
        config.jitter_brightness,
        config.jitter_contrast,
        config.jitter_saturation,
        config.jitter_hue,
    )
    if b or c or s or h:
        image = color_jitter(
            image,
            float(rng.uniform(1 - b, 1 + b)) if b else 1.0,
            float(rng.uniform(1 - c, 1 + c)) if c else 1.0,
            float(rng.uniform(1 - s, 1 + s)) if s else 1.0,
            float(rng.uniform(-h, h)) if h else 0.0,
        )
    return image, boxes, labels
