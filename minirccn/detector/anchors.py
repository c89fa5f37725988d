"""Anchors: the fixed reference boxes the RPN scores and regresses, ``A`` per map cell.

Every cell of a stride-``s`` feature map gets the same ``A = len(aspect_ratios) *
len(sizes)`` boxes, centred on the cell's position in the image. The numbers
follow torchvision's ``AnchorGenerator`` exactly (float32 throughout):

1. Base anchors, centred on 0, one per (ratio, size), ratio-major (for each
   ratio, each size)::

       h_ratio = sqrt(ratio)            ratio = height / width
       w_ratio = 1 / h_ratio
       w = w_ratio * size,  h = h_ratio * size
       base = round([-w, -h, w, h] / 2)

   ``round`` is half-to-even, like ``torch.round`` and ``numpy.round``:
   ``size = 5`` gives ``2.5 -> 2``, ``size = 3`` gives ``1.5 -> 2``.
2. Shifts: cell ``(i, j)`` (row ``i``, column ``j``) sits at
   ``((offset + j) * stride_w, (offset + i) * stride_h)``. ``offset = 0`` is
   torchvision's grid (top-left corner of each cell); ``offset = 0.5`` puts the
   anchors at cell centres, as the paper's figure does.
3. ``anchors = shift + base``, location-major: the ``A`` anchors of cell
   ``(0, 0)`` first, then ``(0, 1)``, ... so row ``(i * W + j) * A + a``.

Anchors are not learned and have no gradient.
"""

from __future__ import annotations

import operator

import numpy as np

from minirccn.core.checks import check_boxes


def base_anchors(sizes, aspect_ratios):
    """The ``A`` anchors of one cell, centred on ``(0, 0)`` (step 1 of the module docstring).

    Args:
        sizes: sequence of positive numbers, the anchors' side for ratio 1 (pixels).
        aspect_ratios: sequence of positive numbers, height / width.

    Returns:
        ``(A, 4)`` float32, ``A = len(aspect_ratios) * len(sizes)``, row
        ``r * len(sizes) + s`` for ratio ``r`` and size ``s``.
    """
    sizes = _positive_list(sizes, "sizes")
    ratios = _positive_list(aspect_ratios, "aspect_ratios")
    h_ratios = np.sqrt(ratios)  # (R,) float32
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * sizes[None, :]).reshape(-1)  # (R * S,) ratio-major
    hs = (h_ratios[:, None] * sizes[None, :]).reshape(-1)
    return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / 2)


def generate_anchors(feature_size, stride, sizes, aspect_ratios, offset=0.0):
    """Every anchor of a feature map, in image pixels (see the module docstring).

    Args:
        feature_size: ``(H, W)`` of the feature map, or an int for a square map.
        stride: image pixels per map cell, an int or ``(stride_h, stride_w)``.
        sizes: sequence of positive anchor sizes (pixels), e.g. ``(128, 256, 512)``.
        aspect_ratios: sequence of positive height/width ratios, e.g. ``(0.5, 1.0, 2.0)``.
        offset: where in its cell an anchor is centred, in cells (0.0 or 0.5).

    Returns:
        ``(H * W * A, 4)`` float32 ``(x1, y1, x2, y2)`` rows, location-major:
        row ``(i * W + j) * A + a`` is anchor ``a`` of cell ``(i, j)``.

    Raises:
        ValueError, TypeError: naming the bad argument.
    """
    height, width = _pair(feature_size, "feature_size", allow_zero=True)
    stride_h, stride_w = _pair(stride, "stride", integer=False)
    try:
        offset = float(offset)
    except (TypeError, ValueError):
        raise TypeError(f"offset: expected a number, got {offset!r}") from None
    if not np.isfinite(offset):
        raise ValueError(f"offset: expected a finite number, got {offset!r}")
    base = base_anchors(sizes, aspect_ratios)  # (A, 4)
    shift_x = ((offset + np.arange(width)) * stride_w).astype(np.float32)  # (W,)
    shift_y = ((offset + np.arange(height)) * stride_h).astype(np.float32)  # (H,)
    sy, sx = np.meshgrid(shift_y, shift_x, indexing="ij")  # (H, W) each
    shifts = np.stack([sx, sy, sx, sy], axis=-1).reshape(-1, 1, 4)  # (H * W, 1, 4)
    return (shifts + base[None, :, :]).reshape(-1, 4)


def multilevel_anchors(map_sizes, strides, sizes, aspect_ratios, offset=0.0):
    """Anchors of every level, concatenated finest first.

    Args:
        map_sizes: ``(H_l, W_l)`` of each level.
        strides: input pixels per cell of each level.
        sizes: for each level, the sequence of its anchor sizes (a one-level detector has
            all of them on its one map; torchvision's FPN has one per level).
        aspect_ratios: height / width ratios, shared by the levels.
        offset: as :func:`generate_anchors`.

    Returns:
        anchors: ``(sum_l H_l * W_l * A_l, 4)`` float32; counts: ``H_l * W_l * A_l`` per level.
    """
    if not len(map_sizes) == len(strides) == len(sizes):
        raise ValueError(
            f"sizes: expected anchor sizes for each of the {len(map_sizes)} levels, got {len(sizes)}"
        )
    per = [
        generate_anchors(tuple(hw), s, level_sizes, aspect_ratios, offset=offset)
        for hw, s, level_sizes in zip(map_sizes, strides, sizes)
    ]
    return np.concatenate(per), [a.shape[0] for a in per]


