"""Selective search (Uijlings et al., IJCV 2013), written from scratch.

R-CNN's region proposals: about two thousand boxes per image that very likely
contain every object, found without any learning. The algorithm:

1. **Over-segment** the image with Felzenszwalb-Huttenlocher
   (:mod:`minirccn.proposals.segmentation`): small regions that do not cross
   object boundaries.
2. **Group hierarchically**: repeatedly merge the two *adjacent* regions that
   are most similar, until one region covers the image. Every region that ever
   existed (the initial ones and each merge) is a proposal: its bounding box.
3. **Diversify**: objects differ in what makes them a unit (colour, texture,
   being enclosed by another region), so run step 1-2 with several colour
   spaces, several segmentation scales ``k`` and several similarity measures,
   and pool the boxes.

Similarities of regions ``r_i``, ``r_j`` (each in ``[0, 1]``; a strategy sums some):

* colour: histogram intersection ``sum_k min(c_i^k, c_j^k)`` of 25-bin histograms per
  channel (values ``0..255``: bin ``floor(v * 25 / 256)``), concatenated and L1-normalised;
* texture: the same intersection of gradient-orientation histograms: Gaussian derivatives
  (``sigma = 1``) ``g_x, g_y`` of each channel, projected on 8 orientations
  ``theta_o = o * 45 deg`` and rectified (``max(0, cos(theta) g_x + sin(theta) g_y)``: the
  four axes with both signs), each in 10 bins over ``[0, max response of that channel in the
  image]``; 8 x 10 x channels values, L1-normalised;
* size: ``1 - (|r_i| + |r_j|) / |image|``: merge small regions first, so that regions of all
  sizes form everywhere in the image rather than one region eating the others;
* fill: ``1 - (|BB_ij| - |r_i| - |r_j|) / |image|`` with ``BB_ij`` the box around both:
  merge regions that fill each other's gaps.

A merged region's histograms are the size-weighted mean of its parts' (exactly
the histogram of the union), its size the sum, its box the union box.

**Order of the pooled boxes** (paper Sec. 3.3): within one strategy a region's
level is its position in the hierarchy counted from the top (the whole image is
1, the last initial region the highest number). ``ranking="random"`` (the
paper's, the default) multiplies each level by a random number in ``[0, 1)``
drawn from ``numpy.random.default_rng(seed)``, so that no strategy dominates the
top of the list, then sorts all boxes by that value; ``ranking="level"`` sorts
by the level alone (ties in strategy order). Both are deterministic for a given
``seed``. Duplicate boxes keep their first (best) position.

Ties in the grouping: the most similar pair merges first; equal similarities
merge the pair with the smaller region indices first (initial regions are
numbered in raster order of their first pixel, merged ones in creation order).
Adjacency is the segmentation graph's: 8-neighbour.

Boxes are ``(x1, y1, x2, y2)`` with ``x2`` exclusive: a region covering pixel
columns ``c0..c1`` and rows ``r0..r1`` has the box ``(c0, r0, c1 + 1, r1 + 1)``.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
from PIL import Image

from minirccn.proposals.segmentation import convolve_separable, felzenszwalb, gaussian_kernel

COLOUR_BINS = 25
TEXTURE_ORIENTATIONS = 8
TEXTURE_BINS = 10
TEXTURE_SIGMA = 1.0
FLAT = 1e-6  # a channel whose largest gradient response is below this is flat
MEASURES = ("colour", "texture", "size", "fill")
COLOUR_SPACES = ("rgb", "hsv", "lab", "rgi", "h", "i")

#: the paper's two diversification settings (Sec. 5.2, "Selective Search Fast / Quality")
MODES = {
    "fast": dict(
        colour_spaces=("hsv", "lab"),
        ks=(50, 100),
        strategies=(("colour", "texture", "size", "fill"), ("texture", "size", "fill")),
    ),
    "quality": dict(
        colour_spaces=("hsv", "lab", "rgi", "h", "i"),
        ks=(50, 100, 150, 300),
        strategies=(
            ("colour", "texture", "size", "fill"),
            ("texture", "size", "fill"),
            ("fill",),
            ("size",),
        ),
    ),
}


# ----------------------------------------------------------------------------- colour spaces


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (D65 white) of sRGB pixels, scaled to ``0..255``.

    sRGB ``v in [0, 1]`` -> linear (``v / 12.92`` if ``v <= 0.04045`` else
    ``((v + 0.055) / 1.055) ** 2.4``) -> XYZ (the sRGB matrix) -> divided by the
    white ``(0.95047, 1, 1.08883)`` -> ``f(t) = t ** (1/3)`` if ``t > (6/29)^3`` else
    ``t / (3 (6/29)^2) + 4/29`` -> ``L = 116 f(Y) - 16``, ``a = 500 (f(X) - f(Y))``,
    ``b = 200 (f(Y) - f(Z))``. Stored as ``(L * 255 / 100, a + 128, b + 128)`` clipped to
    ``[0, 255]`` so that every space has the same range.

    Args:
        rgb: ``(H, W, 3)`` uint8.

    Returns:
        ``(H, W, 3)`` float64.
    """
    v = rgb.astype(np.float64) / 255.0
    lin = np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)
    m = np.array(
        [
            [0.4124564, 0.3575761, 0.1804375],
            [0.2126729, 0.7151522, 0.0721750],
            [0.0193339, 0.1191920, 0.9503041],
        ]
    )
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    d = 6.0 / 29.0
    f = np.where(xyz > d**3, np.cbrt(xyz), xyz / (3 * d * d) + 4.0 / 29.0)
    lab = np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1
    )
    return np.clip(lab * np.array([2.55, 1.0, 1.0]) + np.array([0.0, 128.0, 128.0]), 0, 255)


