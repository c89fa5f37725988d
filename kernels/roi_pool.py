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

Arguments shared by the forward kernels (all C-contiguous):

* ``features`` ``(N, C, H, W)`` float32/float64;
* ``batch`` ``(R,)`` int64; ``hstart``, ``hend`` ``(R, ph)`` int64;
  ``wstart``, ``wend`` ``(R, pw)`` int64, clipped to the map.

Which path runs where
---------------------

* ``numba`` backend: :func:`roi_pool_forward_cpu` / :func:`roi_pool_backward_cpu`.
  The forward is parallel over ``(r, c)`` pairs. The backward is parallel over
  ``(n, c)`` feature maps, each thread walking every RoI of its image in order:
  no two threads ever write the same gradient cell (no race, no atomics) and
  the sums are added in the reference's order, so it matches it bit for bit.
* ``cuda`` backend (real GPU and simulator): the ``@numba.cuda.jit`` kernels
  :func:`roi_pool_forward_cuda` / :func:`roi_pool_backward_cuda`, one thread per
  output element; the backward uses ``cuda.atomic.add``, so on a GPU its sums
  may be added in a different order from run to run. These are the kernels the
  simulator tests on every machine, so they are what the ``cuda`` backend runs.
* ``cuda/roi_pool.cu``: the same two kernels in CUDA C, reached through
  :func:`roi_pool_forward_rawkernel` / :func:`roi_pool_backward_rawkernel` (real
  GPU only; CuPy compiles them with NVRTC). They are the CUDA C lesson and a
  benchmark comparison; the GPU tests check them against the reference too.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numba
import numpy as np
from numba import cuda

from minirccn.backend import get_array_module

#: -FLT_MAX, where every max starts (torchvision uses it for float64 maps too).
LOWEST = float(np.finfo(np.float32).min)

_THREADS = 128


# ----------------------------------------------------------------------------- Numba CPU


@numba.njit(parallel=True, cache=True)
def _forward_cpu(features, batch, hstart, hend, wstart, wend, lowest, out, argmax):
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
def _backward_cpu(grad_out, batch, argmax, grad):
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


def roi_pool_forward_cpu(features, batch, hstart, hend, wstart, wend):
    """RoI max pooling on the CPU (Numba, parallel over RoI x channel).

    Args: see the module docstring (NumPy arrays).

    Returns:
        ``out`` ``(R, C, ph, pw)`` features' dtype, ``argmax`` ``(R, C, ph, pw)`` int64.
    """
    r, c, ph, pw = batch.shape[0], features.shape[1], hstart.shape[1], wstart.shape[1]
    out = np.empty((r, c, ph, pw), dtype=features.dtype)
    argmax = np.empty((r, c, ph, pw), dtype=np.int64)
    if out.size:
        lowest = features.dtype.type(LOWEST)
        _forward_cpu(features, batch, hstart, hend, wstart, wend, lowest, out, argmax)
    return out, argmax


def roi_pool_backward_cpu(grad_out, batch, argmax, input_shape):
    """Scatter ``grad_out`` to the argmax cells on the CPU (Numba, race-free).

    Args:
        grad_out: ``(R, C, ph, pw)`` float32/float64 NumPy array.
        batch: ``(R,)`` int64 batch index of each RoI.
        argmax: ``(R, C, ph, pw)`` int64.
        input_shape: ``(N, C, H, W)``.

    Returns:
        ``(N, C, H, W)`` grad_out's dtype, equal bit for bit to the reference.
    """
    n, c, h, w = input_shape
    grad = np.zeros((n, c, h * w), dtype=grad_out.dtype)
    if grad.size and grad_out.size:
        _backward_cpu(grad_out, batch, argmax, grad)
    return grad.reshape(n, c, h, w)


# ----------------------------------------------------------------------------- Numba-CUDA


