"""RoI max pooling kernels: Numba CPU, Numba-CUDA, and CUDA C (CuPy ``RawKernel``).

The rule is specified by :func:`minirccn.ops.roi_pool.roi_pool_reference`. Its bins
(projection, C rounding, floor/ceil, clipping) are computed once, vectorised, by
:func:`minirccn.ops.roi_pool.roi_bins` and handed to every kernel here, so the
kernels hold only the two loops that are slow in Python:

* forward: per output ``(r, c, i, j)``, scan the bin rows then columns starting
  from ``best = lowest`` (-FLT_MAX) and keep a value only if ``v > best``, so the
  first maximum wins and NaN is never taken; an empty bin gives ``(0, -1)``.
* backward: ``grad[b_r, c].flat[argmax] += grad_out`` for every output whose
  argmax is not -1.

Arguments of the forward kernels (the signature of
:func:`minirccn.ops.roi_pool.roi_pool_bins_reference`):

* ``features`` ``(N, C, H, W)`` float32/float64;
* ``batch`` ``(R,)`` int64; ``hstart``, ``hend`` ``(R, ph)`` int64;
  ``wstart``, ``wend`` ``(R, pw)`` int64, clipped to the map.

The backward kernels take the arguments of
:func:`minirccn.ops.roi_pool.roi_pool_backward_reference`: ``grad_out``
``(R, C, ph, pw)``, ``rois`` ``(R, 5)`` (only the batch index is read),
``argmax`` ``(R, C, ph, pw)`` int64 and ``input_shape`` ``(N, C, H, W)``.

Which path runs where
---------------------

* ``numba`` backend: :func:`roi_pool_numba` / :func:`roi_pool_backward_numba`.
  The forward is parallel over ``(r, c)`` pairs. The backward is parallel over
  ``(n, c)`` feature maps, each thread walking every RoI of its image in order:
  no two threads ever write the same gradient cell (no race, no atomics) and
  the sums are added in the reference's order, so it matches it bit for bit.
* ``cuda`` backend (real GPU and simulator): the ``@numba.cuda.jit`` kernels
  :func:`roi_pool_cuda` / :func:`roi_pool_backward_cuda`, one thread per
  output element; the backward uses ``cuda.atomic.add``, so on a GPU its sums
  may be added in a different order from run to run. These are the kernels the
  simulator tests on every machine, so they are what the ``cuda`` backend runs.
* ``cuda/roi_pool.cu``: the same two kernels in CUDA C, reached through
  :func:`roi_pool_cudac` / :func:`roi_pool_backward_cudac` (real
  GPU only; CuPy compiles them with NVRTC). They are the CUDA C lesson and a
  benchmark comparison; the GPU tests check them against the reference too.
"""

from __future__ import annotations

import numba
import numpy as np
from minirccn.kernels._launch import THREADS, array_module, blocks, raw_kernel, unravel4
from numba import cuda

#: -FLT_MAX, where every max starts (torchvision uses it for float64 maps too).
LOWEST = float(np.finfo(np.float32).min)


# ----------------------------------------------------------------------------- Numba CPU


@numba.njit(parallel=True, cache=True)
def _forward_numba(features, batch, hstart, hend, wstart, wend, lowest, out, argmax):
    r_count, channels, ph, pw = out.shape
    width = features.shape[3]
    for rc in numba.prange(r_count * channels):
        r = rc // channels
        c = rc % channels
        fmap = features[batch[r], c]
        for i in range(ph):
            h0 = hstart[r, i]
            h1 = hend[r, i]
            for j in range(pw):
                w0 = wstart[r, j]
                w1 = wend[r, j]
                if h1 <= h0 or w1 <= w0:
                    out[r, c, i, j] = 0
                    argmax[r, c, i, j] = -1
                    continue
                best = lowest
                best_at = -1
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        v = fmap[h, w]
                        if v > best:
                            best = v
                            best_at = h * width + w
                out[r, c, i, j] = best
                argmax[r, c, i, j] = best_at


@numba.njit(parallel=True, cache=True)
def _backward_numba(grad_out, batch, argmax, grad):
    r_count, channels, ph, pw = grad_out.shape
    n_count = grad.shape[0]
    for nc in numba.prange(n_count * channels):  # one thread owns one (n, c) map: no races
        n = nc // channels
        c = nc % channels
        g = grad[n, c]  # (H * W,)
        for r in range(r_count):
            if batch[r] != n:
                continue
            for i in range(ph):
                for j in range(pw):
                    k = argmax[r, c, i, j]
                    if k >= 0:
                        g[k] += grad_out[r, c, i, j]


def _forward_outputs(features, batch, hstart, wstart):
    """``(xp, out, argmax)``: the empty ``(R, C, ph, pw)`` outputs, where the inputs live."""
    xp = array_module(features)
    shape = (batch.shape[0], features.shape[1], hstart.shape[1], wstart.shape[1])
    return xp, xp.empty(shape, dtype=features.dtype), xp.empty(shape, dtype=np.int64)


def _backward_inputs(grad_out, rois, argmax):
    """``(xp, grad_out, batch, argmax)``, contiguous, with the RoIs' batch indices as int64."""
    xp = array_module(grad_out)
    batch = xp.ascontiguousarray(rois[:, 0].astype(np.int64))
    return xp, xp.ascontiguousarray(grad_out), batch, xp.ascontiguousarray(argmax, np.int64)


def roi_pool_numba(features, batch, hstart, hend, wstart, wend):
    """RoI max pooling on the CPU (Numba, parallel over RoI x channel).

    Args: see the module docstring (NumPy arrays).

    Returns:
        ``out`` ``(R, C, ph, pw)`` features' dtype, ``argmax`` ``(R, C, ph, pw)`` int64.
    """
    _, out, argmax = _forward_outputs(features, batch, hstart, wstart)
    if out.size:
        lowest = features.dtype.type(LOWEST)
        features = np.ascontiguousarray(features)
        _forward_numba(features, batch, hstart, hend, wstart, wend, lowest, out, argmax)
    return out, argmax


