"""RoIAlign: a fixed-size ``(ph, pw)`` grid of bilinear averages over each region of interest.

RoI max pooling (:mod:`minirccn.ops.roi_pool`) rounds every RoI corner and every
bin edge to whole feature-map cells, so the pooled window can sit up to half a
cell away from the box it stands for (a whole stride-16 cell is 16 image
pixels). RoIAlign (Mask R-CNN) rounds nothing: it samples the map at
continuous points with bilinear interpolation and averages the samples of
each bin.

The rule, exactly as torchvision's CPU kernel computes it
--------------------------------------------------------

All float arithmetic is done in the features' dtype ``T`` (torchvision converts
``spatial_scale`` to ``T`` first). For one RoI ``(b, x1, y1, x2, y2)``:

1. Project, no rounding: ``start_x = x1 * s - o``, ``end_x = x2 * s - o`` (same for
   ``y``), with the offset ``o = 0.5`` when ``aligned`` else 0 (``aligned=True``
   puts a continuous coordinate ``x`` at the centre of cell ``floor(x)``: pixel
   centres sit at ``k + 0.5``).
2. Size ``roi_w = end_x - start_x``; when not ``aligned`` it is clamped to at
   least 1 (``aligned`` keeps zero and negative sizes as they are).
3. Bins ``bin_w = roi_w / pw``. Each bin holds a ``G_h x G_w`` grid of sample
   points: ``G = sampling_ratio`` if it is > 0, else adaptive
   ``G_w = ceil(roi_w / pw)`` (``G_h = ceil(roi_h / ph)``). Sample ``g`` of bin ``j``:
   ``x = start_x + j * bin_w + (g + 0.5) * bin_w / G_w``.
4. Each sample reads the map bilinearly, one axis at a time (``W`` here, ``H``
   the same):

   * ``x < -1`` or ``x > W``: the sample is outside, it contributes 0;
   * ``x <= 0`` is read at 0 (so ``[-1, 0]`` is clamped onto the first column);
   * ``lo = floor(x)``, ``hi = lo + 1``; if ``lo >= W - 1`` then
     ``lo = hi = W - 1`` and ``x = W - 1`` (the last column);
   * weights ``w_hi = x - lo``, ``w_lo = 1 - w_hi``.

   The sample's value is ``sum over (p, q) in {lo, hi}_y x {lo, hi}_x of
   w_p * w_q * X[p, q]``: the 4 neighbours weighted by the opposite areas.
5. ``out[r, c, i, j]`` = the sum of its bin's samples divided by ``G_h * G_w``
   (0 when ``G_h <= 0`` or ``G_w <= 0``: no samples at all).

The backward pass spreads ``grad_out[r, c, i, j] / (G_h * G_w)`` over the same 4
neighbours of every sample with the same weights.

Where this differs from torchvision, on purpose (finite features and RoIs that
torchvision accepts give the same numbers):

* a sample outside the map contributes exactly 0 here, where torchvision
  multiplies zero weights by ``X[0, 0]`` (so an ``inf``/NaN in that one cell
  leaks into every bin with an outside sample);
* with ``aligned=True`` and an adaptive grid, a RoI with a negative size gets
  ``G <= 0`` samples and outputs 0; torchvision raises on some of these (its
  per-RoI table would get a negative length).

Non-finite features: the reference's matrix products multiply whole rows of the
map by zero weights, so an ``inf``/NaN anywhere in an image's channel makes
every RoI of that image NaN in that channel; the kernels read only the 4
neighbours of each sample. Neither is meaningful; training stops on a NaN loss.

How this module computes it
---------------------------

Every step above acts on one axis at a time, so the whole op is separable:
:func:`sample_tables` builds, vectorised over all RoIs, bins and samples, each
axis's table of neighbour indices and weights (``-1`` marks a sample that
contributes nothing). The reference (:func:`roi_align_reference`) folds each
table into a sparse interpolation matrix per RoI, ``A_y`` ``(ph, H)`` and
``A_x`` ``(pw, W)``, because RoIAlign is linear in the features::

    out[r, c] = A_y[r] @ X[b_r, c] @ A_x[r].T / (G_h * G_w)

and its backward is the transpose::

    grad[b_r, c] += A_y[r].T @ grad_out[r, c] @ A_x[r] / (G_h * G_w)

Every backend builds the tables here, then runs what :mod:`minirccn.core.dispatch`
names: ``numpy`` :func:`roi_align_tables_reference` (the matrices above), the
kernels (:mod:`minirccn.kernels.roi_align`), which receive the same tables and walk
the samples one by one as torchvision does, adding ``w_y * w_x * X`` for the 4
neighbours; so the sums are added in another order than the reference's matrix
products and agree to rounding, not bit for bit.
"""

