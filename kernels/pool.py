"""Fast 2-D max pooling, forward and backward: Numba on the CPU, Numba-CUDA on the GPU.

The specification is :func:`minirccn.nn.pool.max_pool2d_reference` and
:func:`minirccn.nn.pool.max_pool2d_backward_reference`: windows of ``kh x kw``
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
own plane, so ``+=`` never races), on one thread below ``SERIAL_BELOW`` input
elements (``_launch.cpu_threads_for``); the forward picks each window's maximum with
selects rather than branches (random data would mispredict half of them). The GPU backward is a gather: one thread per
input pixel adds the ``dout`` of every window whose argmax is that pixel, in
the reference's order, so no atomics and the same bits every run.

Entry points (the signatures of the references): ``max_pool2d_numba`` /
``max_pool2d_cuda(x, kernel_size, stride)`` return ``(out, argmax)``;
``max_pool2d_backward_numba`` / ``max_pool2d_backward_cuda(dout, argmax, x_shape,
kernel_size, stride)`` return ``dx``; ``kernel_size`` and ``stride`` are pairs.
"""

from __future__ import annotations

import numba
import numpy as np
from minirccn.kernels._launch import THREADS, array_module, blocks, cpu_threads_for, unravel4
from numba import cuda

# --------------------------------------------------------------------------- CPU


@numba.njit(parallel=True, cache=True)
def _max_pool2d_numba(x, kh, kw, sh, sw, out, argmax):
    n_img, n_ch, height, width = x.shape
    ho, wo = out.shape[2], out.shape[3]
    for nc in numba.prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        plane, o, a = x[n, c], out[n, c], argmax[n, c]
        for oh in range(ho):
            h0 = oh * sh
            for ow in range(wo):
                w0 = ow * sw
                best = plane[h0, w0]
                best_idx = h0 * width + w0
                for i in range(kh):
                    for j in range(kw):
                        v = plane[h0 + i, w0 + j]
                        # strictly greater: the first maximum wins; the first NaN wins.
                        # Selects, not branches: random data mispredicts every other one
                        take = (v > best) | ((v != v) & (best == best))
                        best = v if take else best
                        best_idx = (h0 + i) * width + (w0 + j) if take else best_idx
                o[oh, ow] = best
                a[oh, ow] = best_idx


@numba.njit(parallel=True, cache=True)
def _max_pool2x2_numba(x, out, argmax):
    # the backbone's 2x2 / stride 2 pooling, spelt out: the same rule as _max_pool2d_numba
    # (row-major window order, strictly greater or the first NaN), with the window's four
    # values read from two input rows; ~15x faster than the loops over kh, kw (measured)
    n_img, n_ch, height, width = x.shape
    ho, wo = out.shape[2], out.shape[3]
    for nc in numba.prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        for oh in range(ho):
            r0, r1 = x[n, c, 2 * oh], x[n, c, 2 * oh + 1]
            o, a = out[n, c, oh], argmax[n, c, oh]
            base0 = 2 * oh * width
            base1 = base0 + width
            for ow in range(wo):
                best, idx = r0[2 * ow], base0 + 2 * ow
                v = r0[2 * ow + 1]
                take = (v > best) | ((v != v) & (best == best))
                best, idx = (v, base0 + 2 * ow + 1) if take else (best, idx)
                v = r1[2 * ow]
                take = (v > best) | ((v != v) & (best == best))
                best, idx = (v, base1 + 2 * ow) if take else (best, idx)
                v = r1[2 * ow + 1]
                take = (v > best) | ((v != v) & (best == best))
                best, idx = (v, base1 + 2 * ow + 1) if take else (best, idx)
                o[ow] = best
                a[ow] = idx


@numba.njit(parallel=True, cache=True)
def _max_pool2d_backward_numba(dout, argmax, dx):
    n_img, n_ch, height, width = dx.shape
    ho, wo = dout.shape[2], dout.shape[3]
    for nc in numba.prange(n_img * n_ch):  # one thread owns plane dx[n, c]: no race
        n = nc // n_ch
        c = nc % n_ch
        plane = dx[n, c].reshape(height * width)  # contiguous: the flat argmax indexes it
        plane[:] = 0
        d, a = dout[n, c], argmax[n, c]
        for oh in range(ho):
            for ow in range(wo):
                plane[a[oh, ow]] += d[oh, ow]