def roi_pool_backward_numba(grad_out, rois, argmax, input_shape):
    """Scatter ``grad_out`` to the argmax cells on the CPU (Numba, race-free).

    Args: see the module docstring (NumPy arrays).

    Returns:
        ``(N, C, H, W)`` grad_out's dtype, equal bit for bit to the reference.
    """
    _, grad_out, batch, argmax = _backward_inputs(grad_out, rois, argmax)
    n, c, h, w = input_shape
    grad = np.zeros((n, c, h * w), dtype=grad_out.dtype)
    if grad.size and grad_out.size:
        _backward_numba(grad_out, batch, argmax, grad)
    return grad.reshape(n, c, h, w)


# ----------------------------------------------------------------------------- Numba-CUDA


@cuda.jit
def _forward_cuda(features, batch, hstart, hend, wstart, wend, lowest, out, argmax):
    r_count, channels, ph, pw = out.shape
    index = cuda.grid(1)
    if index >= r_count * channels * ph * pw:
        return
    r, c, i, j = unravel4(index, channels, ph, pw)
    h0 = hstart[r, i]
    h1 = hend[r, i]
    w0 = wstart[r, j]
    w1 = wend[r, j]
    if h1 <= h0 or w1 <= w0:
        out[r, c, i, j] = 0
        argmax[r, c, i, j] = -1
        return
    b = batch[r]
    width = features.shape[3]
    best = lowest
    best_at = -1
    for h in range(h0, h1):
        for w in range(w0, w1):
            v = features[b, c, h, w]
            if v > best:
                best = v
                best_at = h * width + w
    out[r, c, i, j] = best
    argmax[r, c, i, j] = best_at


@cuda.jit
def _backward_cuda(grad_out, batch, argmax, channels, cells, grad):
    r_count, _, ph, pw = grad_out.shape
    index = cuda.grid(1)
    if index >= r_count * channels * ph * pw:
        return
    r, c, i, j = unravel4(index, channels, ph, pw)
    k = argmax[r, c, i, j]
    if k >= 0:
        cuda.atomic.add(grad, (batch[r] * channels + c) * cells + k, grad_out[r, c, i, j])


def roi_pool_cuda(features, batch, hstart, hend, wstart, wend):
    """RoI max pooling with the Numba-CUDA kernel, one thread per output element.

    Args: see the module docstring; CuPy arrays on a GPU, NumPy arrays in the simulator.

    Returns:
        ``out`` ``(R, C, ph, pw)`` features' dtype, ``argmax`` ``(R, C, ph, pw)`` int64,
        arrays of the inputs' module.
    """
    xp, out, argmax = _forward_outputs(features, batch, hstart, wstart)
    if out.size:
        lowest = features.dtype.type(LOWEST)
        features = xp.ascontiguousarray(features)
        _forward_cuda[blocks(out.size), THREADS](
            features, batch, hstart, hend, wstart, wend, lowest, out, argmax
        )
    return out, argmax


def roi_pool_backward_cuda(grad_out, rois, argmax, input_shape):
    """Scatter ``grad_out`` to the argmax cells with ``cuda.atomic.add`` (Numba-CUDA).

    Args: see the module docstring; arrays of one module (CuPy, or NumPy in the simulator).

    Returns:
        ``(N, C, H, W)`` grad_out's dtype; shared cells are summed in thread order.
    """
    xp, grad_out, batch, argmax = _backward_inputs(grad_out, rois, argmax)
    n, c, h, w = input_shape
    grad = xp.zeros(n * c * h * w, dtype=grad_out.dtype)
    if grad.size and grad_out.size:
        _backward_cuda[blocks(grad_out.size), THREADS](grad_out, batch, argmax, c, h * w, grad)
    return grad.reshape(n, c, h, w)


# ----------------------------------------------------------------------------- CUDA C via CuPy


def roi_pool_cudac(features, batch, hstart, hend, wstart, wend):
    """As :func:`roi_pool_cuda`, with the CUDA C kernel of ``cuda/roi_pool.cu`` (CuPy arrays)."""
    xp, out, argmax = _forward_outputs(features, batch, hstart, wstart)
    if out.size:
        r, c, ph, pw = out.shape
        sizes = [np.int64(v) for v in (r, c, features.shape[2], features.shape[3], ph, pw)]
        lowest = features.dtype.type(LOWEST)
        features = xp.ascontiguousarray(features)
        args = (features, batch, hstart, hend, wstart, wend, lowest, *sizes, out, argmax)
        raw_kernel("roi_pool", "roi_pool_forward", features.dtype)(
            (blocks(out.size),), (THREADS,), args
        )
    return out, argmax


def roi_pool_backward_cudac(grad_out, rois, argmax, input_shape):
    """As :func:`roi_pool_backward_cuda`, with the CUDA C kernel (``atomicAdd``; CuPy arrays)."""
    xp, grad_out, batch, argmax = _backward_inputs(grad_out, rois, argmax)
    n, c, h, w = input_shape
    grad = xp.zeros(n * c * h * w, dtype=grad_out.dtype)
    if grad.size and grad_out.size:
        r, _, ph, pw = grad_out.shape
        sizes = [np.int64(v) for v in (r, c, h * w, ph, pw)]
        raw_kernel("roi_pool", "roi_pool_backward", grad_out.dtype)(
            (blocks(grad_out.size),), (THREADS,), (grad_out, batch, argmax, *sizes, grad)
        )
    return grad.reshape(n, c, h, w)
