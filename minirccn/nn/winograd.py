"""The 3x3, stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3) (NumPy reference).

A 3x3 convolution computes each output from a 3x3 patch: 9 multiplications per output and
input channel. Winograd's algorithm computes a 2x2 block of outputs from the 4x4 input tile
that covers it with 16 multiplications instead of 36, by moving tile and filter into a
transformed domain where the convolution is an elementwise product::

    Y (2x2) = A^T [ (G g G^T) * (B^T d B) ] A          g: 3x3 filter, d: 4x4 input tile

with the constant matrices :data:`BT`, :data:`G`, :data:`AT` (Lavin and Gray, "Fast
Algorithms for Convolutional Neural Networks", CVPR 2016). Summed over input channels, the
elementwise product at each of the 16 transformed positions ``(a, b)`` is a matrix
product::

    U[a, b] = G g G^T           (16, F, C)  the filters, transformed
    V[a, b] = B^T d B           (16, C, T)  every input tile (T tiles), transformed
    M[a, b] = U[a, b] @ V[a, b] (16, F, T)  16 GEMMs with C-long sums
    y       = A^T M A           per tile and filter: the 2x2 outputs

so the convolution's GEMM work falls from ``9 * F * C * Ho * Wo`` multiply-adds (im2col)
to ``16 / 4 * F * C * Ho * Wo``: 2.25 times fewer. The transforms are additions (the
entries of ``B`` and ``A`` are 0 and +-1; ``G``'s are 0, 1 and 1/2, exact in binary).
The tiles of the input overlap by two pixels (4x4 tiles at stride 2).

The backward is the same algebra transposed (every step above is linear):

    dM = A dY A^T               (16, F, T)  each tile's 2x2 output gradient, transformed
    dU = dM @ V^T               (16, F, C)  -> dw = G^T dU G
    dV = U^T @ dM               (16, C, T)  -> each tile's B dV B^T, added onto dx
                                            (overlapping tiles add up)

Numbers: the same sums as im2col's, in another order and through the transforms' adds, so
the results agree with :func:`minirccn.nn.conv.conv2d_reference` to rounding, not bit for bit
(float32: a relative error of a few 1e-7 times the sum of the products' magnitudes; the tests
check it against the im2col reference in float32 and float64). Here the transforms are
``einsum`` over the tiles (the plain statement of the formulas); ``kernels/winograd.py`` does
each in one Numba pass, and the numba backend's ``conv2d`` uses it for 3x3, stride-1 kernels
(docs/conv.md: when it pays, measured).

Shapes: ``N`` images, ``C`` input channels, ``F`` filters, ``H, W`` the input,
``Ho = H + 2ph - 2`` and ``Wo = W + 2pw - 2`` the output, ``th = ceil(Ho / 2)`` and
``tw = ceil(Wo / 2)`` tiles along each side, ``T = N * th * tw`` tiles in all (tile ``t = (n *
th + ty) * tw + tx`` covers outputs ``2ty, 2ty+1`` x ``2tx, 2tx+1``; outputs past ``Ho``/``Wo``
are computed from zeros and dropped).
"""

from __future__ import annotations

import numpy as np

#: ``B^T`` (4, 4): the input tile's transform, ``V = B^T d B``
BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
#: ``G`` (4, 3): the filter's transform, ``U = G g G^T``
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
#: ``A^T`` (2, 4): back from the transformed domain, ``y = A^T M A``
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)


def tiles(height: int, width: int, padding) -> tuple[int, int, int, int]:
    """``(Ho, Wo, th, tw)`` of a 3x3, stride-1 convolution of an ``height x width`` input with
    ``padding = (ph, pw)``: the output size and the 2x2 output tiles that cover it."""
    ho, wo = height + 2 * padding[0] - 2, width + 2 * padding[1] - 2
    return ho, wo, (ho + 1) // 2, (wo + 1) // 2