def convert_colour(rgb: np.ndarray, space: str) -> np.ndarray:
    """The image in colour space ``space``, every channel in ``[0, 255]``.

    ``rgb``: as is; ``hsv``: Pillow's ``Image.convert("HSV")``; ``lab``:
    :func:`srgb_to_lab`; ``rgi``: normalised ``r = R / (R+G+B)``, ``g = G / (R+G+B)``
    (both ``1/3`` for black), times 255, and intensity ``(R+G+B) / 3``; ``h``: the hue
    channel of ``hsv``; ``i``: the intensity channel of ``rgi``.

    Args:
        rgb: ``(H, W, 3)`` uint8.

    Returns:
        ``(H, W, C)`` float64, ``C = 3`` (``1`` for ``h`` and ``i``).
    """
    rgb = np.asarray(rgb)
    if space == "rgb":
        return rgb.astype(np.float64)
    if space in ("hsv", "h"):
        hsv = np.asarray(Image.fromarray(rgb, "RGB").convert("HSV"), dtype=np.float64)
        return hsv if space == "hsv" else hsv[:, :, :1]
    if space == "lab":
        return srgb_to_lab(rgb)
    if space in ("rgi", "i"):
        v = rgb.astype(np.float64)
        total = v.sum(-1, keepdims=True)
        intensity = total / 3.0
        if space == "i":
            return intensity
        safe = np.where(total > 0, total, 1.0)
        rg = np.where(total > 0, v[..., :2] / safe, 1.0 / 3.0) * 255.0
        return np.concatenate([rg, intensity], -1)
    raise ValueError(f"colour space: unknown {space!r}; choose one of {', '.join(COLOUR_SPACES)}")


# ----------------------------------------------------------------------------- region features


def _l1_normalise(h: np.ndarray) -> np.ndarray:
    return h / np.maximum(h.sum(1, keepdims=True), 1e-12)


