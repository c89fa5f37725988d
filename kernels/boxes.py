"""Pairwise IoU kernels: Numba CPU (parallel over rows) and Numba-CUDA (one thread per pair).

The specification is :func:`minirccn.ops.boxes.box_iou_reference`::

    inter = max(0, min(ax2, bx2) - max(ax1, bx1)) * max(0, min(ay2, by2) - max(ay1, by1))
    union = area_a + area_b - inter
    iou   = inter / union   if union != 0 else 0

Both kernels do exactly these operations, in this order, in the boxes' dtype,
so float32 results equal the reference bit for bit. Two traps make that work:

* Numba promotes ``float32 op int/float64`` to float64, so ``max(w, 0)`` would
  silently compute in float64; the zero is made in the boxes' dtype instead.
* On a GPU, NVVM fuses ``a + b - w * h`` into one fused multiply-add (rounded
  once instead of twice). The CUDA device function therefore multiplies with
  libdevice's ``fmul_rn`` / ``dmul_rn``, which are never fused. (The simulator
  runs plain Python, which never fuses, so it uses ``*``.)

The CUDA device function also avoids ``min()``/``max()``: Numba 0.68's
built-in CUDA target cannot type its new vararg ``min``/``max`` overloads (a
"Signature mismatch" at compile time that the simulator never shows), so it
uses conditional expressions. ``tests/ops/test_nms.py`` compiles the real kernels
to PTX to catch both problems without a GPU.

A NaN coordinate makes the box's area NaN, so the union and the IoU are NaN
whichever way ``min``/``max`` treat NaN; the kernels agree with the reference.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from minirccn.kernels._launch import array_module, blocks
from numba import cuda

# ----------------------------------------------------------------------------- CPU


@numba.njit(cache=True, error_model="numpy")
def iou_pair(ax1, ay1, ax2, ay2, area_a, bx1, by1, bx2, by2, area_b, zero):
    """IoU of boxes ``a`` and ``b`` (coordinates and areas of dtype ``T``; ``zero = T(0)``).

    ``error_model="numpy"`` drops Numba's ZeroDivisionError check: ``inter /
    union`` with ``union == 0`` is discarded by the select anyway, and without
    the check the loops that call this (inlined by LLVM) compile to SIMD.
    """
    w = max(min(ax2, bx2) - max(ax1, bx1), zero)
    h = max(min(ay2, by2) - max(ay1, by1), zero)
    inter = w * h
    union = area_a + area_b - inter
    return inter / union if union != zero else zero


@numba.njit(cache=True)
def iou_row(ax1, ay1, ax2, ay2, area_a, x1, y1, x2, y2, areas, zero, out):
    """``out[j] = IoU(a, box j)`` for one box ``a`` against columns of boxes.

    Args:
        ax1, ay1, ax2, ay2, area_a: scalars of box ``a`` and its area, dtype ``T``.
        x1, y1, x2, y2, areas: ``(M,)`` contiguous ``T``, the other boxes as columns.
        zero: ``T(0)``.
        out: ``(M,)`` ``T``, written.

    ``j`` counts from 0 over whole arrays, so LLVM can prove the indices
    non-negative (no wraparound check) and vectorises the loop (AVX2: 8
    float32 pairs per instruction).
    """
    for j in range(out.shape[0]):
        out[j] = iou_pair(ax1, ay1, ax2, ay2, area_a, x1[j], y1[j], x2[j], y2[j], areas[j], zero)


@numba.njit(parallel=True, cache=True)
def _box_iou_rows(boxes1, boxes2, out):
    """Fill ``out[i, j]`` with the IoU of ``boxes1[i]`` and ``boxes2[j]``, rows in parallel.

    Args:
        boxes1: ``(N, 4)`` float32 or float64, C-contiguous.
        boxes2: ``(M, 4)`` same dtype.
        out: ``(N, M)`` same dtype, written.
    """
    zero = np.zeros(1, boxes1.dtype)[0]  # a zero of the boxes' dtype (see module docstring)
    # boxes2 as columns (structure of arrays) so the inner loop reads contiguous memory
    x1 = boxes2[:, 0].copy()
    y1 = boxes2[:, 1].copy()
    x2 = boxes2[:, 2].copy()
    y2 = boxes2[:, 3].copy()
    areas = (x2 - x1) * (y2 - y1)
    for i in numba.prange(boxes1.shape[0]):  # rows are independent: no shared writes
        ax1, ay1, ax2, ay2 = boxes1[i, 0], boxes1[i, 1], boxes1[i, 2], boxes1[i, 3]
        area_a = (ax2 - ax1) * (ay2 - ay1)
        iou_row(ax1, ay1, ax2, ay2, area_a, x1, y1, x2, y2, areas, zero, out[i])


def box_iou_numba(boxes1, boxes2):
    """Pairwise IoU on the CPU (Numba, rows in parallel).

    Args:
        boxes1: ``(N, 4)`` float32 or float64 NumPy array.
        boxes2: ``(M, 4)`` same dtype.

    Returns:
        ``(N, M)`` that dtype.
    """
    boxes1 = np.ascontiguousarray(boxes1)
    boxes2 = np.ascontiguousarray(boxes2, dtype=boxes1.dtype)
    out = np.empty((boxes1.shape[0], boxes2.shape[0]), dtype=boxes1.dtype)
    if out.size:
        _box_iou_rows(boxes1, boxes2, out)
    return out


# ----------------------------------------------------------------------------- CUDA


@cuda.jit(device=True)
def _plain_mul(a, b):
    """``a * b``: the simulator's multiply (Python never fuses)."""
    return a * b