from __future__ import annotations

import operator
from typing import NamedTuple

import numpy as np

from minirccn.core import backend as _backend
from minirccn.core.checks import check_float, check_positive, check_shape
from minirccn.core.dispatch import kernel
from minirccn.ops.roi_pool import (
    _check_coordinates,
    _check_input_shape,
    _check_output_size,
    _check_rois,
)

# ----------------------------------------------------------------------------- the rule


class AxisSamples(NamedTuple):
    """Where the samples of every bin along one axis read the map (step 4 of the rule).

    For RoI ``r``, bin ``k`` and sample ``g`` (``g < G`` of the padded table; ``G``
    is the largest grid of any RoI):

    * ``lo``, ``hi``: ``(R, bins, G)`` int64 neighbour rows (or columns) in
      ``[0, size)``; both -1 where the sample contributes nothing (outside the
      map, or ``g >=`` this RoI's own grid).
    * ``w_lo``, ``w_hi``: ``(R, bins, G)`` dtype ``T`` weights ``1 - f`` and ``f``
      (``f = x - lo``); 0 where ``lo`` is -1.
    """

    lo: object
    hi: object
    w_lo: object
    w_hi: object


class SampleTables(NamedTuple):
    """Everything the kernels need to compute RoIAlign (the output of :func:`sample_tables`).

    * ``batch``: ``(R,)`` int64 image of each RoI.
    * ``count``: ``(R,)`` dtype ``T``, ``max(G_h * G_w, 1)``, the divisor of each bin's sum.
    * ``y``: :class:`AxisSamples` of the rows, tables ``(R, ph, G_h)``.
    * ``x``: :class:`AxisSamples` of the columns, tables ``(R, pw, G_w)``.
    """

    batch: object
    count: object
    y: AxisSamples
    x: AxisSamples


def sample_tables(
    rois, output_size, spatial_scale, sampling_ratio, aligned, height, width, xp=np
) -> SampleTables:
    """Sample positions and bilinear weights of every bin of every RoI (steps 1-4, vectorised).

    Args:
        rois: ``(R, 5)`` float32 or float64 rows ``(batch_index, x1, y1, x2, y2)`` in
            image coordinates; the arithmetic is done in this dtype ``T``.
        output_size: ``(ph, pw)`` ints.
        spatial_scale: float, feature-map pixels per image pixel.
        sampling_ratio: int, samples per bin along each axis; <= 0: adaptive.
        aligned: bool, shift the RoI by -0.5 (and do not clamp its size).
        height, width: ``H``, ``W`` of the feature map.
        xp: the array module (``numpy`` or ``cupy``).

    Returns:
        A :class:`SampleTables`.
    """
    ph, pw = output_size
    t = rois.dtype.type
    offset = t(0.5) if aligned else t(0.0)
    corners = rois[:, 1:5] * t(spatial_scale) - offset  # (R, 4) start_x, start_y, end_x, end_y
    start_x, start_y = corners[:, 0], corners[:, 1]
    roi_w = corners[:, 2] - start_x
    roi_h = corners[:, 3] - start_y
    if not aligned:  # malformed RoIs become 1x1
        roi_w = xp.maximum(roi_w, t(1))
        roi_h = xp.maximum(roi_h, t(1))
    grid_h = _grid(roi_h, ph, sampling_ratio, xp)
    grid_w = _grid(roi_w, pw, sampling_ratio, xp)
    count = xp.maximum(grid_h * grid_w, 1).astype(t)
    y = _axis_samples(start_y, roi_h / t(ph), ph, grid_h, height, xp)
    x = _axis_samples(start_x, roi_w / t(pw), pw, grid_w, width, xp)
    return SampleTables(rois[:, 0].astype(np.int64), count, y, x)