def _pool_outputs(x, kernel_size, stride):
    """``(x, out, argmax)``: contiguous ``x`` and the empty ``(N, C, Ho, Wo)`` outputs."""
    xp = array_module(x)
    n, c, h, w = x.shape
    ho, wo = (h - kernel_size[0]) // stride[0] + 1, (w - kernel_size[1]) // stride[1] + 1
    out = xp.empty((n, c, ho, wo), dtype=x.dtype)
    return xp.ascontiguousarray(x), out, xp.empty((n, c, ho, wo), dtype=np.int64)


def _grad_input(dout, x_shape):
    """``(dout, dx)``: contiguous ``dout`` and the empty ``(N, C, H, W)`` input gradient."""
    xp = array_module(dout)
    return xp.ascontiguousarray(dout), xp.empty(tuple(x_shape), dtype=dout.dtype)


def max_pool2d_numba(x, kernel_size, stride):
    """``out`` and ``argmax`` ``(N, C, Ho, Wo)`` of ``x (N, C, H, W)`` (Numba, CPU threads)."""
    x, out, argmax = _pool_outputs(x, kernel_size, stride)
    with cpu_threads_for(x.size):  # small maps: one thread (waking the others costs more)
        if tuple(kernel_size) == (2, 2) and tuple(stride) == (2, 2):
            _max_pool2x2_numba(x, out, argmax)
        else:
            _max_pool2d_numba(x, *kernel_size, *stride, out, argmax)
    return out, argmax


def max_pool2d_backward_numba(dout, argmax, x_shape, kernel_size, stride):
    """``dx (N, C, H, W)``: ``dout`` summed at the argmax pixels (Numba; the geometry is unused)."""
    dout, dx = _grad_input(dout, x_shape)
    with cpu_threads_for(dx.size):
        _max_pool2d_backward_numba(dout, np.ascontiguousarray(argmax), dx)  # zeroes each plane first
    return dx


# --------------------------------------------------------------------------- GPU


@cuda.jit
def _max_pool2d_cuda(x, kh, kw, sh, sw, out, argmax):
    # one thread per output element (n, c, oh, ow)
    idx = cuda.grid(1)
    n_img, n_ch, height, width = x.shape
    ho, wo = out.shape[2], out.shape[3]
    if idx >= n_img * n_ch * ho * wo:
        return
    n, c, oh, ow = unravel4(idx, n_ch, ho, wo)
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
def _max_pool2d_backward_cuda(dout, argmax, kh, kw, sh, sw, dx):
    # one thread per input pixel (n, c, h, w): gather from the windows that contain it
    idx = cuda.grid(1)
    n_img, n_ch, height, width = dx.shape
    ho, wo = dout.shape[2], dout.shape[3]
    if idx >= n_img * n_ch * height * width:
        return
    n, c, h, w = unravel4(idx, n_ch, height, width)
    me = h * width + w
    # windows oh with oh*sh <= h <= oh*sh + kh - 1
    oh_lo = 0 if h < kh else (h - kh) // sh + 1
    ow_lo = 0 if w < kw else (w - kw) // sw + 1
    # conditional expressions, not min(): Numba 0.68's CUDA target cannot type min/max
    # (see kernels/boxes.py; the simulator never notices, tests/test_kernels.py does)
    oh_hi = h // sh if h // sh < ho - 1 else ho - 1  # noqa: FURB136
    ow_hi = w // sw if w // sw < wo - 1 else wo - 1  # noqa: FURB136
    acc = dx[n, c, h, w]  # zeroed by the caller; typed like dx
    for oh in range(oh_lo, oh_hi + 1):
        for ow in range(ow_lo, ow_hi + 1):
            if argmax[n, c, oh, ow] == me:
                acc += dout[n, c, oh, ow]
    dx[n, c, h, w] = acc


def max_pool2d_cuda(x, kernel_size, stride):
    """``out`` and ``argmax`` ``(N, C, Ho, Wo)`` of ``x (N, C, H, W)`` (Numba-CUDA)."""
    x, out, argmax = _pool_outputs(x, kernel_size, stride)
    if out.size:
        _max_pool2d_cuda[blocks(out.size), THREADS](x, *kernel_size, *stride, out, argmax)
    return out, argmax


def max_pool2d_backward_cuda(dout, argmax, x_shape, kernel_size, stride):
    """``dx (N, C, H, W)``: ``dout`` gathered at the argmax pixels (Numba-CUDA, no atomics)."""
    dout, dx = _grad_input(dout, x_shape)
    dx[...] = 0
    if dx.size and dout.size:
        _max_pool2d_backward_cuda[blocks(dx.size), THREADS](dout, argmax, *kernel_size, *stride, dx)
    return dx
