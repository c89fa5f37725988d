"""The 3x3, stride-1 convolution by Winograd's F(2x2, 3x3) on the CPU (Numba transforms, BLAS GEMMs).

The specification is :mod:`minirccn.nn.winograd` (:func:`~minirccn.nn.winograd.conv2d_winograd_reference`
and its backward; :func:`~minirccn.nn.winograd.conv2d_winograd_levels_reference` for a pyramid):
transform every 4x4 input tile, ``V = B^T d B``; transform the filters, ``U = G g G^T``; 16
GEMMs ``M = U @ V``; back with ``y = A^T M A`` per 2x2 output tile. The reference writes each
transform as an ``einsum``; here each is one Numba pass, one ``(image, channel)`` or ``(image,
filter)`` per task, that computes a tile's 16 (or 4) values with the transforms' additions
written out (the matrices' entries are 0, +-1 and 1/2) and writes them where the GEMM reads
them. Every pass walks a *level table* (:func:`level_table`): the levels of a pyramid packed
side by side (:mod:`minirccn.nn.conv_levels`), a plain conv being a pyramid of one level::

    xpad (N, C, Ppad)  each level zero-padded to (2th + 2) x (2tw + 2), one after the other
    V    (16, C, T)    V[k, c, t]: entry k of tile t's transform, channel c; T = N * sum_l th_l
                       tw_l, the levels' tiles one after the other (image-major within a level,
                       as the reference concatenates them)
    U    (16, F, C)
    M    (16, F, T)    written by 16 BLAS GEMMs, read by the output pass
    out  (N, F, Po)    the levels' outputs packed

The bias (and, fused, the ReLU: ``max(0, y + b)``) is applied by the output pass as it writes
``out``. The backward: the output gradient's tiles transformed (``dM = A dY A^T``, one pass),
the GEMMs ``dU = dM @ V^T`` and ``dV = U^T @ dM`` (16 each), then one pass per ``(image,
channel)`` adds every tile's ``B dV B^T`` onto the padded input gradient (the tiles overlap;
one task owns the plane, so no race) and one more cuts the levels out of their padding.
``U``'s transform and ``dw = G^T dU G`` are small serial Numba passes. ``V`` and ``U`` are kept
for the backward (``V`` is four times the input: 4x4 values per 2x2 outputs); the other
arrays live in reused scratch buffers.

Numbers: the reference's formulas, with each transform's sums in the order the formulas
list them (the reference's ``einsum`` may add in another order) and BLAS's split of the
``C``-long sums: equal to the reference to rounding (tests/nn/test_winograd.py, float32 and
float64, random and adversarial inputs). Against im2col (:mod:`minirccn.nn.conv`) also to
rounding: the transforms move where the roundings happen.

Index arithmetic: unsigned (no wrap-around tests) and with the constant offsets written in
place (``np.uint64(2)``): a constant hoisted out of a ``prange`` body becomes an argument of
the parallel region and cost the input pass 1.7x (docs/conv.md, section 9).

Entry points: ``conv2d_winograd_numba(x, w, b, padding, relu)`` and
``conv2d_winograd_levels_numba(x, sizes, w, b, padding, relu)`` return ``(out, saved)`` with
``saved`` a :class:`WinogradSaved`; ``conv2d_winograd_backward_numba(dout, saved, w, x_shape,
padding)`` and ``conv2d_winograd_levels_backward_numba(dout, saved, w, sizes, x_shape,
padding)`` return ``(dx, dw, db)``. ``kernels/conv.py`` and ``kernels/conv_levels.py`` call
them where :func:`use_winograd` says they pay.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from minirccn.kernels._launch import blas_threads_for, cpu_threads_for, scratch_buffer


class WinogradSaved(NamedTuple):
    """What the forward keeps for the backward."""

    v: np.ndarray  # (16, C, T) the transformed input tiles
    u: np.ndarray  # (16, F, C) the transformed filters


#: the 3x3, stride-1 convolutions that go the Winograd way (2.25 times fewer multiply-adds in
#: the GEMMs, but four passes over transformed copies of the data and 16 GEMMs instead of one)
#: have at least this many 2x2 output tiles in all (images x levels) and this many channels on
#: each side; below, the transforms' fixed cost and the thin GEMMs lose to im2col (measured:
#: docs/conv.md, section 9)
WINOGRAD_MIN_TILES = 256
WINOGRAD_MIN_CHANNELS = 32


def use_winograd(nc, w_shape, stride, sizes, padding) -> bool:
    """Whether the numba backend computes a convolution by F(2x2, 3x3): ``nc = (N, C)``, ``w_shape
    = (F, C, kh, kw)``, the input maps' ``sizes = ((H, W), ...)`` (one for a plain conv, the
    levels of a pyramid): a 3x3 kernel, stride 1, at least :data:`WINOGRAD_MIN_CHANNELS` input
    channels and filters and :data:`WINOGRAD_MIN_TILES` output tiles
    (``N * sum_l ceil(Ho_l / 2) * ceil(Wo_l / 2)``)."""
    n, c = nc
    f, _, kh, kw = w_shape
    if (kh, kw) != (3, 3) or tuple(stride) != (1, 1):
        return False
    if c < WINOGRAD_MIN_CHANNELS or f < WINOGRAD_MIN_CHANNELS:
        return False
    ph, pw = padding
    tiles = sum(((h + 2 * ph - 1) // 2) * ((w + 2 * pw - 1) // 2) for h, w in sizes)
    return n * tiles >= WINOGRAD_MIN_TILES


def level_table(sizes, padding):
    """``(table (L, 12) int64, tiles per image, padded pixels, output pixels)`` of the levels
    ``sizes = ((H_0, W_0), ...)`` packed side by side (one map is one level). Row ``l``::

        0 H, 1 W, 2 o_in       the level in the packed input (N, C, P)
        3 Hp, 4 Wp, 5 o_pad    its tile-padded copy (2th + 2) x (2tw + 2) in (N, C, Ppad)
        6 th, 7 tw, 8 t0       its tiles; t0 = the tiles of the levels before it, per image
        9 Ho, 10 Wo, 11 o_out  its output in the packed output (N, F, Po)
    """
    ph, pw = padding
    rows, o_in, o_pad, t0, o_out = [], 0, 0, 0, 0
    for h, w in sizes:
        ho, wo = h + 2 * ph - 2, w + 2 * pw - 2
        th, tw = (ho + 1) // 2, (wo + 1) // 2
        rows.append((h, w, o_in, 2 * th + 2, 2 * tw + 2, o_pad, th, tw, t0, ho, wo, o_out))
        o_in += h * w
        o_pad += (2 * th + 2) * (2 * tw + 2)
        t0 += th * tw
        o_out += ho * wo
    return np.array(rows, dtype=np.int64).reshape(-1, 12), t0, o_pad, o_out


@numba.njit(parallel=True, cache=True)
def _pad_levels(x, table, ph, pw, xpad):
    """``xpad (N, C, Ppad)`` (overwritten): each level of the packed ``x (N, C, P)`` at offset
    ``(ph, pw)`` of its zero plane ``Hp x Wp``. One ``(image, channel)`` per task."""
    n_ch = x.shape[1]
    zero = xpad.dtype.type(0)
    for nc in numba.prange(x.shape[0] * n_ch):
        n, c = nc // n_ch, nc % n_ch
        src, dst = x[n, c], xpad[n, c]
        for lv in range(table.shape[0]):
            height, width, o_in = table[lv, 0], table[lv, 1], table[lv, 2]
            hp, wp, o_pad = table[lv, 3], table[lv, 4], table[lv, 5]
            for h in range(hp):
                row = o_pad + h * wp
                if h < ph or h >= ph + height:
                    for k in range(wp):
                        dst[row + k] = zero
                    continue
                first = o_in + (h - ph) * width
                for k in range(pw):
                    dst[row + k] = zero
                for k in range(width):
                    dst[row + pw + k] = src[first + k]
                for k in range(pw + width, wp):
                    dst[row + k] = zero


@numba.njit(parallel=True, cache=True)
def _unpad_levels(dxpad, table, ph, pw, dx):
    """``dx (N, C, P)`` (overwritten): each level's pixels cut out of its padded plane in
    ``dxpad (N, C, Ppad)`` (the adjoint's crop). One ``(image, channel)`` per task."""
    n_ch = dx.shape[1]
    for nc in numba.prange(dx.shape[0] * n_ch):
        n, c = nc // n_ch, nc % n_ch
        src, dst = dxpad[n, c], dx[n, c]
        for lv in range(table.shape[0]):
            height, width, o_in = table[lv, 0], table[lv, 1], table[lv, 2]
            wp, o_pad = table[lv, 4], table[lv, 5]
            for h in range(height):
                first = o_pad + (h + ph) * wp + pw
                row = o_in + h * width
                for k in range(width):
                    dst[row + k] = src[first + k]


@numba.njit(parallel=True, cache=True)
def _input_transform(xpad, table, t_img, v):
    """``v[4a + b, c, t] = (B^T d B)[a, b]``, ``d`` the 4x4 window at ``(2ty, 2tx)`` of a
    level's padded plane in ``xpad (N, C, Ppad)`` (:func:`_pad_levels`), tile ``t = N * t0 +
    (n*th + ty)*tw + tx`` (the levels' tiles one after the other, as the reference
    concatenates them). ``v`` is flat ``(16, C, T)``; one ``(image, channel)`` per task; the
    indices unsigned (no wrap-around tests in the loop)."""
    n_img, n_ch, p_pad = xpad.shape
    flat = xpad.reshape(-1)
    t_all = n_img * t_img
    sk = np.uint64(n_ch * t_all)
    for nc in numba.prange(n_img * n_ch):
        n, c = nc // n_ch, nc % n_ch
        for lv in range(table.shape[0]):
            wp, o_pad = table[lv, 4], table[lv, 5]
            th, tw, t0 = table[lv, 6], table[lv, 7], table[lv, 8]
            base = np.uint64(nc * p_pad + o_pad)
            for ty in range(th):
                r0 = base + np.uint64(2 * ty * wp)
                r1, r2, r3 = r0 + np.uint64(wp), r0 + np.uint64(2 * wp), r0 + np.uint64(3 * wp)
                out = np.uint64(c * t_all + n_img * t0 + (n * th + ty) * tw)
                for tx in range(tw):
                    j = np.uint64(2 * tx)
                    # B^T d: rows d0 - d2, d1 + d2, d2 - d1, d1 - d3, column by column
                    a0 = flat[r0 + j] - flat[r2 + j]
                    a1 = flat[r0 + j + np.uint64(1)] - flat[r2 + j + np.uint64(1)]
                    a2 = flat[r0 + j + np.uint64(2)] - flat[r2 + j + np.uint64(2)]
                    a3 = flat[r0 + j + np.uint64(3)] - flat[r2 + j + np.uint64(3)]
                    b0 = flat[r1 + j] + flat[r2 + j]
                    b1 = flat[r1 + j + np.uint64(1)] + flat[r2 + j + np.uint64(1)]
                    b2 = flat[r1 + j + np.uint64(2)] + flat[r2 + j + np.uint64(2)]
                    b3 = flat[r1 + j + np.uint64(3)] + flat[r2 + j + np.uint64(3)]
                    c0 = flat[r2 + j] - flat[r1 + j]
                    c1 = flat[r2 + j + np.uint64(1)] - flat[r1 + j + np.uint64(1)]
                    c2 = flat[r2 + j + np.uint64(2)] - flat[r1 + j + np.uint64(2)]
                    c3 = flat[r2 + j + np.uint64(3)] - flat[r1 + j + np.uint64(3)]
                    e0 = flat[r1 + j] - flat[r3 + j]
                    e1 = flat[r1 + j + np.uint64(1)] - flat[r3 + j + np.uint64(1)]
                    e2 = flat[r1 + j + np.uint64(2)] - flat[r3 + j + np.uint64(2)]
                    e3 = flat[r1 + j + np.uint64(3)] - flat[r3 + j + np.uint64(3)]
                    # (B^T d) B: the same on each row
                    t = out + np.uint64(tx)
                    v[t] = a0 - a2
                    v[t + sk] = a1 + a2
                    v[t + np.uint64(2) * sk] = a2 - a1
                    v[t + np.uint64(3) * sk] = a1 - a3
                    v[t + np.uint64(4) * sk] = b0 - b2
                    v[t + np.uint64(5) * sk] = b1 + b2
                    v[t + np.uint64(6) * sk] = b2 - b1
                    v[t + np.uint64(7) * sk] = b1 - b3
                    v[t + np.uint64(8) * sk] = c0 - c2
                    v[t + np.uint64(9) * sk] = c1 + c2
                    v[t + np.uint64(10) * sk] = c2 - c1
                    v[t + np.uint64(11) * sk] = c1 - c3
                    v[t + np.uint64(12) * sk] = e0 - e2
                    v[t + np.uint64(13) * sk] = e1 + e2
                    v[t + np.uint64(14) * sk] = e2 - e1
                    v[t + np.uint64(15) * sk] = e1 - e3


@numba.njit(parallel=True, cache=True)
def _output_transform(m, b, table, t_img, relu, out):
    """``out[n, f, o_out + (2ty + p)*Wo + 2tx + q] = (A^T M A)[p, q] + b[f]`` of each level's
    tile ``(n, ty, tx)`` (then ``max(0, .)`` when ``relu``); outputs past ``Ho``/``Wo`` dropped.
    ``m`` flat ``(16, F, T)``, ``out (N, F, Po)``; one ``(image, filter)`` per task."""
    n_img, n_f, p_out = out.shape
    dst = out.reshape(-1)
    t_all = n_img * t_img
    sk = np.uint64(n_f * t_all)
    zero = out.dtype.type(0)
    for nf in numba.prange(n_img * n_f):
        n, f = nf // n_f, nf % n_f
        bf = b[f]
        for lv in range(table.shape[0]):
            th, tw, t0 = table[lv, 6], table[lv, 7], table[lv, 8]
            ho, wo, o_out = table[lv, 9], table[lv, 10], table[lv, 11]
            plane = np.uint64(nf * p_out + o_out)
            for ty in range(th):
                src = np.uint64(f * t_all + n_img * t0 + (n * th + ty) * tw)
                row0 = plane + np.uint64(2 * ty * wo)
                two_rows = 2 * ty + 1 < ho
                for tx in range(tw):
                    t = src + np.uint64(tx)
                    m0, m1 = m[t], m[t + sk]
                    m2, m3 = m[t + np.uint64(2) * sk], m[t + np.uint64(3) * sk]
                    m4, m5 = m[t + np.uint64(4) * sk], m[t + np.uint64(5) * sk]
                    m6, m7 = m[t + np.uint64(6) * sk], m[t + np.uint64(7) * sk]
                    m8, m9 = m[t + np.uint64(8) * sk], m[t + np.uint64(9) * sk]
                    m10, m11 = m[t + np.uint64(10) * sk], m[t + np.uint64(11) * sk]
                    m12, m13 = m[t + np.uint64(12) * sk], m[t + np.uint64(13) * sk]
                    m14, m15 = m[t + np.uint64(14) * sk], m[t + np.uint64(15) * sk]
                    # A^T M: rows m_0 + m_1 + m_2 and m_1 - m_2 - m_3 (m_a: row a of the 4x4)
                    p0, p1, p2, p3 = m0 + m4 + m8, m1 + m5 + m9, m2 + m6 + m10, m3 + m7 + m11
                    q0, q1, q2, q3 = m4 - m8 - m12, m5 - m9 - m13, m6 - m10 - m14, m7 - m11 - m15
                    # (A^T M) A: the same on each row, then the bias (and the ReLU)
                    y00 = p0 + p1 + p2 + bf
                    y01 = p1 - p2 - p3 + bf
                    y10 = q0 + q1 + q2 + bf
                    y11 = q1 - q2 - q3 + bf
                    if relu:  # max(0, y): 0 for a NaN too, as the reference's where(y > 0, y, 0)
                        y00, y01 = max(zero, y00), max(zero, y01)
                        y10, y11 = max(zero, y10), max(zero, y11)
                    o = row0 + np.uint64(2 * tx)
                    two_cols = 2 * tx + 1 < wo
                    dst[o] = y00
                    if two_cols:
                        dst[o + np.uint64(1)] = y01
                    if two_rows:
                        dst[o + np.uint64(wo)] = y10
                        if two_cols:
                            dst[o + np.uint64(wo + 1)] = y11


@numba.njit(parallel=True, cache=True)
def _grad_output_transform(dout, table, t_img, dm):
    """``dm[4a + b, f, t] = (A dY A^T)[a, b]``, ``dY`` the 2x2 of a level's output gradient in
    ``dout (N, F, Po)`` at ``(2ty, 2tx)`` (zeros past ``Ho``/``Wo``); ``dm`` flat ``(16, F,
    T)``. One ``(image, filter)`` per task."""
    n_img, n_f, p_out = dout.shape
    src = dout.reshape(-1)
    t_all = n_img * t_img
    sk = np.uint64(n_f * t_all)
    zero = dout.dtype.type(0)
    for nf in numba.prange(n_img * n_f):
        n, f = nf // n_f, nf % n_f
        for lv in range(table.shape[0]):
            th, tw, t0 = table[lv, 6], table[lv, 7], table[lv, 8]
            ho, wo, o_out = table[lv, 9], table[lv, 10], table[lv, 11]
            plane = np.uint64(nf * p_out + o_out)
            for ty in range(th):
                r0 = plane + np.uint64(2 * ty * wo)
                two_rows = 2 * ty + 1 < ho
                out = np.uint64(f * t_all + n_img * t0 + (n * th + ty) * tw)
                for tx in range(tw):
                    j = np.uint64(2 * tx)
                    two_cols = 2 * tx + 1 < wo
                    g00 = src[r0 + j]
                    g01 = src[r0 + j + np.uint64(1)] if two_cols else zero
                    g10 = src[r0 + j + np.uint64(wo)] if two_rows else zero
                    g11 = src[r0 + j + np.uint64(wo + 1)] if two_rows and two_cols else zero
                    # A dY: rows y0, y0 + y1, y0 - y1, -y1 (y_p: row p of the 2x2)
                    s00, s01 = g00, g01
                    s10, s11 = g00 + g10, g01 + g11
                    s20, s21 = g00 - g10, g01 - g11
                    s30, s31 = -g10, -g11
                    # (A dY) A^T: the same on each row
                    t = out + np.uint64(tx)
                    dm[t] = s00
                    dm[t + sk] = s00 + s01
                    dm[t + np.uint64(2) * sk] = s00 - s01
                    dm[t + np.uint64(3) * sk] = -s01
                    dm[t + np.uint64(4) * sk] = s10
                    dm[t + np.uint64(5) * sk] = s10 + s11
                    dm[t + np.uint64(6) * sk] = s10 - s11
                    dm[t + np.uint64(7) * sk] = -s11
                    dm[t + np.uint64(8) * sk] = s20
                    dm[t + np.uint64(9) * sk] = s20 + s21
                    dm[t + np.uint64(10) * sk] = s20 - s21
                    dm[t + np.uint64(11) * sk] = -s21
                    dm[t + np.uint64(12) * sk] = s30
                    dm[t + np.uint64(13) * sk] = s30 + s31
                    dm[t + np.uint64(14) * sk] = s30 - s31
                    dm[t + np.uint64(15) * sk] = -s31


@numba.njit(parallel=True, cache=True)
def _grad_input_transform(dv, table, t_img, dxpad):
    """``dxpad (N, C, Ppad)`` (overwritten) = for each level, the sum over its tiles of
    ``B dV B^T`` (4x4) added at the tile's window ``(2ty, 2tx)`` of the level's padded plane,
    tiles in order; ``dv`` flat ``(16, C, T)``. One ``(image, channel)`` per task: no race on
    the overlapping windows."""
    n_img, n_ch, p_pad = dxpad.shape
    dst = dxpad.reshape(-1)
    t_all = n_img * t_img
    sk = np.uint64(n_ch * t_all)
    zero = dxpad.dtype.type(0)
    for nc in numba.prange(n_img * n_ch):
        n, c = nc // n_ch, nc % n_ch
        start = np.uint64(nc * p_pad)
        for k in range(p_pad):
            dst[start + np.uint64(k)] = zero
        for lv in range(table.shape[0]):
            wp, o_pad = table[lv, 4], table[lv, 5]
            th, tw, t0 = table[lv, 6], table[lv, 7], table[lv, 8]
            plane = start + np.uint64(o_pad)
            for ty in range(th):
                r0 = plane + np.uint64(2 * ty * wp)
                r1, r2, r3 = r0 + np.uint64(wp), r0 + np.uint64(2 * wp), r0 + np.uint64(3 * wp)
                src = np.uint64(c * t_all + n_img * t0 + (n * th + ty) * tw)
                for tx in range(tw):
                    t = src + np.uint64(tx)
                    v0, v1 = dv[t], dv[t + sk]
                    v2, v3 = dv[t + np.uint64(2) * sk], dv[t + np.uint64(3) * sk]
                    v4, v5 = dv[t + np.uint64(4) * sk], dv[t + np.uint64(5) * sk]
                    v6, v7 = dv[t + np.uint64(6) * sk], dv[t + np.uint64(7) * sk]
                    v8, v9 = dv[t + np.uint64(8) * sk], dv[t + np.uint64(9) * sk]
                    v10, v11 = dv[t + np.uint64(10) * sk], dv[t + np.uint64(11) * sk]
                    v12, v13 = dv[t + np.uint64(12) * sk], dv[t + np.uint64(13) * sk]
                    v14, v15 = dv[t + np.uint64(14) * sk], dv[t + np.uint64(15) * sk]
                    # B dV: rows v_0, v_1 - v_2 + v_3, v_2 + v_1 - v_0, -v_3 (v_a: row a)
                    a0, a1, a2, a3 = v0, v1, v2, v3
                    b0, b1, b2, b3 = v4 - v8 + v12, v5 - v9 + v13, v6 - v10 + v14, v7 - v11 + v15
                    c0, c1, c2, c3 = v8 + v4 - v0, v9 + v5 - v1, v10 + v6 - v2, v11 + v7 - v3
                    e0, e1, e2, e3 = -v12, -v13, -v14, -v15
                    # (B dV) B^T: the same on each row, added at the window
                    j = np.uint64(2 * tx)
                    dst[r0 + j] += a0
                    dst[r0 + j + np.uint64(1)] += a1 - a2 + a3
                    dst[r0 + j + np.uint64(2)] += a2 + a1 - a0
                    dst[r0 + j + np.uint64(3)] += -a3
                    dst[r1 + j] += b0
                    dst[r1 + j + np.uint64(1)] += b1 - b2 + b3
                    dst[r1 + j + np.uint64(2)] += b2 + b1 - b0
                    dst[r1 + j + np.uint64(3)] += -b3
                    dst[r2 + j] += c0
                    dst[r2 + j + np.uint64(1)] += c1 - c2 + c3
                    dst[r2 + j + np.uint64(2)] += c2 + c1 - c0
                    dst[r2 + j + np.uint64(3)] += -c3
                    dst[r3 + j] += e0
                    dst[r3 + j + np.uint64(1)] += e1 - e2 + e3
                    dst[r3 + j + np.uint64(2)] += e2 + e1 - e0
                    dst[r3 + j + np.uint64(3)] += -e3


@numba.njit(cache=True)
def _filter_transform(w, u):
    """``u[4a + b, f, c] = (G w[f, c] G^T)[a, b]`` with ``G``'s rows ``(1, 0, 0)``, ``(1/2, 1/2,
    1/2)``, ``(1/2, -1/2, 1/2)``, ``(0, 0, 1)`` written out: per filter and channel, the 3x3's
    columns combined (``G w``), then its rows (``(G w) G^T``)."""
    n_f, n_ch = w.shape[0], w.shape[1]
    half = w.dtype.type(0.5)
    gw = np.empty((4, 3), dtype=w.dtype)
    for f in range(n_f):
        for c in range(n_ch):
            g = w[f, c]
            for j in range(3):
                gw[0, j] = g[0, j]
                gw[1, j] = (g[0, j] + g[1, j] + g[2, j]) * half
                gw[2, j] = (g[0, j] - g[1, j] + g[2, j]) * half
                gw[3, j] = g[2, j]
            for a in range(4):
                u[4 * a + 0, f, c] = gw[a, 0]
                u[4 * a + 1, f, c] = (gw[a, 0] + gw[a, 1] + gw[a, 2]) * half
                u[4 * a + 2, f, c] = (gw[a, 0] - gw[a, 1] + gw[a, 2]) * half
                u[4 * a + 3, f, c] = gw[a, 2]


def filter_transform(w):
    """``U (16, F, C)`` = ``G w[f, c] G^T`` per filter and channel (one Numba pass)."""
    u = np.empty((16, w.shape[0], w.shape[1]), dtype=w.dtype)
    _filter_transform(np.ascontiguousarray(w), u)
    return u


@numba.njit(cache=True)
def _filter_gradient_kernel(du, dw):
    """``dw[f, c] = G^T dU[f, c] G`` (3x3) of ``du (16, F, C)``: the transpose of
    :func:`_filter_transform`'s two steps, in reverse order."""
    n_f, n_ch = dw.shape[0], dw.shape[1]
    half = dw.dtype.type(0.5)
    r = np.empty((4, 3), dtype=dw.dtype)
    for f in range(n_f):
        for c in range(n_ch):
            for a in range(4):  # (dU G): row a's 4 values onto 3 columns
                d0, d1 = du[4 * a + 0, f, c], du[4 * a + 1, f, c]
                d2, d3 = du[4 * a + 2, f, c], du[4 * a + 3, f, c]
                r[a, 0] = d0 + (d1 + d2) * half
                r[a, 1] = (d1 - d2) * half
                r[a, 2] = (d1 + d2) * half + d3
            g = dw[f, c]
            for j in range(3):  # G^T (dU G): the 4 rows onto 3
                g[0, j] = r[0, j] + (r[1, j] + r[2, j]) * half
                g[1, j] = (r[1, j] - r[2, j]) * half
                g[2, j] = (r[1, j] + r[2, j]) * half + r[3, j]


def _filter_gradient(du, f, c, dtype):
    """``dw (F, C, 3, 3)`` = ``G^T dU G`` of ``du (16, F, C)`` (one Numba pass)."""
    dw = np.empty((f, c, 3, 3), dtype=dtype)
    _filter_gradient_kernel(np.ascontiguousarray(du), dw)
    return dw


def conv2d_winograd_levels_numba(x, sizes, w, b, padding, relu=False):
    """``(out (N, F, Po), saved)``: the F(2x2, 3x3) convolution of every level of the packed
    ``x (N, C, P)`` (:mod:`minirccn.nn.conv_levels`), all the levels' tiles in the same 16
    GEMMs (the ReLU fused into the output pass when ``relu``); ``saved`` the
    :class:`WinogradSaved`."""
    n, c, _ = x.shape
    f = w.shape[0]
    table, t_img, p_pad, p_out = level_table(sizes, padding)
    t = n * t_img
    xpad = scratch_buffer("winograd.xpad", (n, c, p_pad), x.dtype)  # read by the next pass only
    with cpu_threads_for(xpad.size):
        _pad_levels(np.ascontiguousarray(x), table, padding[0], padding[1], xpad)
    v = np.empty((16, c, t), dtype=x.dtype)
    with cpu_threads_for(v.size):
        _input_transform(xpad, table, t_img, v.reshape(-1))
    u = filter_transform(w)
    m = scratch_buffer("winograd.m", (16, f, t), x.dtype)  # read by the output pass only
    with blas_threads_for(2 * 16 * f * c * t):
        np.matmul(u, v, out=m)  # 16 GEMMs
    out = np.empty((n, f, p_out), dtype=x.dtype)
    with cpu_threads_for(m.size):
        _output_transform(m.reshape(-1), np.ascontiguousarray(b), table, t_img, relu, out)
    return out, WinogradSaved(v, u)


def conv2d_winograd_levels_backward_numba(dout, saved, w, sizes, x_shape, padding):
    """``(dx (N, C, P), dw, db)`` of :func:`conv2d_winograd_levels_numba` (``dout (N, F, Po)``
    already through the ReLU's mask when the forward fused one)."""
    n, c, _ = x_shape
    f = w.shape[0]
    table, t_img, p_pad, _ = level_table(sizes, padding)
    t = n * t_img
    v, u = saved
    dout = np.ascontiguousarray(dout)
    dm = scratch_buffer("winograd.dm", (16, f, t), dout.dtype)  # consumed here: reused
    dv = scratch_buffer("winograd.dv", (16, c, t), dout.dtype)
    with cpu_threads_for(dm.size):
        _grad_output_transform(dout, table, t_img, dm.reshape(-1))
    with blas_threads_for(4 * 16 * f * c * t):
        du = np.matmul(dm, v.transpose(0, 2, 1))  # (16, F, C)
        np.matmul(u.transpose(0, 2, 1), dm, out=dv)  # (16, C, T)
    dw = _filter_gradient(du, f, c, w.dtype)
    dxpad = scratch_buffer("winograd.dxpad", (n, c, p_pad), dout.dtype)
    with cpu_threads_for(dv.size):
        _grad_input_transform(dv.reshape(-1), table, t_img, dxpad)
    dx = np.empty(tuple(x_shape), dtype=dout.dtype)
    with cpu_threads_for(dx.size):
        _unpad_levels(dxpad, table, padding[0], padding[1], dx)
    return dx, dw, dout.sum(axis=(0, 2))


def conv2d_winograd_numba(x, w, b, padding, relu=False):
    """``(out (N, F, Ho, Wo), saved)``: the reference's F(2x2, 3x3) convolution of one map (a
    pyramid of one level: :func:`conv2d_winograd_levels_numba`)."""
    n, c, h, wd = x.shape
    out, saved = conv2d_winograd_levels_numba(
        np.ascontiguousarray(x).reshape(n, c, h * wd), ((h, wd),), w, b, padding, relu
    )
    ho, wo = h + 2 * padding[0] - 2, wd + 2 * padding[1] - 2
    return out.reshape(n, w.shape[0], ho, wo), saved


def conv2d_winograd_backward_numba(dout, saved, w, x_shape, padding):
    """``(dx, dw, db)`` of :func:`conv2d_winograd_numba`."""
    n, c, h, wd = x_shape
    f = w.shape[0]
    dout = np.ascontiguousarray(dout)
    dx, dw, db = conv2d_winograd_levels_backward_numba(
        dout.reshape(n, f, dout.shape[2] * dout.shape[3]), saved, w, ((h, wd),), (n, c, h * wd), padding
    )
    return dx.reshape(x_shape), dw, db