def _grid(roi_size, bins, sampling_ratio, xp):
    """``(R,)`` int64 samples per bin: ``sampling_ratio`` if > 0, else ``ceil(roi_size / bins)``."""
    if sampling_ratio > 0:
        return xp.full(roi_size.shape, sampling_ratio, dtype=np.int64)
    return xp.ceil(roi_size / roi_size.dtype.type(bins)).astype(np.int64)


def _axis_samples(start, bin_size, bins, grid, size, xp) -> AxisSamples:
    """Neighbours and weights of every sample along one axis (steps 3-4 of the rule).

    Args:
        start: ``(R,)`` dtype ``T`` projected RoI start.
        bin_size: ``(R,)`` dtype ``T``.
        bins: int, bins along this axis.
        grid: ``(R,)`` int64 samples per bin (may be <= 0: no samples).
        size: int, the map's size along this axis.

    Returns:
        An :class:`AxisSamples` of ``(R, bins, G)`` tables, ``G = max(grid)``.
    """
    t = start.dtype.type
    g_max = int(grid.max()) if grid.size else 0
    g_max = max(g_max, 0)
    k = xp.arange(bins).astype(t)[None, :, None]  # (1, bins, 1) bin index, exact in T
    g = xp.arange(g_max)[None, None, :]  # (1, 1, G) sample index
    used = g < grid[:, None, None]  # (R, 1, G): padding beyond this RoI's grid is unused
    n = xp.maximum(grid, 1).astype(t)[:, None, None]  # (R, 1, 1) divisor (1 where unused)
    b = bin_size[:, None, None]
    # (start + k * bin) + ((g + 0.5) * bin) / n, rounded in T step by step as the C code
    pos = (start[:, None, None] + k * b) + ((g.astype(t) + t(0.5)) * b) / n  # (R, bins, G)
    inside = used & (pos >= -1) & (pos <= size) & (size > 0)
    pos = xp.where(pos <= 0, t(0), pos)  # [-1, 0] reads the first cell
    lo = xp.floor(pos).astype(np.int64)
    last = lo >= size - 1  # at or past the last cell: read the last cell only
    lo = xp.where(last, size - 1, lo)
    hi = xp.where(last, size - 1, lo + 1)
    pos = xp.where(last, lo.astype(t), pos)
    w_hi = pos - lo.astype(t)
    w_lo = t(1) - w_hi
    zero = t(0)
    return AxisSamples(
        xp.where(inside, lo, -1),
        xp.where(inside, hi, -1),
        xp.where(inside, w_lo, zero),
        xp.where(inside, w_hi, zero),
    )


def interpolation_matrix(axis: AxisSamples, size: int) -> np.ndarray:
    """Each bin's samples summed into one row of weights over the map's rows (or columns).

    ``A[r, k, p] = sum over samples g of bin k: w_lo * [lo == p] + w_hi * [hi == p]``,
    so along this axis the average of bin ``k``'s samples is ``A[r, k] @ X / G``.

    Args:
        axis: an :class:`AxisSamples` with ``(R, bins, G)`` NumPy tables.
        size: ``H`` (or ``W``).

    Returns:
        ``(R, bins, size)`` of the weights' dtype, at most ``2 G`` non-zeros per row.
    """
    r, bins, _ = axis.lo.shape
    a = np.zeros((r, bins, size), dtype=axis.w_lo.dtype)
    rr, kk = np.indices((r, bins))
    for idx, w in ((axis.lo, axis.w_lo), (axis.hi, axis.w_hi)):
        taken = idx >= 0
        rows = np.broadcast_to(rr[..., None], idx.shape)[taken]
        cols = np.broadcast_to(kk[..., None], idx.shape)[taken]
        np.add.at(a, (rows, cols, idx[taken]), w[taken])  # unbuffered: repeats add up
    return a


