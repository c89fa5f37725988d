"""Fast conv2d for the CPU (Numba + BLAS, blocked) and the GPU (Numba-CUDA im2col + cuBLAS).

The specification is :func:`minirccn.nn.conv.conv2d_reference` /
:func:`minirccn.nn.conv.conv2d_backward_reference`: unfold the input into the column
matrix (:func:`minirccn.nn.conv.im2col`), one GEMM per image, and backwards two GEMMs
and the fold (:func:`minirccn.nn.conv.col2im`).

Layout (shared with the reference)::

    x     (N, C, H, W)                     the input (or its gradient, for col2im)
    xpad  (N, C, H + 2ph, W + 2pw)         x with the zero padding around every plane
    cols  (N, C * kh * kw, Ho * Wo)        row r = (c * kh + i) * kw + j holds, for
                                           every output position (oh, ow), the input
                                           value xpad[n, c, oh*sh + i, ow*sw + j]

so one GEMM per image, ``W (F, C*kh*kw) @ cols[n] (C*kh*kw, Ho*Wo)``, writes the
output straight into NCHW order.

CPU (``conv2d_numba``, ``conv2d_backward_numba``): the same arithmetic, reorganised for
the memory. The column matrix is ``kh*kw`` times the input (9x for 3x3: 19 MB for a
2x64x64x64 input); the reference writes it, the GEMM reads it back from memory, and the
backward writes and reads a second one (``dcols``) of the same size. Here the output rows
are cut into blocks whose columns fit in a reused buffer of :data:`BLOCK_ELEMENTS`
entries: unfold the block (a plain copy from the padded input, no bounds tests, the inner
loop contiguous for ``sw == 1``), multiply it while it is in the cache, move on. The
backward unfolds each block again (cheaper than keeping 9x the input alive) and folds
each block's ``dcols`` onto ``dx`` right after its GEMM. The GEMMs are NumPy's BLAS, with
its threads; the copies run on the calling thread. docs/conv.md has the arithmetic and
the measurements. Summation order: the blocks change how the sums are split, so the
results agree with the reference to rounding (tests/nn/test_conv.py, float32 and float64).

``im2col_numba`` / ``col2im_numba`` apply the same block kernels to whole images, one
``(image, channel)`` per task; they equal the reference bit for bit (a copy; and a fold
in the reference's offset order), which the tests check on random geometries.

GPU kernels use one thread per output element; col2im is a *gather* (each input pixel
sums the columns that read it), so it needs no atomics and is deterministic.

Conv + ReLU (``conv2d_relu_*``, the specification :func:`minirccn.nn.conv.conv2d_relu_reference`):
the products as above, then ONE pass writes ``max(out + b, 0)`` over the output in place
(the unfused pair: NumPy's ``out += b``, then the ReLU's pass that reads it and writes a new
output and a mask). The backward keeps no mask: one pass writes ``where(out > 0, dout, 0)``
into a reused buffer (the ReLU's mask read off the forward's output), and the products read
that. The adds, the comparisons and the sums are the unfused pair's, so are the bits.

Entry points (the signatures of the references): ``conv2d_numba`` / ``conv2d_cuda(x, w,
b, stride, padding)`` return ``(out, saved)``; ``conv2d_backward_numba`` /
``conv2d_backward_cuda(dout, saved, w, x_shape, stride, padding)`` return ``(dx, dw,
db)``; ``conv2d_relu_numba`` / ``conv2d_relu_cuda(x, w, b, stride, padding)`` return ``(out,
saved)``; ``conv2d_relu_backward_numba`` / ``conv2d_relu_backward_cuda(dout, saved, out, w,
x_shape, stride, padding)`` return ``(dx, dw, db)``; ``im2col_numba`` / ``im2col_cuda(x, kernel_size, stride, padding)`` return
``cols``; ``col2im_numba`` / ``col2im_cuda(cols, x_shape, kernel_size, stride, padding)``
return ``dx``; ``kernel_size``, ``stride`` and ``padding`` are ``(along H, along W)`` pairs.
"""

