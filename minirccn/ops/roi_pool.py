"""RoI max pooling: a fixed-size ``(ph, pw)`` grid of maxima over each region of interest.

Fast R-CNN's head needs one fixed-size feature per proposal, whatever the
proposal's size. RoI max pooling cuts each RoI (projected onto the feature map)
into ``ph x pw`` bins and keeps the largest value of every bin, per channel.

The rule, exactly as Caffe and torchvision's CPU kernel compute it
------------------------------------------------------------------

All float arithmetic is done in the features' dtype ``T`` (float32 arithmetic
for float32 inputs: torchvision converts ``spatial_scale`` to ``T`` first).

1. Project and round each corner, C ``round`` (half away from zero, *not*
   NumPy's half-to-even): ``x1' = round(x1 * s)``, ``y1' = round(y1 * s)``,
   ``x2' = round(x2 * s)``, ``y2' = round(y2 * s)``. With ``s = 1/16``, ``x = 8``
   gives ``0.5 -> 1`` and ``x = -8`` gives ``-0.5 -> -1``.
2. The RoI is inclusive of both ends: ``roi_w = max(x2' - x1' + 1, 1)``,
   ``roi_h = max(y2' - y1' + 1, 1)`` (malformed RoIs become 1x1).
3. Bin sizes ``bin_w = T(roi_w) / T(pw)``, ``bin_h = T(roi_h) / T(ph)``. Bin
   ``(i, j)`` covers rows ``[floor(i * bin_h), ceil((i + 1) * bin_h))`` and
   columns ``[floor(j * bin_w), ceil((j + 1) * bin_w))``, shifted by
   ``(y1', x1')`` and clipped to ``[0, H]`` / ``[0, W]``. Neighbouring bins may
   share a row or column.
4. An empty bin (``hend <= hstart`` or ``wend <= wstart``, e.g. a RoI off the
   map) outputs 0 with argmax -1.
5. Otherwise: start from ``best = -FLT_MAX`` (float32's lowest, also for
   float64 maps) and scan rows then columns, taking a value only if it is
   strictly greater (``v > best``): the *first* maximum wins ties, NaN is never
   taken, and a bin holding only ``-inf``/NaN/``-FLT_MAX`` outputs ``-FLT_MAX``
   with argmax -1. ``argmax`` is the flat index ``h * W + w`` into the map.

The backward pass scatters each output gradient back to its argmax cell
(``argmax == -1`` sends nothing), summing where cells are shared.

Steps 1-3 (the bins) are computed once, vectorised, by :func:`roi_bins` for
every backend; then :func:`roi_pool_bins_reference` (``numpy``) or a kernel of
:mod:`minirccn.kernels.roi_pool` (``numba``, ``cuda``; see
:mod:`minirccn.core.dispatch`) does steps 4-5, and the backward scatter.
"""

from __future__ import annotations

import operator
from typing import NamedTuple

import numpy as np

from minirccn.core import backend as _backend
from minirccn.core.checks import as_array, check_float, check_positive, check_shape, same_module
from minirccn.core.dispatch import kernel

#: Start of every max (and the output of a bin with no value above it): float32's lowest.
LOWEST = float(np.finfo(np.float32).min)

#: |coordinate * spatial_scale| must stay below this (torchvision keeps it in a C ``int``).
MAX_COORD = 2.0**24


# ----------------------------------------------------------------------------- the rule


def c_round(x, xp=np):
    """Round half away from zero, like C's ``round`` (NumPy's ``round`` is half-to-even).

    Args:
        x: array of float32 or float64.
        xp: the array module (``numpy`` or ``cupy``).

    Returns:
        array like ``x``: ``trunc(x) + sign(x) * (|x - trunc(x)| >= 0.5)``. This is
        exact for every float (``floor(x + 0.5)`` is not: in float32,
        ``0.49999997 + 0.5`` rounds up to ``1.0``).
    """
    t = xp.trunc(x)
    return t + xp.sign(x) * (xp.abs(x - t) >= 0.5)