# ----------------------------------------------------------------------------- the reference


def roi_align_reference(
    features, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False
):
    """RoIAlign in NumPy: the specification (see the module docstring for the rule).

    ``out[r, c] = A_y[r] @ X[b_r, c] @ A_x[r].T / count[r]`` with the interpolation
    matrices of :func:`interpolation_matrix` and ``count = max(G_h * G_w, 1)``.

    Args:
        features: ``(N, C, H, W)`` float32 or float64 feature maps.
        rois: ``(R, 5)`` rows ``(batch_index, x1, y1, x2, y2)``, image coordinates,
            same dtype as ``features``.
        output_size: ``(ph, pw)`` ints.
        spatial_scale: float, feature-map pixels per image pixel.
        sampling_ratio: int, samples per bin along each axis (<= 0: adaptive).
        aligned: bool, the half-pixel shift.

    Returns:
        ``(R, C, ph, pw)`` features' dtype.
    """
    height, width = features.shape[2:]
    tab = sample_tables(rois, output_size, spatial_scale, sampling_ratio, aligned, height, width)
    return roi_align_tables_reference(features, tab)


def roi_align_tables_reference(features, tab: SampleTables):
    """Steps 5-6 of the rule: every bin's average of its samples, the samples given by ``tab``.

    Args:
        features: ``(N, C, H, W)`` float32 or float64 feature maps.
        tab: the :class:`SampleTables` of the RoIs (from :func:`sample_tables`).

    Returns:
        ``(R, C, ph, pw)`` features' dtype, as :func:`roi_align_reference`. (This is
        the signature every RoIAlign kernel shares: see :mod:`minirccn.core.dispatch`.)
    """
    n, c, height, width = features.shape
    ph, pw = tab.y.lo.shape[1], tab.x.lo.shape[1]
    a_y = interpolation_matrix(tab.y, height)  # (R, ph, H)
    a_x = interpolation_matrix(tab.x, width)  # (R, pw, W)
    out = np.zeros((tab.batch.shape[0], c, ph, pw), dtype=features.dtype)
    for b in range(n):  # RoIs of one image at a time: no (R, C, H, W) copy of the maps
        rs = np.flatnonzero(tab.batch == b)
        rows = np.einsum("rih,chw->rciw", a_y[rs], features[b], optimize=True)  # (Rb, C, ph, W)
        out[rs] = rows @ a_x[rs].transpose(0, 2, 1)[:, None]  # (Rb, C, ph, pw)
    return out / tab.count[:, None, None, None]


def roi_align_backward_reference(
    grad_out, rois, input_shape, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False
):
    """Gradient of RoIAlign with respect to the features, in NumPy.

    RoIAlign is linear in the features, so its gradient is its transpose::

        grad[b, c] = sum over RoIs r of image b: A_y[r].T @ grad_out[r, c] @ A_x[r] / count[r]

    which spreads each bin's gradient over the 4 neighbours of every sample with
    the bilinear weights. So ``sum(grad * x) == sum(grad_out * roi_align(x))``.

    Args:
        grad_out: ``(R, C, ph, pw)`` float32 or float64, dLoss/d``out``.
        rois: ``(R, 5)`` the RoIs given to the forward, grad_out's dtype.
        input_shape: ``(N, C, H, W)`` of the features.
        output_size, spatial_scale, sampling_ratio, aligned: as the forward.

    Returns:
        ``(N, C, H, W)`` grad_out's dtype, dLoss/d``features``.
    """
    n, c, height, width = input_shape
    tab = sample_tables(rois, output_size, spatial_scale, sampling_ratio, aligned, height, width)
    return roi_align_backward_tables_reference(grad_out, tab, input_shape)


