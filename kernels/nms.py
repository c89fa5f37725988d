"""Greedy non-maximum suppression kernels: Numba CPU, Numba-CUDA and CUDA C.

The specification is :func:`minirccn.ops.nms.nms_sorted_reference`: walk the
boxes, already in score order, and keep a box unless a kept box before it with
the same label overlaps it with ``IoU > threshold`` (IoU in the boxes' dtype,
compared in float64). The caller (:mod:`minirccn.ops.nms`) sorts the boxes with
the reference's :func:`~minirccn.ops.nms.score_order`, so every kernel here
receives boxes **in score order** and returns the kept *positions* in that order
(ascending). Labels (``None`` for one category) make ``batched_nms`` the same
kernel as ``nms``.

CPU (``nms_sorted_numba``)
    The sorted boxes are grouped into segments by a stable sort of the labels
    (one segment per category, a single one for ``nms``); segments are independent, so
    they run in parallel (``prange``). Inside a segment the greedy walk is
    sequential, as it must be: for each box ``i`` not yet suppressed, one
    branch-free pass over the later boxes ORs ``IoU > threshold`` into their
    suppression flags. Suppressed boxes are skipped as *rows* (the early
    skip); the pass over columns computes every IoU instead of testing flags,
    because a loop without branches over contiguous coordinate columns
    (precomputed areas, structure of arrays) is vectorised by LLVM and that
    beats skipping.

GPU (``nms_sorted_cuda``): the classic 64-bit suppression mask
    1. ``nms_mask``: the ``N`` sorted boxes form ``B = ceil(N / 64)`` blocks.
       CUDA block ``(i, j)`` (grid ``(B, B)``, 64 threads) loads the 64 boxes
       of column block ``j`` into shared memory; thread ``t`` takes box
       ``r = 64 i + t`` and sets bit ``k`` of word ``mask[r, j]`` when box
       ``64 j + k`` comes after ``r``, has the same label and overlaps it with
       ``IoU > threshold``. Blocks below the diagonal have nothing to do.
    2. ``reduce_mask``: one copy of the ``(N, B)`` uint64 mask to the host, then
       the sequential greedy walk over it there (a small ``@numba.njit``
       function): keep ``r`` unless its bit is set in the running ``removed``
       words, and when keeping it OR its row into ``removed``.

    A box only suppresses boxes of its own category (``labels=None`` is all zeros).

CUDA C twin: ``cuda/nms.cu`` holds the same mask kernel in CUDA C, reached
through :func:`nms_sorted_cudac` / :func:`nms_mask_cudac` (a CuPy ``RawKernel``,
real GPU only). The ``cuda`` backend always runs the Numba-CUDA kernel, on CuPy
arrays on a GPU and on NumPy arrays in the simulator, so the code the simulator
tests is the code the GPU runs; the CUDA C twin is the C lesson, a benchmark
comparison, and is checked against the reference by the GPU tests.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from minirccn.kernels._launch import array_module, raw_kernel
from minirccn.kernels.boxes import box_areas, iou_device_function, iou_pair
from numba import cuda

#: boxes per mask word: one bit per box of a column block
BLOCK = 64


# ----------------------------------------------------------------------------- CPU


@numba.njit(cache=True)
def _suppress_overlaps(x1, y1, x2, y2, areas, i, hi, zero, threshold, suppressed):
    """``suppressed[j] |= IoU(box i, box j) > threshold`` for ``i < j < hi``: one branch-free pass.

    Args:
        x1, y1, x2, y2, areas: ``(N,)`` contiguous ``T``, the sorted boxes as columns.
        i: the box just kept.
        hi: the end of its segment.
        zero: ``T(0)``.
        threshold: float64.
        suppressed: ``(N,)`` uint8 flags, updated in ``(i, hi)``.

    The later boxes are taken as slices so that ``j`` counts from 0 (as in
    :func:`minirccn.kernels.boxes.iou_row`): with no branch in the body, LLVM
    vectorises the loop, and that beats testing each box's flag to skip it.
    """
    rest = slice(i + 1, hi)
    bx1, by1, bx2, by2 = x1[rest], y1[rest], x2[rest], y2[rest]
    barea, flags = areas[rest], suppressed[rest]
    ax1, ay1, ax2, ay2, area_a = x1[i], y1[i], x2[i], y2[i], areas[i]
    for j in range(flags.shape[0]):
        iou = iou_pair(ax1, ay1, ax2, ay2, area_a, bx1[j], by1[j], bx2[j], by2[j], barea[j], zero)
        flags[j] |= iou > threshold


@numba.njit(cache=True)
def _greedy(x1, y1, x2, y2, areas, lo, hi, threshold, suppressed):
    """The greedy walk over the sorted boxes ``lo .. hi - 1`` (one segment).

    Args:
        x1, y1, x2, y2, areas: ``(N,)`` contiguous ``T``, the sorted boxes as columns.
        lo, hi: the segment.
        threshold: float64.
        suppressed: ``(N,)`` uint8 flags, updated in ``[lo, hi)`` only.
    """
    zero = np.zeros(1, areas.dtype)[0]  # a zero of the boxes' dtype: no float64 promotion
    for i in range(lo, hi):
        if suppressed[i]:
            continue  # early skip: a suppressed box suppresses nothing
        _suppress_overlaps(x1, y1, x2, y2, areas, i, hi, zero, threshold, suppressed)


@numba.njit(parallel=True, cache=True)
def _greedy_segments(x1, y1, x2, y2, areas, starts, threshold, suppressed):
    """:func:`_greedy` on every segment ``[starts[s], starts[s + 1])``, segments in parallel.

    Segments (categories) never touch each other's boxes or flags, so the
    threads write disjoint parts of ``suppressed``: no race.
    """
    for s in numba.prange(starts.shape[0] - 1):
        _greedy(x1, y1, x2, y2, areas, starts[s], starts[s + 1], threshold, suppressed)


def nms_sorted_numba(boxes, labels, iou_threshold):
    """Greedy NMS of boxes in score order on the CPU: segments (categories) in parallel.

    Args:
        boxes: ``(N, 4)`` float32 or float64 NumPy array in score order.
        labels: ``(N,)`` int64 category of each box, or None for one category.
        iou_threshold: float; ``IoU > iou_threshold`` suppresses (only within a category).

    Returns:
        ``(K,)`` int64 positions (into ``boxes``) of the kept boxes, ascending.

    The boxes are grouped by category with a stable sort (each group stays in
    score order) and every group is one segment. One segment runs on the calling
    thread: waking a thread pool for work that cannot be shared only adds a join
    (which, on a busy machine, waits for the other thread's next time slice).
    """
    n = boxes.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    group = None if labels is None else np.argsort(labels, kind="stable")
    grouped = boxes if group is None else boxes[group]
    columns = [np.ascontiguousarray(grouped[:, k]) for k in range(4)]  # structure of arrays
    areas = np.ascontiguousarray(box_areas(grouped))
    suppressed = np.zeros(n, dtype=np.uint8)  # uint8, not bool: the OR vectorises
    threshold = float(iou_threshold)
    if group is None:
        _greedy(*columns, areas, 0, n, threshold, suppressed)
        return np.nonzero(suppressed == 0)[0].astype(np.int64)
    changes = np.nonzero(np.diff(labels[group]))[0] + 1
    starts = np.concatenate([[0], changes, [n]]).astype(np.int64)
    _greedy_segments(*columns, areas, starts, threshold, suppressed)
    return np.sort(group[suppressed == 0]).astype(np.int64)


# ----------------------------------------------------------------------------- GPU: the mask


@functools.cache
def _nms_mask_kernel(dtype):
    """The ``@cuda.jit`` kernel ``(boxes, areas, labels, threshold, mask)`` for ``dtype``.

    One kernel per dtype because the shared-memory tile needs a fixed dtype.
    Launch with grid ``(B, B)`` and ``BLOCK`` threads; ``mask`` ``(N, B)`` uint64
    zeroed beforehand.
    """
    dtype = np.dtype(dtype).type
    iou = iou_device_function(dtype)
    nb_dtype = numba.from_dtype(np.dtype(dtype))

    @cuda.jit
    def nms_mask(boxes, areas, labels, threshold, mask):
        n = boxes.shape[0]
        col_block = cuda.blockIdx.x
        row_block = cuda.blockIdx.y
        if col_block < row_block:
            return  # every column box comes before every row box: nothing to suppress
        t = cuda.threadIdx.x
        # the 64 column boxes, loaded once per block and read by all 64 threads
        tile = cuda.shared.array((BLOCK, 4), nb_dtype)
        tile_area = cuda.shared.array(BLOCK, nb_dtype)
        tile_label = cuda.shared.array(BLOCK, numba.int64)
        c = col_block * BLOCK + t
        if c < n:
            tile[t, 0] = boxes[c, 0]
            tile[t, 1] = boxes[c, 1]
            tile[t, 2] = boxes[c, 2]
            tile[t, 3] = boxes[c, 3]
            tile_area[t] = areas[c]
            tile_label[t] = labels[c]
        cuda.syncthreads()
        r = row_block * BLOCK + t
        if r >= n:
            return
        cols = n - col_block * BLOCK  # the last column block may be partial
        if cols > BLOCK:  # noqa: PLR1730 (no min() in CUDA kernels: see kernels/boxes.py)
            cols = BLOCK
        first = t + 1 if col_block == row_block else 0  # only boxes after r
        ax1, ay1, ax2, ay2, area_a, label = (
            boxes[r, 0],
            boxes[r, 1],
            boxes[r, 2],
            boxes[r, 3],
            areas[r],
            labels[r],
        )
        word = numba.uint64(0)
        for k in range(first, cols):
            if tile_label[k] == label:
                v = iou(
                    ax1,
                    ay1,
                    ax2,
                    ay2,
                    area_a,
                    tile[k, 0],
                    tile[k, 1],
                    tile[k, 2],
                    tile[k, 3],
                    tile_area[k],
                )
                if v > threshold:
                    word |= numba.uint64(1) << numba.uint64(k)
        mask[r, col_block] = word

    return nms_mask


def _mask_inputs(boxes, labels):
    """``(xp, boxes, areas, labels, mask)``: contiguous inputs and the zeroed ``(N, B)`` mask."""
    xp = array_module(boxes)
    n = boxes.shape[0]
    boxes = xp.ascontiguousarray(boxes)
    labels = xp.zeros(n, np.int64) if labels is None else xp.ascontiguousarray(labels, np.int64)
    mask = xp.zeros((n, (n + BLOCK - 1) // BLOCK), dtype=np.uint64)
    return xp, boxes, box_areas(boxes), labels, mask


def nms_mask_cuda(boxes, labels, threshold):
    """Step 1: the ``(N, B)`` uint64 suppression mask of sorted boxes (Numba-CUDA).

    Args:
        boxes: ``(N, 4)`` float32 or float64 in score order, ``N >= 1``; CuPy on a
            GPU, NumPy under the simulator.
        labels: ``(N,)`` int64 or None (one category); only equal labels suppress.
        threshold: float.

    Returns:
        ``(N, B)`` uint64 of the inputs' module, ``B = ceil(N / 64)``.
    """
    _, boxes, areas, labels, mask = _mask_inputs(boxes, labels)
    blocks = mask.shape[1]
    _nms_mask_kernel(boxes.dtype.type)[(blocks, blocks), BLOCK](
        boxes, areas, labels, np.float64(threshold), mask
    )
    return mask


def nms_mask_cudac(boxes, labels, threshold):
    """As :func:`nms_mask_cuda`, with the CUDA C twin ``cuda/nms.cu`` (CuPy arrays, real GPU)."""
    _, boxes, areas, labels, mask = _mask_inputs(boxes, labels)
    n, blocks = mask.shape
    raw_kernel("nms", "nms_mask", boxes.dtype)(
        (blocks, blocks), (BLOCK,), (np.int32(n), np.float64(threshold), boxes, areas, labels, mask)
    )
    return mask


@numba.njit(cache=True)
def reduce_mask(mask):
    """Step 2: the greedy walk over the suppression mask, on the host (sequential by nature).

    Args:
        mask: ``(N, B)`` uint64 NumPy array from :func:`nms_mask_cuda`.

    Returns:
        ``(K,)`` int64 positions (in score order) of the kept boxes, ascending.
    """
    n, blocks = mask.shape
    removed = np.zeros(blocks, np.uint64)
    keep = np.empty(n, np.int64)
    kept = 0
    for r in range(n):
        block = r // BLOCK
        bit = np.uint64(1) << np.uint64(r % BLOCK)
        if removed[block] & bit:
            continue
        keep[kept] = r
        kept += 1
        for j in range(block, blocks):  # words before r's block never matter again
            removed[j] |= mask[r, j]
    return keep[:kept]


def _walk(mask_fn, boxes, labels, threshold):
    """Step 1 with ``mask_fn``, one copy of the mask to the host, step 2 there."""
    xp = array_module(boxes)
    if boxes.shape[0] == 0:
        return xp.zeros(0, dtype=np.int64)
    mask = mask_fn(boxes, labels, threshold)
    host = mask.get() if hasattr(mask, "get") else np.asarray(mask)
    return xp.asarray(reduce_mask(host))


def nms_sorted_cuda(boxes, labels, iou_threshold):
    """Greedy NMS of boxes in score order on the GPU: the Numba-CUDA mask, then the host walk.

    Args:
        boxes: ``(N, 4)`` float32 or float64 in score order; CuPy on a GPU, NumPy
            under the simulator.
        labels: ``(N,)`` int64 or None (one category).
        iou_threshold: float.

    Returns:
        ``(K,)`` int64 positions of the kept boxes, ascending, of the inputs' module.
    """
    return _walk(nms_mask_cuda, boxes, labels, iou_threshold)


def nms_sorted_cudac(boxes, labels, iou_threshold):
    """As :func:`nms_sorted_cuda`, with the CUDA C mask kernel (CuPy arrays, real GPU)."""
    return _walk(nms_mask_cudac, boxes, labels, iou_threshold)
