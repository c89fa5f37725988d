"""One convolution over every level of a pyramid, for the CPU (Numba unfolds, BLAS multiplies).

The specification is :func:`minirccn.nn.conv_levels.conv2d_levels_reference` /
:func:`minirccn.nn.conv_levels.conv2d_levels_backward_reference`: the levels travel packed,
``x (N, C, P)`` with level ``l`` the pixels ``[o_l, o_l + H_l W_l)``; the forward puts every
level's column block side by side, ``cols (N, C*kh*kw, Po)``, and multiplies them with the
shared weight in one GEMM per image; the backward makes ``dW`` and ``dcols`` with one GEMM
each and folds ``dcols`` back level by level.

What the kernel changes: the reference calls :func:`minirccn.nn.conv.im2col` once per level
(``kh*kw`` strided NumPy copies each, plus a concatenation: ``L * kh*kw`` small copies); here
ONE Numba pass writes every level's columns straight into a reused buffer, one channel per
task, the zero padding of each level written as zeros where a patch leaves its level (no
padded copy of the input, no bounds test in the copy loop). The backward unfolds the packed
input again (the buffer was reused by the next layer; an unfold is cheaper than keeping
``kh*kw`` times the input alive) and folds ``dcols`` onto ``dx`` in one Numba pass, one
``(image, channel)`` plane per task. A 1x1 kernel with stride 1 and no padding needs no
unfolding: its columns are the packed input itself.

Numbers: the unfold is a copy and the fold adds each pixel's entries in the reference's
kernel-offset order ``(i, j)``, so ``im2col_levels_numba`` / ``col2im_levels_numba`` give the
reference's bits (tests/nn/test_conv_levels.py); the GEMMs are the reference's products with
the same shapes, equal to rounding (BLAS may split the sums differently when threads change).

Entry points (the signatures of the references): ``conv2d_levels_numba(x, sizes, w, b,
stride, padding, relu)`` returns ``(out, saved)`` with ``saved`` the packed input and the
ReLU's output (its mask is ``out > 0``; None without a ReLU);
``conv2d_levels_backward_numba(dout, saved, w, sizes, x_shape, stride, padding)`` returns
``(dx, dw, db)``.

3x3, stride-1 convs with enough tiles and channels go Winograd's way (``kernels/winograd.py``,
specification :func:`minirccn.nn.winograd.conv2d_winograd_levels_reference`): equal to the
im2col reference to rounding, not bit for bit.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from minirccn.kernels._launch import blas_threads_for, cpu_threads_for, scratch_buffer
from minirccn.kernels.conv import _bias_relu, _valid_range
from minirccn.kernels.layers import relu_backward_from_output
from minirccn.kernels.winograd import (
    WinogradSaved,
    conv2d_winograd_levels_backward_numba,
    conv2d_winograd_levels_numba,
    use_winograd,
)

#: the GEMMs of a batched pyramid conv split well over two OpenBLAS threads from about this many
#: floating-point operations (measured, RetinaNet's head: 32 filters, 3x3 over 32 channels, one
#: product per pass: at 25 MFLOP two threads take 0.15 ms where one takes 0.27 ms; at 6 MFLOP
#: they gain little): lower than the plain conv's BLAS_SERIAL_BELOW, whose thin per-level
#: GEMMs did not gain
LEVELS_BLAS_SERIAL_BELOW = 1 << 24


@numba.njit(parallel=True, cache=True)
def _im2col_levels(x, table, kh, kw, sh, sw, ph, pw, cols):
    """``cols[n, (c*kh + i)*kw + j, oo_l + oh*Wo_l + ow] = x_l[n, c, oh*sh-ph+i, ow*sw-pw+j]``
    (0 outside level ``l``) for every level ``l`` of the packed ``x (N, C, P)``; ``table`` row
    ``l`` is ``(H_l, W_l, o_l, Ho_l, Wo_l, oo_l)``. One ``(image, channel)`` per task: disjoint
    rows of ``cols``."""
    n_ch = x.shape[1]
    for nc in numba.prange(x.shape[0] * n_ch):
        n, c = nc // n_ch, nc % n_ch
        src_plane = x[n, c]
        for i in range(kh):
            for j in range(kw):
                dst = cols[n, (c * kh + i) * kw + j]
                for lv in range(table.shape[0]):
                    height, width, o_in = table[lv, 0], table[lv, 1], table[lv, 2]
                    ho, wo, o_out = table[lv, 3], table[lv, 4], table[lv, 5]
                    lo, hi = _valid_range(j, sw, pw, wo, width)
                    for oh in range(ho):
                        # unsigned indices: Numba then skips the negative-index wrap-around
                        # test on every access and the copy loops vectorise
                        row = np.uint64(o_out + oh * wo)
                        h = oh * sh - ph + i
                        if h < 0 or h >= height:
                            for ow in range(wo):
                                dst[row + np.uint64(ow)] = 0
                            continue
                        for ow in range(lo):
                            dst[row + np.uint64(ow)] = 0
                        first = np.uint64(o_in + h * width + lo * sw - pw + j)
                        if sw == 1:
                            for k in range(hi - lo):
                                dst[row + np.uint64(lo + k)] = src_plane[first + np.uint64(k)]
                        else:
                            for k in range(hi - lo):
                                dst[row + np.uint64(lo + k)] = src_plane[first + np.uint64(k * sw)]
                        for ow in range(hi, wo):
                            dst[row + np.uint64(ow)] = 0


@numba.njit(parallel=True, cache=True)
def _col2im_levels(cols, table, kh, kw, sh, sw, ph, pw, dx):
    """The adjoint of :func:`_im2col_levels`: ``dx (N, C, P)`` (overwritten) = every entry of
    ``cols`` added at the pixel it was copied from, offsets ``(i, j)`` in order (the
    reference's order, so its bits). One ``(image, channel)`` plane per task: no race."""
    n_ch = dx.shape[1]
    for nc in numba.prange(dx.shape[0] * n_ch):
        n, c = nc // n_ch, nc % n_ch
        plane = dx[n, c]
        plane[:] = 0
        for i in range(kh):
            for j in range(kw):
                srow = cols[n, (c * kh + i) * kw + j]
                for lv in range(table.shape[0]):
                    height, width, o_in = table[lv, 0], table[lv, 1], table[lv, 2]
                    ho, wo, o_out = table[lv, 3], table[lv, 4], table[lv, 5]
                    lo, hi = _valid_range(j, sw, pw, wo, width)
                    for oh in range(ho):
                        h = oh * sh - ph + i
                        if h < 0 or h >= height:
                            continue
                        first = np.uint64(o_in + h * width + lo * sw - pw + j)
                        src = np.uint64(o_out + oh * wo + lo)
                        if sw == 1:
                            for k in range(hi - lo):
                                plane[first + np.uint64(k)] += srow[src + np.uint64(k)]
                        else:
                            for k in range(hi - lo):
                                plane[first + np.uint64(k * sw)] += srow[src + np.uint64(k)]


def _table(sizes, kernel_size, stride, padding):
    """``(table (L, 6) int64, Po)``: per level ``(H, W, o_in, Ho, Wo, o_out)`` (made once per
    pyramid and geometry: a training run sees the same few)."""
    key = tuple(map(tuple, sizes)), tuple(kernel_size), tuple(stride), tuple(padding)
    return _table_cached(*key)


@functools.lru_cache(maxsize=256)
def _table_cached(sizes, kernel_size, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    rows, o_in, o_out = [], 0, 0
    for h, w in sizes:
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        rows.append((h, w, o_in, ho, wo, o_out))
        o_in += h * w
        o_out += ho * wo
    table = np.array(rows, dtype=np.int64).reshape(-1, 6)
    table.flags.writeable = False  # shared by every call with this pyramid
    return table, o_out


def _pointwise(kernel_size, stride, padding):
    """1x1, stride 1, no padding: the columns are the packed input itself."""
    return tuple(kernel_size) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)


def im2col_levels_numba(x, sizes, kernel_size, stride, padding, out=None):
    """``cols (N, C*kh*kw, Po)``: every level of the packed ``x (N, C, P)`` unfolded, side by
    side (the reference's :func:`minirccn.nn.conv.im2col` of each level, concatenated, bit
    for bit); written into ``out`` if given."""
    n, c, _ = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    table, po = _table(sizes, kernel_size, stride, padding)
    cols = np.empty((n, c * kh * kw, po), dtype=x.dtype) if out is None else out
    with cpu_threads_for(cols.size):  # small pyramids: one thread
        _im2col_levels(np.ascontiguousarray(x), table, kh, kw, sh, sw, ph, pw, cols)
    return cols


def col2im_levels_numba(cols, sizes, x_shape, kernel_size, stride, padding):
    """``dx (N, C, P)``: the adjoint of :func:`im2col_levels_numba` (the reference's
    :func:`minirccn.nn.conv.col2im` of each level's columns, bit for bit)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    table, _ = _table(sizes, kernel_size, stride, padding)
    dx = np.empty(tuple(x_shape), dtype=cols.dtype)
    with cpu_threads_for(cols.size):
        _col2im_levels(np.ascontiguousarray(cols), table, kh, kw, sh, sw, ph, pw, dx)
    return dx


def conv2d_levels_numba(x, sizes, w, b, stride, padding, relu):
    """``(out (N, F, Po), saved)``: every level's convolution, the levels unfolded in one Numba
    pass into a reused buffer and multiplied in one GEMM per image (BLAS writes straight into
    ``out``), then the bias (and the ReLU) in one pass (:func:`minirccn.kernels.conv._bias_relu`).
    ``saved`` is ``(x, out)``: the packed input (the backward unfolds it again) and, with the
    ReLU, its output (the backward's mask is ``out > 0``), else None. A 3x3, stride-1 conv
    with enough tiles and channels (:func:`minirccn.kernels.winograd.use_winograd`) goes
    Winograd's way instead, every level's tiles in the same 16 GEMMs; ``saved`` then holds the
    :class:`~minirccn.kernels.winograd.WinogradSaved` in place of ``x``."""
    n, c, _ = x.shape
    f, _, kh, kw = w.shape
    if use_winograd((n, c), w.shape, stride, sizes, padding):  # kernels/winograd.py
        out, saved = conv2d_winograd_levels_numba(x, sizes, w, b, padding, relu)
        return out, (saved, out if relu else None)
    rows = c * kh * kw
    x = np.ascontiguousarray(x)
    w2 = np.ascontiguousarray(w).reshape(f, rows)
    if _pointwise((kh, kw), stride, padding):
        with blas_threads_for(2 * n * f * rows * x.shape[2], LEVELS_BLAS_SERIAL_BELOW):
            out = np.matmul(w2, x)
    else:
        _, po = _table(sizes, (kh, kw), stride, padding)
        cols = scratch_buffer("levels.cols", (n, rows, po), x.dtype)
        im2col_levels_numba(x, sizes, (kh, kw), stride, padding, out=cols)
        out = np.empty((n, f, po), dtype=x.dtype)
        with blas_threads_for(2 * n * f * rows * po, LEVELS_BLAS_SERIAL_BELOW):
            np.matmul(w2, cols, out=out)
    if not relu:
        out += b[None, :, None]
        return out, (x, None)
    with cpu_threads_for(out.size):
        _bias_relu(out, np.ascontiguousarray(b))
    return out, (x, out)


def conv2d_levels_backward_numba(dout, saved, w, sizes, x_shape, stride, padding):
    """``(dx, dw, db)`` of :func:`conv2d_levels_numba`: unfold the packed input again into the
    reused buffer, ``dw^T = sum_n cols[n] @ dout[n]^T`` and ``dcols = W^T @ dout`` (one GEMM
    each per image, all levels at once), then one Numba pass folds ``dcols`` onto every level.
    Summation order: each ``dw`` entry is the reference's sum over the pixels, split by BLAS as
    it splits the transposed product: equal to rounding."""
    x, relu_out = saved
    n, c, _ = x_shape
    f, _, kh, kw = w.shape
    rows = c * kh * kw
    dout = np.ascontiguousarray(dout)
    w2t = np.ascontiguousarray(w).reshape(f, rows).T
    if relu_out is not None:  # through the ReLU first: dout where out > 0, one pass, no mask
        dout = relu_backward_from_output(
            dout, relu_out, scratch_buffer("relu.grad", dout.shape, dout.dtype)
        )
    if isinstance(x, WinogradSaved):  # the forward took the Winograd path
        return conv2d_winograd_levels_backward_numba(dout, x, w, sizes, x_shape, padding)
    db = dout.sum(axis=(0, 2))
    po = dout.shape[2]
    pointwise = _pointwise((kh, kw), stride, padding)
    if pointwise:
        cols = x
    else:
        cols = scratch_buffer("levels.cols", (n, rows, po), x.dtype)
        im2col_levels_numba(x, sizes, (kh, kw), stride, padding, out=cols)
    # dW^T = cols @ dout^T, written into a contiguous (C*kh*kw, F) array: on this OpenBLAS
    # 1.5x faster than dout @ cols^T for these thin shapes (F = 32, Po ~ 1400); equal to rounding
    dwt = np.zeros((rows, f), dtype=w.dtype)
    part = scratch_buffer("levels.dwt", (rows, f), w.dtype)
    with blas_threads_for(2 * n * f * rows * po, LEVELS_BLAS_SERIAL_BELOW):  # per GEMM
        for i in range(n):
            np.matmul(cols[i], dout[i].T, out=dwt if i == 0 else part)
            if i:
                dwt += part
        dw = np.ascontiguousarray(dwt.T).reshape(w.shape)
        if pointwise:
            return np.matmul(w2t, dout), dw, db
        dcols = scratch_buffer("levels.dcols", (n, rows, po), x.dtype)
        np.matmul(w2t, dout, out=dcols)
    dx = col2im_levels_numba(dcols, sizes, x_shape, (kh, kw), stride, padding)
    return dx, dw, db
