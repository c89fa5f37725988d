"""Fast layers for the CPU (Numba): ReLU and batch norm fused, linear's thread choice.

The specifications are :func:`minirccn.nn.layers.relu_reference`,
:func:`minirccn.nn.layers.relu_backward_reference`,
:func:`minirccn.nn.layers.batchnorm2d_reference` and
:func:`minirccn.nn.layers.batchnorm2d_backward_reference`. The NumPy versions make
one pass over the array per operation (``x > 0``, then ``where``; for batch norm a
mean, a centred copy, its square, a mean, ``xhat``, ``out``: six full passes and four
temporaries); these kernels fuse them into one pass (ReLU) or two to three passes per
channel (batch norm), each channel a task (``prange``: disjoint outputs, no races),
with :func:`~minirccn.kernels._launch.cpu_threads_for` choosing one thread for small
maps.

* ReLU: exactly the reference's numbers (a comparison and a copy); the mask is the
  same bool array (``x > 0``, so a NaN gives 0 and mask False).
* Batch norm: the per-channel sums are taken in float64 accumulators that the compiler
  may split into several partial sums (``fastmath={"reassoc"}``: vectorised, and no
  chain of dependent adds), where NumPy sums pairwise in the input's dtype: the
  statistics agree with the reference to rounding, not bit for bit
  (tests/nn/test_layers.py checks the kernel is no less accurate than the reference, in
  float32 and float64). The formulas are the reference's.

The GPU backend runs the references on CuPy arrays (cheap elementwise work that CuPy
already fuses well enough); the dispatch table says so.

The linear layer's GEMMs are NumPy's, as in the reference; ``linear_numba`` /
``linear_backward_numba`` only choose OpenBLAS's thread count per call
(:func:`~minirccn.kernels._launch.blas_threads_for`).

Entry points (the signatures of the references): ``relu_numba(x)`` returns ``(out,
mask)``; ``linear_numba(x, w, b)`` returns ``out``; ``linear_backward_numba(dout, x,
w)`` returns ``(dx, dw, db)``; ``relu_backward_numba(dout, mask)`` returns ``dx``;
``batchnorm2d_numba(x, gamma, beta, mean, var, eps)`` returns ``(out, xhat,
inv_std)`` with the statistics ``mean``, ``var`` ``(C,)`` given (eval mode) or None
(train mode: computed here, returned through ``mean_out``/``var_out``);
``batchnorm2d_backward_numba(dout, xhat, inv_std, gamma, train)`` returns ``(dx,
dgamma, dbeta)``.
"""

from __future__ import annotations

import numba
import numpy as np
from minirccn.kernels._launch import blas_threads_for, cpu_threads_for

# --------------------------------------------------------------------------- ReLU


