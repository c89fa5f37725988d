"""2-D convolution with an explicit backward: im2col + GEMM forward, GEMM + col2im backward.

``out, cache = conv2d_forward(x, w, b, stride, padding)`` unfolds every input
patch into a column (:func:`im2col`), so the convolution is one matrix product
per image; ``dx, dw, db = conv2d_backward(dout, cache)`` runs the products
backwards and folds the columns' gradient back onto the input (:func:`col2im`,
the adjoint of :func:`im2col`).

:func:`conv2d_reference` and :func:`conv2d_backward_reference` (with :func:`im2col`
and :func:`col2im`) are the NumPy reference; the kernels with the same signatures are
in ``kernels/conv.py`` and :mod:`minirccn.core.dispatch` says which runs on which backend:
the GPU one unfolds with a Numba-CUDA im2col and multiplies with cuBLAS, the CPU one
unfolds a block of output rows at a time into a reused buffer and multiplies it with
NumPy's BLAS while it is still in the cache, and unfolds again in the backward instead
of keeping the column matrix (docs/conv.md: why, and what it buys).

``conv2d_forward(..., relu=True)`` is the convolution followed by a ReLU in one layer (the
``conv2d_relu`` op; every ``conv -> relu`` of the detectors uses it): the pass that adds the
bias writes ``max(out + b, 0)``, and the backward zeroes ``dout`` where the output is not
positive before the products. No mask is kept: the ReLU's mask is ``out > 0``, read off the
output the cache holds (the output is positive exactly where the pre-activation was). The
numbers are the unfused pair's, bit for bit (a ReLU rounds nothing).

Shapes: ``N`` images, ``C`` input channels, ``F`` output channels (filters),
``H, W`` map size, ``kh, kw`` kernel size.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from minirccn.core import backend as _backend
from minirccn.core.checks import check_shape
from minirccn.core.dispatch import kernel
from minirccn.nn._common import check_grad, conv_output_size, geometry, offset_view, pair, prepare

# ----------------------------------------------------------------------------- im2col (reference)


def im2col(x, kernel_size, stride=1, padding=0):
    """Unfold every ``kh x kw`` input patch into a column (the NumPy reference).

    Args:
        x: ``(N, C, H, W)`` float32/float64 input.
        kernel_size, stride, padding: ``(kh, kw)``, ``(sh, sw)``, ``(ph, pw)`` (ints or pairs).

    Returns:
        cols: ``(N, C*kh*kw, Ho*Wo)``, same dtype, with
        ``cols[n, (c*kh + i)*kw + j, oh*Wo + ow] = xpad[n, c, oh*sh + i, ow*sw + j]``
        where ``xpad`` is ``x`` with ``ph``/``pw`` zeros around it and
        ``Ho = (H + 2ph - kh) // sh + 1`` (``Wo`` likewise).

    One strided slice per kernel offset ``(i, j)``: ``kh * kw`` vectorised copies.
    """
    xp = _backend.get_array_module(x)
    (kh, kw), (sh, sw), (ph, pw) = geometry(kernel_size, stride, padding)
    n, c, h, w = x.shape
    ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    xpad = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = xp.empty((n, c, kh, kw, ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = offset_view(xpad, i, j, ho, wo, sh, sw)
    return cols.reshape(n, c * kh * kw, ho * wo)


def col2im(cols, x_shape, kernel_size, stride=1, padding=0):
    """Fold columns back onto the input: the adjoint of :func:`im2col` (NumPy reference).

    Args:
        cols: ``(N, C*kh*kw, Ho*Wo)`` float, e.g. the gradient of the column matrix.
        x_shape: ``(N, C, H, W)`` of the input that was unfolded.

    Returns:
        dx: ``(N, C, H, W)``, same dtype: every column entry is added to the input pixel
        it was copied from (entries that came from the zero padding are dropped), in
        kernel-offset order ``(i, j) = (0, 0), (0, 1), ...``.
    """
    xp = _backend.get_array_module(cols)
    (kh, kw), (sh, sw), (ph, pw) = geometry(kernel_size, stride, padding)
    n, c, h, w = x_shape
    ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    cols = cols.reshape(n, c, kh, kw, ho, wo)
    dxpad = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            offset_view(dxpad, i, j, ho, wo, sh, sw)[...] += cols[:, :, i, j]
    return dxpad[:, :, ph : ph + h, pw : pw + w]


# ----------------------------------------------------------------------------- conv2d (reference)


def conv2d_reference(x, w, b, stride, padding):
    """The convolution's arithmetic (the NumPy reference): im2col, then one GEMM per image.

    Args:
        x: ``(N, C, H, W)``; w: ``(F, C, kh, kw)``; b: ``(F,)`` (checked by the caller).
        stride, padding: ``(sh, sw)``, ``(ph, pw)``.

    Returns:
        out: ``(N, F, Ho, Wo)`` = ``W (F, C*kh*kw) @ cols[n] (C*kh*kw, Ho*Wo) + b``;
        saved: what :func:`conv2d_backward_reference` needs, here the columns ``cols``.
    """
    xp = _backend.get_array_module(x)
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    ho = conv_output_size(h, kh, stride[0], padding[0])
    wo = conv_output_size(wd, kw, stride[1], padding[1])
    cols = im2col(x, (kh, kw), stride, padding)  # (N, CK, L)
    out = xp.matmul(w.reshape(f, c * kh * kw), cols)  # (N, F, L), one GEMM per image
    out += b[None, :, None]
    return out.reshape(n, f, ho, wo), cols


def conv2d_backward_reference(dout, saved, w, x_shape, stride, padding):
    """Gradients of :func:`conv2d_reference` (the NumPy reference).

    Args:
        dout: ``(N, F, Ho, Wo)`` (checked by the caller); saved: the forward's ``cols``;
        w: ``(F, C, kh, kw)``; x_shape: ``(N, C, H, W)``; stride, padding: pairs.

    Returns:
        dx: ``(N, C, H, W)`` = ``col2im(W^T @ dout[n])``;
        dw: ``(F, C, kh, kw)`` = ``sum_n dout[n] @ cols[n]^T``;
        db: ``(F,)`` = ``dout`` summed over ``n, oh, ow``.
    """
    cols = saved
    xp = _backend.get_array_module(cols)
    f, c, kh, kw = w.shape
    n = x_shape[0]
    dout = dout.reshape(n, f, dout.shape[2] * dout.shape[3])  # (-1 fails for N = 0)
    db = dout.sum(axis=(0, 2))
    w2 = w.reshape(f, c * kh * kw)
    dw = xp.zeros((f, c * kh * kw), dtype=w.dtype)
    for i in range(n):  # per-image GEMM: no transposed copy of cols
        dw += dout[i] @ cols[i].T
    dcols = xp.matmul(w2.T, dout)  # (N, CK, L)
    dx = col2im(dcols, x_shape, (kh, kw), stride, padding)
    return dx, dw.reshape(w.shape), db


# ----------------------------------------------------------------------------- conv2d + ReLU (reference)


def conv2d_relu_reference(x, w, b, stride, padding):
    """The convolution then a ReLU (the NumPy reference of the fused op).

    Args:
        x: ``(N, C, H, W)``; w: ``(F, C, kh, kw)``; b: ``(F,)`` (checked by the caller).
        stride, padding: ``(sh, sw)``, ``(ph, pw)``.

    Returns:
        out: ``(N, F, Ho, Wo)`` = ``max(conv2d_reference(x, w, b), 0)`` (the formula of
            :func:`minirccn.nn.layers.relu_reference`: ``where(y > 0, y, 0)``, a NaN gives 0);
        saved: :func:`conv2d_reference`'s columns. The ReLU's mask is not returned: it is
            ``out > 0`` (:func:`conv2d_relu_backward_reference` reads it off ``out``).
    """
    xp = _backend.get_array_module(x)
    y, saved = conv2d_reference(x, w, b, stride, padding)
    return xp.where(y > 0, y, xp.zeros((), dtype=y.dtype)), saved


def conv2d_relu_backward_reference(dout, saved, out, w, x_shape, stride, padding):
    """Gradients of :func:`conv2d_relu_reference` (the NumPy reference).

    Args:
        dout: ``(N, F, Ho, Wo)`` (checked by the caller); saved: the forward's ``cols``;
        out: ``(N, F, Ho, Wo)`` the forward's output (``out > 0`` is the ReLU's mask);
        w: ``(F, C, kh, kw)``; x_shape: ``(N, C, H, W)``; stride, padding: pairs.

    Returns:
        ``(dx, dw, db)`` = :func:`conv2d_backward_reference` of ``dy = where(out > 0, dout, 0)``
        (the gradient at 0 is 0, as torch's).
    """
    xp = _backend.get_array_module(out)
    dy = xp.where(out > 0, dout, xp.zeros((), dtype=dout.dtype))
    return conv2d_backward_reference(dy, saved, w, x_shape, stride, padding)


# ----------------------------------------------------------------------------- conv2d (layer)


class Conv2dCache(NamedTuple):
    """What :func:`conv2d_backward` needs: what the forward saved and the weights."""

    saved: Any  # the backend's choice: the columns (N, C*kh*kw, Ho*Wo) for numpy and cuda,
    # the zero-padded input (N, C, H+2ph, W+2pw) for numba (it unfolds again, block by block)
    w: Any  # (F, C, kh, kw) the weights
    x_shape: tuple  # (N, C, H, W)
    stride: tuple  # (sh, sw)
    padding: tuple  # (ph, pw)
    backend: str
    out: Any = None  # (N, F, Ho, Wo) the fused ReLU's output (its mask is out > 0); None: no ReLU


def conv2d_forward(x, w, b, stride=1, padding=0, *, relu=False, backend=None):
    """2-D convolution (cross-correlation, as torch's ``conv2d``) by im2col + GEMM.

    Args:
        x: ``(N, C, H, W)`` float32/float64 input.
        w: ``(F, C, kh, kw)`` weights, same dtype.
        b: ``(F,)`` bias, same dtype.
        stride, padding: an int or a pair ``(along H, along W)``; zero padding.
        relu: a ReLU on the output, fused (the ``conv2d_relu`` op: the pass that adds the bias
            writes ``max(., 0)``; the backward masks ``dout`` by ``out > 0``, read off the
            output the cache keeps, no mask stored): the same numbers as
            :func:`minirccn.nn.layers.relu_forward` after this layer. The output must then not
            be modified in place before the backward (the cache holds it).
        backend: ``"numpy"``, ``"numba"``, ``"cuda"`` or None (see :mod:`minirccn.core.backend`).

    Returns:
        out: ``(N, F, Ho, Wo)`` with ``Ho = (H + 2ph - kh) // sh + 1``:
            ``out[n, f, oh, ow] = b[f] + sum_{c,i,j} w[f,c,i,j] * xpad[n, c, oh*sh+i, ow*sw+j]``,
            computed as :func:`conv2d_reference` does (its kernels: ``kernels/conv.py``); with
            ``relu``, ``max(that, 0)`` (:func:`conv2d_relu_reference`).
        cache: :class:`Conv2dCache`.
    """
    backend, xp, (x, w, b) = prepare(backend, {"x": x, "w": w, "b": b})
    check_shape(x, "x", (None, None, None, None))
    n, c, h, wd = x.shape
    check_shape(w, "w", (None, c, None, None))
    f, _, kh, kw = w.shape
    check_shape(b, "b", (f,))
    (sh, sw), (ph, pw) = pair(stride, "stride"), pair(padding, "padding")
    if sh < 1 or sw < 1:
        raise ValueError(f"stride: expected positive ints, got {stride!r}")
    if ph < 0 or pw < 0:
        raise ValueError(f"padding: expected non-negative ints, got {padding!r}")
    if kh < 1 or kw < 1:
        raise ValueError(f"w: kernel size must be at least 1x1, got {kh}x{kw}")
    ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(wd, kw, sw, pw)
    if ho < 1 or wo < 1:
        raise ValueError(
            f"x: input {h}x{wd} is smaller than the {kh}x{kw} kernel with padding {(ph, pw)}"
        )
    if relu:
        out, saved = kernel("conv2d_relu", backend)(x, w, b, (sh, sw), (ph, pw))
        return out, Conv2dCache(saved, w, (n, c, h, wd), (sh, sw), (ph, pw), backend, out)
    out, saved = kernel("conv2d", backend)(x, w, b, (sh, sw), (ph, pw))
    return out, Conv2dCache(saved, w, (n, c, h, wd), (sh, sw), (ph, pw), backend)


def conv2d_backward(dout, cache: Conv2dCache):
    """Gradients of :func:`conv2d_forward`.

    Args:
        dout: ``(N, F, Ho, Wo)`` gradient of the output.
        cache: from the forward.

    Returns:
        dx: ``(N, C, H, W)`` = ``col2im(W^T @ dout[n])``;
        dw: ``(F, C, kh, kw)`` = ``sum_n dout[n] @ cols[n]^T``;
        db: ``(F,)`` = ``dout`` summed over ``n, oh, ow``
        (as :func:`conv2d_backward_reference` computes them); after a fused ReLU
        (``relu=True``) of ``where(out > 0, dout, 0)`` instead of ``dout``
        (:func:`conv2d_relu_backward_reference`).
    """
    saved, w, x_shape, stride, padding, backend, out = cache
    xp = _backend.get_array_module(w)
    f, c, kh, kw = w.shape
    n = x_shape[0]
    ho = conv_output_size(x_shape[2], kh, stride[0], padding[0])
    wo = conv_output_size(x_shape[3], kw, stride[1], padding[1])
    dout = check_grad(dout, "dout", (n, f, ho, wo), w.dtype, xp)
    if out is not None:  # through the fused ReLU (its mask: out > 0), inside the op
        return kernel("conv2d_relu_backward", backend)(
            dout, saved, out, w, x_shape, stride, padding
        )
    return kernel("conv2d_backward", backend)(dout, saved, w, x_shape, stride, padding)
