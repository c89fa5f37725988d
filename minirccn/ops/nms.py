"""Non-maximum suppression: keep the best box of every cluster of overlapping boxes.

A detector fires many boxes around each object. Greedy NMS walks them from the
highest score down and keeps a box unless a box already kept overlaps it with
``IoU > iou_threshold`` (strictly greater, as torchvision). The kept boxes come
out in the walk's order.

The walk's order (:func:`score_order`) is torchvision's, checked by hand
against ``torchvision.ops.nms`` on the CPU:

* decreasing score; equal scores keep the lower index first (a stable sort);
* NaN scores rank above every number (``+inf`` included), lower index first.

Boxes with a NaN coordinate have IoU NaN with every box, and ``NaN >
threshold`` is false: they neither suppress nor are suppressed. IoU is computed
in the boxes' dtype (:func:`minirccn.ops.boxes.box_iou_reference`) and compared
with the threshold in float64, like torchvision's kernels (float ``ovr >
double iou_threshold``).

:func:`batched_nms` runs NMS separately per category: a box only suppresses
boxes with the same ``idxs`` value. Its result is in the same global order
(decreasing score, ties by lower index), like torchvision's. (torchvision often
shifts each category's boxes apart by ``idxs * (max coordinate + 1)`` and runs
one NMS instead; that changes the float rounding of IoUs, and one NaN
coordinate makes every shifted box NaN so nothing is suppressed. minirccn
always suppresses per category, which gives the same answer as torchvision on
every test case without a NaN.)

Backends: ``numpy`` runs the references below; ``numba`` and ``cuda`` run the
kernels of :mod:`minirccn.kernels.nms` on boxes sorted here by the same
:func:`score_order` (see that module for how each kernel works and which GPU
path runs).
"""

from __future__ import annotations

import numpy as np

from minirccn import backend as _backend
from minirccn._checks import as_array, check_boxes, check_positive, check_scores, check_shape, same_module
from minirccn.ops.boxes import box_area_reference, box_iou_reference

# ----------------------------------------------------------------------------- references


def score_order(scores):
    """The NMS walk order: decreasing score, ties by lower index, NaN scores first.

    Args:
        scores: ``(N,)`` float32 or float64 (NumPy or CuPy).

    Returns:
        ``(N,)`` int64 indices.
    """
    xp = _backend.get_array_module(scores)
    # a stable sort of -scores (NumPy and CuPy alike): decreasing, ties keep index order,
    # NaN (also -NaN) last
    order = xp.argsort(-scores, kind="stable")
    n_nan = int(xp.isnan(scores).sum())
    return xp.roll(order, n_nan).astype(np.int64)  # move the NaN tail, in index order, to the front


def _in_order(kept, order):
    """The indices ``kept`` listed in the walk order ``order``.

    Args:
        kept: ``(K,)`` int indices into the ``N`` boxes, any order.
        order: ``(N,)`` int64, a permutation (from :func:`score_order`).

    Returns:
        ``(K,)`` int64.
    """
    xp = _backend.get_array_module(order)
    flags = xp.zeros(order.shape[0], dtype=bool)
    flags[kept] = True
    return order[flags[order]]


def nms_reference(boxes, scores, iou_threshold):
    """Greedy NMS in NumPy: the specification.

    Args:
        boxes: ``(N, 4)`` float32 or float64 ``(x1, y1, x2, y2)``.
        scores: ``(N,)`` float32 or float64.
        iou_threshold: float; a kept box suppresses the later boxes with
            ``IoU > iou_threshold``.

    Returns:
        ``(K,)`` int64 indices of the kept boxes, in :func:`score_order`.
    """
    xp = _backend.get_array_module(boxes)
    order = score_order(scores)
    ordered = boxes[order]  # (N, 4) in walk order
    suppressed = np.zeros(order.shape[0], dtype=bool)
    keep = []
    for i in range(order.shape[0]):
        if suppressed[i]:
            continue
        keep.append(i)
        iou = box_iou_reference(ordered[i : i + 1], ordered[i + 1 :])[0]  # (N - i - 1,)
        suppressed[i + 1 :] |= _backend.to_numpy(iou.astype(np.float64) > iou_threshold)
    return order[xp.asarray(np.array(keep, dtype=np.int64))]


def batched_nms_reference(boxes, scores, idxs, iou_threshold):
    """NMS per category in NumPy: :func:`nms_reference` on each category's boxes.

    Args:
        boxes: ``(N, 4)`` float32 or float64.
        scores: ``(N,)`` float32 or float64.
        idxs: ``(N,)`` int, the category of each box.
        iou_threshold: float.

    Returns:
        ``(K,)`` int64 indices kept in any category, in :func:`score_order`.
    """
    xp = _backend.get_array_module(boxes)
    kept = [xp.zeros(0, dtype=np.int64)]
    for category in xp.unique(idxs):
        members = xp.nonzero(idxs == category)[0]  # (N_c,) ascending
        kept.append(members[nms_reference(boxes[members], scores[members], iou_threshold)])
    return _in_order(xp.concatenate(kept), score_order(scores))


