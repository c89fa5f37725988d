"""Fast im2col / col2im for conv2d: Numba on the CPU, Numba-CUDA on the GPU.

The specification is :func:`minirccn.nn.conv.im2col` / :func:`minirccn.nn.conv.col2im`
(plain NumPy, a loop over the ``kh * kw`` kernel offsets). The kernels here
compute exactly the same numbers, element by element, in the same order.

Layout (shared with the reference)::

    x     (N, C, H, W)                     the input (or its gradient, for col2im)
    cols  (N, C * kh * kw, Ho * Wo)        row r = (c * kh + i) * kw + j holds, for
                                           every output position (oh, ow), the input
                                           value x[n, c, oh*sh - ph + i, ow*sw - pw + j]
                                           (0 where that falls in the zero padding)

so one GEMM per image, ``W (F, C*kh*kw) @ cols[n] (C*kh*kw, Ho*Wo)``, writes the
output straight into NCHW order.

CPU kernels parallelise over the ``N * C`` input planes: in col2im each plane is
written by exactly one thread, so ``+=`` never races. Below ``SERIAL_BELOW`` column
entries they run on one thread (``_launch.cpu_threads_for``). GPU kernels use one
thread per output element; col2im is a *gather* (each input pixel sums the
columns that read it), so it needs no atomics and is deterministic.

Entry points (the signatures of the references): ``im2col_numba`` /
``im2col_cuda(x, kernel_size, stride, padding)`` return ``cols``;
``col2im_numba`` / ``col2im_cuda(cols, x_shape, kernel_size, stride, padding)``
return ``dx``; ``kernel_size``, ``stride`` and ``padding`` are ``(along H, along W)``
pairs.
"""

from __future__ import annotations

import numba
from minirccn.kernels._launch import THREADS, array_module, blocks, cpu_threads_for, unravel4
from numba import cuda

# --------------------------------------------------------------------------- CPU