class AnchorGenerator:
    """The anchors of a detector's levels, built once from its numbers, cached per map size
    (torchvision's ``AnchorGenerator``).

    Args:
        strides: input pixels per cell of each level, finest first.
        sizes: for each level, its anchor sizes.
        aspect_ratios: height / width ratios (every level).
        offset: cell offset (:func:`generate_anchors`).
        dtype: the dtype of the anchors returned.
        grid: ``"stride"``: a level's cells are ``strides[l]`` pixels apart; ``"image"``:
            ``input size // map size`` apart per axis (torchvision's ``AnchorGenerator``, which
            divides the padded batch's size by each map's; a 7-cell P5 pooled to 4 cells on a
            224-pixel input gives 56, not 64).
    """

    def __init__(self, strides, sizes, aspect_ratios, offset=0.0, dtype="float32", grid="stride"):
        self.strides = tuple(strides)
        self.sizes = [tuple(s) for s in sizes]
        self.aspect_ratios = tuple(aspect_ratios)
        self.offset = offset
        self.dtype = np.dtype(dtype)
        if grid not in ("stride", "image"):
            raise ValueError(f"grid: expected 'stride' or 'image', got {grid!r}")
        self.grid = grid
        self._cache = {}

    @property
    def num_anchors(self) -> int:
        """``A``, anchors per cell (the same on every level)."""
        return len(self.sizes[0]) * len(self.aspect_ratios)

    def __call__(self, map_sizes, xp=np, image_size=None):
        """``(anchors (M, 4), counts per level)`` of maps of ``map_sizes`` (cached), as arrays of
        the module ``xp`` in this generator's dtype; ``image_size``: ``(H, W)`` of the (padded)
        input, needed by ``grid="image"``."""
        map_sizes = tuple(tuple(int(v) for v in s) for s in map_sizes)
        strides = self.strides
        if self.grid == "image":
            if image_size is None:
                raise ValueError("image_size: anchors on grid='image' need the input's size")
            h, w = (int(v) for v in image_size)
            strides = tuple((h // mh, w // mw) for mh, mw in map_sizes)
        key = (map_sizes, strides, xp.__name__)
        if key not in self._cache:
            a, counts = multilevel_anchors(
                map_sizes, strides, self.sizes, self.aspect_ratios, offset=self.offset
            )
            self._cache[key] = (xp.asarray(a.astype(self.dtype)), counts)
        return self._cache[key]


def anchors_inside(anchors, image_size, allowed_border=0):
    """Which anchors lie inside the image, up to ``allowed_border`` pixels outside.

    Faster R-CNN's training can ignore anchors that cross the image border
    (they are neither positive nor negative). Boxes are continuous coordinates,
    so an anchor ending exactly on the border (``x2 == width``) is inside.

    Args:
        anchors: ``(M, 4)`` float ``(x1, y1, x2, y2)``.
        image_size: ``(height, width)`` of the image in pixels.
        allowed_border: how far (pixels, >= 0) an anchor may reach outside.

    Returns:
        ``(M,)`` bool: ``x1 >= -b``, ``y1 >= -b``, ``x2 <= width + b``,
        ``y2 <= height + b`` with ``b = allowed_border``.
    """
    anchors = check_boxes(anchors, "anchors")
    height, width = _pair(image_size, "image_size", integer=False, allow_zero=True)
    try:
        b = float(allowed_border)
    except (TypeError, ValueError):
        raise TypeError(f"allowed_border: expected a number, got {allowed_border!r}") from None
    if not b >= 0:
        raise ValueError(f"allowed_border: expected a number >= 0, got {allowed_border!r}")
    x1, y1, x2, y2 = anchors[:, 0], anchors[:, 1], anchors[:, 2], anchors[:, 3]
    return (x1 >= -b) & (y1 >= -b) & (x2 <= width + b) & (y2 <= height + b)


# ----------------------------------------------------------------------------- argument checks


def _positive_list(values, name):
    """``values`` (a non-empty sequence of positive finite numbers) as a float32 array."""
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a sequence of numbers, got {values!r}") from None
    if arr.size == 0 or not np.all(np.isfinite(arr) & (arr > 0)):
        raise ValueError(
            f"{name}: expected a non-empty sequence of positive numbers, got {values!r}"
        )
    return arr.astype(np.float32)


def _pair(value, name, integer=True, allow_zero=False):
    """``value`` (a number or a pair) as two numbers, > 0 (or >= 0 with ``allow_zero``)."""
    pair = (value, value) if np.ndim(value) == 0 else tuple(np.asarray(value).reshape(-1).tolist())
    if len(pair) != 2:
        raise ValueError(f"{name}: expected a number or a pair, got {value!r}")
    try:
        pair = tuple(operator.index(v) for v in pair) if integer else tuple(float(v) for v in pair)
    except (TypeError, ValueError):
        kind = "integers" if integer else "numbers"
        raise TypeError(f"{name}: expected {kind}, got {value!r}") from None
    if not all(np.isfinite(v) and (v > 0 or (allow_zero and v == 0)) for v in pair):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name}: expected {kind} values, got {value!r}")
    return pair