@numba.njit(parallel=True, cache=True)
def _relu_numba(x, out, mask, chunk):
    n = x.size
    bits = mask.view(np.uint8)  # the bool mask as bytes: stores the compiler vectorises
    for t in numba.prange((n + chunk - 1) // chunk):  # disjoint chunks of the flat array
        lo, hi = t * chunk, min(n, (t + 1) * chunk)
        xs, os, ms = x[lo:hi], out[lo:hi], bits[lo:hi]  # a plain loop per chunk: vectorised
        for k in range(hi - lo):
            v = xs[k]
            m = v > 0
            ms[k] = np.uint8(m)
            os[k] = v if m else 0


@numba.njit(parallel=True, cache=True)
def _relu_backward_numba(dout, mask, dx, chunk):
    n = dout.size
    bits = mask.view(np.uint8)
    for t in numba.prange((n + chunk - 1) // chunk):
        lo, hi = t * chunk, min(n, (t + 1) * chunk)
        ds, ms, xs = dout[lo:hi], bits[lo:hi], dx[lo:hi]
        for k in range(hi - lo):
            xs[k] = ds[k] if ms[k] else 0


#: elements per task of the flat elementwise kernels
CHUNK = 1 << 14


@numba.njit(parallel=True, cache=True)
def _relu_backward_from_output(dout, out, dx, chunk):
    n = dout.size
    zero = dx.dtype.type(0)
    for t in numba.prange((n + chunk - 1) // chunk):
        lo, hi = t * chunk, min(n, (t + 1) * chunk)
        ds, os, xs = dout[lo:hi], out[lo:hi], dx[lo:hi]
        for k in range(hi - lo):
            xs[k] = ds[k] if os[k] > 0 else zero


def relu_backward_from_output(dout, out, dx):
    """``dx = dout`` where ``out > 0`` else 0, written into ``dx`` (all three the same shape,
    C-contiguous), in one pass (Numba, CPU threads): the ReLU's backward read off its output
    ``out = max(y, 0)`` (positive exactly where ``y`` was), so no mask has to be kept. Used by
    the fused conv + ReLU backwards (kernels/conv.py, kernels/conv_levels.py). Returns ``dx``."""
    if not dx.flags.c_contiguous or dx.shape != dout.shape or out.shape != dout.shape:
        raise ValueError("dx: expected a C-contiguous array of dout's shape (so is out)")
    dout, out = np.ascontiguousarray(dout), np.ascontiguousarray(out)
    with cpu_threads_for(dout.size):
        _relu_backward_from_output(dout.reshape(-1), out.reshape(-1), dx.reshape(-1), CHUNK)
    return dx


def relu_numba(x):
    """``(out, mask)``: ``max(x, 0)`` and ``x > 0`` in one pass (Numba, CPU threads)."""
    x = np.ascontiguousarray(x)
    out = np.empty_like(x)
    mask = np.empty(x.shape, dtype=np.bool_)
    with cpu_threads_for(x.size):
        _relu_numba(x.reshape(-1), out.reshape(-1), mask.reshape(-1), CHUNK)
    return out, mask


def relu_backward_numba(dout, mask):
    """``dx = dout`` where ``mask`` else 0, in one pass (Numba, CPU threads)."""
    dout = np.ascontiguousarray(dout)
    mask = np.ascontiguousarray(mask)
    dx = np.empty_like(dout)
    with cpu_threads_for(dout.size):
        _relu_backward_numba(dout.reshape(-1), mask.reshape(-1), dx.reshape(-1), CHUNK)
    return dx


# --------------------------------------------------------------------------- linear


def linear_numba(x, w, b):
    """``x @ w + b``: the reference's GEMM (the same numbers), on one OpenBLAS thread when it
    is small or the machine is busy (:func:`~minirccn.kernels._launch.blas_threads_for`)."""
    with blas_threads_for(2 * x.shape[0] * x.shape[1] * w.shape[1]):
        return x @ w + b


def linear_backward_numba(dout, x, w):
    """``(dout @ w^T, x^T @ dout, sum_n dout)``: the reference's GEMMs (the same numbers), with
    the thread choice of :func:`linear_numba`."""
    with blas_threads_for(4 * x.shape[0] * x.shape[1] * w.shape[1]):
        return dout @ w.T, x.T @ dout, dout.sum(axis=0)


# --------------------------------------------------------------------------- batch norm


#: the per-channel sums may be reassociated (vectorised into several partial sums): without
#: it every ``acc +=`` waits for the previous one (a 4-cycle chain per element)
REASSOC = {"reassoc"}


@numba.njit(cache=True, fastmath=REASSOC, inline="always")
def _channel_statistics(x, c, train, eps, mean, var, inv_std):
    """Channel ``c``'s ``mean[c]`` and ``var[c]`` (train mode: the batch's, float64 running
    sums rounded to the dtype, as the reference's) and ``inv_std[c] = 1 / sqrt(var[c] + eps)``."""
    n_img, _, height, width = x.shape
    m = n_img * height * width
    if train:
        acc = 0.0
        for n in range(n_img):
            for h in range(height):
                for w in range(width):
                    acc += x[n, c, h, w]
        mean[c] = acc / m  # rounded to the dtype, as the reference's mean
        mu = mean[c]
        acc = 0.0
        for n in range(n_img):
            for h in range(height):
                for w in range(width):
                    d = x[n, c, h, w] - mu
                    acc += d * d
        var[c] = acc / m
    inv_std[c] = 1.0 / np.sqrt(var[c] + eps)


@numba.njit(cache=True, fastmath=REASSOC, inline="always")
def _channel_backward(g, xhat, c, inv_std, gamma, train, dx, dgamma, dbeta):
    """Channel ``c`` of batch norm's backward from the output gradient ``g`` (``dout``, or the
    ReLU-masked one already in ``dx``: read before it is overwritten, element by element):
    ``dbeta[c] = sum g``, ``dgamma[c] = sum g * xhat``, and ``dx`` (train mode:
    ``gamma * inv_std / m * (m g - dbeta - xhat dgamma)``; eval: ``gamma * inv_std * g``)."""
    n_img, _, height, width = g.shape
    m = n_img * height * width
    sb = 0.0
    sg = 0.0
    for n in range(n_img):
        for h in range(height):
            for w in range(width):
                d = g[n, c, h, w]
                sb += d
                sg += d * xhat[n, c, h, w]
    dbeta[c] = sb
    dgamma[c] = sg
    scale = gamma[c] * inv_std[c]
    if train:
        k = scale / m
        b, gg = dbeta[c], dgamma[c]  # rounded to the output dtype, as the reference's
        for n in range(n_img):
            for h in range(height):
                for w in range(width):
                    dx[n, c, h, w] = k * (m * g[n, c, h, w] - b - xhat[n, c, h, w] * gg)
    else:
        for n in range(n_img):
            for h in range(height):
                for w in range(width):
                    dx[n, c, h, w] = scale * g[n, c, h, w]


@numba.njit(parallel=True, cache=True, fastmath=REASSOC)
def _batchnorm_numba(x, gamma, beta, mean, var, train, eps, out, xhat, inv_std):
    n_img, n_ch, height, width = x.shape
    for c in numba.prange(n_ch):  # one channel per task: its statistics and its planes
        _channel_statistics(x, c, train, eps, mean, var, inv_std)
        s, mu_c, g, bb = inv_std[c], mean[c], gamma[c], beta[c]
        for n in range(n_img):
            for h in range(height):
                for w in range(width):
                    xh = (x[n, c, h, w] - mu_c) * s
                    xhat[n, c, h, w] = xh
                    out[n, c, h, w] = g * xh + bb


@numba.njit(parallel=True, cache=True, fastmath=REASSOC)
def _batchnorm_backward_numba(dout, xhat, inv_std, gamma, train, dx, dgamma, dbeta):
    for c in numba.prange(dout.shape[1]):
        _channel_backward(dout, xhat, c, inv_std, gamma, train, dx, dgamma, dbeta)


def batchnorm2d_numba(x, gamma, beta, mean, var, eps):
    """``(out, xhat, inv_std, mean, var)`` of batch norm over ``(N, H, W)`` per channel.

    ``mean``, ``var``: ``(C,)`` the statistics to normalise with (eval mode), or None to
    compute the batch's (train mode: biased variance; returned). Numba, one channel per
    task; the sums are float64 running sums (see the module docstring).
    """
    x, train, mean, var, out, xhat, inv_std = _forward_buffers(x, mean, var)
    with cpu_threads_for(x.size):
        _batchnorm_numba(
            x, gamma, beta, mean, var, train, x.dtype.type(eps), out, xhat, inv_std
        )
    return out, xhat, inv_std, mean, var


def _forward_buffers(x, mean, var):
    """Contiguous ``x``, ``train`` (no statistics given), the statistics' ``(C,)`` arrays (new
    ones in train mode) and the outputs ``out``, ``xhat`` (like ``x``), ``inv_std`` ``(C,)``."""
    x = np.ascontiguousarray(x)
    c = x.shape[1]
    train = mean is None
    if train:
        mean, var = np.empty(c, dtype=x.dtype), np.empty(c, dtype=x.dtype)
    else:
        mean, var = np.ascontiguousarray(mean, x.dtype), np.ascontiguousarray(var, x.dtype)
    return x, train, mean, var, np.empty_like(x), np.empty_like(x), np.empty(c, dtype=x.dtype)


def batchnorm2d_backward_numba(dout, xhat, inv_std, gamma, train):
    """``(dx, dgamma, dbeta)`` of :func:`batchnorm2d_numba` (the reference's formulas, one
    pass for the two sums and one for ``dx`` per channel; Numba, CPU threads)."""
    dout = np.ascontiguousarray(dout)
    c = dout.shape[1]
    dx = np.empty_like(dout)
    dgamma, dbeta = np.empty(c, dtype=dout.dtype), np.empty(c, dtype=dout.dtype)
    with cpu_threads_for(dout.size):
        _batchnorm_backward_numba(dout, xhat, inv_std, gamma, bool(train), dx, dgamma, dbeta)
    return dx, dgamma, dbeta


# --------------------------------------------------------------------------- batch norm + ReLU
# The fused op (the tiny backbone's and the ResNet's conv -> BN -> ReLU): the reference is
# batchnorm2d_reference then relu_reference (minirccn/nn/layers.py). Unfused, the ReLU reads
# batch norm's output and writes a second output and its mask, and its backward writes a
# masked gradient that batch norm's backward reads twice; fused, the last pass of batch norm
# writes the ReLU's output and mask, and the backward masks ``dout`` channel by channel into
# ``dx`` and runs batch norm's loops on it while it is in the cache (one call, one array
# fewer). The arithmetic is the two kernels' in their order: the same ``y = gamma * xhat +
# beta``, ``max(y, 0)`` and ``y > 0``, the same per-channel sums: bit for bit the unfused pair's
# numbers (tests/nn/test_layers.py).


@numba.njit(parallel=True, cache=True, fastmath=REASSOC)
def _batchnorm_relu_numba(x, gamma, beta, mean, var, train, eps, out, xhat, inv_std, mask):
    n_img, n_ch, height, width = x.shape
    for c in numba.prange(n_ch):  # one channel per task, as _batchnorm_numba
        _channel_statistics(x, c, train, eps, mean, var, inv_std)
        s, mu_c, g, bb = inv_std[c], mean[c], gamma[c], beta[c]
        for n in range(n_img):
            for h in range(height):
                for w in range(width):
                    xh = (x[n, c, h, w] - mu_c) * s
                    xhat[n, c, h, w] = xh
                    y = g * xh + bb
                    pos = y > 0
                    mask[n, c, h, w] = np.uint8(pos)
                    out[n, c, h, w] = y if pos else 0


@numba.njit(parallel=True, cache=True, fastmath=REASSOC)
def _batchnorm_relu_backward_numba(dout, mask, xhat, inv_std, gamma, train, dx, dgamma, dbeta):
    n_img, n_ch, height, width = dout.shape
    zero = dout.dtype.type(0)
    for c in numba.prange(n_ch):
        # the ReLU's gradient into this channel's planes of dx (they stay in the cache), then
        # the unfused backward's loops (_channel_backward) on it: the same sums, bit for bit
        for n in range(n_img):
            for h in range(height):
                for w in range(width):
                    dx[n, c, h, w] = dout[n, c, h, w] if mask[n, c, h, w] else zero
        _channel_backward(dx, xhat, c, inv_std, gamma, train, dx, dgamma, dbeta)


def batchnorm2d_relu_numba(x, gamma, beta, mean, var, eps):
    """``(out, xhat, inv_std, mean, var, mask)``: :func:`batchnorm2d_numba` with the ReLU in its
    last pass (``out = max(gamma * xhat + beta, 0)``, ``mask`` its ``> 0``, bool)."""
    x, train, mean, var, out, xhat, inv_std = _forward_buffers(x, mean, var)
    mask = np.empty(x.shape, dtype=np.bool_)
    with cpu_threads_for(x.size):
        _batchnorm_relu_numba(
            x, gamma, beta, mean, var, train, x.dtype.type(eps), out, xhat, inv_std,
            mask.view(np.uint8),
        )
    return out, xhat, inv_std, mean, var, mask


def batchnorm2d_relu_backward_numba(dout, mask, xhat, inv_std, gamma, train):
    """``(dx, dgamma, dbeta)`` of :func:`batchnorm2d_relu_numba`: batch norm's backward on
    ``dout`` masked as it is read (Numba, CPU threads)."""
    dout = np.ascontiguousarray(dout)
    mask = np.ascontiguousarray(mask)
    c = dout.shape[1]
    dx = np.empty_like(dout)
    dgamma, dbeta = np.empty(c, dtype=dout.dtype), np.empty(c, dtype=dout.dtype)
    with cpu_threads_for(dout.size):
        _batchnorm_relu_backward_numba(
            dout, mask.view(np.uint8), xhat, inv_std, gamma, bool(train), dx, dgamma, dbeta
        )
    return dx, dgamma, dbeta