@numba.njit(cache=True)
def _valid_range(j, sw, pw, wo, width):
    """Output columns ``ow`` whose input column ``ow*sw - pw + j`` lies in ``[0, width)``:
    ``[lo, hi)``. Hoisting the bounds test out of the inner loops lets them vectorise."""
    lo = -((j - pw) // sw)  # ceil((pw - j) / sw)
    hi = (width - 1 + pw - j) // sw + 1
    lo = max(lo, 0)
    hi = min(hi, wo)
    return lo, max(hi, lo)


@numba.njit(parallel=True, cache=True)
def _im2col_numba(x, kh, kw, sh, sw, ph, pw, ho, wo, cols):
    n_img, n_ch, height, width = x.shape
    for nc in numba.prange(n_img * n_ch):
        n = nc // n_ch
        c = nc % n_ch
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                lo, hi = _valid_range(j, sw, pw, wo, width)
                for oh in range(ho):
                    h = oh * sh - ph + i
                    base = oh * wo
                    if h < 0 or h >= height:
                        for ow in range(wo):
                            cols[n, row, base + ow] = 0
                    else:
                        for ow in range(lo):
                            cols[n, row, base + ow] = 0
                        for ow in range(lo, hi):
                            cols[n, row, base + ow] = x[n, c, h, ow * sw - pw + j]
                        for ow in range(hi, wo):
                            cols[n, row, base + ow] = 0


@numba.njit(parallel=True, cache=True)
def _col2im_numba(cols, kh, kw, sh, sw, ph, pw, ho, wo, dx):
    n_img, n_ch, height, width = dx.shape
    for nc in numba.prange(n_img * n_ch):  # one thread owns plane dx[n, c]: no race
        n = nc // n_ch
        c = nc % n_ch
        for h in range(height):
            for w in range(width):
                dx[n, c, h, w] = 0
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                lo, hi = _valid_range(j, sw, pw, wo, width)
                for oh in range(ho):
                    h = oh * sh - ph + i
                    if h < 0 or h >= height:
                        continue
                    base = oh * wo
                    for ow in range(lo, hi):
                        dx[n, c, h, ow * sw - pw + j] += cols[n, row, base + ow]


def _out_size(height, width, kernel_size, stride, padding):
    """``(Ho, Wo)``: ``(H + 2 ph - kh) // sh + 1`` and likewise along W."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    return (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1


def _cols_for(x, kernel_size, stride, padding):
    """``(x, cols, geometry)``: contiguous ``x``, the empty ``(N, C*kh*kw, Ho*Wo)`` output and
    the launch's scalar arguments ``(kh, kw, sh, sw, ph, pw, Ho, Wo)``."""
    xp = array_module(x)
    n, c, h, w = x.shape
    ho, wo = _out_size(h, w, kernel_size, stride, padding)
    cols = xp.empty((n, c * kernel_size[0] * kernel_size[1], ho * wo), dtype=x.dtype)
    return xp.ascontiguousarray(x), cols, (*kernel_size, *stride, *padding, ho, wo)


def _dx_for(cols, x_shape, kernel_size, stride, padding):
    """``(cols, dx, geometry)``: contiguous ``cols``, the empty ``(N, C, H, W)`` output and
    the launch's scalar arguments ``(kh, kw, sh, sw, ph, pw, Ho, Wo)``."""
    xp = array_module(cols)
    ho, wo = _out_size(x_shape[2], x_shape[3], kernel_size, stride, padding)
    dx = xp.empty(tuple(x_shape), dtype=cols.dtype)
    return xp.ascontiguousarray(cols), dx, (*kernel_size, *stride, *padding, ho, wo)


def im2col_numba(x, kernel_size, stride, padding):
    """``cols (N, C*kh*kw, Ho*Wo)`` unfolded from ``x (N, C, H, W)`` (Numba, CPU threads)."""
    x, cols, geometry = _cols_for(x, kernel_size, stride, padding)
    with cpu_threads_for(cols.size):  # small maps: one thread (waking the others costs more)
        _im2col_numba(x, *geometry, cols)
    return cols


def col2im_numba(cols, x_shape, kernel_size, stride, padding):
    """``dx (N, C, H, W)``: the sum of ``cols`` at the pixels they read (Numba, CPU threads)."""
    cols, dx, geometry = _dx_for(cols, x_shape, kernel_size, stride, padding)
    with cpu_threads_for(cols.size):
        _col2im_numba(cols, *geometry, dx)  # zeroes each plane first
    return dx


# --------------------------------------------------------------------------- GPU


@cuda.jit
def _im2col_cuda(x, kh, kw, sh, sw, ph, pw, ho, wo, cols):
    # one thread per element of cols, flat index = (n * rows + row) * Ho*Wo + oh*Wo + ow
    idx = cuda.grid(1)
    n_img, n_ch, height, width = x.shape
    rows = n_ch * kh * kw
    if idx >= n_img * rows * ho * wo:
        return
    n, row, oh, ow = unravel4(idx, rows, ho, wo)
    j = row % kw
    i = (row // kw) % kh
    c = row // (kw * kh)
    h = oh * sh - ph + i
    w = ow * sw - pw + j
    if h >= 0 and h < height and w >= 0 and w < width:
        cols[n, row, oh * wo + ow] = x[n, c, h, w]
    else:
        cols[n, row, oh * wo + ow] = 0


@cuda.jit
def _col2im_cuda(cols, kh, kw, sh, sw, ph, pw, ho, wo, dx):
    # one thread per input pixel (n, c, h, w): gather every column entry that read it,
    # in the reference's (i, j) order, so the sum is the same bit for bit
    idx = cuda.grid(1)
    n_img, n_ch, height, width = dx.shape
    if idx >= n_img * n_ch * height * width:
        return
    n, c, h, w = unravel4(idx, n_ch, height, width)
    acc = dx[n, c, h, w]  # zeroed by the caller; typed like dx (float32 stays float32)
    for i in range(kh):
        hp = h + ph - i
        if hp < 0 or hp % sh != 0:
            continue
        oh = hp // sh
        if oh >= ho:
            continue
        for j in range(kw):
            wp = w + pw - j
            if wp < 0 or wp % sw != 0:
                continue
            ow = wp // sw
            if ow >= wo:
                continue
            acc += cols[n, (c * kh + i) * kw + j, oh * wo + ow]
    dx[n, c, h, w] = acc


def im2col_cuda(x, kernel_size, stride, padding):
    """``cols (N, C*kh*kw, Ho*Wo)`` unfolded from ``x (N, C, H, W)`` (Numba-CUDA)."""
    x, cols, geometry = _cols_for(x, kernel_size, stride, padding)
    if cols.size:
        _im2col_cuda[blocks(cols.size), THREADS](x, *geometry, cols)
    return cols


def col2im_cuda(cols, x_shape, kernel_size, stride, padding):
    """``dx (N, C, H, W)``: the gathered column sums (Numba-CUDA, no atomics)."""
    cols, dx, geometry = _dx_for(cols, x_shape, kernel_size, stride, padding)
    dx[...] = 0
    if dx.size and cols.size:
        _col2im_cuda[blocks(dx.size), THREADS](cols, *geometry, dx)
    return dx
