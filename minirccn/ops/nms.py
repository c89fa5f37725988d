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

Every backend sorts the boxes here by :func:`score_order`, then runs the
greedy walk over the sorted boxes that :mod:`minirccn.core.dispatch` names for it:
``numpy`` the reference :func:`nms_sorted_reference`, ``numba`` and ``cuda``
the kernels of :mod:`minirccn.kernels.nms` (see that module for how each works).
Categories (``batched_nms``) are labels the walk compares; the reference
:func:`batched_nms_reference` instead runs :func:`nms_reference` per category,
an independent statement of the same rule.
"""

from __future__ import annotations

import numpy as np

from minirccn.core import backend as _backend
from minirccn.core.checks import (
    as_array,
    check_boxes,
    check_positive,
    check_scores,
    check_shape,
    same_module,
)
from minirccn.core.dispatch import kernel
from minirccn.ops.boxes import box_iou_reference

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


def nms_sorted_reference(boxes, labels, iou_threshold):
    """The greedy walk over boxes already in score order: the core of NMS, in NumPy.

    Args:
        boxes: ``(N, 4)`` float32 or float64 ``(x1, y1, x2, y2)``, in walk order.
        labels: ``(N,)`` int64 category of each box, or None (one category).
        iou_threshold: float; a kept box suppresses the later boxes of its
            category with ``IoU > iou_threshold`` (IoU in the boxes' dtype,
            compared in float64).

    Returns:
        ``(K,)`` int64 positions (into ``boxes``) of the kept boxes, ascending.
    """
    xp = _backend.get_array_module(boxes)
    suppressed = np.zeros(boxes.shape[0], dtype=bool)
    keep = []
    for i in range(boxes.shape[0]):
        if suppressed[i]:
            continue
        keep.append(i)
        iou = box_iou_reference(boxes[i : i + 1], boxes[i + 1 :])[0]  # (N - i - 1,)
        hit = iou.astype(np.float64) > iou_threshold
        if labels is not None:
            hit &= labels[i + 1 :] == labels[i]
        suppressed[i + 1 :] |= _backend.to_numpy(hit)
    return xp.asarray(np.array(keep, dtype=np.int64))


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
    order = score_order(scores)
    return order[nms_sorted_reference(boxes[order], None, iou_threshold)]


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
    return _sort_and_walk(name, boxes, scores, None, iou_threshold)


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
    return _sort_and_walk(name, boxes, scores, idxs, iou_threshold)


def _check(boxes, scores, iou_threshold):
    """Validated ``(boxes, scores, iou_threshold)`` of :func:`nms` and :func:`batched_nms`."""
    boxes = check_boxes(boxes, "boxes")
    scores = check_scores(scores, boxes.shape[0], "scores")
    same_module("boxes", boxes, "scores", scores)
    return boxes, scores, check_positive(iou_threshold, "iou_threshold", allow_zero=True)


def _sort_and_walk(name, boxes, scores, idxs, iou_threshold):
    """Sort by :func:`score_order`, run the walk of backend ``name``, map positions to indices.

    Args:
        name: the resolved backend; the walk is ``kernel("nms_sorted", name)``.
        boxes: ``(N, 4)`` float array of the backend's module.
        scores: ``(N,)`` float.
        idxs: ``(N,)`` int64 categories, or None for plain NMS.
        iou_threshold: float.

    Returns:
        ``(K,)`` int64 indices in :func:`score_order`.
    """
    order = score_order(scores)  # (N,) the walk order
    labels = None if idxs is None else idxs[order]
    positions = kernel("nms_sorted", name)(boxes[order], labels, iou_threshold)
    return order[positions]
