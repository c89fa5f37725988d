"""Layers with an explicit backward pass: no autograd, every gradient written by hand.

A layer is a pair of functions::

    out, cache = layer_forward(x, params..., backend=None)
    dx, dparams... = layer_backward(dout, cache)

``cache`` is a small :class:`~typing.NamedTuple` that names exactly what the
backward needs (the column matrix, the ReLU mask, the max-pool argmax, ...) and
the backend the forward ran on; ``dout`` is the gradient of the loss with
respect to ``out`` and has its shape and dtype.

The layer code is written against the array module of its inputs (NumPy, or
CuPy on a GPU), so one function serves every backend. Only the two hot spots
have kernels, in :mod:`minirccn.kernels`:

* conv2d: :func:`im2col` / :func:`col2im` below are the NumPy reference;
  ``kernels/conv.py`` has the Numba (CPU) and Numba-CUDA versions. The GEMMs
  are NumPy's BLAS (or CuPy's cuBLAS).
* max pooling: :func:`max_pool2d_reference` / :func:`max_pool2d_backward_reference`
  below; ``kernels/pool.py`` has the Numba and Numba-CUDA versions.

Shapes use the project's letters: ``N`` images, ``C`` input channels, ``F``
output channels (filters), ``H, W`` map size, ``kh, kw`` kernel size.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minirccn import backend as _backend
from minirccn._checks import check_float, check_shape

# ----------------------------------------------------------------------------- helpers


def _pair(value, name: str) -> tuple[int, int]:
    """``value`` (an int or a pair of ints) as ``(along H, along W)``."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name}: expected an int or a pair of ints, got {value!r}")
        pair = tuple(value)
    else:
        pair = (value, value)
    out = []
    for v in pair:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name}: expected an int or a pair of ints, got {value!r}")
        out.append(int(v))
    return out[0], out[1]


def _prepare(backend, name_arrays: dict):
    """Resolve ``backend``, validate float dtypes and move arrays to the backend's module.

    Returns ``(backend, xp, [arrays...])``; every array must have the dtype of the first.
    """
    arrays = [check_float(a, n) for n, a in name_arrays.items()]
    backend = _backend.resolve(backend, *arrays)
    xp = _backend.array_module(backend)
    if xp is np:
        arrays = [_backend.to_numpy(a) for a in arrays]
    else:
        arrays = [xp.asarray(a) for a in arrays]
    names = list(name_arrays)
    for n, a in zip(names[1:], arrays[1:]):
        if a.dtype != arrays[0].dtype:
            raise TypeError(f"{n}: dtype {a.dtype} differs from {names[0]}'s {arrays[0].dtype}")
    return backend, xp, arrays