def padded_input(x, padding):
    """``xpad (N, C, 2th + 2, 2tw + 2)``, dtype of ``x``: ``x (N, C, H, W)`` at offset
    ``(ph, pw)`` in zeros, grown at the bottom/right so that every tile's 4x4 input
    ``xpad[n, c, 2ty : 2ty + 4, 2tx : 2tx + 4]`` lies inside."""
    n, c, h, w = x.shape
    _, _, th, tw = tiles(h, w, padding)
    ph, pw = padding
    xpad = np.zeros((n, c, 2 * th + 2, 2 * tw + 2), dtype=x.dtype)
    xpad[:, :, ph : ph + h, pw : pw + w] = x
    return xpad


def tile_view(xpad):
    """``d (N, C, th, tw, 4, 4)``: a view of ``xpad`` with ``d[n, c, ty, tx] = xpad[n, c, 2ty :
    2ty + 4, 2tx : 2tx + 4]`` (overlapping windows; nothing copied)."""
    n, c, hp, wp = xpad.shape
    s = xpad.strides
    shape = (n, c, (hp - 2) // 2, (wp - 2) // 2, 4, 4)
    return np.lib.stride_tricks.as_strided(
        xpad, shape, (s[0], s[1], 2 * s[2], 2 * s[3], s[2], s[3]), writeable=False
    )


def input_transform(x, padding):
    """``V (16, C, T)``, dtype of ``x``: ``V[4a + b, c, t] = (B^T d B)[a, b]`` of tile ``t``'s
    4x4 input ``d`` of channel ``c`` (:func:`tile_view` of :func:`padded_input`)."""
    n, c = x.shape[:2]
    d = tile_view(padded_input(x, padding))
    bt = BT.astype(x.dtype)
    v = np.einsum("ai,ncyxij,bj->abcnyx", bt, d, bt)
    return v.reshape(16, c, -1)


def filter_transform(w):
    """``U (16, F, C)``, dtype of ``w``: ``U[4a + b, f, c] = (G w[f, c] G^T)[a, b]`` of the
    ``(F, C, 3, 3)`` filters."""
    f, c = w.shape[:2]
    g = G.astype(w.dtype)
    return np.einsum("ai,fcij,bj->abfc", g, w, g).reshape(16, f, c)


def output_transform(m, n, ho, wo):
    """``y (N, F, Ho, Wo)`` from ``M (16, F, T)``: each tile's ``A^T M A`` (2x2) placed at
    ``(2ty, 2tx)``; outputs past ``Ho``/``Wo`` dropped."""
    f = m.shape[1]
    th, tw = (ho + 1) // 2, (wo + 1) // 2
    at = AT.astype(m.dtype)
    y = np.einsum("pa,abfnyx,qb->nfypxq", at, m.reshape(4, 4, f, n, th, tw), at)
    return y.reshape(n, f, 2 * th, 2 * tw)[:, :, :ho, :wo]


def conv2d_winograd_reference(x, w, b, padding):
    """3x3, stride-1 convolution by F(2x2, 3x3) (the NumPy reference of ``kernels/winograd.py``).

    Args:
        x: ``(N, C, H, W)`` float32/float64; w: ``(F, C, 3, 3)``; b: ``(F,)``, same dtype.
        padding: ``(ph, pw)``, zero padding.

    Returns:
        out: ``(N, F, Ho, Wo)`` = ``b[f] + sum_{c,i,j} w[f,c,i,j] xpad[n,c,oh+i,ow+j]``, computed
        as ``A^T (U @ V) A`` per tile (module docstring);
        saved: ``V (16, C, T)``, what :func:`conv2d_winograd_backward_reference` needs.
    """
    n, _, h, wd = x.shape
    ho, wo, _, _ = tiles(h, wd, padding)
    v = input_transform(x, padding)
    m = np.matmul(filter_transform(w), v)  # (16, F, T): 16 GEMMs
    return output_transform(m, n, ho, wo) + b[None, :, None, None], v


def grad_output_transform(dout, th, tw):
    """``dM (16, F, N*th*tw)``: each tile's 2x2 output gradient ``dY``, transformed, ``A dY
    A^T`` (``dout (N, F, Ho, Wo)`` zero-padded to whole tiles first)."""
    n, f = dout.shape[:2]
    at = AT.astype(dout.dtype)
    dy = np.zeros((n, f, 2 * th, 2 * tw), dtype=dout.dtype)
    dy[:, :, : dout.shape[2], : dout.shape[3]] = dout
    dy = dy.reshape(n, f, th, 2, tw, 2)
    return np.einsum("pa,nfypxq,qb->abfnyx", at, dy, at).reshape(16, f, -1)


def grad_input_transform(dv, x_shape, padding):
    """``dx (N, C, H, W)`` from ``dV (16, C, N*th*tw)``: every tile's ``B dV B^T`` (4x4) added
    at its input window (the windows overlap), then the padding cropped."""
    n, c, h, wd = x_shape
    _, _, th, tw = tiles(h, wd, padding)
    bt = BT.astype(dv.dtype)
    dd = np.einsum("ai,abcnyx,bj->ncyxij", bt, dv.reshape(4, 4, c, n, th, tw), bt)
    dxpad = np.zeros((n, c, 2 * th + 2, 2 * tw + 2), dtype=dv.dtype)
    for i in range(4):  # one strided add per window offset
        for j in range(4):
            dxpad[:, :, i : i + 2 * th : 2, j : j + 2 * tw : 2] += dd[..., i, j]
    ph, pw = padding
    return dxpad[:, :, ph : ph + h, pw : pw + wd]


def filter_gradient(du, f, c):
    """``dw (F, C, 3, 3)`` = ``G^T dU G`` of ``du (16, F, C)``."""
    g = G.astype(du.dtype)
    return np.einsum("ai,abfc,bj->fcij", g, du.reshape(4, 4, f, c), g)


def conv2d_winograd_backward_reference(dout, saved, w, x_shape, padding):
    """Gradients of :func:`conv2d_winograd_reference` (NumPy reference).

    Args:
        dout: ``(N, F, Ho, Wo)``; saved: the forward's ``V (16, C, T)``; w: ``(F, C, 3, 3)``;
        x_shape: ``(N, C, H, W)``; padding: ``(ph, pw)``.

    Returns:
        dx: ``(N, C, H, W)``: every tile's ``B (U^T @ dM) B^T`` (4x4) added at its input window,
            then the padding cropped, with ``dM = A dY A^T`` of the tile's 2x2 ``dout`` (zeros
            past ``Ho``/``Wo``);
        dw: ``(F, C, 3, 3)`` = ``G^T (dM @ V^T) G`` per filter and channel;
        db: ``(F,)`` = ``dout`` summed over ``n, oh, ow``.
    """
    n, c, h, wd = x_shape
    f = w.shape[0]
    _, _, th, tw = tiles(h, wd, padding)
    dm = grad_output_transform(dout, th, tw)  # (16, F, T)
    dw = filter_gradient(np.matmul(dm, saved.transpose(0, 2, 1)), f, c)  # dU = dM @ V^T
    dv = np.matmul(filter_transform(w).transpose(0, 2, 1), dm)  # (16, C, T)
    return grad_input_transform(dv, x_shape, padding), dw, dout.sum(axis=(0, 2, 3))


# ----------------------------------------------------------------------------- pyramid levels


def _level_slices(sizes, padding):
    """Per level: ``(pixel slice of the packed input, tiles per image, (Ho, Wo), output pixel
    slice)``."""
    out, o_in, o_out = [], 0, 0
    for h, wd in sizes:
        ho, wo, th, tw = tiles(h, wd, padding)
        out.append((slice(o_in, o_in + h * wd), th * tw, (ho, wo), slice(o_out, o_out + ho * wo)))
        o_in += h * wd
        o_out += ho * wo
    return out


def conv2d_winograd_levels_reference(x, sizes, w, b, padding, relu):
    """The F(2x2, 3x3) convolution of every level of a pyramid at once (NumPy reference of
    ``kernels/winograd.py``'s pyramid path; the packing is :mod:`minirccn.nn.conv_levels`'s).

    Args:
        x: ``(N, C, P)`` packed levels; sizes: ``((H_l, W_l), ...)``; w: ``(F, C, 3, 3)``;
        b: ``(F,)``; padding: ``(ph, pw)``; relu: ``max(., 0)`` on the output.

    Returns:
        out: ``(N, F, Po)``: each level's :func:`conv2d_winograd_reference` output, packed, the
            levels' tiles side by side in ONE set of 16 GEMMs: ``V = [V_0 | V_1 | ...]``
            along the tile axis (level ``l``'s ``N * th_l * tw_l`` tiles after the levels
            before it), ``M = U @ V``, each level's slice of ``M`` transformed back;
        saved: ``(V (16, C, T), out)``: with ``relu`` the output (its mask is ``out > 0``),
            else None.
    """
    n, c, _ = x.shape
    f = w.shape[0]
    levels = _level_slices(sizes, padding)
    v = np.concatenate(
        [
            input_transform(x[:, :, sl].reshape(n, c, *hw), padding)
            for (sl, _, _, _), hw in zip(levels, sizes)
        ],
        axis=2,
    )
    m = np.matmul(filter_transform(w), v)  # (16, F, T): 16 GEMMs for every level
    outs, t0 = [], 0
    for _, t_img, (ho, wo), _ in levels:
        y = output_transform(m[:, :, t0 : t0 + n * t_img], n, ho, wo)
        outs.append(y.reshape(n, f, ho * wo))
        t0 += n * t_img
    out = np.concatenate(outs, axis=2) + b[None, :, None]
    if not relu:
        return out, (v, None)
    out = np.where(out > 0, out, np.zeros((), dtype=out.dtype))
    return out, (v, out)


def conv2d_winograd_levels_backward_reference(dout, saved, w, sizes, x_shape, padding):
    """Gradients of :func:`conv2d_winograd_levels_reference` (NumPy reference).

    Args:
        dout: ``(N, F, Po)``; saved: the forward's ``(V, out)``; w: ``(F, C, 3, 3)``;
        sizes: the input levels; x_shape: ``(N, C, P)``; padding: ``(ph, pw)``.

    Returns:
        dx: ``(N, C, P)``; dw: ``(F, C, 3, 3)`` (one ``dU = dM @ V^T`` over every level's
        tiles); db: ``(F,)``; ``dout`` first zeroed where the ReLU's output was not positive.
    """
    v, out = saved
    if out is not None:
        dout = np.where(out > 0, dout, np.zeros((), dtype=dout.dtype))
    n, c, _ = x_shape
    f = w.shape[0]
    levels = _level_slices(sizes, padding)
    dm = np.concatenate(
        [
            grad_output_transform(dout[:, :, so].reshape(n, f, ho, wo), (ho + 1) // 2, (wo + 1) // 2)
            for _, _, (ho, wo), so in levels
        ],
        axis=2,
    )
    dw = filter_gradient(np.matmul(dm, v.transpose(0, 2, 1)), f, c)
    dv = np.matmul(filter_transform(w).transpose(0, 2, 1), dm)
    dx, t0 = np.empty(tuple(x_shape), dtype=dout.dtype), 0
    for (sl, t_img, _, _), (h, wd) in zip(levels, sizes):
        d = grad_input_transform(dv[:, :, t0 : t0 + n * t_img], (n, c, h, wd), padding)
        dx[:, :, sl] = d.reshape(n, c, h * wd)
        t0 += n * t_img
    return dx, dw, dout.sum(axis=(0, 2))
