"""RoIAlign kernels: Numba CPU, Numba-CUDA, and CUDA C (CuPy ``RawKernel``).

The rule is specified by :func:`minirccn.ops.roi_align.roi_align_reference`. Where
every sample reads the map (projection, sample grid, clamping, the bilinear
weights) is computed once, vectorised, by :func:`minirccn.ops.roi_align.sample_tables`
and handed to every kernel here, so the kernels hold only the loops:

* forward, per output ``(r, c, i, j)``: ``acc = 0``; for every sample ``(g, h)`` of
  the bin whose row and column both contribute (``ylo >= 0`` and ``xlo >= 0``)::

      acc += wy_lo*wx_lo*X[ylo, xlo] + wy_lo*wx_hi*X[ylo, xhi]
           + wy_hi*wx_lo*X[yhi, xlo] + wy_hi*wx_hi*X[yhi, xhi]

  then ``out = acc / count[r]`` (samples in torchvision's order, so the sum is
  added as torchvision's CPU kernel adds it);
* backward: the same walk, adding ``grad_out[r, c, i, j] * (wy * wx) / count[r]``
  to each of the 4 neighbours.

Arguments (the signatures of :func:`minirccn.ops.roi_align.roi_align_tables_reference`
and :func:`~minirccn.ops.roi_align.roi_align_backward_tables_reference`; arrays of
one module): ``features`` ``(N, C, H, W)`` or ``grad_out`` ``(R, C, ph, pw)``
float32/float64 (made contiguous here), ``input_shape`` for the backward, and a
:class:`~minirccn.ops.roi_align.SampleTables` ``tab``: ``batch`` ``(R,)`` int64,
``count`` ``(R,)`` dtype ``T``; row tables ``(R, ph, G_h)``, column tables
``(R, pw, G_w)`` (``lo``, ``hi`` int64, -1 = no contribution; ``w_lo``, ``w_hi`` ``T``).

Which path runs where
---------------------

* ``numba`` backend: :func:`roi_align_numba` (parallel over ``(r, c)``) and
  :func:`roi_align_backward_numba`, parallel over the ``(n, c)`` gradient planes:
  each thread walks every RoI of its image in order, so no two threads ever
  write the same cell (no race, no atomics) and each cell's sum is added in
  torchvision's order, the same on every run.
* ``cuda`` backend (real GPU and simulator): the ``@numba.cuda.jit`` kernels
  :func:`roi_align_cuda` / :func:`roi_align_backward_cuda`, one thread per
  output element; the backward uses ``cuda.atomic.add``.
* ``cuda/roi_align.cu``: the same two kernels in CUDA C, reached through
  :func:`roi_align_cudac` / :func:`roi_align_backward_cudac` (real
  GPU only; CuPy compiles them with NVRTC).
"""

from __future__ import annotations

import numba
import numpy as np
from minirccn.kernels._launch import THREADS, array_module, blocks, raw_kernel, unravel4
from numba import cuda

# ----------------------------------------------------------------------------- Numba CPU


@numba.njit(parallel=True, cache=True)
def _forward_numba(features, batch, count, ylo, yhi, wylo, wyhi, xlo, xhi, wxlo, wxhi, zero, out):
    r_count, channels, ph, pw = out.shape
    gh = ylo.shape[2]
    gw = xlo.shape[2]
    for rc in numba.prange(r_count * channels):
        r = rc // channels
        c = rc % channels
        fmap = features[batch[r], c]
        for i in range(ph):
            for j in range(pw):
                acc = zero
                for g in range(gh):
                    y0 = ylo[r, i, g]
                    if y0 < 0:
                        continue
                    y1 = yhi[r, i, g]
                    ay = wylo[r, i, g]
                    by = wyhi[r, i, g]
                    for h in range(gw):
                        x0 = xlo[r, j, h]
                        if x0 < 0:
                            continue
                        x1 = xhi[r, j, h]
                        ax = wxlo[r, j, h]
                        bx = wxhi[r, j, h]
                        acc += (
                            ay * ax * fmap[y0, x0]
                            + ay * bx * fmap[y0, x1]
                            + by * ax * fmap[y1, x0]
                            + by * bx * fmap[y1, x1]
                        )
                out[r, c, i, j] = acc / count[r]


