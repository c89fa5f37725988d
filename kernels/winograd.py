"""The 3x3, stride-1 convolution by Winograd's F(2x2, 3x3) on the CPU (Numba transforms, BLAS GEMMs).

The specification is :mod:`minirccn.nn.winograd` (:func:`~minirccn.nn.winograd.conv2d_winograd_reference`,
:func:`~minirccn.nn.winograd.conv2d_winograd_backward_reference`): transform every 4x4 input
tile, ``V = B^T d B``; transform the filters, ``U = G g G^T``; 16 GEMMs ``M = U @ V``; back
with ``y = A^T M A`` per 2x2 output tile. The reference writes each transform as an
``einsum``; here each is one Numba pass, one ``(image, channel)`` or ``(image, filter)`` plane
per task, that computes a tile's 16 (or 4) values with the transforms' additions written out
(the matrices' entries are 0, +-1 and 1/2) and writes them where the GEMM reads them:

    V  (16, C, T)   V[k, c, t]: row k of tile t, channel c (T = N * th * tw tiles, image-major)
    U  (16, F, C)
    M  (16, F, T)   written by 16 BLAS GEMMs, read by the output pass

The bias (and, fused, the ReLU: ``max(y + b, 0)``) is applied by the output pass as it
writes ``out (N, F, Ho, Wo)``. The backward: the output gradient's tiles transformed
(``dM = A dY A^T``, one pass), the 32 GEMMs ``dU = dM @ V^T`` and ``dV = U^T @ dM``, then one
pass per ``(image, channel)`` plane adds every tile's ``B dV B^T`` onto the padded input
gradient (the tiles overlap; one task owns the plane, so no race). ``dw = G^T dU G`` is a
small NumPy product. ``V`` and ``U`` are kept for the backward (``V`` is four times the input:
4x4 values per 2x2 outputs).

Numbers: the reference's formulas, with each transform's sums in the order the formulas
list them (the reference's ``einsum`` may add in another order) and BLAS's split of the
``C``-long sums: equal to the reference to rounding (tests/nn/test_winograd.py, float32 and
float64, random and adversarial inputs). Against im2col (:mod:`minirccn.nn.conv`) also to
rounding: the transforms move where the roundings happen.

Entry points: ``conv2d_winograd_numba(x, w, b, padding, relu)`` returns ``(out, saved)``
with ``saved`` a :class:`WinogradSaved`; ``conv2d_winograd_backward_numba(dout, saved, w,
x_shape, padding)`` returns ``(dx, dw, db)``. ``kernels/conv.py`` calls them for the 3x3,
stride-1 kernels where they pay (:func:`minirccn.kernels.conv.conv2d_numba`).
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


def _tiles(height, width, padding):
    """``(Ho, Wo, th, tw)`` (as :func:`minirccn.nn.winograd.tiles`)."""
    ho, wo = height + 2 * padding[0] - 2, width + 2 * padding[1] - 2
    return ho, wo, (ho + 1) // 2, (wo + 1) // 2


@numba.njit(parallel=True, cache=True)
def _input_transform(xpad, th, tw, v):
    """``v[4a + b, c, (n*th + ty)*tw + tx] = (B^T d B)[a, b]``, ``d`` the 4x4 window of the padded
    plane ``xpad[n, c]`` (``(2th + 2, 2tw + 2)``, :func:`_pad_tiles`) at ``(2ty, 2tx)``. One
    ``(image, channel)`` plane per task; ``v`` is flat (index ``(k*C + c)*T + t``), the
    indices unsigned (no wrap-around tests in the loop)."""
    n_img, n_ch, hp, wp = xpad.shape
    flat = xpad.reshape(-1)
    t_all = n_img * th * tw
    stride_k = np.uint64(n_ch * t_all)
    for nc in numba.prange(n_img * n_ch):
        n, c = nc // n_ch, nc % n_ch
        base = np.uint64(nc * hp * wp)
        for ty in range(th):
            r0 = base + np.uint64(2 * ty * wp)
            r1, r2, r3 = r0 + np.uint64(wp), r0 + np.uint64(2 * wp), r0 + np.uint64(3 * wp)
            out = np.uint64(c * t_all + (n * th + ty) * tw)
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
                v[t + stride_k] = a1 + a2
                v[t + np.uint64(2) * stride_k] = a2 - a1
                v[t + np.uint64(3) * stride_k] = a1 - a3
                v[t + np.uint64(4) * stride_k] = b0 - b2
                v[t + np.uint64(5) * stride_k] = b1 + b2
                v[t + np.uint64(6) * stride_k] = b2 - b1
                v[t + np.uint64(7) * stride_k] = b1 - b3
                v[t + np.uint64(8) * stride_k] = c0 - c2
                v[t + np.uint64(9) * stride_k] = c1 + c2
                v[t + np.uint64(10) * stride_k] = c2 - c1
                v[t + np.uint64(11) * stride_k] = c1 - c3
                v[t + np.uint64(12) * stride_k] = e0 - e2
                v[t + np.uint64(13) * stride_k] = e1 + e2
                v[t + np.uint64(14) * stride_k] = e2 - e1
                v[t + np.uint64(15) * stride_k] = e1 - e3


@numba.njit(parallel=True, cache=True)
def _output_transform(m, b, n_img, th, tw, relu, out):
    """``out[n, f, 2ty + p, 2tx + q] = (A^T M A)[p, q] + b[f]`` of tile ``(n, ty, tx)`` (then
    ``max(., 0)`` when ``relu``); outputs past ``Ho``/``Wo`` dropped. ``m`` flat ``(16, F, T)``,
    ``out (N, F, Ho, Wo)``; one ``(image, filter)`` plane per task."""
    n_f, ho, wo = out.shape[1], out.shape[2], out.shape[3]
    dst = out.reshape(-1)
    t_all = n_img * th * tw
    sk = np.uint64(n_f * t_all)
    zero = out.dtype.type(0)
    for nf in numba.prange(n_img * n_f):
        n, f = nf // n_f, nf % n_f
        bf = b[f]
        plane = np.uint64(nf * ho * wo)
        for ty in range(th):
            src = np.uint64(f * t_all + (n * th + ty) * tw)
            row0 = plane + np.uint64(2 * ty * wo)
            two_rows = 2 * ty + 1 < ho
            for tx in range(tw):
                t = src + np.uint64(tx)
                m0, m1, m2, m3 = m[t], m[t + sk], m[t + np.uint64(2) * sk], m[t + np.uint64(3) * sk]
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
def _grad_output_transform(dy, th, tw, dm):
    """``dm[4a + b, f, t] = (A dY A^T)[a, b]``, ``dY`` the 2x2 of ``dy[n, f]`` at ``(2ty, 2tx)``;
    ``dy (N, F, 2th, 2tw)`` (the output gradient, zero-padded to whole tiles), ``dm`` flat
    ``(16, F, T)``. One ``(image, filter)`` plane per task."""
    n_img, n_f, hp, wp = dy.shape
    src = dy.reshape(-1)
    t_all = n_img * th * tw
    sk = np.uint64(n_f * t_all)
    for nf in numba.prange(n_img * n_f):
        n, f = nf // n_f, nf % n_f
        plane = np.uint64(nf * hp * wp)
        for ty in range(th):
            r0 = plane + np.uint64(2 * ty * wp)
            r1 = r0 + np.uint64(wp)
            out = np.uint64(f * t_all + (n * th + ty) * tw)
            for tx in range(tw):
                j = np.uint64(2 * tx)
                g00, g01 = src[r0 + j], src[r0 + j + np.uint64(1)]
                g10, g11 = src[r1 + j], src[r1 + j + np.uint64(1)]
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
def _grad_input_transform(dv, n_img, th, tw, dxpad):
    """``dxpad (N, C, 2th + 2, 2tw + 2)`` (overwritten) = the sum over tiles of ``B dV B^T``
    (4x4) added at the tile's window ``(2ty, 2tx)``, tiles in order; ``dv`` flat ``(16, C, T)``.
    One ``(image, channel)`` plane per task: no race on the overlapping windows."""
    n_ch, hp, wp = dxpad.shape[1], dxpad.shape[2], dxpad.shape[3]
    dst = dxpad.reshape(-1)
    t_all = n_img * th * tw
    sk = np.uint64(n_ch * t_all)
    zero = dxpad.dtype.type(0)
    for nc in numba.prange(n_img * n_ch):
        n, c = nc // n_ch, nc % n_ch
        plane = np.uint64(nc * hp * wp)
        for k in range(hp * wp):
            dst[plane + np.uint64(k)] = zero
        for ty in range(th):
            r0 = plane + np.uint64(2 * ty * wp)
            r1, r2, r3 = r0 + np.uint64(wp), r0 + np.uint64(2 * wp), r0 + np.uint64(3 * wp)
            src = np.uint64(c * t_all + (n * th + ty) * tw)
            for tx in range(tw):
                t = src + np.uint64(tx)
                v0, v1, v2, v3 = dv[t], dv[t + sk], dv[t + np.uint64(2) * sk], dv[t + np.uint64(3) * sk]
                v4, v5 = dv[t + np.uint64(4) * sk], dv[t + np.uint64(5) * sk]
                v6, v7 = dv[t + np.uint64(6) * sk], dv[t + np.uint64(7) * sk]
                v8, v9 = dv[t + np.uint64(8) * sk], dv[t + np.uint64(9) * sk]
                v10, v11 = dv[t + np.uint64(10) * sk], dv[t + np.uint64(11) * sk]
                v12, v13 = dv[t + np.uint64(12) * sk], dv[t + np.uint64(13) * sk]
                v14, v15 = dv[t + np.uint64(14) * sk], dv[t + np.uint64(15) * sk]
                # B dV: rows v_0, v_1 - v_2 + v_3, v_2 + v_1 - v_0, -v_3 (v_a: row a of the 4x4)
                a0, a1, a2, a3 = v0, v1, v2, v3
                b0, b1, b2, b3 = v4 - v8 + v12, v5 - v9 + v13, v6 - v10 + v14, v7 - v11 + v15
                c0, c1, c2, c3 = v8 + v4 - v0, v9 + v5 - v1, v10 + v6 - v2, v11 + v7 - v3
                e0, e1, e2, e3 = -v12, -v13, -v14, -v15
                # (B dV) B^T: the same on each row, added at the window
                j = np.uint64(2 * tx)
                one, two, three = np.uint64(1), np.uint64(2), np.uint64(3)
                dst[r0 + j] += a0
                dst[r0 + j + one] += a1 - a2 + a3
                dst[r0 + j + two] += a2 + a1 - a0
                dst[r0 + j + three] += -a3
                dst[r1 + j] += b0
                dst[r1 + j + one] += b1 - b2 + b3
                dst[r1 + j + two] += b2 + b1 - b0
                dst[r1 + j + three] += -b3
                dst[r2 + j] += c0
                dst[r2 + j + one] += c1 - c2 + c3
                dst[r2 + j + two] += c2 + c1 - c0
                dst[r2 + j + three] += -c3
                dst[r3 + j] += e0
                dst[r3 + j + one] += e1 - e2 + e3
                dst[r3 + j + two] += e2 + e1 - e0
                dst[r3 + j + three] += -e3


#: ``G`` (4, 3) of the reference, as a constant here (kernels import only the backend)
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])


def filter_transform(w):
    """``U (16, F, C)`` = ``G w[f, c] G^T`` per filter and channel: two ``tensordot`` (each one
    GEMM over all ``F * C`` filters; a broadcast ``matmul`` would make ``F * C`` tiny ones)."""
    f, c = w.shape[:2]
    g = _G.astype(w.dtype)
    gw = np.tensordot(g, w, axes=([1], [2]))  # (4, F, C, 3): G w, the 3x3's rows combined
    u = np.tensordot(gw, g, axes=([3], [1]))  # (4, F, C, 4): (G w) G^T
    return np.ascontiguousarray(u.transpose(0, 3, 1, 2)).reshape(16, f, c)


def _filter_gradient(du, f, c, dtype):
    """``dw (F, C, 3, 3)`` = ``G^T dU G`` of ``du (16, F, C)`` (two ``tensordot``)."""
    g = _G.astype(dtype)
    gd = np.tensordot(g, du.reshape(4, 4, f, c), axes=([0], [0]))  # (3, 4, F, C): G^T dU
    dw = np.tensordot(gd, g, axes=([1], [0]))  # (3, F, C, 3): (G^T dU) G
    return np.ascontiguousarray(dw.transpose(1, 2, 0, 3))


@numba.njit(parallel=True, cache=True)
def _pad_tiles(x, ph, pw, out):
    """``out (N, C, Hp, Wp)`` (overwritten) = ``x (N, C, H, W)`` at offset ``(ph, pw)`` in zeros
    (``out`` at least ``H + ph`` by ``W + pw``). One ``(image, channel)`` plane per task."""
    n_img, n_ch, height, width = x.shape
    hp, wp = out.shape[2], out.shape[3]
    zero = out.dtype.type(0)
    for nc in numba.prange(n_img * n_ch):
        n, c = nc // n_ch, nc % n_ch
        src, dst = x[n, c], out[n, c]
        for h in range(hp):
            row = dst[h]
            if h < ph or h >= ph + height:
                row[:] = zero
                continue
            row[:pw] = zero
            row[pw : pw + width] = src[h - ph]
            row[pw + width :] = zero


def _padded(x, hp, wp, ph, pw):
    """``x (N, C, H, W)`` in zeros, ``(N, C, hp, wp)`` at offset ``(ph, pw)``: ``x`` itself when
    that is no change and it is C-contiguous."""
    n, c, h, w = x.shape
    if (h, w, ph, pw) == (hp, wp, 0, 0) and x.flags.c_contiguous:
        return x
    out = np.empty((n, c, hp, wp), dtype=x.dtype)
    with cpu_threads_for(out.size):
        _pad_tiles(x, ph, pw, out)
    return out


def conv2d_winograd_numba(x, w, b, padding, relu=False):
    """``(out (N, F, Ho, Wo), saved)``: the reference's F(2x2, 3x3) convolution (with the ReLU
    fused into the output pass when ``relu``); ``saved`` the :class:`WinogradSaved`."""
    n, c, h, wd = x.shape
    f = w.shape[0]
    ho, wo, th, tw = _tiles(h, wd, padding)
    t = n * th * tw
    xpad = _padded(x, 2 * th + 2, 2 * tw + 2, *padding)
    v = np.empty((16, c, t), dtype=x.dtype)
    with cpu_threads_for(v.size):
        _input_transform(xpad, th, tw, v.reshape(-1))
    u = filter_transform(w)
    m = scratch_buffer("winograd.m", (16, f, t), x.dtype)  # read by the output pass only: reused
    with blas_threads_for(2 * 16 * f * c * t):
        np.matmul(u, v, out=m)  # 16 GEMMs
    out = np.empty((n, f, ho, wo), dtype=x.dtype)
    with cpu_threads_for(m.size):
        _output_transform(m.reshape(-1), np.ascontiguousarray(b), n, th, tw, relu, out)
    return out, WinogradSaved(v, u)


def conv2d_winograd_backward_numba(dout, saved, w, x_shape, padding):
    """``(dx, dw, db)`` of :func:`conv2d_winograd_numba` (``dout`` already through the ReLU's
    mask when the forward fused one)."""
    n, c, h, wd = x_shape
    f = w.shape[0]
    ph, pw = padding
    _, _, th, tw = _tiles(h, wd, padding)
    t = n * th * tw
    v, u = saved
    dy = _padded(dout, 2 * th, 2 * tw, 0, 0)
    dm = scratch_buffer("winograd.dm", (16, f, t), dout.dtype)  # consumed here: reused
    dv = scratch_buffer("winograd.dv", (16, c, t), dout.dtype)
    with cpu_threads_for(dm.size):
        _grad_output_transform(dy, th, tw, dm.reshape(-1))
    with blas_threads_for(4 * 16 * f * c * t):
        du = np.matmul(dm, v.transpose(0, 2, 1))  # (16, F, C)
        np.matmul(u.transpose(0, 2, 1), dm, out=dv)  # (16, C, T)
    dw = _filter_gradient(du, f, c, w.dtype)
    dxpad = np.empty((n, c, 2 * th + 2, 2 * tw + 2), dtype=dout.dtype)
    with cpu_threads_for(dv.size):
        _grad_input_transform(dv.reshape(-1), n, th, tw, dxpad)
    return dxpad[:, :, ph : ph + h, pw : pw + wd], dw, dout.sum(axis=(0, 2, 3))
