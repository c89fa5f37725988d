"""Box geometry: area, pairwise IoU, clipping to the image, dropping tiny boxes.

A box is a row ``(x1, y1, x2, y2)`` in continuous pixel coordinates with
``x2 >= x1`` and ``y2 >= y1``; its width is ``x2 - x1`` (no "+1").

Intersection over union of boxes ``a`` and ``b``::

    inter = max(0, min(a.x2, b.x2) - max(a.x1, b.x1)) * max(0, min(a.y2, b.y2) - max(a.y1, b.y1))
    union = area(a) + area(b) - inter
    iou   = inter / union            (0 where union == 0: two zero-area boxes)

All arithmetic happens in the boxes' dtype (float32 stays float32), in exactly
the order written above; the kernels in :mod:`minirccn.kernels.boxes` and
:mod:`minirccn.kernels.nms` repeat that order so their float32 results match
these bit for bit. A NaN coordinate makes the area, hence the union, hence the
IoU of every pair with that box NaN.

Each ``<op>_reference`` is plain NumPy written against an array module ``xp``
so it runs unchanged on CuPy arrays. Only :func:`box_iou` has kernels
(``numba``, ``cuda``); :func:`box_area`, :func:`clip_boxes` and
:func:`remove_small_boxes` are cheap elementwise work and run the reference on
every backend (on CuPy arrays for ``cuda`` on a GPU). Which function runs is
looked up in :mod:`minirccn.core.dispatch`.
"""

from __future__ import annotations

import numpy as np

from minirccn.core import backend as _backend
from minirccn.core.checks import as_array, check_boxes, check_positive, same_module
from minirccn.core.dispatch import kernel

# ----------------------------------------------------------------------------- references


def box_area_reference(boxes):
    """Area of each box: ``(x2 - x1) * (y2 - y1)``.

    Args:
        boxes: ``(N, 4)`` float32 or float64 ``(x1, y1, x2, y2)``.

    Returns:
        ``(N,)`` boxes' dtype.
    """
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou_reference(boxes1, boxes2):
    """Pairwise intersection over union (formula in the module docstring).

    Args:
        boxes1: ``(N, 4)`` float32 or float64.
        boxes2: ``(M, 4)`` same dtype as ``boxes1``.

    Returns:
        ``(N, M)`` that dtype, ``iou[i, j]`` of ``boxes1[i]`` and ``boxes2[j]``:
        in ``[0, 1]`` for valid boxes, exactly 0 where the union is 0, NaN
        where a coordinate is NaN.
    """
    xp = _backend.get_array_module(boxes1)
    t = boxes1.dtype.type
    area1 = box_area_reference(boxes1)  # (N,)
    area2 = box_area_reference(boxes2)  # (M,)
    left_top = xp.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    right_bottom = xp.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = xp.maximum(right_bottom - left_top, t(0))  # (N, M, 2), 0 when disjoint
    inter = wh[..., 0] * wh[..., 1]  # (N, M)
    union = area1[:, None] + area2[None, :] - inter  # (N, M)
    empty = union == 0
    return xp.where(empty, t(0), inter / xp.where(empty, t(1), union))


def clip_boxes_reference(boxes, image_size):
    """Clamp every box into the image: x to ``[0, width]``, y to ``[0, height]``.

    Args:
        boxes: ``(N, 4)`` float32 or float64.
        image_size: ``(height, width)`` numbers.

    Returns:
        ``(N, 4)`` boxes' dtype, a new array (NaN stays NaN). Boxes entirely
        outside the image become zero-width or zero-height boxes on its border.
    """
    xp = _backend.get_array_module(boxes)
    height, width = image_size
    t = boxes.dtype.type
    x = xp.clip(boxes[:, 0::2], t(0), t(width))  # (N, 2): x1, x2
    y = xp.clip(boxes[:, 1::2], t(0), t(height))  # (N, 2): y1, y2
    return xp.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)