@numba.njit(parallel=True, cache=True)
def _backward_numba(grad_out, batch, count, ylo, yhi, wylo, wyhi, xlo, xhi, wxlo, wxhi, grad):
    r_count, channels, ph, pw = grad_out.shape
    n_count = grad.shape[0]
    gh = ylo.shape[2]
    gw = xlo.shape[2]
    for nc in numba.prange(n_count * channels):  # one thread owns one (n, c) plane: no races
        n = nc // channels
        c = nc % channels
        plane = grad[n, c]  # (H, W)
        for r in range(r_count):
            if batch[r] != n:
                continue
            for i in range(ph):
                for j in range(pw):
                    top = grad_out[r, c, i, j]
                    for g in range(gh):
                        y0 = ylo[r, i, g]
                        if y0 < 0:
                            continue
                        y1 = yhi[r, i, g]
                        ay = wylo[r, i, g]
                        by = wyhi[r, i, g]
                        for h in range(gw):
                            x0 = xlo[r, j, h]
                            if x0 < 0:
                                continue
                            x1 = xhi[r, j, h]
                            ax = wxlo[r, j, h]
                            bx = wxhi[r, j, h]
                            plane[y0, x0] += top * (ay * ax) / count[r]
                            plane[y0, x1] += top * (ay * bx) / count[r]
                            plane[y1, x0] += top * (by * ax) / count[r]
                            plane[y1, x1] += top * (by * bx) / count[r]


def _table_args(tab):
    """The tables of a ``SampleTables`` as the flat argument list every kernel takes."""
    return (tab.batch, tab.count, *tab.y, *tab.x)


def _forward_output(features, tab):
    """``(xp, features, out)``: contiguous ``features`` and the empty ``(R, C, ph, pw)`` output."""
    xp = array_module(features)
    r, c = tab.batch.shape[0], features.shape[1]
    ph, pw = tab.y.lo.shape[1], tab.x.lo.shape[1]
    out = xp.empty((r, c, ph, pw), dtype=features.dtype)
    return xp, xp.ascontiguousarray(features), out


def roi_align_numba(features, tab):
    """RoIAlign on the CPU (Numba, parallel over RoI x channel).

    Args:
        features: ``(N, C, H, W)`` float32/float64 NumPy array.
        tab: the :class:`~minirccn.ops.roi_align.SampleTables` of the RoIs (NumPy).

    Returns:
        ``(R, C, ph, pw)`` features' dtype.
    """
    _, features, out = _forward_output(features, tab)
    if out.size:
        zero = features.dtype.type(0)
        _forward_numba(features, *_table_args(tab), zero, out)
    return out


def roi_align_backward_numba(grad_out, tab, input_shape):
    """Spread ``grad_out`` over the samples' neighbours on the CPU (Numba, race-free).

    Args:
        grad_out: ``(R, C, ph, pw)`` float32/float64 NumPy array.
        tab: the :class:`~minirccn.ops.roi_align.SampleTables` of the RoIs (NumPy).
        input_shape: ``(N, C, H, W)``.

    Returns:
        ``(N, C, H, W)`` grad_out's dtype, deterministic.
    """
    grad_out = np.ascontiguousarray(grad_out)
    grad = np.zeros(tuple(input_shape), dtype=grad_out.dtype)
    if grad.size and grad_out.size:
        _backward_numba(grad_out, *_table_args(tab), grad)
    return grad


# ----------------------------------------------------------------------------- Numba-CUDA


@cuda.jit
def _forward_cuda(features, batch, count, ylo, yhi, wylo, wyhi, xlo, xhi, wxlo, wxhi, zero, out):
    r_count, channels, ph, pw = out.shape
    index = cuda.grid(1)
    if index >= r_count * channels * ph * pw:
        return
    r, c, i, j = unravel4(index, channels, ph, pw)
    b = batch[r]
    acc = zero
    for g in range(ylo.shape[2]):
        y0 = ylo[r, i, g]
        if y0 < 0:
            continue
        y1 = yhi[r, i, g]
        ay = wylo[r, i, g]
        by = wyhi[r, i, g]
        for h in range(xlo.shape[2]):
            x0 = xlo[r, j, h]
            if x0 < 0:
                continue
            x1 = xhi[r, j, h]
            ax = wxlo[r, j, h]
            bx = wxhi[r, j, h]
            acc += (
                ay * ax * features[b, c, y0, x0]
                + ay * bx * features[b, c, y0, x1]
                + by * ax * features[b, c, y1, x0]
                + by * bx * features[b, c, y1, x1]
            )
    out[r, c, i, j] = acc / count[r]