def _check_grad(dout, name: str, shape, dtype, xp):
    """``dout`` as an array of ``xp`` with the forward output's ``shape`` and ``dtype``."""
    dout = check_float(dout, name)
    dout = _backend.to_numpy(dout) if xp is np else xp.asarray(dout)
    check_shape(dout, name, tuple(shape))
    return dout.astype(dtype, copy=False)


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a conv / pool along one axis: ``floor((size + 2p - k) / s) + 1``."""
    return (size + 2 * padding - kernel) // stride + 1


def _geometry(kernel_size, stride, padding):
    """``((kh, kw), (sh, sw), (ph, pw))`` from ints or pairs."""
    return _pair(kernel_size, "kernel_size"), _pair(stride, "stride"), _pair(padding, "padding")


def _offset_view(a, i, j, ho, wo, sh, sw):
    """``a[:, :, i + oh*sh, j + ow*sw]`` for all ``oh < ho``, ``ow < wo``: a strided view."""
    return a[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]


# ----------------------------------------------------------------------------- im2col


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
    (kh, kw), (sh, sw), (ph, pw) = _geometry(kernel_size, stride, padding)
    n, c, h, w = x.shape
    ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    xpad = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = xp.empty((n, c, kh, kw, ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = _offset_view(xpad, i, j, ho, wo, sh, sw)
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
    (kh, kw), (sh, sw), (ph, pw) = _geometry(kernel_size, stride, padding)
    n, c, h, w = x_shape
    ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    cols = cols.reshape(n, c, kh, kw, ho, wo)
    dxpad = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            _offset_view(dxpad, i, j, ho, wo, sh, sw)[...] += cols[:, :, i, j]
    return dxpad[:, :, ph : ph + h, pw : pw + w]


def _im2col(backend, x, kernel_size, stride, padding):
    """:func:`im2col` on ``backend`` (reference, Numba or Numba-CUDA kernel)."""
    if backend == "numpy":
        return im2col(x, kernel_size, stride, padding)
    from minirccn.kernels import conv as kconv

    xp = _backend.get_array_module(x)
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    n, c, h, w = x.shape
    ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    cols = xp.empty((n, c * kh * kw, ho * wo), dtype=x.dtype)
    fill = kconv.im2col_cpu if backend == "numba" else kconv.im2col_gpu
    return fill(xp.ascontiguousarray(x), kh, kw, sh, sw, ph, pw, cols)


def _col2im(backend, cols, x_shape, kernel_size, stride, padding):
    """:func:`col2im` on ``backend`` (reference, Numba or Numba-CUDA kernel)."""
    if backend == "numpy":
        return col2im(cols, x_shape, kernel_size, stride, padding)
    from minirccn.kernels import conv as kconv

    xp = _backend.get_array_module(cols)
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    dx = xp.empty(x_shape, dtype=cols.dtype)
    fold = kconv.col2im_cpu if backend == "numba" else kconv.col2im_gpu
    return fold(xp.ascontiguousarray(cols), kh, kw, sh, sw, ph, pw, dx)


# ----------------------------------------------------------------------------- conv2d


class Conv2dCache(NamedTuple):
    """What :func:`conv2d_backward` needs: the columns of the input and the weights."""

    cols: Any  # (N, C*kh*kw, Ho*Wo) the unfolded input
    w: Any  # (F, C, kh, kw) the weights
    x_shape: tuple  # (N, C, H, W)
    stride: tuple  # (sh, sw)
    padding: tuple  # (ph, pw)
    backend: str


def conv2d_forward(x, w, b, stride=1, padding=0, *, backend=None):
    """2-D convolution (cross-correlation, as torch's ``conv2d``) by im2col + GEMM.

    Args:
        x: ``(N, C, H, W)`` float32/float64 input.
        w: ``(F, C, kh, kw)`` weights, same dtype.
        b: ``(F,)`` bias, same dtype.
        stride, padding: an int or a pair ``(along H, along W)``; zero padding.
        backend: ``"numpy"``, ``"numba"``, ``"cuda"`` or None (see :mod:`minirccn.backend`).

    Returns:
        out: ``(N, F, Ho, Wo)`` with ``Ho = (H + 2ph - kh) // sh + 1``:
            ``out[n, f, oh, ow] = b[f] + sum_{c,i,j} w[f,c,i,j] * xpad[n, c, oh*sh+i, ow*sw+j]``,
            computed per image as ``W (F, C*kh*kw) @ cols[n] (C*kh*kw, Ho*Wo)``.
        cache: :class:`Conv2dCache`.
    """
    backend, xp, (x, w, b) = _prepare(backend, {"x": x, "w": w, "b": b})
    check_shape(x, "x", (None, None, None, None))
    n, c, h, wd = x.shape
    check_shape(w, "w", (None, c, None, None))
    f, _, kh, kw = w.shape
    check_shape(b, "b", (f,))
    (sh, sw), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding")
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
    cols = _im2col(backend, x, (kh, kw), (sh, sw), (ph, pw))  # (N, CK, L)
    out = xp.matmul(w.reshape(f, c * kh * kw), cols)  # (N, F, L), one GEMM per image
    out += b[None, :, None]
    cache = Conv2dCache(cols, w, (n, c, h, wd), (sh, sw), (ph, pw), backend)
    return out.reshape(n, f, ho, wo), cache


def conv2d_backward(dout, cache: Conv2dCache):
    """Gradients of :func:`conv2d_forward`.

    Args:
        dout: ``(N, F, Ho, Wo)`` gradient of the output.
        cache: from the forward.

    Returns:
        dx: ``(N, C, H, W)`` = ``col2im(W^T @ dout[n])``;
        dw: ``(F, C, kh, kw)`` = ``sum_n dout[n] @ cols[n]^T``;
        db: ``(F,)`` = ``dout`` summed over ``n, oh, ow``.
    """
    cols, w, x_shape, stride, padding, backend = cache
    xp = _backend.get_array_module(cols)
    f, c, kh, kw = w.shape
    n = x_shape[0]
    ho = conv_output_size(x_shape[2], kh, stride[0], padding[0])
    wo = conv_output_size(x_shape[3], kw, stride[1], padding[1])
    dout = _check_grad(dout, "dout", (n, f, ho, wo), w.dtype, xp).reshape(n, f, ho * wo)
    db = dout.sum(axis=(0, 2))
    w2 = w.reshape(f, c * kh * kw)
    dw = xp.zeros((f, c * kh * kw), dtype=w.dtype)
    for i in range(n):  # per-image GEMM: no transposed copy of cols
        dw += dout[i] @ cols[i].T
    dcols = xp.matmul(w2.T, dout)  # (N, CK, L)
    dx = _col2im(backend, dcols, x_shape, (kh, kw), stride, padding)
    return dx, dw.reshape(w.shape), db


# ----------------------------------------------------------------------------- relu


class ReluCache(NamedTuple):
    """What :func:`relu_backward` needs: where the input was positive."""

    mask: Any  # (...) bool, x > 0
    backend: str


def relu_forward(x, *, backend=None):
    """``out = max(x, 0)`` elementwise; ``x`` any shape, float32/float64."""
    backend, xp, (x,) = _prepare(backend, {"x": x})
    mask = x > 0
    return xp.where(mask, x, xp.zeros((), dtype=x.dtype)), ReluCache(mask, backend)


def relu_backward(dout, cache: ReluCache):
    """``dx = dout * (x > 0)`` (the gradient at 0 is taken as 0, as torch does)."""
    xp = _backend.get_array_module(cache.mask)
    dout = check_float(dout, "dout")
    dout = _backend.to_numpy(dout) if xp is np else xp.asarray(dout)
    check_shape(dout, "dout", cache.mask.shape)
    return xp.where(cache.mask, dout, xp.zeros((), dtype=dout.dtype))


# ----------------------------------------------------------------------------- max pool


class MaxPool2dCache(NamedTuple):
    """What :func:`max_pool2d_backward` needs: where each window's maximum came from."""

    argmax: Any  # (N, C, Ho, Wo) int64 flat index h * W + w into the H x W plane
    x_shape: tuple  # (N, C, H, W)
    kernel_size: tuple  # (kh, kw)
    stride: tuple  # (sh, sw)
    backend: str


def max_pool2d_reference(x, kernel_size, stride):
    """Max pooling, NumPy reference: no padding, floor mode, first maximum wins.

    Args:
        x: ``(N, C, H, W)`` float32/float64.
        kernel_size, stride: ``(kh, kw)``, ``(sh, sw)``.

    Returns:
        out: ``(N, C, Ho, Wo)``, ``Ho = (H - kh) // sh + 1``:
            ``out[n, c, oh, ow] = max_{i,j} x[n, c, oh*sh + i, ow*sw + j]``.
        argmax: ``(N, C, Ho, Wo)`` int64, the flat index ``h * W + w`` of the *first*
            maximum in row-major window order (a NaN counts as the maximum).
    """
    xp = _backend.get_array_module(x)
    (kh, kw), (sh, sw) = kernel_size, stride
    n, c, h, w = x.shape
    ho, wo = conv_output_size(h, kh, sh, 0), conv_output_size(w, kw, sw, 0)
    # windows[k] = the k-th element (k = i*kw + j) of every window: (kh*kw, N, C, Ho, Wo)
    windows = xp.stack(
        [_offset_view(x, i, j, ho, wo, sh, sw) for i in range(kh) for j in range(kw)]
    )
    k = windows.argmax(axis=0)  # first occurrence of the maximum (NaN is the maximum)
    out = xp.take_along_axis(windows, k[None], axis=0)[0]
    i, j = k // kw, k % kw
    oh = xp.arange(ho).reshape(ho, 1)
    ow = xp.arange(wo).reshape(1, wo)
    argmax = (oh * sh + i) * w + (ow * sw + j)
    return out, argmax.astype(xp.int64)


def max_pool2d_backward_reference(dout, argmax, x_shape):
    """Scatter-add ``dout (N, C, Ho, Wo)`` to the argmax pixels: ``dx (N, C, H, W)``.

    Overlapping windows (stride < kernel) that chose the same pixel add up.
    """
    xp = _backend.get_array_module(dout)
    n, c, h, w = x_shape
    per_plane = argmax.shape[2] * argmax.shape[3]
    dx = xp.zeros((n * c, h * w), dtype=dout.dtype)
    plane = xp.arange(n * c).reshape(n * c, 1)
    xp.add.at(dx, (plane, argmax.reshape(n * c, per_plane)), dout.reshape(n * c, per_plane))
    return dx.reshape(n, c, h, w)


def max_pool2d_forward(x, kernel_size, stride=None, *, backend=None):
    """2-D max pooling with torch's semantics (no padding, floor mode, dilation 1).

    Args:
        x: ``(N, C, H, W)`` float32/float64.
        kernel_size: an int or ``(kh, kw)``.
        stride: an int, a pair, or None for ``kernel_size`` (torch's default).
        backend: ``"numpy"``, ``"numba"``, ``"cuda"`` or None.

    Returns:
        out: ``(N, C, Ho, Wo)``, ``Ho = (H - kh) // sh + 1``; on ties the first maximum
            in row-major window order wins.
        cache: :class:`MaxPool2dCache` (holds the ``argmax``).
    """
    backend, xp, (x,) = _prepare(backend, {"x": x})
    check_shape(x, "x", (None, None, None, None))
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = (kh, kw) if stride is None else _pair(stride, "stride")
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel_size: expected positive ints, got {kernel_size!r}")
    if sh < 1 or sw < 1:
        raise ValueError(f"stride: expected positive ints, got {stride!r}")
    n, c, h, w = x.shape
    ho, wo = conv_output_size(h, kh, sh, 0), conv_output_size(w, kw, sw, 0)
    if ho < 1 or wo < 1:
        raise ValueError(f"x: input {h}x{w} is smaller than the {kh}x{kw} pooling window")
    if backend == "numpy":
        out, argmax = max_pool2d_reference(x, (kh, kw), (sh, sw))
    else:
        from minirccn.kernels import pool as kpool

        out = xp.empty((n, c, ho, wo), dtype=x.dtype)
        argmax = xp.empty((n, c, ho, wo), dtype=xp.int64)
        run = kpool.max_pool_cpu if backend == "numba" else kpool.max_pool_gpu
        run(xp.ascontiguousarray(x), kh, kw, sh, sw, out, argmax)
    return out, MaxPool2dCache(argmax, (n, c, h, w), (kh, kw), (sh, sw), backend)


def max_pool2d_backward(dout, cache: MaxPool2dCache):
    """Gradient of :func:`max_pool2d_forward`: ``dout`` routed to each window's argmax.

    Args:
        dout: ``(N, C, Ho, Wo)`` float32/float64.

    Returns:
        dx: ``(N, C, H, W)``, same dtype as ``dout``.
    """
    argmax, x_shape, (kh, kw), (sh, sw), backend = cache
    xp = _backend.get_array_module(argmax)
    dout = check_float(dout, "dout")
    dout = _backend.to_numpy(dout) if xp is np else xp.asarray(dout)
    check_shape(dout, "dout", argmax.shape)
    if backend == "numpy":
        return max_pool2d_backward_reference(dout, argmax, x_shape)
    from minirccn.kernels import pool as kpool

    dx = xp.empty(x_shape, dtype=dout.dtype)
    dout = xp.ascontiguousarray(dout)
    if backend == "numba":
        return kpool.max_pool_backward_cpu(dout, argmax, dx)
    return kpool.max_pool_backward_gpu(dout, argmax, kh, kw, sh, sw, dx)


# ----------------------------------------------------------------------------- linear


class LinearCache(NamedTuple):
    """What :func:`linear_backward` needs: the input and the weights."""

    x: Any  # (N, D)
    w: Any  # (D, M)
    backend: str


def linear_forward(x, w, b, *, backend=None):
    """Fully connected layer ``out = x @ w + b``.

    Args:
        x: ``(N, D)`` float32/float64.
        w: ``(D, M)`` (note: ``(in, out)``, the transpose of torch's ``Linear.weight``).
        b: ``(M,)``.

    Returns:
        out: ``(N, M)``; cache: :class:`LinearCache`.
    """
    backend, xp, (x, w, b) = _prepare(backend, {"x": x, "w": w, "b": b})
    check_shape(x, "x", (None, None))
    check_shape(w, "w", (x.shape[1], None))
    check_shape(b, "b", (w.shape[1],))
    return x @ w + b, LinearCache(x, w, backend)


def linear_backward(dout, cache: LinearCache):
    """Gradients of :func:`linear_forward`.

    Returns:
        dx ``(N, D)`` = ``dout @ w^T``; dw ``(D, M)`` = ``x^T @ dout``; db ``(M,)`` = ``sum_n dout``.
    """
    x, w, _backend_name = cache
    xp = _backend.get_array_module(x)
    dout = _check_grad(dout, "dout", (x.shape[0], w.shape[1]), x.dtype, xp)
    return dout @ w.T, x.T @ dout, dout.sum(axis=0)


# ----------------------------------------------------------------------------- dropout


class DropoutCache(NamedTuple):
    """What :func:`dropout_backward` needs: the scaled keep mask (None when inactive)."""

    mask: Any  # same shape as x: 0 for a dropped unit, 1 / (1 - p) for a kept one; or None
    backend: str


def dropout_forward(x, p, rng, train=True, *, backend=None):
    """Inverted dropout: zero each unit with probability ``p``, scale the rest by ``1/(1-p)``.

    Args:
        x: any shape, float32/float64.
        p: drop probability in ``[0, 1]``.
        rng: a ``numpy.random.Generator``; the mask is ``rng.random(x.shape) >= p``
            (drawn on the host, so every backend gets the same mask from the same seed).
        train: if False (or ``p == 0``) the layer is the identity.

    Returns:
        out: ``x * mask``; cache: :class:`DropoutCache`.
    """
    backend, xp, (x,) = _prepare(backend, {"x": x})
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise TypeError(f"p: expected a number in [0, 1], got {p!r}")
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"p: expected a probability in [0, 1], got {p!r}")
    if not train or p == 0:
        return x, DropoutCache(None, backend)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    keep = rng.random(x.shape) >= p
    scale = 0.0 if p == 1 else 1.0 / (1.0 - p)
    mask = xp.asarray(keep.astype(x.dtype) * x.dtype.type(scale))
    return x * mask, DropoutCache(mask, backend)