# ----------------------------------------------------------------------------- public ops


def nms(boxes, scores, iou_threshold, *, backend=None):
    """Greedy non-maximum suppression (``torchvision.ops.nms``; rules in the module docstring).

    Args:
        boxes: ``(N, 4)`` float32 or float64 ``(x1, y1, x2, y2)``, NumPy or CuPy.
        scores: ``(N,)`` float32 or float64.
        iou_threshold: number ``>= 0``; ``IoU > iou_threshold`` suppresses.
        backend: ``"numpy"`` (reference), ``"numba"``, ``"cuda"`` or None.

    Returns:
        ``(K,)`` int64 indices of the kept boxes, by decreasing score (ties:
        lower index first; NaN scores first).
    """
    boxes, scores, iou_threshold = _check(boxes, scores, iou_threshold)
    name = _backend.resolve(backend, boxes, scores)
    boxes, scores = (_backend.to_backend(a, name) for a in (boxes, scores))
    if name == "numpy":
        return nms_reference(boxes, scores, iou_threshold)
    return _nms_kernel(name, boxes, scores, None, iou_threshold)


def batched_nms(boxes, scores, idxs, iou_threshold, *, backend=None):
    """NMS independently per category (``torchvision.ops.batched_nms``).

    Args:
        boxes: ``(N, 4)`` float32 or float64.
        scores: ``(N,)`` float32 or float64.
        idxs: ``(N,)`` integer category of each box; boxes of different
            categories never suppress each other.
        iou_threshold: number ``>= 0``.
        backend: ``"numpy"`` (reference), ``"numba"``, ``"cuda"`` or None.

    Returns:
        ``(K,)`` int64 indices kept, by decreasing score (ties: lower index first).
    """
    boxes, scores, iou_threshold = _check(boxes, scores, iou_threshold)
    idxs = check_shape(as_array(idxs, "idxs"), "idxs", (boxes.shape[0],))
    if idxs.dtype.kind not in "iu":
        raise TypeError(f"idxs: expected an integer dtype, got {idxs.dtype}")
    same_module("boxes", boxes, "idxs", idxs)
    name = _backend.resolve(backend, boxes, scores, idxs)
    boxes, scores, idxs = (_backend.to_backend(a, name) for a in (boxes, scores, idxs))
    idxs = idxs.astype(np.int64, copy=False)
    if name == "numpy":
        return batched_nms_reference(boxes, scores, idxs, iou_threshold)
    return _nms_kernel(name, boxes, scores, idxs, iou_threshold)


def _check(boxes, scores, iou_threshold):
    """Validated ``(boxes, scores, iou_threshold)`` of :func:`nms` and :func:`batched_nms`."""
    boxes = check_boxes(boxes, "boxes")
    scores = check_scores(scores, boxes.shape[0], "scores")
    same_module("boxes", boxes, "scores", scores)
    return boxes, scores, check_positive(iou_threshold, "iou_threshold", allow_zero=True)


def _nms_kernel(name, boxes, scores, idxs, iou_threshold):
    """Sort with the reference rule, run the ``numba`` or ``cuda`` kernel, map back to indices.

    Args:
        name: ``"numba"`` or ``"cuda"``.
        boxes: ``(N, 4)`` float array of the backend's module.
        scores: ``(N,)`` float.
        idxs: ``(N,)`` int64 categories, or None for plain NMS.
        iou_threshold: float.

    Returns:
        ``(K,)`` int64 indices in :func:`score_order`.
    """
    from minirccn.kernels import nms as kernels

    xp = _backend.array_module(name)
    n = boxes.shape[0]
    if n == 0:
        return xp.zeros(0, dtype=np.int64)
    walk = order = score_order(scores)  # (N,) the walk order
    if name == "cuda":
        labels = xp.zeros(n, dtype=np.int64) if idxs is None else idxs[order]
        ordered = xp.ascontiguousarray(boxes[order])
        positions = kernels.nms_cuda(
            ordered, box_area_reference(ordered), xp.ascontiguousarray(labels), iou_threshold, xp
        )
        return order[xp.asarray(positions)]
    if idxs is None:
        starts = np.array([0, n], dtype=np.int64)  # one segment
    else:  # one segment per category, each in walk order (the reference's per-category loop)
        order = order[np.argsort(idxs[order], kind="stable")]
        changes = np.nonzero(np.diff(idxs[order]))[0] + 1
        starts = np.concatenate([[0], changes, [n]]).astype(np.int64)
    ordered = np.ascontiguousarray(boxes[order])
    keep = kernels.nms_segments_cpu(ordered, box_area_reference(ordered), starts, iou_threshold)
    kept = order[keep]
    return kept if idxs is None else _in_order(kept, walk)