@cuda.jit
def _backward_cuda(grad_out, batch, count, ylo, yhi, wylo, wyhi, xlo, xhi, wxlo, wxhi, grad):
    r_count, channels, ph, pw = grad_out.shape
    index = cuda.grid(1)
    if index >= r_count * channels * ph * pw:
        return
    r, c, i, j = unravel4(index, channels, ph, pw)
    b = batch[r]
    top = grad_out[r, c, i, j]
    for g in range(ylo.shape[2]):
        y0 = ylo[r, i, g]
        if y0 < 0:
            continue
        y1 = yhi[r, i, g]
        ay = wylo[r, i, g]
        by = wyhi[r, i, g]
        for h in range(xlo.shape[2]):
            x0 = xlo[r, j, h]
            if x0 < 0:
                continue
            x1 = xhi[r, j, h]
            ax = wxlo[r, j, h]
            bx = wxhi[r, j, h]
            cuda.atomic.add(grad, (b, c, y0, x0), top * (ay * ax) / count[r])
            cuda.atomic.add(grad, (b, c, y0, x1), top * (ay * bx) / count[r])
            cuda.atomic.add(grad, (b, c, y1, x0), top * (by * ax) / count[r])
            cuda.atomic.add(grad, (b, c, y1, x1), top * (by * bx) / count[r])


def roi_align_cuda(features, tab):
    """RoIAlign with the Numba-CUDA kernel, one thread per output element.

    Args: as :func:`roi_align_numba`; CuPy arrays on a GPU, NumPy arrays in
    the simulator.

    Returns:
        ``(R, C, ph, pw)`` features' dtype, an array of the inputs' module.
    """
    _, features, out = _forward_output(features, tab)
    if out.size:
        zero = features.dtype.type(0)
        _forward_cuda[blocks(out.size), THREADS](features, *_table_args(tab), zero, out)
    return out


def roi_align_backward_cuda(grad_out, tab, input_shape):
    """RoIAlign's backward with ``cuda.atomic.add`` (Numba-CUDA), one thread per output element.

    Args: as :func:`roi_align_backward_numba`, arrays of one module (CuPy or NumPy).

    Returns:
        ``(N, C, H, W)`` grad_out's dtype; shared cells are summed in thread order.
    """
    xp = array_module(grad_out)
    grad_out = xp.ascontiguousarray(grad_out)
    grad = xp.zeros(tuple(input_shape), dtype=grad_out.dtype)
    if grad.size and grad_out.size:
        _backward_cuda[blocks(grad_out.size), THREADS](grad_out, *_table_args(tab), grad)
    return grad


# ----------------------------------------------------------------------------- CUDA C via CuPy


def _sizes(tab):
    """``(ph, G_h, pw, G_w)`` as int64 kernel arguments."""
    _, ph, gh = tab.y.lo.shape
    _, pw, gw = tab.x.lo.shape
    return [np.int64(v) for v in (ph, gh, pw, gw)]


def roi_align_cudac(features, tab):
    """As :func:`roi_align_cuda`, with the CUDA C kernel of ``cuda/roi_align.cu`` (CuPy)."""
    _, features, out = _forward_output(features, tab)
    if out.size:
        r, c, height, width = tab.batch.shape[0], *features.shape[1:]
        sizes = [np.int64(v) for v in (r, c, height, width)] + _sizes(tab)
        args = (features, *_table_args(tab), *sizes, out)
        raw_kernel("roi_align", "roi_align_forward", features.dtype)(
            (blocks(out.size),), (THREADS,), args
        )
    return out


def roi_align_backward_cudac(grad_out, tab, input_shape):
    """As :func:`roi_align_backward_cuda`, with the CUDA C kernel (``atomicAdd``; CuPy arrays)."""
    xp = array_module(grad_out)
    grad_out = xp.ascontiguousarray(grad_out)
    n, c, height, width = input_shape
    grad = xp.zeros((n, c, height, width), dtype=grad_out.dtype)
    if grad.size and grad_out.size:
        sizes = [np.int64(v) for v in (grad_out.shape[0], c, height, width)] + _sizes(tab)
        args = (grad_out, *_table_args(tab), *sizes, grad)
        raw_kernel("roi_align", "roi_align_backward", grad_out.dtype)(
            (blocks(grad_out.size),), (THREADS,), args
        )
    return grad