from __future__ import annotations

import numba
import numpy as np
from minirccn.kernels._launch import (
    THREADS,
    array_module,
    blas_threads_for,
    blocks,
    cpu_threads_for,
    scratch_buffer,
    unravel4,
)
from minirccn.kernels.layers import relu_backward_from_output
from minirccn.kernels.winograd import (
    WinogradSaved,
    conv2d_winograd_backward_numba,
    conv2d_winograd_numba,
    use_winograd,
)
from numba import cuda

# --------------------------------------------------------------------------- CPU
#
# The CPU kernels work on one image and a block of output rows ``oh0 <= oh < oh1`` at a time:
# ``cols`` is then the ``(C*kh*kw, (oh1 - oh0) * Wo)`` slice of the reference's column matrix
# (its columns ``oh0 * Wo ... oh1 * Wo``), written row after row in the order the GEMM reads
# it. Each row of ``cols`` is a handful of contiguous runs of one input row (``sw == 1``: a
# plain copy the compiler turns into vector moves) between zeros from the padding.


@numba.njit(cache=True)
def _valid_range(j, sw, pw, wo, width):
    """Output columns ``ow`` whose input column ``ow*sw - pw + j`` lies in ``[0, width)``:
    ``[lo, hi)``. Hoisting the bounds test out of the inner loops lets them vectorise."""
    lo = -((j - pw) // sw)  # ceil((pw - j) / sw)
    hi = (width - 1 + pw - j) // sw + 1
    lo = max(lo, 0)
    hi = min(hi, wo)
    return lo, max(hi, lo)


@numba.njit(cache=True)
def _im2col_rows(xpad, kh, kw, sh, sw, oh0, oh1, wo, cols):
    """``cols[(c*kh + i)*kw + j, (oh - oh0)*Wo + ow] = xpad[c, oh*sh + i, ow*sw + j]`` for the
    output rows ``oh0 <= oh < oh1`` of one zero-padded image ``xpad (C, H + 2ph, W + 2pw)``:
    a copy, no arithmetic; every read is inside ``xpad`` (no bounds tests), and with
    ``sw == 1`` the inner loop is a contiguous copy the compiler vectorises."""
    for c in range(xpad.shape[0]):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                for r in range(oh1 - oh0):
                    h = (oh0 + r) * sh + i
                    base = r * wo
                    if sw == 1:
                        for ow in range(wo):
                            cols[row, base + ow] = xpad[c, h, j + ow]
                    else:
                        for ow in range(wo):
                            cols[row, base + ow] = xpad[c, h, j + ow * sw]


@numba.njit(cache=True)
def _col2im_rows(cols, kh, kw, sh, sw, oh0, oh1, wo, dxpad):
    """The adjoint of :func:`_im2col_rows`: ``dxpad (C, H + 2ph, W + 2pw) +=`` every entry of
    the block ``cols`` at the pixel it was copied from. ``dxpad`` is not zeroed: the blocks of
    one image add up into it, block after block, kernel offsets ``(i, j)`` in order within a
    block; the caller crops the padding off."""
    for c in range(dxpad.shape[0]):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                for r in range(oh1 - oh0):
                    h = (oh0 + r) * sh + i
                    base = r * wo
                    if sw == 1:
                        for ow in range(wo):
                            dxpad[c, h, j + ow] += cols[row, base + ow]
                    else:
                        for ow in range(wo):
                            dxpad[c, h, j + ow * sw] += cols[row, base + ow]


@numba.njit(cache=True)
def _pad(x, ph, pw, xpad):
    """``xpad[n, c, ph:ph+H, pw:pw+W] = x``, zeros around it (``xpad`` is ``(N, C, H+2ph, W+2pw)``)."""
    n_img, n_ch, height, width = x.shape
    for n in range(n_img):
        for c in range(n_ch):
            plane = xpad[n, c]
            plane[:ph, :] = 0
            plane[ph + height :, :] = 0
            plane[ph : ph + height, :pw] = 0
            plane[ph : ph + height, pw + width :] = 0
            plane[ph : ph + height, pw : pw + width] = x[n, c]


@numba.njit(parallel=True, cache=True)
def _im2col_numba(xpad, kh, kw, sh, sw, ho, wo, cols):
    n_ch = xpad.shape[1]
    k = kh * kw
    for nc in numba.prange(xpad.shape[0] * n_ch):  # one (image, channel) per task: disjoint rows
        n, c = nc // n_ch, nc % n_ch
        _im2col_rows(xpad[n, c : c + 1], kh, kw, sh, sw, 0, ho, wo, cols[n, c * k : (c + 1) * k])


@numba.njit(parallel=True, cache=True)
def _col2im_numba(cols, kh, kw, sh, sw, ho, wo, dxpad):
    n_ch = dxpad.shape[1]
    k = kh * kw
    for nc in numba.prange(dxpad.shape[0] * n_ch):  # one thread owns plane dxpad[n, c]: no race
        n, c = nc // n_ch, nc % n_ch
        dxpad[n, c] = 0
        _col2im_rows(cols[n, c * k : (c + 1) * k], kh, kw, sh, sw, 0, ho, wo, dxpad[n, c : c + 1])


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


def _padded(x, ph, pw):
    """``x (N, C, H, W)`` with ``ph`` / ``pw`` zeros around every plane (a new array)."""
    n, c, h, w = x.shape
    xpad = np.empty((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    _pad(x, ph, pw, xpad)
    return xpad


def im2col_numba(x, kernel_size, stride, padding):
    """``cols (N, C*kh*kw, Ho*Wo)`` unfolded from ``x (N, C, H, W)`` (Numba, CPU threads): the
    reference's numbers bit for bit (a copy)."""
    x, cols, (kh, kw, sh, sw, ph, pw, ho, wo) = _cols_for(x, kernel_size, stride, padding)
    with cpu_threads_for(cols.size):  # small maps: one thread (waking the others costs more)
        _im2col_numba(_padded(x, ph, pw), kh, kw, sh, sw, ho, wo, cols)
    return cols


def col2im_numba(cols, x_shape, kernel_size, stride, padding):
    """``dx (N, C, H, W)``: the sum of ``cols`` at the pixels they read (Numba, CPU threads):
    the reference's order, offset ``(i, j)`` after offset, so its bits."""
    cols, dx, (kh, kw, sh, sw, ph, pw, ho, wo) = _dx_for(cols, x_shape, kernel_size, stride, padding)
    n, c, h, w = dx.shape
    dxpad = np.empty((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    with cpu_threads_for(cols.size):
        _col2im_numba(cols, kh, kw, sh, sw, ho, wo, dxpad)  # zeroes each plane first
    return dxpad[:, :, ph : ph + h, pw : pw + w]


# ----------------------------------------------------------------------------- conv2d, CPU

#: the column block of one GEMM holds at most this many entries (1 MiB of float32): it is
#: written by :func:`_im2col_rows` and read by the GEMM while it is still in the cache, and
#: the scratch buffer is reused by every block and every call (no fresh pages to fault in)
BLOCK_ELEMENTS = 1 << 18


def _row_blocks(ho, wo, rows):
    """``[(oh0, oh1), ...]``: output rows split so that ``rows * (oh1 - oh0) * Wo`` stays
    within :data:`BLOCK_ELEMENTS` (at least one output row per block)."""
    step = max(1, min(ho, BLOCK_ELEMENTS // max(1, rows * wo)))
    return [(oh0, min(oh0 + step, ho)) for oh0 in range(0, ho, step)]


def conv2d_numba(x, w, b, stride, padding):
    """``(out (N, F, Ho, Wo), saved)``: the reference's convolution, one block of output rows
    at a time (Numba unfolds the block into a reused buffer, BLAS multiplies it straight into
    ``out``). ``saved`` is the zero-padded input ``(N, C, H+2ph, W+2pw)`` (``x`` itself for
    a 1x1 kernel with stride 1 and no padding, whose columns are the input): the backward
    unfolds it again, block by block, instead of keeping the ``kh*kw`` times larger column
    matrix alive between the passes.

    Summation order: each output element is the same dot product as the reference's, of a
    GEMM whose column count is the block's, not the image's; BLAS may split the sum over
    ``C*kh*kw`` differently, so the result agrees with the reference to rounding (not bit for
    bit; tests/nn/test_conv.py checks the tolerance in float32 and float64).
    """
    if use_winograd(x.shape[:2], w.shape, stride, (x.shape[2:],), padding):
        return conv2d_winograd_numba(x, w, b, padding)
    out, saved = _conv2d_products(x, w, stride, padding)
    out += b[None, :, None]
    return out.reshape(_out_shape(x, w, stride, padding)), saved


def conv2d_relu_numba(x, w, b, stride, padding):
    """``(out (N, F, Ho, Wo), saved)``: :func:`conv2d_numba` with the ReLU fused into the bias
    pass: the products, then one Numba pass ``out = max(out + b[f], 0)`` in place (the same
    float adds as NumPy's ``out += b``, so :func:`conv2d_numba` then the ReLU, bit for bit).
    ``saved`` as :func:`conv2d_numba`'s; the layer keeps ``out`` for the backward's mask."""
    if use_winograd(x.shape[:2], w.shape, stride, (x.shape[2:],), padding):
        return conv2d_winograd_numba(x, w, b, padding, relu=True)
    out, saved = _conv2d_products(x, w, stride, padding)
    with cpu_threads_for(out.size):
        _bias_relu(out, np.ascontiguousarray(b))
    return out.reshape(_out_shape(x, w, stride, padding)), saved


def _out_shape(x, w, stride, padding):
    """``(N, F, Ho, Wo)`` of the convolution of ``x`` by ``w``."""
    return (x.shape[0], w.shape[0], *_out_size(x.shape[2], x.shape[3], w.shape[2:], stride, padding))


@numba.njit(parallel=True, cache=True)
def _bias_relu(out, b):
    """``out (N, F, L) = max(out + b[f], 0)`` in place, one ``(image, filter)`` row per task: the
    bias add and the ReLU in one pass over the output (a NaN gives 0, as the reference's)."""
    n_f = out.shape[1]
    zero = out.dtype.type(0)
    for t in numba.prange(out.shape[0] * n_f):
        n, f = t // n_f, t % n_f
        row, bf = out[n, f], b[f]
        for q in range(row.shape[0]):
            v = row[q] + bf
            row[q] = v if v > 0 else zero


def _conv2d_products(x, w, stride, padding):
    """``(out (N, F, Ho*Wo), saved)``: the GEMMs of :func:`conv2d_numba`, without the bias."""
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = _out_size(h, wd, (kh, kw), stride, padding)
    rows = c * kh * kw
    x = np.ascontiguousarray(x)
    w2 = np.ascontiguousarray(w).reshape(f, rows)
    with blas_threads_for(2 * n * f * rows * ho * wo):  # small GEMMs: one BLAS thread
        if _is_pointwise(kh, kw, sh, sw, ph, pw):  # the columns are the input itself: no copy
            return np.matmul(w2, x.reshape(n, c, h * wd)), x
        xpad = _padded(x, ph, pw)
        out = np.empty((n, f, ho * wo), dtype=x.dtype)
        for oh0, oh1 in _row_blocks(ho, wo, rows):
            cols = scratch_buffer("cols", (rows, (oh1 - oh0) * wo), x.dtype)
            for i in range(n):
                _im2col_rows(xpad[i], kh, kw, sh, sw, oh0, oh1, wo, cols)
                np.matmul(w2, cols, out=out[i, :, oh0 * wo : oh1 * wo])
    return out, xpad


def _is_pointwise(kh, kw, sh, sw, ph, pw):
    """A 1x1 kernel, stride 1, no padding: ``im2col`` is the identity (``cols[n]`` is ``x[n]``
    seen as ``(C, H*W)``), so the GEMMs take the input and give ``dx`` directly."""
    return kh == kw == sh == sw == 1 and ph == pw == 0


def conv2d_backward_numba(dout, saved, w, x_shape, stride, padding):
    """``(dx, dw, db)`` of :func:`conv2d_numba`, block by block: unfold the block of the padded
    input again, ``dw += dout_block @ cols^T``, ``dcols = W^T @ dout_block`` into a reused
    buffer, fold it onto ``dx`` at once while it is in the cache (no full-size column matrix,
    neither of ``x`` nor of its gradient).

    Summation order: ``dw`` adds the blocks' products one after the other (the reference
    adds the images' whole products), and ``dx`` receives each pixel's contributions block by
    block (the reference: kernel offset by kernel offset): equal to rounding.
    """
    if isinstance(saved, WinogradSaved):  # the forward took the Winograd path
        return conv2d_winograd_backward_numba(dout, saved, w, x_shape, padding)
    xpad = saved
    dout = np.ascontiguousarray(dout)
    n, c, h, wd = x_shape
    f, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = _out_size(h, wd, (kh, kw), stride, padding)
    rows = c * kh * kw
    w2t = np.ascontiguousarray(w).reshape(f, rows).T
    d2 = dout.reshape(n, f, ho * wo)
    db = d2.sum(axis=(0, 2))
    dw = np.empty((f, rows), dtype=w.dtype)
    part = scratch_buffer("dw", (f, rows), w.dtype)
    with blas_threads_for(4 * n * f * rows * ho * wo):  # small GEMMs: one BLAS thread
        return _conv2d_backward_blocks(d2, xpad, w2t, x_shape, (kh, kw), stride, padding, dw, part, db)


def conv2d_relu_backward_numba(dout, saved, out, w, x_shape, stride, padding):
    """``(dx, dw, db)`` of :func:`conv2d_relu_numba`: one Numba pass writes the ReLU's gradient
    ``where(out > 0, dout, 0)`` into a reused buffer (the mask read off the forward's output,
    none kept), then :func:`conv2d_backward_numba` on it: the unfused pair's numbers, bit for
    bit (the same sums of the same values)."""
    dy = scratch_buffer("relu.grad", dout.shape, dout.dtype)  # consumed before the next conv's call
    relu_backward_from_output(dout, out, dy)
    return conv2d_backward_numba(dy, saved, w, x_shape, stride, padding)


def _conv2d_backward_blocks(d2, xpad, w2t, x_shape, kernel_size, stride, padding, dw, part, db):
    """The loop of :func:`conv2d_backward_numba` (``dw`` is filled in place)."""
    n, c, h, wd = x_shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    rows, f = w2t.shape
    ho, wo = _out_size(h, wd, kernel_size, stride, padding)
    if _is_pointwise(kh, kw, sh, sw, ph, pw):  # saved is x itself (see conv2d_numba)
        x2 = xpad.reshape(n, c, h * wd)
        for i in range(n):
            np.matmul(d2[i], x2[i].T, out=dw if i == 0 else part)
            if i:
                dw += part
        if n == 0:
            dw[...] = 0
        return np.matmul(w2t, d2).reshape(x_shape), dw.reshape(f, c, kh, kw), db
    dxpad = np.zeros(xpad.shape, dtype=d2.dtype)
    first = True
    for oh0, oh1 in _row_blocks(ho, wo, rows):
        cols = scratch_buffer("cols", (rows, (oh1 - oh0) * wo), xpad.dtype)
        dcols = scratch_buffer("dcols", (rows, (oh1 - oh0) * wo), xpad.dtype)
        for i in range(n):
            block = d2[i, :, oh0 * wo : oh1 * wo]
            _im2col_rows(xpad[i], kh, kw, sh, sw, oh0, oh1, wo, cols)
            np.matmul(block, cols.T, out=dw if first else part)
            if not first:
                dw += part
            first = False
            np.matmul(w2t, block, out=dcols)
            _col2im_rows(dcols, kh, kw, sh, sw, oh0, oh1, wo, dxpad[i])
    if first:  # no image: nothing was added
        dw[...] = 0
    return dxpad[:, :, ph : ph + h, pw : pw + wd], dw.reshape(f, c, kh, kw), db


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


def conv2d_cuda(x, w, b, stride, padding):
    """``(out, cols)``: :func:`minirccn.nn.conv.conv2d_reference` on the GPU (the Numba-CUDA
    im2col, then cuBLAS through CuPy's ``matmul``)."""
    xp = array_module(x)
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    ho, wo = _out_size(h, wd, (kh, kw), stride, padding)
    cols = im2col_cuda(x, (kh, kw), stride, padding)
    out = xp.matmul(w.reshape(f, c * kh * kw), cols)
    out += b[None, :, None]
    return out.reshape(n, f, ho, wo), cols


@cuda.jit
def _bias_relu_cuda(out, b, n_f, length):
    # one thread per element of out (N, F, L), flat: out = max(out + b[f], 0) in place
    idx = cuda.grid(1)
    if idx >= out.size:
        return
    v = out[idx] + b[(idx // length) % n_f]
    out[idx] = v if v > 0 else 0


@cuda.jit
def _relu_backward_from_output_cuda(dout, out, dy):
    # one thread per element (flat): the ReLU's gradient read off its output
    idx = cuda.grid(1)
    if idx >= dy.size:
        return
    dy[idx] = dout[idx] if out[idx] > 0 else 0


def conv2d_relu_cuda(x, w, b, stride, padding):
    """``(out, cols)``: :func:`minirccn.nn.conv.conv2d_relu_reference` on the GPU: the Numba-CUDA
    im2col, cuBLAS, then one Numba-CUDA pass ``max(out + b[f], 0)`` in place."""
    xp = array_module(x)
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    ho, wo = _out_size(h, wd, (kh, kw), stride, padding)
    cols = im2col_cuda(x, (kh, kw), stride, padding)
    out = xp.ascontiguousarray(xp.matmul(w.reshape(f, c * kh * kw), cols))
    if out.size:
        _bias_relu_cuda[blocks(out.size), THREADS](
            out.reshape(-1), xp.ascontiguousarray(b), f, ho * wo
        )
    return out.reshape(n, f, ho, wo), cols


def conv2d_relu_backward_cuda(dout, saved, out, w, x_shape, stride, padding):
    """``(dx, dw, db)``: :func:`minirccn.nn.conv.conv2d_relu_backward_reference` on the GPU (one
    Numba-CUDA pass masks ``dout`` by ``out > 0``, then :func:`conv2d_backward_cuda`)."""
    xp = array_module(dout)
    dout, out = xp.ascontiguousarray(dout), xp.ascontiguousarray(out)
    dy = xp.empty_like(dout)
    if dy.size:
        _relu_backward_from_output_cuda[blocks(dy.size), THREADS](
            dout.reshape(-1), out.reshape(-1), dy.reshape(-1)
        )
    return conv2d_backward_cuda(dy, saved, w, x_shape, stride, padding)


def conv2d_backward_cuda(dout, saved, w, x_shape, stride, padding):
    """``(dx, dw, db)``: :func:`minirccn.nn.conv.conv2d_backward_reference` on the GPU (cuBLAS
    products, the gathering Numba-CUDA col2im)."""
    cols = saved
    xp = array_module(cols)
    f, c, kh, kw = w.shape
    n = x_shape[0]
    dout = dout.reshape(n, f, dout.shape[2] * dout.shape[3])  # (-1 fails for N = 0)
    db = dout.sum(axis=(0, 2))
    dw = xp.zeros((f, c * kh * kw), dtype=w.dtype)
    for i in range(n):
        dw += dout[i] @ cols[i].T
    dcols = xp.matmul(w.reshape(f, c * kh * kw).T, dout)
    dx = col2im_cuda(dcols, x_shape, (kh, kw), stride, padding)
    return dx, dw.reshape(w.shape), db