def roi_align_backward_tables_reference(grad_out, tab: SampleTables, input_shape):
    """The backward of :func:`roi_align_tables_reference`: the samples given by ``tab``.

    Args:
        grad_out: ``(R, C, ph, pw)`` float32 or float64, dLoss/d``out``.
        tab: the :class:`SampleTables` of the RoIs (from :func:`sample_tables`).
        input_shape: ``(N, C, H, W)`` of the features.

    Returns:
        ``(N, C, H, W)`` grad_out's dtype, as :func:`roi_align_backward_reference`.
    """
    n, c, height, width = input_shape
    a_y = interpolation_matrix(tab.y, height)  # (R, ph, H)
    a_x = interpolation_matrix(tab.x, width)  # (R, pw, W)
    g = grad_out / tab.count[:, None, None, None]  # (R, C, ph, pw)
    grad = np.zeros((n, c, height, width), dtype=grad_out.dtype)
    for b in range(n):
        rs = np.flatnonzero(tab.batch == b)
        cols = g[rs] @ a_x[rs][:, None]  # (Rb, C, ph, W): back through A_x.T
        grad[b] = np.einsum("rih,rciw->chw", a_y[rs], cols, optimize=True)  # and A_y.T
    return grad


# ----------------------------------------------------------------------------- public ops


def roi_align(
    features,
    rois,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=-1,
    aligned=False,
    *,
    backend=None,
):
    """RoIAlign (``torchvision.ops.roi_align`` semantics).

    Args:
        features: ``(N, C, H, W)`` float32 or float64 NumPy or CuPy array.
        rois: ``(R, 5)`` float rows ``(batch_index, x1, y1, x2, y2)`` in image
            coordinates; converted to ``features``' dtype (the arithmetic dtype).
            Batch indices must be integers in ``[0, N)``, coordinates finite.
        output_size: int or ``(ph, pw)``.
        spatial_scale: positive float (1/16 for a stride-16 backbone).
        sampling_ratio: int, sample points per bin along each axis; <= 0 (default -1):
            adaptive, ``ceil(roi_size / bins)``.
        aligned: bool; True shifts RoIs by -0.5 cell (pixel centres at ``k + 0.5``),
            False (default) is the original Mask R-CNN rule.
        backend: ``"numpy"``, ``"numba"``, ``"cuda"`` or None (see :mod:`minirccn.core.backend`).

    Returns:
        ``(R, C, ph, pw)`` of features' dtype and module.

    Raises:
        TypeError, ValueError: naming the bad argument.
    """
    features = check_shape(check_float(features, "features"), "features", (None, None, None, None))
    rois = _check_rois(rois, features.shape[0], features, "features")
    args = (_check_output_size(output_size), spatial_scale, sampling_ratio, aligned)
    name, features, tab = _checked_tables(features, rois, args, features.shape[2:], backend)
    return kernel("roi_align", name)(features, tab)


def roi_align_backward(
    grad_out,
    rois,
    input_shape,
    output_size,
    spatial_scale=1.0,
    sampling_ratio=-1,
    aligned=False,
    *,
    backend=None,
):
    """Gradient of :func:`roi_align` with respect to ``features``.

    Args:
        grad_out: ``(R, C, ph, pw)`` float32 or float64, dLoss/d``out``.
        rois: ``(R, 5)`` the RoIs given to :func:`roi_align`.
        input_shape: ``(N, C, H, W)`` of the features.
        output_size: int or ``(ph, pw)``, must match ``grad_out``.
        spatial_scale, sampling_ratio, aligned: as given to :func:`roi_align`.
        backend: as for :func:`roi_align`.

    Returns:
        ``(N, C, H, W)`` grad_out's dtype. On ``cuda`` the sums use atomics, so their
        order (and the last bits) may vary between runs; ``numba`` is race-free and
        deterministic.
    """
    input_shape = _check_input_shape(input_shape)
    n, c, height, width = input_shape
    output_size = _check_output_size(output_size)
    grad_out = check_shape(check_float(grad_out, "grad_out"), "grad_out", (None, c, *output_size))
    rois = _check_rois(rois, n, grad_out, "grad_out")
    check_shape(rois, "rois", (grad_out.shape[0], 5))
    args = (output_size, spatial_scale, sampling_ratio, aligned)
    name, grad_out, tab = _checked_tables(grad_out, rois, args, (height, width), backend)
    return kernel("roi_align_backward", name)(grad_out, tab, input_shape)