def colour_histograms(image: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """25-bin histogram per channel of each region, concatenated, L1-normalised.

    Args:
        image: ``(H, W, C)`` float in ``[0, 255]``.
        labels: ``(H, W)`` int64 region ids ``0..n-1``.
        n: number of regions.

    Returns:
        ``(n, 25 C)`` float64; row sums 1.
    """
    c = image.shape[2]
    bins = np.clip((image * COLOUR_BINS / 256.0).astype(np.int64), 0, COLOUR_BINS - 1)
    index = (labels[:, :, None] * c + np.arange(c)) * COLOUR_BINS + bins  # (H, W, C)
    counts = np.bincount(index.reshape(-1), minlength=n * c * COLOUR_BINS)
    return _l1_normalise(counts.reshape(n, c * COLOUR_BINS).astype(np.float64))


def oriented_gradients(image: np.ndarray, sigma: float = TEXTURE_SIGMA) -> np.ndarray:
    """Rectified Gaussian-derivative responses in 8 orientations.

    ``g_x``: the image correlated with ``g`` along rows and ``x / sigma^2 g(x)`` along
    columns (``g`` of :func:`~minirccn.proposals.segmentation.gaussian_kernel`); ``g_y`` the
    other way round. Orientation ``o`` (``theta = o * pi / 4``):
    ``max(0, cos(theta) g_x + sin(theta) g_y)``.

    Args:
        image: ``(H, W, C)`` float64.

    Returns:
        ``(H, W, C, 8)`` float64, ``>= 0``.
    """
    g = gaussian_kernel(sigma)
    r = len(g) // 2
    dg = np.arange(-r, r + 1) / (sigma * sigma) * g
    gx = convolve_separable(image, g, dg)
    gy = convolve_separable(image, dg, g)
    theta = np.arange(TEXTURE_ORIENTATIONS) * np.pi / 4
    resp = np.cos(theta) * gx[..., None] + np.sin(theta) * gy[..., None]
    return np.maximum(resp, 0.0)


def texture_histograms(image: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """8 orientations x 10 bins per channel of each region, concatenated, L1-normalised.

    Each channel's responses (:func:`oriented_gradients`) are binned over ``[0, R_c]``,
    ``R_c`` that channel's largest response in the image: bin ``min(floor(10 r / R_c), 9)``
    (all bin 0 for a channel whose largest response is below :data:`FLAT`: flat up to rounding).

    Args:
        image: ``(H, W, C)`` float in ``[0, 255]``.
        labels: ``(H, W)`` int64 region ids ``0..n-1``; n: number of regions.

    Returns:
        ``(n, 80 C)`` float64; row sums 1.
    """
    resp = oriented_gradients(np.asarray(image, dtype=np.float64))  # (H, W, C, 8)
    c = image.shape[2]
    top = resp.reshape(-1, c, TEXTURE_ORIENTATIONS).max(axis=(0, 2))  # (C,)
    scaled = resp / np.where(top > FLAT, top, np.inf)[:, None]
    bins = np.minimum((scaled * TEXTURE_BINS).astype(np.int64), TEXTURE_BINS - 1)
    per_region = c * TEXTURE_ORIENTATIONS * TEXTURE_BINS
    slot = (
        np.arange(c)[:, None] * TEXTURE_ORIENTATIONS + np.arange(TEXTURE_ORIENTATIONS)
    ) * TEXTURE_BINS
    index = labels[:, :, None, None] * per_region + slot + bins  # (H, W, C, 8)
    counts = np.bincount(index.reshape(-1), minlength=n * per_region)
    return _l1_normalise(counts.reshape(n, per_region).astype(np.float64))


def region_boxes(labels: np.ndarray, n: int) -> np.ndarray:
    """Bounding box ``(x1, y1, x2, y2)`` (``x2``, ``y2`` exclusive) of each region.

    Args:
        labels: ``(H, W)`` int64 ids ``0..n-1`` (every id present).

    Returns:
        ``(n, 4)`` float64.
    """
    h, w = labels.shape
    ys, xs = np.divmod(np.arange(h * w), w)
    flat = labels.reshape(-1)
    boxes = np.empty((n, 4))
    boxes[:, 0] = np.full(n, w, dtype=np.int64)
    np.minimum.at(boxes[:, 0], flat, xs)
    boxes[:, 1] = h
    np.minimum.at(boxes[:, 1], flat, ys)
    boxes[:, 2] = -1
    np.maximum.at(boxes[:, 2], flat, xs + 1)
    boxes[:, 3] = -1
    np.maximum.at(boxes[:, 3], flat, ys + 1)
    return boxes


def adjacent_pairs(labels: np.ndarray) -> np.ndarray:
    """Pairs of regions that touch (8-neighbour), each once.

    Returns:
        ``(P, 2)`` int64 rows ``(i, j)``, ``i < j``, sorted.
    """
    pairs = []
    h, w = labels.shape
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = labels[: h - dy, max(0, -dx) : w - max(0, dx)]
        b = labels[dy:, max(0, dx) : w - max(0, -dx)]
        pairs.append(np.stack([a.reshape(-1), b.reshape(-1)], 1))
    p = np.concatenate(pairs)
    p = p[p[:, 0] != p[:, 1]]
    p = np.sort(p, axis=1)
    return np.unique(p, axis=0).reshape(-1, 2)


# ----------------------------------------------------------------------------- grouping


class Regions(NamedTuple):
    """Features of the regions of one segmentation (rows = region ids)."""

    colour: np.ndarray  # (n, 25 C) float64 colour histograms
    texture: np.ndarray  # (n, 80 C) float64 texture histograms
    size: np.ndarray  # (n,) float64 pixels
    boxes: np.ndarray  # (n, 4) float64 bounding boxes
    pairs: np.ndarray  # (P, 2) int64 adjacent pairs (i < j)
    image_area: float  # H * W


def region_features(image: np.ndarray, labels: np.ndarray) -> Regions:
    """The :class:`Regions` of ``labels`` on ``image`` (a colour-space image, ``(H, W, C)``)."""
    n = int(labels.max()) + 1
    size = np.bincount(labels.reshape(-1), minlength=n).astype(np.float64)
    return Regions(
        colour_histograms(image, labels, n),
        texture_histograms(image, labels, n),
        size,
        region_boxes(labels, n),
        adjacent_pairs(labels),
        float(labels.size),
    )


def similarity(colour, texture, size, boxes, i, j, image_area: float, measures) -> np.ndarray:
    """The summed similarity of region pairs ``(i[p], j[p])`` (module docstring's formulas).

    Args:
        colour, texture: ``(R, Dc)``, ``(R, Dt)`` histograms; size: ``(R,)``; boxes: ``(R, 4)``.
        i, j: ``(P,)`` int region ids.
        image_area: pixels of the image.
        measures: which of ``colour``, ``texture``, ``size``, ``fill`` to add.

    Returns:
        ``(P,)`` float64.
    """
    s = np.zeros(len(i))
    if "colour" in measures:
        s = s + np.minimum(colour[i], colour[j]).sum(1)
    if "texture" in measures:
        s = s + np.minimum(texture[i], texture[j]).sum(1)
    if "size" in measures:
        s = s + 1.0 - (size[i] + size[j]) / image_area
    if "fill" in measures:
        lo = np.minimum(boxes[i, :2], boxes[j, :2])
        hi = np.maximum(boxes[i, 2:], boxes[j, 2:])
        bb = np.prod(hi - lo, axis=1)
        s = s + 1.0 - (bb - size[i] - size[j]) / image_area
    return s


class Hierarchy(NamedTuple):
    """The result of one hierarchical grouping: ``2n - 1`` regions in creation order."""

    boxes: np.ndarray  # (2n-1, 4) float64: n initial regions, then one per merge
    merges: np.ndarray  # (n-1, 2) int64: the two regions merged into region n + m
    similarities: np.ndarray  # (n-1,) float64: the similarity of each merged pair


def hierarchical_grouping(regions: Regions, measures) -> Hierarchy:
    """Merge the most similar adjacent regions until one is left (Uijlings et al., Alg. 1).

    Args:
        regions: the initial regions' features.
        measures: the similarity strategy, a subset of :data:`MEASURES`.

    Returns:
        :class:`Hierarchy`. Equal similarities merge the pair with the smaller ids first.
    """
    bad = set(measures) - set(MEASURES)
    if bad or not measures:
        raise ValueError(
            f"measures: expected a non-empty subset of {MEASURES}, got {tuple(measures)}"
        )
    n = len(regions.size)
    total = 2 * n - 1
    colour = np.zeros((total, regions.colour.shape[1]))
    texture = np.zeros((total, regions.texture.shape[1]))
    size, boxes = np.zeros(total), np.zeros((total, 4))
    colour[:n], texture[:n], size[:n], boxes[:n] = (
        regions.colour,
        regions.texture,
        regions.size,
        regions.boxes,
    )
    alive = np.zeros(total, dtype=bool)
    alive[:n] = True
    neighbours = [set() for _ in range(total)]
    for a, b in regions.pairs.tolist():
        neighbours[a].add(b)
        neighbours[b].add(a)
    i, j = regions.pairs[:, 0], regions.pairs[:, 1]
    s = similarity(colour, texture, size, boxes, i, j, regions.image_area, measures)
    heap = list(zip((-s).tolist(), i.tolist(), j.tolist()))
    heapq.heapify(heap)  # most similar first; ties: smaller (i, j) first
    merges, sims = [], []
    for t in range(n, total):
        while True:
            neg, a, b = heapq.heappop(heap)
            if alive[a] and alive[b]:
                break
        wa, wb = size[a], size[b]
        size[t] = wa + wb
        colour[t] = (wa * colour[a] + wb * colour[b]) / size[t]
        texture[t] = (wa * texture[a] + wb * texture[b]) / size[t]
        boxes[t, :2] = np.minimum(boxes[a, :2], boxes[b, :2])
        boxes[t, 2:] = np.maximum(boxes[a, 2:], boxes[b, 2:])
        alive[a] = alive[b] = False
        alive[t] = True
        nb = sorted((neighbours[a] | neighbours[b]) - {a, b})
        for m in nb:
            neighbours[m] -= {a, b}
            neighbours[m].add(t)
        neighbours[t] = set(nb)
        merges.append((a, b))
        sims.append(-neg)
        if nb:
            m = np.array(nb, dtype=np.int64)
            st = similarity(
                colour, texture, size, boxes, m, np.full(len(m), t), regions.image_area, measures
            )
            for val, mm in zip((-st).tolist(), nb):
                heapq.heappush(heap, (val, mm, t))
    return Hierarchy(boxes, np.array(merges, dtype=np.int64).reshape(-1, 2), np.array(sims))


# ----------------------------------------------------------------------------- the whole search


@dataclass(frozen=True)
class SelectiveSearch:
    """Selective search with its settings fixed once; call it on images.

    Attributes:
        mode: ``"fast"`` or ``"quality"`` (:data:`MODES`: colour spaces x ``k`` x strategies).
        sigma: Gaussian blur of the segmentation (paper: 0.8).
        min_size: smallest segment in pixels (None: ``k``, as the paper).
        ranking: ``"random"`` (the paper's randomised levels, seeded) or ``"level"``.
        seed: seed of the ``"random"`` ranking (the same boxes in the same order every call).
        max_proposals: keep at most this many boxes (None: all).
        backend: segmentation backend, ``"numba"`` (default) or ``"numpy"``.

    >>> boxes = SelectiveSearch("fast")(image)      # (P, 4) float32, best first
    """

    mode: str = "fast"
    sigma: float = 0.8
    min_size: int | None = None
    ranking: str = "random"
    seed: int = 0
    max_proposals: int | None = None
    backend: str | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(
                f"mode: unknown selective search mode {self.mode!r}; choose fast or quality"
            )
        if self.ranking not in ("random", "level"):
            raise ValueError(f"ranking: expected 'random' or 'level', got {self.ranking!r}")

    def settings(self) -> dict:
        """The fields that decide the output (all but ``backend``), as
        :func:`selective_search` takes them."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "backend"}

    def params(self) -> dict:
        """Everything that decides the output (the proposal cache's key)."""
        return {"method": "selective-search", **self.settings()}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return selective_search(image, **self.settings(), backend=self.backend)


def strategies(mode: str) -> list:
    """The ``(colour space, k, measures)`` triples of ``mode``, in the order they run."""
    m = MODES[mode]
    return [(cs, k, ms) for cs in m["colour_spaces"] for k in m["ks"] for ms in m["strategies"]]


def selective_search(
    image,
    mode: str = "fast",
    *,
    sigma: float = 0.8,
    min_size: int | None = None,
    ranking: str = "random",
    seed: int = 0,
    max_proposals: int | None = None,
    backend=None,
    return_levels: bool = False,
):
    """Region proposals of one image.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        mode: ``"fast"`` or ``"quality"``.
        sigma, min_size: segmentation settings (min_size None: ``k``).
        ranking, seed: the order of the pooled boxes (module docstring).
        max_proposals: keep the first this many (None: all).
        backend: segmentation backend (``"numba"`` or ``"numpy"``).
        return_levels: also return each box's ranking value.

    Returns:
        ``(P, 4)`` float32 boxes, distinct, best first (and ``(P,)`` float64 values).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image: expected an (H, W, 3) uint8 array, got {image.shape} {image.dtype}"
        )
    if mode not in MODES:
        raise ValueError(f"mode: unknown selective search mode {mode!r}; choose fast or quality")
    rng = np.random.default_rng(seed)
    all_boxes, all_values = [], []
    features = {}
    for space, k, measures in strategies(mode):
        if (space, k) not in features:
            converted = convert_colour(image, space)
            labels = felzenszwalb(converted, k=k, sigma=sigma, min_size=min_size, backend=backend)
            features[(space, k)] = region_features(converted, labels)
        regions = features[(space, k)]
        if len(regions.size) == 1:
            hierarchy_boxes = regions.boxes
        else:
            hierarchy_boxes = hierarchical_grouping(regions, measures).boxes
        levels = np.arange(len(hierarchy_boxes), 0, -1, dtype=np.float64)  # whole image: 1
        if ranking == "random":
            levels = levels * rng.random(len(levels))
        all_boxes.append(hierarchy_boxes)
        all_values.append(levels)
    boxes, values = np.concatenate(all_boxes), np.concatenate(all_values)
    order = np.argsort(values, kind="stable")
    boxes, values = boxes[order], values[order]
    _, first = np.unique(boxes, axis=0, return_index=True)
    keep = np.sort(first)[: max_proposals if max_proposals is not None else None]
    out = boxes[keep].astype(np.float32)
    return (out, values[keep]) if return_levels else out