def dropout_backward(dout, cache: DropoutCache):
    """``dx = dout * mask`` (the identity when the forward was inactive)."""
    dout = check_float(dout, "dout")
    if cache.mask is None:
        return dout
    xp = _backend.get_array_module(cache.mask)
    dout = _backend.to_numpy(dout) if xp is np else xp.asarray(dout)
    check_shape(dout, "dout", cache.mask.shape)
    return dout * cache.mask


# ----------------------------------------------------------------------------- batch norm


class BatchNorm2dCache(NamedTuple):
    """What :func:`batchnorm2d_backward` needs."""

    xhat: Any  # (N, C, H, W) the normalised input (x - mean) / sqrt(var + eps)
    inv_std: Any  # (C,) 1 / sqrt(var + eps) (batch var in train mode, running var in eval)
    gamma: Any  # (C,)
    train: bool  # batch statistics (True) or running statistics (False)
    backend: str


def batchnorm2d_forward(
    x, gamma, beta, running_mean, running_var, train=True, momentum=0.1, eps=1e-5, *, backend=None
):
    """Batch normalisation over ``(N, H, W)`` per channel (torch's ``BatchNorm2d``).

    Args:
        x: ``(N, C, H, W)`` float32/float64.
        gamma, beta: ``(C,)`` scale and shift.
        running_mean, running_var: ``(C,)``, updated **in place** when ``train``:
            ``r = (1 - momentum) * r + momentum * batch_stat``, with the *unbiased*
            batch variance (``m / (m - 1)`` times the biased one, ``m = N*H*W``).
        train: normalise with the batch statistics (True) or the running ones (False).

    Returns:
        out: ``gamma * (x - mean) / sqrt(var + eps) + beta`` (biased ``var`` in train mode);
        cache: :class:`BatchNorm2dCache`.
    """
    backend, xp, (x, gamma, beta) = _prepare(backend, {"x": x, "gamma": gamma, "beta": beta})
    check_shape(x, "x", (None, None, None, None))
    c = x.shape[1]
    check_shape(gamma, "gamma", (c,))
    check_shape(beta, "beta", (c,))
    for name, r in (("running_mean", running_mean), ("running_var", running_var)):
        check_shape(check_float(r, name), name, (c,))
        if _backend.get_array_module(r) is not xp:
            raise TypeError(f"{name}: must live on the same device as x (it is updated in place)")
    if train:
        m = x.shape[0] * x.shape[2] * x.shape[3]
        if m < 2:
            raise ValueError(
                f"x: batch norm in train mode needs more than 1 value per channel, got {tuple(x.shape)}"
            )
        mean = x.mean(axis=(0, 2, 3))
        var = ((x - mean[None, :, None, None]) ** 2).mean(axis=(0, 2, 3))
        running_mean *= 1 - momentum
        running_mean += momentum * mean.astype(running_mean.dtype)
        running_var *= 1 - momentum
        running_var += momentum * (var * (m / (m - 1))).astype(running_var.dtype)
    else:
        mean, var = running_mean.astype(x.dtype), running_var.astype(x.dtype)
    inv_std = 1 / xp.sqrt(var + eps)
    xhat = (x - mean[None, :, None, None]) * inv_std[None, :, None, None]
    out = gamma[None, :, None, None] * xhat + beta[None, :, None, None]
    return out, BatchNorm2dCache(xhat, inv_std, gamma, bool(train), backend)