def roi_bins(rois, output_size, spatial_scale, height, width, xp=np):
    """Where every bin of every RoI lies on the feature map (steps 1-3 of the rule).

    Args:
        rois: ``(R, 5)`` float32 or float64 rows ``(batch_index, x1, y1, x2, y2)``
            in image coordinates; the arithmetic is done in this dtype ``T``.
        output_size: ``(ph, pw)`` ints.
        spatial_scale: float, feature-map pixels per image pixel (1/16 for VGG16).
        height, width: ``H``, ``W`` of the feature map.
        xp: the array module (``numpy`` or ``cupy``).

    Returns:
        ``(batch, hstart, hend, wstart, wend)``, all int64: ``batch`` ``(R,)``,
        ``hstart``/``hend`` ``(R, ph)`` and ``wstart``/``wend`` ``(R, pw)``; bin
        ``(i, j)`` of RoI ``r`` is rows ``hstart[r, i]:hend[r, i]``, columns
        ``wstart[r, j]:wend[r, j]``, already clipped to the map.
    """
    ph, pw = output_size
    t = rois.dtype.type
    batch = rois[:, 0].astype(np.int64)
    corners = c_round(rois[:, 1:5] * t(spatial_scale), xp).astype(np.int64)  # (R, 4) x1 y1 x2 y2
    x1, y1, x2, y2 = corners[:, 0], corners[:, 1], corners[:, 2], corners[:, 3]
    roi_w = xp.maximum(x2 - x1 + 1, 1)
    roi_h = xp.maximum(y2 - y1 + 1, 1)
    hstart, hend = _bin_edges(roi_h.astype(t) / t(ph), ph, y1, height, xp)
    wstart, wend = _bin_edges(roi_w.astype(t) / t(pw), pw, x1, width, xp)
    return batch, hstart, hend, wstart, wend


def _bin_edges(bin_size, n_bins, offset, limit, xp):
    """``[floor(k * bin), ceil((k + 1) * bin))`` for ``k < n_bins``, shifted and clipped.

    Args:
        bin_size: ``(R,)`` float of dtype ``T``; products are computed in ``T``.
        n_bins: int, bins along this axis.
        offset: ``(R,)`` int64 rounded RoI start.
        limit: int, the map's size along this axis.

    Returns:
        ``(start, end)``, each ``(R, n_bins)`` int64 in ``[0, limit]``.
    """
    k = xp.arange(n_bins + 1).astype(bin_size.dtype)  # exact small integers in T
    scaled = k[None, :] * bin_size[:, None]  # (R, n_bins + 1), rounded to T like the C code
    start = xp.floor(scaled[:, :-1]).astype(np.int64) + offset[:, None]
    end = xp.ceil(scaled[:, 1:]).astype(np.int64) + offset[:, None]
    return xp.clip(start, 0, limit), xp.clip(end, 0, limit)


# ----------------------------------------------------------------------------- the reference


def roi_pool_reference(features, rois, output_size, spatial_scale=1.0):
    """RoI max pooling in NumPy: the specification (see the module docstring for the rule).

    Args:
        features: ``(N, C, H, W)`` float32 or float64 feature maps.
        rois: ``(R, 5)`` rows ``(batch_index, x1, y1, x2, y2)``, image coordinates,
            same dtype as ``features``.
        output_size: ``(ph, pw)`` ints.
        spatial_scale: float, feature-map pixels per image pixel.

    Returns:
        ``out``: ``(R, C, ph, pw)`` features' dtype, the max of each bin (0 for an
        empty bin, ``-FLT_MAX`` for a bin with nothing above it).
        ``argmax``: ``(R, C, ph, pw)`` int64 flat index ``h * W + w`` of that max,
        -1 where no cell was taken.
    """
    bins = roi_bins(rois, output_size, spatial_scale, features.shape[2], features.shape[3])
    return roi_pool_bins_reference(features, *bins)