@cuda.jit
def _forward_cuda(features, batch, hstart, hend, wstart, wend, lowest, out, argmax):
    r_count, channels, ph, pw = out.shape
    index = cuda.grid(1)
    if index >= r_count * channels * ph * pw:
        return
    j = index % pw
    i = (index // pw) % ph
    c = (index // (pw * ph)) % channels
    r = index // (pw * ph * channels)
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
    j = index % pw
    i = (index // pw) % ph
    c = (index // (pw * ph)) % channels
    r = index // (pw * ph * channels)
    k = argmax[r, c, i, j]
    if k >= 0:
        cuda.atomic.add(grad, (batch[r] * channels + c) * cells + k, grad_out[r, c, i, j])


def _blocks(total):
    return max(1, math.ceil(total / _THREADS))


def roi_pool_forward_cuda(features, batch, hstart, hend, wstart, wend):
    """RoI max pooling with the Numba-CUDA kernel, one thread per output element.

    Args: see the module docstring; CuPy arrays on a GPU, NumPy arrays in the simulator.

    Returns:
        ``out`` ``(R, C, ph, pw)`` features' dtype, ``argmax`` ``(R, C, ph, pw)`` int64,
        arrays of the inputs' module.
    """
    xp = get_array_module(features)
    r, c, ph, pw = batch.shape[0], features.shape[1], hstart.shape[1], wstart.shape[1]
    out = xp.empty((r, c, ph, pw), dtype=features.dtype)
    argmax = xp.empty((r, c, ph, pw), dtype=np.int64)
    if out.size:
        _forward_cuda[_blocks(out.size), _THREADS](
            features, batch, hstart, hend, wstart, wend, features.dtype.type(LOWEST), out, argmax
        )
    return out, argmax


def roi_pool_backward_cuda(grad_out, batch, argmax, input_shape):
    """Scatter ``grad_out`` to the argmax cells with ``cuda.atomic.add`` (Numba-CUDA).

    Args: as :func:`roi_pool_backward_cpu`, arrays of one module (CuPy or NumPy).

    Returns:
        ``(N, C, H, W)`` grad_out's dtype; shared cells are summed in thread order.
    """
    xp = get_array_module(grad_out)
    n, c, h, w = input_shape
    grad = xp.zeros(n * c * h * w, dtype=grad_out.dtype)
    if grad.size and grad_out.size:
        _backward_cuda[_blocks(grad_out.size), _THREADS](grad_out, batch, argmax, c, h * w, grad)
    return grad.reshape(n, c, h, w)


# ----------------------------------------------------------------------------- CUDA C via CuPy

CU_SOURCE = Path(__file__).parent / "cuda" / "roi_pool.cu"


@functools.lru_cache(maxsize=None)
def _raw_module():
    import cupy

    return cupy.RawModule(code=CU_SOURCE.read_text())


def _suffix(dtype):
    return "f32" if dtype == np.float32 else "f64"


def roi_pool_forward_rawkernel(features, batch, hstart, hend, wstart, wend):
    """As :func:`roi_pool_forward_cuda`, with the CUDA C kernel of ``cuda/roi_pool.cu`` (CuPy)."""
    import cupy

    r, c, ph, pw = batch.shape[0], features.shape[1], hstart.shape[1], wstart.shape[1]
    out = cupy.empty((r, c, ph, pw), dtype=features.dtype)
    argmax = cupy.empty((r, c, ph, pw), dtype=np.int64)
    if out.size:
        kernel = _raw_module().get_function(f"roi_pool_forward_{_suffix(features.dtype)}")
        sizes = [np.int64(v) for v in (r, c, features.shape[2], features.shape[3], ph, pw)]
        lowest = features.dtype.type(LOWEST)
        args = (features, batch, hstart, hend, wstart, wend, lowest, *sizes, out, argmax)
        kernel((_blocks(out.size),), (_THREADS,), args)
    return out, argmax


def roi_pool_backward_rawkernel(grad_out, batch, argmax, input_shape):
    """As :func:`roi_pool_backward_cuda`, with the CUDA C kernel (``atomicAdd``; CuPy arrays)."""
    import cupy

    n, c, h, w = input_shape
    grad = cupy.zeros(n * c * h * w, dtype=grad_out.dtype)
    if grad.size and grad_out.size:
        kernel = _raw_module().get_function(f"roi_pool_backward_{_suffix(grad_out.dtype)}")
        r, _, ph, pw = grad_out.shape
        sizes = [np.int64(v) for v in (r, c, h * w, ph, pw)]
        kernel((_blocks(grad_out.size),), (_THREADS,), (grad_out, batch, argmax, *sizes, grad))
    return grad.reshape(n, c, h, w)