def batchnorm2d_backward(dout, cache: BatchNorm2dCache):
    """Gradients of :func:`batchnorm2d_forward`.

    With ``m = N*H*W`` and sums over ``(n, h, w)`` per channel:

    * ``dbeta = sum(dout)``, ``dgamma = sum(dout * xhat)``;
    * train mode: ``dx = gamma * inv_std / m * (m * dout - dbeta - xhat * dgamma)``
      (the batch mean and variance depend on ``x``);
    * eval mode: ``dx = gamma * inv_std * dout`` (the statistics are constants).

    Returns:
        dx ``(N, C, H, W)``, dgamma ``(C,)``, dbeta ``(C,)``.
    """
    xhat, inv_std, gamma, train, _backend_name = cache
    xp = _backend.get_array_module(xhat)
    dout = _check_grad(dout, "dout", xhat.shape, xhat.dtype, xp)
    dbeta = dout.sum(axis=(0, 2, 3))
    dgamma = (dout * xhat).sum(axis=(0, 2, 3))
    scale = (gamma * inv_std)[None, :, None, None]
    if not train:
        return scale * dout, dgamma, dbeta
    m = xhat.shape[0] * xhat.shape[2] * xhat.shape[3]
    dx = scale / m * (m * dout - dbeta[None, :, None, None] - xhat * dgamma[None, :, None, None])
    return dx, dgamma, dbeta