def roi_pool_bins_reference(features, batch, hstart, hend, wstart, wend):
    """Steps 4-5 of the rule: the first maximum of every bin, bins given by :func:`roi_bins`.

    Args:
        features: ``(N, C, H, W)`` float32 or float64 feature maps.
        batch: ``(R,)`` int64 image of each RoI.
        hstart, hend: ``(R, ph)`` int64 rows of each bin, clipped to ``[0, H]``.
        wstart, wend: ``(R, pw)`` int64 columns of each bin, clipped to ``[0, W]``.

    Returns:
        ``(out, argmax)`` as :func:`roi_pool_reference` returns them. (This is
        the signature every RoI pooling kernel shares: see :mod:`minirccn.core.dispatch`.)
    """
    c, width = features.shape[1], features.shape[3]
    r, ph, pw = batch.shape[0], hstart.shape[1], wstart.shape[1]
    out = np.zeros((r, c, ph, pw), dtype=features.dtype)
    argmax = np.full((r, c, ph, pw), -1, dtype=np.int64)
    for k in range(r):
        fmap = features[batch[k]]  # (C, H, W)
        for i in range(ph):
            for j in range(pw):
                h0, h1, w0, w1 = hstart[k, i], hend[k, i], wstart[k, j], wend[k, j]
                if h1 <= h0 or w1 <= w0:
                    continue  # empty bin: 0 and -1, as initialised
                window = fmap[:, h0:h1, w0:w1].reshape(c, -1)  # (C, bh * bw), rows then columns
                out[k, :, i, j], pos = _first_max(window)
                row, col = h0 + pos // (w1 - w0), w0 + pos % (w1 - w0)
                argmax[k, :, i, j] = np.where(
                    pos >= 0, row * width + col, -1
                )  # flat index into H * W
    return out, argmax


def _first_max(window):
    """Per row, the value and position a ``v > best`` scan from ``best = -FLT_MAX`` ends with.

    Args:
        window: ``(C, M)`` float, ``M >= 1`` values in scan order.

    Returns:
        ``(value (C,) window's dtype, pos (C,) int64)``: the first maximum among
        values ``> -FLT_MAX`` (NaN never counts); ``(-FLT_MAX, -1)`` if there is none.
    """
    takeable = window > LOWEST  # False for NaN, -inf and -FLT_MAX itself
    candidates = np.where(takeable, window, -np.inf)
    pos = np.argmax(candidates, axis=1)  # argmax returns the first of tied maxima
    found = takeable[np.arange(window.shape[0]), pos]
    value = np.where(found, window[np.arange(window.shape[0]), pos], window.dtype.type(LOWEST))
    return value, np.where(found, pos, -1)


def roi_pool_backward_reference(grad_out, rois, argmax, input_shape):
    """Gradient of RoI max pooling with respect to the features, in NumPy.

    Forward is linear in the features once ``argmax`` is fixed: ``out[r, c, i, j]
    = x[b_r, c].flat[argmax[r, c, i, j]]`` (or a constant where argmax is -1). Its
    adjoint sends each ``grad_out[r, c, i, j]`` back to that one cell and sums the
    contributions of bins that picked the same cell (overlapping bins and RoIs):

        grad[b_r, c].flat[argmax[r, c, i, j]] += grad_out[r, c, i, j]   (argmax >= 0)

    so ``sum(grad * x) == sum(grad_out * out)`` over the bins whose argmax >= 0.

    Args:
        grad_out: ``(R, C, ph, pw)`` float32 or float64, dLoss/d``out``.
        rois: ``(R, 5)`` float rows ``(batch_index, x1, y1, x2, y2)`` (only the
            batch index is used).
        argmax: ``(R, C, ph, pw)`` int64 from :func:`roi_pool_reference`.
        input_shape: ``(N, C, H, W)`` of the features.

    Returns:
        ``(N, C, H, W)`` grad_out's dtype, dLoss/d``features``. Contributions are
        added in ``(r, c, i, j)`` order, the order torchvision's CPU kernel uses.
    """
    n, c, height, width = input_shape
    batch = rois[:, 0].astype(np.int64)
    channel = np.arange(c)
    # flat index into (N, C, H, W) of every output's argmax cell: (R, C, ph, pw)
    plane = batch[:, None, None, None] * c + channel[None, :, None, None]  # (R, C, 1, 1)
    cell = plane * (height * width) + argmax
    taken = argmax >= 0
    grad = np.zeros(n * c * height * width, dtype=grad_out.dtype)
    np.add.at(grad, cell[taken], grad_out[taken])  # unbuffered: repeated cells accumulate
    return grad.reshape(n, c, height, width)