def _checked_tables(data, rois, args, map_size, backend):
    """Check the scalar arguments, move ``data`` and ``rois`` to the backend, build the tables.

    Args:
        data: the checked ``features`` or ``grad_out`` array.
        rois: the checked ``(R, 5)`` RoIs.
        args: ``(output_size (checked), spatial_scale, sampling_ratio, aligned)``.
        map_size: ``(H, W)`` of the feature map.
        backend: as for :func:`roi_align`.

    Returns:
        ``(backend name, data on it, SampleTables)``.
    """
    output_size, spatial_scale, sampling_ratio, aligned = args
    spatial_scale = check_positive(spatial_scale, "spatial_scale")
    sampling_ratio = _check_sampling_ratio(sampling_ratio)
    aligned = _check_aligned(aligned)
    name = _backend.resolve(backend, data, rois)
    xp = _backend.array_module(name)
    data, rois = _backend.to_backend(data, name), _backend.to_backend(rois, name)
    _check_coordinates(rois, spatial_scale, xp)
    args = (output_size, spatial_scale, sampling_ratio, aligned)
    return name, data, sample_tables(rois, *args, *map_size, xp)


# ----------------------------------------------------------------------------- layer form


class RoIAlignCache(NamedTuple):
    """What :func:`roi_align_layer_backward` needs from :func:`roi_align_layer_forward`."""

    rois: object  # (R, 5) float, the pooled RoIs
    input_shape: tuple  # (N, C, H, W)
    output_size: tuple  # (ph, pw)
    spatial_scale: float
    sampling_ratio: int
    aligned: bool
    backend: str


def roi_align_layer_forward(
    features, rois, output_size, spatial_scale, sampling_ratio=-1, aligned=False, *, backend=None
):
    """Layer form of :func:`roi_align`: ``out, cache = roi_align_layer_forward(...)``.

    Args: as :func:`roi_align`.

    Returns:
        ``out`` ``(R, C, ph, pw)`` and a :class:`RoIAlignCache`.
    """
    name = _backend.resolve(backend, features, rois)
    output_size = _check_output_size(output_size)
    out = roi_align(
        features, rois, output_size, spatial_scale, sampling_ratio, aligned, backend=name
    )
    shape = tuple(int(s) for s in np.shape(features))
    cache = RoIAlignCache(rois, shape, output_size, spatial_scale, sampling_ratio, aligned, name)
    return out, cache


def roi_align_layer_backward(dout, cache: RoIAlignCache):
    """Layer form of :func:`roi_align_backward`: ``dfeatures`` ``(N, C, H, W)`` from ``dout``."""
    return roi_align_backward(
        dout,
        cache.rois,
        cache.input_shape,
        cache.output_size,
        cache.spatial_scale,
        cache.sampling_ratio,
        cache.aligned,
        backend=cache.backend,
    )


# ----------------------------------------------------------------------------- argument checks


def _check_sampling_ratio(sampling_ratio) -> int:
    """``sampling_ratio`` as an int (any value; <= 0 means adaptive)."""
    if isinstance(sampling_ratio, (bool, np.bool_)):
        raise TypeError(f"sampling_ratio: expected an integer, got {sampling_ratio!r}")
    try:
        return operator.index(sampling_ratio)
    except TypeError:
        raise TypeError(f"sampling_ratio: expected an integer, got {sampling_ratio!r}") from None


def _check_aligned(aligned) -> bool:
    """``aligned`` as a bool (True/False, or NumPy's bool)."""
    if not isinstance(aligned, (bool, np.bool_)):
        raise TypeError(f"aligned: expected True or False, got {aligned!r}")
    return bool(aligned)
