"""Greedy non-maximum suppression kernels: Numba CPU, Numba-CUDA and CUDA C.

The specification is :func:`minirccn.ops.nms.nms_reference`: walk the boxes by
decreasing score; keep a box unless a kept box before it overlaps it with
``IoU > threshold`` (IoU in the boxes' dtype, compared in float64). The caller
(:mod:`minirccn.ops.nms`) sorts the boxes and computes their areas with the
reference code, so every kernel here receives boxes **already in score order**
and returns positions in that order.

CPU (``nms_segments_cpu``)
    The sorted boxes are split into segments (one per category for
    ``batched_nms``, a single one for ``nms``); segments are independent, so
    they run in parallel (``prange``). Inside a segment the greedy walk is
    sequential, as it must be: for each box ``i`` not yet suppressed, one
    branch-free pass over the later boxes ORs ``IoU > threshold`` into their
    suppression flags. Suppressed boxes are skipped as *rows* (the early
    skip); the pass over columns computes every IoU instead of testing flags,
    because a loop without branches over contiguous coordinate columns
    (precomputed areas, structure of arrays) is vectorised by LLVM and that
    beats skipping.

GPU (``nms_cuda``): the classic 64-bit suppression mask
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

    Labels make ``batched_nms`` the same kernel: a box only suppresses boxes of
    its own category (``nms`` passes all-zero labels).

Which GPU path runs (the convention): the ``cuda`` backend always runs the
Numba-CUDA mask kernel, on CuPy arrays on a GPU and on NumPy arrays in the
simulator, so the code the simulator tests is the code the GPU runs. The same
kernel written in CUDA C (``cuda/nms.cu``, loaded as a CuPy ``RawKernel``) is
selected only explicitly, with ``impl="cupy"`` (benchmarks and the GPU tests);
it needs a real GPU.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numba
import numpy as np
from numba import cuda

from minirccn.kernels.boxes import iou_device_function, iou_pair

#: boxes per mask word: one bit per box of a column block
BLOCK = 64

#: the CUDA C twin of :func:`_nms_mask_kernel`
CUDA_SOURCE = Path(__file__).with_name("cuda") / "nms.cu"

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


def nms_segments_cpu(boxes, areas, starts, threshold):
    """Greedy NMS of sorted boxes, per segment, on the CPU.

    Args:
        boxes: ``(N, 4)`` float32 or float64 NumPy array in score order within
            each segment.
        areas: ``(N,)`` same dtype, ``(x2 - x1) * (y2 - y1)``.
        starts: ``(S + 1,)`` int64 segment boundaries (``[0, N]`` for plain NMS).
        threshold: float; ``IoU > threshold`` suppresses.

    Returns:
        ``(N,)`` bool, True for the kept boxes.

    One segment runs on the calling thread: waking a thread pool for work that
    cannot be shared only adds a join (which, on a busy machine, waits for the
    other thread's next time slice). Several segments run in parallel.
    """
    n = boxes.shape[0]
    suppressed = np.zeros(n, dtype=np.uint8)  # uint8, not bool: the OR vectorises
    if n == 0:
        return suppressed == 0
    columns = [np.ascontiguousarray(boxes[:, k]) for k in range(4)]  # structure of arrays
    areas = np.ascontiguousarray(areas, dtype=boxes.dtype)
    if len(starts) == 2:
        _greedy(*columns, areas, int(starts[0]), int(starts[1]), float(threshold), suppressed)
    else:
        _greedy_segments(
            *columns, areas, np.asarray(starts, dtype=np.int64), float(threshold), suppressed
        )
    return suppressed == 0


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
        if cols > BLOCK:  # noqa: PLR1730 (no min() in CUDA kernels: see kernels/iou.py)
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


@functools.cache
def _raw_kernel(dtype):
    """The CUDA C mask kernel of ``cuda/nms.cu`` for ``dtype`` as a CuPy ``RawKernel`` (GPU)."""
    import cupy

    name = "nms_mask_f32" if np.dtype(dtype) == np.float32 else "nms_mask_f64"
    module = cupy.RawModule(code=CUDA_SOURCE.read_text(), options=("-std=c++14",))
    return module.get_function(name)


def nms_mask_cuda(boxes, areas, labels, threshold, xp, impl="numba"):
    """Step 1: the ``(N, B)`` uint64 suppression mask of sorted boxes, on the GPU.

    Args:
        boxes: ``(N, 4)`` float32 or float64 array of ``xp`` in score order, ``N >= 1``.
        areas: ``(N,)`` same dtype.
        labels: ``(N,)`` int64; only equal labels suppress each other.
        threshold: float.
        xp: ``cupy`` on a GPU, ``numpy`` under the simulator.
        impl: ``"numba"`` (the Numba-CUDA kernel, the default everywhere) or
            ``"cupy"`` (the CUDA C ``RawKernel``, real GPU only).

    Returns:
        ``(N, B)`` uint64 array of ``xp``, ``B = ceil(N / 64)``.
    """
    n = boxes.shape[0]
    blocks = (n + BLOCK - 1) // BLOCK
    mask = xp.zeros((n, blocks), dtype=np.uint64)
    if impl == "numba":
        _nms_mask_kernel(boxes.dtype.type)[(blocks, blocks), BLOCK](
            boxes, areas, labels, np.float64(threshold), mask
        )
    elif impl == "cupy":
        _raw_kernel(boxes.dtype.type)(
            (blocks, blocks),
            (BLOCK,),
            (np.int32(n), np.float64(threshold), boxes, areas, labels, mask),
        )
    else:
        raise ValueError(f"impl: expected 'numba' or 'cupy', got {impl!r}")
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


def nms_cuda(boxes, areas, labels, threshold, xp, impl="numba"):
    """Greedy NMS of sorted boxes on the GPU: mask kernel, one copy to the host, host walk.

    Args:
        boxes: ``(N, 4)`` float32 or float64 array of ``xp`` in score order.
        areas: ``(N,)`` same dtype.
        labels: ``(N,)`` int64 (all equal for plain NMS).
        threshold: float.
        xp: ``cupy`` on a GPU, ``numpy`` under the simulator.
        impl: see :func:`nms_mask_cuda`.

    Returns:
        ``(K,)`` int64 NumPy positions of the kept boxes in score order.
    """
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    mask = nms_mask_cuda(boxes, areas, labels, threshold, xp, impl)
    host = mask.get() if hasattr(mask, "get") else np.asarray(mask)
    return reduce_mask(host)