# ----------------------------------------------------------------------------- public ops


def roi_pool(features, rois, output_size, spatial_scale=1.0, *, backend=None):
    """RoI max pooling (``torchvision.ops.roi_pool`` semantics), returning the argmax too.

    Args:
        features: ``(N, C, H, W)`` float32 or float64 NumPy or CuPy array.
        rois: ``(R, 5)`` float rows ``(batch_index, x1, y1, x2, y2)`` in image
            coordinates; converted to ``features``' dtype (the arithmetic dtype).
            Batch indices must be integers in ``[0, N)``, coordinates finite.
        output_size: int or ``(ph, pw)``.
        spatial_scale: positive float (1/16 for a stride-16 backbone).
        backend: ``"numpy"``, ``"numba"``, ``"cuda"`` or None (see :mod:`minirccn.core.backend`).

    Returns:
        ``(out, argmax)``: ``(R, C, ph, pw)`` of features' dtype and ``(R, C, ph, pw)``
        int64 flat index into ``H * W`` (-1 for an empty bin, whose output is 0).

    Raises:
        TypeError, ValueError: naming the bad argument.
    """
    features = check_shape(check_float(features, "features"), "features", (None, None, None, None))
    rois = _check_rois(rois, features.shape[0], features, "features")
    output_size = _check_output_size(output_size)
    spatial_scale = check_positive(spatial_scale, "spatial_scale")
    name = _backend.resolve(backend, features, rois)
    xp = _backend.array_module(name)
    features, rois = _backend.to_backend(features, name), _backend.to_backend(rois, name)
    _check_coordinates(rois, spatial_scale, xp)
    bins = roi_bins(rois, output_size, spatial_scale, features.shape[2], features.shape[3], xp)
    return kernel("roi_pool", name)(features, *bins)


def roi_pool_backward(grad_out, rois, argmax, input_shape, *, backend=None):
    """Gradient of :func:`roi_pool` with respect to ``features`` (scatter-add to argmax).

    Args:
        grad_out: ``(R, C, ph, pw)`` float32 or float64, dLoss/d``out``.
        rois: ``(R, 5)`` the RoIs given to :func:`roi_pool` (only batch indices are used).
        argmax: ``(R, C, ph, pw)`` integer array returned by :func:`roi_pool`.
        input_shape: ``(N, C, H, W)`` of the features.
        backend: as for :func:`roi_pool`.

    Returns:
        ``(N, C, H, W)`` grad_out's dtype. On ``cuda`` the sums use atomics, so their
        order (and the last bits where cells are shared) may vary between runs.
    """
    input_shape = _check_input_shape(input_shape)
    n, c, height, width = input_shape
    grad_out = check_shape(check_float(grad_out, "grad_out"), "grad_out", (None, c, None, None))
    rois = _check_rois(rois, n, grad_out, "grad_out")
    check_shape(rois, "rois", (grad_out.shape[0], 5))
    argmax = _check_argmax(argmax, grad_out.shape, height * width)
    same_module("grad_out", grad_out, "argmax", argmax)
    name = _backend.resolve(backend, grad_out, rois, argmax)
    grad_out, rois, argmax = (_backend.to_backend(a, name) for a in (grad_out, rois, argmax))
    argmax = argmax.astype(np.int64, copy=False)
    return kernel("roi_pool_backward", name)(grad_out, rois, argmax, input_shape)


# ----------------------------------------------------------------------------- layer form


class RoIPoolCache(NamedTuple):
    """What :func:`roi_pool_layer_backward` needs from :func:`roi_pool_layer_forward`."""

    rois: object  # (R, 5) float, the pooled RoIs
    argmax: object  # (R, C, ph, pw) int64
    input_shape: tuple  # (N, C, H, W)
    backend: str


