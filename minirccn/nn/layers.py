"""Layers with an explicit backward pass: no autograd, every gradient written by hand.

A layer is a pair of functions::

    out, cache = layer_forward(x, params..., backend=None)
    dx, dparams... = layer_backward(dout, cache)

``cache`` is a small :class:`~typing.NamedTuple` that names exactly what the
backward needs (the column matrix, the ReLU mask, the max-pool argmax, ...) and
the backend the forward ran on; ``dout`` is the gradient of the loss with
respect to ``out`` and has its shape and dtype.

The layer code is written against the array module of its inputs (NumPy, or
CuPy on a GPU), so one function serves every backend. The two layers with
kernels have their own modules, mirroring ``kernels/conv.py`` and
``kernels/pool.py``; this module re-exports them so that every layer is
``minirccn.nn.layers.<name>`` (the contract of DESIGN.md):

* conv2d: :mod:`minirccn.nn.conv` (im2col + GEMM, col2im backward; ``relu=True`` fuses the
  ReLU after it);
* max pooling: :mod:`minirccn.nn.pool`;
* relu, linear, dropout, batch norm: below.

Shapes use the project's letters: ``N`` images, ``C`` input channels, ``F``
output channels (filters), ``H, W`` map size, ``kh, kw`` kernel size.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minirccn.core import backend as _backend
from minirccn.core.checks import check_float, check_shape
from minirccn.core.dispatch import kernel
from minirccn.nn._common import check_grad, conv_output_size, prepare
from minirccn.nn.conv import (
    Conv2dCache,
    col2im,
    conv2d_backward,
    conv2d_backward_reference,
    conv2d_forward,
    conv2d_reference,
    conv2d_relu_backward_reference,
    conv2d_relu_reference,
    im2col,
)
from minirccn.nn.pool import (
    MaxPool2dCache,
    max_pool2d_backward,
    max_pool2d_backward_reference,
    max_pool2d_forward,
    max_pool2d_reference,
)

__all__ = [
    "conv_output_size",
    "im2col",
    "col2im",
    "Conv2dCache",
    "conv2d_reference",
    "conv2d_backward_reference",
    "conv2d_forward",
    "conv2d_backward",
    "conv2d_relu_reference",
    "conv2d_relu_backward_reference",
    "ReluCache",
    "relu_reference",
    "relu_backward_reference",
    "relu_forward",
    "relu_backward",
    "MaxPool2dCache",
    "max_pool2d_reference",
    "max_pool2d_backward_reference",
    "max_pool2d_forward",
    "max_pool2d_backward",
    "LinearCache",
    "linear_reference",
    "linear_backward_reference",
    "linear_forward",
    "linear_backward",
    "DropoutCache",
    "dropout_forward",
    "dropout_backward",
    "BatchNorm2dCache",
    "batchnorm2d_reference",
    "batchnorm2d_backward_reference",
    "batchnorm2d_forward",
    "batchnorm2d_backward",
    "batchnorm2d_relu_reference",
    "batchnorm2d_relu_backward_reference",
]

# ----------------------------------------------------------------------------- relu


class ReluCache(NamedTuple):
    """What :func:`relu_backward` needs: where the input was positive."""

    mask: Any  # (...) bool, x > 0
    backend: str


def relu_reference(x):
    """``(out, mask)``: ``max(x, 0)`` and ``x > 0`` (the NumPy reference; a NaN gives 0)."""
    xp = _backend.get_array_module(x)
    mask = x > 0
    return xp.where(mask, x, xp.zeros((), dtype=x.dtype)), mask


def relu_backward_reference(dout, mask):
    """``dx = dout`` where ``mask`` else 0 (the NumPy reference)."""
    xp = _backend.get_array_module(mask)
    return xp.where(mask, dout, xp.zeros((), dtype=dout.dtype))


def relu_forward(x, *, backend=None):
    """``out = max(x, 0)`` elementwise; ``x`` any shape, float32/float64."""
    backend, xp, (x,) = prepare(backend, {"x": x})
    out, mask = kernel("relu", backend)(x)
    return out, ReluCache(mask, backend)


def relu_backward(dout, cache: ReluCache):
    """``dx = dout * (x > 0)`` (the gradient at 0 is taken as 0, as torch does)."""
    xp = _backend.get_array_module(cache.mask)
    dout = check_float(dout, "dout")
    dout = _backend.to_numpy(dout) if xp is np else xp.asarray(dout)
    check_shape(dout, "dout", cache.mask.shape)
    return kernel("relu_backward", cache.backend)(dout, cache.mask)


# ----------------------------------------------------------------------------- linear


class LinearCache(NamedTuple):
    """What :func:`linear_backward` needs: the input and the weights."""

    x: Any  # (N, D)
    w: Any  # (D, M)
    backend: str


def linear_reference(x, w, b):
    """``x @ w + b`` (the NumPy reference: one GEMM)."""
    return x @ w + b


def linear_backward_reference(dout, x, w):
    """``(dout @ w^T, x^T @ dout, sum_n dout)`` (the NumPy reference: two GEMMs)."""
    return dout @ w.T, x.T @ dout, dout.sum(axis=0)


def linear_forward(x, w, b, *, backend=None):
    """Fully connected layer ``out = x @ w + b``.

    Args:
        x: ``(N, D)`` float32/float64.
        w: ``(D, M)`` (note: ``(in, out)``, the transpose of torch's ``Linear.weight``).
        b: ``(M,)``.

    Returns:
        out: ``(N, M)``; cache: :class:`LinearCache`.
    """
    backend, xp, (x, w, b) = prepare(backend, {"x": x, "w": w, "b": b})
    check_shape(x, "x", (None, None))
    check_shape(w, "w", (x.shape[1], None))
    check_shape(b, "b", (w.shape[1],))
    return kernel("linear", backend)(x, w, b), LinearCache(x, w, backend)


def linear_backward(dout, cache: LinearCache):
    """Gradients of :func:`linear_forward`.

    Returns:
        dx ``(N, D)`` = ``dout @ w^T``; dw ``(D, M)`` = ``x^T @ dout``; db ``(M,)`` = ``sum_n dout``.
    """
    x, w, backend = cache
    xp = _backend.get_array_module(x)
    dout = check_grad(dout, "dout", (x.shape[0], w.shape[1]), x.dtype, xp)
    return kernel("linear_backward", backend)(dout, x, w)


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
    backend, xp, (x,) = prepare(backend, {"x": x})
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
    mask: Any = None  # (N, C, H, W) bool: the fused ReLU's ``out > 0`` (None: no ReLU)


def batchnorm2d_reference(x, gamma, beta, mean, var, eps):
    """Batch norm's arithmetic (the NumPy reference).

    Args:
        x: ``(N, C, H, W)``; gamma, beta: ``(C,)``.
        mean, var: ``(C,)`` the statistics to normalise with (eval mode), or None to use
            the batch's (train mode: per channel over ``(N, H, W)``, the biased variance).
        eps: added to the variance.

    Returns:
        out ``gamma * xhat + beta``, xhat ``(x - mean) * inv_std``, inv_std
        ``1 / sqrt(var + eps)`` ``(C,)``, and the ``mean``, ``var`` used ``(C,)``.
    """
    xp = _backend.get_array_module(x)
    if mean is None:
        mean = x.mean(axis=(0, 2, 3))
        var = ((x - mean[None, :, None, None]) ** 2).mean(axis=(0, 2, 3))
    else:
        mean, var = mean.astype(x.dtype), var.astype(x.dtype)
    inv_std = 1 / xp.sqrt(var + eps)
    xhat = (x - mean[None, :, None, None]) * inv_std[None, :, None, None]
    out = gamma[None, :, None, None] * xhat + beta[None, :, None, None]
    return out, xhat, inv_std, mean, var


def batchnorm2d_backward_reference(dout, xhat, inv_std, gamma, train):
    """``(dx, dgamma, dbeta)`` of :func:`batchnorm2d_reference` (the NumPy reference; the
    formulas are in :func:`batchnorm2d_backward`)."""
    dbeta = dout.sum(axis=(0, 2, 3))
    dgamma = (dout * xhat).sum(axis=(0, 2, 3))
    scale = (gamma * inv_std)[None, :, None, None]
    if not train:
        return scale * dout, dgamma, dbeta
    m = xhat.shape[0] * xhat.shape[2] * xhat.shape[3]
    dx = scale / m * (m * dout - dbeta[None, :, None, None] - xhat * dgamma[None, :, None, None])
    return dx, dgamma, dbeta


def batchnorm2d_relu_reference(x, gamma, beta, mean, var, eps):
    """Batch norm then ReLU (the NumPy reference of the fused op): :func:`batchnorm2d_reference`
    and :func:`relu_reference` of its output. Returns ``(out, xhat, inv_std, mean, var, mask)``
    with ``out = max(gamma * xhat + beta, 0)`` and ``mask`` the ReLU's ``(N, C, H, W)`` bool."""
    out, xhat, inv_std, mean, var = batchnorm2d_reference(x, gamma, beta, mean, var, eps)
    out, mask = relu_reference(out)
    return out, xhat, inv_std, mean, var, mask


def batchnorm2d_relu_backward_reference(dout, mask, xhat, inv_std, gamma, train):
    """``(dx, dgamma, dbeta)`` of :func:`batchnorm2d_relu_reference`: the ReLU's backward, then
    :func:`batchnorm2d_backward_reference` (the NumPy reference of the fused op)."""
    dy = relu_backward_reference(dout, mask)
    return batchnorm2d_backward_reference(dy, xhat, inv_std, gamma, train)


def batchnorm2d_forward(
    x,
    gamma,
    beta,
    running_mean,
    running_var,
    train=True,
    momentum=0.1,
    eps=1e-5,
    *,
    relu=False,
    backend=None,
):
    """Batch normalisation over ``(N, H, W)`` per channel (torch's ``BatchNorm2d``).

    Args:
        x: ``(N, C, H, W)`` float32/float64.
        gamma, beta: ``(C,)`` scale and shift.
        running_mean, running_var: ``(C,)``, updated **in place** when ``train``:
            ``r = (1 - momentum) * r + momentum * batch_stat``, with the *unbiased*
            batch variance (``m / (m - 1)`` times the biased one, ``m = N*H*W``).
        train: normalise with the batch statistics (True) or the running ones (False).
        relu: a ReLU on the output, fused (the ``batchnorm2d_relu`` op: on ``numba`` one pass
            writes the output and the ReLU's mask, and the backward masks the gradient inside
            batch norm's own passes; the same numbers as :func:`relu_forward` after this
            layer).

    Returns:
        out: ``gamma * (x - mean) / sqrt(var + eps) + beta`` (biased ``var`` in train mode),
        computed as :func:`batchnorm2d_reference` does (``max(., 0)`` of it with ``relu``);
        cache: :class:`BatchNorm2dCache`.
    """
    backend, xp, (x, gamma, beta) = prepare(backend, {"x": x, "gamma": gamma, "beta": beta})
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
        stats = (None, None)
    else:
        stats = (running_mean, running_var)
    mask = None
    if relu:
        out, xhat, inv_std, mean, var, mask = kernel("batchnorm2d_relu", backend)(
            x, gamma, beta, *stats, eps
        )
    else:
        out, xhat, inv_std, mean, var = kernel("batchnorm2d", backend)(x, gamma, beta, *stats, eps)
    if train:
        running_mean *= 1 - momentum
        running_mean += momentum * mean.astype(running_mean.dtype)
        running_var *= 1 - momentum
        running_var += momentum * (var * (m / (m - 1))).astype(running_var.dtype)
    return out, BatchNorm2dCache(xhat, inv_std, gamma, bool(train), backend, mask)


def batchnorm2d_backward(dout, cache: BatchNorm2dCache):
    """Gradients of :func:`batchnorm2d_forward`.

    With ``m = N*H*W`` and sums over ``(n, h, w)`` per channel:

    * ``dbeta = sum(dout)``, ``dgamma = sum(dout * xhat)``;
    * train mode: ``dx = gamma * inv_std / m * (m * dout - dbeta - xhat * dgamma)``
      (the batch mean and variance depend on ``x``);
    * eval mode: ``dx = gamma * inv_std * dout`` (the statistics are constants);
    * with the fused ReLU (``relu=True``), ``dout`` is first ``dout * mask``.

    Returns:
        dx ``(N, C, H, W)``, dgamma ``(C,)``, dbeta ``(C,)``.
    """
    xhat, inv_std, gamma, train, backend, mask = cache
    xp = _backend.get_array_module(xhat)
    dout = check_grad(dout, "dout", xhat.shape, xhat.dtype, xp)
    if mask is not None:  # the fused ReLU's gradient first (dout where out > 0)
        return kernel("batchnorm2d_relu_backward", backend)(
            dout, mask, xhat, inv_std, gamma, train
        )
    return kernel("batchnorm2d_backward", backend)(dout, xhat, inv_std, gamma, train)