def remove_small_boxes_reference(boxes, min_size):
    """Indices of the boxes whose width and height are both ``>= min_size``.

    Args:
        boxes: ``(N, 4)`` float32 or float64.
        min_size: number; compared in the boxes' dtype.

    Returns:
        ``(K,)`` int64 indices, ascending. A NaN box is removed.
    """
    xp = _backend.get_array_module(boxes)
    t = boxes.dtype.type
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    keep = (widths >= t(min_size)) & (heights >= t(min_size))
    return xp.nonzero(keep)[0].astype(np.int64)


# ----------------------------------------------------------------------------- public ops


def box_area(boxes, *, backend=None):
    """Area of each box (``torchvision.ops.box_area``).

    Args:
        boxes: ``(N, 4)`` float32 or float64 ``(x1, y1, x2, y2)``, NumPy or CuPy.
        backend: ``"numpy"``, ``"numba"``, ``"cuda"`` or None; every backend runs
            the reference (on CuPy arrays for ``cuda`` on a GPU).

    Returns:
        ``(N,)`` boxes' dtype, ``(x2 - x1) * (y2 - y1)``.
    """
    boxes = check_boxes(boxes, "boxes")
    name = _backend.resolve(backend, boxes)
    return kernel("box_area", name)(_backend.to_backend(boxes, name))


def box_iou(boxes1, boxes2, *, backend=None):
    """Pairwise IoU (``torchvision.ops.box_iou``, but 0 instead of NaN where the union is 0).

    Args:
        boxes1: ``(N, 4)`` float32 or float64.
        boxes2: ``(M, 4)`` float32 or float64; both are computed in their common dtype.
        backend: ``"numpy"`` (the reference), ``"numba"`` (parallel over rows),
            ``"cuda"`` (one thread per pair) or None.

    Returns:
        ``(N, M)`` of the common dtype.
    """
    boxes1 = check_boxes(boxes1, "boxes1")
    boxes2 = check_boxes(boxes2, "boxes2")
    same_module("boxes1", boxes1, "boxes2", boxes2)
    name = _backend.resolve(backend, boxes1, boxes2)
    xp = _backend.array_module(name)
    dtype = np.result_type(boxes1.dtype, boxes2.dtype)
    boxes1 = xp.ascontiguousarray(_backend.to_backend(boxes1, name), dtype=dtype)
    boxes2 = xp.ascontiguousarray(_backend.to_backend(boxes2, name), dtype=dtype)
    return kernel("box_iou", name)(boxes1, boxes2)


def clip_boxes(boxes, image_size, *, backend=None):
    """Clip boxes to the image (``torchvision.ops.clip_boxes_to_image``).

    Args:
        boxes: ``(N, 4)`` float32 or float64.
        image_size: ``(height, width)``, non-negative numbers.
        backend: as for :func:`box_area` (every backend runs the reference).

    Returns:
        ``(N, 4)`` boxes' dtype, x clamped to ``[0, width]``, y to ``[0, height]``.
    """
    boxes = check_boxes(boxes, "boxes")
    image_size = _check_image_size(image_size)
    name = _backend.resolve(backend, boxes)
    return kernel("clip_boxes", name)(_backend.to_backend(boxes, name), image_size)


def remove_small_boxes(boxes, min_size, *, backend=None):
    """Indices of the boxes at least ``min_size`` wide and high (torchvision semantics).

    Args:
        boxes: ``(N, 4)`` float32 or float64.
        min_size: non-negative number.
        backend: as for :func:`box_area` (every backend runs the reference).

    Returns:
        ``(K,)`` int64 indices, ascending, of the boxes with
        ``x2 - x1 >= min_size`` and ``y2 - y1 >= min_size``.
    """
    boxes = check_boxes(boxes, "boxes")
    min_size = check_positive(min_size, "min_size", allow_zero=True)
    name = _backend.resolve(backend, boxes)
    return kernel("remove_small_boxes", name)(_backend.to_backend(boxes, name), min_size)


def _check_image_size(image_size) -> tuple[float, float]:
    """``(height, width)`` as two non-negative floats, else an error naming ``image_size``."""
    size = as_array(image_size, "image_size")
    if size.shape != (2,):
        raise ValueError(f"image_size: expected (height, width), got {image_size!r}")
    height = check_positive(image_size[0], "image_size", allow_zero=True)
    width = check_positive(image_size[1], "image_size", allow_zero=True)
    return height, width