def roi_pool_layer_forward(features, rois, output_size, spatial_scale, *, backend=None):
    """Layer form of :func:`roi_pool`: ``out, cache = roi_pool_layer_forward(...)``.

    Args: as :func:`roi_pool`.

    Returns:
        ``out`` ``(R, C, ph, pw)`` and a :class:`RoIPoolCache`.
    """
    name = _backend.resolve(backend, features, rois)
    out, argmax = roi_pool(features, rois, output_size, spatial_scale, backend=name)
    return out, RoIPoolCache(rois, argmax, tuple(int(s) for s in np.shape(features)), name)


def roi_pool_layer_backward(dout, cache: RoIPoolCache):
    """Layer form of :func:`roi_pool_backward`: ``dfeatures`` ``(N, C, H, W)`` from ``dout``."""
    return roi_pool_backward(
        dout, cache.rois, cache.argmax, cache.input_shape, backend=cache.backend
    )


# ----------------------------------------------------------------------------- argument checks


def _check_rois(rois, n, like, like_name):
    """``rois`` as an ``(R, 5)`` array of ``like``'s dtype with integral batch indices in [0, n)."""
    rois = check_shape(check_float(rois, "rois"), "rois", (None, 5))
    same_module(like_name, like, "rois", rois)
    rois = rois.astype(like.dtype, copy=False)
    if rois.shape[0] == 0:
        return rois
    xp = _backend.get_array_module(rois)
    if not bool(xp.isfinite(rois).all()):
        raise ValueError("rois: every value must be finite")
    index = rois[:, 0]
    if not bool(((index == xp.trunc(index)) & (index >= 0) & (index < n)).all()):
        raise ValueError(f"rois: column 0 (batch index) must hold integers in [0, {n})")
    return rois


def _check_coordinates(rois, spatial_scale, xp):
    """Raise ``ValueError`` if a scaled coordinate leaves ``(-MAX_COORD, MAX_COORD)``."""
    if rois.shape[0] and not bool((xp.abs(rois[:, 1:5]) * spatial_scale < MAX_COORD).all()):
        raise ValueError(
            f"rois: coordinates times spatial_scale must stay within +-{MAX_COORD:.0f}"
        )


def _check_output_size(output_size):
    """``output_size`` (int or pair) as ``(ph, pw)`` positive ints."""
    pair = (output_size, output_size) if np.ndim(output_size) == 0 else tuple(output_size)
    if len(pair) != 2:
        raise ValueError(f"output_size: expected an int or a pair (ph, pw), got {output_size!r}")
    try:
        ph, pw = (operator.index(v) for v in pair)
    except TypeError:
        raise TypeError(f"output_size: expected integers, got {output_size!r}") from None
    if ph < 1 or pw < 1:
        raise ValueError(f"output_size: expected positive sizes, got {output_size!r}")
    return ph, pw


def _check_input_shape(input_shape):
    """``input_shape`` as an ``(N, C, H, W)`` tuple of non-negative ints."""
    try:
        shape = tuple(operator.index(v) for v in input_shape)
    except TypeError:
        raise TypeError(
            f"input_shape: expected 4 integers (N, C, H, W), got {input_shape!r}"
        ) from None
    if len(shape) != 4 or min(shape) < 0:
        raise ValueError(
            f"input_shape: expected 4 non-negative integers (N, C, H, W), got {input_shape!r}"
        )
    return shape


def _check_argmax(argmax, shape, cells):
    """``argmax`` as an integer array of ``shape`` with values in ``[-1, cells)``."""
    argmax = as_array(argmax, "argmax")
    if argmax.dtype.kind not in "iu":
        raise TypeError(f"argmax: expected an integer array, got dtype {argmax.dtype}")
    check_shape(argmax, "argmax", tuple(shape))
    if argmax.size and not bool(((argmax >= -1) & (argmax < cells)).all()):
        raise ValueError(f"argmax: values must lie in [-1, {cells}) (H * W of input_shape)")
    return argmax
