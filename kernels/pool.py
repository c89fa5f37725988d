"""Fast 2-D max pooling, forward and backward: Numba on the CPU, Numba-CUDA on the GPU.

The specification is :func:`minirccn.nn.layers.max_pool2d_reference` and
:func:`minirccn.nn.layers.max_pool2d_backward_reference`: windows of ``kh x kw``
every ``(sh, sw)`` pixels, no padding, floor mode (torch's defaults); within a
window the *first* maximum in row-major order wins, and a NaN counts as the
maximum (the first NaN wins), as ``numpy.argmax`` and torch do.

Arrays::

    x       (N, C, H, W)     float32 / float64
    out     (N, C, Ho, Wo)   same dtype, Ho = (H - kh) // sh + 1, Wo likewise
    argmax  (N, C, Ho, Wo)   int64 flat index h * W + w into the H x W plane
    dout    (N, C, Ho, Wo)   gradient of the output
    dx      (N, C, H, W)     gradient of the input: dout summed at the argmax pixels

CPU kernels parallelise over the ``N * C`` planes (the backward writes only its
own plane, so ``+=`` never races). The GPU backward is a gather: one thread per
input pixel adds the ``dout`` of every window whose argmax is that pixel, in
the reference's order, so no atomics and the same bits every run.
"""

from __future__ import annotations

import math

import numba
from numba import cuda

# --------------------------------------------------------------------------- CPU


@numba.njit(parallel=True, cache=True)
def _max_pool_cpu(x, kh, kw, sh, sw, out, argmax):
    n_img, n_ch, height, width = x.shape
    ho, wo = out.shape[2], out.shape[3]
    for nc in numba.prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        for oh in range(ho):
            for ow in range(wo):
                h0 = oh * sh
                w0 = ow * sw
                best = x[n, c, h0, w0]
                best_idx = h0 * width + w0
                for i in range(kh):
                    for j in range(kw):
                        v = x[n, c, h0 + i, w0 + j]
                        # strictly greater: the first maximum wins; the first NaN wins
                        if v > best or (v != v and best == best):
                            best = v
                            best_idx = (h0 + i) * width + (w0 + j)
                out[n, c, oh, ow] = best
                argmax[n, c, oh, ow] = best_idx


@numba.njit(parallel=True, cache=True)
def _max_pool_backward_cpu(dout, argmax, dx):
    n_img, n_ch, height, width = dx.shape
    ho, wo = dout.shape[2], dout.shape[3]
    for nc in numba.prange(n_img * n_ch):  # one thread owns plane dx[n, c]: no race
        n = nc // n_ch
        c = nc % n_ch
        for h in range(height):
            for w in range(width):
                dx[n, c, h, w] = 0
        for oh in range(ho):
            for ow in range(wo):
                k = argmax[n, c, oh, ow]
                dx[n, c, k // width, k % width] += dout[n, c, oh, ow]


def max_pool_cpu(x, kh, kw, sh, sw, out, argmax):
    """Fill ``out`` and ``argmax`` ``(N, C, Ho, Wo)`` from ``x (N, C, H, W)`` (Numba)."""
    _max_pool_cpu(x, kh, kw, sh, sw, out, argmax)
    return out, argmax


def max_pool_backward_cpu(dout, argmax, dx):
    """Overwrite ``dx (N, C, H, W)`` with ``dout`` summed at the argmax pixels (Numba)."""
    _max_pool_backward_cpu(dout, argmax, dx)
    return dx


# --------------------------------------------------------------------------- GPU

THREADS = 128


def _blocks(total: int) -> int:
    return math.ceil(total / THREADS)


@cuda.jit
def _max_pool_gpu(x, kh, kw, sh, sw, out, argmax):
    # one thread per output element (n, c, oh, ow)
    idx = cuda.grid(1)
    n_img, n_ch, height, width = x.shape
    ho, wo = out.shape[2], out.shape[3]
    if idx >= n_img * n_ch * ho * wo:
        return
    ow = idx % wo
    oh = (idx // wo) % ho
    c = (idx // (wo * ho)) % n_ch
    n = idx // (wo * ho * n_ch)
    h0 = oh * sh
    w0 = ow * sw
    best = x[n, c, h0, w0]
    best_idx = h0 * width + w0
    for i in range(kh):
        for j in range(kw):
            v = x[n, c, h0 + i, w0 + j]
            if v > best or (v != v and best == best):
                best = v
                best_idx = (h0 + i) * width + (w0 + j)
    out[n, c, oh, ow] = best
    argmax[n, c, oh, ow] = best_idx


@cuda.jit
def _max_pool_backward_gpu(dout, argmax, kh, kw, sh, sw, dx):
    # one thread per input pixel (n, c, h, w): gather from the windows that contain it
    idx = cuda.grid(1)
    n_img, n_ch, height, width = dx.shape
    ho, wo = dout.shape[2], dout.shape[3]
    if idx >= n_img * n_ch * height * width:
        return
    w = idx % width
    h = (idx // width) % height
    c = (idx // (width * height)) % n_ch
    n = idx // (width * height * n_ch)
    me = h * width + w
    # windows oh with oh*sh <= h <= oh*sh + kh - 1
    oh_lo = 0 if h < kh else (h - kh) // sh + 1
    ow_lo = 0 if w < kw else (w - kw) // sw + 1
    oh_hi = min(h // sh, ho - 1)
    ow_hi = min(w // sw, wo - 1)
    acc = dx[n, c, h, w]  # zeroed by the caller; typed like dx
    for oh in range(oh_lo, oh_hi + 1):
        for ow in range(ow_lo, ow_hi + 1):
            if argmax[n, c, oh, ow] == me:
                acc += dout[n, c, oh, ow]
    dx[n, c, h, w] = acc


def max_pool_gpu(x, kh, kw, sh, sw, out, argmax):
    """Fill ``out`` and ``argmax`` ``(N, C, Ho, Wo)`` from ``x (N, C, H, W)`` (Numba-CUDA)."""
    total = out.size
    if total:
        _max_pool_gpu[_blocks(total), THREADS](x, kh, kw, sh, sw, out, argmax)
    return out, argmax


def max_pool_backward_gpu(dout, argmax, kh, kw, sh, sw, dx):
    """Overwrite ``dx (N, C, H, W)`` with gathered ``dout`` (Numba-CUDA, no atomics)."""
    dx[...] = 0
    if dx.size and dout.size:
        _max_pool_backward_gpu[_blocks(dx.size), THREADS](dout, argmax, kh, kw, sh, sw, dx)
    return dx
