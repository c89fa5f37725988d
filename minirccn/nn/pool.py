"""2-D max pooling with an explicit backward (torch's ``max_pool2d``: no padding, floor mode).

``out, cache = max_pool2d_forward(x, kernel_size, stride)`` keeps the largest
value of every window and remembers where it was (the ``argmax``);
``dx = max_pool2d_backward(dout, cache)`` sends each output gradient back to that
pixel.

:func:`max_pool2d_reference` and :func:`max_pool2d_backward_reference` are the
NumPy reference; the kernels with the same signatures are in ``kernels/pool.py``
(Numba, Numba-CUDA), and :mod:`minirccn.core.dispatch` says which runs on which
backend.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minirccn.core import backend as _backend
from minirccn.core.checks import check_float, check_shape
from minirccn.core.dispatch import kernel
from minirccn.nn._common import conv_output_size, offset_view, pair, prepare


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
    windows = xp.stack([offset_view(x, i, j, ho, wo, sh, sw) for i in range(kh) for j in range(kw)])
    k = windows.argmax(axis=0)  # first occurrence of the maximum (NaN is the maximum)
    out = xp.take_along_axis(windows, k[None], axis=0)[0]
    i, j = k // kw, k % kw
    oh = xp.arange(ho).reshape(ho, 1)
    ow = xp.arange(wo).reshape(1, wo)
    argmax = (oh * sh + i) * w + (ow * sw + j)
    return out, argmax.astype(xp.int64)


def max_pool2d_backward_reference(dout, argmax, x_shape, kernel_size=None, stride=None):
    """Scatter-add ``dout (N, C, Ho, Wo)`` to the argmax pixels: ``dx (N, C, H, W)``.

    Overlapping windows (stride < kernel) that chose the same pixel add up.
    ``kernel_size`` and ``stride`` are not needed here (``argmax`` says where
    every gradient goes); they complete the signature all the backends share,
    because the GPU kernel gathers over the windows that contain each pixel.
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
    backend, xp, (x,) = prepare(backend, {"x": x})
    check_shape(x, "x", (None, None, None, None))
    kh, kw = pair(kernel_size, "kernel_size")
    sh, sw = (kh, kw) if stride is None else pair(stride, "stride")
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel_size: expected positive ints, got {kernel_size!r}")
    if sh < 1 or sw < 1:
        raise ValueError(f"stride: expected positive ints, got {stride!r}")
    n, c, h, w = x.shape
    ho, wo = conv_output_size(h, kh, sh, 0), conv_output_size(w, kw, sw, 0)
    if ho < 1 or wo < 1:
        raise ValueError(f"x: input {h}x{w} is smaller than the {kh}x{kw} pooling window")
    out, argmax = kernel("max_pool2d", backend)(x, (kh, kw), (sh, sw))
    return out, MaxPool2dCache(argmax, (n, c, h, w), (kh, kw), (sh, sw), backend)


def max_pool2d_backward(dout, cache: MaxPool2dCache):
    """Gradient of :func:`max_pool2d_forward`: ``dout`` routed to each window's argmax.

    Args:
        dout: ``(N, C, Ho, Wo)`` float32/float64.

    Returns:
        dx: ``(N, C, H, W)``, same dtype as ``dout``.
    """
    argmax, x_shape, kernel_size, stride, backend = cache
    xp = _backend.get_array_module(argmax)
    dout = check_float(dout, "dout")
    dout = _backend.to_numpy(dout) if xp is np else xp.asarray(dout)
    check_shape(dout, "dout", argmax.shape)
    return kernel("max_pool2d_backward", backend)(dout, argmax, x_shape, kernel_size, stride)