@functools.cache
def iou_device_function(dtype):
    """The CUDA device function ``iou(ax1, ay1, ax2, ay2, area_a, bx1, by1, bx2, by2, area_b)``.

    Args:
        dtype: ``numpy.float32`` or ``numpy.float64``, the boxes' dtype.

    Returns:
        a ``@cuda.jit(device=True)`` function computing the reference formula in
        ``dtype`` with unfused multiplies (one per dtype, because libdevice's
        round-to-nearest multiply has one name per precision).
    """
    dtype = np.dtype(dtype).type
    if numba.config.ENABLE_CUDASIM:
        mul = _plain_mul
    else:
        from numba.cuda import libdevice

        mul = libdevice.fmul_rn if dtype is np.float32 else libdevice.dmul_rn
    zero = dtype(0)

    @cuda.jit(device=True)
    def iou(ax1, ay1, ax2, ay2, area_a, bx1, by1, bx2, by2, area_b):
        # conditional expressions, not min()/max(): Numba 0.68's built-in CUDA
        # target fails to type the new vararg min/max overloads
        w = (ax2 if ax2 < bx2 else bx2) - (ax1 if ax1 > bx1 else bx1)  # noqa: FURB136
        h = (ay2 if ay2 < by2 else by2) - (ay1 if ay1 > by1 else by1)  # noqa: FURB136
        w = w if w > zero else zero  # noqa: FURB136
        h = h if h > zero else zero  # noqa: FURB136
        inter = mul(w, h)
        union = area_a + area_b - inter
        if union == zero:
            return zero
        return inter / union

    return iou


@functools.cache
def _iou_pairs_kernel(dtype):
    """The ``@cuda.jit`` kernel ``(boxes1, area1, boxes2, area2, out)``: one thread per pair."""
    iou = iou_device_function(dtype)

    @cuda.jit
    def iou_pairs(boxes1, area1, boxes2, area2, out):
        j, i = cuda.grid(2)  # x runs along columns so neighbouring threads write neighbours
        if i < out.shape[0] and j < out.shape[1]:
            out[i, j] = iou(
                boxes1[i, 0],
                boxes1[i, 1],
                boxes1[i, 2],
                boxes1[i, 3],
                area1[i],
                boxes2[j, 0],
                boxes2[j, 1],
                boxes2[j, 2],
                boxes2[j, 3],
                area2[j],
            )

    return iou_pairs


#: threads per block of the pairwise kernel (x along boxes2, y along boxes1)
IOU_BLOCK = (16, 16)


def box_areas(boxes):
    """``(x2 - x1) * (y2 - y1)`` of ``(N, 4)`` boxes, elementwise in their dtype and array module.

    One subtraction and one multiply per element, nothing to fuse: the same bits as
    :func:`minirccn.ops.boxes.box_area_reference` (computed here so that kernels
    import nothing from the ops they speed up).
    """
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou_cuda(boxes1, boxes2):
    """Pairwise IoU on the GPU (or in the simulator), one thread per pair.

    Args:
        boxes1: ``(N, 4)`` float32 or float64, CuPy on a GPU, NumPy under the simulator.
        boxes2: ``(M, 4)`` same dtype and array module.

    Returns:
        ``(N, M)`` boxes' dtype, an array of the inputs' module.
    """
    xp = array_module(boxes1)
    boxes1 = xp.ascontiguousarray(boxes1)
    boxes2 = xp.ascontiguousarray(boxes2, dtype=boxes1.dtype)
    n, m = boxes1.shape[0], boxes2.shape[0]
    out = xp.empty((n, m), dtype=boxes1.dtype)
    if out.size == 0:
        return out
    bx, by = IOU_BLOCK
    grid = (blocks(m, bx), blocks(n, by))
    kernel = _iou_pairs_kernel(boxes1.dtype.type)
    kernel[grid, IOU_BLOCK](boxes1, box_areas(boxes1), boxes2, box_areas(boxes2), out)
    return out
